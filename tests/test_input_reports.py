"""Inputs that cannot be silently stale or truncated (issue 9, item 3): a rewritten input is
noticed and named, a file cut short and manifest times past the end of the audio get their own
report line with both lengths."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import soundfile as sf

from featurestore import fingerprint as fpr
from featurestore import layout, open_store
from featurestore.build import SettingsMismatch, build, main
from featurestore.clips import ClipSettings
from featurestore.manifest import read_inputs
from featurestore.writer import open_root
from tests.conftest import noise_clips

SR = 16000
WHOLE = ClipSettings(segment_s=None)


def _build(manifest, store, **kw):
    return build(manifest, store, ["logmel"], clip_settings=WHOLE, num_workers=0, progress=False, **kw)


def _manifest(tmp_path, lines, name="m.csv"):
    m = tmp_path / name
    m.write_text("\n".join(lines) + "\n")
    return m


def _rewrite_same_size(path, seed):
    """Other samples, same format and length: the file keeps its size."""
    size = path.stat().st_size
    x = (0.2 * np.random.default_rng(seed).standard_normal(sf.info(str(path)).frames)).astype(np.float32)
    sf.write(str(path), x, SR, subtype="FLOAT")
    assert path.stat().st_size == size


# ---- fingerprints ------------------------------------------------------------------------------

def test_rewritten_file_of_same_size_is_noticed_and_named(tmp_path):
    wavs = noise_clips(tmp_path / "a", SR, [0.5, 0.5, 0.5])
    m = _manifest(tmp_path, ["path"] + [str(p) for p in wavs])
    store = tmp_path / "s.zarr"
    _build(m, store)
    before = open_store(store).pooled("logmel")
    # the stored table holds each file's size and mtime, as os.stat gives them
    table = fpr.read_input_table(open_root(store, "r"))
    assert table.mode == "stat" and table.path == [str(p.resolve()) for p in wavs]
    assert table.size.tolist() == [p.stat().st_size for p in wavs]
    assert table.mtime_ns.tolist() == [p.stat().st_mtime_ns for p in wavs]
    _build(m, store)  # nothing changed: resumes

    old_mtime = wavs[1].stat().st_mtime_ns
    _rewrite_same_size(wavs[1], seed=7)
    assert wavs[1].stat().st_mtime_ns != old_mtime
    with pytest.raises(SettingsMismatch) as e:
        _build(m, store)
    msg = str(e.value)
    assert "1 changed file(s)" in msg and str(wavs[1].resolve()) in msg and "same size" in msg
    assert str(wavs[0].resolve()) not in msg and str(wavs[2].resolve()) not in msg
    assert "--overwrite" in msg
    # --overwrite re-plans from the new content: clip 1's pooled features change, the others do not
    _build(m, store, overwrite=True)
    after = open_store(store).pooled("logmel")
    assert not np.array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[[0, 2]], after[[0, 2]])


def test_content_mode_ignores_touch_and_names_changed_content(tmp_path, capsys):
    wavs = noise_clips(tmp_path / "a", SR, [0.5, 0.5])
    m = _manifest(tmp_path, ["path,singer"] + [f"{p},s{i}" for i, p in enumerate(wavs)])
    store = tmp_path / "s.zarr"
    _build(m, store, fingerprint="content")
    root = open_root(store, "r")
    assert root.attrs[fpr.MODE_KEY] == "content"
    assert fpr.read_input_table(root).sha256 == [hashlib.sha256(p.read_bytes()).hexdigest() for p in wavs]
    # a new mtime with the same bytes is not a change in content mode; the mode is the store's by default
    st = wavs[0].stat()
    os.utime(wavs[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    _build(m, store)
    # asking for the other mode is refused, and the message says how to keep the store's
    with pytest.raises(SettingsMismatch, match="leave --fingerprint out"):
        _build(m, store, fingerprint="stat")
    _rewrite_same_size(wavs[0], seed=3)
    args = ["--input", str(m), "--store", str(store), "--backbone", "logmel", "--segment-seconds", "0",
            "--num-workers", "0", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(wavs[0].resolve()) in err and "content sha256" in err and str(wavs[1].resolve()) not in err
    # edited manifest fields are named by row id
    _manifest(tmp_path, ["path,singer"] + [f"{wavs[0]},s0", f"{wavs[1]},someone"])
    assert main(args + ["--overwrite"]) == 0  # re-planned with the rewritten file
    capsys.readouterr()
    _manifest(tmp_path, ["path,singer"] + [f"{wavs[0]},s0", f"{wavs[1]},else"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 row(s) whose split, labels, start or end changed: a/clip01" in err
    assert "changed file(s)" not in err


def test_store_planned_before_per_file_fingerprints(tmp_path):
    """Stores of the earlier writer kept one sizes-only hash: they still resume, and a change gets a
    message saying why it cannot be named."""
    wavs = noise_clips(tmp_path / "a", SR, [0.5, 0.5])
    m = _manifest(tmp_path, ["path"] + [str(p) for p in wavs])
    store = tmp_path / "s.zarr"
    _build(m, store)
    root = open_root(store)
    del root[layout.INPUTS]
    attrs = dict(root.attrs)
    del attrs[fpr.MODE_KEY]
    attrs[fpr.DIGEST_KEY] = _sizes_only_digest(m)
    root.attrs.put(attrs)
    _build(m, store)  # the old digest still matches: resumes
    x = sf.read(str(wavs[0]), dtype="float32")[0]
    sf.write(str(wavs[0]), np.concatenate([x, x]), SR, subtype="FLOAT")
    with pytest.raises(SettingsMismatch, match="older featurestore .* cannot be named"):
        _build(m, store)


def _sizes_only_digest(manifest) -> str:
    """The earlier writer's digest, computed here from its definition: sha256 over each row's
    [path, id, split, labels, start, end, size]."""
    h = hashlib.sha256()
    for r in read_inputs(manifest)[0]:
        h.update(json.dumps([str(r.path), r.id, r.split, [], None, None, r.path.stat().st_size]).encode())
    return h.hexdigest()


# ---- truncation -----------------------------------------------------------------------------

def _sine(seconds, sr=SR):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _cut_in_half(path):
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[:len(data) // 2])
    return cut


def _only(report, reason):
    lines = [s for s in report.skipped if s["reason"] == reason]
    assert len(lines) == 1, report.skipped
    return lines[0]


def test_truncated_wav_is_kept_and_reported_with_both_lengths(tmp_path, capsys):
    whole = tmp_path / "whole.wav"
    sf.write(str(whole), _sine(3.0), SR, subtype="PCM_16")
    cut = _cut_in_half(whole)
    raw = cut.read_bytes()
    data_start = raw.index(b"data") + 8
    decoded = (len(raw) - data_start) // 2  # PCM_16 mono: 2 bytes a frame
    m = _manifest(tmp_path, ["path,id", f"{whole},whole", f"{cut},cut"])
    rep = _build(m, tmp_path / "s.zarr")
    line = _only(rep, "truncated")
    assert len(rep.skipped) == 1  # the whole file gives no line
    assert line["where"] == "m.csv line 3" and line["path"] == str(cut.resolve())
    assert "48000 frames (3.000 s at 16000 Hz)" in line["message"]
    assert f"{decoded} frames ({decoded / SR:.3f} s)" in line["message"]
    s = open_store(tmp_path / "s.zarr")
    assert list(s.clip_ids) == ["whole", "cut"]
    assert s.clips["end_s"].tolist() == [3.0, decoded / SR]
    assert s.skipped == rep.skipped
    # --strict makes it fatal (exit 1), as any report line
    assert main(["--input", str(m), "--store", str(tmp_path / "s.zarr"), "--backbone", "logmel",
                 "--segment-seconds", "0", "--num-workers", "0", "--no-progress", "--strict"]) == 1
    assert "[truncated]" in capsys.readouterr().out


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile here cannot write MPEG")
def test_truncated_mp3_is_reported(tmp_path):
    whole = tmp_path / "whole.mp3"
    sf.write(str(whole), _sine(3.0), SR, format="MP3")
    header = sf.info(str(whole)).frames
    cut = _cut_in_half(whole)
    decoded = len(sf.read(str(cut), dtype="float32")[0])
    assert decoded < header - 0.5 * SR  # the premise: libsndfile decodes the cut file without an error
    m = _manifest(tmp_path, ["path,id", f"{whole},whole", f"{cut},cut"])
    rep = _build(m, tmp_path / "s.zarr")
    line = _only(rep, "truncated")
    assert len(rep.skipped) == 1 and line["path"] == str(cut.resolve())
    assert f"{header} frames ({header / SR:.3f} s" in line["message"]
    assert f"{decoded} frames ({decoded / SR:.3f} s)" in line["message"]
    assert open_store(tmp_path / "s.zarr").clips["end_s"].tolist() == [
        len(sf.read(str(whole))[0]) / SR, decoded / SR]


def test_truncated_flac_keeps_the_blocks_that_decode(tmp_path):
    """libsndfile refuses to read a cut FLAC in one call; its first blocks still decode."""
    whole = tmp_path / "whole.flac"
    sf.write(str(whole), _sine(3.0), SR)
    cut = _cut_in_half(whole)
    with pytest.raises(Exception):
        sf.read(str(cut))
    m = _manifest(tmp_path, ["path,id", f"{cut},cut"])
    rep = _build(m, tmp_path / "s.zarr")
    line = _only(rep, "truncated")
    end = open_store(tmp_path / "s.zarr").clips["end_s"][0]
    assert 0 < end < 1.5
    assert f"{round(end * SR)} frames ({end:.3f} s)" in line["message"] and "48000 frames" in line["message"]


# ---- manifest times outside the audio -----------------------------------------------------------

def test_end_past_the_end_is_cut_and_reported(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), _sine(3.0), SR, subtype="FLOAT")
    m = _manifest(tmp_path, ["path,id,start,end", f"{wav},late,0.5,5", f"{wav},typed,1,3.0004",
                             f"{wav},inside,1,2"])
    rep = _build(m, tmp_path / "s.zarr")
    line = _only(rep, "end_past_end")
    assert len(rep.skipped) == 1 and line["where"] == "m.csv line 2"
    assert "end 5.000 s" in line["message"] and "(3.000 s)" in line["message"]
    s = open_store(tmp_path / "s.zarr")
    assert list(s.clip_ids) == ["late", "typed", "inside"]
    np.testing.assert_allclose(s.clips["start_s"], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(s.clips["end_s"], [3.0, 3.0, 2.0])


def test_start_past_the_end_is_skipped_as_such(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), _sine(3.0), SR, subtype="FLOAT")
    m = _manifest(tmp_path, ["path,id,start,end", f"{wav},ok,0,1", f"{wav},after,4,6", f"{wav},at,3,"])
    rep = _build(m, tmp_path / "s.zarr")
    lines = [s for s in rep.skipped if s["reason"] == "start_past_end"]
    assert [x["where"] for x in lines] == ["m.csv line 3", "m.csv line 4"] and len(rep.skipped) == 2
    assert "start 4.000 s" in lines[0]["message"] and "(3.000 s)" in lines[0]["message"]
    assert "start 3.000 s" in lines[1]["message"]
    assert list(open_store(tmp_path / "s.zarr").clip_ids) == ["ok"]

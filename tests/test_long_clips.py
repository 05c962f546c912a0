"""Long clips are extracted in pieces of a bounded size (memory does not grow with the clip), a killed
long clip resumes from its last finished piece, and a unit another build finished is not redone.

Stores use ``--unit-frames 64`` and 16-frame chunks, so a 12 s clip (600 log-mel frames at 50 Hz)
is split over 10 units; the reference is the same corpus built with units large enough to hold the
whole clip at once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zarr

import featurestore.build as fb
import featurestore.build_extract as fx  # the extraction loop: where run_unit and _work_order are looked up
from featurestore import audio as au
from featurestore import layout, open_store
from featurestore.build import ExtractSettings, SettingsMismatch, build
from featurestore.clips import ClipSettings
from featurestore.extract import UnitAudio, clip_windows, plan_windows
from featurestore.frontends import load_frontend
from featurestore.verify import verify
from tests.conftest import noise_clips, tiny_model, write_wav

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "logmel"
WHOLE = ClipSettings(segment_s=None, min_segment_s=0.0)
PIECES = ExtractSettings(target_unit_frames=64, chunk_frames=16, dtype="float32")
ONE_UNIT = ExtractSettings(target_unit_frames=4096, chunk_frames=16, dtype="float32")
KW = dict(clip_settings=WHOLE, num_workers=0, progress=False)
ARRAYS = ("frames", "offsets", "pooled_mean", "pooled_std")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 12 s clip between two short ones (0.7 s, 1.1 s), 16 kHz."""
    tmp = tmp_path_factory.mktemp("long")
    noise_clips(tmp / "audio", 16000, [0.7, 12.0, 1.1], seed=11)
    return tmp


@pytest.fixture(scope="module")
def ref(corpus):
    """The corpus built with units that hold the whole long clip, and built in pieces."""
    whole, pieces = corpus / "whole.zarr", corpus / "pieces.zarr"
    build(corpus / "audio", whole, [BACKBONE], extract=ONE_UNIT, **KW)
    build(corpus / "audio", pieces, [BACKBONE], extract=PIECES, **KW)
    return whole, pieces


def backbone(store: Path) -> zarr.Group:
    return zarr.open_group(str(store), mode="r")[f"backbones/{BACKBONE}"]


def assert_same_store(a: Path, b: Path, arrays=ARRAYS + ("unit_done", "unit_checksum", "piece_sums")):
    ga, gb = backbone(a), backbone(b)
    for name in arrays:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert ga.attrs["complete"] and gb.attrs["complete"]
    assert ga.attrs["identity"] == gb.attrs["identity"]


# ---------------------------------------------------------------------------------------------
# the layout of pieces and their windows
# ---------------------------------------------------------------------------------------------

def test_pieces_tile_each_clip_on_chunk_boundaries():
    rng = np.random.default_rng(0)
    for _ in range(50):
        nf = rng.integers(0, 400, size=int(rng.integers(1, 8)))
        target, align = int(rng.integers(1, 200)), int(rng.choice([1, 8, 16]))
        per_unit, piece = layout.unit_plan(nf, target, align)
        offsets, total = layout.layout_frames(nf, per_unit, align)
        units = layout.unit_table(offsets, per_unit, align, piece)
        assert piece is None or (piece % align == 0 and piece >= target and per_unit == 1)
        assert (units[:, 2] % align == 0).all() and (units[1:, 2] == units[:-1, 3]).all()  # contiguous, aligned
        assert units[-1, 3] <= total
        for i, (a, b) in enumerate(offsets):  # every frame of every clip is owned by exactly one unit
            owners = [u for u in units if u[0] <= i < u[1]]
            covered = sorted((max(a, u[2]), min(b, u[3])) for u in owners if min(b, u[3]) > max(a, u[2]))
            assert sum(e - s for s, e in covered) == b - a
            n_pieces = len(owners)
            if piece is not None and b - a > piece:
                assert n_pieces == -(-(b - a) // piece) and all(u[3] - u[2] <= piece for u in owners)
            else:
                assert n_pieces == 1
        split = layout.split_units(units)
        assert set(split) == {i for i in range(len(nf)) if piece is not None and nf[i] > piece}


@pytest.mark.parametrize("local", [False, True])
def test_piece_windows_are_the_whole_clips_windows(local):
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, k = int(rng.integers(1, 500)), int(rng.integers(3, 60))
        c = 0 if local else int(rng.integers(0, (k - 1) // 2 + 1))
        stride, receptive = 320, 400
        whole = plan_windows(n, k, stride, receptive, c)
        cuts = sorted({0, n, *rng.integers(0, n + 1, size=3).tolist()})
        kept = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            for s in clip_windows(n, lo, hi, k, stride, receptive, c, frame_local=local):
                assert lo <= s.frame and s.frame + s.n_frames <= hi and s.n_frames > 0
                first = s.frame - s.lead
                assert s.start == first * stride and s.samples == (s.lead + s.n_frames + s.trail - 1) * stride + receptive
                if not local:  # computed exactly as a window of the whole clip
                    assert (s.start, s.samples) in {(w.start, w.samples) for w in whole}
                assert s.lead + s.n_frames + s.trail <= k
                kept += range(s.frame, s.frame + s.n_frames)
        assert kept == list(range(n))


@pytest.mark.parametrize("native,channels,fmt", [(44100, 2, "WAV"), (22050, 1, "FLAC"), (16000, 1, "WAV"),
                                                 (48000, 1, "MP3"), (24000, 1, "OGG")])
def test_a_decoded_range_equals_the_same_range_of_the_whole_file(tmp_path, native, channels, fmt):
    rng = np.random.default_rng(2)
    n = native * 6 + 77
    x = (0.3 * rng.standard_normal((n, channels))).astype(np.float32)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(str(path), x if channels > 1 else x[:, 0], native, format=fmt)
    whole = au.load_audio(path, 16000, check=False)
    m = len(whole)
    for a, b in [(0, 1), (0, 16000), (12345, 50001), (m - 4000, m - 1), (m - 300, m + 500), (m + 5, m + 9)]:
        got = au.load_audio_range(path, 16000, a, b)
        want = np.zeros(b - a, np.float32)
        want[:max(0, min(b, m) - a)] = whole[a:b]
        assert got.shape == (b - a,)
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-7, err_msg=f"[{a}, {b})")
    with pytest.raises(ValueError, match="invalid sample range"):
        au.load_audio_range(path, 16000, 10, 5)
    with pytest.raises(au.AudioError, match="does not exist"):
        au.load_audio_range(tmp_path / "missing.wav", 16000, 0, 5)


# ---------------------------------------------------------------------------------------------
# builds
# ---------------------------------------------------------------------------------------------

def test_a_clip_built_in_pieces_equals_one_built_whole(corpus, ref):
    whole, pieces = ref
    gw, gp = backbone(whole), backbone(pieces)
    assert "piece_frames" not in gw.attrs and gp.attrs["piece_frames"] == 64
    assert gp.attrs["identity"]["piece_frames"] == 64 and "piece_frames" not in gw.attrs["identity"]
    offsets = gp["offsets"][:]
    assert offsets[1, 1] - offsets[1, 0] > 500  # the long clip is split over many units
    units = layout.unit_table(offsets, 1, 16, 64)
    assert len(layout.split_units(units)[1]) == -(-(offsets[1, 1] - offsets[1, 0]) // 64)
    sw, sp = open_store(whole), open_store(pieces)
    for i in range(3):  # the same windows, the same values (the layouts differ: one unit holds all three)
        np.testing.assert_array_equal(sp.frames(i, backbone=BACKBONE), sw.frames(i, backbone=BACKBONE))
    for stat in ("pooled_mean", "pooled_std"):  # sums added piece by piece: float64 rounding only
        np.testing.assert_allclose(gp[stat][:], gw[stat][:], rtol=1e-6, atol=1e-7, err_msg=stat)
    # the pooled rows are those of the stored frames (an independent computation)
    x = open_store(pieces).frames(1, backbone=BACKBONE).astype(np.float64)
    np.testing.assert_allclose(gp["pooled_mean"][1], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gp["pooled_std"][1], x.std(0), rtol=1e-4, atol=1e-5)
    for store in (whole, pieces):
        r = verify(store)
        assert r.ok, [p.text() for p in r.problems]


def test_windowed_transformer_pieces_equal_the_whole_clip(tmp_path):
    """A tiny WavLM with context margins: pieces compute the whole clip's windows, so every stored
    value equals the whole-clip build (each window is one batch in both builds)."""
    import json

    folder = tmp_path / "tiny-wavlm"
    tiny_model("wavlm", feat_extract_norm="layer").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": False}))
    noise_clips(tmp_path / "audio", 16000, [9.0], seed=4)
    stores = {}
    for label, unit in (("pieces", 64), ("whole", 4096)):
        stores[label] = tmp_path / f"{label}.zarr"
        build(tmp_path / "audio", stores[label], [str(folder)], name="tiny", **KW,
              extract=ExtractSettings(target_unit_frames=unit, chunk_frames=16, dtype="float32", window_s=2.0,
                                      context_s=0.5, batch_s=2.0))
    g = {k: zarr.open_group(str(v), mode="r")["backbones/tiny"] for k, v in stores.items()}
    assert g["pieces"]["unit_done"].shape[0] > 5 and g["whole"]["unit_done"].shape[0] == 1
    np.testing.assert_array_equal(g["pieces"]["frames"][:], g["whole"]["frames"][:])
    np.testing.assert_allclose(g["pieces"]["pooled_mean"][:], g["whole"]["pooled_mean"][:], rtol=1e-6, atol=1e-7)
    assert verify(stores["pieces"]).ok


def _crash_script(store: Path, inp: Path, when: str, after: int) -> list[str]:
    """A build of ``inp`` into ``store`` in pieces that dies (os._exit(9)) ``when``: 'piece' -- at the
    write of the long clip's piece after ``after`` of its pieces are done, with garbage frames written
    and no marker; 'pooled' -- just before the long clip's pooled rows are written."""
    code = f"""
import os, sys, numpy as np, featurestore.writer as w
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
orig_write, orig_finish = w.write_unit, w.finish_split_clip
def write_unit(g, r):
    if {when!r} == 'piece' and r.clip_units is not None and g['unit_done'][:].sum() >= {after}:
        g['frames'][r.start:r.start + len(r.frames)] = r.frames * 0 + 7
        os._exit(9)
    orig_write(g, r)
def finish(g, clip, units, n):
    if {when!r} == 'pooled' and g['unit_done'][units.start:units.stop].all():
        os._exit(9)
    return orig_finish(g, clip, units, n)
w.write_unit, w.finish_split_clip = write_unit, finish
import featurestore.build_extract as fx
fx.finish_split_clip = finish
fx._work_order = list
build({str(inp)!r}, {str(store)!r}, [{BACKBONE!r}], clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
      extract=ExtractSettings(target_unit_frames=64, chunk_frames=16, dtype='float32'), num_workers=0,
      progress=False)
"""
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("when", ["piece", "pooled"])
def test_a_long_clip_killed_mid_way_resumes_from_its_last_piece(corpus, ref, monkeypatch, when):
    _, clean = ref
    store = corpus / f"killed-{when}.zarr"
    r = subprocess.run(_crash_script(store, corpus / "audio", when, after=4), cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 9, r.stderr
    g = backbone(store)
    done = g["unit_done"][:]
    split = layout.split_units(layout.unit_table(g["offsets"][:], 1, 16, 64))[1]
    if when == "piece":  # the first clip and 3 pieces of the long one are done, the 4th was cut short
        assert done.sum() == 4 and done[split.start:split.start + 3].all() and not done[split.start + 3]
    else:  # every piece done, the pooled rows never written
        assert done[:split.stop].all()
    assert np.isnan(g["pooled_mean"][1]).all() and not g.attrs.get("complete", False)
    assert not verify(store).ok

    ran = []
    orig = fx.run_unit
    monkeypatch.setattr(fx, "run_unit", lambda fe, u, *a, **k: ran.append(u) or orig(fe, u, *a, **k))
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, **KW)
    assert sorted(ran) == np.flatnonzero(done == 0).tolist()  # finished pieces are not extracted again
    assert_same_store(clean, store)
    r = verify(store)
    assert r.ok, [p.text() for p in r.problems]


def test_shards_share_the_pieces_of_a_long_clip(corpus, ref):
    """--shard 0/2 then 1/2: each writes every other piece; the shard that finishes the clip's last
    missing piece writes its pooled rows."""
    _, clean = ref
    store = corpus / "sharded.zarr"
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, plan_only=True, **KW)
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, shard=(0, 2), **KW)
    g = backbone(store)
    assert g["unit_done"][:].tolist() == [1 - u % 2 for u in range(g["unit_done"].shape[0])]
    assert np.isnan(g["pooled_mean"][1]).all() and not g.attrs.get("complete", False)
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, shard=(1, 2), **KW)
    assert_same_store(clean, store)
    assert verify(store).ok


def test_verify_finds_a_changed_piece_and_the_split_clips_pooled_rows(corpus, ref):
    _, clean = ref
    store = corpus / "tamper.zarr"
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, **KW)
    g = zarr.open_group(str(store), mode="a")[f"backbones/{BACKBONE}"]
    split = layout.split_units(layout.unit_table(g["offsets"][:], 1, 16, 64))[1]
    u = split.start + 2
    g["piece_sums"][u] = g["piece_sums"][u] * 2  # the piece's sums: its checksum no longer matches
    row = g["pooled_mean"][1]
    g["pooled_mean"][1] = row + 1  # the clip's pooled rows: not the mean of its frames
    problems = verify(store).problems
    assert {(p.check, p.unit) for p in problems} == {("checksum", u), ("pooled", split.stop - 1)}
    assert all(p.clips == [str(open_store(store).clip_ids[1])] for p in problems)


def test_an_old_store_without_pieces_reads_verifies_and_is_refused_for_resuming(corpus, ref, monkeypatch):
    """A store planned before pieces existed (the long clip in one unit, no piece_frames) still reads and
    verifies; a build now would split it, so it reports piece_frames as changed unless --overwrite."""
    _, clean = ref
    old = corpus / "old.zarr"
    real = layout.unit_plan
    with monkeypatch.context() as m:
        m.setattr(layout, "unit_plan", lambda nf, t, a, pieces=True: real(nf, t, a, pieces=False))
        build(corpus / "audio", old, [BACKBONE], extract=PIECES, **KW)
    g = backbone(old)
    assert "piece_frames" not in g.attrs and "piece_sums" not in g and g["unit_done"].shape == (3,)
    for i in range(3):
        np.testing.assert_array_equal(open_store(old).frames(i, backbone=BACKBONE),
                                      open_store(clean).frames(i, backbone=BACKBONE))
    assert verify(old).ok
    with pytest.raises(SettingsMismatch, match="piece_frames"):
        build(corpus / "audio", old, [BACKBONE], extract=PIECES, **KW)
    build(corpus / "audio", old, [BACKBONE], extract=PIECES, overwrite=True, **KW)
    assert_same_store(clean, old)


# ---------------------------------------------------------------------------------------------
# no duplicate extraction
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("moment", ["before decoding", "after decoding"])
def test_a_unit_finished_by_another_build_is_not_extracted_again(corpus, monkeypatch, moment):
    """Another build marks a unit done while this one runs: before this one decodes it (the dataset's
    check) or between its decoding and its forward pass (the loop's check). It is skipped: not run,
    its frames left as the other build wrote them (here: never written, so still the fill value)."""
    store = corpus / f"dup-{moment.replace(' ', '-')}.zarr"
    build(corpus / "audio", store, [BACKBONE], extract=PIECES, plan_only=True, **KW)
    g = zarr.open_group(str(store), mode="a")[f"backbones/{BACKBONE}"]
    units = layout.unit_table(g["offsets"][:], 1, 16, 64)
    target = 5  # a piece of the long clip
    monkeypatch.setattr(fx, "_work_order", list)
    ran, decoded = [], []
    orig_run, orig_get = fx.run_unit, UnitAudio.__getitem__

    def run_unit(fe, u, *a, **k):
        ran.append(u)
        if moment == "before decoding" and u == target - 2:
            g["unit_done"][target] = 1  # as another build would, after writing the unit
        return orig_run(fe, u, *a, **k)

    def getitem(self, i):
        u, waves = orig_get(self, i)
        decoded.append((u, waves is not None))
        if moment == "after decoding" and u == target:
            g["unit_done"][target] = 1
        return u, waves

    monkeypatch.setattr(fx, "run_unit", run_unit)
    monkeypatch.setattr(UnitAudio, "__getitem__", getitem)
    summary = fb.extract_backbone(zarr.open_group(str(store), mode="a"), load_frontend(BACKBONE), PIECES,
                                  num_workers=0, progress=False)
    assert target not in ran and sorted(ran) == [u for u in range(len(units)) if u != target]
    assert (target, moment == "after decoding") in decoded
    assert summary["units_skipped"] == 1 and summary["complete"]
    lo, hi = units[target, 2:]
    assert not g["frames"][lo:hi].any()  # not recomputed


def test_builds_rotate_their_work_order(monkeypatch):
    todo = [3, 5, 8, 9, 12]
    orders = {tuple(fb._work_order(todo)) for _ in range(200)}
    assert all(sorted(o) == todo for o in orders)
    assert all(o == tuple(todo[todo.index(o[0]):] + todo[:todo.index(o[0])]) for o in orders)
    assert len(orders) == len(todo)  # every rotation occurs
    assert fb._work_order([]) == [] and fb._work_order([4]) == [4]


# ---------------------------------------------------------------------------------------------
# planning does not hold a long file either; the memory benchmark runs
# ---------------------------------------------------------------------------------------------

def test_scanning_a_file_gives_what_decoding_it_whole_gives(tmp_path):
    """au.scan_audio (blocks) and au.read_audio (whole file) agree on length and rate, and reject the
    same files with the same reason and message."""
    rng = np.random.default_rng(3)
    x = (0.2 * rng.standard_normal((48000, 2))).astype(np.float32)
    files = {"stereo": write_wav(tmp_path / "stereo.wav", x, 44100),
             "flac": write_wav(tmp_path / "a.flac", x[:, 0], 22050, subtype="PCM_16"),
             "nan": write_wav(tmp_path / "nan.wav", np.where(np.arange(48000) == 40000, np.nan, x[:, 0]), 16000),
             "silent": write_wav(tmp_path / "silent.wav", np.zeros(1000, np.float32), 16000),
             "empty": write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000),
             "missing": tmp_path / "missing.wav"}
    (tmp_path / "text.wav").write_text("not audio")
    files["text"] = tmp_path / "text.wav"
    cut = tmp_path / "cut.flac"  # a FLAC cut short: what decodes before the damage is kept
    cut.write_bytes((tmp_path / "a.flac").read_bytes()[:40000])
    files["cut"] = cut
    for name, path in files.items():
        try:
            x, sr = au.read_audio(path)
            want = (len(x), sr)
        except au.AudioError as e:
            want = (e.reason, str(e))
        for block in (1000, 4096, 1 << 18):  # the cut FLAC fails inside the first block of the larger sizes
            try:
                got = au.scan_audio(path, block=block)
            except au.AudioError as e:
                got = (e.reason, str(e))
            assert got == want, (name, block)


def test_the_memory_benchmark_runs_and_reports_each_length(tmp_path, capsys):
    from benchmarks import memory

    out = tmp_path / "mem.json"
    rc = memory.main(["--backbone", "logmel", "--minutes", "0.25,1", "--unit-frames", "256", "--units", "1",
                      "--num-workers", "0", "--tolerance", "10", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert "spread of the build peaks" in capsys.readouterr().out
    assert [b["minutes"] for b in r["builds"]] == [0.25, 1.0]
    fe = load_frontend("logmel")
    for b in r["builds"]:  # one unit of 256 frames extracted out of all the recording's units
        n_frames = fe.n_frames(int(b["minutes"] * 60 * 16000))
        assert b["units_done"] == 1 and b["units"] == -(-n_frames // 256) > 1
        assert 0 < b["audio_seconds"] <= 256 / 50 + 0.1 and b["self_mib"] > 50
        assert b["file_mb"] == pytest.approx(b["minutes"] * 60 * 16000 * 2 / 1e6, rel=0.01)
    peaks = [b["self_mib"] for b in r["builds"]]
    assert r["spread"] == pytest.approx((max(peaks) - min(peaks)) / min(peaks))
    assert r["model_only"]["self_mib"] > 50
    assert not list((tmp_path / "w").glob("*.zarr"))  # stores and recordings are removed as it goes

"""``featurestore.verify`` finds each planted fault (naming clip, unit and file), ``--repair`` and a
rebuild give back the reference store, and the reader refuses damaged chunks instead of reading
zeros."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from featurestore import layout, open_store
from featurestore.build import build
from featurestore.clips import ClipSettings
from featurestore.store import ChunkFiles, StoreCorrupted
from featurestore.verify import main, verify
from tests.conftest import noise_clips
from tests.test_concurrent_build import BACKBONE, KW, assert_same_store

UNIT = 1  # the unit the faults are planted in


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    paths = noise_clips(tmp / "wavs", 16000, [1.0, 0.8, 0.6, 0.6], seed=7)
    rows = zip(paths, ["train", "train", "valid", "test"], ["a", "b", "a", "b"])
    (tmp / "inputs.csv").write_text("path,split,singer\n" + "".join(f"{p},{sp},{s}\n" for p, sp, s in rows))
    store = tmp / "ref.zarr"
    build(tmp / "inputs.csv", store, [BACKBONE], **KW)
    return tmp, store


def _copy(ref_store: Path, tmp: Path, name: str) -> Path:
    out = tmp / f"{name.replace(' ', '-')}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(ref_store, out)
    return out


def _unit(store: Path, u: int = UNIT):
    """(clip rows [lo, hi), frame range, clip ids, path of the unit's first frames chunk file)."""
    g = zarr.open_group(str(store), mode="r")[layout.backbone_path(BACKBONE)]
    offsets, per_unit, align = g["offsets"][:], g.attrs["clips_per_unit"], g.attrs["align"]
    lo, hi = layout.unit_range(u, per_unit, len(offsets))
    fr = layout.unit_frame_range(offsets, u, per_unit, align)
    ids = [str(x) for x in zarr.open_group(str(store), mode="r")["clips/id"][lo:hi]]
    chunk = int(g["frames"].chunks[0])
    return (lo, hi), fr, ids, store / layout.backbone_path(BACKBONE) / "frames" / "c" / str(fr[0] // chunk) / "0" / "0"


def _plant(store: Path, fault: str):
    """Damage ``store``; return (check expected, unit or None, text the message must hold)."""
    (lo, _), fr, ids, chunk_file = _unit(store)
    bb = zarr.open_group(str(store), mode="a")[layout.backbone_path(BACKBONE)]
    if fault == "missing chunk":
        chunk_file.unlink()
        return "missing_chunk", UNIT, str(chunk_file)
    if fault == "short chunk":
        chunk_file.write_bytes(chunk_file.read_bytes()[:350])
        return "chunk_size", UNIT, str(chunk_file)
    if fault == "garbage chunk":  # same size, values that look plausible (no NaN)
        raw = np.fromfile(chunk_file, dtype=np.float16)
        np.random.default_rng(0).standard_normal(raw.shape).astype(np.float16).tofile(chunk_file)
        return "checksum", UNIT, ids[0]
    if fault == "nan":
        raw = np.fromfile(chunk_file, dtype=np.float16)
        raw[5] = np.nan
        raw.tofile(chunk_file)
        return "nonfinite", UNIT, ids[0]
    if fault == "wrong pooled row":
        row = bb["pooled_mean"][lo]
        bb["pooled_mean"][lo] = row + np.float16(0.25)
        return "pooled", UNIT, ids[0]
    if fault == "backbone attr dropped":
        attrs = dict(bb.attrs)
        del attrs["frontend"]
        meta = json.loads((store / layout.backbone_path(BACKBONE) / "zarr.json").read_text())
        meta["attributes"] = attrs
        (store / layout.backbone_path(BACKBONE) / "zarr.json").write_text(json.dumps(meta))
        return "metadata", None, "frontend"
    if fault == "clips/split deleted":
        del zarr.open_group(str(store), mode="a")["clips/split"]
        return "metadata", None, "clips/split"
    raise ValueError(fault)


FAULTS = ["missing chunk", "short chunk", "garbage chunk", "nan", "wrong pooled row", "backbone attr dropped",
          "clips/split deleted"]


@pytest.mark.parametrize("fault", FAULTS)
def test_verify_finds_the_fault_and_repair_plus_rebuild_restores_the_store(ref, fault, capsys):
    tmp, store = ref
    copy = _copy(store, tmp, fault)
    check, unit, needle = _plant(copy, fault)

    report = verify(copy)
    assert not report.ok
    hits = [p for p in report.problems if p.check == check and p.unit == unit]
    assert hits, [p.text() for p in report.problems]
    assert any(needle in p.message for p in hits), [p.text() for p in hits]
    if unit is not None:  # the faults of one unit are reported on that unit only
        assert {p.unit for p in report.problems} == {unit}
        assert report.damaged_units() == {BACKBONE: [unit]}

    assert main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert needle in out and "--repair" in out
    if unit is not None:
        assert f"{BACKBONE} unit {unit}" in out

    assert main([str(copy), "--repair", "--json"]) == 1
    repaired = json.loads(capsys.readouterr().out)["repaired"]
    if unit is not None:
        assert repaired == {BACKBONE: [unit]}
        g = zarr.open_group(str(copy), mode="r")[layout.backbone_path(BACKBONE)]
        done = g["unit_done"][:]
        assert done[unit] == 0 and done.sum() == len(done) - 1 and not g.attrs["complete"]
    build(tmp / "inputs.csv", copy, [BACKBONE], **KW)
    assert_same_store(store, copy)
    assert verify(copy).ok
    assert main([str(copy)]) == 0 and capsys.readouterr().out.startswith("ok:")


def test_the_reader_refuses_missing_and_short_chunks(ref, capsys):
    tmp, store = ref
    copy = _copy(store, tmp, "reader")
    (lo, hi), _, ids, chunk_file = _unit(copy)
    other = open_store(store).frames(0, BACKBONE)
    chunk_file.unlink()
    s = open_store(copy)
    with pytest.raises(StoreCorrupted) as e:
        s.frames(ids[0], BACKBONE)
    assert ids[0] in str(e.value) and str(chunk_file) in str(e.value) and BACKBONE in str(e.value)
    np.testing.assert_array_equal(s.frames(0, BACKBONE), other)  # undamaged clips still read
    chunk_file.write_bytes(b"\0" * 350)
    with pytest.raises(StoreCorrupted, match="350 bytes") as e:
        open_store(copy).frames(ids[0], BACKBONE)
    assert ids[0] in str(e.value) and str(chunk_file) in str(e.value)
    # pooled rows: a missing chunk file is an error, not rows of NaN (the fill value)
    pooled = copy / layout.backbone_path(BACKBONE) / "pooled_mean" / "c" / str(UNIT) / "0" / "0"
    pooled.unlink()
    with pytest.raises(StoreCorrupted, match=ids[0]):
        open_store(copy).pooled(BACKBONE)
    # the heads' command line reports it as an error, not a traceback
    from heads.fit import main as fit_main

    capsys.readouterr()
    assert fit_main(["--store", str(copy), "--backbone", BACKBONE, "--head", "logreg", "--task", "singer",
                     "--out", str(tmp / "run")]) == 2
    err = capsys.readouterr().err
    assert str(pooled) in err and "Traceback" not in err, err


def test_chunk_ownership_matches_the_frames_clips_cover(ref):
    """A chunk must exist exactly when some clip's frames fall in it (brute force over frames)."""
    _, store = ref
    g = zarr.open_group(str(store), mode="r")[layout.backbone_path(BACKBONE)]
    offsets = np.array([[0, 0], [0, 5], [40, 41], [47, 80], [80, 80], [96, 97]])
    files = ChunkFiles(g["frames"], store / "unused", offsets)
    covered = {f // files.grain for a, b in offsets for f in range(a, b)}
    assert files.owned.tolist() == [c in covered for c in range(files.n)]
    assert files.owners(2) == [2, 3]


def test_a_store_without_checksums_is_verified_without_them(ref, capsys):
    tmp, store = ref
    copy = _copy(store, tmp, "old")
    del zarr.open_group(str(copy), mode="a")[f"{layout.backbone_path(BACKBONE)}/unit_checksum"]
    report = verify(copy)
    assert report.ok and report.backbones[BACKBONE]["checksums"].startswith("no checksums")
    assert main([str(copy)]) == 0
    assert "no checksums (store built by an older version)" in capsys.readouterr().out
    # a damaged value is still found by the other checks
    _plant(copy, "nan")
    assert [p.check for p in verify(copy).problems] == ["nonfinite"]
    assert main([str(tmp / "nothing.zarr")]) == 2


def test_a_unit_whose_clip_has_no_frame(tmp_path):
    """A 40 ms file gives no log-mel frame: its unit owns no frame chunk and NaN pooled rows, and
    checks out; pooled rows that are not NaN for it are a fault."""
    from tests.conftest import write_wav

    noise_clips(tmp_path / "audio", 16000, [0.5])
    write_wav(tmp_path / "audio" / "tiny.wav", (0.1 * np.sin(np.arange(640) / 3.0)).astype(np.float32), 16000)
    store = tmp_path / "s.zarr"
    build(tmp_path / "audio", store, [BACKBONE], **{**KW, "clip_settings": ClipSettings(segment_s=None)})
    s = open_store(store)
    assert list(s.n_frames(BACKBONE)) == [22, 0] and s.frames("tiny", BACKBONE).shape == (0, 1, 128)
    assert verify(store).ok
    zarr.open_group(str(store), mode="a")[f"{layout.backbone_path(BACKBONE)}/pooled_std"][1] = 0
    problems = verify(store).problems
    assert [(p.check, p.unit, p.clips) for p in problems if p.check == "pooled"] == [("pooled", 1, ["tiny"])]


def test_check_store_from_python_finds_and_repairs_what_the_command_does(ref, capsys):
    from featurestore.options import SpecError
    from featurestore.verify import VerifySpec, check_store

    tmp, store = ref
    py, cli = _copy(store, tmp, "python check"), _copy(store, tmp, "command check")
    for copy in (py, cli):
        _plant(copy, "missing chunk")
    report = check_store(VerifySpec(store=str(py), backbone=BACKBONE, repair=True))
    assert not capsys.readouterr().out  # the function prints nothing
    assert main([str(cli), "--backbone", BACKBONE, "--repair", "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert report.repaired == printed["repaired"] == {BACKBONE: [UNIT]}
    assert [(p.check, p.unit) for p in report.problems] == [(p["check"], p["unit"]) for p in printed["problems"]]
    g = zarr.open_group(str(py), mode="r")[layout.backbone_path(BACKBONE)]
    assert g["unit_done"][UNIT] == 0 and not g.attrs["complete"]
    with pytest.raises(SpecError) as e:
        VerifySpec(store=str(py), lock_timeout=-1)
    assert e.value.setting == "lock_timeout"
    assert main([str(py), "--repair", "--lock-timeout", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --lock-timeout: must be >= 0 seconds")

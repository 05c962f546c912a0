"""Ingest keeps data: --overwrite builds beside the old store and swaps only a store that verifies,
so bad input (NaN, values beyond float16, pooled rows that contradict the frames) leaves the old
store byte for byte; URL stores are refused; verify advises re-ingesting an ingested store, and
--repair leaves it alone."""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest

from featurestore import open_store
from featurestore.ingest import IngestError, ingest, main as ingest_main
from featurestore.verify import NotRepairable, main as verify_main, repair, verify

RATE = 100  # frames per second: frames are single samples at this rate


def snapshot(folder):
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_input(folder, n_clips=3, T=40, L=2, D=4, seed=0, edit=None):
    """A manifest of ``n_clips`` .npy files [T, L, D]; ``edit(k, x)`` may change clip k's array."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_clips):
        x = rng.standard_normal((T, L, D)).astype(np.float32)
        if edit:
            edit(k, x)
        np.save(folder / f"c{k}.npy", x)
        rows.append({"path": f"c{k}.npy", "id": f"clip{k}", "split": "train"})
    (folder / "m.json").write_text(json.dumps(rows))
    return folder / "m.json"


@pytest.fixture
def old_store(tmp_path):
    store = tmp_path / "s.zarr"
    ingest(write_input(tmp_path / "good"), store, "feat", frame_rate=RATE, chunk_frames=16, target_unit_frames=32)
    assert verify(store).ok
    return store, snapshot(store)


def _nan_in_last_clip(k, x):
    if k == 2:
        x[33, 1, 2] = np.nan


def _too_big_for_float16(k, x):
    if k == 1:
        x[7, 0, 3] = 70000.0  # float16 holds at most 65504: it would be stored as Inf


@pytest.mark.parametrize("edit, message", [
    (_nan_in_last_clip, r"c2\.npy .*clip 'clip2'.*NaN or Inf in frame 33, layer 1 \(dim 2"),
    (_too_big_for_float16, r"c1\.npy .*clip 'clip1'.*outside the range of the store dtype float16 \(largest 65504\) "
                           r"in frame 7, layer 0 \(dim 3: 70000\)"),
], ids=["nan", "float16-range"])
def test_overwrite_with_bad_input_leaves_the_old_store_byte_identical(old_store, tmp_path, edit, message):
    store, before = old_store
    bad = write_input(tmp_path / "bad", seed=1, edit=edit)
    with pytest.raises(IngestError, match=message):
        ingest(bad, store, "feat", frame_rate=RATE, chunk_frames=16, target_unit_frames=32, overwrite=True)
    assert snapshot(store) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_float32_keeps_values_beyond_float16(tmp_path):
    inp = write_input(tmp_path / "in", edit=_too_big_for_float16)
    ingest(inp, tmp_path / "s.zarr", "feat", frame_rate=RATE, dtype="float32")
    assert open_store(tmp_path / "s.zarr").frames("clip1", "feat")[7, 0, 3] == 70000.0


def test_overwrite_with_good_input_replaces_the_store(old_store, tmp_path):
    store, before = old_store
    new = write_input(tmp_path / "new", seed=5, T=25)
    ingest(new, store, "feat", frame_rate=RATE, overwrite=True)
    s = open_store(store)
    np.testing.assert_array_equal(s.frames("clip0", "feat"), np.load(tmp_path / "new" / "c0.npy").astype(np.float16))
    assert verify(store).ok and snapshot(store) != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the old store and the temporary are gone


def _hdf5_with_pooled(path, T=30, L=2, D=3, wrong=False):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k in range(2):
            x = rng.standard_normal((T, L, D)).astype(np.float16)
            g = f.create_group(f"c{k}")
            g["frames"] = x
            mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
            if wrong and k == 1:
                mean = mean + 1.0  # rows that contradict the frames
            g["pooled_mean"], g["pooled_std"] = mean.astype(np.float16), std.astype(np.float16)
            g.attrs.update(id=f"clip{k}", split="test", labels="{}")
    return path


def test_pooled_rows_that_contradict_the_frames_are_refused(old_store, tmp_path):
    store, before = old_store
    good = _hdf5_with_pooled(tmp_path / "good.h5")
    ingest(good, tmp_path / "ok.zarr", "feat", frame_rate=RATE)  # consistent rows are taken as given
    bad = _hdf5_with_pooled(tmp_path / "bad.h5", wrong=True)
    with pytest.raises(IngestError, match=r"bad\.h5#c1: \[pooled\].*pooled_mean row of clip 'clip1'.*"
                                          r"--recompute-pooled"):
        ingest(bad, store, "feat", frame_rate=RATE, overwrite=True)
    assert snapshot(store) == before
    ingest(bad, store, "feat", frame_rate=RATE, overwrite=True, recompute_pooled=True)
    s = open_store(store)
    x = s.frames("clip1", "feat").astype(np.float64)
    np.testing.assert_allclose(s.pooled("feat", stat="mean")[1], x.mean(0), atol=2e-3)


def test_a_url_store_is_refused_and_no_local_folder_appears(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    inp = write_input(tmp_path / "in")
    assert ingest_main([str(inp), "--store", "memory://x.zarr", "--backbone", "feat", "--frame-rate", "100",
                        "--no-progress"]) == 2
    assert "local store folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_bad_backbone_name_is_refused(tmp_path):
    with pytest.raises(IngestError, match="--backbone 'a/b'"):
        ingest(write_input(tmp_path / "in"), tmp_path / "s.zarr", "a/b", frame_rate=RATE)
    assert not (tmp_path / "s.zarr").exists()


def test_verify_advises_re_ingesting_and_repair_leaves_an_ingested_store_alone(old_store, tmp_path, capsys):
    store, _ = old_store
    chunk = next(p for p in sorted((store / "backbones" / "feat" / "frames").rglob("*")) if p.is_file())
    chunk.write_bytes(b"\0" * chunk.stat().st_size)  # damage values: the unit checksum no longer matches
    report = verify(store)
    assert not report.ok and report.ingested_from == str((tmp_path / "good" / "m.json").resolve())
    assert verify_main([str(store)]) == 1
    out = capsys.readouterr().out
    assert "python -m featurestore.ingest" in out and "--overwrite" in out
    assert "--repair" not in out and "build again" not in out
    damaged = snapshot(store)
    with pytest.raises(NotRepairable, match="featurestore.ingest"):
        repair(store, report)
    assert verify_main([str(store), "--repair"]) == 1
    assert "left unchanged" in capsys.readouterr().err
    assert snapshot(store) == damaged and "feat" in open_store(store).backbones
    # the advice works: ingesting again with --overwrite mends it
    assert ingest_main([report.ingested_from, "--store", str(store), "--backbone", "feat", "--frame-rate", "100",
                        "--chunk-frames", "16", "--unit-frames", "32", "--overwrite", "--no-progress"]) == 0
    assert verify(store).ok

"""HDF5 / npy interop: featurestore.export writes them, featurestore.ingest builds a store back."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.export import export, main as export_main, safe_name
from featurestore.ingest import IngestError, ingest, main as ingest_main
from featurestore.verify import verify
from tests.conftest import noise_clips

BB = "crepe-tiny"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A CREPE-tiny store of 3 whole clips (ids with '/'), 32-frame chunks and 64-frame units: the
    3.2 s clip (161 frames) and the 1.6 s one (81) are split into pieces."""
    tmp = tmp_path_factory.mktemp("interop")
    paths = noise_clips(tmp / "audio" / "set a", 16000, [3.2, 1.0, 1.6])
    with open(tmp / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "split", "singer"])
        for k, (p, split) in enumerate(zip(paths, ["train", "valid", "test"])):
            w.writerow([p, f"set a/{p.stem}#{k}", split, f"s{k}"])
    store = tmp / "src.zarr"
    build(tmp / "in.csv", store, [BB], clip_settings=ClipSettings(segment_s=None), num_workers=0, progress=False,
          extract=ExtractSettings(chunk_frames=32, target_unit_frames=64))
    assert open_store(store).info(BB)["identity"]["piece_frames"] == 64
    return tmp, store


def _same_store(a, b, backbone_b=BB):
    """The two stores hold the same clips, frames and pooled rows, bit for bit."""
    sa, sb = open_store(a), open_store(b)
    assert list(sb.clip_ids) == list(sa.clip_ids)
    for col in ("split", "start_s", "end_s"):
        np.testing.assert_array_equal(sb.clips[col], sa.clips[col])
    np.testing.assert_array_equal(sb.labels("singer"), sa.labels("singer"))
    assert sb.shape(backbone_b) == sa.shape(BB) and sb.frame_rate(backbone_b) == sa.frame_rate(BB)
    for cid in sa.clip_ids:
        fa, fb = sa.frames(cid, BB), sb.frames(cid, backbone_b)
        assert fb.dtype == fa.dtype == np.float16
        np.testing.assert_array_equal(fb, fa)
        np.testing.assert_array_equal(sb.frame_times(cid, backbone_b), sa.frame_times(cid, BB))
    for stat in ("mean", "std"):
        np.testing.assert_array_equal(sb.pooled(backbone_b, stat=stat), sa.pooled(BB, stat=stat))


@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_export_then_ingest_gives_back_the_store(source, tmp_path, fmt):
    _, store = source
    out = tmp_path / ("feats.h5" if fmt == "hdf5" else "feats")
    assert export(store, "crepe", fmt, out) == 3
    s = open_store(store)
    if fmt == "hdf5":
        import h5py

        with h5py.File(out, "r") as f:
            assert f.attrs["frame_rate"] == 50.0 and f.attrs["backbone"] == BB
            assert [v.decode() for v in f["clip_ids"][()]] == list(s.clip_ids)
            for i, cid in enumerate(s.clip_ids):
                g = f[safe_name(cid)]
                assert g.attrs["id"] == cid and g.attrs["split"] == s.clips["split"][i]
                assert json.loads(g.attrs["labels"]) == {"singer": f"s{i}"}
                np.testing.assert_array_equal(g["frames"][()], s.frames(cid, BB))
                np.testing.assert_array_equal(g["pooled_std"][()], s.pooled(BB, stat="std")[i])
        manifest = out
    else:
        rows = list(csv.DictReader(open(out / "manifest.csv")))
        assert [r["id"] for r in rows] == list(s.clip_ids)
        for i, r in enumerate(rows):
            assert "/" not in r["path"] and "#" not in r["path"]
            layers = [np.load(out / r["path"] / f"layer_{k}.npy") for k in range(6)]
            np.testing.assert_array_equal(np.stack(layers, axis=1), s.frames(r["id"], BB))
            np.testing.assert_array_equal(np.load(out / r["path"] / "pooled_mean.npy"), s.pooled(BB)[i])
        manifest = out / "manifest.csv"
    back = tmp_path / "back.zarr"
    summary = ingest(manifest, back, chunk_frames=32, target_unit_frames=64)
    assert summary["backbone"] == BB and summary["clips"] == 3
    _same_store(store, back)
    g = open_store(back).group(BB)
    assert g.attrs["identity"]["piece_frames"] == 64  # the long clip went in as pieces, as in the source
    assert verify(back).ok, verify(back).text()
    # default unit size (no pieces): the same data
    summary = ingest(manifest, tmp_path / "back2.zarr", backbone="imported")
    _same_store(store, tmp_path / "back2.zarr", "imported")
    assert verify(tmp_path / "back2.zarr").ok


def test_recomputed_pooled_rows_are_the_mean_and_std_of_the_frames(source, tmp_path):
    _, store = source
    export(store, BB, "npy", tmp_path / "f")
    ingest(tmp_path / "f" / "manifest.csv", tmp_path / "r.zarr", recompute_pooled=True, chunk_frames=32, target_unit_frames=64)
    s = open_store(tmp_path / "r.zarr")
    for i, cid in enumerate(s.clip_ids):
        x = s.frames(cid, BB).astype(np.float64)
        np.testing.assert_array_equal(s.pooled(BB)[i], x.mean(0).astype(np.float16))
        np.testing.assert_allclose(s.pooled(BB, stat="std")[i].astype(np.float64), x.std(0),
                                   rtol=2e-3, atol=1e-4 * np.abs(x).max())
    assert verify(tmp_path / "r.zarr").ok


def test_plain_npy_files_with_a_frame_rate(tmp_path):
    """Arrays from another tool: [T, D] and [T, L, D] files, no start/end, only --frame-rate."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((30, 2, 8)).astype(np.float32), rng.standard_normal((7, 2, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    import h5py

    with h5py.File(tmp_path / "b.h5", "w") as f:  # b as an HDF5 group: file.h5#group
        f.create_dataset("clips/b", data=b)
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "split": "train", "mood": "x"},
                                                 {"path": "b.h5#clips/b", "id": "dir/b", "split": "test",
                                                  "mood": "y"}]))
    assert ingest_main([str(tmp_path / "m.json"), "--store", str(tmp_path / "s.zarr"), "--backbone", "other",
                        "--frame-rate", "100", "--no-progress"]) == 0
    s = open_store(tmp_path / "s.zarr")
    assert list(s.clip_ids) == ["a", "dir/b"] and list(s.labels("mood")) == ["x", "y"]
    np.testing.assert_allclose(s.clips["end_s"], [0.3, 0.07])
    np.testing.assert_array_equal(s.frames("a", "other"), a.astype(np.float16))
    np.testing.assert_array_equal(s.pooled("other")[1], b.astype(np.float64).mean(0).astype(np.float16))
    assert s.frame_rate("other") == 100.0
    assert verify(tmp_path / "s.zarr").ok


def test_bad_inputs_are_named(source, tmp_path):
    _, store = source
    out = tmp_path / "f"
    export(store, BB, "npy", out)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    bad = out / rows[1]["path"] / "layer_3.npy"
    x = np.load(bad)
    x[5, 2] = np.nan
    np.save(bad, x)
    with pytest.raises(IngestError, match=r"layer_3\.npy.*NaN or Inf in frame 5, layer 3"):
        ingest(out / "manifest.csv", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()  # a half-written store is removed
    np.save(bad, x[:, :100])  # another width
    with pytest.raises(IngestError, match=r"layer_3\.npy: shape \(51, 100\)"):
        ingest(out / "manifest.csv", tmp_path / "x.zarr")
    bad.unlink()
    with pytest.raises(IngestError, match=r"layer_3\.npy missing"):
        ingest(out / "manifest.csv", tmp_path / "x.zarr")
    (out / "manifest.csv").write_text("path,id\nnowhere,z\n")
    with pytest.raises(IngestError, match=r"nowhere.*no such folder"):
        ingest(out / "manifest.csv", tmp_path / "x.zarr")
    # a frame count that does not fit the manifest's start/end
    np.save(tmp_path / "c.npy", np.zeros((10, 4), np.float32))
    (tmp_path / "c.csv").write_text("path,start,end\nc.npy,0,0.5\n")
    with pytest.raises(IngestError, match=r"c\.npy: 10 frames, but 0 s to 0.5 s give 50 frames"):
        ingest(tmp_path / "c.csv", tmp_path / "x.zarr", "c", frame_rate=100)
    with pytest.raises(IngestError, match="--frame-rate"):
        ingest(tmp_path / "c.csv", tmp_path / "x.zarr", "c")
    assert not (tmp_path / "x.zarr").exists()


def test_cli_errors_and_existing_outputs(source, tmp_path, capsys):
    _, store = source
    assert export_main([str(store), str(tmp_path / "f.h5"), "--backbone", BB, "--format", "hdf5",
                        "--no-progress"]) == 0
    assert export_main([str(store), str(tmp_path / "f.h5"), "--backbone", BB, "--format", "hdf5"]) == 2
    assert "exists" in capsys.readouterr().err
    assert export_main([str(store), str(tmp_path / "g"), "--backbone", "wavlm", "--format", "npy"]) == 2
    assert "wavlm" in capsys.readouterr().err
    args = [str(tmp_path / "f.h5"), "--store", str(tmp_path / "s.zarr"), "--no-progress"]
    assert ingest_main(args) == 0
    assert ingest_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert ingest_main(args + ["--overwrite"]) == 0
    _same_store(store, tmp_path / "s.zarr")


def test_safe_names_are_distinct_file_names():
    ids = ["a/b", "a%2Fb", "..", ".hidden", "x#0001", "né/ö", "a b"]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for n in names:
        assert "/" not in n and "#" not in n and not n.startswith(".") and " " not in n
    from urllib.parse import unquote

    assert [unquote(n) for n in names] == ids
    with pytest.raises(ValueError, match="clip id"):
        safe_name("x" * 300)

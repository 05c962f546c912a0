"""Self-describing arrays (issue 9, item 7): every array has dimension names and attributes saying
what it holds, so plain zarr and xarray read a store without featurestore."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import xarray as xr
import zarr

from featurestore import open_store
from featurestore.build import build
from featurestore.clips import ClipSettings
from tests.conftest import noise_clips

SR = 16000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Five clips with labels, one of them (40 ms) too short for a log-mel frame: its pooled rows are NaN."""
    tmp = tmp_path_factory.mktemp("xr")
    wavs = noise_clips(tmp / "a", SR, [0.6, 0.9, 0.5, 0.7])
    sf.write(str(tmp / "a" / "tiny.wav"), (0.1 * np.ones(int(0.04 * SR))).astype(np.float32), SR, subtype="FLOAT")
    m = tmp / "m.csv"
    m.write_text("path,split,singer,notes\n" + "".join(f"{p},{'train' if i < 3 else 'test'},s{i % 2},\"[[0,1,60]]\"\n"
                                                          for i, p in enumerate(wavs)) + "a/tiny.wav,test,s0,\n")
    path = tmp / "s.zarr"
    build(m, path, ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0, progress=False)
    return path


def _open(path, group):
    return xr.open_zarr(str(path), group=group, consolidated=False)


def test_clip_table_opens_in_xarray(store):
    s = open_store(store)
    ds = _open(store, "clips")
    assert set(ds.data_vars) == {"id", "file_id", "source", "audio", "start_s", "end_s", "split"}
    for col in ds.data_vars:
        assert ds[col].dims == ("clip",)
        got = ds[col].values
        want = s.clips[col]
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got, want)
        else:
            assert [str(v) for v in got] == want.tolist()
        assert ds[col].attrs["description"]
    assert ds["start_s"].attrs["units"] == "s" and ds["end_s"].attrs["units"] == "s"
    labels = _open(store, "clips/labels")
    assert set(labels.data_vars) == {"singer", "notes"}
    for name in labels.data_vars:
        assert labels[name].dims == ("clip",)
        assert [str(v) for v in labels[name].values] == s.labels(name).tolist()
    assert s.labels("notes").tolist() == ["[[0,1,60]]"] * 4 + [""]


def test_backbone_opens_in_xarray_and_says_what_it_holds(store):
    s = open_store(store)
    ds = _open(store, "backbones/logmel")
    dims = {"frames": ("frame", "layer", "dim"), "offsets": ("clip", "bound"), "unit_done": ("unit",),
            "pooled_mean": ("clip", "layer", "dim"), "pooled_std": ("clip", "layer", "dim")}
    assert {k: ds[k].dims for k in dims} == dims
    assert ds.sizes["clip"] == len(s) == 5 and (ds.sizes["layer"], ds.sizes["dim"]) == s.shape("logmel")
    frames, offsets = ds["frames"].values, ds["offsets"].values
    np.testing.assert_array_equal(offsets, s.offsets("logmel"))
    np.testing.assert_array_equal(frames, s.frames_array("logmel")[:])
    for i in range(len(s)):
        a, b = offsets[i]
        np.testing.assert_array_equal(frames[a:b], s.frames(i, "logmel"))
    # frames no clip covers are alignment padding, 0 as the attribute says
    covered = np.zeros(len(frames), bool)
    for a, b in offsets:
        covered[a:b] = True
    assert (~covered).sum() > 0 and not frames[~covered].any()
    assert "alignment padding" in ds["frames"].attrs["description"]
    for stat in ("mean", "std"):
        got = ds[f"pooled_{stat}"].values
        np.testing.assert_array_equal(got, s.pooled("logmel", stat=stat))  # NaN rows compare equal
        # the attribute's promise: float32 statistics over the clip's frames, cast to the store dtype
        for i in range(len(s)):
            x = s.frames(i, "logmel").astype(np.float32)
            want = np.full(got.shape[1:], np.nan, np.float32) if not len(x) else (
                x.mean(0) if stat == "mean" else x.std(0))
            np.testing.assert_allclose(got[i].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert s.n_frames("logmel")[4] == 0 and np.isnan(ds["pooled_mean"].values[4]).all()
    assert ds["unit_done"].values.tolist() == [1] * ds.sizes["unit"]
    fa = ds["frames"].attrs
    fe = s.info("logmel")["frontend"]
    assert (fa["frame_rate_hz"], fa["sample_rate_hz"], fa["stride_samples"], fa["receptive_field_samples"],
            fa["pad_samples"]) == (s.frame_rate("logmel"), fe["sample_rate"], fe["stride"], fe["receptive"], fe["pad"])
    assert ds["offsets"].attrs["units"] == "frame" and "clip i of the clip table" in ds["offsets"].attrs["description"]
    assert "NaN" in ds["pooled_mean"].attrs["description"]


def test_every_array_has_dimension_names(store):
    root = zarr.open_group(str(store), mode="r", zarr_format=3)
    arrays = []

    def walk(g, prefix=""):
        for name, a in g.arrays():
            arrays.append((prefix + name, a))
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(root)
    assert {"inputs/size", "clips/id", "clips/labels/singer", "backbones/logmel/frames"} <= {n for n, _ in arrays}
    for name, a in arrays:
        dn = a.metadata.dimension_names
        assert dn is not None and len(dn) == a.ndim and all(dn), name
        assert a.attrs.get("description"), name


def test_input_table_opens_in_xarray(store):
    ds = _open(store, "inputs")
    paths = [str(v) for v in ds["path"].values]
    assert ds["size"].dims == ("row",) and len(paths) == 5

    assert ds["size"].values.tolist() == [os.stat(p).st_size for p in paths]
    assert ds["mtime_ns"].values.tolist() == [os.stat(p).st_mtime_ns for p in paths]

"""Stores that fit real corpora: pooled-only backbones (--frames none), layer subsets (--layers) and
8-bit frames (--dtype int8), each against the float16/float32 store of the same clips."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from heads.persist import load_head
from tests.conftest import noise_clips
from tests.test_resume import run_build, units_done

ROOT = Path(__file__).resolve().parents[1]
BB = "crepe-tiny"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One demo store holding CREPE tiny five ways: float16 (crepe-tiny), float32, pooled-only,
    layers 1,3,5 and int8."""
    from featurestore.build import DEMO_SEGMENT_S, ExtractSettings, build
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("formats")
    manifest = make_demo_corpus(root / "corpus", n_singers=4, clips_per_singer=5, duration_s=2.0)
    store = root / "store.zarr"
    kinds = {BB: ExtractSettings(), "crepe-f32": ExtractSettings(dtype="float32"),
             "crepe-none": ExtractSettings(frames="none"), "crepe-sub": ExtractSettings(layers=(1, 3, 5)),
             "crepe-int8": ExtractSettings(dtype="int8")}
    for name, ext in kinds.items():
        build(manifest, store, [BB], name=None if name == BB else name, extract=ext, progress=False,
              num_workers=0, clip_settings=ClipSettings(segment_s=DEMO_SEGMENT_S))
    return store


def _fit(store, backbone, out, *extra):
    from heads.fit import TORCH_HEADS, main

    head = extra[extra.index("--head") + 1] if "--head" in extra else "linear"
    torch_opts = ["--epochs", "6", "--lr", "1e-2"] if head in TORCH_HEADS else []  # refused for logreg/lgbm
    return main(["--store", str(store), "--backbone", backbone, *torch_opts, "--seed", "3",
                 "--no-progress", "--out", str(out), *extra])


# ---- pooled-only ------------------------------------------------------------------------------------

def test_pooled_only_store_gives_the_same_clip_head_and_frame_heads_refuse(stores, tmp_path, capsys):
    import torch
    from featurestore import open_store
    from featurestore.datasets import ClipFrames, FrameWindowDataset
    from featurestore.store import NoFramesStored
    from featurestore.verify import verify

    s = open_store(stores)
    for stat in ("mean", "std"):  # the same float32 sums, cast the same way
        np.testing.assert_array_equal(s.pooled("crepe-none", stat=stat), s.pooled(BB, stat=stat))
    assert not (stores / "backbones" / "crepe-none" / "frames").exists()
    assert not s.has_frames("crepe-none") and s.has_frames(BB)

    for head in ("linear", "logreg"):  # a clip head fitted with a fixed seed: the same weights
        assert _fit(stores, BB, tmp_path / f"all-{head}", "--head", head) == 0
        assert _fit(stores, "crepe-none", tmp_path / f"none-{head}", "--head", head) == 0
        a, b = (load_head(tmp_path / f"{k}-{head}" / "head.json") for k in ("all", "none"))
        if head == "linear":
            sa, sb = a.module_.state_dict(), b.module_.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        else:
            np.testing.assert_array_equal(a.model_[-1].coef_, b.model_[-1].coef_)
        ma, mb = (json.loads((tmp_path / f"{k}-{head}" / "metrics.json").read_text()) for k in ("all", "none"))
        assert ma["macro_f1"] == mb["macro_f1"] and ma["confusion"] == mb["confusion"]
    capsys.readouterr()

    # frame heads, frame readers and datasets refuse, naming the store, the backbone and the option
    assert _fit(stores, "crepe-none", tmp_path / "crf", "--head", "crf", "--task", "transcription") == 2
    err = capsys.readouterr().err
    assert "--frames none" in err and "crepe-none" in err and str(stores) in err and "Traceback" not in err
    for call in (lambda: s.frames(s.clip_ids[0], "crepe-none"), lambda: ClipFrames(s, "crepe-none", [0]),
                 lambda: FrameWindowDataset(s, "crepe-none", window=10), lambda: s.frames_array("crepe-none"),
                 lambda: s.frames_into(0, "crepe-none", np.zeros((99, 6, 256), np.float32))):
        with pytest.raises(NoFramesStored, match="--frames none"):
            call()
    rep = verify(stores, ["crepe-none"])
    assert rep.ok, rep.problems
    assert rep.backbones["crepe-none"]["units_value_checked"] == rep.backbones["crepe-none"]["units"]


def test_pooled_only_verify_catches_a_changed_pooled_row(stores, tmp_path):
    import shutil

    from featurestore.verify import verify

    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores, copy)
    g = zarr.open_group(str(copy / "backbones" / "crepe-none"), mode="a")
    row = g["pooled_mean"][4]
    row[2, 7] += 0.5
    g["pooled_mean"][4] = row
    rep = verify(copy, ["crepe-none"])
    assert [p.check for p in rep.problems] == ["checksum"] and rep.problems[0].clips


# ---- layer subsets -----------------------------------------------------------------------------------

def test_layer_subset_frames_equal_the_chosen_layers_and_heads_show_model_indices(stores, tmp_path, monkeypatch):
    from featurestore import open_store
    from featurestore.store import LayerNotStored
    from featurestore.verify import verify
    from heads import fit

    s = open_store(stores)
    assert s.layer_ids("crepe-sub") == [1, 3, 5] and s.shape("crepe-sub") == (3, 256)
    assert s.layer_ids(BB) == list(range(6))
    for cid in s.clip_ids:
        full = s.frames(cid, BB)
        np.testing.assert_array_equal(s.frames(cid, "crepe-sub"), full[:, [1, 3, 5]])
        np.testing.assert_array_equal(s.frames(cid, "crepe-sub", layers=[5, 3]), full[:, [5, 3]])
    np.testing.assert_array_equal(s.pooled("crepe-sub"), s.pooled(BB)[:, [1, 3, 5]])
    np.testing.assert_array_equal(s.pooled("crepe-sub", layers=3), s.pooled(BB, layers=3))
    with pytest.raises(LayerNotStored, match=r"holds model layers \[1, 3, 5\]"):
        s.frames(s.clip_ids[0], "crepe-sub", layers=[0])
    assert verify(stores, ["crepe-sub"]).ok

    drawn = {}
    real = fit.plot_layer_weights

    def spy(values, layers, path, title, ylabel="softmax weight (learned)"):
        drawn[path.parent.name] = list(layers)
        return real(values, layers, path, title, ylabel)

    monkeypatch.setattr(fit, "plot_layer_weights", spy)
    assert _fit(stores, "crepe-sub", tmp_path / "all", "--head", "linear") == 0
    assert drawn["all"] == [1, 3, 5]
    m = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert m["stored_layers"] == [1, 3, 5] and len(m["layer_weights"]) == 3
    assert _fit(stores, "crepe-sub", tmp_path / "two", "--head", "linear", "--layers", "3,5") == 0
    assert drawn["two"] == [3, 5]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["stored_layers"] == [3, 5]
    assert _fit(stores, "crepe-sub", tmp_path / "each", "--head", "linear", "--layers", "each") == 0
    curve = json.loads((tmp_path / "each" / "metrics.json").read_text())["layer_curve"]
    assert curve["layers"] == [1, 3, 5]
    # the same run on the full store reads the same layers: the same head
    assert _fit(stores, BB, tmp_path / "full-two", "--head", "linear", "--layers", "3,5") == 0
    a, b = (load_head(tmp_path / k / "head.json") for k in ("two", "full-two"))
    np.testing.assert_array_equal(a.layer_weights_, b.layer_weights_)
    assert _fit(stores, "crepe-sub", tmp_path / "bad", "--head", "linear", "--layers", "0,3") == 2


# ---- 8-bit frames ------------------------------------------------------------------------------------

def _check_bound(x: np.ndarray, valid: np.ndarray, chunk: int):
    """Quantise x [n, L, D] (float32) and check every valid value against the documented bound;
    returns (max error / range, RMS error / range) over (chunk, layer, channel) with a range."""
    from featurestore.quantize import LEVELS, dequantize, error_bound, quantize_chunks

    codes, params = quantize_chunks(x, valid, chunk)
    assert codes.dtype == np.uint8 and params.shape == (len(x) // chunk, 2) + x.shape[1:]
    back = dequantize(codes, params, chunk)
    # independently: float64 offset + step * code
    ref = params[:, 0].repeat(chunk, 0) + params[:, 1].repeat(chunk, 0).astype(np.float64) * codes
    assert np.abs(back - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())
    err = np.abs(back.astype(np.float64) - x)
    bound = error_bound(params).repeat(chunk, 0)
    assert (err[valid] <= bound[valid]).all(), float((err - bound)[valid].max())
    rel_max, rel_rms = [], []
    for c in range(len(x) // chunk):
        v = valid[c * chunk:(c + 1) * chunk]
        if not v.any():
            continue
        xc, ec = x[c * chunk:(c + 1) * chunk][v], err[c * chunk:(c + 1) * chunk][v]
        rng = xc.max(0).astype(np.float64) - xc.min(0)
        ok = rng > 0
        rel_max.append((ec.max(0)[ok] / rng[ok]).max())
        rel_rms.append((np.sqrt((ec ** 2).mean(0))[ok] / rng[ok]).max())
        assert (ec.max(0)[~ok] == 0).all()  # constant channels are exact
    # half a step of range/255, i.e. 1/510 of the range (plus float32 rounding)
    assert max(rel_max) <= 1 / (2 * LEVELS) * (1 + 1e-3)
    return max(rel_max), max(rel_rms)


def test_int8_dequantises_within_the_documented_bound_random_and_outliers():
    rng = np.random.default_rng(0)
    n, L, D, chunk = 512, 3, 64, 256
    x = rng.standard_normal((n, L, D)).astype(np.float32)
    x[:, :, 5] *= 1000.0          # an outlier channel (transformer "massive activations")
    x[:, 1, 9] += 1e4             # a channel far from 0
    x[100, 2, 11] = 5e3           # one burst in one frame of one chunk
    x[:, 0, 13] = 0.25            # a constant channel
    x[:, 2, 17] = rng.standard_normal(n).astype(np.float32) * 1e-6 + 50.0  # tiny spread, large offset
    valid = np.ones(n, dtype=bool)
    rel_max, rel_rms = _check_bound(x, valid, chunk)
    assert rel_rms < 0.002        # about 1/(255 sqrt 12) = 0.0011 for values spread within a step
    # the burst costs resolution only in its chunk and channel
    from featurestore.quantize import quantize_chunks

    _, params = quantize_chunks(x, valid, chunk)
    assert params[0, 1, 2, 11] > 10 and params[1, 1, 2, 11] < 0.1 and params[0, 1, 2, 12] < 0.1
    # alignment padding (rows of no clip) takes no part in the range and is stored as code 0
    valid[400:] = False
    x[400:] = 0.0
    codes, params = quantize_chunks(x, valid, chunk)
    assert (codes[400:] == 0).all() and params[1, 0, 1, 9] > 9000  # the 1e4 channel's offset is not 0
    _check_bound(x, valid, chunk)
    with pytest.raises(ValueError, match="whole chunks"):
        quantize_chunks(x[:300], valid[:300], chunk)


def test_int8_store_reads_float32_within_the_bound_of_the_float32_frames(stores):
    from featurestore import open_store
    from featurestore.quantize import error_bound
    from featurestore.verify import verify

    s = open_store(stores)
    g = zarr.open_group(str(stores / "backbones" / "crepe-int8"), mode="r")
    assert g["frames"].dtype == np.uint8 and g["pooled_mean"].dtype == np.float16
    chunk = int(g["frames"].chunks[0])
    bound = error_bound(g["frames_quant"][:])  # [C, L, D]
    off = s.offsets("crepe-int8")
    assert np.array_equal(off, s.offsets("crepe-f32"))
    for i, cid in enumerate(s.clip_ids):
        ref = s.frames(cid, "crepe-f32")  # the frontend's float32 output
        x = s.frames(cid, "crepe-int8")
        assert x.dtype == np.float32 and x.shape == ref.shape
        rows = np.arange(off[i, 0], off[i, 1]) // chunk
        assert (np.abs(x.astype(np.float64) - ref) <= bound[rows]).all()
        buf = np.full((len(x) + 3, 2, 256), 7.0, dtype=np.float32)  # the datasets' path, a layer subset
        assert s.frames_into(cid, "crepe-int8", buf, layers=[4, 1]) == len(x)
        np.testing.assert_array_equal(buf[:len(x)], x[:, [4, 1]])
        assert (buf[len(x):] == 7.0).all()
        a, b = 3, min(len(x), 40)
        np.testing.assert_array_equal(s.frames(cid, "crepe-int8", layers=[2], start=a, stop=b), x[a:b, [2]])
    # pooled rows come from the unquantised values: those of the float16 store, bit for bit
    for stat in ("mean", "std"):
        np.testing.assert_array_equal(s.pooled("crepe-int8", stat=stat), s.pooled(BB, stat=stat))
    # real frontend output with an outlier channel made 1000x larger: still within the bound
    x = np.concatenate([s.frames(c, "crepe-f32") for c in s.clip_ids[:12]])
    n = len(x) // chunk * chunk
    x = x[:n].copy()
    x[:, 3, 10] *= 1000.0
    _check_bound(x, np.ones(n, dtype=bool), chunk)
    rep = verify(stores, ["crepe-int8"])
    assert rep.ok, rep.problems


def test_int8_through_zarr_reads_equals_the_memory_mapped_reader(stores):
    """The URL / sharded path (CheckedArray over Zarr) dequantises like the memory-mapped one."""
    from featurestore import open_store
    from featurestore.store import CheckedArray

    s, t = open_store(stores), open_store(stores)
    reader = t._reader("crepe-int8")
    t._readers["crepe-int8"] = CheckedArray(t.group("crepe-int8")["frames"], reader.files, reader.quant)
    for cid in s.clip_ids[:5]:
        np.testing.assert_array_equal(t.frames(cid, "crepe-int8"), s.frames(cid, "crepe-int8"))


INT8 = ["--dtype", "int8"]


def _build(inp, store, wait=True):
    return run_build(inp, store, INT8, wait=wait)


def test_int8_kill_and_resume_equals_uninterrupted_and_verify_catches_a_corrupted_scale(tmp_path):
    inp = tmp_path / "audio"
    noise_clips(inp, 16000, [2.0] * 8)
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    r = _build(inp, ref)
    assert r.returncode == 0, r.stderr
    n_units = zarr.open_group(str(ref), mode="r")[f"backbones/{BB}/unit_done"].shape[0]
    proc = _build(inp, killed, wait=False)
    deadline = time.time() + 120
    while units_done(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < units_done(killed) < n_units, "the build was not interrupted mid-way"
    r = _build(inp, killed)
    assert r.returncode == 0, r.stderr
    ga, gb = (zarr.open_group(str(p / "backbones" / BB), mode="r") for p in (ref, killed))
    for name in ("frames", "frames_quant", "offsets", "pooled_mean", "pooled_std", "unit_done", "unit_checksum"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)

    # a corrupted scale (step) of one chunk: verify names the unit and its clip; --repair + build mend it
    g = zarr.open_group(str(killed / "backbones" / BB), mode="a")
    row = g["frames_quant"][2]
    row[1, 4, 100] *= 1.01
    g["frames_quant"][2] = row
    v = [sys.executable, "-m", "featurestore.verify", str(killed)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(v, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "[checksum]" in r.stdout and "frames_quant" in r.stdout, r.stdout
    from featurestore.verify import verify

    rep = verify(killed)
    assert {p.unit for p in rep.problems} == {2}
    row[1, 4, 100] = -1.0  # a negative step: named as such
    g["frames_quant"][2] = row
    assert "quant" in [p.check for p in verify(killed).problems]
    r = subprocess.run(v + ["--repair"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "units 2 unmarked" in r.stdout, r.stdout
    assert _build(inp, killed).returncode == 0
    assert subprocess.run(v, cwd=ROOT, env=env, capture_output=True, text=True).returncode == 0
    np.testing.assert_array_equal(ga["frames_quant"][:], g["frames_quant"][:])


def test_build_options_are_checked_before_anything_is_extracted(tmp_path, capsys):
    from featurestore.build import ExtractSettings, main

    inp = tmp_path / "audio"
    noise_clips(inp, 16000, [1.0])
    base = ["--input", str(inp), "--store", str(tmp_path / "s.zarr"), "--num-workers", "0", "--no-progress"]
    for extra, msg in ((["--layers", "1,x"], "--layers: expects"), (["--dtype", "int8", "--frames", "none"],
                                                                    "--dtype: int8 quantises frames and frames none")):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert msg in capsys.readouterr().err
    assert main(base + ["--layers", "2,9"]) == 2
    assert "--layers 2,9: crepe-tiny has hidden states 0..5" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="increasing"):
        ExtractSettings(layers=(3, 1))
    # a store built with one format is not resumed with another
    assert main(base + ["--frames", "none"]) == 0
    capsys.readouterr()
    assert main(base) == 2
    assert "frames" in capsys.readouterr().err


def test_int8_pooled_only_and_subset_on_a_url_store_with_shards_equal_a_local_build(tmp_path):
    """fsspec (memory://) and sharded layouts: the three formats build, read and verify as locally."""
    import uuid

    import fsspec
    from featurestore import open_store
    from featurestore.build import ExtractSettings, build
    from featurestore.clips import ClipSettings
    from featurestore.store import CheckedArray
    from featurestore.verify import verify

    noise_clips(tmp_path / "audio", 16000, [3.2, 2.0, 1.3])
    kw = dict(clip_settings=ClipSettings(segment_s=1.0, min_segment_s=0.5), num_workers=0, progress=False)
    shard = dict(target_unit_frames=120, chunk_frames=32, shard_frames=128)
    kinds = {"i8": ExtractSettings(dtype="int8", **shard), "none": ExtractSettings(frames="none", **shard),
             "sub": ExtractSettings(layers=(0, 5), **shard)}
    url = f"memory://formats-{uuid.uuid4().hex}/songs.zarr"
    try:
        for where in (tmp_path / "local.zarr", url):
            for name, ext in kinds.items():
                build(tmp_path / "audio", where, [BB], name=name, extract=ext, **kw)
        a, b = open_store(tmp_path / "local.zarr"), open_store(url)
        assert isinstance(b._reader("i8"), CheckedArray) and b._reader("i8").quant is not None
        for name in kinds:
            for stat in ("mean", "std"):
                assert a.pooled(name, stat=stat).tobytes() == b.pooled(name, stat=stat).tobytes()
            for cid in a.clip_ids:
                if name != "none":
                    x, y = a.frames(cid, name), b.frames(cid, name)
                    assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
            assert verify(url, [name]).ok and verify(tmp_path / "local.zarr", [name]).ok
        assert b.layer_ids("sub") == [0, 5] and not b.has_frames("none")
    finally:
        fs = fsspec.filesystem("memory")
        root = url.split("://", 1)[1].rsplit("/", 1)[0]
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_finetune_stage1_reuse_refuses_pooled_only_and_layer_subset_backbones(stores):
    """Stage 1 of fine-tuning reads the frozen frontend's frames from the store only when it holds all
    of them: --stage1-features store refuses, naming the option; auto falls back to recomputing."""
    from featurestore import open_store
    from featurestore.frontends import load_frontend
    from heads.finetune import FineTuneError, stored_stage1

    fe = load_frontend(BB, device="cpu")
    s = open_store(stores)
    for name, why in (("crepe-none", "--frames none"), ("crepe-sub", r"only model layers \[1, 3, 5\]")):
        with pytest.raises(FineTuneError, match=f"stage1_features: store: .*{why}"):
            stored_stage1(s, name, fe, {}, {}, features="store", stage1_epochs=1, backbone=name)
        assert stored_stage1(s, name, fe, {}, {}, features="auto", stage1_epochs=1, backbone=name) is None


def test_storage_benchmark_published_sizes_match_the_issue_arithmetic():
    """Bytes per audio-hour = L x D x frame rate x 3600 x bytes per value (the issue's figures:
    MERT-v1-95M 5.4 GB, MERT-v1-330M 13.8 GB, WavLM-large 9.2 GB per audio-hour in float16)."""
    from benchmarks.storage import option_settings, published_sizes

    sizes = {p["frontend"]: p for p in published_sizes(5.0)}
    assert round(sizes["mert-v1-95m"]["float16"] / 1e9, 1) == 5.4
    assert round(sizes["mert-v1-330m"]["float16"] / 1e9, 1) == 13.8
    assert round(sizes["wavlm-large"]["float16"] / 1e9, 1) == 9.2
    m = sizes["mert-v1-95m"]
    assert m["int8"] == 13 * 768 * 75 * 3600 * (1 + 8 / 256)        # codes + offset/step per 256-frame chunk
    assert m["frames_none"] == 720 * 2 * 13 * 768 * 2                 # 720 clips/h, mean and std rows, float16
    assert m["frames_none"] / m["float16"] < 0.02
    with pytest.raises(ValueError, match="unknown option"):
        option_settings("bfloat16", (0,))


def test_clustering_on_a_layer_subset_reads_the_model_layer_it_names(stores, tmp_path, capsys):
    from featurestore import open_store
    from pipelines.clustering import main, pitch_class_frames

    s = open_store(stores)
    a = pitch_class_frames(s, "crepe-sub", layer=1, per_class=20)   # stored position 1 = model layer 3
    b = pitch_class_frames(s, BB, layer=3, per_class=20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert main(["--store", str(stores), "--backbone", "crepe-sub", "--layer", "0", "--out", str(tmp_path)]) == 2
    assert "model layers [1, 3, 5]" in capsys.readouterr().err


def test_torchrun_builds_int8_and_pooled_only_stores_equal_to_one_process(tmp_path):
    """Two torchrun ranks (gloo, CPU) write the same int8 codes, offsets and steps, and the same
    pooled-only rows, as one process."""
    from featurestore.build import main
    from featurestore.demo import make_demo_corpus
    from tests.test_distributed_build import torchrun

    manifest = make_demo_corpus(tmp_path / "corpus", n_singers=2, clips_per_singer=3, duration_s=2)
    opts = ["--backbone", BB, "--segment-seconds", "1", "--unit-frames", "40", "--num-workers", "0",
            "--no-progress", "--device", "cpu"]
    for fmt, arrays in ((["--dtype", "int8"], ("frames", "frames_quant", "pooled_mean", "unit_checksum")),
                        (["--frames", "none"], ("pooled_mean", "pooled_std", "unit_checksum"))):
        one, two = tmp_path / f"one{fmt[1]}.zarr", tmp_path / f"two{fmt[1]}.zarr"
        assert main(["--input", str(manifest), "--store", str(one), *opts, *fmt]) == 0
        torchrun(2, "--input", str(manifest), "--store", str(two), *opts, *fmt)
        ga, gb = (zarr.open_group(str(p / "backbones" / BB), mode="r") for p in (one, two))
        assert gb.attrs["complete"] and ga["unit_done"].shape[0] > 2
        for name in arrays:
            np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)


def test_export_writes_int8_frames_as_float32_and_refuses_a_pooled_only_backbone(stores, tmp_path):
    from featurestore import open_store
    from featurestore.export import export
    from featurestore.names import safe_name
    from featurestore.store import NoFramesStored

    s = open_store(stores)
    assert export(stores, "crepe-int8", "npy", tmp_path / "i8") == len(s)
    head = json.loads((tmp_path / "i8" / "frontend.json").read_text())
    assert head["dtype"] == "float32" and head["layers"] == list(range(6))
    cid = s.clip_ids[3]
    x = np.load(tmp_path / "i8" / safe_name(cid) / "layer_4.npy")
    np.testing.assert_array_equal(x, s.frames(cid, "crepe-int8")[:, 4])
    assert export(stores, "crepe-sub", "npy", tmp_path / "sub") == len(s)
    assert json.loads((tmp_path / "sub" / "frontend.json").read_text())["layers"] == [1, 3, 5]
    with pytest.raises(NoFramesStored, match="--frames none"):
        export(stores, "crepe-none", "hdf5", tmp_path / "none.h5")


def test_singer_pipeline_on_a_pooled_only_store_scores_as_on_the_all_frames_store(tmp_path, monkeypatch, capsys):
    """pipelines.singer prepare --demo / build --frames none / fit / evaluate: the same run as with every
    frame stored; the transcription pipeline's crf refuses such a store by name."""
    import featurestore.build as fbuild
    from featurestore.demo import make_demo_corpus
    from pipelines import transcription
    from pipelines.command import main
    from pipelines.singer import SPEC

    monkeypatch.setenv("SINGFRONT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fbuild, "ensure_demo_corpus", lambda: make_demo_corpus(
        fbuild.default_demo_dir() / "corpus", n_singers=4, clips_per_singer=4, duration_s=2.0))
    metrics = {}
    for fmt in ("all", "none"):
        w = tmp_path / fmt
        assert main(SPEC, ["prepare", "--demo", "--workdir", str(w)]) == 0
        assert main(SPEC, ["build", "--workdir", str(w), "--backbone", "crepe", "--no-progress", "--num-workers", "0",
                           "--frames", fmt]) == 0
        assert main(SPEC, ["fit", "--workdir", str(w), "--epochs", "5", "--lr", "1e-2", "--no-progress"]) == 0
        assert main(SPEC, ["evaluate", "--workdir", str(w)]) == 0
        runs = list((w / "runs").glob("*/metrics.json"))
        assert len(runs) == 1
        m = json.loads(runs[0].read_text())
        metrics[fmt] = {k: m[k] for k in ("accuracy", "macro_f1", "confusion", "layer_weights")}
    assert metrics["all"] == metrics["none"]
    capsys.readouterr()
    w = tmp_path / "notes"
    assert main(transcription.SPEC, ["prepare", "--demo", "--workdir", str(w)]) == 0
    assert main(transcription.SPEC, ["build", "--workdir", str(w), "--backbone", "crepe", "--no-progress",
                                     "--num-workers", "0", "--frames", "none"]) == 0
    capsys.readouterr()
    assert main(transcription.SPEC, ["fit", "--workdir", str(w), "--head", "crf", "--epochs", "2",
                                     "--no-progress"]) == 2
    assert "--frames none" in capsys.readouterr().err

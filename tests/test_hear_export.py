"""featurestore.hear: this project's frontends served as a HEAR 2021 module."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

import featurestore.hear as hear
from featurestore import open_store
from featurestore.audio import load_audio
from featurestore.build import ClipSettings, ExtractSettings, build
from featurestore.clips import clip_samples
from featurestore.frontends import load_frontend

from conftest import noise_clips

SR = 16000


# ---- the HEAR submission validator's rules, written as a check ----------------------------------

def hear_rule_violations(module_name: str, model_file_path: str = "", device: str = "cpu") -> list[str]:
    """Every rule of the HEAR 2021 submission validator (hear-validator), checked on a module; returns
    the rules broken (empty: it passes). Rules: the three functions exist; load_model returns a
    torch.nn.Module that moves to ``device``; ``sample_rate`` is 16000, 22050, 44100 or 48000;
    ``scene_embedding_size`` and ``timestamp_embedding_size`` are ints; timestamp embeddings of 4 x 2 s
    of uniform noise in [-1, 1) are float32 [4, T, timestamp_embedding_size] with timestamps [4, T],
    adjacent timestamps a constant interval apart (every difference within 1e-3 ms of the mean, the
    validator's test; its message says 1 ms); scene embeddings of 8 x 3.74 s are float32
    [8, scene_embedding_size]. Added from the HEAR API text: outputs are torch tensors on the input's
    device, and any batch size works (1 and 3 clips give the rows of the batch of 4)."""
    bad = []
    module = importlib.import_module(module_name)
    for fn in ("load_model", "get_timestamp_embeddings", "get_scene_embeddings"):
        if not callable(getattr(module, fn, None)):
            bad.append(f"no function {fn}")
    if bad:
        return bad
    model = module.load_model(model_file_path) if model_file_path else module.load_model()
    if not isinstance(model, torch.nn.Module):
        return ["load_model must return a torch.nn.Module"]
    model.to(device)
    if getattr(model, "sample_rate", None) not in (16000, 22050, 44100, 48000):
        bad.append(f"sample_rate {getattr(model, 'sample_rate', None)!r} not accepted")
    for attr in ("scene_embedding_size", "timestamp_embedding_size"):
        if not isinstance(getattr(model, attr, None), int) or isinstance(getattr(model, attr), bool):
            bad.append(f"{attr} must be an int")
    if bad:
        return bad
    sr = model.sample_rate
    g = torch.Generator().manual_seed(0)
    audio = (torch.rand(4, int(2.0 * sr), generator=g) * 2 - 1).to(device)
    emb, ts = module.get_timestamp_embeddings(audio, model)
    if not (isinstance(emb, torch.Tensor) and isinstance(ts, torch.Tensor)):
        return ["timestamp embeddings and timestamps must be torch tensors"]
    if emb.dtype != torch.float32:
        bad.append(f"timestamp embeddings are {emb.dtype}, not float32")
    if emb.ndim != 3 or ts.ndim != 2:
        return bad + [f"embeddings {tuple(emb.shape)} / timestamps {tuple(ts.shape)}: expected 3 and 2 dimensions"]
    if emb.shape[0] != 4:
        bad.append(f"4 clips in, {emb.shape[0]} rows out")
    if tuple(emb.shape[:2]) != tuple(ts.shape):
        bad.append(f"timestamps {tuple(ts.shape)} do not match embeddings {tuple(emb.shape)}")
    if emb.shape[2] != model.timestamp_embedding_size:
        bad.append(f"embedding width {emb.shape[2]} != timestamp_embedding_size {model.timestamp_embedding_size}")
    diff = torch.diff(ts)
    if diff.numel() == 0 or not bool(torch.all(torch.abs(diff - diff.float().mean()) < 1e-3)):
        bad.append("timestamps are not evenly spaced within 1e-3 ms")
    if emb.device != audio.device or ts.device != audio.device:
        bad.append(f"outputs on {emb.device}/{ts.device}, input on {audio.device}")
    scene_audio = (torch.rand(8, int(3.74 * sr), generator=g) * 2 - 1).to(device)
    scene = module.get_scene_embeddings(scene_audio, model)
    if not isinstance(scene, torch.Tensor) or scene.dtype != torch.float32:
        bad.append("scene embeddings must be a float32 torch tensor")
    elif tuple(scene.shape) != (8, model.scene_embedding_size):
        bad.append(f"scene embeddings {tuple(scene.shape)}, expected (8, {model.scene_embedding_size})")
    elif scene.device != scene_audio.device:
        bad.append(f"scene embeddings on {scene.device}, input on {scene_audio.device}")
    for rows in ([0], [1, 2, 3]):
        part, _ = module.get_timestamp_embeddings(audio[rows], model)
        if tuple(part.shape) != (len(rows),) + tuple(emb.shape[1:]) or not torch.allclose(
                part, emb[rows], rtol=1e-4, atol=1e-5):
            bad.append(f"a batch of {len(rows)} clips does not give the rows of a batch of 4")
    return bad


def write_config(path, **cfg):
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("cfg", [None, {"frontend": "logmel", "layers": 0, "scene": "mean+std"}])
def test_exported_module_passes_every_validator_rule(tmp_path, cfg):
    path = write_config(tmp_path / "m.json", **cfg) if cfg is not None else ""
    assert hear_rule_violations("featurestore.hear", path) == []
    model = hear.load_model(path)
    L, D = (6, 256) if cfg is None else (1, 128)
    width = L * D if cfg is None else D
    assert model.timestamp_embedding_size == width
    assert model.scene_embedding_size == width * (2 if cfg and cfg.get("scene") == "mean+std" else 1)


def test_the_rule_check_catches_broken_modules(tmp_path, monkeypatch):
    """The check above fails modules that break the rules (the HEAR module of test_hear_frontend at
    24 kHz, then with a timestamp 2.5 ms off its grid)."""
    import sys
    import textwrap

    from test_hear_frontend import MODULE

    monkeypatch.syspath_prepend(str(tmp_path))
    for name, sr, jitter, rule in (("bad_rate_mod", 24000, 0.0, "sample_rate 24000 not accepted"),
                                   ("bad_grid_mod", 16000, 2.5, "timestamps are not evenly spaced within 1e-3 ms")):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE.format(sr=sr, jitter=jitter, centred=True)))
        sys.modules.pop(name, None)
        assert hear_rule_violations(name) == [rule]
        sys.modules.pop(name, None)


def test_a_24khz_transformers_model_is_served_at_48khz(tmp_path, save_tiny):
    folder = save_tiny("hubert", preprocessor={"sampling_rate": 24000, "do_normalize": True})
    path = write_config(tmp_path / "m.json", frontend=str(folder), layers="all", window_seconds=1.0,
                        context_seconds=0.2)
    assert hear_rule_violations("featurestore.hear", path) == []
    model = hear.load_model(path)
    assert model.sample_rate == 48000 and model.frontend.sample_rate == 24000
    # 2 s at 48 kHz -> 2 s at 24 kHz: timestamps are the 24 kHz frontend's frame centres (20 ms apart)
    _, ts = hear.get_timestamp_embeddings(torch.zeros(1, 96000), model)
    fe = model.frontend
    np.testing.assert_allclose(ts[0].numpy(), fe.frame_times(fe.n_frames(48000)) * 1000, rtol=1e-6)
    assert fe.n_frames(48000) == ts.shape[1]


def test_config_errors_name_the_file_and_key(tmp_path):
    cases = [({"frontend": "crepe", "sample_rate": 24000}, "sample_rate must be one of"),
             ({"frontend": "crepe", "layer": 3}, "unknown key.*layer"),
             ({"frontend": "crepe", "layers": "sum"}, "layers must be a layer index"),
             ({"frontend": "crepe", "scene": "max"}, "scene must be one of"),
             ({"frontend": "crepe", "window_seconds": 0}, "window_seconds must be a number of seconds > 0"),
             ({"frontend": "crepe", "attention": "flash"}, "attention must be one of sdpa, eager"),
             ({"finetune_run": "r", "frontend": "crepe"}, "finetune_run names the frontend"),
             ({"frontend": "crepe", "layers": 6}, "layers 6 is not a layer of crepe-tiny")]
    for i, (cfg, msg) in enumerate(cases):
        path = write_config(tmp_path / f"c{i}.json", **cfg)
        with pytest.raises(hear.HearConfigError, match=f"{path}.*{msg}" if i < len(cases) - 1 else msg):
            hear.load_model(path)
    (tmp_path / "bad.json").write_text("{frontend: crepe")
    with pytest.raises(hear.HearConfigError, match="bad.json: cannot be parsed"):
        hear.load_model(str(tmp_path / "bad.json"))
    (tmp_path / "m.yaml").write_text("frontend: crepe\nlayers: 2\n")
    assert hear.load_model(str(tmp_path / "m.yaml")).timestamp_embedding_size == 256
    with pytest.raises(ValueError, match=r"torch tensor \[n, samples\]"):
        hear.get_timestamp_embeddings(torch.zeros(16000), hear.load_model(str(tmp_path / "m.yaml")))


# ---- equal to the store ------------------------------------------------------------------------

def clip_audio(store, clip_id: str, sr: int) -> np.ndarray:
    """The samples a build cut for a clip: its file at ``sr``, [start, end) by the build's rule."""
    i = store.clip_index(clip_id)
    a, b = clip_samples(store.clips["start_s"][i:i + 1], store.clips["end_s"][i:i + 1], sr)
    x = load_audio(str(store.clips["audio"][i]), sr)
    out = np.zeros(int(b[0] - a[0]), np.float32)
    seg = x[int(a[0]):int(b[0])]
    out[:len(seg)] = seg
    return out


@pytest.fixture(scope="module")
def crepe_store(tmp_path_factory):
    """Noise clips of 0.7-2.6 s (one cut into 1 s windows) in a float32 CREPE tiny store, and a
    wav2vec2 tiny model with context margins in the same store."""
    from conftest import tiny_model

    root = tmp_path_factory.mktemp("hearstore")
    noise_clips(root / "audio", SR, [2.6, 0.7, 1.3])
    folder = root / "w2v"
    tiny_model("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True).save_pretrained(folder)
    ext = ExtractSettings(dtype="float32", window_s=1.0, context_s=0.2)
    build(root / "audio", root / "s.zarr", ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None),
          extract=ext, num_workers=0, progress=False)
    build(root / "audio", root / "s.zarr", [str(folder)], clip_settings=ClipSettings(segment_s=None),
          extract=ext, num_workers=0, progress=False)
    return root


def test_timestamp_embeddings_equal_the_stored_frames(crepe_store, tmp_path):
    """Every clip with all layers (the 2.6 s one cut into 1 s windows as the build cut it), then one
    clip with a single layer (3, and -1 for the last)."""
    store = open_store(crepe_store / "s.zarr")
    for layers, clips in (("all", store.clips["id"]), (3, ["clip01"]), (-1, ["clip01"])):
        path = write_config(tmp_path / "m.json", frontend="crepe", layers=layers, window_seconds=1.0)
        model = hear.load_model(path)
        for cid in clips:
            x = clip_audio(store, str(cid), SR)
            emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(x)[None], model)
            frames = store.frames(str(cid), "crepe-tiny")  # [T, 6, 256] float32
            want = frames.reshape(len(frames), -1) if layers == "all" else frames[:, layers]
            np.testing.assert_allclose(emb[0].numpy(), want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ts[0].numpy() / 1000, store.frame_times(str(cid), "crepe-tiny") -
                                       store.clips["start_s"][store.clip_index(str(cid))], atol=1e-6)


def test_windowed_transformers_frames_equal_the_store(crepe_store, tmp_path):
    """The same windows and context margins as the build (1 s windows, 0.2 s margins) on a model whose
    frames see the whole window; a batch of the three clips padded to one length is not used: HEAR
    batches are of one length, so each clip is served alone here."""
    store = open_store(crepe_store / "s.zarr")
    path = write_config(tmp_path / "m.json", frontend=str(crepe_store / "w2v"), layers=2, window_seconds=1.0,
                        context_seconds=0.2)
    model = hear.load_model(path)
    for cid in store.clips["id"]:
        x = clip_audio(store, str(cid), SR)
        emb, _ = hear.get_timestamp_embeddings(torch.from_numpy(x)[None], model)
        want = store.frames(str(cid), "w2v", layers=2)[:, 0]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(emb[0].numpy(), want, atol=1e-4 * scale)


def test_learned_weights_are_the_weighted_sum_of_the_runs_layers(tmp_path):
    """A finished heads.fit run's softmax weights over its stored layers (--layers 1,3,5)."""
    from heads.fit import main

    manifest = tmp_path / "m.csv"
    wavs = noise_clips(tmp_path / "audio", SR, [0.6, 0.5, 0.7, 0.5, 0.6, 0.5], seed=1)
    rows = ["path,id,split,singer"] + [f"{p},{p.stem},{s},{c}" for p, s, c in zip(
        wavs, ["train", "train", "train", "train", "valid", "test"], "ababab")]
    manifest.write_text("\n".join(rows) + "\n")
    lab = tmp_path / "lab.zarr"
    build(manifest, lab, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None),
          extract=ExtractSettings(dtype="float32", window_s=1.0), num_workers=0, progress=False)
    run = tmp_path / "run"
    assert main(["--store", str(lab), "--backbone", "crepe", "--head", "linear", "--task", "singer", "--layers",
                 "1,3,5", "--epochs", "2", "--lr", "1e-2", "--out", str(run), "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["stored_layers"] == [1, 3, 5]
    w = np.asarray(m["layer_weights"])
    path = write_config(tmp_path / "c.json", frontend="crepe", layers={"fit_run": str(run)}, window_seconds=1.0,
                        scene="mean+std")
    model = hear.load_model(path)
    assert model.timestamp_embedding_size == 256 and model.scene_embedding_size == 512
    lab_store = open_store(lab)
    for cid in lab_store.clips["id"]:
        x = clip_audio(lab_store, str(cid), SR)
        emb, _ = hear.get_timestamp_embeddings(torch.from_numpy(x)[None], model)
        frames = lab_store.frames(str(cid), "crepe-tiny").astype(np.float64)
        want = sum(wk * frames[:, l] for wk, l in zip(w, [1, 3, 5]))
        np.testing.assert_allclose(emb[0].numpy(), want, rtol=1e-4, atol=1e-5)
        scene = hear.get_scene_embeddings(torch.from_numpy(x)[None], model)[0].numpy()
        np.testing.assert_allclose(scene, np.concatenate([want.mean(0), want.std(0)]), rtol=1e-4, atol=1e-5)
    # the run's features came from CREPE tiny's shipped weights: other weights are refused, naming both
    other = load_frontend("crepe")
    with torch.no_grad():
        other.model.conv1.weight.mul_(1.5)
    other.save_folder(tmp_path / "other")
    path = write_config(tmp_path / "o.json", frontend="crepe", model_path=str(tmp_path / "other"),
                        layers={"fit_run": str(run)})
    with pytest.raises(hear.HearConfigError, match="extracted with other weights"):
        hear.load_model(path)
    # a run without softmax weights (logreg on one layer) is refused, naming the run
    run2 = tmp_path / "run2"
    assert main(["--store", str(lab), "--backbone", "crepe", "--head", "logreg", "--task", "singer", "--layers", "2",
                 "--out", str(run2), "--no-progress"]) == 0
    path = write_config(tmp_path / "l.json", frontend="crepe", layers={"fit_run": str(run2)})
    with pytest.raises(hear.HearConfigError, match="run2: metrics.json has no layer_weights"):
        hear.load_model(path)


def test_a_finetuned_run_is_served_as_reextracted(tmp_path):
    """finetune_run: the run's frontend/ weights, as heads.reextract loads them; its timestamp
    embeddings equal the re-extracted backbone's stored frames."""
    from conftest import tiny_model
    from featurestore.demo import make_demo_corpus
    from heads import finetune as FT
    from heads.reextract import reextract_run

    corpus = make_demo_corpus(tmp_path / "corpus", n_singers=2, clips_per_singer=3, duration_s=1.5)
    folder = tmp_path / "tiny-hubert"
    tiny_model("hubert", feat_extract_norm="layer").save_pretrained(folder)
    store_path = tmp_path / "s.zarr"
    build(corpus, store_path, [str(folder)], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False, extract=ExtractSettings(dtype="float32"))
    run = tmp_path / "run"
    FT.finetune_run(store_path, FT.FinetuneSpec(backbone=str(folder), num_workers=0, no_progress=True, batch_size=2,
                                                mode="lora", epochs=1, frontend_lr=1e-2), run)
    name = reextract_run(run, dtype="float32", num_workers=0, progress=False).backbone
    path = write_config(tmp_path / "ft.json", finetune_run="run", layers=2)  # relative to the config's folder
    model = hear.load_model(path)
    store = open_store(store_path)
    assert model.frontend.weights_hash() == store.info(name)["identity"]["weights_hash"]
    for cid in store.clips["id"][:2]:
        x = clip_audio(store, str(cid), SR)
        emb, _ = hear.get_timestamp_embeddings(torch.from_numpy(x)[None], model)
        want = store.frames(str(cid), name, layers=2)[:, 0]
        np.testing.assert_allclose(emb[0].numpy(), want, atol=1e-4 * float(np.abs(want).max()))
        base = store.frames(str(cid), folder.name, layers=2)[:, 0]
        assert not np.allclose(base, want, atol=1e-3)  # the fine-tune changed the frames served


def test_round_trip_the_exported_module_is_a_backbone(crepe_store, tmp_path):
    """featurestore.hear is itself a HEAR module: --backbone hear:featurestore.hear with a config as the
    weights path stores the configured layer of the frontend it serves, frame for frame."""
    import shutil

    path = write_config(tmp_path / "l4.json", frontend="crepe", layers=4)
    shutil.copytree(crepe_store / "audio", tmp_path / "audio")
    for backbone, weights in (("crepe-tiny", None), ("hear:featurestore.hear", path)):
        build(tmp_path / "audio", tmp_path / "s.zarr", [backbone], model_path=weights,
              clip_settings=ClipSettings(segment_s=None), extract=ExtractSettings(dtype="float32"), num_workers=0,
              progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert store.shape("hear-featurestore.hear") == (1, 256)
    assert store.info("hear-featurestore.hear")["frontend"]["weights_path"] == path
    for cid in store.clips["id"]:
        got = store.frames(str(cid), "hear-featurestore.hear")[:, 0]
        np.testing.assert_allclose(got, store.frames(str(cid), "crepe-tiny", layers=4)[:, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.frame_times(str(cid), "hear-featurestore.hear"),
                                   store.frame_times(str(cid), "crepe-tiny"))

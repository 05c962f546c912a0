"""A HEAR 2021 module, written here, as a backbone of featurestore.build (``--backbone hear:MODULE``)."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from featurestore import open_store
from featurestore.build import ClipSettings, ExtractSettings, build
from featurestore.frontends import load_frontend
from featurestore.hear_frontend import HearModuleError, check_spacing
from featurestore.registry import resolve

from conftest import noise_clips

#: A small HEAR module in the form the HEAR challenge's modules ship: load_model(path) returning a
#: torch.nn.Module with sample_rate / timestamp_embedding_size / scene_embedding_size, and
#: get_timestamp_embeddings / get_scene_embeddings. Frames of WIN samples, centred with zero padding,
#: every HOP samples; a linear projection and tanh. JITTER_MS moves the timestamps of frames >= 3.
#: CENTRED False: no padding, frame j spans samples [j HOP, j HOP + WIN), its timestamp the centre.
MODULE = """
import torch

WIN, HOP, DIM, SR = 400, 160, 8, {sr}
JITTER_MS = {jitter}
CENTRED = {centred}


class TinyHear(torch.nn.Module):
    sample_rate = SR
    timestamp_embedding_size = DIM
    scene_embedding_size = DIM

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.proj = torch.nn.Parameter(torch.randn(WIN, DIM, generator=g) / WIN ** 0.5)


def load_model(model_file_path=""):
    model = TinyHear()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def get_timestamp_embeddings(audio, model):
    x = torch.nn.functional.pad(audio, (WIN // 2, WIN // 2)) if CENTRED else audio
    frames = x.unfold(1, WIN, HOP)                       # [n, audio // HOP + 1, WIN] when centred
    emb = torch.tanh(frames @ model.proj)
    first = 0.0 if CENTRED else WIN / 2
    ts = (torch.arange(frames.shape[1], device=audio.device, dtype=torch.float64) * HOP + first) / SR * 1000.0
    ts = ts + JITTER_MS * (torch.arange(frames.shape[1], device=audio.device) >= 3)
    return emb, ts.float().expand(audio.shape[0], -1)


def get_scene_embeddings(audio, model):
    return get_timestamp_embeddings(audio, model)[0].mean(1)
"""


@pytest.fixture
def hear_module(tmp_path, monkeypatch):
    """hear_module(name, sr=16000, jitter=0.0) -> writes the module into a folder on sys.path."""
    folder = tmp_path / "hearmods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def _write(name, sr=16000, jitter=0.0, centred=True):
        (folder / f"{name}.py").write_text(textwrap.dedent(MODULE.format(sr=sr, jitter=jitter, centred=centred)))
        sys.modules.pop(name, None)
        return name

    yield _write
    for name in [p.stem for p in folder.glob("*.py")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("centred", [True, False])
def test_hear_module_frames_and_times_equal_its_own_output(tmp_path, hear_module, centred):
    mod = hear_module(f"tinyhear_a{int(centred)}", centred=centred)
    # lengths that are not whole numbers of hops: the module's last frame sees the clip's tail
    paths = noise_clips(tmp_path / "audio", 16000, [2.30375, 0.4503, 1.0])
    store_path = tmp_path / "s.zarr"
    build(tmp_path / "audio", store_path, [f"hear:{mod}"], clip_settings=ClipSettings(segment_s=None),
          extract=ExtractSettings(dtype="float32", batch_s=3.0), num_workers=0, progress=False)
    store = open_store(store_path)
    name = f"hear-{mod}"
    assert store.backbones == [name]
    assert store.shape(name) == (1, 8)
    assert store.frame_rate(name) == 100.0
    module = __import__(mod)
    model = module.load_model()
    for p in paths:
        x, sr = sf.read(p, dtype="float32")
        emb, ts = module.get_timestamp_embeddings(torch.from_numpy(x)[None], model)
        got = store.frames(p.stem, backbone=name)
        assert got.shape == (emb.shape[1], 1, 8)
        np.testing.assert_allclose(got[:, 0], emb[0].detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(store.frame_times(p.stem, name) * 1000, ts[0].numpy(), atol=1e-3)
    info = store.info(name)["frontend"]
    assert info["hear_module"] == mod and info["weights_path"] is None
    assert "hear_module_version" in info
    assert info["hop_ms"] == 10.0 and info["first_timestamp_ms"] == (0.0 if centred else 12.5)


def test_windowed_long_clip_and_weights_path(tmp_path, hear_module):
    """A clip longer than the window goes through overlapping windows; a frame-local module gives its
    own frames there too. A weights file is passed to load_model and recorded."""
    mod = hear_module("tinyhear_b")
    module = __import__(mod)
    model = module.load_model()
    with torch.no_grad():
        model.proj.mul_(-2.0)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    paths = noise_clips(tmp_path / "audio", 16000, [3.33])
    build(tmp_path / "audio", tmp_path / "s.zarr", [f"hear:{mod}"], model_path=weights,
          clip_settings=ClipSettings(segment_s=None),
          extract=ExtractSettings(dtype="float32", window_s=1.0, context_s=0.2), num_workers=0, progress=False)
    store = open_store(tmp_path / "s.zarr")
    x, _ = sf.read(paths[0], dtype="float32")
    emb, _ = module.get_timestamp_embeddings(torch.from_numpy(x)[None], module.load_model(str(weights)))
    np.testing.assert_allclose(store.frames(paths[0].stem, f"hear-{mod}")[:, 0], emb[0].detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    info = store.info(f"hear-{mod}")
    assert info["frontend"]["weights_path"] == str(weights.resolve())
    # another weights file is another identity: the store says so instead of mixing frames
    with pytest.raises(Exception, match="weights_hash"):
        build(tmp_path / "audio", tmp_path / "s.zarr", [f"hear:{mod}"], clip_settings=ClipSettings(segment_s=None),
              extract=ExtractSettings(dtype="float32", window_s=1.0, context_s=0.2), num_workers=0, progress=False)


def test_module_sample_rate_is_used(tmp_path, hear_module):
    mod = hear_module("tinyhear_c", sr=22050)
    fe = load_frontend(f"hear:{mod}")
    assert fe.sample_rate == 22050 and fe.stride == 160 and fe.dim == 8 and fe.num_layers == 1
    assert fe.frame_times(3).tolist() == pytest.approx([0, 160 / 22050, 320 / 22050])


def test_irregular_timestamps_are_refused(hear_module):
    mod = hear_module("tinyhear_jitter", jitter=2.5)
    with pytest.raises(HearModuleError, match=r"tinyhear_jitter: timestamps are not evenly spaced "
                                              r"\(spacing from 10 to 12\.5 ms"):
        load_frontend(f"hear:{mod}")
    # and on a later call: the grid is checked on every batch
    with pytest.raises(HearModuleError, match="mod_x.*spacing from 10 to 10.5 ms"):
        check_spacing("mod_x", np.array([[0.0, 10.0, 20.0, 30.5]]), 10.0, 0.0, tol_ms=1e-3)


def test_bad_module_arguments_are_named(hear_module):
    with pytest.raises(ValueError, match="hear:not a module"):
        resolve("hear:not a module")
    with pytest.raises(HearModuleError, match="no_such_hear_module_xyz: cannot be imported"):
        load_frontend("hear:no_such_hear_module_xyz")
    mod = hear_module("tinyhear_d")
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pt"):
        load_frontend(f"hear:{mod}", path="missing.pt")


def test_finetuning_refuses_hear_frontends(hear_module, tmp_path, capsys):
    from heads.finetune import main

    mod = hear_module("tinyhear_e")
    store_dir = tmp_path / "x"
    rc = main(["--backbone", f"hear:{mod}", "--head", "linear", "--store", str(store_dir), "--out",
               str(tmp_path / "run")])
    assert rc == 2
    assert f"--backbone: hear:{mod}: a HEAR module only serves embeddings" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not store_dir.exists()

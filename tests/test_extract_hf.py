"""Stored frames of tiny random transformers models equal the models' own hidden states."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.frontends import load_frontend
from tests.conftest import noise_clips

SECONDS = [0.5, 1.0, 2.3, 2.3, 0.7, 1.7]
WINDOW_S = 1.0

CASES = [
    # (registry name it is loaded as, architecture, config overrides, preprocessor config, sample rate, normalize)
    ("wav2vec2-base", "wav2vec2", {}, {"sampling_rate": 16000, "do_normalize": True}, 16000, True),
    ("wavlm-base-plus", "wavlm", {"feat_extract_norm": "layer"}, None, 16000, False),
    ("mert-v1-95m", "hubert", {"layerdrop": 0.5, "mask_time_prob": 0.5}, None, 24000, True),
    ("music2vec-v1", "data2vec", {}, None, 16000, True),
]


def reference(model, x: np.ndarray, sr: int, normalize: bool) -> np.ndarray:
    """Hidden states of a clip computed window by window with the model called directly -> [T, L, D]."""
    stride, receptive = 320, 400
    n_frames = (len(x) - receptive) // stride + 1
    k = (int(WINDOW_S * sr) - receptive) // stride + 1
    parts = []
    for f in range(0, n_frames, k):
        m = min(k, n_frames - f)
        w = x[f * stride: f * stride + (m - 1) * stride + receptive].astype(np.float64)
        if normalize:
            w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
        with torch.no_grad():
            hs = model(torch.tensor(w, dtype=torch.float32)[None], output_hidden_states=True).hidden_states
        parts.append(torch.stack(hs, dim=2)[0].numpy())
        assert parts[-1].shape[0] == m
    return np.concatenate(parts)


@pytest.mark.parametrize("name,arch,overrides,pre,sr,normalize", CASES, ids=[c[1] for c in CASES])
def test_stored_frames_equal_model_hidden_states(tmp_path, save_tiny, name, arch, overrides, pre, sr, normalize):
    folder = save_tiny(arch, preprocessor=pre, **overrides)
    paths = noise_clips(tmp_path / "audio", sr, SECONDS)
    store_path = tmp_path / "s.zarr"
    report = build(tmp_path / "audio", store_path, [name], model_path=folder,
                   clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
                   # context_s=0: non-overlapping windows, as `reference` computes them (margins are
                   # tested in test_window_context.py)
                   extract=ExtractSettings(window_s=WINDOW_S, context_s=0.0, batch_s=3.0, target_unit_frames=150),
                   num_workers=0, progress=False)
    assert report.skipped == []
    store = open_store(store_path)
    assert store.backbones == [name]
    info = store.info(name)
    assert info["frontend"]["sample_rate"] == sr and info["frontend"]["do_normalize"] == normalize
    assert info["frontend"]["num_layers"] == 3 and info["frontend"]["dim"] == 32

    fe = load_frontend(name, path=folder)
    assert fe.model.config.layerdrop == 0.0 and getattr(fe.model.config, "mask_time_prob", 0.0) == 0.0
    model = fe.model
    for p in paths:
        x, file_sr = sf.read(p, dtype="float32")
        assert file_sr == sr
        ref = reference(model, x, sr, normalize)
        got = store.frames(p.stem, backbone=name)
        assert got.dtype == np.float16 and got.shape == ref.shape
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=4e-3, atol=4e-3 * np.abs(ref).max())
        # pooled = mean / std of the (unrounded) frames
        i = store.clip_index(p.stem)
        np.testing.assert_allclose(store.pooled(name)[i].astype(np.float32), ref.mean(0), rtol=4e-3,
                                   atol=4e-3 * np.abs(ref).max())
        np.testing.assert_allclose(store.pooled(name, stat="std")[i].astype(np.float32), ref.std(0), rtol=1e-2,
                                   atol=4e-3 * np.abs(ref).max())


def test_unknown_model_folder_sizes_come_from_its_config(tmp_path, save_tiny):
    folder = save_tiny("wav2vec2", num_hidden_layers=3, hidden_size=24, intermediate_size=48)
    fe = load_frontend(str(folder))
    assert fe.name == folder.name
    assert (fe.num_layers, fe.dim, fe.sample_rate, fe.frame_rate) == (4, 24, 16000, 50.0)
    assert not fe.supports_padding  # group-norm conv encoder


def test_batching_with_padding_is_exact_for_layer_norm_models(save_tiny):
    fe = load_frontend("wavlm-base-plus", path=save_tiny("wavlm", feat_extract_norm="layer"))
    assert fe.supports_padding
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(16000).astype(np.float32), rng.standard_normal(9000).astype(np.float32)
    batch = np.zeros((2, 16000), np.float32)
    batch[0], batch[1, :9000] = a, b
    with torch.inference_mode():
        h = fe.hidden_states(torch.from_numpy(batch), torch.tensor([16000, 9000])).numpy()
        alone = fe.hidden_states(torch.from_numpy(b[None]), torch.tensor([9000])).numpy()
    n = fe.n_frames(9000)
    assert alone.shape[1] == n
    np.testing.assert_allclose(h[1, :n], alone[0], rtol=1e-4, atol=1e-4)

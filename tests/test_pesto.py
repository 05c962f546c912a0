"""PESTO layers in the store against PESTO's own computation (``pesto.predict`` / ``pesto.load_model``)."""
from __future__ import annotations

import numpy as np
import pesto
import pytest
import soundfile as sf
import torch

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.frontends import load_frontend
from featurestore.registry import REGISTRY, resolve
from pesto.utils import reduce_activations
from tests.conftest import noise_clips, write_wav

SR, HOP = 16000, 320


@pytest.fixture(scope="module")
def pesto_fe():
    return load_frontend("pesto")


def pesto_reference(x: np.ndarray, zero_padding: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """PESTO's own (pitch in Hz [T], activations [T, 384]) at the registry's hop, with its reflect
    padding, or with the CQT convolution switched to zero padding (the store's edge convention)."""
    model = pesto.load_model(REGISTRY["pesto"].source, step_size=1000 * HOP / SR, sampling_rate=SR)
    if zero_padding:
        for cqt in model.preprocessor.hcqt_kernels.cqt_kernels:
            cqt.conv.padding_mode = "zeros"
    with torch.inference_mode():
        pred, _conf, _vol, act = model(torch.tensor(x), sr=SR, convert_to_freq=True, return_activations=True)
    return pred.numpy(), act.numpy()


def test_registry_entry_and_probed_sizes(pesto_fe):
    spec = resolve("PESTO")
    assert (spec.name, spec.kind, spec.sample_rate) == ("pesto", "pesto", 16000)
    fe = pesto_fe
    enc = fe.model.encoder
    # learned by probe(): layer norm + conv1 + residual prefilters + the 1x1 blocks + logits + softmax
    n_1x1 = sum(isinstance(m, torch.nn.Conv1d) for m in enc.conv_layers)
    assert fe.num_layers == 1 + enc.n_prefilt_layers + n_1x1 + 2 == spec.expected_layers == 10
    assert fe.dim == 128 * fe.model.bins_per_semitone == spec.expected_dim == 384  # PESTO's output bins
    assert fe.frame_rate == spec.expected_frame_rate == 50.0
    assert fe.frame_local and fe.supports_padding
    # the receptive field is the CQT kernels' non-zero band, centred: frame j is centred on j * hop
    w = fe.model.preprocessor.hcqt_kernels.cqt_kernels[0].conv.weight
    taps = torch.nonzero(w.abs().sum((0, 1)) > 0).flatten()
    centre = w.shape[-1] // 2
    assert fe.pad == max(centre - int(taps.min()), int(taps.max()) + 1 - centre)
    assert fe.receptive == 2 * fe.pad
    for n in (0, 319, 320, 16000, 16001):
        assert fe.n_frames(n) == n // HOP + 1
    np.testing.assert_allclose(fe.frame_times(5), np.arange(5) * HOP / SR)


def test_stored_last_layer_is_pesto_activations(tmp_path, pesto_fe):
    paths = noise_clips(tmp_path / "audio", SR, [2.3, 0.5])
    store_path = tmp_path / "s.zarr"
    # a 1 s window cuts the 2.3 s clip in three windows: frame-local, so no margins and still exact
    build(tmp_path / "audio", store_path, ["pesto"], clip_settings=ClipSettings(segment_s=None),
          extract=ExtractSettings(window_s=1.0, batch_s=2.5, dtype="float32"), num_workers=0, progress=False)
    store = open_store(store_path)
    assert store.shape("pesto") == (10, 384)
    assert store.frame_rate("pesto") == 50.0
    edge = -(-pesto_fe.pad // HOP)  # frames whose span reaches past a clip edge
    for p in paths:
        x, _ = sf.read(p, dtype="float32")
        got = store.frames(p.stem, backbone="pesto")
        pred, act = pesto_reference(x)
        assert got.shape == (len(x) // HOP + 1, 10, 384) and got.shape[0] == len(act)
        inner = slice(edge, len(x) // HOP - edge + 1)
        assert (np.arange(len(act))[inner] * HOP - pesto_fe.pad >= 0).all()
        assert (np.arange(len(act))[inner] * HOP + pesto_fe.pad <= len(x)).all()
        # frames inside the clip: PESTO's own activations, with its own reflect padding
        # (probabilities; the logits reach ~1e3, so float rounding of a conv path shows at ~1e-4)
        np.testing.assert_allclose(got[inner, -1], act[inner], rtol=1e-4, atol=1e-4)
        # ... and PESTO's pitch (Hz) decoded from the stored layer with PESTO's own reduction
        hz = 440 * 2 ** ((reduce_activations(torch.tensor(got[:, -1]), "alwa").numpy() - 69) / 12)
        np.testing.assert_allclose(hz[inner], pred[inner], rtol=1e-5)
        # every frame, edges included: PESTO with its CQT convolution zero-padded like the store
        # (PyTorch's zero-padding conv path rounds differently: 1e-3 on probabilities)
        _, act0 = pesto_reference(x, zero_padding=True)
        np.testing.assert_allclose(got[:, -1], act0, atol=1e-3)
        assert (got[:, -1].argmax(-1) == act0.argmax(-1)).all()
        # layer 8 is the logits of that softmax
        logits = torch.tensor(got[:, -2])
        np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), got[:, -1], atol=1e-5)
        # the pooled rows are the clip's frame mean and std
        i = store.clip_index(p.stem)
        np.testing.assert_allclose(store.pooled("pesto", rows=[i])[0], got.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(store.frame_times(p.stem, "pesto"), np.arange(len(got)) * HOP / SR)


def test_conv_layers_pooled_and_zero_filled(pesto_fe):
    """Layers 0-7 are PESTO's encoder blocks, read with forward hooks on PESTO's own modules, pooled
    over frequency to D // C bins and zero-filled to D."""
    fe = pesto_fe
    rng = np.random.default_rng(1)
    x = (0.2 * rng.standard_normal(SR // 2)).astype(np.float32)
    enc = fe.model.encoder
    seen = []
    modules = [enc.layernorm, enc.conv1] + list(enc.prefilt_layers) + \
        [m for m in enc.conv_layers if isinstance(m, torch.nn.Dropout)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.clone())) for m in modules]
    model = pesto.load_model(REGISTRY["pesto"].source, step_size=1000 * HOP / SR, sampling_rate=SR)
    model.encoder = enc  # PESTO's forward through the hooked encoder (same weights)
    for cqt in model.preprocessor.hcqt_kernels.cqt_kernels:
        cqt.conv.padding_mode = "zeros"
    with torch.inference_mode():
        model(torch.tensor(x), sr=SR)
        for hk in hooks:
            hk.remove()
        h = fe.hidden_states(torch.nn.functional.pad(torch.tensor(x), (fe.pad, fe.pad))[None],
                             torch.tensor([len(x) + 2 * fe.pad]))[0]
    # prefilters are residual: PESTO's module output + its input is the block's output
    ref = [seen[0], seen[1]]
    for y in seen[2:2 + enc.n_prefilt_layers - 1]:
        ref.append(y + ref[-1])
    ref += seen[2 + enc.n_prefilt_layers - 1:]
    assert len(ref) == 8
    for layer, y in enumerate(ref):
        y = y.numpy()
        t, c, f = y.shape
        bins = min(f, 384 // c)
        edges = [(int(np.floor(k * f / bins)), int(np.ceil((k + 1) * f / bins))) for k in range(bins)]
        pooled = np.stack([y[..., a:b].mean(-1) for a, b in edges], -1).reshape(t, -1)
        np.testing.assert_allclose(h[:, layer, :c * bins].numpy(), pooled, rtol=1e-4,
                                   atol=1e-4 * np.abs(pooled).max())
        assert (h[:, layer, c * bins:] == 0).all()


def test_sine_pitch_read_back_from_the_store(tmp_path):
    """The argmax of the stored activations gives the pitch of a sine (3 bins per semitone, bin k =
    MIDI k/3), frame by frame, also through the default float16 store."""
    midi = [57.0, 64.0, 69.5]
    for i, m in enumerate(midi):
        t = np.arange(int(0.6 * SR)) / SR
        write_wav(tmp_path / "audio" / f"sine{i}.wav",
                  (0.4 * np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t)).astype(np.float32), SR)
    build(tmp_path / "audio", tmp_path / "s.zarr", ["pesto"], clip_settings=ClipSettings(segment_s=None),
          num_workers=0, progress=False)
    store = open_store(tmp_path / "s.zarr")
    for i, m in enumerate(midi):
        act = store.frames(f"sine{i}", "pesto", layers=9)[:, 0].astype(np.float32)
        est = act[4:-4].argmax(-1) / 3.0
        assert np.abs(est - m).max() <= 1 / 3 + 1e-6, (m, est)


def test_checkpoints_that_cannot_load_are_refused():
    # pesto-pitch 2.0.1's own older checkpoint stores its prefilter under other names: its non-strict
    # load would leave them random, so the frontend refuses it, naming the weights
    with pytest.raises(ValueError, match="prefilt_layers.*would stay random"):
        load_frontend("pesto", path="mir-1k")
    with pytest.raises(FileNotFoundError, match="mir-1k_g7"):
        load_frontend("pesto", path="no-such-checkpoint")

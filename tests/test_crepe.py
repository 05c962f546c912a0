"""CREPE layers in the store equal torchcrepe's own computation of the same layers."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchcrepe

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from tests.conftest import noise_clips


def torchcrepe_layers(x: np.ndarray, hop: int, capacity: str = "tiny") -> list[np.ndarray]:
    """Each conv block's output [T, C, F] computed by torchcrepe itself (its framing, its model,
    forward hooks on the batch-norms, then CREPE's own 2x1 max-pool)."""
    torchcrepe.load.model("cpu", capacity)
    model = torchcrepe.infer.model
    outs = {}
    hooks = [getattr(model, f"conv{i}_BN").register_forward_hook(
        lambda m, inp, out, i=i: outs.__setitem__(i, F.max_pool2d(out, (2, 1), (2, 1))[..., 0].numpy()))
        for i in range(1, 7)]
    audio = torch.tensor(x)[None]
    with torch.no_grad():
        frames = next(torchcrepe.preprocess(audio, 16000, hop_length=hop, pad=True))
        model(frames)
        embed = torchcrepe.embed(audio, 16000, hop_length=hop, model=capacity)[0].numpy()
    for h in hooks:
        h.remove()
    return [outs[i] for i in range(1, 7)], embed


def test_crepe_layers_equal_torchcrepe(tmp_path):
    paths = noise_clips(tmp_path / "audio", 16000, [2.7, 0.4])
    store_path = tmp_path / "s.zarr"
    # window of 1 s, so the 2.7 s clip is cut into three windows
    build(tmp_path / "audio", store_path, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None),
          extract=ExtractSettings(window_s=1.0, batch_s=2.5, dtype="float32"), num_workers=0, progress=False)
    store = open_store(store_path)
    assert store.shape("crepe-tiny") == (6, 256)
    for p in paths:
        x, _ = sf.read(p, dtype="float32")
        layers, embed = torchcrepe_layers(x, hop=320)
        got = store.frames(p.stem, backbone="crepe-tiny")
        assert got.shape[0] == 1 + len(x) // 320 == layers[0].shape[0]
        # block 5 is torchcrepe.embed, flattened channel-major, no pooling
        np.testing.assert_allclose(got[:, 4], embed.reshape(len(embed), -1), rtol=1e-4, atol=1e-4)
        for i, ref in enumerate(layers):
            t, c, f = ref.shape
            bins = 256 // c
            pooled = ref.reshape(t, c, bins, f // bins).mean(-1).reshape(t, -1)  # average over frequency groups
            np.testing.assert_allclose(got[:, i], pooled, rtol=1e-4, atol=1e-4 * np.abs(pooled).max())
        times = store.frame_times(p.stem, "crepe-tiny")
        np.testing.assert_allclose(times, np.arange(len(got)) * 320 / 16000)  # centred frames: frame j at j*hop

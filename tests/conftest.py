"""Shared fixtures: tiny random transformers models saved to disk, audio file writers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def tiny_model(arch: str, **overrides):
    """A tiny random model of a real transformers class: wav2vec2 | wavlm | hubert | data2vec."""
    import torch
    import transformers as T

    classes = {"wav2vec2": (T.Wav2Vec2Config, T.Wav2Vec2Model), "wavlm": (T.WavLMConfig, T.WavLMModel),
               "hubert": (T.HubertConfig, T.HubertModel),
               "data2vec": (T.Data2VecAudioConfig, T.Data2VecAudioModel)}
    C, M = classes[arch]
    torch.manual_seed(0)
    return M(C(**{**TINY, **overrides})).eval()


@pytest.fixture
def save_tiny(tmp_path):
    """save_tiny(arch, preprocessor=None, **config) -> folder with the saved model (and processor config)."""
    def _save(arch, preprocessor=None, **overrides):
        folder = tmp_path / f"tiny-{arch}-{len(list(tmp_path.glob('tiny-*')))}"
        tiny_model(arch, **overrides).save_pretrained(folder)
        if preprocessor is not None:
            (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
        return folder
    return _save


def write_wav(path: Path, x: np.ndarray, sr: int, subtype="FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return path


def noise_clips(folder: Path, sr: int, seconds: list[float], seed: int = 0) -> list[Path]:
    """Band-limited-ish random clips (noise + a sine) of the given lengths, written as float wavs."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, s in enumerate(seconds):
        n = int(round(s * sr))
        t = np.arange(n) / sr
        x = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        paths.append(write_wav(folder / f"clip{i:02d}.wav", x.astype(np.float32), sr))
    return paths

"""A HEAR 2021 module as a frontend of the store (``--backbone hear:MODULE``).

A HEAR module is a Python module with three functions (the common API of the HEAR 2021 challenge):
``load_model(model_file_path="")`` returns a model with ``sample_rate`` (Hz),
``timestamp_embedding_size`` and ``scene_embedding_size``; ``get_timestamp_embeddings(audio, model)``
maps audio [n, samples] to embeddings [n, T, D] and timestamps [n, T] in milliseconds;
``get_scene_embeddings`` gives [n, D]. Only the first two are used here: the timestamp embeddings
become the stored frames, one "layer" (L = 1) of D = ``timestamp_embedding_size`` dims.

Frame grid, learned from the module's timestamps (:func:`learn_grid`): the hop (ms, then samples at
the module's rate: a whole number of samples, or the module is refused) and the first frame's time
``t0``. Irregular spacing is refused, naming the module and the spacing found, at load time and on
every call during extraction. The frame count of ``n`` samples must be ``(n - 2 t0) // hop + 1``
(``t0`` and ``hop`` in samples; a centred module, ``t0 = 0``, gives ``n // hop + 1``), checked on
a few lengths; frame ``j`` is at ``t0 + j * hop``.

In the store's geometry (:class:`featurestore.frontends.Frontend`): ``stride`` = hop, ``pad`` = ``m``
hops (``m`` >= 1), ``receptive`` = ``2 pad + 2 t0``, so that :meth:`Frontend.frame_times` gives the
module's timestamps and :meth:`Frontend.n_frames` its frame count. The extractor hands
:meth:`HearFrontend.hidden_states` a window padded by ``pad`` samples of zeros (at a clip's edges) or
of the clip's own audio (inside a long clip) on each side; the module sees that whole window and
its ``m`` first and last frames are dropped. So the module sees every sample of a clip (up to ``pad``
samples past the last frame's time), and for a module that zero-pads its own input (a centred STFT
with zero padding, most torch modules) the stored frames are its own output on the clip alone. A
module that reflect-pads differs on the frames within its reach of a clip's edges, and one whose
frames see the whole input (a transformer) differs in windows of long clips, as transformers models
do (context margins are used: the frontend is not ``frame_local``).

Audio reaches the module at its ``sample_rate`` (the decoder resamples), batched by total samples
like every frontend. Provenance (:meth:`HearFrontend.describe`) records the module, its version and
the weights path. Fine-tuning refuses HEAR frontends (:mod:`heads.finetune`): the HEAR API has no
training entry point.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import math
import os
from pathlib import Path

import numpy as np
import torch

from featurestore.fingerprint import file_sha256
from featurestore.frontend_base import Frontend
from featurestore.registry import BackboneSpec

#: audio lengths (seconds) the grid is learned and checked on
PROBE_SECONDS = (1.0, 1.37)


class HearModuleError(ValueError):
    """A HEAR module this project cannot use as a frontend; the message names the module."""


def module_version(module_name: str, module) -> str | None:
    """The installed distribution's version of a module's top-level package, else its
    ``__version__``, else None."""
    top = module_name.split(".")[0]
    for dist in md.packages_distributions().get(top, []):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    v = getattr(module, "__version__", None) or getattr(importlib.import_module(top), "__version__", None)
    return str(v) if v is not None else None


def _call(module_name: str, module, model, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """get_timestamp_embeddings with its output checked: (embeddings [n, T, D], timestamps ms [n, T])."""
    out = module.get_timestamp_embeddings(audio, model)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise HearModuleError(f"HEAR module {module_name}: get_timestamp_embeddings must return (embeddings, "
                              f"timestamps), got {type(out).__name__}")
    emb, ts = (torch.as_tensor(v) for v in out)
    n = audio.shape[0]
    if emb.dim() != 3 or ts.dim() != 2 or tuple(emb.shape[:2]) != tuple(ts.shape) or emb.shape[0] != n:
        raise HearModuleError(f"HEAR module {module_name}: for audio {tuple(audio.shape)} got embeddings "
                              f"{tuple(emb.shape)} and timestamps {tuple(ts.shape)}; expected [{n}, T, D] and "
                              f"[{n}, T]")
    return emb, ts


def check_spacing(module_name: str, ts_ms: np.ndarray, hop_ms: float, t0_ms: float, tol_ms: float) -> None:
    """Refuse timestamps [n, T] (ms) that are not ``t0 + j * hop`` within ``tol_ms``, naming the module
    and the spacing found."""
    ts_ms = np.asarray(ts_ms, dtype=np.float64)
    if ts_ms.shape[-1] == 0:
        return
    expected = t0_ms + hop_ms * np.arange(ts_ms.shape[-1])
    err = np.abs(ts_ms - expected)
    if np.nanmax(err) > tol_ms or not np.isfinite(ts_ms).all():
        d = np.diff(ts_ms, axis=-1)
        found = (f"spacing from {np.min(d):.4g} to {np.max(d):.4g} ms" if d.size else "one timestamp") + \
                f", first at {np.min(ts_ms[..., 0]):.4g} ms"
        raise HearModuleError(f"HEAR module {module_name}: timestamps are not evenly spaced ({found}; expected "
                              f"every {hop_ms:.4g} ms from {t0_ms:.4g} ms within {tol_ms:.3g} ms): irregular "
                              "frames cannot be stored on a frame grid")


def learn_grid(module_name: str, module, model, sample_rate: int, device) -> tuple[int, int, int]:
    """(hop in samples, ``c`` = 2 x first frame's time in samples, D) from the module's timestamps on
    noise of :data:`PROBE_SECONDS`. HearModuleError naming the module when the timestamps are
    irregular, the hop or ``t0`` is not on the sample grid, or the frame count is not
    ``(n - c) // hop + 1``."""
    g = torch.Generator().manual_seed(0)
    seen = []
    for seconds in PROBE_SECONDS:
        n = int(round(seconds * sample_rate))
        x = (0.1 * torch.randn(1, n, generator=g)).to(device)
        with torch.no_grad():
            emb, ts = _call(module_name, module, model, x)
        seen.append((n, int(emb.shape[1]), ts.detach().double().cpu().numpy()[0], int(emb.shape[2])))
    n, t, ts, dim = max(seen, key=lambda s: s[1])
    if t < 2:
        raise HearModuleError(f"HEAR module {module_name}: {PROBE_SECONDS[-1]} s of audio gave {t} frame(s); "
                              "cannot learn its frame spacing")
    d = np.diff(ts)
    hop_ms, t0_ms = float(np.median(d)), float(ts[0])
    if not hop_ms > 0:
        raise HearModuleError(f"HEAR module {module_name}: timestamps do not increase (spacing {hop_ms:.4g} ms)")
    check_spacing(module_name, ts[None], hop_ms, t0_ms, tol_ms=max(1e-3, 1e-3 * hop_ms))
    hop = hop_ms * sample_rate / 1000.0
    c = 2 * t0_ms * sample_rate / 1000.0
    if abs(hop - round(hop)) > 1e-2 or round(hop) < 1:
        raise HearModuleError(f"HEAR module {module_name}: its hop of {hop_ms:.6g} ms is {hop:.4f} samples at "
                              f"{sample_rate} Hz, not a whole number of samples: the store's frame grid needs one")
    if abs(c - round(c)) > 2e-2:
        raise HearModuleError(f"HEAR module {module_name}: its first frame at {t0_ms:.6g} ms is not on the half-sample "
                              f"grid at {sample_rate} Hz")
    hop, c = int(round(hop)), int(round(c))
    for n, t, _, _ in seen:
        want = (n - c) // hop + 1 if n >= c else 0
        if t != want:
            raise HearModuleError(f"HEAR module {module_name}: {n} samples gave {t} frames; its timestamps (every "
                                  f"{hop_ms:.4g} ms from {t0_ms:.4g} ms) imply (n - {c}) // {hop} + 1 = {want}")
    return hop, c, dim


class HearFrontend(Frontend):
    """A HEAR module's timestamp embeddings as a frontend: L = 1, D = the embedding width, frame
    grid from its timestamps (see the module docstring for the geometry and what equals what).

    ``module_name``: importable module; ``weights``: passed to ``load_model`` (None: its default).
    The model is moved to ``device`` when it is a ``torch.nn.Module`` (and then part of this
    module's state dict, so the store's weights hash covers it)."""

    def __init__(self, spec: BackboneSpec, weights: str | os.PathLike | None = None, device="cpu"):
        super().__init__()
        self.name, self.spec, self.module_name = spec.name, spec, spec.source
        try:
            self.module = importlib.import_module(self.module_name)
        except ImportError as e:
            raise HearModuleError(f"HEAR module {self.module_name}: cannot be imported ({e}); install the package "
                                  "that provides it") from e
        for fn in ("load_model", "get_timestamp_embeddings"):
            if not callable(getattr(self.module, fn, None)):
                raise HearModuleError(f"HEAR module {self.module_name} has no function {fn}: not a HEAR 2021 module")
        self.weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
        if self.weights is not None and not Path(self.weights).exists():
            raise FileNotFoundError(f"HEAR module {self.module_name}: weights file {self.weights} does not exist")
        model = self.module.load_model(self.weights) if self.weights is not None else self.module.load_model()
        sr = getattr(model, "sample_rate", None)
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) and not (
                isinstance(sr, float) and sr.is_integer()) or int(sr) <= 0:
            raise HearModuleError(f"HEAR module {self.module_name}: model.sample_rate must be a positive whole "
                                  f"number of Hz, got {sr!r}")
        self.sample_rate = int(sr)
        if isinstance(model, torch.nn.Module):
            model.eval()
            self.model = model.to(device)  # a submodule: .to(), state_dict() and the weights hash follow it
        else:
            self._plain_model = model
        hop, c, dim = learn_grid(self.module_name, self.module, self.hear_model, self.sample_rate, device)
        self.stride, self.hop_ms = hop, 1000.0 * hop / self.sample_rate
        self.t0_ms = 500.0 * c / self.sample_rate
        self.margin = max(1, math.ceil((1 - c) / (2 * hop)))  # m hops of pad on each side: receptive >= 1
        self.pad = self.margin * hop
        self.receptive = 2 * self.pad + c
        self.frame_local = False  # unknown: treated as looking past its frame (context margins)
        self.version = module_version(self.module_name, self.module)
        self.declared_dim = getattr(model, "timestamp_embedding_size", None)
        if self.declared_dim is not None and int(self.declared_dim) != dim:
            raise HearModuleError(f"HEAR module {self.module_name}: timestamp_embedding_size is {self.declared_dim} "
                                  f"but its embeddings have {dim} dims")

    @property
    def hear_model(self):
        return self.model if "model" in self._modules else self._plain_model

    def hidden_states(self, wave, lengths):
        """wave [B, S] (a window padded by ``pad`` samples each side) -> [B, T, 1, D] with T = (S -
        receptive) // stride + 1: the module's frames on the whole window less its ``margin`` first
        and last ones. Timestamps are checked on the grid (HearModuleError when irregular)."""
        emb, ts = _call(self.module_name, self.module, self.hear_model, wave)
        t_mod = int(emb.shape[1])
        want = self.n_frames(int(wave.shape[1]) - 2 * self.pad) + 2 * self.margin
        if t_mod != want:
            raise HearModuleError(f"HEAR module {self.module_name}: {wave.shape[1]} samples gave {t_mod} frames, "
                                  f"its frame grid says {want}")
        check_spacing(self.module_name, ts.detach().double().cpu().numpy(), self.hop_ms, self.t0_ms,
                      tol_ms=max(1e-3, 1e-3 * self.hop_ms) + 1e-6 * float(ts.detach().abs().max().cpu()))
        m = self.margin
        return emb[:, m:t_mod - m, None, :]

    def weights_hash(self) -> str:
        """sha256 of the model's state dict (a torch model), else of the weights file, else of the
        module's source file."""
        if "model" in self._modules:
            return super().weights_hash()
        path = self.weights or getattr(self.module, "__file__", None)
        return file_sha256(Path(path)) if path and Path(path).is_file() else ""

    def describe(self):
        d = super().describe()
        d.update(model_class="hear", source=self.module_name, hear_module=self.module_name,
                 hear_module_version=self.version, weights_path=self.weights,
                 hop_ms=self.hop_ms, first_timestamp_ms=self.t0_ms)
        return d


def load_hear(spec: BackboneSpec, path=None, device="cpu") -> HearFrontend:
    """Load and probe a HEAR module frontend (``load_frontend("hear:MODULE", path=weights)``)."""
    return HearFrontend(spec, path, device=device).probe()

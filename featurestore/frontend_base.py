"""The frontend interface every extractor input goes through: sizes, frame grid, hidden states.

A frontend maps a batch of waveforms to a stack of equal-width hidden states with *valid* framing
(see :mod:`featurestore.frontends` for the contract and the frontends this project ships;
:mod:`featurestore.pesto_frontend` and :mod:`featurestore.hear_frontend` implement it too).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from featurestore.geometry import FrameGeometry


class Frontend(torch.nn.Module):
    """Base class. Subclasses set ``sample_rate``, ``stride``, ``receptive``, ``pad`` (samples) and
    implement :meth:`hidden_states`.

    Attributes learned by :meth:`probe`: ``num_layers`` (hidden states L), ``dim`` (width D).
    """

    name: str
    sample_rate: int
    stride: int
    receptive: int
    pad: int = 0
    #: True when zero-padding shorter inputs of a batch leaves the valid frames unchanged.
    supports_padding: bool = True
    #: True when frame ``j`` depends on input samples ``[j*stride, j*stride + receptive)`` only, so
    #: windows need no context margins (CREPE, log-mel); False for models that look further.
    frame_local: bool = False
    num_layers: int
    dim: int

    @property
    def geometry(self) -> FrameGeometry:
        """The frame geometry (:class:`featurestore.geometry.FrameGeometry`) of this frontend."""
        return FrameGeometry.of(self)

    @property
    def frame_rate(self) -> float:
        """Frames per second (Hz)."""
        return self.sample_rate / self.stride

    def n_frames(self, n_samples) -> int:
        """Frames of a clip of ``n_samples`` samples (the frontend's own padding included)."""
        return self.geometry.n_frames(n_samples)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each frame's span, in seconds from the clip start -> float64 [n_frames]."""
        return self.geometry.frame_times(n_frames)

    def hidden_states(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """wave float32 [B, S] (zero-padded past ``lengths`` [B]) -> [B, T, L, D], T = frames of S.
        Frames past a row's own frame count are undefined; the caller drops them."""
        raise NotImplementedError

    def forward(self, wave, lengths):  # noqa: D401 - torch convention
        return self.hidden_states(wave, lengths)

    @torch.inference_mode()
    def probe(self) -> "Frontend":
        """Run 1 s of dummy audio; set ``num_layers`` and ``dim``; check the frame count formula."""
        n = self.sample_rate
        g = torch.Generator().manual_seed(0)
        x = 0.1 * torch.randn(1, n + 2 * self.pad, generator=g)
        dev = next(self.parameters(), torch.zeros(0)).device
        h = self.hidden_states(x.to(dev), torch.tensor([x.shape[1]], device=dev))
        expected = self.n_frames(n)
        if h.shape[1] != expected:
            raise RuntimeError(f"{self.name}: 1 s gave {h.shape[1]} frames, the stride/receptive-field "
                               f"formula says {expected}")
        self.num_layers, self.dim = int(h.shape[2]), int(h.shape[3])
        if self.supports_padding:
            self.supports_padding = self._padding_is_exact(x.to(dev), h)
        return self

    def _padding_is_exact(self, x: torch.Tensor, h_full: torch.Tensor) -> bool:
        """Does a shorter row zero-padded in a batch give the same valid frames as alone?
        (Not for group-norm conv encoders, nor for Data2VecAudio's stacked positional convs.)"""
        n = int(x.shape[1] * 0.6)
        batch = torch.zeros(2, x.shape[1], device=x.device)
        batch[0], batch[1, :n] = x[0], x[0, :n]
        h = self.hidden_states(batch, torch.tensor([x.shape[1], n], device=x.device))
        alone = self.hidden_states(x[:, :n], torch.tensor([n], device=x.device))
        m = self.n_frames(n - 2 * self.pad)
        scale = float(alone.abs().max()) + 1e-6
        return bool((h[1, :m] - alone[0, :m]).abs().max() <= 1e-3 * scale)

    def weights_hash(self) -> str:
        """sha256 over the state dict (names, shapes, bytes), so a store records exactly which weights made it."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(k.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def describe(self) -> dict:
        """JSON-able sizes and settings recorded in the store's metadata."""
        return {"name": self.name, **self.geometry.to_attrs(), "num_layers": self.num_layers, "dim": self.dim}

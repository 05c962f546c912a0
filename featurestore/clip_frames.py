"""Hidden states of whole clips held in memory, windowed exactly as extraction windows them.

:func:`clip_hidden_states` runs a frontend over a batch of equal-length clips (a tensor on any
device) with the windows of :mod:`featurestore.extract` (:func:`featurestore.extract.clip_windows`:
the same window length, context margins and frame grid), so its frames are the frames a build
stores for the same audio (before the store's dtype cast). Used by :mod:`featurestore.hear`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from featurestore.extract import WindowGeometry, _autocast, window_plan
from featurestore.frontends import Frontend


def clip_hidden_states(fe: Frontend, wave: torch.Tensor, *, window_s: float, context_s: float,
                       budget_samples: int) -> torch.Tensor:
    """wave float32 [n, S] at ``fe.sample_rate`` -> hidden states float32 [n, T, L, D] on the wave's
    device, T = ``fe.n_frames(S)``.

    Clips longer than ``window_s`` seconds are cut into windows with ``context_s`` seconds of margin
    frames (dropped) as in extraction; each window runs over as many clips at once as fit in
    ``budget_samples`` (rows x window samples). CUDA runs under float16 autocast, as extraction."""
    if wave.dim() != 2:
        raise ValueError(f"expected audio [clips, samples], got shape {tuple(wave.shape)}")
    n, s = int(wave.shape[0]), int(wave.shape[1])
    t = fe.n_frames(s)
    window_k, context_k = window_plan(fe, window_s, context_s)
    out = torch.zeros(n, t, fe.num_layers, fe.dim, dtype=torch.float32, device=wave.device)
    if n == 0 or t == 0:
        return out
    padded = F.pad(wave.float(), (fe.pad, fe.pad))  # the frontend's own centring, as UnitAudio pads
    for span in WindowGeometry.of(fe, window_k, context_k).windows(t, 0, t):
        x = padded[:, span.start:span.start + span.samples]
        rows = max(1, int(budget_samples) // max(1, span.samples))
        for r in range(0, n, rows):
            xb = x[r:r + rows].contiguous()
            lengths = torch.full((xb.shape[0],), xb.shape[1], device=wave.device)
            with _autocast(wave.device):
                h = fe.hidden_states(xb, lengths)
            out[r:r + rows, span.frame:span.frame + span.n_frames] = h[:, span.lead:span.lead + span.n_frames].float()
    return out

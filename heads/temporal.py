"""Temporal context for the frame heads: a small dilated 1-D convolution stack.

A per-frame linear head sees one frame (for CREPE a 64 ms window every 20 ms). A sung note with a
slow attack reaches its pitch and level 80-200 ms after the annotated onset, and its release tail
runs past the offset, so the evidence for "a note starts here" lies up to ~150 ms away.
:class:`TemporalContext` lets each frame's output see ``radius`` frames on each side:

    x [B, T, D] -> Linear(D, width) -> h
    h = h + GELU(Conv1d_k3_dilation_d(h))     for d in dilations(radius)
    -> [B, T, width]

Why a dilated convolution stack rather than a BiLSTM:

* its receptive field is exact and documented: output frame ``t`` depends on input frames
  ``t - radius .. t + radius`` and on no other (``tests/test_temporal_context.py`` checks it with an
  impulse); a BiLSTM's reach is unbounded and differs between the 250-frame training windows and
  whole-song decoding;
* it runs in parallel over time (no recursion), so it adds little to a training step on CPU or GPU;
* with dilations 1, 2, 4, ... the depth grows with log(radius): ±15 frames (±150 ms at 100 Hz) is
  four layers, ±8 frames (±160 ms for CREPE's 50 Hz) four layers.

Padded frames (``mask`` False) are zeroed before every convolution, so a song padded into a batch
gets the same outputs as the song alone (the convolution's own zero padding at the ends).
"""
from __future__ import annotations

import torch


def context_frames(context_s: float, frame_rate: float) -> int:
    """Frames of context on each side for ``context_s`` seconds at ``frame_rate`` frames per second
    (rounded to the nearest frame; 0 means no temporal layer)."""
    if context_s < 0:
        raise ValueError(f"context must be >= 0 seconds, got {context_s}")
    return int(round(float(context_s) * float(frame_rate)))


def dilations(radius: int) -> list[int]:
    """Dilations of kernel-3 convolutions whose receptive fields add up to exactly ``radius`` frames on
    each side: 1, 2, 4, ... with the last one cut so the sum is ``radius`` (e.g. 15 -> [1, 2, 4, 8],
    8 -> [1, 2, 4, 1], 3 -> [1, 2]). Empty for radius 0."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0 frames, got {radius}")
    out, total, d = [], 0, 1
    while total < radius:
        step = min(d, radius - total)
        out.append(step)
        total += step
        d *= 2
    return out


class TemporalContext(torch.nn.Module):
    """x ``[B, T, D]`` (optional bool ``mask [B, T]``) -> ``[B, T, width]``; each output frame sees
    exactly ``radius`` input frames on each side (see the module docstring)."""

    def __init__(self, dim: int, width: int, radius: int):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.radius = int(radius)
        self.proj = torch.nn.Linear(dim, width)
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv1d(width, width, kernel_size=3, dilation=d, padding=d) for d in dilations(self.radius))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(x)                                          # [B, T, W]
        keep = None if mask is None else mask.unsqueeze(2).to(h.dtype)
        h = h.transpose(1, 2)                                     # [B, W, T] for Conv1d
        keep = None if keep is None else keep.transpose(1, 2)
        for conv in self.convs:
            z = h if keep is None else h * keep
            h = h + torch.nn.functional.gelu(conv(z))
        return h.transpose(1, 2)

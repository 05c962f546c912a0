"""Running a frontend over the units of a store.

Audio is decoded in DataLoader worker processes (one item = one unit's clips) while the model
runs; long clips are cut into windows that tile the clip's frame grid (:func:`plan_windows`);
windows are batched by total samples (:func:`batch_windows`); the hidden states of each window
are placed at the clip's frame positions; the finished unit goes to the background writer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from featurestore import audio as au
from featurestore import layout
from featurestore.frontends import Frontend
from featurestore.writer import UnitResult


def window_frames(fe: Frontend, window_s: float) -> int:
    """Frames per window so that a window holds at most ``window_s`` seconds of input (>= 1)."""
    n = int(window_s * fe.sample_rate)
    return max(1, (n - fe.receptive) // fe.stride + 1)


def plan_windows(n_frames: int, k: int, stride: int, receptive: int) -> list[tuple[int, int, int, int]]:
    """Windows of at most ``k`` frames covering frames [0, n_frames).

    Returns (first frame, frames, first sample, samples) per window, samples counted in the
    padded clip: window frames [f, f+m) need samples [f*stride, (f+m-1)*stride + receptive).
    """
    out = []
    for f in range(0, n_frames, k):
        m = min(k, n_frames - f)
        out.append((f, m, f * stride, (m - 1) * stride + receptive))
    return out


@dataclass
class Window:
    clip: int  # index within the unit
    frame: int  # first frame within the clip
    n_frames: int
    wave: np.ndarray  # float32 [samples]


def batch_windows(windows: list[Window], budget_samples: int, allow_padding: bool) -> list[list[Window]]:
    """Group windows into batches whose padded size (rows x longest) stays within ``budget_samples``.

    Windows are sorted by length (longest first) so padding is small; when the frontend cannot be
    fed zero-padded rows, a batch only holds windows of one length. A window longer than the
    budget is a batch of its own. Deterministic for a given list.
    """
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i].wave), i))
    batches, cur, longest = [], [], 0
    for i in order:
        w = windows[i]
        n = len(w.wave)
        same = not cur or n == len(cur[0].wave)
        fits = max(longest, n) * (len(cur) + 1) <= budget_samples
        if cur and (not fits or (not allow_padding and not same)):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(w)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    return batches


class UnitAudio(torch.utils.data.Dataset):
    """Dataset over units: item ``i`` -> (unit, [float32 wave [n + 2*pad] per clip of the unit]).

    Each clip is cut from its file resampled to ``sr`` at samples [round(start*sr), round(end*sr)),
    zero-padded to that length if the resampled file is a few samples shorter, then padded by
    ``pad`` zeros on both sides (the frontend's own centring). A file is decoded once per unit.
    """

    def __init__(self, units: list[int], per_unit: int, audio_paths: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray, sr: int, pad: int):
        self.units, self.per_unit = units, per_unit
        self.paths, self.starts, self.ends = audio_paths, starts, ends
        self.sr, self.pad = sr, pad

    def __len__(self):
        return len(self.units)

    def __getitem__(self, i):
        u = self.units[i]
        lo, hi = layout.unit_range(u, self.per_unit, len(self.paths))
        cache: dict[str, np.ndarray] = {}
        waves = []
        for c in range(lo, hi):
            p = str(self.paths[c])
            if p not in cache:
                cache.clear()
                cache[p] = au.load_audio(p, self.sr, check=False)
            x = cache[p]
            a, b = int(self.starts[c]), int(self.ends[c])
            seg = np.zeros(b - a + 2 * self.pad, dtype=np.float32)
            piece = x[a:b]
            seg[self.pad:self.pad + len(piece)] = piece
            waves.append(seg)
        return u, waves


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def run_unit(fe: Frontend, unit: int, waves: list[np.ndarray], offsets: np.ndarray, clip_lo: int,
             frame_range: tuple[int, int], *, window_k: int, budget_samples: int, device: torch.device,
             dtype: np.dtype, on_batch=None) -> UnitResult:
    """Hidden states of every clip of a unit, laid out at its offsets.

    waves: padded clips of the unit; offsets: int64 [N, 2] of the whole backbone; frame_range:
    the frames the unit owns. Returns frames [owned, L, D] in ``dtype`` (float32 math, cast once)
    and the clip means/stds [clips, L, D] computed in float32 before the cast.
    """
    L, D = fe.num_layers, fe.dim
    start, end = frame_range
    block = np.zeros((end - start, L, D), dtype=dtype)
    n = len(waves)
    sums = np.zeros((n, L, D), dtype=np.float64)
    sqs = np.zeros((n, L, D), dtype=np.float64)
    clip_frames = (offsets[clip_lo:clip_lo + n, 1] - offsets[clip_lo:clip_lo + n, 0]).astype(np.float64)
    clip_seconds = [(len(w) - 2 * fe.pad) / fe.sample_rate for w in waves]
    windows = []
    for c, w in enumerate(waves):
        nf = int(offsets[clip_lo + c, 1] - offsets[clip_lo + c, 0])
        for f, m, s0, ns in plan_windows(nf, window_k, fe.stride, fe.receptive):
            windows.append(Window(c, f, m, w[s0:s0 + ns]))
    for batch in batch_windows(windows, budget_samples, fe.supports_padding):
        longest = max(len(w.wave) for w in batch)
        x = np.zeros((len(batch), longest), dtype=np.float32)
        for i, w in enumerate(batch):
            x[i, :len(w.wave)] = w.wave
        xt = torch.from_numpy(x)
        if device.type == "cuda":
            xt = xt.pin_memory().to(device, non_blocking=True)
        lengths = torch.tensor([len(w.wave) for w in batch], device=device)
        with _autocast(device):
            h = fe.hidden_states(xt, lengths)
        h = h.float().cpu().numpy()
        for i, w in enumerate(batch):
            hw = h[i, :w.n_frames]
            if hw.shape[0] != w.n_frames:
                raise RuntimeError(f"{fe.name}: a window of {len(w.wave)} samples gave {hw.shape[0]} frames, "
                                   f"expected {w.n_frames}")
            pos = int(offsets[clip_lo + w.clip, 0]) + w.frame - start
            block[pos:pos + w.n_frames] = hw
            sums[w.clip] += hw.sum(0, dtype=np.float64)
            sqs[w.clip] += np.square(hw, dtype=np.float64).sum(0)
        if on_batch is not None:
            # audio seconds of the clips covered by this batch (a window's share of its clip)
            on_batch(sum(w.n_frames / clip_frames[w.clip] * clip_seconds[w.clip] for w in batch))
    counts = (offsets[clip_lo:clip_lo + n, 1] - offsets[clip_lo:clip_lo + n, 0]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None, None]
        var = np.maximum(sqs / counts[:, None, None] - mean ** 2, 0.0)
    return UnitResult(unit, start, block, mean.astype(dtype), np.sqrt(var).astype(dtype), clip_lo)

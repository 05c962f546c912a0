"""Running a frontend over the units of a store.

Audio is decoded in DataLoader worker processes (one item = one unit's clips) while the model
runs; long clips are cut into windows (:func:`plan_windows`); windows are batched by total samples
(:func:`batch_windows`); the kept hidden states of each window are placed at the clip's frame
positions; the finished unit goes to the background writer.

Windowing contract (``window_s``, ``context_s``; :func:`window_plan` turns them into frames):

* A clip of at most ``window_s`` seconds (``k`` = :func:`window_frames` frames) is one window: the
  model sees the whole clip, nothing is computed twice, ``context_s`` plays no part.
* A longer clip is cut into windows of at most ``k`` frames (``window_s`` *includes* the margins, so
  the longest input, and the memory, stay as set). Consecutive windows overlap: each window keeps
  a span of frames and also computes ``c`` = ceil(``context_s`` x rate) *margin* frames on each side,
  which are dropped. So every stored frame saw at least ``context_s`` seconds of audio beyond its
  own span on each side, except where the clip itself ends. The kept spans tile the clip's frames
  ``[0, n_frames)`` exactly once. A middle window keeps ``k - 2c`` frames, the first and the last
  keep up to ``k - c`` (no margin is needed at a clip edge). For ``window_s`` = 30 s and
  ``context_s`` = 5 s a long clip costs about 30/20 = 1.5x the compute of the kept frames.
* Windows stay on the clip's frame grid: a window whose first computed frame is ``a`` starts at
  padded-clip sample ``a*stride``, so its output frame ``j`` is clip frame ``a + j``, computed
  from exactly the samples a whole-clip pass uses. A hidden state that only looks a bounded
  distance around its frame (the CNN/positional-conv output, hidden state 0 of transformers
  models, reaches as far as the positional convolution past its receptive field) is therefore
  *equal* to a whole-clip pass once the margin covers that reach; deeper transformer layers attend
  over the whole window and get closer to a whole-clip pass as the margin grows. Two exceptions
  see the whole window whatever the margin: group-norm conv encoders (wav2vec2-base) normalise
  each channel over the window, and ``do_normalize`` inputs are standardised per window.
* Frontends whose frames depend on their own span only (``Frontend.frame_local``: CREPE, log-mel)
  get no margins: windows then tile the frame grid without overlap and equal a whole-clip pass.

Why 5 s by default (``ExtractSettings.context_s``): it is about 4x the reach of the positional
convolution of the wav2vec2/HuBERT/WavLM family (128 frames wide, +-1.28 s at 50 Hz), so hidden
state 0 is exact, and it gives every kept frame at least 10 s of audio around it, the order of the
crops these models were pre-trained on (MERT: 5 s; wav2vec 2.0: at most 15.6 s); yet it leaves
20 s of a 30 s window to keep. Only clips longer than the window pay for margins (the default
5 s segments never do).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

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


def context_frames(fe: Frontend, context_s: float) -> int:
    """Margin frames per window side that give ``context_s`` seconds of audio beyond a kept frame's
    span: ceil(context_s x sample_rate / stride); 0 for frame-local frontends (``fe.frame_local``),
    whose frames do not depend on audio outside their span."""
    if fe.frame_local:
        return 0
    return -(-int(round(context_s * fe.sample_rate)) // fe.stride)


def window_plan(fe: Frontend, window_s: float, context_s: float) -> tuple[int, int]:
    """(window frames ``k``, margin frames ``c``) for a frontend, checked: ``window_s`` > 0,
    ``context_s`` >= 0 and, when margins are used, a middle window keeps ``k - 2c >= 1`` frames.
    Raises ValueError naming the options otherwise."""
    if not (np.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s (--window-seconds) must be a positive number of seconds, got {window_s!r}")
    if not (np.isfinite(context_s) and context_s >= 0):
        raise ValueError(f"context_s (--context-seconds) must be >= 0 seconds, got {context_s!r}")
    k, c = window_frames(fe, window_s), context_frames(fe, context_s)
    if c and k - 2 * c < 1:
        raise ValueError(
            f"{fe.name}: window_s (--window-seconds) {window_s:g} s holds {k} frames, which leaves nothing "
            f"between two context margins of {c} frames (context_s, --context-seconds {context_s:g} s): "
            f"the window must be longer than twice the context "
            f"(here more than {2 * c * fe.stride / fe.sample_rate:g} s)")
    return k, c


class WindowSpan(NamedTuple):
    """One window of a clip, in frames of the clip and samples of the padded clip.

    Kept frames ``[frame, frame + n_frames)`` are stored; the window computes ``lead`` margin frames
    before them and ``trail`` after them, all dropped. Its input is padded-clip samples
    ``[start, start + samples)`` with ``start = (frame - lead) * stride`` (on the frame grid)."""

    frame: int
    n_frames: int
    lead: int
    trail: int
    start: int
    samples: int


def plan_windows(n_frames: int, k: int, stride: int, receptive: int, context: int = 0) -> list[WindowSpan]:
    """Windows of at most ``k`` frames whose kept frames tile frames [0, n_frames) exactly once.

    ``context``: margin frames computed and dropped on each side of a window's kept frames, except
    at the clip's edges. A clip of at most ``k`` frames is one window without margins. Otherwise the
    first window keeps ``k - context`` frames, middle ones ``k - 2*context``, the last one the rest
    (with up to ``k - context``). Window frames [a, b) need samples [a*stride, (b-1)*stride + receptive)
    of the padded clip. ``context=0`` gives the non-overlapping windows of ``k`` frames.
    """
    if k < 1 or context < 0:
        raise ValueError(f"plan_windows: need k >= 1 and context >= 0, got k={k}, context={context}")
    if n_frames > k and k - 2 * context < 1:
        raise ValueError(f"plan_windows: a window of {k} frames has no room between two margins of {context}")
    out = []
    f = 0
    while f < n_frames:
        lead = min(context, f)
        first = f - lead
        stop = n_frames if n_frames - first <= k else first + k - context
        last = min(n_frames, stop + context)
        samples = (last - first - 1) * stride + receptive
        out.append(WindowSpan(f, stop - f, lead, last - stop, first * stride, samples))
        f = stop
    return out


@dataclass
class Window:
    clip: int  # index within the unit
    frame: int  # first kept frame within the clip
    n_frames: int  # kept frames
    lead: int  # margin frames before the kept ones (dropped)
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
             dtype: np.dtype, context_k: int = 0, on_batch=None) -> UnitResult:
    """Hidden states of every clip of a unit, laid out at its offsets.

    waves: padded clips of the unit; offsets: int64 [N, 2] of the whole backbone; frame_range:
    the frames the unit owns; window_k / context_k: frames per window and margin frames per side
    (:func:`window_plan`, :func:`plan_windows`); margin frames are computed and dropped. Returns
    frames [owned, L, D] in ``dtype`` (float32 math, cast once) and the clip means/stds
    [clips, L, D] computed in float32 before the cast.
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
        for span in plan_windows(nf, window_k, fe.stride, fe.receptive, context_k):
            windows.append(Window(c, span.frame, span.n_frames, span.lead,
                                  w[span.start:span.start + span.samples]))
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
            hw = h[i, w.lead:w.lead + w.n_frames]
            if hw.shape[0] != w.n_frames:
                raise RuntimeError(f"{fe.name}: a window of {len(w.wave)} samples gave {h.shape[1]} frames, "
                                   f"expected at least {w.lead + w.n_frames}")
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

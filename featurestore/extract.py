"""Running a frontend over the units of a store.

Audio is decoded in DataLoader worker processes (one item = one unit's clips, or one piece of a
clip split over several units; only the samples the unit's windows read are decoded) while the
model runs; long clips are cut into windows (:func:`plan_windows`, :func:`clip_windows` for a
piece); windows are batched by total samples (:func:`batch_windows`); the kept hidden states of
each window are placed at the clip's frame positions; the finished unit goes to the background
writer. Memory therefore follows the unit size (``target_unit_frames``), not the clip's length.

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
from featurestore.quantize import quantize_chunks
from featurestore.writer import UnitResult, pooled_stats


def window_frames(fe: Frontend, window_s: float) -> int:
    """Frames per window so that a window holds at most ``window_s`` seconds of input (>= 1)."""
    return max(1, fe.geometry.valid_frames(int(window_s * fe.sample_rate)))


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


def clip_windows(n_frames: int, lo: int, hi: int, k: int, stride: int, receptive: int, context: int = 0,
                 frame_local: bool = False) -> list[WindowSpan]:
    """The windows that compute a clip's frames [lo, hi) (a piece of a clip split over several
    units, or the whole clip: ``lo=0, hi=n_frames``), keeping only those frames.

    They are the windows of the whole clip (:func:`plan_windows`) whose kept frames meet [lo, hi),
    each keeping its part inside (its other kept frames become margin), so every frame is computed
    from exactly the samples, and in exactly the window, that extracting the whole clip at once
    uses: pieces change what is held in memory, never a stored value. The price is that a window
    straddling a piece boundary runs once for each side (at most one window per boundary).
    A ``frame_local`` frontend's frames do not depend on the window, so [lo, hi) is tiled on its
    own (windows of ``k`` frames from ``lo``, nothing computed twice)."""
    if not 0 <= lo <= hi <= n_frames:
        raise ValueError(f"clip_windows: frames [{lo}, {hi}) are not inside the clip's [0, {n_frames})")
    if frame_local:
        return [WindowSpan(s.frame + lo, s.n_frames, s.lead, s.trail, s.start + lo * stride, s.samples)
                for s in plan_windows(hi - lo, k, stride, receptive, 0)]
    out = []
    for s in plan_windows(n_frames, k, stride, receptive, context):
        a, b = max(s.frame, lo), min(s.frame + s.n_frames, hi)
        if a < b:
            first = s.frame - s.lead  # first computed frame: unchanged, so are start and samples
            out.append(WindowSpan(a, b - a, a - first, s.frame + s.n_frames + s.trail - b, s.start, s.samples))
    return out


class ClipWave(NamedTuple):
    """The audio a unit needs of one clip: padded-clip samples [first, first + len(wave)).

    row: the clip's row in the clip table; wave: float32 samples of the clip padded by the
    frontend's ``pad`` zeros on both sides (the frontend's own centring), from padded-clip sample
    ``first``; seconds: the clip's whole length in seconds (for progress). ``error``: why the file
    could not be decoded now (it vanished, changed or became unreadable since the clip table was
    planned); the wave is then zeros and :func:`run_unit` stores the clip's frames as NaN."""

    row: int
    first: int
    wave: np.ndarray
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class WindowGeometry:
    """What is needed to know which samples a unit's windows read: the frontend's ``stride``,
    ``receptive`` and ``pad`` (samples), window and margin frames (:func:`window_plan`) and whether
    its frames are frame-local."""

    stride: int
    receptive: int
    pad: int
    window_k: int
    context_k: int
    frame_local: bool

    @classmethod
    def of(cls, fe: Frontend, window_k: int, context_k: int) -> "WindowGeometry":
        return cls(fe.stride, fe.receptive, fe.pad, window_k, context_k, bool(fe.frame_local))

    def windows(self, n_frames: int, lo: int, hi: int) -> list[WindowSpan]:
        return clip_windows(n_frames, lo, hi, self.window_k, self.stride, self.receptive, self.context_k,
                            self.frame_local)


#: clips of one file in one unit are decoded together when the gap between them is at most this
#: many seconds (segments of one file: one decode; clips far apart: one decode each)
MERGE_GAP_S = 1.0


class UnitAudio(torch.utils.data.Dataset):
    """Dataset over units: item ``i`` -> (unit, [:class:`ClipWave` per clip of the unit]), or
    (unit, None) when the unit's marker says it was done since the work list was made.

    units: int64 [K, 5], the units to load in order: unit number, then its row of
    :func:`featurestore.layout.unit_table`; offsets [N, 2]: the backbone's frame ranges. A clip is its file resampled to ``sr`` at samples [starts[c], ends[c])
    (zero where the file is shorter), padded by ``geometry.pad`` zeros on both sides. Only the
    samples the unit's windows read (:class:`WindowGeometry`) are decoded
    (:func:`featurestore.audio.load_audio_range`), so memory follows the unit's size, not the
    file's: a piece of a two-hour clip decodes its own stretch (plus context margins). Clips of one
    file less than :data:`MERGE_GAP_S` apart are decoded in one stretch. ``done_path``: the
    backbone's ``unit_done`` array, read before decoding a unit (None: not checked).

    Bad input never stops the work: a file that cannot be decoded now (gone, unreadable), or whose
    size or modification time differs before or after its decode from ``file_stats`` (path ->
    (size, mtime_ns), taken when extraction started), gives its clips a :class:`ClipWave` with
    ``error`` set, and the unit's other clips are decoded as usual.
    """

    def __init__(self, units: np.ndarray, offsets: np.ndarray, audio_paths: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray, sr: int, geometry: WindowGeometry, done_path: str | None = None,
                 file_stats: dict | None = None):
        self.units, self.offsets = np.asarray(units, dtype=np.int64).reshape(-1, 5), offsets
        self.paths, self.starts, self.ends = audio_paths, starts, ends
        self.sr, self.geo, self.done_path = sr, geometry, done_path
        self.file_stats = file_stats or {}
        self._done = None

    def _decode(self, path: str, lo: int, hi: int) -> tuple[np.ndarray | None, str | None]:
        """(samples [lo, hi) of ``path`` at ``sr``, None) or (None, why it cannot be used now)."""
        def changed() -> str | None:
            want = self.file_stats.get(path)
            if want is None:
                return None
            have = file_stat(path)
            if have is None:
                return "vanished during extraction (no such file)"
            if have != want:
                return (f"changed during extraction (size {want[0]} -> {have[0]} bytes, mtime_ns {want[1]} -> "
                        f"{have[1]})")
            return None

        why = changed()
        if why:
            return None, why
        try:
            x = au.load_audio_range(path, self.sr, lo, hi)
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises for a file that went bad
            gone = isinstance(e, FileNotFoundError) or file_stat(path) is None
            return None, f"{'vanished' if gone else 'unreadable'} during extraction ({type(e).__name__}: {e})"
        why = changed()
        return (None, why) if why else (x, None)

    def __len__(self):
        return len(self.units)

    def is_done(self, u: int) -> bool:
        """The unit's marker as stored now (one small read)."""
        if self.done_path is None:
            return False
        if self._done is None:  # opened lazily: in the worker process that uses it
            import zarr

            self._done = zarr.open_array(self.done_path, mode="r")
        return bool(self._done[u])

    def needed(self, row: tuple[int, int, int, int]) -> tuple[int, int]:
        """Padded-clip samples [first, last) that the windows of a clip's frames [f0, f1) read."""
        c, T, f0, f1 = row
        spans = self.geo.windows(T, f0, f1)
        if not spans:
            return 0, 0
        return min(s.start for s in spans), max(s.start + s.samples for s in spans)

    def __getitem__(self, i):
        u, *unit_row = (int(v) for v in self.units[i])
        if self.is_done(u):
            return u, None
        pad, sr = self.geo.pad, self.sr
        need = []  # (clip row, first padded sample, last, file sample range [fa, fb))
        for row in layout.unit_clip_frames(self.offsets, np.array(unit_row)):
            c = row[0]
            first, last = self.needed(row)
            a, b = int(self.starts[c]), int(self.ends[c])
            fa, fb = a + min(max(first - pad, 0), b - a), a + min(max(last - pad, 0), b - a)
            need.append((c, first, last, fa, fb))
        waves, k = [], 0
        gap = int(MERGE_GAP_S * sr)
        while k < len(need):  # a run of clips of one file, close together: one decode
            j = k + 1
            while (j < len(need) and str(self.paths[need[j][0]]) == str(self.paths[need[k][0]])
                   and need[j][3] - max(n[4] for n in need[k:j]) <= gap and need[j][3] >= need[k][3]):
                j += 1
            lo, hi = min(n[3] for n in need[k:j]), max(n[4] for n in need[k:j])
            x, error = self._decode(str(self.paths[need[k][0]]), lo, hi) if hi > lo else (np.zeros(0, np.float32), None)
            for c, first, last, fa, fb in need[k:j]:
                seg = np.zeros(max(last - first, 0), dtype=np.float32)
                if error is not None:
                    waves.append(ClipWave(c, first, seg, (int(self.ends[c]) - int(self.starts[c])) / sr, error))
                    continue
                # padded-clip sample p holds clip sample p - pad, i.e. file sample starts[c] + p - pad
                p0 = int(self.starts[c]) - pad  # file sample of padded-clip sample 0
                q0, q1 = max(fa, p0 + first), min(fb, p0 + last)
                if q1 > q0:
                    seg[q0 - p0 - first:q1 - p0 - first] = x[q0 - lo:q1 - lo]
                waves.append(ClipWave(c, first, seg, (int(self.ends[c]) - int(self.starts[c])) / sr))
            k = j
        return u, waves


def file_stat(path: str) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns) of a local file, None when it cannot be stat'ed."""
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def run_unit(fe: Frontend, unit: int, unit_row: np.ndarray, clips: list[ClipWave], offsets: np.ndarray, *,
             window_k: int, budget_samples: int, device: torch.device, dtype: np.dtype, context_k: int = 0,
             clip_units: range | None = None, on_batch=None, layers: list[int] | None = None,
             keep_frames: bool = True, quant_chunk: int = 0) -> UnitResult:
    """Hidden states of a unit's frames, laid out at its offsets.

    unit_row: the unit's row of :func:`featurestore.layout.unit_table` (clips [lo, hi), frames
    [start, end) it owns); clips: the audio of each of its clips (:class:`UnitAudio`); offsets:
    int64 [N, 2] of the whole backbone; window_k / context_k: frames per window and margin frames
    per side (:func:`window_plan`, :func:`clip_windows`); margin frames are computed and dropped.
    Returns frames [owned, L, D] in ``dtype`` (float32 math, cast once) and the clip means/stds
    [clips, L, D] computed in float32 before the cast; for a piece of a split clip (``clip_units``:
    every unit of that clip) the float64 sum and sum of squares of its frames [2, L, D] instead.
    A clip whose audio came with an ``error`` (:class:`ClipWave`) is not run: its frames, pooled rows
    (or piece sums) are NaN, which ``featurestore.verify`` reports, and the unit's other clips are stored.

    ``layers``: model hidden-state indices to keep (None: all; L is then their count);
    ``keep_frames`` False: a pooled-only backbone, frames [0, L, D] (pooled rows as always);
    ``quant_chunk`` > 0: 8-bit frames (:mod:`featurestore.quantize`): the frames become uint8 codes
    quantised per chunk of that many frames from the float32 values, ``quant`` holds the chunks'
    parameters (NaN where a clip's frames are NaN), and the pooled rows (from the unquantised
    values) are cast to ``dtype``.
    """
    L, D = (fe.num_layers if layers is None else len(layers)), fe.dim
    lo, hi, start, end = (int(v) for v in unit_row)
    geo = WindowGeometry.of(fe, window_k, context_k)
    sel = None if layers is None else list(layers)
    block = np.zeros((end - start if keep_frames else 0, L, D), dtype=np.float32 if quant_chunk else dtype)
    valid = np.zeros(len(block), dtype=bool)
    n = hi - lo
    sums = np.zeros((n, L, D), dtype=np.float64)
    sqs = np.zeros((n, L, D), dtype=np.float64)
    parts = layout.unit_clip_frames(offsets, unit_row)
    windows, seconds_per_frame = [], np.zeros(n)
    for (c, T, f0, f1), cw in zip(parts, clips):
        if int(cw.row) != c:
            raise RuntimeError(f"unit {unit}: audio of clip row {int(cw.row)} where clip row {c} was expected")
        wave = np.asarray(cw.wave)
        seconds_per_frame[c - lo] = float(cw.seconds) / max(T, 1)
        if getattr(cw, "error", None) is not None:  # no audio: NaN marks the frames as missing
            pos = int(offsets[c, 0]) + f0 - start
            block[pos:pos + f1 - f0] = np.nan
            valid[pos:pos + f1 - f0] = True  # (int8: the chunk's offset and step become NaN)
            sums[c - lo], sqs[c - lo] = np.nan, np.nan
            continue
        for span in geo.windows(T, f0, f1):
            a = span.start - int(cw.first)
            windows.append(Window(c - lo, span.frame, span.n_frames, span.lead, wave[a:a + span.samples]))
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
        if sel is not None:
            h = h[:, :, sel]
        h = h.float().cpu().numpy()
        for i, w in enumerate(batch):
            hw = h[i, w.lead:w.lead + w.n_frames]
            if hw.shape[0] != w.n_frames:
                raise RuntimeError(f"{fe.name}: a window of {len(w.wave)} samples gave {h.shape[1]} frames, "
                                   f"expected at least {w.lead + w.n_frames}")
            pos = int(offsets[lo + w.clip, 0]) + w.frame - start
            if keep_frames:
                block[pos:pos + w.n_frames] = hw
                valid[pos:pos + w.n_frames] = True
            sums[w.clip] += hw.sum(0, dtype=np.float64)
            sqs[w.clip] += np.square(hw, dtype=np.float64).sum(0)
        if on_batch is not None:  # audio seconds of the frames this batch kept
            on_batch(sum(w.n_frames * seconds_per_frame[w.clip] for w in batch))
    quant = None
    if quant_chunk and keep_frames:
        block, quant = quantize_chunks(block, valid, quant_chunk)
    q = {"quant": quant, "chunk": quant_chunk} if quant is not None else {}
    if clip_units is not None:
        T = int(offsets[lo, 1] - offsets[lo, 0])
        empty = np.zeros((0, L, D), dtype=dtype)
        return UnitResult(unit, start, block, empty, empty, lo, sums=np.stack([sums[0], sqs[0]]),
                          clip_units=clip_units, clip_frames=T, **q)
    counts = offsets[lo:hi, 1] - offsets[lo:hi, 0]
    mean, std = pooled_stats(sums, sqs, counts, dtype)
    return UnitResult(unit, start, block, mean, std, lo, **q)

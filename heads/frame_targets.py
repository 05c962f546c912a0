"""Frame-classifier targets, loss and note parser for singing transcription.

This is the convention of the EfficientNet-b0 MIR-ST500 baseline (REFERENCES.md section 2).
Each frame has 20 outputs (logits):

====================  =======  =====================================================
outputs               index    meaning
====================  =======  =====================================================
onset                 0        a note starts on this frame (sigmoid / BCE)
silence               1        no note sounds on this frame (sigmoid / BCE)
octave                2..6     5 classes: 0..3 = octave of MIDI 36-83, 4 = inactive
pitch class           7..19    13 classes: 0..11 = ``midi % 12``, 12 = inactive
====================  =======  =====================================================

``octave = clip((midi - 36) // 12, 0, 3)`` and ``pitch_class = midi % 12``, so a frame's pitch is
``octave * 12 + pitch_class + 36`` (MIDI).  Notes are ``[onset_s, offset_s, midi]`` with times in
seconds.  Frame ``j`` of a song (or chunk) lies at time ``frame_offset_s + j / frame_rate`` seconds,
``frame_rate`` in Hz (frames per second).

Pipeline: model logits per chunk ``[T_i, 20]`` -> :func:`join_chunks` -> :func:`probabilities`
-> :func:`parse_notes` over the whole song.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from heads.notes import midi_number

N_OUTPUTS = 20
ONSET = 0
SILENCE = 1
OCTAVE = slice(2, 7)
PITCH_CLASS = slice(7, 20)
N_OCTAVE = 5
N_PITCH_CLASS = 13
INACTIVE_OCTAVE = 4
INACTIVE_PC = 12
LOWEST_MIDI = 36

# Tolerance (seconds) when comparing frame times with note boundaries, so that float noise in
# e.g. 0.06 vs 3 / 50 does not move a boundary by one frame.
_TIME_EPS = 1e-9


def midi_to_octave_pc(midi) -> tuple[int, int]:
    """MIDI note number -> (octave 0..3, pitch class 0..11); octave clipped to MIDI 36-83's range.

    Non-integer MIDI values are rounded to the nearest integer first (:func:`heads.notes.midi_number`,
    halves up: 60.5 -> 61).
    """
    m = midi_number(midi)
    octave = int(np.clip((m - LOWEST_MIDI) // 12, 0, 3))
    return octave, m % 12


def encode_targets(notes, n_frames: int, frame_rate: float, frame_offset_s: float = 0.0) -> dict:
    """Frame targets of a (monophonic) note list.

    Args:
        notes: ``[[onset_s, offset_s, midi], ...]`` (seconds, seconds, MIDI number); any order.
        n_frames: T, number of frames.
        frame_rate: frames per second (Hz).
        frame_offset_s: time in seconds of frame 0 (e.g. the start of a chunk in its song).

    Returns:
        dict of numpy arrays of length T:
        ``"onset"`` float32 [T] (1 on a note's onset frame, else 0),
        ``"silence"`` float32 [T] (1 where no note sounds, else 0),
        ``"octave"`` int64 [T] (0..3, ``INACTIVE_OCTAVE`` = 4 where silent),
        ``"pitch_class"`` int64 [T] (0..11, ``INACTIVE_PC`` = 12 where silent).

    Frame ``j`` (time ``t_j = frame_offset_s + j / frame_rate``) is voiced by a note when
    ``onset_s <= t_j < offset_s``.  The onset frame is the frame nearest ``onset_s``
    (``floor((onset_s - frame_offset_s) * frame_rate + 0.5)``); it is voiced by that note even if
    rounding puts it just before ``onset_s``.  Notes are applied in onset order, so where notes
    overlap (e.g. a legato onset frame rounded into the previous note) the later note wins.
    An onset frame outside ``[0, T)`` (note starting in another chunk) is not marked.
    """
    T = int(n_frames)
    onset = np.zeros(T, np.float32)
    silence = np.ones(T, np.float32)
    octave = np.full(T, INACTIVE_OCTAVE, np.int64)
    pitch_class = np.full(T, INACTIVE_PC, np.int64)
    times = frame_offset_s + np.arange(T) / float(frame_rate)

    rows = [tuple(float(v) for v in n[:3]) for n in notes]
    rows.sort(key=lambda r: (r[0], r[1]))
    for on, off, midi in rows:
        o, pc = midi_to_octave_pc(midi)
        voiced = (times >= on - _TIME_EPS) & (times < off - _TIME_EPS)
        k = int(np.floor((on - frame_offset_s) * frame_rate + 0.5))
        if 0 <= k < T:
            voiced[k] = True
        silence[voiced] = 0.0
        octave[voiced] = o
        pitch_class[voiced] = pc
        # a later note takes over frames it shares with an earlier one: clear their onsets
        onset[voiced] = 0.0
        if 0 <= k < T:
            onset[k] = 1.0
    return {"onset": onset, "silence": silence, "octave": octave, "pitch_class": pitch_class}


def frame_loss(logits: torch.Tensor, targets: dict, mask: torch.Tensor | None = None,
               onset_pos_weight: float = 15.0) -> torch.Tensor:
    """Baseline frame loss (scalar tensor).

    Args:
        logits: [B, T, 20] raw outputs.
        targets: dict with ``"onset"`` [B, T] (0/1 float), ``"silence"`` [B, T] (0/1 float),
            ``"octave"`` [B, T] (int 0..4), ``"pitch_class"`` [B, T] (int 0..12); values at masked
            frames are ignored (may be padding such as -100).
        mask: bool [B, T], True on valid frames; None = all frames valid.
        onset_pos_weight: ``pos_weight`` of the onset BCE (positives are rare).

    Returns:
        BCE-with-logits(onset, pos_weight) + BCE-with-logits(silence) + CE(octave, 5 classes)
        + CE(pitch class, 13 classes), each averaged over the valid frames.  0 (with a graph) when
        no frame is valid.
    """
    if mask is None:
        mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    mask = torch.as_tensor(mask, device=logits.device).bool()
    if not bool(mask.any()):
        return logits.sum() * 0.0
    x = logits[mask]  # [N, 20]

    def tgt(name, dtype):
        return torch.as_tensor(targets[name], device=logits.device)[mask].to(dtype)

    pos_weight = torch.tensor(float(onset_pos_weight), dtype=x.dtype, device=x.device)
    l_on = F.binary_cross_entropy_with_logits(x[:, ONSET], tgt("onset", x.dtype), pos_weight=pos_weight)
    l_sil = F.binary_cross_entropy_with_logits(x[:, SILENCE], tgt("silence", x.dtype))
    l_oct = F.cross_entropy(x[:, OCTAVE], tgt("octave", torch.long))
    l_pc = F.cross_entropy(x[:, PITCH_CLASS], tgt("pitch_class", torch.long))
    return l_on + l_sil + l_oct + l_pc


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(logits) -> dict:
    """Logits [T, 20] or [B, T, 20] (numpy or torch) -> dict of numpy float arrays:
    ``"onset"`` [..., T] (sigmoid), ``"silence"`` [..., T] (sigmoid),
    ``"octave"`` [..., T, 5] (softmax), ``"pitch_class"`` [..., T, 13] (softmax)."""
    x = _to_numpy(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if x.shape[-1] != N_OUTPUTS:
        raise ValueError(f"expected {N_OUTPUTS} outputs in the last axis, got shape {x.shape}")
    return {"onset": _sigmoid(x[..., ONSET]), "silence": _sigmoid(x[..., SILENCE]),
            "octave": _softmax(x[..., OCTAVE]), "pitch_class": _softmax(x[..., PITCH_CLASS])}


def join_chunks(chunks: Sequence) -> np.ndarray:
    """Per-chunk outputs of one song, in order, each [T_i, 20] (numpy or torch) -> [sum T_i, 20].

    Chunks are consecutive and non-overlapping, so joining is a plain concatenation along time
    (works on logits or on any per-frame array); the whole song is then parsed at once.
    """
    arrays = [_to_numpy(c) for c in chunks]
    if not arrays:
        return np.zeros((0, N_OUTPUTS), np.float32)
    return np.concatenate(arrays, axis=0)


def onset_peaks(onset: np.ndarray, threshold: float = 0.4, neighbourhood: int = 3) -> np.ndarray:
    """Bool [T]: frames i with ``onset[i] >= threshold``, ``onset[i] >= onset[i+1 .. i+n]`` and
    ``onset[i] > onset[i-n .. i-1]`` (window clipped to the song), n = ``neighbourhood``.

    A plateau of equal maxima gives one peak, its first frame."""
    p = np.asarray(onset, dtype=np.float64).reshape(-1)
    T = len(p)
    n = int(neighbourhood)
    if T == 0:
        return np.zeros(0, bool)
    padded = np.concatenate([np.full(n, -np.inf), p, np.full(n, -np.inf)])
    if n > 0:
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * n + 1)  # [T, 2n+1]
        before = windows[:, :n].max(axis=1)
        after = windows[:, n + 1:].max(axis=1)
    else:
        before = after = np.full(T, -np.inf)
    return (p >= threshold) & (p > before) & (p >= after)


def parse_notes(probs: dict, frame_rate: float, frame_offset_s: float = 0.0,
                onset_threshold: float = 0.4, silence_threshold: float = 0.5,
                neighbourhood: int = 3) -> list:
    """Baseline parser: frame probabilities of one whole song -> ``[[onset_s, offset_s, midi], ...]``.

    Args:
        probs: ``"onset"`` [T], ``"silence"`` [T], ``"octave"`` [T, 5], ``"pitch_class"`` [T, 13]
            (as from :func:`probabilities` on joined logits).
        frame_rate: frames per second (Hz); frame i is at ``frame_offset_s + i / frame_rate`` s.
        onset_threshold, silence_threshold: probability thresholds.
        neighbourhood: n, half-width in frames of the onset peak window i-n .. i+n.

    Rules (REFERENCES.md section 2):
      * an onset is a frame with onset prob >= ``onset_threshold`` that is the maximum of frames
        i-n .. i+n (see :func:`onset_peaks`: ties with earlier frames of the window lose);
      * a note runs from its onset frame to the frame where it ends: the next onset frame, or the
        first frame after the onset with silence prob >= ``silence_threshold`` (an onset frame
        is never treated as silence), or frame T (the end of the song).  Its offset is the time
        of that end frame, in seconds;
      * voiced frames are the note's frames (onset frame included, end frame excluded) whose
        argmax octave and argmax pitch class are not inactive; the pitch is the most common
        ``octave * 12 + pitch_class + 36`` over them (ties -> lowest MIDI); a note with no voiced
        frame is dropped.
    """
    onset = np.asarray(_to_numpy(probs["onset"]), dtype=np.float64).reshape(-1)
    silence = np.asarray(_to_numpy(probs["silence"]), dtype=np.float64).reshape(-1)
    octave = np.asarray(_to_numpy(probs["octave"])).argmax(axis=-1).reshape(-1)
    pc = np.asarray(_to_numpy(probs["pitch_class"])).argmax(axis=-1).reshape(-1)
    T = len(onset)
    peaks = onset_peaks(onset, onset_threshold, neighbourhood)
    is_silent = silence >= silence_threshold
    voiced = (octave != INACTIVE_OCTAVE) & (pc != INACTIVE_PC)
    pitch = octave * 12 + pc + LOWEST_MIDI

    def time(i: int) -> float:
        return float(frame_offset_s + i / frame_rate)

    notes: list = []

    def close(start: int, end: int) -> None:
        v = voiced[start:end]
        if not v.any():
            return
        counts = Counter(int(m) for m in pitch[start:end][v])
        best = max(counts.values())
        midi = min(m for m, c in counts.items() if c == best)
        notes.append([time(start), time(end), midi])

    start = None
    for i in range(T):
        if peaks[i]:
            if start is not None:
                close(start, i)
            start = i
        elif is_silent[i] and start is not None:
            close(start, i)
            start = None
    if start is not None:
        close(start, T)
    return notes

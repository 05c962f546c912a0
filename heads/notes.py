"""Note lists in the mir_eval text format, MIDI <-> Hz conversion, and the MIDI rounding rule
(:func:`midi_number`).

A notes file holds one note per line: ``onset offset frequency`` (seconds, seconds, Hz), separated by
tabs or spaces. Lines whose first non-blank character is ``#`` and blank lines are ignored; text after
a ``#`` on a note line is ignored too. This is the format ``mir_eval.io.load_valued_intervals`` reads.

In memory a note list is a pair of float64 arrays: ``intervals [n, 2]`` (onset, offset in seconds) and
``pitches_hz [n]``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

A4_MIDI = 69
A4_HZ = 440.0


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), dtype=np.float64), np.zeros((0,), dtype=np.float64)


def read_notes(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a notes file.

    Returns ``(intervals float64 [n, 2], pitches_hz float64 [n])``; an empty file (or one with only
    comments) gives shapes ``(0, 2)`` and ``(0,)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the 1-based
    line number for a line that is not exactly three finite numbers.
    """
    path = Path(path)
    onsets: list[float] = []
    offsets: list[float] = []
    pitches: list[float] = []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = text.split()
            if len(fields) != 3:
                raise ValueError(f"{path}: line {lineno}: expected 3 columns (onset offset Hz), "
                                 f"got {len(fields)}: {line.strip()!r}")
            try:
                values = [float(f) for f in fields]
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: not a number in {line.strip()!r}") from None
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{path}: line {lineno}: non-finite value in {line.strip()!r}")
            onsets.append(values[0])
            offsets.append(values[1])
            pitches.append(values[2])
    if not onsets:
        return _empty()
    intervals = np.column_stack([np.asarray(onsets, dtype=np.float64),
                                 np.asarray(offsets, dtype=np.float64)])
    return intervals, np.asarray(pitches, dtype=np.float64)


def _check_notes(intervals, pitches_hz) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.asarray(intervals, dtype=np.float64)
    pitches_hz = np.asarray(pitches_hz, dtype=np.float64)
    if intervals.size == 0 and pitches_hz.size == 0:
        return _empty()
    if intervals.ndim != 2 or intervals.shape[1] != 2:
        raise ValueError(f"intervals must have shape [n, 2], got {intervals.shape}")
    if pitches_hz.shape != (intervals.shape[0],):
        raise ValueError(f"pitches_hz must have shape [{intervals.shape[0]}], got {pitches_hz.shape}")
    if not (np.all(np.isfinite(intervals)) and np.all(np.isfinite(pitches_hz))):
        raise ValueError("intervals and pitches_hz must be finite")
    return intervals, pitches_hz


def write_notes(path: str | os.PathLike, intervals, pitches_hz) -> Path:
    """Write notes as ``onset\\toffset\\tHz`` lines, each value as Python's shortest round-trip repr,
    so that ``read_notes`` gives back exactly the same float64 values. Returns the path."""
    intervals, pitches_hz = _check_notes(intervals, pitches_hz)
    path = Path(path)
    lines = [f"{float(on)!r}\t{float(off)!r}\t{float(hz)!r}\n"
             for (on, off), hz in zip(intervals.tolist(), pitches_hz.tolist())]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return path


def _scalar_or_array(x: np.ndarray, like):
    return float(x) if np.ndim(like) == 0 else x


def midi_to_hz(m):
    """MIDI note number(s) -> Hz (A4 = 69 = 440 Hz). Scalars give a float, arrays an array."""
    arr = np.asarray(m, dtype=np.float64)
    return _scalar_or_array(A4_HZ * np.power(2.0, (arr - A4_MIDI) / 12.0), m)


def hz_to_midi(f):
    """Hz -> (fractional) MIDI note number(s) (440 Hz = 69). Non-positive frequencies give NaN.
    Scalars give a float, arrays an array."""
    arr = np.asarray(f, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = A4_MIDI + 12.0 * np.log2(np.where(arr > 0, arr, np.nan) / A4_HZ)
    return _scalar_or_array(out, f)


def midi_number(midi) -> int:
    """A (fractional) MIDI pitch -> the nearest semitone as an int, halves rounded UP:
    ``floor(midi + 0.5)``, so 60.5 -> 61, 60.49 -> 60, 60.7 -> 61, -0.5 -> 0, -1.5 -> -1.

    The one rounding rule of the project: every place that turns a MIDI pitch into an integer
    (targets, note states, reference notes, MIDI files, pitch-class labels) calls this, so a note
    of pitch 60.7 is 61 everywhere. (Python's ``round`` rounds halves to even and ``int`` truncates;
    neither is used for pitches.) Accepts Python or numpy scalars (or a 0-d array);
    raises ``ValueError`` for NaN or infinite values.
    """
    try:
        x = float(midi)
    except (TypeError, ValueError):
        raise ValueError(f"MIDI pitch must be a number, got {midi!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"MIDI pitch must be finite, got {x}")
    # floor(x + 0.5) without its rounding error: x + 0.5 itself rounds, e.g. 0.49999999999999994
    # + 0.5 == 1.0 in float64; x - floor(x) is exact.
    low = math.floor(x)
    return int(low + 1 if x - low >= 0.5 else low)


def notes_to_arrays(notes) -> tuple[np.ndarray, np.ndarray]:
    """A list of ``[onset_s, offset_s, midi]`` (e.g. one song of MIR-ST500 labels) ->
    ``(intervals float64 [n, 2], pitches_hz float64 [n])``."""
    arr = np.asarray(notes, dtype=np.float64)
    if arr.size == 0:
        return _empty()
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"notes must be a list of [onset_s, offset_s, midi], got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :2]), np.asarray(midi_to_hz(arr[:, 2]), dtype=np.float64)

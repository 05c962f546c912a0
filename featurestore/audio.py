"""Audio decoding, validation, resampling, silence trimming and segmentation.

Conventions used throughout this module:

* Audio is ``numpy.float32`` with the time axis last. Mono signals have shape
  ``[samples]``; multichannel signals have shape ``[channels, samples]``.
* Sample values are full-scale floats (1.0 == 0 dBFS).
* Sample rates (``sr``) are integers in Hz.
* Positions and lengths are integer sample indices unless a name ends in ``_s``
  (seconds) or ``_db`` (decibels relative to full scale, dBFS).
* Levels in dBFS are ``20 * log10(rms + 1e-10)``, so digital silence reads
  about -200 dB.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "AudioError",
    "MISSING",
    "UNREADABLE",
    "EMPTY",
    "NONFINITE",
    "SILENT",
    "REASONS",
    "TRUNCATED",
    "Truncation",
    "declared_frames",
    "find_truncation",
    "SILENCE_PEAK",
    "DB_EPS",
    "read_audio",
    "read_audio_channels",
    "scan_audio",
    "resample",
    "load_audio",
    "load_audio_range",
    "resample_margin",
    "frame_rms_db",
    "trim_bounds",
    "segment_bounds",
    "segment_rms_db",
]

PathLike = Union[str, os.PathLike]

#: Reason code: the path does not exist.
MISSING = "missing"
#: Reason code: the file cannot be decoded (corrupt, not audio, unsupported format).
UNREADABLE = "unreadable"
#: Reason code: the file decodes to 0 samples.
EMPTY = "empty"
#: Reason code: the decoded audio contains NaN or +/-Inf samples.
NONFINITE = "nonfinite"
#: Reason code: the decoded audio is digital silence (peak ``< SILENCE_PEAK``).
SILENT = "silent"
#: All reason codes, in the order in which they are checked.
REASONS = (MISSING, UNREADABLE, EMPTY, NONFINITE, SILENT)
#: Report code, not an error (the part that decodes is kept): the file decodes to fewer frames
#: than its header declares (see :func:`find_truncation`).
TRUNCATED = "truncated"
#: Shortfall in seconds tolerated before a compressed file (mp3, flac, ogg) counts as truncated:
#: their header length can be an encoder's estimate. A PCM WAV's data-chunk size is exact, so any
#: missing frame of a WAV counts.
COMPRESSED_LENGTH_TOLERANCE_S = 0.05

#: Peak amplitude (full-scale units, linear) below which audio counts as silent.
SILENCE_PEAK = 1e-6
#: Offset added to the RMS before taking ``20 * log10`` (linear amplitude units).
DB_EPS = 1e-10


class AudioError(Exception):
    """Bad input audio.

    Attributes:
        reason: short machine-readable code, one of :data:`REASONS`
            (``"missing"``, ``"unreadable"``, ``"empty"``, ``"nonfinite"``, ``"silent"``).
        message: human-readable sentence; also what ``str(error)`` returns.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"AudioError({self.reason!r}, {self.message!r})"

    def __reduce__(self):
        # Keep the exception picklable (e.g. across multiprocessing workers):
        # the default reduction would call AudioError(message) and fail.
        return (type(self), (self.reason, self.message))


def _decode(path: PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` with soundfile.

    Returns ``(data, sr)`` with ``data`` float32 ``[channels, samples]`` and ``sr`` in Hz.
    Raises AudioError ``missing`` / ``unreadable`` / ``empty``.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(MISSING, f"Audio file does not exist: {p}")
    if not p.is_file():
        raise AudioError(UNREADABLE, f"Audio path is not a regular file: {p}")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile errors, OSError, format errors ...
        data, sr = _decode_prefix(p, exc)
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(EMPTY, f"Audio file decodes to 0 samples: {p}")
    return np.ascontiguousarray(data.T, dtype=np.float32), int(sr)


def _decode_prefix(p: Path, exc: Exception) -> tuple[np.ndarray, int]:
    """The frames of ``p`` that decode before a decoding error (a FLAC file cut short fails in
    ``sf.read`` as a whole, but its first blocks decode). Returns ``(data [samples, channels], sr)``;
    raises AudioError ``unreadable`` (from ``exc``) when the file does not open or nothing decodes.
    :func:`find_truncation` then reports such a file as truncated."""
    import soundfile as sf

    blocks = []
    try:
        with sf.SoundFile(str(p)) as f:
            sr = int(f.samplerate)
            try:
                for b in f.blocks(blocksize=4096, dtype="float32", always_2d=True):
                    blocks.append(b)
            except Exception:  # noqa: BLE001 - decoding stops here; what came before is kept
                pass
    except Exception:  # noqa: BLE001 - the file does not even open
        blocks = []
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise AudioError(UNREADABLE, f"Cannot decode audio file {p}: {exc}") from exc
    return np.concatenate(blocks, axis=0), sr


def _wav_data_frames(path: PathLike) -> int | None:
    """Frames a RIFF/WAVE file's ``data`` chunk declares (its byte size over the block size of
    ``fmt ``), read from the header without trusting the file's length (libsndfile reports the
    frames actually present, so a WAV cut short looks complete to ``sf.info``). None when the
    file is not a little-endian RIFF/WAVE, when the size is a streaming placeholder (0 or
    0xFFFFFFFF), or when the chunks cannot be walked."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                    if size % 2:
                        f.seek(1, os.SEEK_CUR)
                elif cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


def declared_frames(path: PathLike) -> tuple[int, int, bool] | None:
    """What a file's header says about its length: ``(frames, sr, exact)``.

    ``frames`` are samples per channel at the file's rate ``sr`` (Hz); ``exact`` is True for a
    WAV's data-chunk size, False for a length the decoder takes from a compressed file's header
    (mp3 Xing/LAME frame count, FLAC STREAMINFO, ...), which may be an estimate. None when the
    header gives no length (or the file does not open).
    """
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - unreadable files are reported by the decoder
        return None
    wav = _wav_data_frames(path)
    if wav is not None:
        return wav, int(info.samplerate), True
    frames = int(info.frames)
    if frames <= 0 or frames >= 2**62:  # libsndfile's "unknown length"
        return None
    return frames, int(info.samplerate), False


@dataclass(frozen=True)
class Truncation:
    """A file that decodes to fewer frames than its header declares. Frames are samples per channel
    at the file's rate ``sr`` (Hz)."""

    header_frames: int
    decoded_frames: int
    sr: int

    @property
    def header_s(self) -> float:
        return self.header_frames / self.sr

    @property
    def decoded_s(self) -> float:
        return self.decoded_frames / self.sr

    def describe(self) -> str:
        return (f"its header declares {self.header_frames} frames ({self.header_s:.3f} s at {self.sr} Hz) "
                f"but only {self.decoded_frames} frames ({self.decoded_s:.3f} s) decode")


def find_truncation(path: PathLike, decoded_frames: int, decoded_sr: int) -> Truncation | None:
    """Compare the length of a decode of ``path`` with what the file's header declares.

    Args:
        path: the audio file whose header is read.
        decoded_frames: samples per channel that were decoded (from ``path`` itself, or from audio
            derived from it at another rate, e.g. separated vocals).
        decoded_sr: rate of ``decoded_frames`` in Hz.

    Returns:
        a :class:`Truncation` (frames at the file's rate) when the decode is shorter than the
        header says: by any frame for a WAV (two after resampling), by more than
        ``COMPRESSED_LENGTH_TOLERANCE_S`` for a compressed file; None otherwise, or when the header
        declares no length.
    """
    declared = declared_frames(path)
    if declared is None:
        return None
    frames, sr, exact = declared
    got = int(decoded_frames) if int(decoded_sr) == sr else int(round(decoded_frames * sr / decoded_sr))
    if exact:  # one frame of rounding when the decode was resampled
        tolerance = 0 if int(decoded_sr) == sr else 1
    else:
        tolerance = max(1, int(COMPRESSED_LENGTH_TOLERANCE_S * sr))
    if frames - got > tolerance:
        return Truncation(frames, got, sr)
    return None


def _check_values(x: np.ndarray, path: PathLike) -> None:
    """Raise AudioError ``nonfinite`` then ``silent`` for bad sample values of ``x`` (any shape)."""
    if not np.isfinite(x).all():
        raise AudioError(NONFINITE, f"Audio file contains NaN or Inf samples: {path}")
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(
            SILENT,
            f"Audio file is digital silence (peak {peak:.3g} < {SILENCE_PEAK:g}): {path}",
        )


def read_audio_channels(path: PathLike, *, check: bool = True) -> tuple[np.ndarray, int]:
    """Decode a wav/flac/mp3 file keeping its channels.

    Args:
        path: audio file path.
        check: if True, also raise AudioError ``nonfinite`` (any NaN/Inf sample, checked
            first) and ``silent`` (peak over all channels ``< SILENCE_PEAK``).

    Returns:
        ``(x, sr)``: ``x`` float32 ``[channels, samples]`` at the file's native rate,
        ``sr`` the native sample rate in Hz.

    Raises:
        AudioError: ``missing``, ``unreadable`` or ``empty`` always (whatever ``check``),
            ``nonfinite`` / ``silent`` only when ``check`` is True.
    """
    x, sr = _decode(path)
    if check:
        _check_values(x, path)
    return x, sr


def read_audio(path: PathLike, *, check: bool = True) -> tuple[np.ndarray, int]:
    """Decode a wav/flac/mp3 file to mono.

    Channels are downmixed by averaging them.

    Args:
        path: audio file path.
        check: if True, also raise AudioError ``nonfinite`` (any NaN/Inf sample, checked
            before silence) and ``silent`` (peak of the mono downmix ``< SILENCE_PEAK``).

    Returns:
        ``(x, sr)``: ``x`` float32 ``[samples]`` at the file's native rate, ``sr`` in Hz.

    Raises:
        AudioError: ``missing``, ``unreadable`` or ``empty`` always (whatever ``check``),
            ``nonfinite`` / ``silent`` only when ``check`` is True.
    """
    x, sr = _decode(path)
    mono = x[0].copy() if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if check:
        _check_values(mono, path)
    return mono, sr


def scan_audio(path: PathLike, *, check: bool = True, block: int = 1 << 18) -> tuple[int, int]:
    """Length and rate of a file, decoded in blocks of ``block`` frames (rounded up to a multiple of
    4096) and checked as
    :func:`read_audio` checks it, without holding it: ``(samples, sr)`` equal ``(len(x), sr)`` of
    ``read_audio(path)``, and the same AudioError (reason and message) for a file it rejects.
    Memory is O(block) whatever the file's length (a two-hour 44.1 kHz stereo file decodes to
    2.5 GB of float32). A file that stops decoding keeps what came before, as :func:`read_audio`
    does.

    Raises:
        AudioError: ``missing``, ``unreadable`` or ``empty`` always, ``nonfinite`` / ``silent``
            (of the mono downmix) only when ``check`` is True.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(MISSING, f"Audio file does not exist: {p}")
    if not p.is_file():
        raise AudioError(UNREADABLE, f"Audio path is not a regular file: {p}")
    n, peak, finite, error = 0, 0.0, True, None
    small = 4096  # after a decoding error: go on from the last good block in blocks as _decode_prefix reads
    block = max(1, -(-int(block) // small)) * small  # on the same grid, so the same frames decode
    try:
        while True:
            with sf.SoundFile(str(p)) as f:
                sr = int(f.samplerate)
                skip = n  # frames read before an error: read again up to there, then on in small blocks
                if skip and f.seekable():
                    f.seek(skip)
                    skip = 0
                try:
                    while True:
                        b = f.read(block if not error else min(block, small), dtype="float32", always_2d=True)
                        if skip:
                            drop = min(skip, len(b))
                            b, skip = b[drop:], skip - drop
                            if len(b) == 0 and drop:
                                continue
                        if len(b) == 0:
                            break
                        n += len(b)
                        if check:
                            mono = b[:, 0] if b.shape[1] == 1 else b.T.mean(axis=0, dtype=np.float64).astype(np.float32)
                            finite = finite and bool(np.isfinite(b).all())
                            if finite:
                                peak = max(peak, float(np.max(np.abs(mono))))
                    break
                except Exception as exc:  # noqa: BLE001 - decoding stops here; what came before is kept
                    if error is not None or block <= small:
                        error = exc
                        break
                    error = exc  # a large block failed: retry its frames in small blocks
    except Exception as exc:  # noqa: BLE001 - the file does not even open
        raise AudioError(UNREADABLE, f"Cannot decode audio file {p}: {exc}") from exc
    if n == 0:
        if error is not None:
            raise AudioError(UNREADABLE, f"Cannot decode audio file {p}: {error}") from error
        raise AudioError(EMPTY, f"Audio file decodes to 0 samples: {p}")
    if check and not finite:
        raise AudioError(NONFINITE, f"Audio file contains NaN or Inf samples: {path}")
    if check and peak < SILENCE_PEAK:
        raise AudioError(SILENT, f"Audio file is digital silence (peak {peak:.3g} < {SILENCE_PEAK:g}): {path}")
    return n, sr


def _check_rate(name: str, sr) -> int:
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise ValueError(f"{name} must be a positive integer number of Hz, got {sr!r}")
    return int(sr)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last (time) axis with ``torchaudio.functional.resample``.

    Uses torchaudio's default windowed-sinc interpolation; deterministic (CPU).

    Args:
        x: float32 ``[n]`` samples (or ``[channels, n]``; time axis last).
        orig_sr: sample rate of ``x`` in Hz.
        target_sr: output sample rate in Hz.

    Returns:
        float32 ``[m]`` (or ``[channels, m]``) with ``m = ceil(n * target_sr / orig_sr)``.
        When ``orig_sr == target_sr`` the input is returned as is (the same object if it
        is already float32, else a float32 copy).
    """
    orig_sr = _check_rate("orig_sr", orig_sr)
    target_sr = _check_rate("target_sr", target_sr)
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == target_sr:
        return x
    n = x.shape[-1]
    m = -(-n * target_sr // orig_sr)  # exact integer ceil
    if n == 0:
        return np.zeros(x.shape[:-1] + (0,), dtype=np.float32)

    import torch
    import torchaudio.functional as AF

    with torch.no_grad():
        y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig_sr, target_sr)
    y = y.numpy().astype(np.float32, copy=False)
    # torchaudio computes the same length in floating point; enforce the exact value.
    if y.shape[-1] > m:
        y = y[..., :m]
    elif y.shape[-1] < m:
        pad = [(0, 0)] * (y.ndim - 1) + [(0, m - y.shape[-1])]
        y = np.pad(y, pad)
    return np.ascontiguousarray(y)


def load_audio(path: PathLike, sr: int, *, check: bool = True) -> np.ndarray:
    """Decode ``path`` to mono (see :func:`read_audio`) and resample it to ``sr`` Hz.

    Returns:
        float32 ``[samples]`` at ``sr`` Hz.

    Raises:
        AudioError: as :func:`read_audio`.
    """
    x, native_sr = read_audio(path, check=check)
    return resample(x, native_sr, sr)


def resample_margin(orig_sr: int, target_sr: int) -> int:
    """Input samples (at ``orig_sr``) on each side of a stretch that :func:`resample` reads to compute
    its output: torchaudio's default kernel (``lowpass_filter_width`` 6, ``rolloff`` 0.99) reaches
    ``width = ceil(6 * o / (0.99 * min(o, t)))`` samples before and ``width + o`` after an output
    block's input position, with ``o``, ``t`` the rates divided by their gcd. Returns that reach
    rounded up to whole blocks of ``o`` samples, plus one block (0 when the rates are equal)."""
    orig_sr, target_sr = _check_rate("orig_sr", orig_sr), _check_rate("target_sr", target_sr)
    if orig_sr == target_sr:
        return 0
    g = math.gcd(orig_sr, target_sr)
    o, t = orig_sr // g, target_sr // g
    width = math.ceil(6 * o / (0.99 * min(o, t)))
    return (-(-(width + o) // o) + 1) * o


#: soundfile formats (``SoundFile.format``) whose seek lands on the exact sample and decodes the same
#: values as a read from the start (checked against whole-file decodes; Ogg Vorbis seeks near the end
#: of a file landed elsewhere, so Ogg and anything not listed are decoded from the start instead).
SEEK_EXACT = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF", "FLAC", "MP3"})
#: samples decoded and dropped before a seek target: an MP3 decoder needs the frames before (bit
#: reservoir, overlapping transforms) to give the same values; 8192 is more than 7 MP3 frames
SEEK_PREROLL = {"MP3": 8192}


def _read_frames(path: PathLike, start: int, stop: int) -> tuple[np.ndarray, int]:
    """Mono float32 samples ``[start, stop)`` of ``path`` at its native rate (fewer where the file
    ends or stops decoding), downmixed as :func:`read_audio` does, and the native rate in Hz.
    Seeks in the formats of :data:`SEEK_EXACT` (after :data:`SEEK_PREROLL`); otherwise decodes from
    the start in blocks and drops what comes before (memory stays O(stop - start) either way)."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioError(MISSING, f"Audio file does not exist: {p}")
    blocks, got = [], 0
    try:
        with sf.SoundFile(str(p)) as f:
            sr = int(f.samplerate)
            skip = start
            if start > 0 and f.seekable() and f.format in SEEK_EXACT:
                pre = min(start, SEEK_PREROLL.get(f.format, 0))
                try:
                    f.seek(start - pre)
                except Exception:  # noqa: BLE001 - past the end (or past what decodes): nothing to read
                    return np.zeros(0, dtype=np.float32), sr
                skip = pre
            want = stop - start
            try:
                while got < want:
                    n = min(want - got + skip, 1 << 18)
                    b = f.read(n, dtype="float32", always_2d=True)
                    if len(b) == 0:
                        break
                    if skip:
                        drop = min(skip, len(b))
                        b, skip = b[drop:], skip - drop
                    blocks.append(b[:want - got])
                    got += len(blocks[-1])
            except Exception:  # noqa: BLE001 - a file that stops decoding (cut short) keeps what came before
                pass
    except Exception as exc:  # noqa: BLE001 - the file does not even open
        raise AudioError(UNREADABLE, f"Cannot decode audio file {p}: {exc}") from exc
    x = np.concatenate(blocks, axis=0).T if blocks else np.zeros((1, 0), dtype=np.float32)
    mono = x[0].copy() if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), sr


def load_audio_range(path: PathLike, sr: int, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``load_audio(path, sr, check=False)``, decoding only what they need.

    Positions are samples at ``sr`` Hz; samples past the end of the (resampled) file are 0. The file
    is read from the block of input samples that holds ``start``, less :func:`resample_margin`, to
    the one after ``stop``, plus the margin, and that stretch is resampled alone: it starts on a
    multiple of the rates' block (``orig_sr / gcd`` input samples = ``sr / gcd`` output samples),
    so its outputs are computed from exactly the inputs, and with exactly the kernel taps, of the
    same outputs of a whole-file resampling (equal up to float32 rounding of the convolution;
    tested). Memory: O(stop - start), whatever the file's length.

    Returns:
        float32 ``[stop - start]``.

    Raises:
        AudioError: ``missing`` or ``unreadable``; ValueError for ``start < 0`` or ``stop < start``.
    """
    sr = _check_rate("sr", sr)
    start, stop = int(start), int(stop)
    if start < 0 or stop < start:
        raise ValueError(f"load_audio_range: invalid sample range [{start}, {stop}) of {path}")
    out = np.zeros(stop - start, dtype=np.float32)
    if stop == start:
        return out
    import soundfile as sf

    try:
        native = int(sf.info(str(path)).samplerate)
    except Exception as exc:  # noqa: BLE001
        if not Path(path).is_file():
            raise AudioError(MISSING, f"Audio file does not exist: {path}") from exc
        raise AudioError(UNREADABLE, f"Cannot decode audio file {path}: {exc}") from exc
    if native == sr:
        x, _ = _read_frames(path, start, stop)
        out[:len(x)] = x
        return out
    g = math.gcd(native, sr)
    o, t = native // g, sr // g
    margin = resample_margin(native, sr)
    q0 = max(0, start // t - margin // o)  # first input block read
    q1 = -(-stop // t) + margin // o  # one past the last
    x, _ = _read_frames(path, q0 * o, q1 * o)
    if len(x) == 0:
        return out
    ended = len(x) < (q1 - q0) * o  # the file ends inside the stretch: whole-file resampling sees zeros there too
    y = resample(x, native, sr)
    if not ended:  # outputs near the stretch's end saw its zero padding: only those before it are used
        y = y[:(q1 - q0 - margin // o) * t]
    lo = start - q0 * t
    piece = y[lo:lo + (stop - start)]
    out[:len(piece)] = piece
    return out


def _frame_length(sr: int, frame_s: float) -> int:
    sr = _check_rate("sr", sr)
    if not frame_s > 0:
        raise ValueError(f"frame_s must be > 0 seconds, got {frame_s!r}")
    return max(1, int(round(frame_s * sr)))


def _rms_db(sum_sq: np.ndarray, count: np.ndarray) -> np.ndarray:
    rms = np.sqrt(sum_sq / np.maximum(count, 1))
    return 20.0 * np.log10(rms + DB_EPS)


def frame_rms_db(x: np.ndarray, sr: int, frame_s: float = 0.05) -> np.ndarray:
    """Level of non-overlapping frames in dBFS.

    Args:
        x: mono float ``[samples]``.
        sr: sample rate of ``x`` in Hz.
        frame_s: frame length in seconds; a frame has ``max(1, round(frame_s * sr))`` samples.

    Returns:
        float64 ``[n_frames]`` with ``n_frames = ceil(samples / frame_length)``: the RMS of
        each frame as ``20 * log10(rms + 1e-10)`` dBFS. The last, partial frame is included
        (its RMS is taken over its own samples only).
    """
    L = _frame_length(sr, frame_s)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = x.shape[0]
    n_frames = -(-n // L)
    if n_frames == 0:
        return np.zeros(0, dtype=np.float64)
    padded = np.zeros(n_frames * L, dtype=np.float64)
    padded[:n] = x
    sum_sq = np.square(padded).reshape(n_frames, L).sum(axis=1)
    count = np.full(n_frames, L, dtype=np.float64)
    count[-1] = n - (n_frames - 1) * L
    return _rms_db(sum_sq, count)


def trim_bounds(x: np.ndarray, sr: int, threshold_db: float, frame_s: float = 0.05) -> tuple[int, int]:
    """Sample bounds of the non-silent region of ``x``.

    Args:
        x: mono float ``[samples]``.
        sr: sample rate in Hz.
        threshold_db: level in dBFS a frame must reach (``>=``) to count as sound.
        frame_s: frame length in seconds (see :func:`frame_rms_db`).

    Returns:
        ``(start, end)`` sample indices (end exclusive) spanning from the first to the last
        frame whose RMS is ``>= threshold_db``, aligned to frame boundaries, with ``end``
        clipped to ``len(x)``. ``(0, 0)`` when no frame reaches the threshold.
    """
    L = _frame_length(sr, frame_s)
    db = frame_rms_db(x, sr, frame_s)
    loud = np.flatnonzero(db >= threshold_db)
    if loud.size == 0:
        return 0, 0
    n = int(np.asarray(x).reshape(-1).shape[0])
    start = int(loud[0]) * L
    end = min((int(loud[-1]) + 1) * L, n)
    return start, end


def segment_bounds(
    start: int,
    end: int,
    sr: int,
    segment_s: float | None,
    min_segment_s: float = 0.0,
) -> list[tuple[int, int]]:
    """Cut the sample range ``[start, end)`` into consecutive non-overlapping segments.

    Args:
        start, end: sample indices (end exclusive), ``0 <= start <= end``.
        sr: sample rate in Hz.
        segment_s: segment length in seconds; segments have ``round(segment_s * sr)``
            samples. ``None`` or ``<= 0`` means one segment ``[start, end)``.
        min_segment_s: minimum length in seconds of a kept segment. Only the last,
            shorter remainder (or the single segment when ``segment_s`` is None) can be
            dropped by it: it is kept iff its length in samples is
            ``>= ceil(min_segment_s * sr)`` (and non-zero).

    Returns:
        list of ``(seg_start, seg_end)`` sample index pairs, in order; ``[]`` if nothing
        qualifies (including ``start == end``).

    Raises:
        ValueError: on negative/inverted bounds, a non-positive ``sr``, a ``segment_s``
            that rounds to 0 samples, or ``min_segment_s > segment_s`` (every segment
            would be dropped: a configuration error).
    """
    sr = _check_rate("sr", sr)
    start, end = int(start), int(end)
    if start < 0 or end < start:
        raise ValueError(f"invalid sample bounds [{start}, {end})")
    min_segment_s = float(min_segment_s or 0.0)
    min_len = max(1, math.ceil(min_segment_s * sr - 1e-9))
    total = end - start
    if segment_s is None or segment_s <= 0:
        return [(start, end)] if total >= min_len else []
    seg_len = int(round(segment_s * sr))
    if seg_len <= 0:
        raise ValueError(f"segment_s={segment_s!r} s is shorter than one sample at {sr} Hz")
    if min_len > seg_len:
        raise ValueError(
            f"min_segment_s={min_segment_s!r} s is longer than segment_s={segment_s!r} s"
        )
    n_full = total // seg_len
    bounds = [(start + i * seg_len, start + (i + 1) * seg_len) for i in range(n_full)]
    rem_start = start + n_full * seg_len
    if end - rem_start >= min_len:
        bounds.append((rem_start, end))
    return bounds


def segment_rms_db(x: np.ndarray, bounds) -> np.ndarray:
    """Level of each segment of ``x`` in dBFS.

    Args:
        x: mono float ``[samples]``.
        bounds: sequence of ``(start, end)`` sample index pairs (end exclusive).

    Returns:
        float64 ``[len(bounds)]``: ``20 * log10(rms + 1e-10)`` of ``x[start:end]`` for each
        pair (an empty segment gives ``20 * log10(1e-10) = -200`` dB).
    """
    x = np.asarray(x).reshape(-1)
    out = np.empty(len(bounds), dtype=np.float64)
    for i, (s, e) in enumerate(bounds):
        seg = x[int(s):int(e)].astype(np.float64)
        out[i] = _rms_db(np.square(seg).sum(), np.float64(seg.shape[0]))
    return out

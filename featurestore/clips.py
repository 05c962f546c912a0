"""The clip table: which segments of which files a store holds.

Planning decodes every input once (in worker processes), checks it, optionally replaces it with
its separated vocals, trims leading/trailing silence, cuts fixed-length segments and drops quiet
(non-vocal) segments. Segment bounds are kept in seconds of the source file, so every backbone,
whatever its sample rate, reads exactly the same audio for a clip.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from featurestore import audio as au
from featurestore.manifest import Row, Skip

COLUMNS = ("id", "file_id", "source", "audio", "start_s", "end_s", "split")

#: Report codes of a manifest time outside the decoded audio: ``start_past_end`` skips the row,
#: ``end_past_end`` keeps the row cut at the end of the audio (and says so).
START_PAST_END, END_PAST_END = "start_past_end", "end_past_end"
#: How far (seconds) a manifest ``end`` may lie past the end of the audio before it is reported:
#: times typed with millisecond precision round up by at most half of this.
END_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class ClipSettings:
    """Store-level preprocessing. Times in seconds, levels in dBFS.

    segment_s: segment length (None or 0: one clip per file, windowed at extraction time).
    min_segment_s: a last, shorter segment is kept only if at least this long (when segmenting).
    trim_db: trim leading/trailing audio whose 50 ms RMS is below this level (None: no trim).
    drop_quiet_db: drop segments whose RMS is below this level, e.g. non-vocal parts after
        separation (None: keep all).
    separate: demucs model name to separate vocals first (None: no separation).
    demucs_repo: local folder holding the demucs weights (None: demucs' own lookup).
    min_seconds: a file shorter than this is skipped as shorter than one frame.
    """

    segment_s: float | None = 5.0
    min_segment_s: float = 1.0
    trim_db: float | None = None
    drop_quiet_db: float | None = None
    separate: str | None = None
    demucs_repo: str | None = None
    min_seconds: float = 0.025

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipSettings":
        """Settings as stored in a store's attributes (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _plan_file(row: Row, settings: ClipSettings, separator=None) -> tuple[list[dict], list[dict]]:
    """Segments of one row -> (clip records, report dicts). A report is a skip, or a line about clips
    that are kept in part (``truncated``, ``end_past_end``). Runs in a worker process when there is no
    separator (a :class:`featurestore.separation.VocalSeparator`, used in the main process)."""
    where = row.where or str(row.path)
    try:
        audio_path = row.path
        if not row.path.exists():
            raise au.AudioError("missing", f"{row.path} does not exist")
        if separator is not None:
            audio_path = separator.vocals_path(row.path)
        if settings.trim_db is None and settings.drop_quiet_db is None:  # only its length is needed: scan it in
            x, (n, sr) = None, au.scan_audio(audio_path)                  # blocks, never holding a long file
        else:
            x, sr = au.read_audio(audio_path)
            n = len(x)
    except au.AudioError as e:
        return [], [Skip(where, e.reason, f"{where}: {e}", str(row.path)).as_dict()]
    except Exception as e:  # noqa: BLE001 - any decoder/separator failure is a skip, not a crash
        return [], [Skip(where, "unreadable", f"{where}: {type(e).__name__}: {e}", str(row.path)).as_dict()]
    reports = _length_reports(row, where, n, sr)
    if any(r.reason == START_PAST_END for r in reports):
        return [], [r.as_dict() for r in reports]
    lo = 0 if row.start_s is None else round(row.start_s * sr)
    hi = n if row.end_s is None else min(n, round(row.end_s * sr))
    reports = [r.as_dict() for r in reports]
    if hi - lo < settings.min_seconds * sr:
        dur = (hi - lo) / sr
        return [], reports + [Skip(where, "too_short", f"{where}: {dur * 1000:.1f} ms of audio is shorter than one "
                                                       f"frame ({settings.min_seconds * 1000:.0f} ms)",
                                   str(row.path)).as_dict()]
    if settings.trim_db is not None:
        a, b = au.trim_bounds(x[lo:hi], sr, settings.trim_db)
        if b <= a:
            return [], reports + [Skip(where, "silent", f"{where}: no audio above {settings.trim_db} dBFS to keep "
                                                        "after trimming", str(row.path)).as_dict()]
        lo, hi = lo + a, lo + b
    min_len = min(settings.min_segment_s, settings.segment_s) if settings.segment_s else 0.0
    bounds = au.segment_bounds(lo, hi, sr, settings.segment_s, min_len)
    if settings.drop_quiet_db is not None and bounds:
        level = au.segment_rms_db(x, bounds)
        bounds = [b for b, db in zip(bounds, level) if db >= settings.drop_quiet_db]
    if not bounds:
        return [], reports + [Skip(where, "no_segments", f"{where}: no segment left after trimming/segmenting/"
                                                         "dropping quiet parts", str(row.path)).as_dict()]
    single = not settings.segment_s
    clips = []
    for k, (s, e) in enumerate(bounds):
        clips.append({"id": row.id if single else f"{row.id}#{k:04d}", "file_id": row.id,
                      "source": str(row.path), "audio": str(audio_path), "start_s": s / sr, "end_s": e / sr,
                      "split": row.split, "labels": row.labels})
    return clips, reports


def _length_reports(row: Row, where: str, n: int, sr: int) -> list[Skip]:
    """Report lines about the length of a row's audio: ``n`` samples decoded at ``sr`` Hz.

    - ``truncated``: the input file decodes to fewer frames than its header declares (both lengths
      given; the clips keep what decoded);
    - ``start_past_end``: the manifest ``start`` is at or past the end of the audio (the row is
      skipped);
    - ``end_past_end``: the manifest ``end`` is more than ``END_TOLERANCE_S`` past the end of the
      audio (the clip is cut at the end of the audio).
    """
    path, dur = str(row.path), n / sr
    out = []
    cut = au.find_truncation(row.path, n, sr)
    if cut is not None:
        out.append(Skip(where, au.TRUNCATED, f"{where}: {row.path} is truncated: {cut.describe()}; "
                                             f"its clips keep the {cut.decoded_s:.3f} s that decode", path))
    if row.start_s is not None and round(row.start_s * sr) >= n:
        out.append(Skip(where, START_PAST_END, f"{where}: start {row.start_s:.3f} s is at or past the end of the "
                                               f"audio ({dur:.3f} s); the row is skipped", path))
    elif row.end_s is not None and row.end_s - dur > END_TOLERANCE_S:
        out.append(Skip(where, END_PAST_END, f"{where}: end {row.end_s:.3f} s is past the end of the audio "
                                             f"({dur:.3f} s); the clip is cut at {dur:.3f} s", path))
    return out


def plan_clips(rows: list[Row], settings: ClipSettings, *, vocals_cache: Path, num_workers: int = 2,
               progress: bool = True, device: str = "cpu") -> tuple[list[dict], list[dict]]:
    """Decode and segment every row. Returns (clips in input order, skip dicts).

    Each clip: id, file_id, source (the input file), audio (the file decoded: source or cached
    vocals), start_s, end_s (seconds in ``audio``), split, labels (dict of strings).
    Separation, when asked for, runs in the main process (one model, maybe on the GPU).
    """
    bar = tqdm(total=len(rows), desc="plan clips", unit="file", disable=not progress)
    results = []
    if settings.separate:
        from featurestore.separation import VocalSeparator

        separator = VocalSeparator(vocals_cache, name=settings.separate, repo=settings.demucs_repo, device=device)
        for row in rows:
            results.append(_plan_file(row, settings, separator))
            bar.update()
    elif num_workers > 0 and len(rows) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as ex:
            chunk = max(1, len(rows) // (8 * num_workers))
            for res in ex.map(_plan_file, rows, [settings] * len(rows), chunksize=chunk):
                results.append(res)
                bar.update()
    else:
        for row in rows:
            results.append(_plan_file(row, settings))
            bar.update()
    bar.close()
    clips = [c for cs, _ in results for c in cs]
    skips = [s for _, ss in results for s in ss]
    return clips, skips


def clip_samples(start_s: np.ndarray, end_s: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample bounds of clips at rate ``sr``: (round(start*sr), round(start*sr) + n) with
    n = round(end*sr) - round(start*sr). The same rule is used to plan frames and to cut audio."""
    a = np.round(np.asarray(start_s, dtype=np.float64) * sr).astype(np.int64)
    b = np.round(np.asarray(end_s, dtype=np.float64) * sr).astype(np.int64)
    return a, b

"""Store layout: names, and how clips of one backbone are laid out in its frame array.

::

    store.zarr/
      zarr.json                    attrs: format, library version, clip_settings, input fingerprint,
                                          skipped (report of what the clip planning left out)
      inputs/                      per input row: path, id, size, mtime_ns, sha256 (featurestore.fingerprint)
      clips/                       the clip table, one 1-D array per column (N clips)
        id, file_id, source, audio, split, labels/<name>   strings
        start_s, end_s                                      float64 seconds in `audio`
        zarr.json                  attrs: complete=true is written last
      backbones/<name>/
        frames      [F, L, D]  float16, chunks (chunk_frames, L, D), uncompressed
        offsets     [N, 2]     int64 frame range [start, end) of each clip in `frames`
        pooled_mean [N, L, D]  mean over the clip's frames   (NaN for a clip with no frame)
        pooled_std  [N, L, D]  std over the clip's frames
        unit_done   [U]        uint8, one chunk per unit: 1 once the unit is fully written
        zarr.json              attrs: frontend description, weights hash, settings, versions,
                                      planned=true (written last at planning), complete=true

Clips are grouped into *units* of ``clips_per_unit`` consecutive clips. Each unit starts on a
chunk boundary (a shard boundary when sharded) of ``frames`` and owns every chunk it touches, and
its pooled rows are exactly one chunk of the pooled arrays. So units are written independently —
by one process after a crash, or by several processes at once — without locks, and a unit is
done only when its marker chunk says so. The cost is a few unused frames between units
(less than one chunk per unit; reported by the build).
"""
from __future__ import annotations

import numpy as np

FORMAT = "singfront-featurestore/1"
CLIPS = "clips"
INPUTS = "inputs"  # per-row fingerprint of the input (featurestore.fingerprint)
BACKBONES = "backbones"


def backbone_path(name: str) -> str:
    return f"{BACKBONES}/{name}"


def clips_per_unit(frames_per_clip: np.ndarray, target_frames: int, max_clips: int = 256) -> int:
    """Clips per unit so that a unit holds about ``target_frames`` frames (at least one clip)."""
    longest = int(frames_per_clip.max()) if len(frames_per_clip) else 1
    return int(np.clip(target_frames // max(1, longest), 1, max_clips))


def layout_frames(frames_per_clip: np.ndarray, per_unit: int, align: int) -> tuple[np.ndarray, int]:
    """Frame ranges of clips laid out unit after unit, each unit starting on a multiple of ``align``.

    frames_per_clip: int [N]. Returns (offsets int64 [N, 2], total frames F, a multiple of align).
    """
    n = len(frames_per_clip)
    offsets = np.zeros((n, 2), dtype=np.int64)
    pos = 0
    for u0 in range(0, n, per_unit):
        counts = frames_per_clip[u0:u0 + per_unit].astype(np.int64)
        ends = pos + np.cumsum(counts)
        offsets[u0:u0 + per_unit, 1] = ends
        offsets[u0:u0 + per_unit, 0] = ends - counts
        pos = int(-(-int(ends[-1]) // align) * align) if len(counts) else pos
    return offsets, max(pos, align)


def unit_range(unit: int, per_unit: int, n_clips: int) -> tuple[int, int]:
    """Clip index range [a, b) of a unit."""
    a = unit * per_unit
    return a, min(n_clips, a + per_unit)


def unit_frame_range(offsets: np.ndarray, unit: int, per_unit: int, align: int) -> tuple[int, int]:
    """Frame range [start, end) that a unit owns: from its first clip's start to the next aligned frame."""
    a, b = unit_range(unit, per_unit, len(offsets))
    start = int(offsets[a, 0])
    end = int(-(-int(offsets[b - 1, 1]) // align) * align)
    return start, max(end, start)

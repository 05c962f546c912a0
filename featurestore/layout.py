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

*Pieces of long clips.* A clip of more than ``piece_frames`` frames (``target_unit_frames`` rounded
up to whole chunks; then ``clips_per_unit`` is 1) is split over several units, one per
``piece_frames`` frames of it (the last one takes the rest), so that extracting one holds a
bounded amount of audio and frames whatever the clip's length, and a killed long clip resumes from
its last finished piece. Offsets are the same as without pieces (the reader does not see units).
Such a backbone has the attribute ``piece_frames`` (also in its ``identity``) and one more array::

        piece_sums  [U, 2, L, D] float64: sum and sum of squares over the unit's frames, written
                                 by units that are pieces of a split clip (before their marker)

A split clip's pooled rows belong to no unit: whoever sees every piece of it done (the writer,
after a piece's marker; every build once more before marking the backbone complete) writes them
from the pieces' sums. Stores built before pieces existed have no ``piece_frames`` and are read
and verified as before; a build refuses to resume one that would now be split (its identity
differs) unless ``--overwrite``.
"""
from __future__ import annotations

import numpy as np

FORMAT = "singfront-featurestore/1"

#: ``--frames``: every frame is stored (default), or only the pooled rows (``none``)
FRAMES_ALL, FRAMES_NONE = "all", "none"
FRAMES_MODES = (FRAMES_ALL, FRAMES_NONE)


def stored_dtypes(dtype: str) -> tuple[str, str]:
    """(dtype of ``frames``, dtype of the pooled rows) of a backbone built with ``--dtype dtype``:
    int8 stores uint8 codes (:mod:`featurestore.quantize`) and float16 pooled rows; float16 and
    float32 store both in that dtype."""
    return ("uint8", "float16") if dtype == "int8" else (dtype, dtype)


def layer_ids(attrs) -> list[int]:
    """The model layers (hidden-state indices) a backbone group with attributes ``attrs`` stores, in
    stored order: its ``layers`` attribute (a build with ``--layers``), else all of the frontend's."""
    held = attrs.get("layers")
    if held is not None:
        return [int(v) for v in held]
    return list(range(int(attrs["frontend"]["num_layers"])))


def frames_mode(attrs) -> str:
    """``all`` or ``none`` (a pooled-only backbone, built with ``--frames none``)."""
    return str(attrs.get("frames", FRAMES_ALL))
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


def unit_plan(frames_per_clip: np.ndarray, target_frames: int, align: int, pieces: bool = True
              ) -> tuple[int, int | None]:
    """(clips per unit, frames per piece or None) of a backbone's layout: :func:`clips_per_unit`, and
    :func:`piece_frames` when ``pieces`` and some clip is longer than a piece (None otherwise, which
    is the layout of stores built before pieces existed: pass ``pieces=False`` to get theirs)."""
    per_unit = clips_per_unit(frames_per_clip, target_frames)
    piece = piece_frames(target_frames, align)
    return per_unit, piece if pieces and splits_clips(frames_per_clip, per_unit, piece) else None


def piece_frames(target_frames: int, align: int) -> int:
    """Frames per piece of a split clip: ``target_frames`` rounded up to a multiple of ``align``, so
    that every piece starts on a chunk (shard) boundary and owns its chunks."""
    return max(1, -(-int(target_frames) // align)) * align


def clip_pieces(frames_per_clip: np.ndarray, per_unit: int, piece: int) -> np.ndarray:
    """Units each clip is split over -> int64 [N]: ceil(T / piece) for a clip of more than ``piece``
    frames (only when ``per_unit`` is 1, which every such clip implies), else 1."""
    nf = np.asarray(frames_per_clip, dtype=np.int64)
    if per_unit != 1:
        return np.ones(len(nf), dtype=np.int64)
    return np.where(nf > piece, -(-nf // piece), 1)


def splits_clips(frames_per_clip: np.ndarray, per_unit: int, piece: int) -> bool:
    """Whether some clip is split into pieces under this layout."""
    return bool((clip_pieces(frames_per_clip, per_unit, piece) > 1).any())


#: columns of :func:`unit_table`
CLIP_LO, CLIP_HI, FRAME_START, FRAME_END = range(4)


def unit_table(offsets: np.ndarray, per_unit: int, align: int, piece: int | None = None) -> np.ndarray:
    """Every unit of a layout -> int64 [U, 4]: clip rows [clip_lo, clip_hi) and the frames
    [frame_start, frame_end) of ``frames`` it owns (its clips' frames up to the next aligned frame).

    ``piece``: frames per piece (:func:`piece_frames`) when the layout splits clips, None otherwise
    (then unit u holds clips [u*per_unit, (u+1)*per_unit), as :func:`unit_range` says). A piece of a
    split clip has clip_hi = clip_lo + 1 and owns ``piece`` frames from the clip's start (the last
    piece: the rest, up to the next aligned frame)."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = len(offsets)
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64)
    aligned_end = -(-offsets[:, 1] // align) * align
    if piece is None or per_unit != 1:
        lo = np.arange(0, n, per_unit, dtype=np.int64)
        hi = np.minimum(lo + per_unit, n)
        start = offsets[lo, 0]
        return np.stack([lo, hi, start, np.maximum(aligned_end[hi - 1], start)], axis=1)
    counts = clip_pieces(offsets[:, 1] - offsets[:, 0], 1, piece)
    clip = np.repeat(np.arange(n, dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    j = np.arange(len(clip), dtype=np.int64) - first
    start = offsets[clip, 0] + j * piece
    end = np.where(j < counts[clip] - 1, start + piece, np.maximum(aligned_end[clip], start))
    return np.stack([clip, clip + 1, start, end], axis=1)


def split_units(units: np.ndarray) -> dict[int, range]:
    """Clip row -> its units, for every clip split over more than one unit of ``units``
    (:func:`unit_table`)."""
    single = units[:, CLIP_HI] - units[:, CLIP_LO] == 1
    clips, first, counts = np.unique(units[single, CLIP_LO], return_index=True, return_counts=True)
    rows = np.flatnonzero(single)
    return {int(c): range(int(rows[f]), int(rows[f]) + int(k)) for c, f, k in zip(clips, first, counts) if k > 1}


def unit_clip_frames(offsets: np.ndarray, unit_row: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(clip row, clip frames T, first kept frame, end kept frame) of each clip of a unit
    (a row of :func:`featurestore.layout.unit_table`): the unit's frames of each clip, in clip frames."""
    lo, hi, start, end = (int(v) for v in unit_row)
    out = []
    for c in range(lo, hi):
        a, b = int(offsets[c, 0]), int(offsets[c, 1])
        out.append((c, b - a, max(start, a) - a, max(min(end, b), max(start, a)) - a))
    return out


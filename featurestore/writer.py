"""Writing a store: the clip table, a backbone's plan, and units of frames from a background thread.

Every write that makes something count as done comes last: ``clips`` gets ``complete`` after all
its columns, a backbone group gets ``planned`` after its offsets, and a unit's marker chunk is
written after its frames and pooled rows. A process killed anywhere leaves either a finished piece
or one that the next run redoes from scratch.
"""
from __future__ import annotations

import queue
import threading
import zlib
from dataclasses import dataclass

import numpy as np
import zarr

from featurestore import array_docs, layout, quantize
from featurestore.backbone_plan import BackbonePlan  # noqa: F401  (re-exported: planned here before)


def open_root(path, mode: str = "a") -> zarr.Group:
    """The root group of the store at ``path``: a local folder or an fsspec URL
    (:mod:`featurestore.location`), created when absent (mode ``a``)."""
    from featurestore.location import Location

    loc = Location(path)
    try:
        return loc.open_group(mode=mode)
    except zarr.errors.ContainsGroupError:  # another build created the store between Zarr's check and its write
        return loc.open_group(mode=mode)


def write_clip_table(root: zarr.Group, clips: list[dict]) -> None:
    """Write the clip table (see :mod:`featurestore.layout`) and mark it complete."""
    del root[layout.CLIPS]  # whatever an interrupted attempt left, with or without its group metadata
    g = root.create_group(layout.CLIPS)
    n = len(clips)
    chunk = max(1, min(n, 65536))
    for col in ("id", "file_id", "source", "audio", "split"):
        a = g.create_array(col, shape=(n,), dtype=str, chunks=(chunk,), dimension_names=array_docs.CLIP_DIMS,
                           attributes=array_docs.clip_column(col))
        if n:
            a[:] = np.array([c[col] for c in clips], dtype=object).astype(str)
    for col in ("start_s", "end_s"):
        a = g.create_array(col, shape=(n,), dtype="float64", chunks=(chunk,), dimension_names=array_docs.CLIP_DIMS,
                           attributes=array_docs.clip_column(col))
        if n:
            a[:] = np.array([c[col] for c in clips], dtype=np.float64)
    names = sorted({k for c in clips for k in c["labels"]})
    for name in names:
        a = g.create_array(f"labels/{name}", shape=(n,), dtype=str, chunks=(chunk,),
                           dimension_names=array_docs.CLIP_DIMS, attributes=array_docs.label_column(name))
        a[:] = np.array([c["labels"].get(name, "") for c in clips], dtype=object).astype(str)
    g.attrs.update({"columns": list(("id", "file_id", "source", "audio", "start_s", "end_s", "split")),
                    "labels": names, "n_clips": n, "complete": True})


def create_backbone(root: zarr.Group, name: str, plan: BackbonePlan, num_layers: int, dim: int, *, dtype: str,
                    chunk_frames: int, shard_frames: int | None, attrs: dict, frames: str = layout.FRAMES_ALL
                    ) -> zarr.Group:
    """Create (replacing any earlier attempt) the arrays of one backbone and mark it planned.

    ``num_layers``: the layers stored (L); ``dtype``: float16, float32 or int8 (8-bit frame codes
    plus ``frames_quant``, float16 pooled rows: :func:`featurestore.layout.stored_dtypes`);
    ``frames``: ``all``, or ``none`` for a pooled-only backbone (no ``frames`` array)."""
    path = layout.backbone_path(name)
    del root[path]  # whatever an interrupted attempt left, with or without its group metadata
    g = root.create_group(path)
    L, D, N = num_layers, dim, len(plan.offsets)
    dims, fe = array_docs.BACKBONE_DIMS, attrs.get("frontend", {})
    frame_dtype, pooled_dtype = layout.stored_dtypes(dtype)

    def doc(array: str) -> dict:  # dimension names and attributes saying what the array holds
        return {"dimension_names": dims[array], "attributes": array_docs.backbone_array(array, fe, dtype)}

    if frames == layout.FRAMES_ALL:
        g.create_array("frames", shape=(plan.total_frames, L, D), dtype=frame_dtype, chunks=(chunk_frames, L, D),
                       shards=(shard_frames, L, D) if shard_frames else None, compressors=None, fill_value=0,
                       **doc("frames"))
        if dtype == quantize.NAME:
            g.create_array("frames_quant", shape=(-(-plan.total_frames // chunk_frames), 2, L, D),
                           dtype=quantize.PARAM_DTYPE, chunks=(1, 2, L, D), compressors=None, fill_value=0,
                           **doc("frames_quant"))
    off = g.create_array("offsets", shape=(N, 2), dtype="int64", chunks=(max(1, N), 2), compressors=None,
                         **doc("offsets"))
    if N:
        off[:] = plan.offsets
    for stat in ("pooled_mean", "pooled_std"):
        g.create_array(stat, shape=(N, L, D), dtype=pooled_dtype, chunks=(plan.per_unit, L, D), compressors=None,
                       fill_value=np.nan, **doc(stat))
    U = plan.n_units
    g.create_array("unit_done", shape=(U,), dtype="uint8", chunks=(1,), fill_value=0, **doc("unit_done"))
    g.create_array("unit_checksum", shape=(U,), dtype="uint32", chunks=(1,), fill_value=0,
                   **doc("unit_checksum"))
    pieces = {}
    if plan.piece:
        g.create_array("piece_sums", shape=(U, 2, L, D), dtype="float64", chunks=(1, 2, L, D), compressors=None,
                       fill_value=0, **doc("piece_sums"))
        pieces = {"piece_frames": plan.piece}
    g.attrs.update({**attrs, "clips_per_unit": plan.per_unit, "align": plan.align,
                    "total_frames": plan.total_frames, **pieces, "planned": True})
    return g


@dataclass
class UnitResult:
    """One unit's output. frames [end-start, L, D] (stored dtype: uint8 codes for int8 with ``quant``,
    [0, L, D] in a pooled-only backbone) starting at frame ``start``;
    mean/std [clips in unit, L, D]. A piece of a split clip has no pooled rows (mean/std [0, L, D])
    but ``sums`` float64 [2, L, D] (sum and sum of squares over its frames), ``clip_units`` (every
    unit of its clip) and ``clip_frames`` (the clip's frame count)."""

    unit: int
    start: int
    frames: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    clip_lo: int
    sums: np.ndarray | None = None
    clip_units: range | None = None
    clip_frames: int = 0
    quant: np.ndarray | None = None  # int8 stores: float32 [chunks of the unit, 2, L, D] (featurestore.quantize)
    chunk: int = 0  # frames per chunk (with ``quant``)


def pooled_stats(sums: np.ndarray, sqs: np.ndarray, counts: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std rows [n, L, D] in ``dtype`` from float64 sums and sums of squares
    [n, L, D] over ``counts`` [n] frames (NaN where a count is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None, None]
        var = np.maximum(sqs / counts[:, None, None] - mean ** 2, 0.0)
    return mean.astype(dtype), np.sqrt(var).astype(dtype)


def crc_update(crc: int, a: np.ndarray) -> int:
    """CRC-32 (``zlib.crc32``) of ``a``'s bytes in C order, continued from ``crc`` (0 to start)."""
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8), crc)


def unit_checksum(frames: np.ndarray, *rows: np.ndarray) -> int:
    """CRC-32 of a unit's bytes as stored: its frames [owned frames, L, D] (alignment frames
    included; none in a pooled-only backbone), then (int8 stores) its ``frames_quant`` rows, then its
    pooled mean and std rows [clips, L, D], store dtype (for a piece of a split
    clip: its ``piece_sums`` row [2, L, D] float64 instead). The same as :func:`crc_update` over the
    frames in consecutive slices, then the rows. About 4 GB/s, in the writer thread, so a build
    does not wait for it."""
    crc = crc_update(0, frames)
    for a in rows:
        crc = crc_update(crc, a)
    return crc


#: every chunk a unit owns is written, even one equal to the fill value (Zarr skips those by default),
#: so that a missing chunk file always means damage (see featurestore.store.ChunkFiles)
_WRITE_ALL = {"write_empty_chunks": True}


def write_unit(g: zarr.Group, r: UnitResult) -> None:
    """Frames, then pooled rows (a piece of a split clip: its ``piece_sums`` row), then the unit's
    checksum (stores built before checksums have no ``unit_checksum``), then its marker (last, so a
    partial unit is never 'done'); then, for a piece, the clip's pooled rows if every piece of the
    clip is done (:func:`finish_split_clip`)."""
    if len(r.frames):
        g["frames"].with_config(_WRITE_ALL)[r.start:r.start + len(r.frames)] = r.frames
    if r.quant is not None and len(r.quant):
        c = r.start // r.chunk
        g["frames_quant"].with_config(_WRITE_ALL)[c:c + len(r.quant)] = r.quant
    if len(r.mean):
        g["pooled_mean"].with_config(_WRITE_ALL)[r.clip_lo:r.clip_lo + len(r.mean)] = r.mean
        g["pooled_std"].with_config(_WRITE_ALL)[r.clip_lo:r.clip_lo + len(r.std)] = r.std
    if r.sums is not None:
        g["piece_sums"].with_config(_WRITE_ALL)[r.unit] = r.sums
    if "unit_checksum" in g:
        rows = (r.sums,) if r.sums is not None else (r.mean, r.std)
        rows = rows if r.quant is None else (r.quant,) + rows
        g["unit_checksum"][r.unit] = unit_checksum(r.frames, *rows)
    g["unit_done"][r.unit] = 1
    if r.clip_units is not None:
        finish_split_clip(g, r.clip_lo, r.clip_units, r.clip_frames)


def finish_split_clip(g: zarr.Group, clip: int, units: range, n_frames: int) -> bool:
    """Write the pooled rows of a clip split over ``units`` from their ``piece_sums`` once every one
    of them is done; returns whether it wrote them. Idempotent (the same bytes each time), so the
    writers of two pieces that finish together may both write them."""
    if not g["unit_done"][units.start:units.stop].all():
        return False
    sums = g["piece_sums"][units.start:units.stop]  # [pieces, 2, L, D] float64
    total = sums[0].copy()
    for k in range(1, len(sums)):  # piece by piece, in order: the same sums whoever adds them
        total += sums[k]
    mean, std = pooled_stats(total[None, 0], total[None, 1], np.array([n_frames]), g["pooled_mean"].dtype)
    g["pooled_mean"].with_config(_WRITE_ALL)[clip:clip + 1] = mean
    g["pooled_std"].with_config(_WRITE_ALL)[clip:clip + 1] = std
    return True


class BackgroundWriter:
    """Writes :class:`UnitResult` objects from a thread, so the model never waits on disk.

    ``put`` blocks only when ``depth`` units are already waiting (bounded memory). A write error is
    raised again in the caller at the next ``put`` or at ``close``.
    """

    def __init__(self, group: zarr.Group, depth: int = 2, on_written=None):
        self.group, self.on_written = group, on_written
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="featurestore-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    write_unit(self.group, item)
                    if self.on_written is not None:
                        self.on_written(item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.error = e

    def _check(self):
        if self.error is not None:
            raise RuntimeError(f"writing to the store failed: {self.error}") from self.error

    def put(self, item: UnitResult) -> None:
        self._check()
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._check()

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

from featurestore import array_docs, layout


def open_root(path, mode: str = "a") -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except zarr.errors.ContainsGroupError:  # another build created the store between Zarr's check and its write
        return zarr.open_group(str(path), mode=mode, zarr_format=3)


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


@dataclass
class BackbonePlan:
    """Where each clip of one backbone goes. offsets int64 [N, 2]; frames F total."""

    offsets: np.ndarray
    per_unit: int
    align: int
    total_frames: int

    @property
    def n_units(self) -> int:
        return -(-len(self.offsets) // self.per_unit)


def create_backbone(root: zarr.Group, name: str, plan: BackbonePlan, num_layers: int, dim: int, *, dtype: str,
                    chunk_frames: int, shard_frames: int | None, attrs: dict) -> zarr.Group:
    """Create (replacing any earlier attempt) the arrays of one backbone and mark it planned."""
    path = layout.backbone_path(name)
    del root[path]  # whatever an interrupted attempt left, with or without its group metadata
    g = root.create_group(path)
    L, D, N = num_layers, dim, len(plan.offsets)
    dims, fe = array_docs.BACKBONE_DIMS, attrs.get("frontend", {})

    def doc(array: str) -> dict:  # dimension names and attributes saying what the array holds
        return {"dimension_names": dims[array], "attributes": array_docs.backbone_array(array, fe, dtype)}

    g.create_array("frames", shape=(plan.total_frames, L, D), dtype=dtype, chunks=(chunk_frames, L, D),
                   shards=(shard_frames, L, D) if shard_frames else None, compressors=None, fill_value=0,
                   **doc("frames"))
    off = g.create_array("offsets", shape=(N, 2), dtype="int64", chunks=(max(1, N), 2), compressors=None,
                         **doc("offsets"))
    if N:
        off[:] = plan.offsets
    for stat in ("pooled_mean", "pooled_std"):
        g.create_array(stat, shape=(N, L, D), dtype=dtype, chunks=(plan.per_unit, L, D), compressors=None,
                       fill_value=np.nan, **doc(stat))
    g.create_array("unit_done", shape=(plan.n_units,), dtype="uint8", chunks=(1,), fill_value=0, **doc("unit_done"))
    g.create_array("unit_checksum", shape=(plan.n_units,), dtype="uint32", chunks=(1,), fill_value=0,
                   **doc("unit_checksum"))
    g.attrs.update({**attrs, "clips_per_unit": plan.per_unit, "align": plan.align,
                    "total_frames": plan.total_frames, "planned": True})
    return g


@dataclass
class UnitResult:
    """One unit's output. frames [end-start, L, D] (store dtype) starting at frame ``start``;
    mean/std [clips in unit, L, D]."""

    unit: int
    start: int
    frames: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    clip_lo: int


def crc_update(crc: int, a: np.ndarray) -> int:
    """CRC-32 (``zlib.crc32``) of ``a``'s bytes in C order, continued from ``crc`` (0 to start)."""
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8), crc)


def unit_checksum(frames: np.ndarray, mean: np.ndarray, std: np.ndarray) -> int:
    """CRC-32 of a unit's bytes as stored: its frames [owned frames, L, D] (alignment frames
    included), then its pooled mean and std rows [clips, L, D], store dtype. The same as
    :func:`crc_update` over the frames in consecutive slices, then the rows. About 4 GB/s, in the
    writer thread, so a build does not wait for it."""
    crc = 0
    for a in (frames, mean, std):
        crc = crc_update(crc, a)
    return crc


#: every chunk a unit owns is written, even one equal to the fill value (Zarr skips those by default),
#: so that a missing chunk file always means damage (see featurestore.store.ChunkFiles)
_WRITE_ALL = {"write_empty_chunks": True}


def write_unit(g: zarr.Group, r: UnitResult) -> None:
    """Frames, then pooled rows, then the unit's checksum (stores built before checksums have no
    ``unit_checksum``), then its marker (last, so a partial unit is never 'done')."""
    if len(r.frames):
        g["frames"].with_config(_WRITE_ALL)[r.start:r.start + len(r.frames)] = r.frames
    if len(r.mean):
        g["pooled_mean"].with_config(_WRITE_ALL)[r.clip_lo:r.clip_lo + len(r.mean)] = r.mean
        g["pooled_std"].with_config(_WRITE_ALL)[r.clip_lo:r.clip_lo + len(r.std)] = r.std
    if "unit_checksum" in g:
        g["unit_checksum"][r.unit] = unit_checksum(r.frames, r.mean, r.std)
    g["unit_done"][r.unit] = 1


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

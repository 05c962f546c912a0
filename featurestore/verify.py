"""``python -m featurestore.verify STORE``: check that a store holds what its metadata says.

Checks, each problem reported with the backbone, unit, clip(s) and file it concerns:

- *metadata*: root attributes (``format``, ``clip_settings``); the clip table (``complete``, every
  column and label array present with one value per clip, unique ids); each backbone's attributes
  (``planned``, ``complete``, ``identity``, ``frontend`` sizes, layout) and arrays (shapes agree
  with the clip table and the frontend). :func:`clip_table_problems` and :func:`plan_problems` are
  also what the build uses to decide that a part marked done is damaged and must be re-planned.
- *offsets*: equal to the layout the build makes from the clip table and the frontend's frame
  count (so: monotone, inside ``frames``, each unit starting on a chunk or shard boundary, and
  ``T`` = the frontend's frames for each clip's samples).
- *files*: every chunk file (shard file when sharded) of ``frames`` and of the pooled arrays that a
  done unit owns exists, with the size of an uncompressed chunk (:class:`featurestore.store.ChunkFiles`).
  The pooled rows of a clip split over several units (pieces, see :mod:`featurestore.layout`) are
  owned by its last piece once every piece is done.
- *values* (not with ``--quick``; reads every done unit once): the unit's CRC-32 written at
  extraction (``unit_checksum``; a store built before checksums has none: said, and skipped); no
  NaN or Inf in the frames of a done unit; ``pooled_mean`` / ``pooled_std`` rows equal the mean and
  standard deviation of their clip's stored frames, within the rounding of the store dtype (pooled
  rows are computed in float32 from the frames before both are rounded). An int8 backbone
  (:mod:`featurestore.quantize`): its ``frames_quant`` rows (offset and step of each chunk, layer and
  channel) are in the checksum and must be finite with steps >= 0; frames are dequantised before the
  pooled check, whose tolerance grows by the quantisation error bound. A pooled-only backbone
  (``--frames none``) has no frames to read: its checksum covers the pooled rows, which must be
  finite (NaN for a clip without frames). A piece's checksum covers
  its frames and its ``piece_sums`` row; a split clip's pooled rows are checked against the frames
  of all its pieces, at its last piece.

``--repair`` (under the store's lock, :mod:`featurestore.locking`) unmarks damaged units
(``unit_done`` = 0) and clears their backbone's ``complete``; a damaged backbone plan loses
``planned`` and a damaged clip table ``complete``. Running the build again then re-extracts
exactly those units (or re-plans what lost its mark; a clip table re-planned from the same input
and settings is the same, and backbones laid out on it are kept).

Exit status: 0 when the store is sound, 1 when something is wrong (also after ``--repair``: the
build still has to run), 2 when STORE cannot be read as a store.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from featurestore import layout, quantize
from featurestore.cli import HelpFormatter, add_field
from featurestore.clips import COLUMNS
from featurestore.location import Location
from featurestore.locking import KINDS, StoreLock
from featurestore.metadata_check import _listing, damaged_metadata
from featurestore.options import SpecError, add_options, from_namespace, option
from featurestore.quantize import dequantize, error_bound
from featurestore.store import ChunkFiles, frame_spans_to_chunks, frame_spans_to_rows, stored_backbone_name
from featurestore.backbone_plan import BackbonePlan, plan_backbone
from featurestore.geometry import FrameGeometry
from featurestore.writer import crc_update

#: keys of a backbone's ``frontend`` attribute that reading and verifying a store need
FRONTEND_KEYS = ("name", "sample_rate", "frame_rate", "stride", "receptive", "pad", "num_layers", "dim")
#: a backbone's arrays (``unit_checksum`` is optional: stores built before checksums lack it; ``frames``
#: is absent from a pooled-only backbone, ``frames_quant`` present in an int8 one)
BACKBONE_ARRAYS = ("frames", "offsets", "pooled_mean", "pooled_std", "unit_done")


# --------------------------------------------------------------------------------------------
# structure (also used by featurestore.build)
# --------------------------------------------------------------------------------------------

def _array(g: zarr.Group, name: str):
    """The array ``name`` of ``g``, or None when it is absent or not an array."""
    try:
        a = g[name]
    except (KeyError, FileNotFoundError, ValueError):
        return None
    return a if isinstance(a, zarr.Array) else None


def clip_table_problems(root: zarr.Group) -> list[str]:
    """What is missing from the store's root attributes and clip table (empty when sound).
    Does not read the columns' values."""
    out = []
    if root.attrs.get("format") != layout.FORMAT:
        out.append(f"root attribute 'format' is {root.attrs.get('format')!r}, expected {layout.FORMAT!r}")
    if not isinstance(root.attrs.get("clip_settings"), dict):
        out.append("root attribute 'clip_settings' is missing")
    if layout.CLIPS not in root:
        return out + ["the clip table (clips/) is missing"]
    g = root[layout.CLIPS]
    if not g.attrs.get("complete", False):
        out.append("the clip table is not marked complete")
    n = g.attrs.get("n_clips")
    if not isinstance(n, int):
        out.append("clips attribute 'n_clips' is missing")
    columns = g.attrs.get("columns")
    if not isinstance(columns, list) or set(COLUMNS) - set(columns):
        out.append(f"clips attribute 'columns' is {columns!r}, expected every one of {list(COLUMNS)}")
    labels = g.attrs.get("labels")
    if not isinstance(labels, list):
        out.append("clips attribute 'labels' is missing")
        labels = []
    for col in list(COLUMNS) + [f"labels/{name}" for name in labels]:
        a = _array(g, col)
        if a is None:
            out.append(f"clips/{col} is missing")
        elif isinstance(n, int) and a.shape != (n,):
            out.append(f"clips/{col} has shape {a.shape}, expected ({n},) (n_clips)")
    return out


def expected_plan(root: zarr.Group, g: zarr.Group) -> BackbonePlan:
    """The layout the build makes for backbone group ``g`` from the clip table and the frontend's
    geometry as stored (``frontend``: sample_rate, stride, receptive, pad; ``identity``:
    target_unit_frames; ``align``). Raises KeyError/TypeError when those attributes are missing."""
    clips = root[layout.CLIPS]
    align, identity = int(g.attrs["align"]), g.attrs["identity"]
    # a store planned before long clips were split into pieces has no piece_frames: its layout has none
    plan, _, _ = plan_backbone(clips["start_s"][:], clips["end_s"][:], FrameGeometry.from_attrs(g.attrs["frontend"]),
                               int(identity["target_unit_frames"]), align, pieces="piece_frames" in identity)
    return plan


def plan_problems(g: zarr.Group, plan: BackbonePlan | None = None, where: str = "") -> list[str]:
    """What is missing or inconsistent in a backbone group's plan (empty when sound): attributes,
    arrays, their shapes and data types (an array's ``zarr.json`` whose ``data_type`` was changed is
    named), offsets that cannot be read (a damaged chunk file), and, given the ``plan`` the clip
    table and frontend call for, its offsets and sizes. ``complete`` is not looked at (an unfinished
    backbone is not damaged). ``where``: the group's path in the store, for messages."""
    out = []
    if not g.attrs.get("planned", False):
        out.append("attribute 'planned' is missing")
    if not isinstance(g.attrs.get("identity"), dict):
        out.append("attribute 'identity' is missing")
    fe = g.attrs.get("frontend")
    missing = [k for k in FRONTEND_KEYS if not isinstance(fe, dict) or k not in fe]
    if missing:
        out.append(f"attribute 'frontend' lacks {', '.join(missing)}")
    sizes = {}
    for key in ("clips_per_unit", "align", "total_frames"):
        v = g.attrs.get(key)
        if not isinstance(v, int) or v < (0 if key == "total_frames" else 1):
            out.append(f"attribute {key!r} is {v!r}")
        sizes[key] = v
    piece = g.attrs.get("piece_frames")
    if piece is not None and (not isinstance(piece, int) or piece < 1):
        out.append(f"attribute 'piece_frames' is {piece!r}")
    arrays = {name: _array(g, name) for name in BACKBONE_ARRAYS + ("unit_checksum", "piece_sums", "frames_quant")}
    no_frames = layout.frames_mode(g.attrs) == layout.FRAMES_NONE
    int8 = g.attrs.get("dtype") == quantize.NAME and not no_frames
    required = [n for n in BACKBONE_ARRAYS if not (no_frames and n == "frames")] + (["frames_quant"] if int8 else [])
    out += [f"array {name!r} is missing" for name in required if arrays[name] is None]
    if piece is not None and arrays["piece_sums"] is None:
        out.append("array 'piece_sums' is missing (the backbone splits long clips into pieces)")
    if out:
        return out
    prefix = f"{where}/" if where else ""
    stored_dtype = (g.attrs.get("identity") or {}).get("dtype") or g.attrs.get("dtype")
    want_dtypes = {"offsets": "int64", "unit_done": "uint8", "unit_checksum": "uint32", "piece_sums": "float64"}
    if stored_dtype in ("float16", "float32", quantize.NAME):
        frame_dtype, pooled_dtype = layout.stored_dtypes(stored_dtype)
        want_dtypes.update(frames=frame_dtype, pooled_mean=pooled_dtype, pooled_std=pooled_dtype)
        if stored_dtype == quantize.NAME:
            want_dtypes["frames_quant"] = quantize.PARAM_DTYPE.name
    for name, want_dtype in want_dtypes.items():
        a = arrays[name]
        if a is not None and np.dtype(a.dtype) != np.dtype(want_dtype):
            out.append(f"{prefix}{name}/zarr.json: data_type {np.dtype(a.dtype).name}, but this array holds "
                       f"{want_dtype}" + (" (the backbone's dtype attribute)" if name in ("frames", "pooled_mean",
                                                                                      "pooled_std") else ""))
    if out:
        return out
    try:
        offsets = arrays["offsets"][:]
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt chunk file: zarr raises what the codec does
        a = arrays["offsets"]
        keys = [a.metadata.chunk_key_encoding.encode_chunk_key(i) for i in np.ndindex(*a.cdata_shape)]
        files = ", ".join(f"{prefix}offsets/{k}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")
        return [f"offsets: cannot be read ({type(e).__name__}: {e}); its chunk file(s) {files} are damaged"]
    try:
        L, D = len(layout.layer_ids(g.attrs)), int(fe["dim"])
    except (TypeError, ValueError):
        return out + [f"attribute 'layers' is {g.attrs.get('layers')!r}"]
    N, per_unit = arrays["offsets"].shape[0], sizes["clips_per_unit"]
    U = len(layout.unit_table(offsets, per_unit, sizes["align"], piece)) if piece else -(-N // per_unit)
    want = {"frames": (sizes["total_frames"], L, D), "offsets": (N, 2), "pooled_mean": (N, L, D),
            "pooled_std": (N, L, D), "unit_done": (U,), "unit_checksum": (U,)}
    if piece:
        want["piece_sums"] = (U, 2, L, D)
    if no_frames:
        del want["frames"]
    if int8:
        want["frames_quant"] = (-(-sizes["total_frames"] // int(arrays["frames"].chunks[0])), 2, L, D)
    for name, shape in want.items():
        a = arrays[name]
        if a is not None and tuple(a.shape) != shape:
            out.append(f"array {name!r} has shape {tuple(a.shape)}, expected {shape}")
    if plan is not None and not out:
        if (N, per_unit, sizes["align"], sizes["total_frames"], piece) != (len(plan.offsets), plan.per_unit,
                                                                           plan.align, plan.total_frames, plan.piece):
            out.append(f"the layout (clips {N}, clips_per_unit {per_unit}, align {sizes['align']}, frames "
                       f"{sizes['total_frames']}, piece_frames {piece}) is not the one the clip table calls for "
                       f"(clips {len(plan.offsets)}, clips_per_unit {plan.per_unit}, align {plan.align}, frames "
                       f"{plan.total_frames}, piece_frames {plan.piece})")
        else:
            stored = offsets
            bad = np.flatnonzero((stored != plan.offsets).any(axis=1))
            if len(bad):
                i = int(bad[0])
                out.append(f"offsets of {len(bad)} clip(s) differ from the layout of the clip table, first clip row "
                           f"{i}: stored [{stored[i, 0]}, {stored[i, 1]}), expected [{plan.offsets[i, 0]}, "
                           f"{plan.offsets[i, 1]})")
    return out


# --------------------------------------------------------------------------------------------
# the full check
# --------------------------------------------------------------------------------------------

@dataclass
class Problem:
    """One thing wrong. check: metadata | offsets | missing_chunk | chunk_size | checksum | nonfinite |
    quant | pooled | incomplete. unit: unit number (None for the store or a whole backbone)."""

    check: str
    message: str
    backbone: str | None = None
    unit: int | None = None
    clips: list = field(default_factory=list)
    file: str | None = None

    def text(self) -> str:
        where = " ".join(x for x in (self.backbone or "", f"unit {self.unit}" if self.unit is not None else "") if x)
        return f"[{self.check}] {where + ': ' if where else ''}{self.message}"


@dataclass
class Report:
    store: str
    clips: int = 0
    problems: list = field(default_factory=list)
    backbones: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    repaired: dict = field(default_factory=dict)
    #: the input an ingested store was made from (``featurestore.ingest``); None for a built store
    ingested_from: str | None = None
    #: the root ``zarr.json`` cannot be read (only a build with --overwrite recovers the store)
    root_unreadable: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def damaged_units(self) -> dict[str, list[int]]:
        """Backbone -> units with a unit-level problem."""
        out: dict[str, set] = {}
        for p in self.problems:
            if p.unit is not None:
                out.setdefault(p.backbone, set()).add(p.unit)
        return {k: sorted(v) for k, v in out.items()}

    def as_dict(self) -> dict:
        return {"store": self.store, "ok": self.ok, "clips": self.clips,
                "problems": [asdict(p) for p in self.problems], "backbones": self.backbones,
                "notes": self.notes, "repaired": self.repaired, "ingested_from": self.ingested_from,
                "advice": advice(self)}


def _tolerances(dtype: np.dtype, T: int, s1, s2, sabs):
    """Largest |stored - recomputed| allowed for pooled mean and std rows of a clip of T frames.

    Frames were rounded to the store dtype (relative error <= u, the unit roundoff) after the pooled
    statistics were computed from the unrounded values, and the statistics were rounded too. So the
    mean may differ by u * (mean|x| + |mean|) and the std (1-Lipschitz in the frames' RMS) by
    u * (rms + std), plus the dtype's smallest subnormal, plus float64 cancellation in E[x^2] - m^2;
    twice that is allowed."""
    info = np.finfo(dtype)
    u, tiny = float(info.eps) / 2, float(info.smallest_subnormal)
    m, ms = s1 / T, s2 / T
    sd = np.sqrt(np.maximum(ms - m * m, 0.0))
    rms = np.sqrt(ms)
    tol_mean = 2 * (u * (sabs / T + np.abs(m)) + tiny)
    tol_std = 2 * (u * (rms + sd) + tiny) + np.sqrt(2.0 ** -48 * ms)
    return m, sd, tol_mean, tol_std


def _describe_clips(ids, rows) -> str:
    rows = list(rows)
    if not rows:
        return "no clip"
    if len(rows) == 1:
        return f"clip {str(ids[rows[0]])!r}"
    return f"clips {str(ids[rows[0]])!r} to {str(ids[rows[-1]])!r} ({len(rows)} clips)"


def _frame_sums(frames, fr, offsets, lo: int, hi: int, quant: np.ndarray | None = None):
    """Read frames [fr[0], fr[1]) once, in slices -> (CRC-32 of their bytes, and per clip of rows
    [lo, hi) the float64 sum, sum of squares and sum of |x| [n, L, D] of its frames in that range,
    its count of NaN/Inf values [n], and the largest quantisation error bound [n, L, D] of its
    chunks (0 without ``quant``)).

    ``frames`` None: a pooled-only backbone (nothing read, zero sums). ``quant``: an int8 store's
    ``frames_quant`` rows of the chunks [fr[0] / chunk, fr[1] / chunk) (float32 [C, 2, L, D]); the
    codes are then dequantised before they are summed (:mod:`featurestore.quantize`)."""
    n = hi - lo
    if frames is None:
        return 0, 0.0, 0.0, 0.0, np.zeros(n, dtype=np.int64), 0.0
    shape = tuple(frames.shape[1:])
    s1, s2, sabs, qtol = (np.zeros((n,) + shape) for _ in range(4))
    bad = np.zeros(n, dtype=np.int64)
    crc = 0
    chunk = int(frames.chunks[0])
    step = max(chunk, (1024 // chunk) * chunk)
    bound = error_bound(quant) if quant is not None else None
    for p in range(fr[0], fr[1], step):
        q = min(fr[1], p + step)
        x = frames[p:q]
        crc = crc_update(crc, x)
        if quant is not None:
            c0 = (p - fr[0]) // chunk
            x = dequantize(x, quant[c0:], chunk)
        for c in range(n):
            a, b = max(int(offsets[lo + c, 0]), p), min(int(offsets[lo + c, 1]), q)
            if b <= a:
                continue
            if bound is not None:
                k0, k1 = (a - fr[0]) // chunk, (b - 1 - fr[0]) // chunk + 1
                qtol[c] = np.maximum(qtol[c], np.nan_to_num(bound[k0:k1], nan=np.inf).max(0))
            seg = x[a - p:b - p].astype(np.float64)
            bad[c] += int(np.count_nonzero(~np.isfinite(seg)))
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are counted above
                s1[c] += seg.sum(0)
                s2[c] += np.square(seg).sum(0)
                sabs[c] += np.abs(seg).sum(0)
    return crc, s1, s2, sabs, bad, qtol


def _quant_problems(name, u, fr, quant: np.ndarray, chunk: int, ids, clips) -> list[Problem]:
    """An int8 unit's ``frames_quant`` rows (offset, step per chunk, layer, channel): finite, and
    steps >= 0."""
    lo_, step = quant[:, 0], quant[:, 1]
    wrong = ~np.isfinite(lo_) | ~np.isfinite(step) | ~(step >= 0)
    if not wrong.any():
        return []
    k = np.unravel_index(int(np.argmax(wrong)), wrong.shape)
    c = fr[0] // chunk + int(k[0])
    return [Problem("quant", f"frames_quant has {int(wrong.sum())} offset/step value(s) that are not finite or a "
                             f"negative step, e.g. chunk {c} (frames {c * chunk}-{(c + 1) * chunk}) layer {k[1]} "
                             f"dim {k[2]}: offset {float(lo_[k]):.6g}, step {float(step[k]):.6g}", name, u,
                    [str(ids[i]) for i in clips])]


def _pooled_problems(name, u, i, cid, span, mean, std, s1, s2, sabs, bad, dtype, qtol=0.0,
                     frames: bool = True) -> list[Problem]:
    """NaN/Inf in clip row ``i``'s frames ``span`` (its offsets), or pooled rows ``mean``/``std``
    [L, D] that are not the statistics of its frames (sums ``s1``, ``s2``, ``sabs``), reported
    against unit ``u``. ``qtol``: the quantisation error bound of an int8 store's frames [L, D]
    (the pooled rows come from the unquantised values, so they may differ from the stored frames'
    statistics by that much more). ``frames`` False (a pooled-only backbone): the rows are only
    checked to be finite (std >= 0) for a clip with frames and NaN for one without."""
    T = int(span[1] - span[0])
    if bad:
        return [Problem("nonfinite", f"clip {cid!r} has {bad} NaN/Inf values in its frames {span[0]}-{span[1]}",
                        name, u, [cid])]
    if T == 0:
        if not (np.isnan(mean).all() and np.isnan(std).all()):
            return [Problem("pooled", f"clip {cid!r} has no frame but pooled rows that are not NaN", name, u, [cid])]
        return []
    if not frames:
        wrong = ~np.isfinite(mean.astype(np.float64)) | ~(std.astype(np.float64) >= 0) | ~np.isfinite(std)
        if wrong.any():
            return [Problem("pooled", f"pooled rows of clip {cid!r} (row {i}) have {int(wrong.sum())} values that are "
                                      "NaN/Inf or a negative std (the backbone stores no frames to compare them with)",
                            name, u, [cid])]
        return []
    out = []
    m, sd, tol_m, tol_s = _tolerances(dtype, T, s1, s2, sabs)
    tol_m, tol_s = tol_m + 2 * qtol, tol_s + 2 * qtol
    for stat, stored, want, tol in (("pooled_mean", mean, m, tol_m), ("pooled_std", std, sd, tol_s)):
        err = np.abs(stored.astype(np.float64) - want)
        wrong = ~(err <= tol)  # NaN in the stored row counts as wrong
        if wrong.any():
            k = np.unravel_index(int(np.argmax(np.where(wrong, np.nan_to_num(err, nan=np.inf), -1))), wrong.shape)
            out.append(Problem("pooled", f"{stat} row of clip {cid!r} (row {i}) is not the statistic of its "
                                         f"frames at {int(wrong.sum())} of {wrong.size} values; e.g. layer "
                                         f"{k[0]} dim {k[1]}: stored {float(stored[k]):.6g}, frames give "
                                         f"{float(want[k]):.6g}", name, u, [cid]))
    return out


def _unit_frames(g, fr) -> tuple:
    """(frames array or None for a pooled-only backbone, the unit's ``frames_quant`` rows or None,
    the dtype the pooled tolerances use)."""
    frames = _array(g, "frames") if layout.frames_mode(g.attrs) != layout.FRAMES_NONE else None
    quant = None
    if frames is not None and _array(g, "frames_quant") is not None:
        chunk = int(frames.chunks[0])
        quant = g["frames_quant"][fr[0] // chunk:-(-fr[1] // chunk)]
    dtype = np.dtype(g["pooled_mean"].dtype) if frames is None or quant is not None else np.dtype(frames.dtype)
    return frames, quant, dtype


def _check_unit_values(g, name, u, fr, lo, hi, offsets, ids, checksums) -> list[Problem]:
    """Read one done unit once (in slices): CRC-32, NaN/Inf in its clips' frames, an int8 unit's
    offsets and steps, pooled rows."""
    frames, quant, dtype = _unit_frames(g, fr)
    mean, std = g["pooled_mean"][lo:hi], g["pooled_std"][lo:hi]
    crc, s1, s2, sabs, bad, qtol = _frame_sums(frames, fr, offsets, lo, hi, quant)
    out = []
    if quant is not None:
        crc = crc_update(crc, quant)  # as writer.unit_checksum: frames, then frames_quant rows
        out += _quant_problems(name, u, fr, quant, int(frames.chunks[0]), ids, range(lo, hi))
    if checksums is not None:
        crc = crc_update(crc_update(crc, mean), std)  # as writer.unit_checksum: frames, then pooled rows
        if int(checksums[u]) != crc:
            out.append(Problem("checksum", f"the unit's bytes do not match the checksum written at extraction "
                                           f"(stored {int(checksums[u]):#010x}, now {crc:#010x}): frames "
                                           f"{fr[0]}-{fr[1]}{', their frames_quant rows' if quant is not None else ''} "
                                           f"or pooled rows {lo}-{hi} "
                                           f"({_describe_clips(ids, range(lo, hi))}) changed", name, u,
                               [str(ids[i]) for i in range(lo, hi)]))
    for c in range(hi - lo):
        i = lo + c
        out += _pooled_problems(name, u, i, str(ids[i]), offsets[i], mean[c], std[c], *_at(c, s1, s2, sabs),
                                int(bad[c]), dtype, _at(c, qtol)[0], frames is not None)
    return out


def _at(c: int, *arrays):
    """Row ``c`` of each of ``arrays`` (scalars, from a backbone without frames, pass through)."""
    return tuple(a[c] if isinstance(a, np.ndarray) else a for a in arrays)


def _check_piece_values(g, name, u, fr, clip, pieces: range, offsets, ids, checksums, acc: dict,
                        all_done: bool) -> list[Problem]:
    """Read one done piece of split clip row ``clip`` (``pieces``: every unit of the clip): CRC-32
    over its frames and its ``piece_sums`` row (as the writer computed it); its frame sums are added
    to ``acc[clip]``, and at the clip's last piece, when every piece is done and was read, the
    clip's NaN/Inf count and pooled rows are checked against all its frames."""
    frames, quant, dtype = _unit_frames(g, fr)
    crc, s1, s2, sabs, bad, qtol = _frame_sums(frames, fr, offsets, clip, clip + 1, quant)
    s1, s2, sabs, qtol = (a if isinstance(a, np.ndarray) else np.zeros((1,) + tuple(g["pooled_mean"].shape[1:]))
                          for a in (s1, s2, sabs, qtol))
    cid = str(ids[clip])
    out = []
    if quant is not None:
        crc = crc_update(crc, quant)
        out += _quant_problems(name, u, fr, quant, int(frames.chunks[0]), ids, [clip])
    if checksums is not None:
        crc = crc_update(crc, g["piece_sums"][u])
        if int(checksums[u]) != crc:
            out.append(Problem("checksum", f"the unit's bytes do not match the checksum written at extraction "
                                           f"(stored {int(checksums[u]):#010x}, now {crc:#010x}): frames "
                                           f"{fr[0]}-{fr[1]} or piece_sums row {u} (piece {u - pieces.start + 1} "
                                           f"of {len(pieces)} of clip {cid!r}) changed", name, u, [cid]))
    k, t1, t2, tabs, tbad, tq = acc.get(clip, (0, 0.0, 0.0, 0.0, 0, 0.0))
    acc[clip] = (k + 1, t1 + s1[0], t2 + s2[0], tabs + sabs[0], tbad + int(bad[0]), np.maximum(tq, qtol[0]))
    if u == pieces.stop - 1 and all_done and acc[clip][0] == len(pieces):
        k, t1, t2, tabs, tbad, tq = acc.pop(clip)
        out += _pooled_problems(name, u, clip, cid, offsets[clip], g["pooled_mean"][clip], g["pooled_std"][clip], t1,
                                t2, tabs, tbad, dtype, tq, frames is not None)
    return out


def verify_backbone(root: zarr.Group, store_dir: Path, name: str, ids, quick: bool = False,
                    table_ok: bool = True) -> tuple[list[Problem], dict]:
    """Every check of one backbone (see the module docstring) -> (problems, summary)."""
    g = root[layout.backbone_path(name)]
    plan = None
    if table_ok:
        try:
            plan = expected_plan(root, g)
        except (KeyError, TypeError, ValueError):
            plan = None  # the attributes it needs are missing: reported below
    meta = plan_problems(g, plan, layout.backbone_path(name))
    if meta:
        return [Problem("offsets" if m.startswith(("offsets", "the layout")) else "metadata", m, name)
                for m in meta], {"plan": "damaged"}
    per_unit, align = int(g.attrs["clips_per_unit"]), int(g.attrs["align"])
    offsets, done = g["offsets"][:], g["unit_done"][:]
    checksums = g["unit_checksum"][:] if _array(g, "unit_checksum") is not None else None
    loc = Location(store_dir)  # a local folder or an fsspec URL: chunk files are checked through fsspec there
    base = layout.backbone_path(name)
    label = f"backbone {name!r}"
    has_frames = layout.frames_mode(g.attrs) != layout.FRAMES_NONE
    frames = ChunkFiles(g["frames"], loc.join(base, "frames"), offsets, ids, f"{label} frames", rows_name="frames",
                        location=loc) if has_frames else None
    quant = ChunkFiles(g["frames_quant"], loc.join(base, "frames_quant"),
                       frame_spans_to_chunks(offsets, int(g["frames"].chunks[0])), ids, f"{label} frames_quant",
                       rows_name="chunks", location=loc) if has_frames and "frames_quant" in g else None
    pooled = {s: ChunkFiles(g[s], loc.join(base, s), frame_spans_to_rows(offsets), ids, f"{label} {s}", location=loc)
              for s in ("pooled_mean", "pooled_std")}
    problems = []
    if not g.attrs.get("complete", False):
        ingested = bool(dict(g.attrs.get("identity") or {}).get("ingested"))
        finish = "ingest it again (--overwrite)" if ingested else "run the build again to finish it"
        problems.append(Problem("incomplete", f"not complete: {int(done.sum())} of {len(done)} units done; {finish}",
                                name))
    values_checked = 0
    units = layout.unit_table(offsets, per_unit, align, g.attrs.get("piece_frames"))
    split = layout.split_units(units)
    acc: dict = {}  # split clip -> sums over its pieces read so far
    for u in np.flatnonzero(done):
        u = int(u)
        lo, hi, *fr = (int(v) for v in units[u])
        pieces = split.get(lo) if hi - lo == 1 else None
        clips = [str(ids[i]) for i in range(lo, hi)]
        found = []
        cells = [] if frames is None else [(frames, c) for c in range(fr[0] // frames.grain, -(-fr[1] // frames.grain))]
        if quant is not None:
            chunk = int(g["frames"].chunks[0])
            cells += [(quant, c) for c in range(fr[0] // chunk, -(-fr[1] // chunk))]
        # pooled rows: one chunk per unit of clips; a split clip's rows belong to its last piece, and
        # exist once every piece is done
        pieces_done = pieces is not None and bool(done[pieces.start:pieces.stop].all())
        if pieces is None or (u == pieces.stop - 1 and pieces_done):
            cells += [(files, lo // per_unit) for files in pooled.values()]
        for files, c in cells:
            exists, msg = files.inspect(c)
            if msg is not None:
                found.append(Problem("chunk_size" if exists else "missing_chunk", msg, name, u, clips,
                                     str(files.path(c))))
        if not found and not quick:
            if pieces is None:
                found = _check_unit_values(g, name, u, fr, lo, hi, offsets, ids, checksums)
            else:
                found = _check_piece_values(g, name, u, fr, lo, pieces, offsets, ids, checksums, acc, pieces_done)
            values_checked += 1
        problems += found
    summary = {"units": int(len(done)), "units_done": int(done.sum()),
               "frames": int((offsets[:, 1] - offsets[:, 0]).sum()), "complete": bool(g.attrs.get("complete", False)),
               "checksums": ("skipped (--quick)" if quick else "checked" if checksums is not None
                             else "no checksums (store built by an older version)"),
               "units_value_checked": values_checked}
    return problems, summary


def verify(path, backbones=None, quick: bool = False) -> Report:
    """Check a store (see the module docstring). ``backbones``: names or registry aliases (None: every
    backbone in the store). Raises FileNotFoundError when ``path`` is not a store."""
    loc = Location(path)
    path = loc.url if loc.is_url else loc.path
    if not loc.is_file("zarr.json"):
        raise FileNotFoundError(f"{path} is not a feature store (no zarr.json)")
    report = Report(str(path))
    damaged = damaged_metadata(loc)
    for d in damaged:
        scope, name = d.scope
        report.problems.append(Problem("metadata_file", d.text(), name, file=d.path))
        report.root_unreadable |= d.rel == "zarr.json"
    if any(d.scope[0] != "backbone" for d in damaged):
        return report  # the root, the clip table or the backbones group: nothing else can be read
    skip = {d.scope[1] for d in damaged}
    root = loc.open_group(mode="r")
    settings = root.attrs.get("clip_settings")
    if isinstance(settings, dict) and settings.get("ingested_from"):
        report.ingested_from = str(settings["ingested_from"])
    table = clip_table_problems(root)
    report.problems += [Problem("metadata", m) for m in table]
    ids = None
    if layout.CLIPS in root and _array(root[layout.CLIPS], "id") is not None:
        ids = np.asarray(root[layout.CLIPS]["id"][:].tolist(), dtype=object)
        report.clips = len(ids)
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        dup = uniq[counts > 1]
        if len(dup):
            report.problems.append(Problem("metadata", f"{len(dup)} clip id(s) occur more than once, e.g. {dup[0]!r}"))
    if skip:  # a backbone whose own metadata is damaged cannot be opened as a group: list the folders
        have = sorted(set(_listing(loc, layout.BACKBONES)[0]) | skip)
    else:
        have = sorted(k for k, _ in root[layout.BACKBONES].groups()) if layout.BACKBONES in root else []
    names = have if backbones is None else [b if b in skip else stored_backbone_name(root, b) for b in backbones]
    for name in names:
        if name in skip:
            continue  # reported above
        if name not in have:
            report.problems.append(Problem("metadata", f"backbone {name!r} is not in the store (backbones: "
                                                       f"{', '.join(have) or 'none'})", name))
            continue
        if ids is None:
            report.problems.append(Problem("metadata", "not checked: the clip table has no ids", name))
            continue
        problems, summary = verify_backbone(root, path, name, ids, quick=quick, table_ok=not table)
        report.problems += problems
        report.backbones[name] = summary
        if summary.get("checksums", "").startswith("no checksums"):
            report.notes.append(f"{name}: no checksums (store built by an older version): checksum check skipped")
    return report


class NotRepairable(ValueError):
    """``--repair`` on a store whose data no build can re-extract (an ingested store). ``report``: the
    report of the check that found the damage (left unrepaired)."""

    def __init__(self, message: str, report: Report | None = None):
        super().__init__(message)
        self.report = report


def repair(path, report: Report, lock: StoreLock | None = None) -> dict[str, list[int]]:
    """Unmark what ``report`` found damaged, under the store's lock, so the build redoes it: damaged
    units get ``unit_done`` = 0, their backbone loses ``complete``; a backbone with a damaged plan
    loses ``planned`` and ``complete``; a damaged clip table loses ``complete``. Returns backbone ->
    units unmarked (``"plan"`` -> backbones to re-plan, ``"clips"`` -> ["table"] when the clip table is).

    An ingested store is not changed (:class:`NotRepairable`): no build can re-extract its features, so
    unmarking would only hide data; it is mended by ingesting it again (:func:`advice`)."""
    if report.ingested_from:
        raise NotRepairable(f"{report.store} was ingested (featurestore.ingest), so no build can re-extract what "
                            f"--repair would unmark; left unchanged. {advice(report)}", report)
    files = [p for p in report.problems if p.check == "metadata_file"]
    if any(p.backbone is None for p in files):
        raise NotRepairable(f"{report.store}: {files[0].message}; --repair cannot mark anything in a store whose "
                            f"metadata cannot be read, left unchanged. {advice(report)}", report)
    loc = Location(path)
    lock = lock or StoreLock(loc.url if loc.is_url else loc.path)
    done: dict[str, list] = {}
    with lock.hold("repairing the store (featurestore.verify --repair)"):
        root = loc.open_group(mode="a")
        unreadable = {p.backbone for p in files}
        for name, units in report.damaged_units().items():
            if name in unreadable:
                continue
            g = root[layout.backbone_path(name)]
            marks = g["unit_done"]
            for u in units:
                marks[u] = 0
            g.attrs["complete"] = False
            done[name] = units
        plans = sorted({p.backbone for p in report.problems
                        if p.unit is None and p.backbone and p.check in ("metadata", "offsets")
                        and p.backbone not in unreadable and layout.backbone_path(p.backbone) in root})
        for name in plans:
            root[layout.backbone_path(name)].attrs.update({"planned": False, "complete": False})
        if plans:
            done["plan"] = plans
        if any(p.backbone is None and p.check == "metadata" for p in report.problems) and layout.CLIPS in root:
            root[layout.CLIPS].attrs["complete"] = False
            done["clips"] = ["table"]
    report.repaired = done
    return done


@dataclass(frozen=True)
class VerifySpec:
    """What to check (:func:`verify`) and whether to :func:`repair` what is found damaged."""

    store: str | None = option(None, "the store folder (e.g. songs.zarr)")
    backbone: tuple[str, ...] | None = option(None, "check only this backbone (name or registry alias); repeat for "
                                                    "several. Default: all")
    quick: bool = option(False, "metadata, offsets and chunk files only: do not read values (no checksums, NaN or "
                                "pooled checks)")
    repair: bool = option(False, "unmark damaged units (and damaged plans or clip table) so that running the build "
                                 "again re-extracts exactly those")
    json: bool = option(False, "print the report as JSON", identity=False)
    lock: str = option("auto", "how --repair locks the store: auto, flock (OS lock) or lease (lease file); the same "
                               "as the builds of this store use", choices=KINDS, identity=False)
    lock_timeout: float | None = option(None, "seconds --repair waits for a build's lock on the store before giving "
                                              "up (default: wait as long as it takes)", metavar="SECONDS",
                                        identity=False)

    def __post_init__(self):
        if not self.store:
            raise SpecError("store", "give the store to check")
        if self.backbone is not None:
            names = (self.backbone,) if isinstance(self.backbone, str) else tuple(self.backbone)
            object.__setattr__(self, "backbone", names or None)
        if self.lock not in KINDS:
            raise SpecError("lock", f"must be one of {', '.join(KINDS)}, got {self.lock!r}")
        if self.lock_timeout is not None and not self.lock_timeout >= 0:
            raise SpecError("lock_timeout", f"must be >= 0 seconds, got {self.lock_timeout}")


def check_store(spec: VerifySpec) -> Report:
    """:func:`verify` the store, then, with ``spec.repair`` and problems found, :func:`repair` it under
    its lock (``report.repaired`` says what was unmarked). Raises FileNotFoundError (not a store),
    NotRepairable (an ingested store or unreadable metadata; ``.report`` holds the check), and the
    lock's RuntimeError/OSError (a build holds the store past ``lock_timeout``)."""
    report = verify(spec.store, list(spec.backbone) if spec.backbone else None, quick=spec.quick)
    if spec.repair and not report.ok:
        repair(spec.store, report, StoreLock(spec.store, spec.lock, spec.lock_timeout))
    return report


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def advice(report: Report) -> str | None:
    """What to run to mend or finish the store, for its kind: a built store is finished by running the
    build again, and mended by ``--repair`` then the build; an ingested one by ingesting it again with
    ``--overwrite`` (which replaces it only once the new store verifies). None when the store is sound."""
    if report.ok:
        return None
    if report.ingested_from:
        names = sorted({p.backbone for p in report.problems if p.backbone} | set(report.backbones))
        bb = f" --backbone {names[0]}" if len(names) == 1 else ""
        return (f"to mend: ingest it again from its input: python -m featurestore.ingest {report.ingested_from} "
                f"--store {report.store}{bb} --overwrite (the old store is replaced only once the new one "
                "verifies; add the geometry options, e.g. --frame-rate, if the first ingest needed them)")
    files = [p for p in report.problems if p.check == "metadata_file"]
    if report.root_unreadable:
        return ("to mend: the root metadata is unreadable, so the store's settings are lost: run the build again "
                "with --overwrite (it builds the store again from its input)")
    if files:
        return ("to mend: run the build again (same command as before): it plans again what the unreadable "
                "file(s) described (the clip table, or the backbones it builds) and re-extracts only that")
    if all(p.check == "incomplete" for p in report.problems):
        return "to finish: run the build again (same command as before)"
    return (f"to mend: python -m featurestore.verify {report.store} --repair, then run the build again "
            "(it re-extracts only what --repair unmarked)")


def format_report(report: Report) -> str:
    lines = []
    if report.ok:
        parts = [f"{n}: {s['units_done']}/{s['units']} units, {s['frames']} frames, checksums "
                 f"{s['checksums']}" for n, s in report.backbones.items()]
        lines.append(f"ok: {report.store}: {report.clips} clips" + ("; " + "; ".join(parts) if parts else
                                                                     "; no backbone"))
    else:
        lines.append(f"{report.store}: {len(report.problems)} problem(s)")
        lines += [f"  {p.text()}" for p in report.problems]
    lines += [f"note: {n}" for n in report.notes]
    if report.repaired:
        for name, what in report.repaired.items():
            if name == "plan":
                lines.append(f"repaired: backbone(s) {', '.join(what)} marked for re-planning (every unit re-extracted)")
            elif name == "clips":
                lines.append("repaired: the clip table is marked for re-planning")
            else:
                lines.append(f"repaired: {name}: units {', '.join(map(str, what))} unmarked")
        lines.append("run the build again (same command as before) to re-extract them")
    elif not report.ok:
        lines.append(advice(report))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m featurestore.verify",
        description="Check a feature store: metadata, offsets, every chunk file a finished unit owns, per-unit "
                    "checksums, NaN/Inf, pooled rows against their frames. Prints each problem with its backbone, "
                    "unit, clip and file; exit status 0 when sound, 1 when something is wrong, 2 when the store "
                    "cannot be read.",
        formatter_class=HelpFormatter)
    add_field(p, VerifySpec, "store", positional=True)
    add_field(p, VerifySpec, "backbone", action="append", type=str)
    add_options(p, VerifySpec, skip=("store", "backbone"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = from_namespace(VerifySpec, args)
        report = check_store(spec)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except NotRepairable as e:
        print(format_report(e.report).split("\nto mend:")[0], file=sys.stdout)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2, default=str) if spec.json else format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

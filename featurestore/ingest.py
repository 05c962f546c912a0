"""``python -m featurestore.ingest INPUT --store S``: a feature store built from features computed
elsewhere (per-file ``.npy`` or HDF5), so they can be probed with ``heads`` like any backbone.

INPUT is one of:

- an HDF5 file in the layout of ``featurestore.export --format hdf5``: a group per clip with
  ``frames`` [T, L, D] (and optionally ``pooled_mean`` / ``pooled_std`` [L, D]) and attributes
  ``id``, ``split``, ``start_s``, ``end_s``, ``labels`` (JSON object text); clip order from the root
  dataset ``clip_groups`` when present (else group names, sorted);
- a CSV or JSON manifest in the format of ``featurestore.build``'s inputs (``path``, optional ``id``,
  ``split``, ``start``/``end`` in seconds, any label columns; :mod:`featurestore.manifest`) whose
  ``path`` is, per clip, a folder of ``layer_<k>.npy`` [T, D] (k = 0..L-1, optionally with
  ``pooled_mean.npy`` / ``pooled_std.npy`` [L, D]: the ``npy`` export), one ``.npy`` file [T, L, D]
  or [T, D] (one layer), or an HDF5 group or dataset written ``file.h5#name`` (a group holds a
  ``frames`` dataset, a dataset is the frames [T, L, D] or [T, D]; ``file.h5`` alone: its root).

The frame geometry (frame rate in Hz; sample rate in Hz, hop, receptive field and padding in
samples) comes from the command line, else from the export's metadata (HDF5 root attributes, or
``frontend.json`` beside the manifest). A clip without ``start``/``end`` spans 0 to the duration of
its T frames. The clip table, the backbone's layout (units, chunk-aligned offsets, pieces of long
clips: :mod:`featurestore.layout`), pooled rows (float32 frames, float64 sums, cast once, as
:mod:`featurestore.extract` computes them; rows stored with the input are used as they are unless
``--recompute-pooled``), unit checksums and markers are written as a build writes them
(:mod:`featurestore.writer`), so ``python -m featurestore.verify`` passes on the result. It streams
unit by unit: memory follows the unit size, not the corpus.

Validated before anything is written: missing files, a layer or width that differs from the first
clip's, a frame count that does not fit the clip's start/end, a bad manifest row, a backbone name
that is not one path component. Found while writing: NaN or Inf frames, and values beyond the store
dtype's range (65504 for float16: they would become Inf), each named by file, clip, frame and layer.
The store is written beside its destination and checked with ``featurestore.verify`` (pooled rows
that came with the input must be the statistics of its frames, else the error suggests
``--recompute-pooled``); only a store that verifies is moved into place, so an error leaves the
destination as it was (``--overwrite`` replaces an old store only then). Each error names the file.
``--store`` must be a local folder: a URL is refused (ingest locally, then copy).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import featurestore
from featurestore import backbone_plan, layout
from featurestore.backbone_plan import BackbonePlan
from featurestore.cli import HelpFormatter, add_field
from featurestore.clips import clip_samples
from featurestore.geometry import FrameGeometry
from featurestore.manifest import read_inputs
from featurestore.options import SpecError, add_options, from_namespace, option
from featurestore.writer import (UnitResult, create_backbone, open_root, pooled_stats,
                                 write_clip_table, write_unit)

H5_SUFFIXES = (".h5", ".hdf5")
_LAYER = re.compile(r"^layer_(\d+)\.npy$")


class IngestError(ValueError):
    """Input that cannot become a store; the message names the file (and row)."""


# --------------------------------------------------------------------------------------------
# one clip's arrays
# --------------------------------------------------------------------------------------------

class _H5Files:
    """Open HDF5 files, a few at a time (oldest closed first), so that many files do not pile up."""

    def __init__(self, keep: int = 8):
        self.keep, self.files = keep, {}

    def get(self, path: Path):
        import h5py

        key = str(path)
        if key not in self.files:
            if len(self.files) >= self.keep:
                self.files.pop(next(iter(self.files))).close()
            try:
                self.files[key] = h5py.File(key, "r")
            except OSError as e:
                raise IngestError(f"{path}: not a readable HDF5 file ({e})") from None
        return self.files[key]

    def close(self):
        for f in self.files.values():
            f.close()
        self.files.clear()


@dataclass
class ClipArrays:
    """Where one clip's features are: ``kind`` ``dir`` (folder of layer_<k>.npy), ``npy`` (one file
    [T, L, D] or [T, D]) or ``h5`` (``group`` of an HDF5 file). ``shape`` (T, L, D) is read from the
    headers by :meth:`probe`."""

    path: Path
    kind: str
    group: str = "/"
    where: str = ""  # manifest row, for messages
    shape: tuple = ()
    layer_files: list = field(default_factory=list)

    def __str__(self):
        return f"{self.path}#{self.group}" if self.kind == "h5" else str(self.path)

    def _fail(self, what: str):
        raise IngestError(f"{self}{f' ({self.where})' if self.where else ''}: {what}")

    def probe(self, h5: _H5Files) -> tuple[int, int, int]:
        """(T, L, D) from the headers, checked (layers 0..L-1 all there, of one shape)."""
        if self.kind == "dir":
            if not self.path.is_dir():
                self._fail("no such folder")
            found = {int(m.group(1)): p for p in self.path.iterdir() if (m := _LAYER.match(p.name))}
            if not found:
                self._fail("no layer_<k>.npy file in this folder")
            missing = sorted(set(range(max(found) + 1)) - set(found))
            if missing:
                self._fail(f"layer file(s) {', '.join(f'layer_{k}.npy' for k in missing)} missing "
                           f"(found layers {sorted(found)})")
            self.layer_files = [found[k] for k in range(len(found))]
            shapes = [self._npy(p).shape for p in self.layer_files]
            for p, s in zip(self.layer_files, shapes):
                if len(s) != 2 or s != shapes[0]:
                    raise IngestError(f"{p}: shape {s}, expected [T, D] = {shapes[0]} like {self.layer_files[0].name}")
            self.shape = (shapes[0][0], len(shapes), shapes[0][1])
        elif self.kind == "npy":
            if not self.path.is_file():
                self._fail("no such file")
            s = self._npy(self.path).shape
            if len(s) not in (2, 3):
                self._fail(f"shape {s}: expected [T, L, D] or [T, D]")
            self.shape = (s[0], 1, s[1]) if len(s) == 2 else tuple(s)
        else:
            s = self._h5frames(h5).shape
            self.shape = (s[0], 1, s[1]) if len(s) == 2 else tuple(s)
        self.shape = tuple(int(v) for v in self.shape)
        return self.shape

    def _npy(self, p: Path) -> np.ndarray:
        """The array of a .npy file, memory-mapped; never unpickled (object arrays are refused)."""
        try:
            with open(p, "rb") as f:
                magic = f.read(6)
        except FileNotFoundError:
            raise IngestError(f"{p}: no such file") from None
        except OSError as e:
            raise IngestError(f"{p}: cannot be read ({e})") from None
        if magic != b"\x93NUMPY":
            raise IngestError(f"{p}: not a .npy array file (it does not begin with the .npy format's magic bytes)")
        try:
            return np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "pickled" in str(e) or "allow_pickle" in str(e) or "Python objects" in str(e):
                raise IngestError(f"{p}: a .npy file of Python objects (dtype object, stored as a pickle), which is "
                                  "never loaded; save the features as numbers") from None
            raise IngestError(f"{p}: not a readable .npy array ({e})") from None
        except OSError as e:
            raise IngestError(f"{p}: not a readable .npy array ({e})") from None

    def _h5group(self, h5: _H5Files):
        if not self.path.is_file():
            self._fail("no such file")
        f = h5.get(self.path)
        if self.group not in f:
            self._fail(f"no group {self.group!r} in this HDF5 file")
        return f[self.group]

    def _h5frames(self, h5: _H5Files):
        """The frames dataset: ``group`` itself when it is a dataset, else its ``frames``; [T, L, D] or [T, D]."""
        import h5py

        obj = self._h5group(h5)
        ds = obj if isinstance(obj, h5py.Dataset) else obj.get("frames")
        if not isinstance(ds, h5py.Dataset) or len(ds.shape) not in (2, 3):
            self._fail("not a dataset [T, L, D] or [T, D], nor a group holding one named 'frames'")
        return ds

    def read(self, a: int, b: int, h5: _H5Files, limit: float = float(np.finfo(np.float32).max),
             clip_id: str | None = None, dtype: str = "float32") -> np.ndarray:
        """Frames [a, b) -> float32 [b - a, L, D]. NaN/Inf, non-numeric data, or a value beyond
        ``limit`` (the largest finite value of the store ``dtype``: 65504 for float16) raise
        IngestError naming the file, the clip, the frame and the layer."""
        if self.kind == "dir":
            x = np.stack([self._npy(p)[a:b] for p in self.layer_files], axis=1)
        else:
            x = self._npy(self.path)[a:b] if self.kind == "npy" else self._h5frames(h5)[a:b]
            x = x[:, None, :] if x.ndim == 2 else x
        x = np.asarray(x)
        where = "".join(f" ({w})" for w in (self.where, f"clip {clip_id!r}" if clip_id is not None else "") if w)
        if x.dtype.kind not in "biuf":
            raise IngestError(f"{self}{where}: frames of dtype {x.dtype}, expected numbers")

        def fail(mask, what, hint=""):
            t, k, d = (int(v) for v in np.argwhere(mask)[0])
            file = self.layer_files[k] if self.kind == "dir" else self
            raise IngestError(f"{file}{where}: {what} in frame {t + a}, layer {k} (dim {d}: "
                              f"{float(x[t, k, d]):.6g}){hint}")

        if x.dtype.kind == "f":
            bad = ~np.isfinite(x)
            if bad.any():
                fail(bad, "NaN or Inf")
        over = np.abs(x) > limit
        if over.any():
            fail(over, f"a value outside the range of the store dtype {dtype} (largest {limit:.6g})",
                 "; use --dtype float32, or scale the features")
        return x.astype(np.float32, copy=False)

    def pooled(self, h5: _H5Files) -> tuple[np.ndarray, np.ndarray] | None:
        """The (mean, std) rows [L, D] stored with the clip, or None when it has none."""
        if self.kind == "dir":
            files = [self.path / f"pooled_{s}.npy" for s in ("mean", "std")]
            if not all(p.is_file() for p in files):
                return None
            rows = [(p, np.asarray(self._npy(p))) for p in files]
        elif self.kind == "h5":
            g = self._h5group(h5)
            if not (hasattr(g, "keys") and "pooled_mean" in g and "pooled_std" in g):
                return None
            rows = [(f"{self}/pooled_{s}", g[f"pooled_{s}"][()]) for s in ("mean", "std")]
        else:
            return None
        T, L, D = self.shape
        for p, r in rows:
            if r.shape != (L, D):
                raise IngestError(f"{p}: shape {r.shape}, expected [L, D] = {(L, D)} like the clip's frames")
            if T and not np.isfinite(r).all():
                raise IngestError(f"{p}: NaN or Inf in the pooled row of a clip with {T} frames")
        return rows[0][1], rows[1][1]


# --------------------------------------------------------------------------------------------
# inputs -> clips
# --------------------------------------------------------------------------------------------

@dataclass
class Clip:
    """One clip to ingest: its arrays and clip-table fields (start/end None: from T)."""

    arrays: ClipArrays
    id: str
    split: str = ""
    labels: dict = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None


def _arrays_of(path: Path, where: str) -> ClipArrays:
    file, sep, group = str(path).partition("#")
    if sep and Path(file).suffix.lower() in H5_SUFFIXES:
        return ClipArrays(Path(file), "h5", group or "/", where)
    if path.suffix.lower() in H5_SUFFIXES:
        return ClipArrays(path, "h5", "/", where)
    if path.suffix.lower() == ".npy":
        return ClipArrays(path, "npy", where=where)
    return ClipArrays(path, "dir", where=where)


def _h5_text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_hdf5_clips(path: Path, h5: _H5Files) -> tuple[list[Clip], dict]:
    """Clips of an HDF5 export (module docstring) and its root attributes (the geometry)."""
    f = h5.get(path)
    if "clip_groups" in f:
        names = [_h5_text(v) for v in f["clip_groups"][()]]
    else:
        import h5py

        names = sorted(k for k in f.keys() if isinstance(f[k], h5py.Group))
    clips = []
    for name in names:
        if name not in f:
            raise IngestError(f"{path}: clip_groups names {name!r}, which is not a group of the file")
        a = f[name].attrs
        where = f"group {name!r}"
        try:
            labels = json.loads(_h5_text(a["labels"])) if "labels" in a else {}
        except json.JSONDecodeError as e:
            raise IngestError(f"{path} {where}: attribute 'labels' is not JSON ({e.msg})") from None
        clips.append(Clip(ClipArrays(path, "h5", name, where), _h5_text(a.get("id", name)), _h5_text(a.get("split", "")),
                          {str(k): str(v) for k, v in dict(labels).items()},
                          float(a["start_s"]) if "start_s" in a else None, float(a["end_s"]) if "end_s" in a else None))
    meta = {k: (v.item() if hasattr(v, "item") else _h5_text(v)) for k, v in f.attrs.items()}
    if isinstance(meta.get("frontend"), str):
        try:
            meta["frontend"] = json.loads(meta["frontend"])
        except json.JSONDecodeError:
            meta["frontend"] = {}
    return clips, meta


def read_manifest_clips(path: Path) -> tuple[list[Clip], dict]:
    """Clips of a CSV/JSON manifest (:func:`featurestore.manifest.read_inputs`); a row that does not
    parse or repeats an id is an error here (a store of features has no partial build to report).
    Metadata from ``frontend.json`` beside the manifest, when there."""
    rows, skips = read_inputs(path)
    if skips:
        raise IngestError("; ".join(s.message for s in skips[:5]) + (f" (and {len(skips) - 5} more)" if len(skips) > 5 else ""))
    if not rows:
        raise IngestError(f"{path}: no rows")
    clips = [Clip(_arrays_of(r.path, r.where), r.id, r.split, dict(r.labels), r.start_s, r.end_s) for r in rows]
    meta_file = path.parent / "frontend.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return clips, meta


# --------------------------------------------------------------------------------------------
# geometry and plan
# --------------------------------------------------------------------------------------------

def resolve_geometry(meta: dict, frame_rate=None, sample_rate=None, hop=None, receptive=None,
                     pad=None) -> FrameGeometry:
    """Command-line values over the input's metadata (``frontend`` of an export). Only a frame rate:
    it must be a whole number of Hz, and frames are single samples at that rate."""
    fe = meta.get("frontend") or {}
    sr = sample_rate if sample_rate is not None else fe.get("sample_rate")
    st = hop if hop is not None else fe.get("stride")
    if sr is None or st is None:
        rate = frame_rate if frame_rate is not None else fe.get("frame_rate")
        if rate is None:
            raise IngestError("the frame rate is unknown: pass --frame-rate HZ (or --sample-rate and --hop)")
        if float(rate) <= 0 or float(rate) != round(float(rate)):
            raise IngestError(f"--frame-rate {rate}: give a whole number of Hz, or --sample-rate and --hop "
                              "for other rates")
        if sr is not None or st is not None:
            raise IngestError("pass both --sample-rate and --hop, or neither")
        sr, st = int(round(float(rate))), 1
    sr, st = int(sr), int(st)
    rec = int(receptive if receptive is not None else fe.get("receptive", st) if hop is None else st)
    pd = int(pad if pad is not None else fe.get("pad", 0) if hop is None else 0)
    if sr <= 0 or st <= 0 or rec <= 0 or pd < 0:
        raise IngestError(f"bad geometry: sample rate {sr}, hop {st}, receptive {rec}, pad {pd}")
    g = FrameGeometry(sr, st, rec, pd)
    if frame_rate is not None and not math.isclose(float(frame_rate), g.frame_rate, rel_tol=1e-9):
        raise IngestError(f"--frame-rate {frame_rate} does not equal sample rate / hop = {sr} / {st} = {g.frame_rate}")
    return g


def _versions() -> dict:
    out = {"featurestore": featurestore.__version__}
    for pkg in ("zarr", "numpy", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def clip_table(clips: list[Clip], geo: FrameGeometry) -> list[dict]:
    """Clip-table rows (:func:`featurestore.writer.write_clip_table`): ``audio``/``source``/``file_id``
    name the feature file; start/end from the input, else 0 / the duration of T frames. Raises
    IngestError naming the file when T does not fit start/end under ``geo``."""
    rows = []
    for c in clips:
        T = c.arrays.shape[0]
        start = 0.0 if c.start_s is None else float(c.start_s)
        end = c.end_s
        if end is None:
            a = int(round(start * geo.sample_rate))
            end = (a + geo.samples_for(T)) / geo.sample_rate
        a, b = clip_samples(np.array([start]), np.array([end]), geo.sample_rate)
        nf = geo.n_frames(int(b[0] - a[0]))
        if nf != T:
            raise IngestError(f"{c.arrays}: {T} frames, but {start:g} s to {end:g} s give {nf} frames at "
                              f"{geo.sample_rate} Hz, hop {geo.stride}, receptive {geo.receptive}, pad {geo.pad} "
                              "(fix the manifest's start/end or the geometry options)")
        src = str(c.arrays)
        rows.append({"id": c.id, "file_id": src, "source": src, "audio": src, "start_s": start, "end_s": float(end),
                     "split": c.split, "labels": c.labels})
    return rows


def plan_backbone(rows: list[dict], geo: FrameGeometry, target_unit_frames: int, chunk_frames: int) -> BackbonePlan:
    """The layout a build makes for these clips (:func:`featurestore.backbone_plan.plan_backbone`,
    the rule :func:`featurestore.verify.expected_plan` checks)."""
    plan, _, _ = backbone_plan.plan_backbone([r["start_s"] for r in rows], [r["end_s"] for r in rows], geo,
                                             target_unit_frames, chunk_frames)
    return plan


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

def _unit_result(u: int, row: np.ndarray, plan: BackbonePlan, clips: list[Clip], h5: _H5Files, dtype,
                 split: dict[int, range], use_pooled: bool) -> tuple[UnitResult, dict]:
    """One unit's frames and pooled rows (or, for a piece of a split clip, its sums), computed like
    :func:`featurestore.extract.run_unit`; plus the stored pooled rows to put over a split clip's."""

    lo, hi, start, end = (int(v) for v in row)
    L, D = clips[lo].arrays.shape[1:] if hi > lo else (0, 0)
    block = np.zeros((end - start, L, D), dtype=dtype)
    sums = np.zeros((hi - lo, L, D), dtype=np.float64)
    sqs = np.zeros((hi - lo, L, D), dtype=np.float64)
    for c, T, f0, f1 in layout.unit_clip_frames(plan.offsets, row):
        pos = int(plan.offsets[c, 0]) + f0 - start
        limit = float(np.finfo(dtype).max)
        for a in range(f0, f1, 8192):
            x = clips[c].arrays.read(a, min(f1, a + 8192), h5, limit, clips[c].id, np.dtype(dtype).name)
            block[pos + a - f0:pos + a - f0 + len(x)] = x
            sums[c - lo] += x.sum(0, dtype=np.float64)
            sqs[c - lo] += np.square(x, dtype=np.float64).sum(0)
    stored = {c: p for c in range(lo, hi) if use_pooled and (p := clips[c].arrays.pooled(h5)) is not None}
    limit = float(np.finfo(dtype).max)
    for c, rows in stored.items():
        for stat, r in zip(("pooled_mean", "pooled_std"), rows):
            if np.nanmax(np.abs(r), initial=0.0) > limit:
                raise IngestError(f"{clips[c].arrays} (clip {clips[c].id!r}): {stat} holds a value beyond the range "
                                  f"of the store dtype {np.dtype(dtype).name} ({limit:.6g})")
    if lo in split:
        T = int(plan.offsets[lo, 1] - plan.offsets[lo, 0])
        empty = np.zeros((0, L, D), dtype=dtype)
        return UnitResult(u, start, block, empty, empty, lo, sums=np.stack([sums[0], sqs[0]]), clip_units=split[lo],
                          clip_frames=T), stored
    mean, std = pooled_stats(sums, sqs, plan.offsets[lo:hi, 1] - plan.offsets[lo:hi, 0], dtype)
    for c, (m, s) in stored.items():
        mean[c - lo], std[c - lo] = m.astype(dtype), s.astype(dtype)
    return UnitResult(u, start, block, mean, std, lo), {}


def ingest(input_path, store_path, backbone: str | None = None, *, frame_rate=None, sample_rate=None, hop=None,
           receptive=None, pad=None, dtype: str = "float16", chunk_frames: int = 256, target_unit_frames: int = 8192,
           recompute_pooled: bool = False, overwrite: bool = False, progress: bool = False) -> dict:
    """Build a store at ``store_path`` from the features at ``input_path`` (module docstring).
    Returns a summary: clips, frames, units, backbone, geometry.

    The new store is written beside ``store_path`` (a hidden ``.<name>.ingest-<id>.tmp`` folder),
    checked with :func:`featurestore.verify.verify` (checksums, NaN/Inf, pooled rows against the
    frames), and only then moved into place, replacing the old store under ``overwrite``. Bad input
    raises IngestError naming the file (and clip, frame, layer) and leaves ``store_path`` as it was:
    an old store byte for byte, or nothing. ``store_path`` must be a local folder (a URL is refused)."""
    from featurestore.location import is_url

    if is_url(store_path):
        raise IngestError(f"--store {store_path}: ingest writes a local store folder; ingest to a local path, then "
                          "copy the folder to the URL (a URL store is read and verified like a local one)")
    src, store = Path(input_path).expanduser(), Path(store_path).expanduser()
    if dtype not in ("float16", "float32"):
        raise IngestError(f"--dtype must be float16 or float32, got {dtype!r}")
    if chunk_frames < 1 or target_unit_frames < 1:
        raise IngestError("--chunk-frames and --unit-frames must be >= 1")
    if not src.exists():
        raise IngestError(f"{src}: no such file or folder")
    if store.exists() or store.is_symlink():
        if not overwrite:
            raise IngestError(f"{store} exists; pass --overwrite to replace it")
        if store.is_symlink():
            raise IngestError(f"{store} is a symbolic link; not replacing it (give the store's own path)")
        if not (store / "zarr.json").is_file():
            raise IngestError(f"{store} exists and is not a feature store; not replacing it")
    if backbone is not None:
        _check_name(backbone)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IngestError(f"--store {store}: its folder {store.parent} cannot be created ({e.strerror})") from e
    tmp = store.with_name(f".{store.name}.ingest-{uuid.uuid4().hex[:12]}.tmp")
    h5 = _H5Files()
    try:
        summary = _write_store(src, tmp, backbone, frame_rate, sample_rate, hop, receptive, pad, dtype, chunk_frames,
                               target_unit_frames, recompute_pooled, progress, h5)
        h5.close()
        _check_written(tmp, summary.pop("_files"), recompute_pooled)
        _move_into_place(tmp, store, overwrite=overwrite)
    finally:
        h5.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "store": str(store), "leftovers": [str(p) for p in leftovers(store)]}


def leftovers(store: Path) -> list[Path]:
    """Hidden folders beside ``store`` that an ingest killed before it finished left behind: its
    half-written store (``.<name>.ingest-<id>.tmp``) or, killed while swapping, the old store moved
    aside (``.<name>.old-<id>``). Nothing deletes them on its own: another ingest into the same store
    may be writing one."""
    store = Path(store)
    if not store.parent.is_dir():
        return []
    return sorted(p for pattern in (f".{store.name}.ingest-*.tmp", f".{store.name}.old-*")
                  for p in store.parent.glob(pattern) if p.is_dir())


def _check_name(name: str) -> None:
    from featurestore.names import check_backbone_name

    try:
        check_backbone_name(name, "--backbone")
    except ValueError as e:
        raise IngestError(str(e)) from None


def _check_written(tmp: Path, files: dict, recompute_pooled: bool) -> None:
    """Verify the store just written (:func:`featurestore.verify.verify`); IngestError naming the
    input file of each problem (pooled rows given with the input that are not the statistics of its
    frames: ``--recompute-pooled`` computes them instead). ``files``: clip id -> input file."""
    from featurestore.verify import verify

    report = verify(tmp)
    if report.ok:
        return
    lines = []
    for p in report.problems[:5]:
        src = next((files[c] for c in p.clips if c in files), None)
        hint = ("; these pooled rows came with the input: pass --recompute-pooled to compute them from the frames"
                if p.check == "pooled" and not recompute_pooled else "")
        lines.append(f"{src + ': ' if src else ''}{p.text()}{hint}")
    more = f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
    raise IngestError("the ingested store does not verify, so it was not put in place: " + "; ".join(lines) + more)


def _move_into_place(tmp: Path, store: Path, *, overwrite: bool) -> None:
    """Put the finished store ``tmp`` at ``store`` under the store's lock; an old store there is moved
    aside first and deleted only once the new one is in place (put back if the move fails). Without
    ``overwrite``, a store that appeared at ``store`` while this ingest ran (another process's) is
    kept: IngestError, and ``tmp`` is not moved."""
    from featurestore.locking import StoreLock

    with StoreLock(store).hold("replacing the store with an ingested one"):
        old = None
        if (store.exists() or store.is_symlink()) and not overwrite:
            raise IngestError(f"{store} was created by another process while this ingest ran; it is kept "
                              "(pass --overwrite to replace it)")
        if store.exists():
            old = store.with_name(f".{store.name}.old-{uuid.uuid4().hex[:12]}")
            store.rename(old)
        try:
            tmp.rename(store)
        except OSError:
            if old is not None:
                old.rename(store)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_store(src: Path, store: Path, backbone, frame_rate, sample_rate, hop, receptive, pad, dtype: str,
                 chunk_frames: int, target_unit_frames: int, recompute_pooled: bool, progress: bool,
                 h5: _H5Files) -> dict:
    """Read and check the input, write the whole store at ``store`` (a new folder). Returns the summary
    (with ``_files``: clip id -> input file, for messages)."""
    if src.is_file() and src.suffix.lower() in H5_SUFFIXES:
        clips, meta = read_hdf5_clips(src, h5)
    elif src.is_file() and src.suffix.lower() in (".csv", ".json"):
        clips, meta = read_manifest_clips(src)
    else:
        raise IngestError(f"{src}: expected an HDF5 file ({', '.join(H5_SUFFIXES)}) or a .csv/.json manifest")
    if not clips:
        raise IngestError(f"{src}: no clips")
    first = None
    for c in clips:
        T, L, D = c.arrays.probe(h5)
        if first is None:
            first = c
        elif (L, D) != first.arrays.shape[1:]:
            raise IngestError(f"{c.arrays}: {L} layers x {D} dims, but {first.arrays} has "
                              f"{first.arrays.shape[1]} x {first.arrays.shape[2]}")
    L, D = first.arrays.shape[1:]
    geo = resolve_geometry(meta, frame_rate, sample_rate, hop, receptive, pad)
    name = backbone or meta.get("backbone")
    if not name:
        raise IngestError("name the backbone: --backbone NAME")
    _check_name(str(name))
    rows = clip_table(clips, geo)
    plan = plan_backbone(rows, geo, target_unit_frames, chunk_frames)
    units = plan.units
    root = open_root(store, "w")
    root.attrs.update({"format": layout.FORMAT, "versions": _versions(), "skipped": [],
                       "clip_settings": {"ingested_from": str(src.resolve())}})
    write_clip_table(root, rows)
    fe = {**(meta.get("frontend") or {}), "name": name, **geo.to_attrs(),
          "num_layers": int(L), "dim": int(D), "ingested_from": str(src.resolve())}
    identity = {"dtype": dtype, "chunk_frames": chunk_frames, "shard_frames": None,
                "target_unit_frames": target_unit_frames, "ingested": True}
    if plan.piece:
        identity["piece_frames"] = plan.piece
    n_frames = int((plan.offsets[:, 1] - plan.offsets[:, 0]).sum())
    attrs = {"frontend": fe, "versions": _versions(), "skipped": [], "dtype": dtype, "n_clips": len(rows),
             "n_frames": n_frames, "identity": identity, "plan_id": uuid.uuid4().hex}
    g = create_backbone(root, name, plan, int(L), int(D), dtype=dtype, chunk_frames=chunk_frames,
                        shard_frames=None, attrs=attrs)
    split = layout.split_units(units)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), unit="unit", desc=f"ingest {name}")
    for u, row in enumerate(units):
        result, stored = _unit_result(u, row, plan, clips, h5, np.dtype(dtype), split, not recompute_pooled)
        write_unit(g, result)
        if result.clip_units is not None and u == result.clip_units.stop - 1 and stored:
            m, s = stored[result.clip_lo]  # the clip's own pooled rows over those computed from pieces
            g["pooled_mean"][result.clip_lo:result.clip_lo + 1] = m[None].astype(dtype)
            g["pooled_std"][result.clip_lo:result.clip_lo + 1] = s[None].astype(dtype)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    g.attrs["complete"] = True
    return {"backbone": name, "clips": len(rows), "frames": n_frames, "units": len(units), "layers": int(L),
            "dim": int(D), "frame_rate": geo.frame_rate, "_files": {c.id: str(c.arrays) for c in clips}}


@dataclass(frozen=True)
class IngestSpec:
    """What :func:`ingest_store` builds: a store at ``store`` from the features at ``input``, with the
    frame geometry given here (over the input's metadata) and the store's layout settings."""

    input: str | None = option(None, "an .h5/.hdf5 file, or a .csv/.json manifest")
    store: str | None = option(None, "the store to create (a .zarr folder)")
    backbone: str | None = option(None, "name of the backbone in the store (default: the export's backbone name)")
    frame_rate: float | None = option(None, "frames per second (Hz); alone it must be whole, frames then count single "
                                            "samples at that rate. Default: from the export's metadata")
    sample_rate: int | None = option(None, "audio sample rate (Hz) the features were computed at")
    hop: int | None = option(None, "samples between frames (with --sample-rate)")
    receptive: int | None = option(None, "samples one frame covers (default: the hop, or the metadata's)")
    pad: int | None = option(None, "samples of padding before the first frame (default: 0, or the metadata's)")
    dtype: str = option("float16", "store dtype of frames and pooled rows", choices=("float16", "float32"))
    chunk_frames: int = option(256, "frames per Zarr chunk")
    unit_frames: int = option(8192, "frames per unit of writing (bounds memory; longer clips are split into pieces)")
    recompute_pooled: bool = option(False, "compute pooled mean/std from the frames even where the input stores "
                                           "them")
    overwrite: bool = option(False, "replace an existing store at --store")
    no_progress: bool = option(False, "no progress bar", identity=False)

    def __post_init__(self):
        for name in ("input", "store"):
            if not getattr(self, name):
                raise SpecError(name, "required")
        if self.dtype not in ("float16", "float32"):
            raise SpecError("dtype", f"must be float16 or float32, got {self.dtype!r}")
        for name in ("chunk_frames", "unit_frames", "sample_rate", "hop", "receptive"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SpecError(name, f"must be >= 1, got {value}")
        if self.frame_rate is not None and not self.frame_rate > 0:
            raise SpecError("frame_rate", f"must be > 0 Hz, got {self.frame_rate}")
        if self.pad is not None and self.pad < 0:
            raise SpecError("pad", f"must be >= 0 samples, got {self.pad}")


def ingest_store(spec: IngestSpec) -> dict:
    """:func:`ingest` with the settings of ``spec``; returns its summary (clips, frames, layers, dim,
    frame_rate, backbone, store, leftovers)."""
    return ingest(spec.input, spec.store, spec.backbone, frame_rate=spec.frame_rate, sample_rate=spec.sample_rate,
                  hop=spec.hop, receptive=spec.receptive, pad=spec.pad, dtype=spec.dtype,
                  chunk_frames=spec.chunk_frames, target_unit_frames=spec.unit_frames,
                  recompute_pooled=spec.recompute_pooled, overwrite=spec.overwrite, progress=not spec.no_progress)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m featurestore.ingest", formatter_class=HelpFormatter,
        description="Build a feature store from features computed elsewhere: an HDF5 file (group per clip with "
                    "frames [T, L, D], as featurestore.export writes) or a CSV/JSON manifest (path, id, split, "
                    "start, end, labels: the format of featurestore.build's inputs) whose path names per clip a "
                    "folder of layer_<k>.npy [T, D], a .npy [T, L, D] or [T, D], or file.h5#group. The result "
                    "reads, verifies and trains heads like a built store.")
    add_field(p, IngestSpec, "input", positional=True)
    add_field(p, IngestSpec, "store", required=True)
    add_options(p, IngestSpec, skip=("input", "store"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = from_namespace(IngestSpec, args)
        out = ingest_store(spec)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (IngestError, OSError) as e:  # OSError: a file system refusal, named by the error
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ingested {out['clips']} clips ({out['frames']} frames, {out['layers']} x {out['dim']}, "
          f"{out['frame_rate']:g} Hz) as backbone {out['backbone']!r} into {out['store']}")
    for p in out["leftovers"]:
        size = sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
        print(f"warning: {p} ({size / 2**20:.1f} MiB) was left by an ingest into this store that was killed "
              "(a half-written store, or an old one moved aside); delete it unless an ingest into this store "
              "is running now", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

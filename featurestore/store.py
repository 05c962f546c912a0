"""Reading a store: the clip table, frames, pooled views, frame times.

>>> store = open_store("demo.zarr")
>>> store.backbones                      # ['crepe-tiny', ...]
>>> x = store.frames(store.clip_ids[0], backbone="crepe-tiny", layers=[0, 5])   # [T, 2, D]
>>> p = store.pooled(backbone="crepe-tiny")                                      # [N, L, D]
"""
from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from featurestore import layout
from featurestore.geometry import FrameGeometry
from featurestore.location import Location
from featurestore.quantize import dequantize_into
from featurestore.registry import PlainKeyError


def _plain(a: np.ndarray) -> np.ndarray:
    """Zarr's variable-length strings come back as numpy StringDType; hand out plain '<U' arrays,
    which every library (scikit-learn included) accepts."""
    return np.array(a.tolist(), dtype=np.str_) if a.dtype.kind == "T" else a


class BackboneNotInStore(KeyError):
    def __str__(self):
        return str(self.args[0])


class LayerNotStored(KeyError, IndexError):
    """A model layer the backbone does not hold (built with ``--layers``, or past its last layer); a
    KeyError and, as numpy indexing raised before layer subsets existed, an IndexError."""

    def __str__(self):
        return str(self.args[0])


class NoFramesStored(ValueError):
    """The backbone was built with ``--frames none``: it holds pooled rows, no frames."""


class StoreCorrupted(ValueError):
    """A file the store must have is missing or damaged: a chunk of frames or pooled rows that a done
    unit owns is absent or has the wrong size. The message names the backbone, the clip(s) and the
    file; ``python -m featurestore.verify STORE --repair`` and a rerun of the build mend it."""


def stored_backbone_name(root: zarr.Group, name: str) -> str:
    """The name a backbone is stored under in ``root``: ``name`` itself when stored, else its
    registry name (an alias such as ``crepe`` -> ``crepe-tiny``), else ``name`` unchanged."""
    if layout.BACKBONES in root and layout.backbone_path(name) in root:
        return name
    from featurestore.registry import resolve

    try:
        return resolve(name).name
    except KeyError:
        return name


class FeatureStore:
    """A store opened for reading. ``clips`` is the clip table (dict of 1-D numpy arrays of length N:
    id, file_id, source, audio, start_s, end_s, split, and ``labels`` -> dict of label arrays)."""

    def __init__(self, path: str | Path):
        self.location = Location(path)  # a local folder or an fsspec URL (featurestore.location)
        self.path = self.location.path if not self.location.is_url else self.location.url
        if not self.location.is_file("zarr.json"):
            raise FileNotFoundError(f"{self.path} is not a feature store (no zarr.json)")
        self.root = self.location.open_group(mode="r")
        if layout.CLIPS not in self.root or not self.root[layout.CLIPS].attrs.get("complete", False):
            raise ValueError(f"{self.path}: the clip table is not complete; run featurestore.build again")

    # ---- clip table -----------------------------------------------------------------------
    @cached_property
    def clips(self) -> dict:
        g = self.root[layout.CLIPS]
        table = {c: _plain(g[c][:]) for c in g.attrs["columns"]}
        table["labels"] = {name: _plain(g[f"labels/{name}"][:]) for name in g.attrs.get("labels", [])}
        return table

    @property
    def clip_ids(self) -> np.ndarray:
        return self.clips["id"]

    def __len__(self) -> int:
        return len(self.clip_ids)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {str(c): i for i, c in enumerate(self.clip_ids)}

    def clip_index(self, clip_id) -> int:
        """Row of a clip id (or an int row passed through)."""
        if isinstance(clip_id, (int, np.integer)):
            return int(clip_id)
        try:
            return self._index[str(clip_id)]
        except KeyError:
            raise PlainKeyError(f"no clip {clip_id!r} in {self.path}") from None

    def split_indices(self, split: str) -> np.ndarray:
        """Rows of the clips in a split (``train``/``valid``/``test``...)."""
        return np.flatnonzero(self.clips["split"] == split)

    def labels(self, name: str) -> np.ndarray:
        """A label column as strings [N]."""
        try:
            return self.clips["labels"][name]
        except KeyError:
            have = ", ".join(self.clips["labels"]) or "none"
            raise PlainKeyError(f"label {name!r} is not in {self.path} (labels: {have})") from None

    @property
    def skipped(self) -> list[dict]:
        """What the clip planning left out, and why."""
        return list(self.root.attrs.get("skipped", []))

    @property
    def clip_settings(self) -> dict:
        return dict(self.root.attrs.get("clip_settings", {}))

    # ---- backbones -----------------------------------------------------------------------
    @property
    def backbones(self) -> list[str]:
        """Backbones whose extraction is complete."""
        if layout.BACKBONES not in self.root:
            return []
        return sorted(k for k, g in self.root[layout.BACKBONES].groups() if g.attrs.get("complete", False))

    def backbone_name(self, name: str) -> str:
        """The name a backbone is stored under: ``name`` itself when stored, else its registry name
        (an alias such as ``crepe`` -> ``crepe-tiny``), else ``name`` unchanged."""
        return stored_backbone_name(self.root, name)

    def group(self, backbone: str) -> zarr.Group:
        """The backbone's Zarr group (opened once per store object; registry aliases accepted)."""
        cache = self.__dict__.setdefault("_groups", {})
        if backbone not in cache:
            cache[backbone] = self._open_group(self.backbone_name(backbone))
        return cache[backbone]

    def _open_group(self, backbone: str) -> zarr.Group:
        path = layout.backbone_path(backbone)
        if path not in self.root:
            have = ", ".join(self.backbones) or "none"
            raise BackboneNotInStore(f"backbone {backbone!r} is not in {self.path} (complete backbones: {have}); "
                                     f"build it with: python -m featurestore.build --store {self.path} "
                                     f"--backbone {backbone}")
        g = self.root[path]
        if not g.attrs.get("complete", False):
            raise BackboneNotInStore(f"backbone {backbone!r} in {self.path} is not complete; run the build again "
                                     "to finish it")
        return g

    def info(self, backbone: str) -> dict:
        """Provenance of one backbone: frontend sizes, weights hash, settings, versions."""
        return dict(self.group(backbone).attrs)

    def shape(self, backbone: str) -> tuple[int, int]:
        """(stored layers L, width D); the model layer of each stored one is :meth:`layer_ids`."""
        attrs = self.group(backbone).attrs
        return len(layout.layer_ids(attrs)), int(attrs["frontend"]["dim"])

    def layer_ids(self, backbone: str) -> list[int]:
        """The model's hidden-state index of each stored layer, in stored order: every layer
        (0..L-1) unless the backbone was built with ``--layers``. Every ``layers=`` argument of
        this reader takes these indices."""
        cache = self.__dict__.setdefault("_layer_ids", {})
        if backbone not in cache:
            cache[backbone] = layout.layer_ids(self.group(backbone).attrs)
        return cache[backbone]

    def frames_dtype(self, backbone: str) -> np.dtype:
        """The dtype :meth:`frames` returns: the store dtype, float32 for an int8 backbone."""
        self.require_frames(backbone)
        return np.dtype(self._reader(backbone).dtype)

    def has_frames(self, backbone: str) -> bool:
        """False for a pooled-only backbone (built with ``--frames none``)."""
        return layout.frames_mode(self.group(backbone).attrs) != layout.FRAMES_NONE

    def require_frames(self, backbone: str, what: str = "reading frames") -> None:
        """Raise :class:`NoFramesStored` naming the store, the backbone and the option when the
        backbone holds pooled rows only."""
        if not self.has_frames(backbone):
            name = self.backbone_name(backbone)
            raise NoFramesStored(f"{what} needs the frames of backbone {name!r}, but {self.path} was built with "
                                 f"--frames none for it (pooled mean/std rows only, for clip heads); build it again "
                                 f"with --frames all (e.g. --name {name}-frames to keep this one)")

    def frame_rate(self, backbone: str) -> float:
        return float(self.group(backbone).attrs["frontend"]["frame_rate"])

    def offsets(self, backbone: str) -> np.ndarray:
        """int64 [N, 2]: frame range [start, end) of each clip in the frames array."""
        return self._offsets(backbone)

    def _offsets(self, backbone):
        cache = self.__dict__.setdefault("_offsets_cache", {})
        if backbone not in cache:
            cache[backbone] = self.group(backbone)["offsets"][:]
        return cache[backbone]

    def n_frames(self, backbone: str) -> np.ndarray:
        """Frames per clip, int64 [N]."""
        o = self._offsets(backbone)
        return o[:, 1] - o[:, 0]

    def _layer_sel(self, backbone: str, layers):
        """Positions in the stored layer axis of model layers ``layers`` (None: all -> slice; an int
        or a list of model hidden-state indices, see :meth:`layer_ids`; a negative one counts from the
        last stored layer, as in numpy); KeyError naming the
        layers the backbone holds for one it does not."""
        if layers is None:
            return slice(None)
        want = [int(layers)] if isinstance(layers, (int, np.integer)) else [int(v) for v in layers]
        ids = self.layer_ids(backbone)
        want = [ids[m] if -len(ids) <= m < 0 else m for m in want]  # negative: counted from the last stored layer
        pos = {m: k for k, m in enumerate(ids)}
        bad = [m for m in want if m not in pos]
        if bad:
            raise LayerNotStored(f"layer(s) {bad} are not stored for backbone {self.backbone_name(backbone)!r} in "
                                 f"{self.path}: it holds model layers {ids}")
        return [pos[m] for m in want]

    def _span(self, clip_id, backbone: str, start: int, stop: int | None) -> tuple[int, int, int, int]:
        """(clip row, its first frame's row in the frames array, start, stop) for frames [start, stop) of
        a clip (stop None: its end); IndexError naming the clip unless 0 <= start <= stop <= T."""
        i = self.clip_index(clip_id)
        a, b = (int(v) for v in self._offsets(backbone)[i])
        n = b - a
        stop = n if stop is None else int(stop)
        start = int(start)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"frames [{start}, {stop}) are outside clip {self.clip_ids[i]!r}, which has {n} frames "
                             f"for {backbone!r} (0 <= start <= stop <= {n})")
        return i, a, start, stop

    def frames(self, clip_id, backbone: str, layers=None, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Hidden states of one clip: [T, L', D] in the store dtype (float32 for an int8 store: the
        codes dequantised), frames [start, stop) of the clip, 0 <= start <= stop <= T (anything else
        raises IndexError naming the clip). ``layers``: model layer indices (:meth:`layer_ids`).
        A pooled-only backbone raises :class:`NoFramesStored`."""
        self.require_frames(backbone)
        i, a, start, stop = self._span(clip_id, backbone, start, stop)
        sel = self._layer_sel(backbone, layers)
        reader = self._reader(backbone)
        if isinstance(sel, slice):
            return reader.read(a + start, a + stop)
        out = np.empty((stop - start, len(sel)) + tuple(reader.shape[2:]), dtype=reader.dtype)
        return reader.read_into(a + start, a + stop, out, sel)

    def frames_into(self, clip_id, backbone: str, out: np.ndarray, *, layers=None, start: int = 0,
                    stop: int | None = None) -> int:
        """Write frames [start, stop) of one clip into ``out[:stop - start]`` and return how many.

        ``out``: a writable array [>= stop - start, L', D] of any float dtype (the store's float16 is
        converted while it is copied, so a float32 batch buffer is filled in one pass); rows past
        ``stop - start`` are left as they are. Same clip, layer and bounds rules as :meth:`frames`.
        This is the copy-free path of the datasets: the chunk files are read straight into ``out``
        (an int8 store's codes are dequantised into it, in float32 arithmetic).
        """
        self.require_frames(backbone)
        i, a, start, stop = self._span(clip_id, backbone, start, stop)
        sel = self._layer_sel(backbone, layers)
        reader = self._reader(backbone)
        want = (reader.shape[1] if isinstance(sel, slice) else len(sel), reader.shape[2])
        if getattr(out, "ndim", None) != 3 or tuple(out.shape[1:]) != want or out.shape[0] < stop - start:
            raise ValueError(f"out has shape {tuple(getattr(out, 'shape', ()))}; frames [{start}, {stop}) of clip "
                             f"{self.clip_ids[i]!r} need [>= {stop - start}, {want[0]}, {want[1]}]")
        reader.read_into(a + start, a + stop, out, None if isinstance(sel, slice) else sel)
        return stop - start

    def _reader(self, backbone: str):
        cache = self.__dict__.setdefault("_readers", {})
        if backbone not in cache:
            arr = self.group(backbone)["frames"]
            name = self.backbone_name(backbone)
            path = self.location.join(layout.backbone_path(name), "frames")
            files = ChunkFiles(arr, path, self._offsets(backbone), self.clip_ids, f"backbone {name!r} frames",
                               rows_name="frames", location=self.location)
            quant = None
            if "frames_quant" in self.group(backbone):
                qarr = self.group(backbone)["frames_quant"]
                qfiles = ChunkFiles(qarr, self.location.join(layout.backbone_path(name), "frames_quant"),
                                    frame_spans_to_chunks(self._offsets(backbone), int(arr.chunks[0])),
                                    self.clip_ids, f"backbone {name!r} frames_quant", rows_name="chunks",
                                    location=self.location)
                quant = QuantParams(qarr, qfiles)
            local = not self.location.is_url  # chunk files of a URL store cannot be memory-mapped
            cache[backbone] = RawChunkReader(arr, path, files, quant) if local and RawChunkReader.supports(arr) else \
                CheckedArray(arr, files, quant)
        return cache[backbone]

    def frame_times(self, clip_id, backbone: str) -> np.ndarray:
        """Centre time of each frame of a clip, in seconds of the clip's audio file -> float64 [T]."""
        i = self.clip_index(clip_id)
        geometry = FrameGeometry.from_attrs(self.group(backbone).attrs["frontend"])
        return geometry.frame_times(int(self.n_frames(backbone)[i]), start_s=float(self.clips["start_s"][i]))

    def pooled(self, backbone: str, layers=None, stat: str = "mean", rows=None) -> np.ndarray:
        """Clip-level pooled features [N, L', D] (``stat`` = ``mean`` or ``std`` over time)."""
        if stat not in ("mean", "std"):
            raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
        x = self.group(backbone)[f"pooled_{stat}"]
        self._check_pooled(backbone, stat, x)
        x = x[:] if rows is None else x.get_orthogonal_selection((np.asarray(rows),))
        sel = self._layer_sel(backbone, layers)
        return x if isinstance(sel, slice) else x[:, sel]

    def _check_pooled(self, backbone: str, stat: str, arr: zarr.Array) -> None:
        """Once per array: every chunk file of pooled rows of clips with frames is there, at its size
        (Zarr would hand out NaN, the fill value, for a missing one)."""
        seen = self.__dict__.setdefault("_pooled_checked", set())
        if (backbone, stat) in seen:
            return
        name = self.backbone_name(backbone)
        files = ChunkFiles(arr, self.location.join(layout.backbone_path(name), f"pooled_{stat}"),
                           frame_spans_to_rows(self._offsets(backbone)), self.clip_ids,
                           f"backbone {name!r} pooled_{stat}", location=self.location)
        for c in range(files.n):
            files.check(c)
        seen.add((backbone, stat))

    def frames_array(self, backbone: str) -> zarr.Array:
        """The raw [F, L, D] Zarr array (for bulk readers; an int8 store's uint8 codes, see
        :mod:`featurestore.quantize`); use :meth:`offsets` to address clips."""
        self.require_frames(backbone)
        return self.group(backbone)["frames"]

    def __repr__(self):
        return f"FeatureStore({str(self.path)!r}, clips={len(self)}, backbones={self.backbones})"


def plain_bytes(arr: zarr.Array) -> bool:
    """True when each chunk file of ``arr`` is the raw little-endian C-order bytes of a full chunk
    (no sharding, no compression), so its size is known: prod(chunk shape) x itemsize, edge chunks
    included (Zarr 3 stores them at full size)."""
    try:
        from zarr.codecs import BytesCodec

        codecs = arr.metadata.codecs
        return (arr.shards is None and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
                and str(getattr(codecs[0].endian, "value", codecs[0].endian)) in ("little", "None")
                and np.dtype(arr.dtype).itemsize > 0)
    except Exception:  # noqa: BLE001 - any other layout: size unknown
        return False


def frame_spans_to_chunks(offsets: np.ndarray, chunk: int) -> np.ndarray:
    """Chunks [first, end) of ``frames`` each clip's frames [a, b) lie in (empty for a clip with no
    frame) -> int64 [N, 2]: the rows of ``frames_quant`` a clip needs."""
    o = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    first = o[:, 0] // chunk
    return np.stack([first, np.where(o[:, 1] > o[:, 0], -(-o[:, 1] // chunk), first)], axis=1)


def frame_spans_to_rows(offsets: np.ndarray) -> np.ndarray:
    """Spans of the pooled rows of each clip: [i, i + 1) for a clip with frames, [i, i) for one
    without (its row is NaN, the fill value) -> int64 [N, 2]."""
    n = len(offsets)
    rows = np.arange(n, dtype=np.int64)
    return np.stack([rows, rows + (offsets[:, 1] > offsets[:, 0])], axis=1)


class ChunkFiles:
    """The chunk files of one array along its first axis, which of them must exist, and their size.

    A file holds ``grain`` rows of the first axis (frames: a chunk, or a shard when sharded; pooled
    arrays: one unit's clips). ``spans`` int64 [N, 2]: the rows [start, end) each clip's data takes
    (a backbone's offsets for frames, :func:`frame_spans_to_rows` for pooled rows); a file that
    holds any of them must exist, one that holds none (alignment frames between units) may be
    absent and reads as the fill value. Without ``spans`` no file is required. ``ids``: clip ids
    for messages; ``label``: what the array is (e.g. "backbone 'mert' frames"). ``location``: the
    store's :class:`featurestore.location.Location` when it is a URL (``array_dir`` is then the
    array's path inside its fsspec file system, and files are checked through fsspec); None: local.
    """

    def __init__(self, arr: zarr.Array, array_dir: Path | str, spans: np.ndarray | None = None, ids=None,
                 label: str = "", rows_name: str = "rows", location: Location | None = None):
        self.loc = location if location is not None and location.is_url else None
        self.dir = str(array_dir).rstrip("/") if self.loc else Path(array_dir)
        self.meta, self.label = arr.metadata, label or str(array_dir)
        self.rows_name = rows_name  # what the first axis counts, for messages ("frames", "rows")
        self.rows = int(arr.shape[0])
        self.grain = int((arr.shards or arr.chunks)[0])
        self.n = -(-self.rows // self.grain) if self.rows else 0
        self.nbytes = (int(np.prod((self.grain,) + tuple(arr.shape[1:]))) * np.dtype(arr.dtype).itemsize
                       if plain_bytes(arr) else None)
        self.spans = None if spans is None else np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        self.ids = ids
        self.owned = np.zeros(self.n, dtype=bool)
        if self.spans is not None and self.n:
            s = self.spans[self.spans[:, 1] > self.spans[:, 0]]
            diff = np.zeros(self.n + 1, dtype=np.int64)
            np.add.at(diff, np.clip(s[:, 0] // self.grain, 0, self.n), 1)
            np.add.at(diff, np.clip((s[:, 1] - 1) // self.grain + 1, 0, self.n), -1)
            self.owned = np.cumsum(diff)[:-1] > 0

    def path(self, c: int) -> Path | str:
        """File of chunk (or shard) ``c`` (a URL store: its path inside the fsspec file system)."""
        key = self.meta.encode_chunk_key((int(c),) + (0,) * (len(self.meta.shape) - 1))
        return f"{self.dir}/{key}" if self.loc else self.dir / key

    def owners(self, c: int) -> list[int]:
        """Clips (rows of the clip table) with data in chunk ``c``."""
        if self.spans is None:
            return []
        lo, hi = c * self.grain, (c + 1) * self.grain
        return np.flatnonzero((self.spans[:, 0] < hi) & (self.spans[:, 1] > lo)
                              & (self.spans[:, 1] > self.spans[:, 0])).tolist()

    def describe_owners(self, c: int) -> str:
        rows = self.owners(c)
        if not rows:
            return "no clip"
        name = (lambda i: repr(str(self.ids[i]))) if self.ids is not None else (lambda i: f"#{i}")
        if len(rows) == 1:
            return f"clip {name(rows[0])}"
        return f"clips {name(rows[0])} to {name(rows[-1])} ({len(rows)} clips)"

    def inspect(self, c: int) -> tuple[bool, str | None]:
        """(whether chunk file ``c`` exists, what is wrong with it or None): wrong when it is missing
        although it holds clip data, or has the wrong size. One ``stat``."""
        f = self.path(c)
        lo, hi = c * self.grain, min((c + 1) * self.grain, self.rows)
        try:
            size = self.loc.size(f) if self.loc else f.stat().st_size
        except FileNotFoundError:
            f = self.loc.display(f) if self.loc else f
            if not (0 <= c < self.n and self.owned[c]):
                return False, None
            return False, (f"{self.label}: chunk file {f} is missing; it holds {self.rows_name} {lo}-{hi} "
                           f"({self.describe_owners(c)})")
        if self.nbytes is not None and size != self.nbytes:
            f = self.loc.display(f) if self.loc else f
            return True, (f"{self.label}: chunk file {f} has {size} bytes, expected {self.nbytes}; it holds "
                          f"{self.rows_name} {lo}-{hi} ({self.describe_owners(c)})")
        return True, None

    def check(self, c: int) -> bool:
        """True if chunk file ``c`` is there and sound, False if it is absent and holds no clip data;
        raises :class:`StoreCorrupted` otherwise."""
        exists, msg = self.inspect(c)
        if msg is not None:
            raise StoreCorrupted(msg + "; run python -m featurestore.verify on the store (--repair, then the "
                                       "build again, re-extracts it)")
        return exists


class QuantParams:
    """The per-chunk offset and step of an int8 store's frames (``frames_quant`` [C, 2, L, D] float32,
    :mod:`featurestore.quantize`), read one chunk row at a time (memory-mapped when the array is plain
    local bytes) and kept for the most recently used chunks. A missing row file of a chunk that holds
    clip frames raises :class:`StoreCorrupted` (through ``files``)."""

    MAX_CACHED = 128  # rows of 2 x L x D float32: at most 26 MB for 25 x 1024

    def __init__(self, arr: zarr.Array, files: ChunkFiles):
        self.arr, self.files = arr, files
        self.raw = files.loc is None and plain_bytes(arr) and arr.metadata.chunk_key_encoding.separator == "/"
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, c: int) -> np.ndarray:
        """(offset, step) of frame chunk ``c`` -> float32 [2, L, D]."""
        if c in self._rows:
            self._rows.move_to_end(c)
            return self._rows[c]
        if not self.files.check(c):
            row = np.zeros(tuple(self.arr.shape[1:]), dtype=np.float32)  # a chunk of alignment frames only
        elif self.raw:
            row = np.fromfile(self.files.path(c), dtype="<f4").reshape(tuple(self.arr.shape[1:]))
        else:
            row = np.asarray(self.arr[c], dtype=np.float32)
        self._rows[c] = row
        if len(self._rows) > self.MAX_CACHED:
            self._rows.popitem(last=False)
        return row

    def dequantize_into(self, c: int, codes: np.ndarray, dst: np.ndarray, layers=None) -> None:
        """``dst[...]`` = frames of chunk ``c`` from their ``codes`` [t, L', D] (``layers``: the stored
        layer positions of L', a list or slice; None: all)."""
        p = self.get(c)
        offset, step = (p[0], p[1]) if layers is None else (p[0][layers], p[1][layers])
        dequantize_into(codes, offset, step, dst)


class CheckedArray:
    """A frames array read through Zarr (sharded or encoded layouts) that first checks, once per
    chunk file, that the files a read touches are there (:class:`ChunkFiles`): Zarr itself would
    return the fill value for a missing file. ``quant``: an int8 store's :class:`QuantParams`
    (reads then return float32)."""

    def __init__(self, arr: zarr.Array, files: ChunkFiles, quant: QuantParams | None = None):
        self.arr, self.files, self.shape, self.quant = arr, files, arr.shape, quant
        self._seen: set[int] = set()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.quant is not None else np.dtype(self.arr.dtype)

    def read(self, a: int, b: int) -> np.ndarray:
        for c in range(a // self.files.grain, -(-b // self.files.grain)):
            if c not in self._seen:
                self.files.check(c)
                self._seen.add(c)
        x = self.arr[a:b]
        if self.quant is None:
            return x
        out = np.empty(x.shape, dtype=np.float32)
        chunk = int(self.arr.chunks[0])
        pos = a
        while pos < b:
            c = pos // chunk
            end = min(b, (c + 1) * chunk)
            self.quant.dequantize_into(c, x[pos - a:end - a], out[pos - a:end - a])
            pos = end
        return out

    def read_into(self, a: int, b: int, out: np.ndarray, layers=None) -> np.ndarray:
        """Frames [a, b) (``layers``: a list of layer indices, None: all) into ``out[:b - a]``; returns
        ``out``. Zarr decodes into its own buffer, so this is one copy more than
        :meth:`RawChunkReader.read_into`."""
        x = self.read(a, b)
        out[:b - a] = x if layers is None else x[:, list(layers)]
        return out

    def __getitem__(self, s: slice) -> np.ndarray:
        a, b, _ = s.indices(self.shape[0])  # clipped to the array, as numpy and Zarr slices are
        return self.read(a, max(a, b))


class RawChunkReader:
    """Reads frame ranges straight from the chunk files of an uncompressed, unsharded frames array.

    Each such chunk file is the raw little-endian C-order bytes of a (chunk, L, D) block, so it can
    be memory-mapped; this skips Zarr's per-call overhead (about 0.4 ms a read, which dominated
    random window reads). Each file's size is checked once, when it is mapped; a missing file that
    holds clip frames (``files`` knows which) raises :class:`StoreCorrupted`; one that holds none
    (alignment frames) reads as the fill value (0).

    :meth:`read_into` copies the mapped pages straight into a caller's buffer (a batch being
    assembled, converting the dtype on the way): one copy, as from a raw ``np.memmap``.
    """

    def __init__(self, arr: zarr.Array, path: Path, files: ChunkFiles | None = None, quant: QuantParams | None = None):
        self.path, self.shape, self.code_dtype = Path(path), arr.shape, np.dtype(arr.dtype)
        self.quant = quant  # an int8 store: codes are dequantised on the way into the caller's buffer
        self.dtype = np.dtype(np.float32) if quant is not None else self.code_dtype
        self.chunk = int(arr.chunks[0])
        self.files = files or ChunkFiles(arr, self.path)
        self._maps: OrderedDict[int, np.ndarray | None] = OrderedDict()

    @staticmethod
    def supports(arr: zarr.Array) -> bool:
        try:
            from zarr.codecs import BytesCodec

            codecs = arr.metadata.codecs
            return (arr.shards is None and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
                    and (str(getattr(codecs[0].endian, "value", codecs[0].endian)) == "little"
                         or np.dtype(arr.dtype).itemsize == 1)  # (one-byte codes: no byte order)
                    and arr.metadata.chunk_key_encoding.separator == "/"
                    and tuple(arr.chunks[1:]) == tuple(arr.shape[1:]) and np.dtype(arr.dtype).itemsize > 0)
        except Exception:  # noqa: BLE001 - any other layout: use Zarr itself
            return False

    #: memory maps kept open at once (least recently used are closed), to stay far below file limits
    MAX_OPEN = 256

    def _chunk(self, c: int):
        if c in self._maps:
            self._maps.move_to_end(c)
            return self._maps[c]
        f = self.files.path(c)
        m = None
        if self.files.check(c):
            # a plain ndarray view of the map (it keeps the map open): slicing an np.memmap costs more
            m = np.memmap(f, dtype=self.code_dtype, mode="r").view(np.ndarray).reshape((-1,) + tuple(self.shape[1:]))
        self._maps[c] = m
        if len(self._maps) > self.MAX_OPEN:
            self._maps.popitem(last=False)
        return m

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames [a, b) -> [b - a, L, D] (a copy)."""
        out = np.empty((max(0, b - a),) + tuple(self.shape[1:]), dtype=self.dtype)
        return self.read_into(a, b, out)

    def read_into(self, a: int, b: int, out: np.ndarray, layers=None) -> np.ndarray:
        """Frames [a, b) into ``out[:b - a]`` ([>= b - a, L', D], any dtype numpy casts the store's
        to), straight from the mapped chunk files, one copy per chunk touched; ``layers``: a list of
        layer indices (None: all). Frames of absent chunk files that hold no clip are written as 0.
        Returns ``out``."""
        if layers is not None:
            layers = [int(v) for v in layers]
            if layers and 0 <= layers[0] and layers[-1] < self.shape[1] \
                    and layers == list(range(layers[0], layers[-1] + 1)):
                layers = slice(layers[0], layers[-1] + 1)  # a run of layers is one strided copy
        pos, size = a, self.chunk
        while pos < b:
            c = pos // size
            lo = pos - c * size
            hi = min(b - c * size, size)
            dst = out[pos - a:pos - a + hi - lo]
            m = self._chunk(c)
            if m is None:
                dst[...] = 0
            elif self.quant is not None:
                if layers is None or isinstance(layers, slice):
                    self.quant.dequantize_into(c, m[lo:hi] if layers is None else m[lo:hi, layers], dst, layers)
                else:
                    for k, layer in enumerate(layers):
                        self.quant.dequantize_into(c, m[lo:hi, layer], dst[:, k], [layer])
            elif layers is None:
                dst[...] = m[lo:hi]
            elif isinstance(layers, slice):
                dst[...] = m[lo:hi, layers]
            else:
                src = m[lo:hi]
                for k, layer in enumerate(layers):
                    dst[:, k] = src[:, layer]
            pos += hi - lo
        return out

    def __getitem__(self, s: slice) -> np.ndarray:
        a, b, _ = s.indices(self.shape[0])  # clipped to the array, as numpy and Zarr slices are
        return self.read(a, max(a, b))


def open_store(path: str | Path) -> FeatureStore:
    """Open a store built by ``python -m featurestore.build`` for reading: a local folder or an
    fsspec URL (``s3://bucket/songs.zarr``, ``memory://songs.zarr``; :mod:`featurestore.location`)."""
    return FeatureStore(path)

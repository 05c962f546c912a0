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


def _plain(a: np.ndarray) -> np.ndarray:
    """Zarr's variable-length strings come back as numpy StringDType; hand out plain '<U' arrays,
    which every library (scikit-learn included) accepts."""
    return np.array(a.tolist(), dtype=np.str_) if a.dtype.kind == "T" else a


class BackboneNotInStore(KeyError):
    def __str__(self):
        return str(self.args[0])


class FeatureStore:
    """A store opened for reading. ``clips`` is the clip table (dict of 1-D numpy arrays of length N:
    id, file_id, source, audio, start_s, end_s, split, and ``labels`` -> dict of label arrays)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a feature store (no zarr.json)")
        self.root = zarr.open_group(str(self.path), mode="r", zarr_format=3)
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
            raise KeyError(f"no clip {clip_id!r} in {self.path}") from None

    def split_indices(self, split: str) -> np.ndarray:
        """Rows of the clips in a split (``train``/``valid``/``test``...)."""
        return np.flatnonzero(self.clips["split"] == split)

    def labels(self, name: str) -> np.ndarray:
        """A label column as strings [N]."""
        try:
            return self.clips["labels"][name]
        except KeyError:
            have = ", ".join(self.clips["labels"]) or "none"
            raise KeyError(f"label {name!r} is not in {self.path} (labels: {have})") from None

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
        if layout.BACKBONES in self.root and layout.backbone_path(name) in self.root:
            return name
        from featurestore.registry import resolve

        try:
            return resolve(name).name
        except KeyError:
            return name

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
        """(layers L, width D)."""
        f = self.group(backbone).attrs["frontend"]
        return int(f["num_layers"]), int(f["dim"])

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

    @staticmethod
    def _layer_sel(layers):
        if layers is None:
            return slice(None)
        if isinstance(layers, (int, np.integer)):
            return [int(layers)]
        return list(layers)

    def frames(self, clip_id, backbone: str, layers=None, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Hidden states of one clip: [T, L', D] in the store dtype (frames [start, stop) of the clip,
        0 <= start <= stop <= T; anything else raises IndexError naming the clip)."""
        i = self.clip_index(clip_id)
        a, b = (int(v) for v in self._offsets(backbone)[i])
        n = b - a
        stop = n if stop is None else int(stop)
        start = int(start)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"frames [{start}, {stop}) are outside clip {self.clip_ids[i]!r}, which has {n} frames "
                             f"for {backbone!r} (0 <= start <= stop <= {n})")
        x = self._reader(backbone)[a + start:a + stop]
        sel = self._layer_sel(layers)
        return x if isinstance(sel, slice) else x[:, sel]

    def _reader(self, backbone: str):
        cache = self.__dict__.setdefault("_readers", {})
        if backbone not in cache:
            arr = self.group(backbone)["frames"]
            path = self.path / layout.backbone_path(self.backbone_name(backbone)) / "frames"
            cache[backbone] = RawChunkReader(arr, path) if RawChunkReader.supports(arr) else arr
        return cache[backbone]

    def frame_times(self, clip_id, backbone: str) -> np.ndarray:
        """Centre time of each frame of a clip, in seconds of the clip's audio file -> float64 [T]."""
        i = self.clip_index(clip_id)
        fe = self.group(backbone).attrs["frontend"]
        n = int(self.n_frames(backbone)[i])
        j = np.arange(n, dtype=np.float64)
        start = float(self.clips["start_s"][i])
        return start + (j * fe["stride"] - fe["pad"] + fe["receptive"] / 2) / fe["sample_rate"]

    def pooled(self, backbone: str, layers=None, stat: str = "mean", rows=None) -> np.ndarray:
        """Clip-level pooled features [N, L', D] (``stat`` = ``mean`` or ``std`` over time)."""
        if stat not in ("mean", "std"):
            raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
        x = self.group(backbone)[f"pooled_{stat}"]
        x = x[:] if rows is None else x.get_orthogonal_selection((np.asarray(rows),))
        sel = self._layer_sel(layers)
        return x if isinstance(sel, slice) else x[:, sel]

    def frames_array(self, backbone: str) -> zarr.Array:
        """The raw [F, L, D] Zarr array (for bulk readers); use :meth:`offsets` to address clips."""
        return self.group(backbone)["frames"]

    def __repr__(self):
        return f"FeatureStore({str(self.path)!r}, clips={len(self)}, backbones={self.backbones})"


class RawChunkReader:
    """Reads frame ranges straight from the chunk files of an uncompressed, unsharded frames array.

    Each such chunk file is the raw little-endian C-order bytes of a (chunk, L, D) block, so it can
    be memory-mapped; this skips Zarr's per-call overhead (about 0.4 ms a read, which dominated
    random window reads). A chunk that was never written reads as the fill value (0).
    """

    def __init__(self, arr: zarr.Array, path: Path):
        self.path, self.shape, self.dtype = Path(path), arr.shape, np.dtype(arr.dtype)
        self.chunk = int(arr.chunks[0])
        self._maps: OrderedDict[int, np.ndarray | None] = OrderedDict()

    @staticmethod
    def supports(arr: zarr.Array) -> bool:
        try:
            from zarr.codecs import BytesCodec

            codecs = arr.metadata.codecs
            return (arr.shards is None and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
                    and str(getattr(codecs[0].endian, "value", codecs[0].endian)) == "little"
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
        f = self.path / "c" / str(c) / "0" / "0"
        m = np.memmap(f, dtype=self.dtype, mode="r").reshape((-1,) + tuple(self.shape[1:])) if f.is_file() else None
        self._maps[c] = m
        if len(self._maps) > self.MAX_OPEN:
            self._maps.popitem(last=False)
        return m

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames [a, b) -> [b - a, L, D] (a copy)."""
        out = np.zeros((max(0, b - a),) + tuple(self.shape[1:]), dtype=self.dtype)
        pos = a
        while pos < b:
            c = pos // self.chunk
            lo, hi = pos - c * self.chunk, min(b - c * self.chunk, self.chunk)
            m = self._chunk(c)
            if m is not None:
                out[pos - a:pos - a + hi - lo] = m[lo:hi]
            pos += hi - lo
        return out

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.read(s.start or 0, self.shape[0] if s.stop is None else s.stop)


def open_store(path: str | Path) -> FeatureStore:
    """Open a store built by ``python -m featurestore.build`` for reading."""
    return FeatureStore(path)

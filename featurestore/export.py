"""``python -m featurestore.export STORE --backbone B --format hdf5|npy OUT``: one backbone's frames
and pooled rows in layouts that older tools read.

- ``hdf5``: one file OUT. A group per clip (its name: :func:`safe_name` of the clip id) holding
  ``frames`` [T, L, D], ``pooled_mean`` [L, D] and ``pooled_std`` [L, D] in the store dtype, and the
  attributes ``id``, ``split``, ``start_s``, ``end_s`` (seconds in the clip's audio file) and
  ``labels`` (JSON object text). Root datasets ``clip_ids`` and ``clip_groups`` [N] map each clip id
  to its group, in the store's clip order; root attributes describe the backbone (:func:`header`:
  frame rate in Hz, sample rate, stride / receptive field / padding in samples, L, D, dtype).
- ``npy``: a folder OUT with ``OUT/<safe name>/layer_<k>.npy`` [T, D] for k = 0..L-1,
  ``pooled_mean.npy`` / ``pooled_std.npy`` [L, D], ``frontend.json`` (the same header) and
  ``manifest.csv`` (id, split, start, end, path, one column per label), in the manifest format of
  ``featurestore.build`` (``start``/``end`` in seconds, ``path`` relative to the manifest), so
  ``python -m featurestore.ingest OUT/manifest.csv`` reads it back.

It streams: one clip at a time, a clip's frames in blocks of :data:`BLOCK_FRAMES` frames, so memory
does not grow with the corpus or with a clip's length.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from featurestore.cli import HelpFormatter, add_field
from featurestore.manifest import RESERVED
from featurestore.names import MAX_NAME, safe_name  # noqa: F401  (re-exported)
from featurestore.options import SpecError, add_options, from_namespace, option
from featurestore.store import FeatureStore, open_store

FORMATS = ("hdf5", "npy")
EXPORT_FORMAT = "singfront-export/1"
#: frames read from the store and written out at a time
BLOCK_FRAMES = 8192
def header(store: FeatureStore, backbone: str) -> dict:
    """What a reader of the export needs to know of the backbone: the frontend's description
    (name, sample_rate Hz, frame_rate Hz, stride / receptive / pad in samples, num_layers, dim),
    the dtype of the exported frames (the store dtype; float32 for an int8 store), the model's layer
    index of each exported layer (``layers``: a store built with ``--layers`` holds some), the store it
    came from and this layout's format name."""
    g = store.group(backbone)
    return {"format": EXPORT_FORMAT, "backbone": store.backbone_name(backbone), "store": str(store.path),
            "dtype": str(store.frames_dtype(backbone)), "frontend": dict(g.attrs["frontend"]),
            "layers": store.layer_ids(backbone)}  # the model's index of each exported layer (layer_<k>: the k-th)


def _label_columns(store: FeatureStore) -> list[str]:
    names = list(store.clips["labels"])
    clash = [n for n in names if n in RESERVED]
    if clash:
        raise ValueError(f"{store.path}: label column(s) {clash} have the name of a manifest column "
                         f"({', '.join(RESERVED)}); rename them before exporting")
    return names


def _clip_meta(store: FeatureStore, i: int, labels: list[str]) -> dict:
    c = store.clips
    return {"id": str(c["id"][i]), "split": str(c["split"][i]), "start_s": float(c["start_s"][i]),
            "end_s": float(c["end_s"][i]), "labels": {n: str(c["labels"][n][i]) for n in labels}}


def _blocks(store: FeatureStore, backbone: str, i: int, n: int):
    """(first frame, frames [b, L, D]) of clip row ``i`` in blocks of at most BLOCK_FRAMES frames."""
    for a in range(0, n, BLOCK_FRAMES):
        yield a, store.frames(i, backbone, start=a, stop=min(n, a + BLOCK_FRAMES))


def export_hdf5(store: FeatureStore, backbone: str, out: Path, progress=None) -> int:
    """Write the ``hdf5`` layout (module docstring) to file ``out``; returns the clips written."""
    import h5py

    labels, (L, D) = _label_columns(store), store.shape(backbone)
    dtype = store.frames_dtype(backbone)  # (float32 for an int8 store: the frames as read back)
    ids = [str(c) for c in store.clip_ids]
    names = [safe_name(c) for c in ids]
    counts = store.n_frames(backbone)
    with h5py.File(out, "w") as f:
        head = header(store, backbone)
        f.attrs.update({k: json.dumps(v) if isinstance(v, list) else v for k, v in head.items() if k != "frontend"})
        f.attrs.update({k: v for k, v in head["frontend"].items() if isinstance(v, (int, float, str, bool))})
        f.attrs["frontend"] = json.dumps(head["frontend"])
        f.create_dataset("clip_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("clip_groups", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        for i, name in enumerate(names):
            meta, n = _clip_meta(store, i, labels), int(counts[i])
            g = f.create_group(name)
            g.attrs.update({**{k: v for k, v in meta.items() if k != "labels"}, "labels": json.dumps(meta["labels"])})
            ds = g.create_dataset("frames", shape=(n, L, D), dtype=dtype,
                                  chunks=(min(n, 256), L, D) if n else None)
            for a, x in _blocks(store, backbone, i, n):
                ds[a:a + len(x)] = x
            for stat in ("mean", "std"):
                g.create_dataset(f"pooled_{stat}", data=store.pooled(backbone, stat=stat, rows=[i])[0])
            if progress is not None:
                progress(i)
    return len(ids)


def export_npy(store: FeatureStore, backbone: str, out: Path, progress=None) -> int:
    """Write the ``npy`` layout (module docstring) to folder ``out``; returns the clips written."""
    labels, (L, D) = _label_columns(store), store.shape(backbone)
    dtype = store.frames_dtype(backbone)  # (float32 for an int8 store: the frames as read back)
    counts = store.n_frames(backbone)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontend.json").write_text(json.dumps(header(store, backbone), indent=1))
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as mf:
        w = csv.writer(mf)
        w.writerow(["id", "split", "start", "end", "path", *labels])
        for i, cid in enumerate(store.clip_ids):
            meta, n, name = _clip_meta(store, i, labels), int(counts[i]), safe_name(cid)
            d = out / name
            d.mkdir(exist_ok=True)
            layers = [np.lib.format.open_memmap(d / f"layer_{k}.npy", mode="w+", dtype=dtype, shape=(n, D))
                      for k in range(L)]
            for a, x in _blocks(store, backbone, i, n):
                for k, arr in enumerate(layers):
                    arr[a:a + len(x)] = x[:, k]
            for arr in layers:
                arr.flush()
            del layers
            for stat in ("mean", "std"):
                np.save(d / f"pooled_{stat}.npy", store.pooled(backbone, stat=stat, rows=[i])[0])
            w.writerow([meta["id"], meta["split"], repr(meta["start_s"]), repr(meta["end_s"]), name,
                        *(meta["labels"][n_] for n_ in labels)])
            if progress is not None:
                progress(i)
    return len(store.clip_ids)


def export(store_path, backbone: str, fmt: str, out, *, overwrite: bool = False, progress: bool = False) -> int:
    """Export one backbone of a store (see the module docstring); returns the clips written.
    Refuses an existing ``out`` unless ``overwrite``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists; pass --overwrite to replace what it holds")
    store = open_store(store_path)
    store.group(backbone)  # a clear error for a backbone the store lacks
    store.require_frames(backbone, "exporting")  # and for a pooled-only one
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(store), unit="clip", desc=f"export {fmt}")
    write = export_hdf5 if fmt == "hdf5" else export_npy
    try:
        return write(store, backbone, out, (lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


@dataclass(frozen=True)
class ExportSpec:
    """What :func:`export_store` writes: one backbone of a store, in one format, to ``out``."""

    store: str | None = option(None, "the feature store (a .zarr folder)")
    out: str | None = option(None, "output: the HDF5 file (--format hdf5) or a folder (--format npy)")
    backbone: str | None = option(None, "backbone to export (registry aliases accepted)")
    format: str | None = option(None, "hdf5: OUT is one file, group per clip (frames, pooled_mean, pooled_std; attrs "
                                      "id, split, start_s, end_s, labels); npy: OUT/<clip>/layer_<k>.npy [T, D], "
                                      "pooled_mean.npy, pooled_std.npy [L, D], OUT/manifest.csv and OUT/frontend.json",
                                choices=FORMATS)
    overwrite: bool = option(False, "replace an existing OUT")
    no_progress: bool = option(False, "no progress bar", identity=False)

    def __post_init__(self):
        for name in ("store", "out", "backbone"):
            if not getattr(self, name):
                raise SpecError(name, "required")
        if self.format not in FORMATS:
            raise SpecError("format", f"must be one of {', '.join(FORMATS)}, got {self.format!r}")


def export_store(spec: ExportSpec) -> int:
    """:func:`export` with the settings of ``spec``; returns the clips written."""
    return export(spec.store, spec.backbone, spec.format, spec.out, overwrite=spec.overwrite,
                  progress=not spec.no_progress)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m featurestore.export", formatter_class=HelpFormatter,
        description="Write one backbone's frames [T, L, D] and pooled mean/std [L, D] of every clip in a layout "
                    "older tools read: one HDF5 file with a group per clip, or a folder of per-layer .npy files "
                    "with a manifest.csv. Clip ids are percent-encoded into file/group names ('/' -> %2F); the "
                    "HDF5 file's clip_ids/clip_groups datasets and the manifest's id/path columns record the "
                    "mapping. Streams one clip at a time.")
    add_field(p, ExportSpec, "store", positional=True)
    add_field(p, ExportSpec, "out", positional=True)
    add_field(p, ExportSpec, "backbone", required=True)
    add_field(p, ExportSpec, "format", required=True)
    add_options(p, ExportSpec, skip=("store", "out", "backbone", "format"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = from_namespace(ExportSpec, args)
        n = export_store(spec)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as e:  # OSError: an --out that cannot be written, named by the error
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {n} clips of {spec.backbone} to {spec.out} ({spec.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.storage``: what each store option costs and what it changes, in one run.

Options compared with the default float16 store of every frame and layer, on one demo corpus (the
same clips, the same frontend, built once per option into one store under different names):

- ``int8``: 8-bit frames (``--dtype int8``, :mod:`featurestore.quantize`);
- ``frames none``: pooled rows only (``--frames none``);
- ``layers I,J``: a subset of hidden states (``--layers``).

Two tables:

1. *Published sizes*: bytes per audio-hour of every registry frontend from its published L x D and
   frame rate (:data:`featurestore.registry.REGISTRY`), for float16 frames, int8 frames (codes plus
   8 bytes per layer and channel per 256-frame chunk) and pooled-only stores of ``--segment-seconds``
   clips (two float16 rows of L x D per clip). Alignment padding (1.5-3 %) is not counted there.
2. *Measured on the corpus*, per option: bytes on disk of the backbone's folder per audio-hour and as
   a ratio of the float16 folder; read throughput in frames per second of random windows read with
   ``FeatureStore.frames_into`` into a float32 buffer (the datasets' path), against a raw float16
   ``np.memmap`` of the same frames (same layers) read into the same buffer in the same process
   (best of ``--repeats``, alternated); and the probe results of the same heads on the same splits:
   singer macro-F1 with ``linear`` and ``logreg`` (pooled rows) and transcription COnP F1 with
   ``crf`` (frames; not possible on a pooled-only store). Scores name the scored split and the split
   that chose the model (:mod:`heads.protocol`).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.workdir import work_folder, write_outputs
from featurestore.cli import HelpFormatter, parse_spec
from featurestore.options import SpecError, add_config_options, add_options, option

#: chunk frames and the bytes of one (offset, step) pair per layer and channel per chunk
_CHUNK, _QBYTES = 256, 8


@dataclass(frozen=True)
class StorageSpec:
    """What one run measures (fields = the command's options, ``--config`` keys and keywords). corpus:
    n_singers x clips_per_singer demo clips of duration_s seconds; segment_s: clip length in the store
    (s); layers: the subset the ``layers`` option keeps (model indices; "0,2,4" on the command line);
    windows / window_frames / repeats: the read measurement; epochs / lr: every probe's (lr: one rate
    or a comma-separated grid); seed: corpus, heads and read positions; workdir: corpus and store
    (None: a temporary folder); options: the store options compared."""

    backbone: str = option("crepe-tiny", "registry name of the frontend (weights needed locally)")
    n_singers: int = option(4, "demo singers", cli=False)
    clips_per_singer: int = option(8, "demo clips per singer (4 singers, >= 3)")
    duration_s: float = option(5.0, "length of each demo clip (s)", flag="--duration-seconds",
                            metavar="DURATION_SECONDS")
    segment_s: float = option(5.0, "clip length in the store (s); also the clip length of the published "
                                   "pooled-only sizes", flag="--segment-seconds",
                            metavar="SEGMENT_SECONDS")
    layers: tuple[int, ...] = option((0, 2, 4), "model layer indices the 'layers' option keeps")
    windows: int = option(300, "random windows per read measurement")
    window_frames: int = option(100, "frames per window")
    repeats: int = option(5, "timed passes over the windows (best kept)")
    epochs: int = option(40, "epochs of the linear and crf probes")
    lr: str = option("3e-3,1e-2", "learning-rate grid of the linear and crf probes (chosen on the selection "
                                  "split)")
    seed: int = option(0, "seed of the corpus, the heads and the read positions")
    num_workers: int = option(0, "audio decoding workers of the builds", cli=False, identity=False)
    options: tuple[str, ...] = option(("float16", "int8", "frames none", "layers"), "store options compared",
                                      cli=False)
    workdir: str | None = option(None, "folder for the corpus and store (default: temporary, removed)",
                                 identity=False)
    json: str | None = option(None, "write all results as JSON to this file", metavar="OUT", identity=False)
    out: str | None = option(None, "write the tables as markdown to this file", metavar="MD", identity=False)
    quiet: bool = option(False, "no progress lines or bars", identity=False)

    def __post_init__(self):
        object.__setattr__(self, "layers", _layer_tuple(self.layers))
        object.__setattr__(self, "options", tuple(self.options))
        from heads.training import lr_grid

        try:
            lrs = lr_grid(self.lr)
        except (TypeError, ValueError):
            lrs = []
        if not lrs or min(lrs) <= 0:
            raise SpecError("lr", f"expects positive learning rates, got {self.lr!r}")
        for name in ("windows", "window_frames", "repeats", "epochs", "n_singers"):
            if getattr(self, name) < 1:
                raise SpecError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.clips_per_singer < 3:
            raise SpecError("clips_per_singer", f"must be >= 3, got {self.clips_per_singer}")
        for name in ("duration_s", "segment_s"):
            if not getattr(self, name) > 0:
                raise SpecError(name, f"must be > 0 seconds, got {getattr(self, name)}")
        for opt in self.options:
            try:
                option_settings(opt, self.layers)
            except ValueError as e:
                raise SpecError("options", str(e)) from None

    @property
    def progress(self) -> bool:
        """Progress lines and bars (not ``quiet``)."""
        return not self.quiet


def _layer_tuple(value) -> tuple[int, ...]:
    """``"0,2,4"`` or a list of layer indices -> (0, 2, 4) sorted and distinct; SpecError naming ``layers``."""
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        layers = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        layers = []
    if not layers or layers[0] < 0:
        raise SpecError("layers", f"expects layer indices >= 0 such as 0,2,4, got {value!r}")
    return tuple(layers)


# ---- published sizes -----------------------------------------------------------------------------

def published_sizes(segment_s: float = 5.0) -> list[dict]:
    """Bytes per audio-hour of every registry frontend (published L, D, frames per second): float16
    frames, int8 frames, pooled-only with clips of ``segment_s`` seconds."""
    from featurestore.registry import REGISTRY

    out = []
    for spec in REGISTRY.values():
        L, D, fps = spec.expected_layers, spec.expected_dim, spec.expected_frame_rate
        if None in (L, D, fps):
            continue
        frames = 3600 * fps
        out.append({"frontend": spec.name, "layers": L, "dim": D, "frame_rate": fps,
                    "float16": frames * L * D * 2,
                    "int8": frames * L * D * (1 + _QBYTES / _CHUNK),
                    "frames_none": 3600 / segment_s * 2 * L * D * 2})
    return out


# ---- the corpus and its stores ---------------------------------------------------------------------

def option_settings(option: str, layers: tuple[int, ...]):
    """(backbone name suffix, :class:`featurestore.build.ExtractSettings`) of an option."""
    from featurestore.build import ExtractSettings

    table = {"float16": ("", ExtractSettings()), "int8": ("-int8", ExtractSettings(dtype="int8")),
             "frames none": ("-pooled", ExtractSettings(frames="none")),
             "layers": ("-layers", ExtractSettings(layers=tuple(layers)))}
    if option not in table:
        raise ValueError(f"unknown option {option!r}: expected one of {', '.join(table)}")
    return table[option]


def build_stores(spec: StorageSpec, workdir: Path) -> tuple[Path, dict[str, str]]:
    """The demo corpus and one store holding the backbone once per option -> (store, option -> name)."""
    from featurestore.build import build
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus
    from featurestore.registry import resolve

    manifest = make_demo_corpus(workdir / "corpus", n_singers=spec.n_singers, clips_per_singer=spec.clips_per_singer,
                                duration_s=spec.duration_s, seed=spec.seed)
    store = workdir / "store.zarr"
    base = resolve(spec.backbone).name
    names = {}
    for opt in spec.options:
        suffix, ext = option_settings(opt, spec.layers)
        names[opt] = base + suffix
        build(manifest, store, [spec.backbone], name=names[opt], extract=ext, progress=spec.progress,
              num_workers=spec.num_workers, clip_settings=ClipSettings(segment_s=spec.segment_s))
    return store, names


def backbone_bytes(store: Path, name: str, arrays=None) -> int:
    """Bytes of every file under the backbone's folder (``arrays``: only under those arrays' folders)."""
    from featurestore import layout
    from featurestore.build import dir_size

    folder = Path(store) / layout.backbone_path(name)
    if arrays is None:
        return dir_size(folder)
    return sum(dir_size(folder / a) for a in arrays if (folder / a).is_dir())


# ---- reads -------------------------------------------------------------------------------------------

def read_windows(store, name: str, n: int, width: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` random windows (clip row, start, stop) of at most ``width`` frames."""
    nf = store.n_frames(name)
    rows = np.flatnonzero(nf > 0)
    rng = np.random.default_rng(seed)
    out = []
    for r in rng.choice(rows, size=n):
        w = min(width, int(nf[r]))
        a = int(rng.integers(0, int(nf[r]) - w + 1))
        out.append((int(r), a, a + w))
    return out


def raw_float16_memmap(store, ref: str, layers: list[int], path: Path) -> np.memmap:
    """A raw float16 file [F, L', D] of the reference backbone's frames (model ``layers``), in the
    frames array's layout (same offsets), opened as an ``np.memmap``: the read baseline."""
    arr = store.frames_array(ref)
    pos = [store.layer_ids(ref).index(m) for m in layers]
    shape = (arr.shape[0], len(pos), arr.shape[2])
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    step = 4096
    for a in range(0, shape[0], step):
        mm[a:a + step] = arr[a:a + step][:, pos]
    mm.flush()
    return np.load(path, mmap_mode="r")


def time_reads(store, names: list[str], memmaps: dict[str, np.ndarray], windows, repeats: int) -> dict[str, dict]:
    """Frames per second of ``windows`` read with ``store.frames_into`` from each backbone of ``names``
    and from its raw float16 memmap (``memmaps[name]``: the same frames and layers) into a float32
    buffer. Every repeat times every reader once, in turn, so that all of them see the same machine
    load; the best of ``repeats`` is kept. Also the largest difference of the first window (0 for a
    float16 store; the quantisation error for int8)."""
    off = store.offsets(names[0])
    total = sum(b - a for _, a, b in windows)
    width = max(b - a for _, a, b in windows)

    def reader(name, via_store):
        buf = np.empty((width,) + tuple(store.shape(name)), dtype=np.float32)
        mm = memmaps[name]
        if via_store:
            return lambda: [store.frames_into(r, name, buf, start=a, stop=b) for r, a, b in windows]
        return lambda: [buf.__setitem__(slice(0, b - a), mm[off[r, 0] + a:off[r, 0] + b]) for r, a, b in windows]

    fns = {(n, k): reader(n, k == "store") for n in names for k in ("store", "memmap")}
    best = {key: float("inf") for key in fns}
    for fn in fns.values():  # warm: page cache, memory maps, parameter rows
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    out = {}
    r, a, b = windows[0]
    for n in names:
        x = store.frames(r, n, start=a, stop=b).astype(np.float32)
        diff = float(np.abs(x - memmaps[n][off[r, 0] + a:off[r, 0] + b].astype(np.float32)).max())
        out[n] = {"store_fps": total / best[n, "store"], "memmap_fps": total / best[n, "memmap"],
                  "ratio": best[n, "memmap"] / best[n, "store"], "frames": total, "windows": len(windows),
                  "max_abs_diff_first_window": diff}
    return out


# ---- probes ------------------------------------------------------------------------------------------

def clip_probe(store, name: str, head: str, spec: StorageSpec) -> dict:
    """Singer macro-F1 of ``head`` (linear | logreg) on the pooled rows, default split protocol."""
    from heads.clip_heads import LinearHead, LogRegHead
    from heads.evaluation import score_clip_head
    from heads.tasks import make_task

    task = make_task("singer")
    plan = task.plan(store, name, seed=spec.seed)
    X, y, _ = task.data(store, name, plan.train)
    Xv, yv, _ = task.data(store, name, plan.select)
    Xt, yt, _ = task.data(store, name, plan.score)
    est = (LinearHead(lr=spec.lr, epochs=spec.epochs, seed=spec.seed, progress=False) if head == "linear"
           else LogRegHead(features="mean", seed=spec.seed))
    est.fit(X, y, eval_set=(Xv, yv))
    rep = score_clip_head(est, Xt, yt).report
    return {"macro_f1": 100 * float(rep["macro_f1"]), "scored": plan.score_split, "chosen": plan.select_split,
            "n_scored": int(len(yt))}


def crf_probe(store, name: str, spec: StorageSpec) -> dict:
    """Transcription COnP F1 of the ``crf`` head on the frames, default split protocol."""
    from heads.evaluation import score_notes
    from heads.frame_heads import CRFHead
    from heads.tasks import make_task

    task = make_task("transcription")
    plan = task.plan(store, name, seed=spec.seed)
    X, y, off, _ = task.data(store, name, plan.train)
    Xv, yv, offv, _ = task.data(store, name, plan.select)
    Xt, yt, offt, rows = task.data(store, name, plan.score)
    est = CRFHead(lr=spec.lr, epochs=spec.epochs, seed=spec.seed, progress=False)
    est.fit(X, y, frame_rate=store.frame_rate(name), offsets=off, eval_set=(Xv, yv, offv))
    rep = score_notes(store, rows, yt, est.predict(Xt, offsets=offt))
    return {"conp_f1": 100 * float(rep["mean"]["COnP"]["f1"]), "scored": plan.score_split,
            "chosen": plan.select_split, "n_scored": int(rep["n_songs"])}


# ---- the run -----------------------------------------------------------------------------------------

def run(spec: StorageSpec) -> dict:
    """Build, measure and probe every option (see the module docstring) -> JSON-able results."""
    import torch
    from featurestore import open_store

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with work_folder(spec.workdir, "singfront-storage-") as workdir:
        t0 = time.perf_counter()
        path, names = build_stores(spec, workdir)
        build_s = time.perf_counter() - t0
        store = open_store(path)
        ref = names["float16"]
        with_frames = store.n_frames(ref) > 0
        hours = float((store.clips["end_s"] - store.clips["start_s"])[with_frames].sum()) / 3600
        windows = read_windows(store, ref, spec.windows, spec.window_frames, spec.seed)
        ref_bytes = backbone_bytes(path, ref)
        frame_arrays = ("frames", "frames_quant")
        ref_frames = backbone_bytes(path, ref, frame_arrays)
        readable = [n for n in names.values() if store.has_frames(n)]
        memmaps, files = {}, {}
        for n in readable:  # one raw float16 file per set of layers
            key = tuple(store.layer_ids(n))
            if key not in files:
                files[key] = raw_float16_memmap(store, ref, list(key), workdir / f"raw-{len(files)}.npy")
            memmaps[n] = files[key]
        _say(spec, f"timing reads of {', '.join(readable)} against raw float16 memmaps")
        reads = time_reads(store, readable, memmaps, windows, spec.repeats)
        del memmaps, files
        rows = []
        for opt, name in names.items():
            _say(spec, f"probes on {opt} ({name})")
            nbytes = backbone_bytes(path, name)
            row = {"option": opt, "backbone": name, "bytes": nbytes, "bytes_per_hour": nbytes / hours,
                   "size_ratio": nbytes / ref_bytes, "layers": store.layer_ids(name),
                   "frames_bytes": backbone_bytes(path, name, frame_arrays),
                   "frames_ratio": backbone_bytes(path, name, frame_arrays) / ref_frames}
            if name in reads:
                row["reads"] = reads[name]
            row["singer_linear"] = clip_probe(store, name, "linear", spec)
            row["singer_logreg"] = clip_probe(store, name, "logreg", spec)
            row["conp_crf"] = crf_probe(store, name, spec) if store.has_frames(name) else None
            rows.append(row)
        first = store.clips
        result = {"spec": asdict(spec), "published": published_sizes(spec.segment_s), "rows": rows,
                  "corpus": {"clips": int(len(first["id"])), "audio_hours": hours,
                             "frames": int(store.n_frames(ref).sum()), "shape": list(store.shape(ref)),
                             "backbone": ref}, "build_seconds": build_s}
    return result


def _say(spec: StorageSpec, msg: str) -> None:
    if spec.progress:
        print(msg, file=sys.stderr, flush=True)


# ---- tables ------------------------------------------------------------------------------------------

def _gb(v: float) -> str:
    return f"{v / 1e9:.2f}" if v >= 1e8 else f"{v / 1e9:.3f}"


def format_tables(r: dict) -> str:
    """The two markdown tables (published sizes; measured on the corpus) with their notes."""
    seg = r["spec"]["segment_s"]
    lines = [f"Published sizes (GB per audio-hour; pooled-only for {seg:g} s clips; alignment padding not counted):",
             "", "| frontend | L x D | frames/s | float16 | int8 | int8 / float16 | frames none | none / float16 |",
             "|---|---|---|---|---|---|---|---|"]
    for p in r["published"]:
        lines.append(f"| {p['frontend']} | {p['layers']} x {p['dim']} | {p['frame_rate']:g} | {_gb(p['float16'])} | "
                     f"{_gb(p['int8'])} | {p['int8'] / p['float16']:.3f} | {_gb(p['frames_none'])} | "
                     f"{p['frames_none'] / p['float16']:.4f} |")
    c = r["corpus"]
    ref = next(x for x in r["rows"] if x["option"] == "float16")
    lines += ["", f"Measured on the demo corpus: {c['clips']} clips ({3600 * c['audio_hours']:.0f} s of audio, "
              f"{c['frames']} frames of {c['shape'][0]} x {c['shape'][1]}, {c['backbone']}); reads: "
              f"{ref['reads']['windows']} random windows of <= {r['spec']['window_frames']} frames into a float32 "
              f"buffer, best of {r['spec']['repeats']}, against a raw float16 memmap of the same frames and layers; "
              f"probes: {r['spec']['epochs']} epochs, lr grid {r['spec']['lr']}, seed {r['spec']['seed']}.", "",
              "| option | layers | MB on disk | GB per audio-hour | size vs float16 | frame arrays vs float16 | "
              "reads (frames/s) | memmap float16 (frames/s) | reads vs memmap | singer F1 linear | singer F1 logreg | "
              "COnP F1 crf |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        rd = x.get("reads")
        reads = (f"{rd['store_fps']:.0f} | {rd['memmap_fps']:.0f} | {rd['ratio']:.2f}x" if rd else "- | - | -")
        conp = f"{x['conp_crf']['conp_f1']:.1f}" if x["conp_crf"] else "refused (no frames)"
        ids = x["layers"]
        lay = "all" if ids == list(range(len(ids))) and len(ids) == c["shape"][0] else ",".join(map(str, ids))
        lines.append(f"| {x['option']} | {lay} | {x['bytes'] / 1e6:.2f} | {_gb(x['bytes_per_hour'])} | "
                     f"{x['size_ratio']:.3f} | {x['frames_ratio']:.3f} | {reads} | "
                     f"{x['singer_linear']['macro_f1']:.1f} | {x['singer_logreg']['macro_f1']:.1f} | {conp} |")
    s, t = ref["singer_linear"], ref["conp_crf"]
    lines += ["", f"Scores: singer macro-F1 (%) per clip, scored on {s['scored']} ({s['n_scored']} clips), chosen on "
                  f"{s['chosen']}; COnP F1 (%) averaged over {t['n_scored']} clips scored on {t['scored']}, chosen on "
                  f"{t['chosen']}. Reads vs memmap: the memmap's best time / the store's best time in this process, "
                  "every reader timed once per repeat in turn (above 1: the store is faster). Size: the backbone's "
                  "folder, pooled rows and markers included; frame arrays: frames (+ frames_quant for int8)."]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------

def parse_args(argv=None) -> StorageSpec:
    """Command-line options (see ``--help``) -> the spec; ``--print-config`` prints it and exits."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.storage",
        description="Store options against float16 on one demo corpus: bytes per audio-hour (published sizes of "
                    "every registry frontend, and measured), read throughput against a raw float16 memmap, and "
                    "the probe results of the same heads on the same splits (singer macro-F1 with linear and "
                    "logreg, COnP with crf).",
        formatter_class=HelpFormatter)
    add_options(p, StorageSpec, defaults={"layers": ",".join(map(str, StorageSpec.layers))})
    add_config_options(p)
    return parse_spec(p, StorageSpec, argv)


def main(argv=None) -> int:
    spec = parse_args(argv)
    try:
        result = run(spec)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = format_tables(result)
    print(text)
    write_outputs(text, result, spec.out, spec.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.extraction``: how close is ``featurestore.build`` to the model's own speed,
how much faster is it than the naive one-file-at-a-time loop, and how fast can the store be read?

On one demo corpus, in one run, it measures:

1. **forward** (the limit): bare ``fe.hidden_states`` calls over exactly the clips the store holds,
   audio decoded and batches assembled beforehand, so only the model is timed. Batches hold
   equal-length clips, up to the build's own ``batch_s`` of audio (``--forward-batch-seconds``), so
   build / forward is the build's overhead; on a CPU, smaller batches can be faster;
2. **build**: ``featurestore.build.build`` into a fresh store (planning, model load, decoding,
   extraction, writing: everything a user waits for), after one untimed warm-up build;
3. **naive**: what users do without the store: per file, load the audio, run the model per 5 s
   segment (batch of one) and ``np.save`` each layer of each segment to its own float16 ``.npy``;
4. **read**: random batches of windows and a full sequential scan of the frames array, from the
   Zarr store and from a raw ``np.memmap`` of the same float16 array (warm page cache: the
   files were just written and are read once before timing; caches cannot be dropped here).
5. **attention** (transformers frontends with an SDPA kernel): the bare forward passes of 1. with the
   model loaded with eager attention and with SDPA, timed alternately in this process over the same
   batches (best of ``--repeats``), and the largest difference between their hidden states.

Times are wall clock (``time.perf_counter``); with ``--repeats N`` each measurement is run N times
and the best is reported (all runs are in the JSON). Each measurement also records the CPU
seconds it used and how busy the machine was with *other* processes meanwhile: on a shared machine
a run with ``others`` well above 0% is not a clean timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.workdir import work_folder
from featurestore.cli import HelpFormatter, parse_spec
from featurestore import open_store
from featurestore.audio import load_audio, segment_bounds
from featurestore.build import ExtractSettings, build, dir_size, resolve_batch_seconds
from featurestore.clips import ClipSettings, clip_samples
from featurestore.demo import make_demo_corpus
from featurestore.extract import plan_windows, window_plan
from featurestore.frontends import Frontend, load_frontend
from featurestore.manifest import read_inputs
from featurestore.names import safe_name
from featurestore.options import SpecError, add_config_options, add_options, option, to_dict
from featurestore.registry import DEFAULT_BACKBONE

MB = 1e6  # throughputs are in MB/s with MB = 10**6 bytes


# ----------------------------------------------------------------------------------------------
# arguments, machine facts
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExtractionSpec:
    """What one run measures (fields = the command's options, ``--config`` keys and keywords): a demo
    corpus of ``n_singers`` x ``clips_per_singer`` files of ``corpus_seconds``, the build of it, the bare
    forward passes in batches of ``forward_batch_seconds`` of audio, the naive loop, and
    ``read_batches`` random batches of ``batch_size`` windows of ``window`` frames."""

    backbone: str = option(DEFAULT_BACKBONE, "frontend to benchmark (registry name, transformers model folder or "
                                             "id)")
    model_path: str | None = option(None, "local folder to load the --backbone's weights from")
    random_base: bool = option(False, "benchmark a randomly initialised base-size Wav2Vec2Model (12 x 768; the "
                                      "real model's compute, no download) instead of --backbone")
    device: str = option("cpu", "torch device of the build and the forward passes")
    corpus_seconds: float = option(5.0, "length of each demo file in seconds (make_demo_corpus duration_s)")
    n_singers: int = option(4, "demo singers (1..5)")
    clips_per_singer: int = option(8, "demo files per singer (>= 3)")
    workdir: str | None = option(None, "folder for the corpus, stores and outputs (default: a temporary folder, "
                                       "removed at the end)", identity=False)
    repeats: int = option(1, "runs of each timed measurement (best is reported)")
    num_workers: int = option(2, "num_workers passed to build()")
    forward_batch_seconds: float = option(resolve_batch_seconds(None, "cpu"),
                                          "audio seconds per batch of the bare forward passes: the build's own "
                                          "batch_s on CPU, so build / forward is the build's overhead")
    read_batches: int = option(200, "random read batches")
    window: int = option(250, "frames per read window")
    batch_size: int = option(16, "windows per read batch")
    scan_seconds: float = option(1.0, "repeat each full sequential scan until this long (one scan of a small "
                                      "store is too short to time)")
    seed: int = option(0, "seed of the random read positions")
    json: str | None = option(None, "write the results as JSON to this file", metavar="OUT", identity=False)

    def __post_init__(self):
        for name in ("repeats", "read_batches", "window", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.random_base and (self.model_path or self.backbone != DEFAULT_BACKBONE):
            raise SpecError("random_base", "measures its own model: leave out backbone and model_path")


def parse_args(argv=None) -> ExtractionSpec:
    """Command-line options (see ``--help``) -> the spec; ``--print-config`` prints it and exits."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.extraction",
        description="Benchmark featurestore extraction against bare forward passes and a naive per-file "
                    "loop, and Zarr reads against a raw memmap, on the built-in demo corpus.",
        formatter_class=HelpFormatter)
    add_options(p, ExtractionSpec)
    # the option's older name, still accepted
    p.add_argument("--clip-seconds", dest="corpus_seconds", type=float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    add_config_options(p)
    return parse_spec(p, ExtractionSpec, argv)


def machine_facts() -> dict:
    """CPU count/affinity, torch threads, CPU model and library versions of this run."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import zarr

    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        nproc = os.cpu_count()
    return {"nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": model,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def cpu_snapshot() -> dict:
    """Wall clock, CPU seconds of this process and its finished children, and CPU seconds the whole
    machine was busy (``/proc/stat``; None elsewhere): two snapshots give how much of the machine
    *other* processes used meanwhile (this benchmark is often run on shared machines)."""
    import resource

    own = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    busy = None
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return {"wall": time.perf_counter(), "own": own, "busy": busy}


def usage_between(a: dict, b: dict, nproc: int) -> dict:
    """CPU use between two :func:`cpu_snapshot` s: ``cpu_seconds`` (this process and children) and
    ``other_load`` (share of all CPUs used by other processes, 0..1; None if unknown or the span is
    too short to tell)."""
    wall, own = b["wall"] - a["wall"], b["own"] - a["own"]
    other = None
    if a["busy"] is not None and b["busy"] is not None and wall >= 0.25:  # /proc/stat counts 10 ms ticks
        other = min(1.0, max(0.0, (b["busy"] - a["busy"] - own) / (wall * nproc)))
    return {"cpu_seconds": own, "other_load": other}


def best_of(repeats: int, fn) -> tuple[float, list[float], dict]:
    """Run ``fn() -> (seconds, extra dict or None)`` ``repeats`` times.

    Returns (best seconds, all seconds, extra of the best run + its CPU usage, see :func:`usage_between`)."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs, best, extra = [], float("inf"), {}
    for _ in range(repeats):
        before = cpu_snapshot()
        s, e = fn()
        usage = usage_between(before, cpu_snapshot(), nproc)
        runs.append(s)
        if s < best:
            best, extra = s, {**(e or {}), **usage}
    return best, runs, extra


def fresh_dir(path: Path) -> Path:
    """Remove ``path`` (a folder this benchmark made earlier) and return it, so each run starts empty."""
    if path.exists():
        shutil.rmtree(path)
    return path


# ----------------------------------------------------------------------------------------------
# 1. bare forward passes
# ----------------------------------------------------------------------------------------------

def decode_clips(clips: dict, fe: Frontend) -> list[np.ndarray]:
    """The store's clips as the build feeds them: each file decoded once at the frontend's rate
    (``load_audio``), cut at ``clip_samples`` bounds, zero-padded by ``fe.pad`` on both sides."""
    a, b = clip_samples(clips["start_s"], clips["end_s"], fe.sample_rate)
    decoded: dict[str, np.ndarray] = {}
    out = []
    for path, lo, hi in zip(clips["audio"], a, b):
        path = str(path)
        if path not in decoded:
            decoded[path] = load_audio(path, fe.sample_rate, check=False)
        piece = decoded[path][lo:hi]
        seg = np.zeros(int(hi - lo) + 2 * fe.pad, dtype=np.float32)
        seg[fe.pad:fe.pad + len(piece)] = piece
        out.append(seg)
    return out


def forward_batches(waves: list[np.ndarray], n_frames: np.ndarray, fe: Frontend, ext: ExtractSettings
                    ) -> list[tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]]:
    """Cut padded clips into the build's windows (``plan_windows`` with ``ext.window_s`` and
    ``ext.context_s``, margins included) and group windows of equal length into batches of at most
    ``ext.batch_s`` seconds of audio.

    Returns [(wave [B, S], lengths [B], [(clip, first kept frame, margin frames before it, kept
    frames)] per row)].
    """
    k, context = window_plan(fe, ext.window_s, ext.context_s)
    by_len: dict[int, list[tuple[int, int, int, int, np.ndarray]]] = {}
    for c, (w, nf) in enumerate(zip(waves, n_frames)):
        for s in plan_windows(int(nf), k, fe.stride, fe.receptive, context):
            by_len.setdefault(s.samples, []).append((c, s.frame, s.lead, s.n_frames,
                                                     w[s.start:s.start + s.samples]))
    budget = int(ext.batch_s * fe.sample_rate)
    batches = []
    for ns in sorted(by_len, reverse=True):
        items = by_len[ns]
        rows = max(1, budget // ns)
        for i in range(0, len(items), rows):
            chunk = items[i:i + rows]
            x = torch.from_numpy(np.stack([it[4] for it in chunk]))
            lengths = torch.full((len(chunk),), ns, dtype=torch.long)
            batches.append((x, lengths, [it[:4] for it in chunk]))
    return batches


def frontend_device(fe: torch.nn.Module) -> torch.device:
    """The device of a frontend's weights (or buffers; CPU when it has neither)."""
    for t in fe.parameters():
        return t.device
    for t in fe.buffers():
        return t.device
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_benchmark(backbone: str, model_path, batches, repeats: int, device: str) -> dict | None:
    """Eager against SDPA attention over the same forward batches, in this process: the two models are
    timed alternately ``repeats`` times each (best kept). None for frontends with no SDPA kernel."""
    from featurestore.frontends import HFFrontend
    from featurestore.hf_loading import supports_sdpa

    eager = load_frontend(backbone, path=model_path, attention="eager", device=device)
    if not isinstance(eager, HFFrontend) or not supports_sdpa(type(eager.model)):
        return None
    fes = {"eager": eager, "sdpa": load_frontend(backbone, path=model_path, attention="sdpa", device=device)}
    dev = frontend_device(fes["eager"])
    with torch.inference_mode():
        x, lengths, _ = batches[0]
        a = fes["eager"].hidden_states(x.to(dev), lengths.to(dev)).float()
        b = fes["sdpa"].hidden_states(x.to(dev), lengths.to(dev)).float()
        diff = float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    best = {"eager": float("inf"), "sdpa": float("inf")}
    runs = {"eager": [], "sdpa": []}
    before = cpu_snapshot()
    for _ in range(repeats):
        for kind in ("eager", "sdpa"):
            seconds, _ = time_forward(fes[kind], batches)
            runs[kind].append(seconds)
            best[kind] = min(best[kind], seconds)
    return {"eager_seconds": best["eager"], "sdpa_seconds": best["sdpa"], "runs": runs,
            "speedup_sdpa_over_eager": best["eager"] / best["sdpa"], "max_rel_diff": diff,
            **usage_between(before, cpu_snapshot(), nproc)}


def time_forward(fe: Frontend, batches) -> tuple[float, None]:
    """Seconds spent in ``fe.hidden_states`` over all batches (inference mode, outputs discarded;
    batches are moved to the frontend's device inside the timed loop, as the build moves them)."""
    dev = frontend_device(fe)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x, lengths, _ in batches:
            fe.hidden_states(x.to(dev), lengths.to(dev))
        sync(dev)
        return time.perf_counter() - t0, None


def check_against_store(fe: Frontend, batch, frames, offsets: np.ndarray) -> float:
    """Largest |forward - stored| over one batch, relative to the largest |stored| (float16 rounding
    and batch-size dependent kernels give ~1e-3)."""
    x, lengths, rows = batch
    dev = frontend_device(fe)
    with torch.inference_mode():
        h = fe.hidden_states(x.to(dev), lengths.to(dev)).float().cpu().numpy()
    worst, scale = 0.0, 1e-12
    for i, (c, f, lead, m) in enumerate(rows):
        a = int(offsets[c, 0]) + f
        ref = np.asarray(frames[a:a + m], dtype=np.float32)
        worst = max(worst, float(np.abs(h[i, lead:lead + m] - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return worst / scale


# ----------------------------------------------------------------------------------------------
# 2. the build
# ----------------------------------------------------------------------------------------------

def time_build(manifest: Path, store: Path, backbone: str, num_workers: int, **build_kw) -> tuple[float, dict]:
    """Wall time of ``build()`` into a fresh store -> (seconds, the backbone's summary + total).
    ``build_kw``: more keyword arguments of ``build`` (``device``, ``model_path``...)."""
    fresh_dir(store)
    shutil.rmtree(store.with_name(store.name + ".vocals"), ignore_errors=True)
    t0 = time.perf_counter()
    report = build(manifest, store, [backbone], num_workers=num_workers, progress=False, **build_kw)
    seconds = time.perf_counter() - t0
    summary = dict(next(iter(report.backbones.values())))
    summary["report_seconds"] = report.seconds
    return seconds, summary


# ----------------------------------------------------------------------------------------------
# 3. the naive loop
# ----------------------------------------------------------------------------------------------

def time_naive(manifest: Path, fe: Frontend, out: Path, settings: ClipSettings) -> tuple[float, dict]:
    """The loop users write today: per file, decode, run the model on each segment alone (batch 1),
    ``np.save`` every layer of every segment as float16. The model is already loaded (as it is for
    the forward measurement). Returns (seconds, {files, segments, npy_files, bytes, audio_seconds})."""
    fresh_dir(out).mkdir(parents=True)
    rows, _ = read_inputs(manifest)
    n_seg = n_npy = 0
    samples = 0
    dev = frontend_device(fe)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for row in rows:
            x = load_audio(row.path, fe.sample_rate)
            name = safe_name(row.id)
            bounds = segment_bounds(0, len(x), fe.sample_rate, settings.segment_s,
                                    min(settings.min_segment_s, settings.segment_s))
            for k, (a, b) in enumerate(bounds):
                seg = np.pad(x[a:b], fe.pad)
                h = fe.hidden_states(torch.from_numpy(seg)[None].to(dev), torch.tensor([len(seg)], device=dev))[0]
                h = h[:fe.n_frames(b - a)].float().cpu().numpy()
                for layer in range(h.shape[1]):
                    np.save(out / f"{name}_{k:04d}_layer{layer:02d}.npy", h[:, layer].astype(np.float16))
                    n_npy += 1
                n_seg += 1
                samples += b - a
    seconds = time.perf_counter() - t0
    return seconds, {"files": len(rows), "segments": n_seg, "npy_files": n_npy, "bytes": dir_size(out),
                     "audio_seconds": samples / fe.sample_rate}


# ----------------------------------------------------------------------------------------------
# 4. reads
# ----------------------------------------------------------------------------------------------

def write_memmap(frames, path: Path, block: int) -> np.memmap:
    """Copy the Zarr frames array into a ``.npy`` file and open it as a read-only memmap (same dtype,
    same [F, L, D] shape)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=frames.dtype, shape=frames.shape)
    for a in range(0, frames.shape[0], block):
        mm[a:a + block] = frames[a:a + block]
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def read_windows(offsets: np.ndarray, window: int, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` random (start frame, frames) windows lying inside clips: clips at least ``window`` frames
    long get a full window at a uniform position; if no clip is that long, whole clips are read."""
    rng = np.random.default_rng(seed)
    lens = offsets[:, 1] - offsets[:, 0]
    long_enough = np.flatnonzero(lens >= window)
    pool = long_enough if len(long_enough) else np.flatnonzero(lens > 0)
    clips = rng.choice(pool, size=n)
    out = []
    for c in clips:
        a, b = int(offsets[c, 0]), int(offsets[c, 1])
        m = min(window, b - a)
        out.append((int(rng.integers(a, b - m + 1)), m))
    return out


def time_random_reads(arr, windows: list[tuple[int, int]], batch_size: int) -> tuple[float, dict]:
    """Read the windows, ``batch_size`` at a time, into a [B, window, L, D] batch buffer (``arr[a:a+m]``
    per window, as a data loader would; a store reader with ``read_into`` writes straight into the
    buffer) -> (seconds, {bytes, batches})."""
    width = max(m for _, m in windows)
    buf = np.empty((batch_size, width) + tuple(arr.shape[1:]), dtype=arr.dtype)
    into = getattr(arr, "read_into", None)
    nbytes = 0
    t0 = time.perf_counter()
    for i in range(0, len(windows), batch_size):
        for j, (a, m) in enumerate(windows[i:i + batch_size]):
            if into is not None:
                into(a, a + m, buf[j])
            else:
                buf[j, :m] = arr[a:a + m]
            nbytes += m * buf[0, 0].nbytes
    seconds = time.perf_counter() - t0
    return seconds, {"bytes": nbytes, "batches": -(-len(windows) // batch_size)}


def time_scan_copy(arr, block: int, min_seconds: float = 0.0) -> tuple[float, dict]:
    """Full sequential scans of the [F, L, D] array, front to back in blocks of ``block`` frames, each
    block copied into memory once (a view, e.g. of a memmap, is copied with ``np.array`` so it pays
    for every page like the store does; an array a reader already returned as a fresh copy is not
    copied again). Scans again until ``min_seconds`` have passed (one scan of a small store is too
    short to time) -> (seconds, {bytes, passes})."""
    nbytes, passes = 0, 0
    t0 = time.perf_counter()
    while passes == 0 or time.perf_counter() - t0 < min_seconds:
        for a in range(0, arr.shape[0], block):
            x = arr[a:a + block]
            if not (type(x) is np.ndarray and x.flags.owndata):
                x = np.array(x)
            nbytes += x.nbytes
        passes += 1
    seconds = time.perf_counter() - t0
    return seconds, {"bytes": nbytes, "passes": passes}


def read_benchmark(frames, chunks, mm: np.ndarray, offsets: np.ndarray, spec: ExtractionSpec) -> dict:
    """Random batched window reads and a full scan, warm cache -> results dict: the Zarr array
    itself, the store's reader (``FeatureStore.frames`` uses it: memory-mapped chunk files) and a
    raw memmap of the same array."""
    windows = read_windows(offsets, spec.window, spec.read_batches * spec.batch_size, spec.seed)
    block = frames.chunks[0] * 8
    # warm both files into the page cache (and Zarr's metadata) before timing
    time_scan_copy(frames, block)
    time_scan_copy(mm, block)
    out = {"cache": "warm", "window_frames_mean": float(np.mean([m for _, m in windows])),
           "windows": len(windows), "scan_block_frames": block}
    for kind in ("random", "scan"):
        res = {}
        for name, arr in (("zarr", frames), ("store", chunks), ("memmap", mm)):
            if kind == "random":
                s, runs, extra = best_of(spec.repeats, lambda: time_random_reads(arr, windows, spec.batch_size))
            else:
                s, runs, extra = best_of(spec.repeats,
                                         lambda: time_scan_copy(arr, block, min_seconds=spec.scan_seconds))
            res[name] = {"seconds": s, "runs": runs, **extra, "mb_per_s": extra["bytes"] / MB / s}
        res["ratio_zarr_over_memmap"] = res["zarr"]["mb_per_s"] / res["memmap"]["mb_per_s"]
        res["ratio_store_over_memmap"] = res["store"]["mb_per_s"] / res["memmap"]["mb_per_s"]
        out[kind] = res
    return out


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def _percent(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def format_table(r: dict) -> str:
    """The readable summary printed at the end of a run."""
    m, c = r["machine"], r["corpus"]
    lines = [f"machine: {m['nproc']} CPUs ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
             f"threads, cuda={m['cuda']}",
             f"corpus:  {c['files']} files, {c['clips']} clips, {c['audio_seconds']:.1f} audio-s -> "
             f"{c['frames']} frames x {c['layers']} layers x {c['dim']} dims ({r['config']['backbone']}, "
             f"{c['store_mb']:.1f} MB store)",
             f"best of {r['config']['repeats']} run(s)", "",
             f"{'extraction':<34}{'seconds':>9}{'x forward':>11}{'audio-s/s':>11}{'cpu-s':>8}{'others':>8}",
             "-" * 81]
    for key, label in (("forward", "bare forward passes (the limit)"), ("build", "featurestore build()"),
                       ("naive", "naive loop (1 file, .npy/layer)")):
        e = r[key]
        other = "?" if e["other_load"] is None else f"{100 * e['other_load']:.0f}%"
        lines.append(f"{label:<34}{e['seconds']:>9.2f}{e['ratio_vs_forward']:>11.2f}{e['audio_s_per_s']:>11.1f}"
                     f"{e['cpu_seconds']:>8.1f}{other:>8}")
    lines.append("  cpu-s: CPU seconds of this process and its workers; others: share of the machine's CPUs "
                 "busy with other processes meanwhile (timings are unreliable when it is not ~0%)")
    f = r["forward"]
    lines.append(f"  forward: {f['batches']} batches of <= {f['max_rows']} clips ({f['batch_seconds']:g} audio-s); "
                 f"max rel. diff to the store {f['check_max_rel_diff']:.1e}; frontend load (in build only) "
                 f"{r['frontend_load_seconds']:.2f} s")
    rd = r["read"]
    lines += ["", f"reads, warm cache {'':<14}{'zarr MB/s':>11}{'store MB/s':>12}{'memmap MB/s':>13}"
                  f"{'zarr/mm':>9}{'store/mm':>10}{'others':>8}", "-" * 95]
    for key, label in (("random", f"random {r['config']['read_batches']}x{r['config']['batch_size']} windows "
                                  f"of {rd['window_frames_mean']:.0f} fr"),
                       ("scan", "full sequential scan")):
        e = rd[key]
        loads = [e[src]["other_load"] for src in ("zarr", "store", "memmap") if e[src]["other_load"] is not None]
        other = f"{100 * max(loads):.0f}%" if loads else "?"
        lines.append(f"{label:<32}{e['zarr']['mb_per_s']:>11.0f}{e['store']['mb_per_s']:>12.0f}"
                     f"{e['memmap']['mb_per_s']:>13.0f}{e['ratio_zarr_over_memmap']:>9.2f}"
                     f"{e['ratio_store_over_memmap']:>10.2f}{other:>8}")
    lines.append("  store: FeatureStore's reader (memory-mapped chunk files, used by frames() and the datasets)")
    at = r.get("attention")
    if at is None:
        lines += ["", "attention: no SDPA kernel for this frontend (eager vs SDPA not measured)"]
    else:
        lines += ["", f"attention (bare forward passes, same batches){'':<4}{'seconds':>9}{'speedup':>9}", "-" * 70,
                  f"{'eager':<50}{at['eager_seconds']:>9.2f}{1.0:>9.2f}",
                  f"{'sdpa (scaled-dot-product attention)':<50}{at['sdpa_seconds']:>9.2f}"
                  f"{at['eager_seconds'] / at['sdpa_seconds']:>9.2f}",
                  f"  max rel. diff sdpa vs eager hidden states: {at['max_rel_diff']:.1e}; other processes "
                  f"used {_percent(at['other_load'])} of the CPUs "
                  "meanwhile"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def run_extraction(spec: ExtractionSpec) -> dict:
    """All the measurements on one demo corpus in ``spec.workdir`` (None: a temporary folder, removed
    afterwards) -> the results dict (also what ``--json`` writes; :func:`format_table` prints it)."""
    with work_folder(spec.workdir, "featurestore-bench-") as workdir:
        return run(spec, workdir)


def run(spec: ExtractionSpec, workdir: Path) -> dict:
    """:func:`run_extraction` in ``workdir``."""
    t_start = time.perf_counter()
    manifest = make_demo_corpus(workdir / "corpus", n_singers=spec.n_singers,
                                clips_per_singer=spec.clips_per_singer, duration_s=spec.corpus_seconds)
    settings = ClipSettings()
    ext = ExtractSettings(batch_s=spec.forward_batch_seconds)  # only window_s, context_s and batch_s are used
    backbone, model_path = spec.backbone, spec.model_path
    if spec.random_base:
        from benchmarks.memory import save_model

        backbone = str(save_model(workdir / "wav2vec2-base-random", "base"))
    build_kw = {"model_path": model_path, "device": spec.device}

    # 2. the build: once untimed (warms the process: imports, kernels, file cache, as the other
    # measurements are warm too), then timed into a fresh store, which the others read the clips of
    time_build(manifest, workdir / "warmup.zarr", backbone, spec.num_workers, **build_kw)
    build_s, build_runs, summary = best_of(
        spec.repeats, lambda: time_build(manifest, workdir / "bench.zarr", backbone, spec.num_workers, **build_kw))
    store = open_store(workdir / "bench.zarr")
    bb = store.backbones[0]
    offsets = store.offsets(bb)
    frames = store.frames_array(bb)
    n_frames = offsets[:, 1] - offsets[:, 0]
    clips = store.clips
    audio_s = float(np.sum(np.asarray(clips["end_s"]) - np.asarray(clips["start_s"])))

    # 1. bare forward passes over the same clips
    t0 = time.perf_counter()
    fe = load_frontend(backbone, path=model_path, device=spec.device)
    load_s = time.perf_counter() - t0
    batches = forward_batches(decode_clips(clips, fe), n_frames, fe, ext)
    with torch.inference_mode():  # warm-up: one row of the first batch
        fe.hidden_states(batches[0][0][:1], batches[0][1][:1])
    fwd_s, fwd_runs, fwd_usage = best_of(spec.repeats, lambda: time_forward(fe, batches))
    fwd_rows, fwd_batches = max(len(x) for x, _, _ in batches), len(batches)
    check = check_against_store(fe, batches[-1], frames, offsets)
    attention = attention_benchmark(backbone, model_path, batches, spec.repeats, spec.device)
    batches.clear()  # free the decoded audio (the lambda above is done with it)

    # 3. the naive loop
    naive_s, naive_runs, naive = best_of(spec.repeats, lambda: time_naive(manifest, fe, workdir / "naive", settings))

    # 4. reads
    mm = write_memmap(frames, workdir / "frames.npy", frames.chunks[0] * 8)
    reads = read_benchmark(frames, store._reader(bb), mm, offsets, spec)
    del mm

    def entry(seconds, runs, **extra):
        return {"seconds": seconds, "runs": runs, "ratio_vs_forward": seconds / fwd_s,
                "audio_s_per_s": audio_s / seconds, **extra}

    return {
        "machine": machine_facts(),
        "config": {**{k: v for k, v in to_dict(spec).items() if k not in ("json", "workdir")},
                   "backbone": "random-initialised Wav2Vec2Model, base size" if spec.random_base else spec.backbone},
        "corpus": {"files": len(read_inputs(manifest)[0]), "clips": len(store), "audio_seconds": audio_s,
                   "frames": int(n_frames.sum()), "frames_allocated": int(frames.shape[0]),
                   "layers": int(frames.shape[1]), "dim": int(frames.shape[2]), "dtype": str(frames.dtype),
                   "store_mb": dir_size(workdir / "bench.zarr") / MB},
        "frontend_load_seconds": load_s,
        "forward": entry(fwd_s, fwd_runs, check_max_rel_diff=check, batches=fwd_batches,
                         max_rows=fwd_rows, batch_seconds=spec.forward_batch_seconds, **fwd_usage),
        "build": entry(build_s, build_runs, **{k: summary.pop(k) for k in ("cpu_seconds", "other_load")},
                       summary=summary),
        "naive": entry(naive_s, naive_runs, **naive),
        "read": reads,
        "attention": attention,
        "total_seconds": time.perf_counter() - t_start,
    }


def main(argv=None) -> int:
    """Run the benchmark, print the table, write ``--json`` if asked."""
    spec = parse_args(argv)
    results = run_extraction(spec)
    print(format_table(results))
    if spec.json:
        Path(spec.json).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

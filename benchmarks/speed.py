"""``python -m benchmarks.speed``: the project's speed table, one run, every speed a ratio against a
baseline measured in the same process on the same audio.

Rows (speed = baseline seconds / seconds, so above 1 is faster than the baseline):

1. **build over bare forward passes**: ``featurestore.build`` into a fresh store (planning, model
   load, decoding, extraction, writing) against ``fe.hidden_states`` alone over exactly the clips the
   store holds, audio decoded and batched beforehand (:mod:`benchmarks.extraction`);
2. **build over the naive per-file loop**: per file, load the audio, run the model per 5 s segment,
   ``np.save`` every layer (:func:`benchmarks.extraction.time_naive`);
3. **window-batch reads over a raw memmap**, as a head trains: a ``torch.utils.data.DataLoader``
   (``--num-workers`` worker processes, ``--batch-size``) over :class:`FrameWindowDataset` against
   the same loader over a dataset reading the same windows from an ``np.memmap`` of the same frames
   (one ``.npy`` file), shuffled and in order; warm page cache, persistent workers, the best epoch of
   several. The same two reads are also timed in this process without a loader (random windows into
   a batch buffer; a full scan), the figures of ``benchmarks.extraction``;
4. **head training from the store over recomputing the frontend every epoch** (what s3prl and
   MARBLE v2 do): the same head (softmax-weighted layer sum, mean over the clip's frames, linear;
   the paper's singer-ID head) trained for ``--epochs`` epochs on the same clips, in the same order,
   from the store through the DataLoader, and from audio run through the frontend every epoch
   (audio decoded once and kept in memory, which favours the recompute). The recompute is measured
   for ``--recompute-epochs`` real epochs; when that is fewer than ``--epochs`` its total is
   extrapolated (per-epoch mean x epochs) and the table says so. Shown with and without the one-time
   build;
5. **peak memory**: peak RSS (``VmHWM`` of ``/proc/self/status``) of this process during each
   measurement, reset before it by writing 5 to ``/proc/self/clear_refs`` (where the kernel refuses,
   the peak since the start, and the table says so); worker processes are reported apart
   (DataLoader workers: their own ``VmHWM`` read while they are alive; the build's decoding
   workers: ``ru_maxrss`` of the finished children).

Backbones: a registry name (default ``crepe-tiny``), ``--model-path`` a local Hugging Face folder,
or ``--random-base`` a randomly initialised base-size ``Wav2Vec2Model`` (12 x 768) saved to a
folder and loaded from it (:func:`benchmarks.memory.save_model`), for GPU runs. On CUDA the GPU's
busy share during the build is sampled with ``nvidia-smi``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.extraction import (check_against_store, cpu_snapshot, decode_clips, forward_batches,
                                   frontend_device, machine_facts, read_windows, sync, time_build, time_forward,
                                   time_naive, time_random_reads, time_scan_copy, usage_between, write_memmap)
from benchmarks.memory import peak_rss, save_model
from benchmarks.workdir import work_folder
from featurestore import open_store
from featurestore.build import ExtractSettings, resolve_batch_seconds
from featurestore.cli import HelpFormatter, parse_spec
from featurestore.clips import ClipSettings
from featurestore.datasets import FrameWindowDataset
from featurestore.demo import make_demo_corpus
from featurestore.frontends import load_frontend
from featurestore.options import SpecError, add_config_options, add_options, option, to_dict
from featurestore.registry import DEFAULT_BACKBONE
from heads.finetune_model import masked_mean
from heads.modules import SumThenHead

MB = 1e6
N_SINGERS = 4


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpeedSpec:
    """What one run of the speed table measures (fields = the command's options, ``--config`` keys
    and keywords). Durations in seconds unless named minutes; ``device`` None: cuda when available."""

    backbone: str | None = option(None, f"registry name of the frontend (default {DEFAULT_BACKBONE}; with "
                                        "--model-path alone, the model in that folder)")
    model_path: str | None = option(None, "a local Hugging Face model folder: the model to measure, or the "
                                          "weights of --backbone")
    random_base: bool = option(False, "measure a randomly initialised base-size Wav2Vec2Model (12 layers x 768) "
                                      "saved to a folder and loaded from it (for GPU runs)")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)", identity=False)
    minutes: float = option(3.0, "minutes of demo audio (4 singers, files of --file-seconds, at least 3 files "
                                 "each)")
    file_seconds: float = option(15.0, "length of each demo file; the build cuts it into 5 s clips")
    num_workers: int = option(2, "worker processes of the build's decoding and of the DataLoaders")
    batch_size: int = option(8, "clips (windows) per batch, reads and training")
    epochs: int = option(10, "training epochs of the head")
    recompute_epochs: int = option(2, "epochs of the recompute baseline actually run; fewer than --epochs are "
                                      "extrapolated, and the table says so")
    read_seconds: float = option(2.0, "time each DataLoader read for at least this long (best epoch reported)")
    lr: float = option(3e-3, "Adam learning rate of the head (the paper's stage 1)")
    seed: int = option(0, "seed of the head, the epoch orders and read positions")
    workdir: str | None = option(None, "folder for the corpus, stores and outputs (default: a temporary folder, "
                                       "removed at the end)", identity=False)
    json: str | None = option(None, "write all results as JSON to this file", metavar="OUT", identity=False)
    out: str | None = option(None, "write the table as markdown to this file", metavar="MD", identity=False)
    no_warmup: bool = option(False, "skip the small untimed build that warms up imports, kernels and worker "
                                    "start-up (the timed build then pays for them)")
    quiet: bool = option(False, "no progress lines on stderr", identity=False)

    def __post_init__(self):
        if self.random_base and (self.backbone or self.model_path):
            raise SpecError("random_base", "measures its own model: leave out backbone and model_path")
        if not self.minutes > 0:
            raise SpecError("minutes", f"must be > 0, got {self.minutes}")
        if not self.file_seconds >= 1.0:
            raise SpecError("file_seconds", f"must be >= 1, got {self.file_seconds}")
        for name in ("batch_size", "epochs", "recompute_epochs"):
            if getattr(self, name) < 1:
                raise SpecError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise SpecError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.recompute_epochs > self.epochs:
            raise SpecError("recompute_epochs", f"{self.recompute_epochs} must not exceed epochs ({self.epochs})")
        for name in ("read_seconds", "lr"):
            if not getattr(self, name) > 0:
                raise SpecError(name, f"must be > 0, got {getattr(self, name)}")
        if self.device is not None and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SpecError("device", f"{self.device}: torch sees no CUDA device here")

    def resolved_device(self) -> str:
        """``device``, or cuda when torch sees one, else cpu."""
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


def parse_args(argv=None) -> SpeedSpec:
    """Command-line options (see ``--help``) -> the spec; ``--print-config`` prints it and exits."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="The speed table: build vs bare forward passes and vs a naive loop, store window reads "
                    "vs a raw memmap through torch DataLoaders, head training from the store vs recomputing "
                    "the frontend every epoch, and peak RSS; one run on one demo corpus, each speed a ratio "
                    "against a baseline measured in the same run.",
        formatter_class=HelpFormatter)
    add_options(p, SpeedSpec)
    add_config_options(p)
    return parse_spec(p, SpeedSpec, argv)


def say(quiet: bool, msg: str) -> None:
    """A progress line on stderr (the table goes to stdout) unless ``quiet``."""
    if not quiet:
        print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``). False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children_peak_mib() -> dict[int, float]:
    """{pid: ``VmHWM`` in MiB} of this process's live child processes (DataLoader workers); {} if
    unknown. A forked worker's peak counts the parent's pages it shares, as RSS does."""
    out = {}
    try:
        pids = set()
        for task in Path("/proc/self/task").iterdir():
            pids.update((task / "children").read_text().split())
        for pid in sorted(pids):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[int(pid)] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


class Stage:
    """``with Stage(results, name):`` records the peak RSS of this process during the block (reset at
    its start where the kernel allows), the largest finished child's ``ru_maxrss`` (cumulative over the
    run), and CPU use by others meanwhile (:func:`benchmarks.extraction.usage_between`)."""

    def __init__(self, mem: dict, name: str):
        self.mem, self.name = mem, name

    def __enter__(self):
        self.reset = reset_peak_rss()
        self.snap = cpu_snapshot()
        return self

    def __exit__(self, *exc):
        nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        p = peak_rss()
        self.mem[self.name] = {"self_peak_mib": p["self_mib"], "since_start": not self.reset,
                               "finished_children_max_mib": p["workers_mib"],
                               **usage_between(self.snap, cpu_snapshot(), nproc)}
        return False


# ----------------------------------------------------------------------------------------------
# GPU utilisation during the build
# ----------------------------------------------------------------------------------------------

class GpuSampler:
    """Samples ``nvidia-smi``'s utilization.gpu (% of time a kernel ran) every ``every`` seconds in a
    thread; ``result()`` -> {mean_percent, samples} or None when nothing could be read."""

    def __init__(self, device: str, every: float = 0.25):
        self.every, self.samples, self.stop = every, [], threading.Event()
        index = torch.device(device).index
        self.index = torch.cuda.current_device() if index is None else index
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self.index)]
        while not self.stop.is_set():
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
                self.samples.append(float(r.stdout.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self.stop.wait(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False

    def result(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_percent": float(np.mean(self.samples)), "samples": len(self.samples)}


# ----------------------------------------------------------------------------------------------
# reads through torch Datasets
# ----------------------------------------------------------------------------------------------

class MemmapWindows(torch.utils.data.Dataset):
    """The baseline: the windows of a :class:`FrameWindowDataset` (its ``index``), read from a raw
    ``np.memmap`` [F, L, D] of the same frames, items in the same format (float32 ``x`` [W, L, D]
    zero-padded past ``length``, ``row``, ``start``, ``length``), written the plain way."""

    def __init__(self, mm: np.ndarray, offsets: np.ndarray, like: FrameWindowDataset):
        self.mm, self.offsets, self.index, self.window = mm, offsets, like.index, like.window
        self.n = offsets[:, 1] - offsets[:, 0]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        row, start = self.index[i]
        a = int(self.offsets[row, 0])
        stop = min(start + self.window, int(self.n[row]))
        x = np.zeros((self.window,) + self.mm.shape[1:], dtype=np.float32)
        x[:stop - start] = self.mm[a + start:a + stop]
        return {"x": torch.from_numpy(x), "row": row, "start": start, "length": stop - start}


class EpochOrders(torch.utils.data.Sampler):
    """A sampler that yields a fixed list of orders, one per iteration (epoch), cycling: the store
    and the recompute path see the same clips in the same order."""

    def __init__(self, orders: list[list[int]]):
        self.orders, self.epoch = orders, 0

    def __len__(self):
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[self.epoch % len(self.orders)]
        self.epoch += 1
        return iter(order)


def make_loader(ds, sampler, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """The loader a head trains with: ``batch_size`` items per batch, ``num_workers`` persistent workers."""
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


def time_epoch(loader) -> tuple[float, int]:
    """One pass over a loader, batches only received -> (seconds, bytes of x)."""
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["x"].numel() * batch["x"].element_size()
    return time.perf_counter() - t0, n


def loader_reads(ds_store, ds_mm, spec: SpeedSpec, shuffle: bool) -> dict:
    """Best epoch of the store's and the memmap's loaders, alternated epoch by epoch until each has
    run ``--read-seconds``, after one untimed warm-up epoch each (workers started, pages cached)."""
    rng = np.random.default_rng(spec.seed)
    n = len(ds_store)
    orders = [rng.permutation(n).tolist() if shuffle else list(range(n)) for _ in range(64)]
    loaders = {"store": make_loader(ds_store, EpochOrders(orders), spec.batch_size, spec.num_workers),
               "memmap": make_loader(ds_mm, EpochOrders(orders), spec.batch_size, spec.num_workers)}
    res, pids = {}, {}
    for name, loader in loaders.items():
        before = set(children_peak_mib())
        time_epoch(loader)  # warm-up epoch: workers started, pages cached
        pids[name] = set(children_peak_mib()) - before
        res[name] = {"epochs": [], "bytes": 0}
    while min(sum(r["epochs"]) for r in res.values()) < spec.read_seconds or min(len(r["epochs"]) for r in res.values()) < 3:
        for name, loader in loaders.items():
            s, nbytes = time_epoch(loader)
            res[name]["epochs"].append(s)
            res[name]["bytes"] = nbytes
    peaks = children_peak_mib()
    for name in loaders:
        res[name]["workers_peak_mib"] = [peaks[p] for p in sorted(pids[name]) if p in peaks]
    del loaders
    for r in res.values():
        r["seconds"] = min(r["epochs"])
        r["mb_per_s"] = r["bytes"] / MB / r["seconds"]
    res["ratio"] = res["memmap"]["seconds"] / res["store"]["seconds"]
    return res


def same_items(ds_store, ds_mm, k: int = 4) -> bool:
    """The store's and the memmap's datasets hand out identical items (checked on ``k`` of them)."""
    for i in np.linspace(0, len(ds_store) - 1, min(k, len(ds_store))).astype(int):
        a, b = ds_store[int(i)], ds_mm[int(i)]
        if not (torch.equal(a["x"], b["x"]) and a["length"] == b["length"] and a["row"] == b["row"]):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# head training: from the store vs recomputing the frontend every epoch
# ----------------------------------------------------------------------------------------------

def new_head(L: int, D: int, C: int, seed: int, lr: float, device) -> tuple[SumThenHead, torch.optim.Optimizer]:
    """The paper's clip head (softmax-weighted layer sum, mean over each clip's valid frames, linear:
    :class:`heads.modules.SumThenHead` on :func:`heads.finetune_model.masked_mean`) for ``L`` layers x ``D``
    dims and ``C`` classes, initialised from ``seed`` (the same weights for both paths), and its Adam at ``lr``."""
    torch.manual_seed(seed)
    head = SumThenHead(L, D, torch.nn.Linear(D, C)).to(device)
    return head, torch.optim.Adam(head.parameters(), lr=lr)


def step(head, opt, x, lengths, y) -> float:
    """One optimiser step of cross-entropy on a batch x [B, T, L, D] with ``lengths`` [B] valid frames
    -> the batch loss."""
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    loss = torch.nn.functional.cross_entropy(head(masked_mean(x, mask)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_from_store(ds, labels: torch.Tensor, orders, shape, n_classes, spec: SpeedSpec) -> dict:
    """``--epochs`` epochs of the head, batches from the store through the DataLoader (worker start
    included in the time) -> {seconds, epoch_seconds, losses (mean per epoch)}."""
    dev = torch.device(spec.device)
    head, opt = new_head(*shape, n_classes, spec.seed, spec.lr, dev)
    loader = make_loader(ds, EpochOrders(orders), spec.batch_size, spec.num_workers)
    t0 = time.perf_counter()
    epochs, losses = [], []
    for _ in range(spec.epochs):
        e0, tot, nb = time.perf_counter(), 0.0, 0
        for batch in loader:
            x = batch["x"].to(dev, non_blocking=True)
            n = batch["length"].to(dev)
            tot += step(head, opt, x, n, labels[batch["row"]].to(dev))
            nb += 1
        sync(dev)
        epochs.append(time.perf_counter() - e0)
        losses.append(tot / nb)
    seconds = time.perf_counter() - t0
    del loader
    return {"seconds": seconds, "epoch_seconds": epochs, "losses": losses}


def train_recompute(fe, waves: list[np.ndarray], index: list[tuple[int, int]], n_frames: np.ndarray,
                    labels: torch.Tensor, orders, shape, n_classes, spec: SpeedSpec) -> dict:
    """``--recompute-epochs`` epochs of the same head on the same clips in the same order, each batch's
    audio run through the frontend again (no grad), as s3prl and MARBLE v2 train -> {seconds (of the
    epochs run), epoch_seconds, losses}. ``waves``: each clip's audio, decoded once, padded by
    ``fe.pad``; ``index``: the dataset's (row, start) items (whole clips)."""
    dev = frontend_device(fe)
    head, opt = new_head(*shape, n_classes, spec.seed, spec.lr, dev)
    epochs, losses = [], []
    t0 = time.perf_counter()
    for e in range(spec.recompute_epochs):
        e0, tot, nb = time.perf_counter(), 0.0, 0
        order = orders[e % len(orders)]
        for i in range(0, len(order), spec.batch_size):
            rows = [index[j][0] for j in order[i:i + spec.batch_size]]
            longest = max(len(waves[r]) for r in rows)
            x = torch.zeros(len(rows), longest)
            for k, r in enumerate(rows):
                x[k, :len(waves[r])] = torch.from_numpy(waves[r])
            lengths = torch.tensor([len(waves[r]) for r in rows])
            with torch.no_grad():
                h = fe.hidden_states(x.to(dev), lengths.to(dev))
            n = torch.tensor([int(n_frames[r]) for r in rows], device=dev)
            h = h[:, :int(n.max())].float()
            tot += step(head, opt, h, n, labels[rows].to(dev))
            nb += 1
        sync(dev)
        epochs.append(time.perf_counter() - e0)
        losses.append(tot / nb)
    return {"seconds": time.perf_counter() - t0, "epoch_seconds": epochs, "losses": losses}


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def resolve_backbone(spec: SpeedSpec, workdir: Path) -> tuple[str, str | None, str]:
    """(backbone argument of build/load_frontend, model_path or None, label for the table)."""
    if spec.random_base:
        folder = workdir / "wav2vec2-base-random"
        if not (folder / "config.json").exists():
            save_model(folder, "base")
        return str(folder), None, "random-initialised Wav2Vec2Model, base size (12 x 768)"
    if spec.model_path and not spec.backbone:
        return str(spec.model_path), None, f"model folder {spec.model_path}"
    bb = spec.backbone or DEFAULT_BACKBONE
    return bb, spec.model_path, bb + (f" (weights from {spec.model_path})" if spec.model_path else "")


def corpus_files(minutes: float, file_seconds: float) -> int:
    """Demo files per singer for ``minutes`` of audio in files of ``file_seconds`` (at least 3: train,
    valid, test)."""
    return max(3, round(minutes * 60 / (N_SINGERS * file_seconds)))


def run_speed(spec: SpeedSpec) -> dict:
    """Every measurement of the speed table on one demo corpus, in ``spec.workdir`` (None: a temporary
    folder, removed afterwards) -> the results dict (what ``--json`` writes; :func:`format_table` prints it)."""
    spec = replace(spec, device=spec.resolved_device())
    with work_folder(spec.workdir, "singfront-speed-") as workdir:
        return run(spec, workdir)


def run(spec: SpeedSpec, workdir: Path) -> dict:
    """:func:`run_speed` in ``workdir``; ``spec.device`` must be resolved (not None)."""
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    mem: dict = {}
    backbone, model_path, label = resolve_backbone(spec, workdir)
    build_kw = {"device": spec.device, "model_path": model_path}
    per_singer = corpus_files(spec.minutes, spec.file_seconds)
    say(spec.quiet, f"demo corpus: {N_SINGERS} singers x {per_singer} files x {spec.file_seconds:g} s")
    manifest = make_demo_corpus(workdir / "corpus", n_singers=N_SINGERS, clips_per_singer=per_singer,
                                duration_s=spec.file_seconds)
    # the build: a small untimed build first (imports, kernels, worker start-up paths), then the timed one
    if not spec.no_warmup:
        say(spec.quiet, f"warm-up build ({label}, {spec.device})")
        warm = make_demo_corpus(workdir / "warm-corpus", n_singers=1, clips_per_singer=3, duration_s=2.0)
        time_build(warm, workdir / "warm.zarr", backbone, spec.num_workers, **build_kw)
    say(spec.quiet, "build")
    gpu = GpuSampler(spec.device) if spec.device.startswith("cuda") else None
    with Stage(mem, "build"):
        if gpu:
            with gpu:
                build_s, summary = time_build(manifest, workdir / "bench.zarr", backbone, spec.num_workers, **build_kw)
        else:
            build_s, summary = time_build(manifest, workdir / "bench.zarr", backbone, spec.num_workers, **build_kw)
    store = open_store(workdir / "bench.zarr")
    bb = store.backbones[0]
    offsets = store.offsets(bb)
    n_frames = offsets[:, 1] - offsets[:, 0]
    frames = store.frames_array(bb)
    L, D = store.shape(bb)
    clips = store.clips
    audio_s = float(np.sum(np.asarray(clips["end_s"]) - np.asarray(clips["start_s"])))

    # bare forward passes over the same clips, the build's batch size for this device
    say(spec.quiet, "bare forward passes")
    fe = load_frontend(backbone, path=model_path, device=spec.device)
    waves = decode_clips(clips, fe)
    ext = ExtractSettings(batch_s=resolve_batch_seconds(None, spec.device))
    batches = forward_batches(waves, n_frames, fe, ext)
    with torch.inference_mode():  # warm-up: one row of the first batch
        dev = frontend_device(fe)
        fe.hidden_states(batches[0][0][:1].to(dev), batches[0][1][:1].to(dev))
    with Stage(mem, "forward"):
        fwd_s, _ = time_forward(fe, batches)
    check = check_against_store(fe, batches[-1], frames, offsets)
    del batches

    # the naive loop
    say(spec.quiet, "naive per-file loop")
    with Stage(mem, "naive"):
        naive_s, naive = time_naive(manifest, fe, workdir / "naive", ClipSettings())

    # reads: the store vs a raw memmap of the same frames, warm cache
    say(spec.quiet, "reads: store vs raw memmap")
    mm = write_memmap(frames, workdir / "frames.npy", frames.chunks[0] * 8)
    window = int(n_frames.max())  # one window = one whole clip, as the head below trains
    ds_store = FrameWindowDataset(store, bb, window=window)
    ds_mm = MemmapWindows(mm, offsets, ds_store)
    identical = same_items(ds_store, ds_mm)
    reads = {}
    for kind, shuffle in (("random", True), ("scan", False)):
        with Stage(mem, f"reads_{kind}"):
            reads[kind] = loader_reads(ds_store, ds_mm, spec, shuffle)
    reader = store._reader(bb)
    windows = read_windows(offsets, window, max(1000, 4 * len(ds_store)), spec.seed)
    block = frames.chunks[0] * 8
    time_scan_copy(reader, block)
    time_scan_copy(mm, block)
    inproc = {}
    for kind in ("random", "scan"):
        r = {}
        for name, arr in (("store", reader), ("memmap", mm)):
            best = math.inf
            for _ in range(3):
                if kind == "random":
                    s, extra = time_random_reads(arr, windows, spec.batch_size)
                else:
                    s, extra = time_scan_copy(arr, block, min_seconds=spec.read_seconds / 4)
                s = s / extra.get("passes", 1)
                best = min(best, s)
            r[name] = {"seconds": best, "mb_per_s": extra["bytes"] / extra.get("passes", 1) / MB / best}
        r["ratio"] = r["memmap"]["seconds"] / r["store"]["seconds"]
        inproc[kind] = r
    del mm

    # head training: 10 epochs from the store vs the frontend recomputed every epoch
    say(spec.quiet, f"head training: {spec.epochs} epochs from the store")
    singers = store.labels("singer")
    classes = sorted(set(singers.tolist()))
    labels = torch.tensor([classes.index(v) for v in singers.tolist()])
    rng = np.random.default_rng(spec.seed + 1)
    orders = [rng.permutation(len(ds_store)).tolist() for _ in range(spec.epochs)]
    with Stage(mem, "train_store"):
        tr_store = train_from_store(ds_store, labels, orders, (L, D), len(classes), spec)
    say(spec.quiet, f"head training: {spec.recompute_epochs} epoch(s) recomputing the frontend")
    with Stage(mem, "train_recompute"):
        tr_re = train_recompute(fe, waves, ds_store.index, n_frames, labels, orders, (L, D), len(classes), spec)
    per_epoch = tr_re["seconds"] / spec.recompute_epochs
    recompute_total = per_epoch * spec.epochs
    k = spec.recompute_epochs
    loss_diff = max(abs(a - b) for a, b in zip(tr_store["losses"][:k], tr_re["losses"]))

    def row(name, baseline, seconds, base_seconds, mem_keys, note=""):
        return {"name": name, "baseline": baseline, "seconds": seconds, "baseline_seconds": base_seconds,
                "speed": base_seconds / seconds, "mem": [mem[m]["self_peak_mib"] for m in mem_keys], "note": note}

    dl = f"DataLoader, {spec.num_workers} workers, batch {spec.batch_size}"
    extrapolated = k < spec.epochs
    re_note = (f"measured {k} of {spec.epochs} epochs ({per_epoch:.2f} s each), extrapolated x {spec.epochs}/{k}"
               if extrapolated else f"all {spec.epochs} epochs measured")
    rows = [
        row("featurestore build", "bare forward passes of the frontend", build_s, fwd_s, ["build", "forward"]),
        row("featurestore build", "naive per-file loop (load, model per 5 s segment, np.save per layer)",
            build_s, naive_s, ["build", "naive"]),
        row(f"store window-batch reads, shuffled ({dl})", "raw np.memmap, same windows, same loader",
            reads["random"]["store"]["seconds"], reads["random"]["memmap"]["seconds"], ["reads_random"],
            "best epoch, seconds per epoch; peak RSS of this process with both loaders"),
        row(f"store window-batch reads, in order ({dl})", "raw np.memmap, same windows, same loader",
            reads["scan"]["store"]["seconds"], reads["scan"]["memmap"]["seconds"], ["reads_scan"],
            "best epoch, seconds per epoch; peak RSS of this process with both loaders"),
        row("store reader, random windows into a batch buffer (no loader)", "raw np.memmap",
            inproc["random"]["store"]["seconds"], inproc["random"]["memmap"]["seconds"], [],
            f"{len(windows)} windows"),
        row("store reader, full sequential scan (no loader)", "raw np.memmap",
            inproc["scan"]["store"]["seconds"], inproc["scan"]["memmap"]["seconds"], [], "seconds per scan"),
        row(f"head training, {spec.epochs} epochs from the store, build included",
            "recomputing the frontend every epoch", build_s + tr_store["seconds"], recompute_total,
            ["train_store", "train_recompute"], re_note),
        row(f"head training, {spec.epochs} epochs from the store (already built)",
            "recomputing the frontend every epoch", tr_store["seconds"], recompute_total,
            ["train_store", "train_recompute"], re_note),
    ]
    facts = machine_facts()
    if spec.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(spec.device))
    return {
        "machine": {**facts, "device": spec.device, "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "config": {k_: v for k_, v in to_dict(spec).items() if k_ not in ("json", "out", "workdir", "quiet")},
        "backbone": label,
        "corpus": {"files": N_SINGERS * per_singer, "clips": len(store), "audio_seconds": audio_s,
                   "frames": int(n_frames.sum()), "layers": L, "dim": D, "dtype": str(frames.dtype),
                   "window_frames": window, "windows": len(ds_store)},
        "rows": rows,
        "build": {"seconds": build_s, "summary": summary, "gpu_busy": gpu.result() if gpu else None},
        "forward": {"seconds": fwd_s, "batch_seconds": ext.batch_s, "check_max_rel_diff": check},
        "naive": {"seconds": naive_s, **naive},
        "reads": {"loader": reads, "in_process": inproc, "identical_items": identical},
        "training": {"store": tr_store, "recompute": tr_re, "recompute_total_seconds": recompute_total,
                     "recompute_extrapolated": extrapolated, "max_loss_diff_same_epochs": loss_diff},
        "memory": mem,
        "total_seconds": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------

def machine_line(r: dict) -> str:
    m = r["machine"]
    dev = f"cuda ({m['gpu']})" if m.get("gpu") else m["device"]
    return (f"machine: {m['nproc']} CPU cores ({m['cpu_model']}), device {dev}, torch {m['torch']} with "
            f"{m['torch_threads']} threads; load average {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")


def format_table(r: dict) -> str:
    """The markdown table (machine and corpus above it, notes below)."""
    c = r["corpus"]
    lines = [machine_line(r),
             f"audio: {c['audio_seconds']:.0f} s ({c['files']} demo files, {c['clips']} clips of <= 5 s) -> "
             f"{c['frames']} frames x {c['layers']} layers x {c['dim']} dims ({r['backbone']}, {c['dtype']})", "",
             "| measurement | baseline (same audio, same run) | seconds | baseline seconds | speed vs baseline | "
             "peak RSS MiB (measured / baseline) | notes |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        mem = " / ".join(f"{v:.0f}" for v in row["mem"]) or "-"
        lines.append(f"| {row['name']} | {row['baseline']} | {row['seconds']:.3f} | {row['baseline_seconds']:.3f} | "
                     f"{row['speed']:.2f}x | {mem} | {row['note']} |")
    mem = r["memory"]
    peak = max(v["self_peak_mib"] for v in mem.values())
    workers = [w for kind in ("random", "scan") for w in r["reads"]["loader"][kind]["store"]["workers_peak_mib"]]
    since = any(v["since_start"] for v in mem.values())
    lines.append(f"| peak memory | - | - | - | - | {peak:.0f} | peak RSS of the benchmark process over all rows "
                 f"(VmHWM{', not resettable here: peaks since the start' if since else ', reset before each row'}); "
                 f"build's decoding workers <= {mem['build']['finished_children_max_mib']:.0f} MiB; store DataLoader "
                 f"workers <= {max(workers, default=float('nan')):.0f} MiB each |")
    b, t = r["build"], r["training"]
    notes = ["", "speed = baseline seconds / seconds (above 1: faster than the baseline). Reads: warm page cache, "
             "persistent workers, best of several epochs, alternated store / memmap; items are float32 windows of "
             f"{c['window_frames']} frames (one clip each), identical for both: {r['reads']['identical_items']}.",
             f"Training: the paper's singer-ID head (softmax layer weights, mean over frames, linear), Adam "
             f"lr {r['config']['lr']:g}, same clips in the same order; recompute runs the frontend with no grad on "
             f"audio decoded once and kept in memory; largest per-epoch loss difference over the epochs both ran: "
             f"{t['max_loss_diff_same_epochs']:.2e} (the store holds float16).",
             f"Forward passes reproduce the stored frames to {r['forward']['check_max_rel_diff']:.1e} (relative)."]
    if b.get("gpu_busy"):
        notes.append(f"GPU busy during the build: {b['gpu_busy']['mean_percent']:.0f} % "
                     f"(nvidia-smi utilization.gpu, {b['gpu_busy']['samples']} samples).")
    others = [v["other_load"] for v in mem.values() if v.get("other_load") is not None]
    if others:
        notes.append(f"Other processes used up to {100 * max(others):.0f} % of the CPUs during a row "
                     "(timings are clean near 0 %).")
    return "\n".join(lines + notes)


def main(argv=None) -> int:
    """Run the benchmark, print the table, write ``--json`` / ``--out`` if asked."""
    spec = parse_args(argv)
    results = run_speed(spec)
    table = format_table(results)
    print(table)
    if spec.out:
        Path(spec.out).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.out).write_text(table + "\n")
    if spec.json:
        Path(spec.json).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

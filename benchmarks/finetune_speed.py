"""``python -m benchmarks.finetune_speed``: fine-tuning throughput and peak memory, with and without
autocast and gradient checkpointing.

    python -m benchmarks.finetune_speed --model base --device cuda          # on a GPU (the issue's figures)
    python -m benchmarks.finetune_speed --model tiny --steps 3              # a quick check on CPU

A randomly initialised ``Wav2Vec2Model`` (``base``: 12 x 768, the compute of the real base-size
frontends) is fine-tuned the way ``heads.finetune --mode two-stage`` does it in stage 2 (transformer
encoder learning, CNN frozen, softmax layer weights + linear head on mean-pooled hidden states,
Adam), one optimiser step per batch of ``--batch-size`` clips of ``--clip-seconds`` random audio.
Each configuration (precision fp32 / bf16 / fp16 on CUDA; gradient checkpointing off / on) runs in
a fresh process, so each peak is its own: peak RSS (``VmHWM``) and, on CUDA,
``torch.cuda.max_memory_allocated``. Speeds are samples (clips) per second over ``--steps`` timed
steps after 2 warm-up steps, and ratios against the fp32 run without checkpointing of the same
invocation.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.extraction import machine_facts
from benchmarks.memory import MODELS, peak_rss, save_model
from benchmarks.workdir import run_child as fresh_process, work_folder
from featurestore.cli import HelpFormatter


@dataclass(frozen=True)
class SpeedSettings:
    """One invocation: ``model`` ("base" or "tiny" random Wav2Vec2), torch ``device``, ``batch_size``
    clips of ``clip_seconds`` s per step, ``steps`` timed optimiser steps per configuration."""

    model: str = "base"
    device: str = "cpu"
    batch_size: int = 8
    clip_seconds: float = 5.0
    steps: int = 10

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r}: expected one of {', '.join(sorted(MODELS))}")
        if self.batch_size < 1 or self.steps < 1 or not self.clip_seconds > 0:
            raise ValueError(f"batch_size ({self.batch_size}) and steps ({self.steps}) must be >= 1 and clip_seconds "
                             f"({self.clip_seconds}) > 0")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_speed", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="base", help="random Wav2Vec2 size")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=8, help="clips per step")
    p.add_argument("--clip-seconds", type=float, default=5.0, help="length of each clip (s)")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    p.add_argument("--workdir", default=None, help="where the random model is saved (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        settings_from_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def settings_from_args(args: argparse.Namespace) -> SpeedSettings:
    return SpeedSettings(model=args.model, device=args.device, batch_size=args.batch_size,
                         clip_seconds=args.clip_seconds, steps=args.steps)


def measure(model_dir, s: SpeedSettings, precision: str, checkpointing: str) -> dict:
    """One configuration (``precision`` fp32/bf16/fp16, ``checkpointing`` "off"/"on") in this process
    -> its figures: seconds of the timed steps, samples (clips) per second, peak RSS (MiB) and on CUDA
    the peak allocated memory (MiB)."""
    import numpy as np
    import torch

    from featurestore.frontends import load_frontend
    from heads.clip_heads import LinearHead
    from heads.finetune import ClipTask
    from heads.finetune_loop import LossStep, autocast_dtype
    from heads.finetune_model import (FineTuneModel, enable_gradient_checkpointing, set_train_mode,
                                      skip_cnn_backward, trainable_parts)

    device = torch.device(s.device)
    torch.manual_seed(0)
    fe = load_frontend(str(model_dir), noise={"layerdrop": 0.0, "mask_time_prob": 0.0, "dropout": None})
    skip_cnn_backward(fe, "two-stage")
    if checkpointing == "on":
        enable_gradient_checkpointing(fe)
    n_classes = 20
    est = LinearHead()
    model = FineTuneModel(fe, est.build_module(fe.num_layers, fe.dim, n_classes), "clip").to(device)
    for p in model.frontend.parameters():
        p.requires_grad_(False)
    parts = [p for _, p in trainable_parts(fe, "two-stage")]
    for p in parts:
        p.requires_grad_(True)
    set_train_mode(model, True)
    labels = np.arange(s.batch_size) % n_classes
    task = ClipTask(est, labels, labels, np.arange(n_classes), device)
    opt = torch.optim.Adam([{"params": list(model.head.parameters()), "lr": 3e-3}, {"params": parts, "lr": 5e-5}])
    step = LossStep(model, task, autocast_dtype(precision, device), True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    n = int(s.clip_seconds * fe.sample_rate)
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(n, generator=g).to(device) for _ in range(s.batch_size)]
    batch = {"i": list(range(s.batch_size)), "first": [0] * s.batch_size}

    def one():
        opt.zero_grad(set_to_none=True)
        scaler.scale(step(waves, batch)).backward()
        scaler.step(opt)
        scaler.update()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        one()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        one()
    sync()
    seconds = time.perf_counter() - t0
    out = {"precision": precision, "checkpointing": checkpointing, "seconds": seconds,
           "samples_per_s": s.steps * s.batch_size / seconds, **peak_rss()}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def measure_in_fresh_process(model_dir, s: SpeedSettings, config: str) -> dict:
    """:func:`measure` of one configuration (``"fp32,off"``) in a fresh process of this command, so
    its memory peaks are its own."""
    return fresh_process("benchmarks.finetune_speed", [
        "--child", config, "--model-dir", model_dir, "--model", s.model, "--device", s.device,
        "--batch-size", s.batch_size, "--clip-seconds", s.clip_seconds, "--steps", s.steps])


def configs(device: str) -> list[str]:
    """fp32 and (on CUDA) bf16 / fp16, each without and with gradient checkpointing; fp32 without first."""
    import torch

    precisions = ["fp32"] + (["bf16", "fp16"] if torch.device(device).type == "cuda" else [])
    return [f"{p},{c}" for p in precisions for c in ("off", "on")]


def format_table(r: dict) -> str:
    base = r["rows"][0]
    cuda = "cuda_peak_mib" in base
    lines = [f"machine: {r['machine']['nproc']} CPU cores ({r['machine']['cpu_model']}), device {r['device']}, "
             f"model {r['model']} (random init), batch {r['batch_size']} x {r['clip_seconds']:g} s, "
             f"{r['steps']} timed steps",
             "", "| precision | grad. checkpointing | samples/s | x fp32 | peak RSS MiB |"
             + (" CUDA peak MiB | x fp32 memory |" if cuda else ""),
             "|---|---|---|---|---|" + ("---|---|" if cuda else "")]
    for row in r["rows"]:
        cells = [row["precision"], row["checkpointing"], f"{row['samples_per_s']:.2f}",
                 f"{row['samples_per_s'] / base['samples_per_s']:.2f}", f"{row['self_mib']:.0f}"]
        if cuda:
            cells += [f"{row['cuda_peak_mib']:.0f}", f"{row['cuda_peak_mib'] / base['cuda_peak_mib']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if not cuda:
        lines += ["", "(CPU: no autocast rows; peak RSS includes the model and the allocator's cache)"]
    return "\n".join(lines)


def run(s: SpeedSettings, workdir=None) -> dict:
    """Every configuration of :func:`configs`, each in its own process, on one random model saved
    under ``workdir`` (default: a temporary folder) -> {machine, settings, rows}."""
    with work_folder(workdir, "finetune-speed-") as work:
        model_dir = save_model(Path(work) / f"w2v2-{s.model}", s.model)
        rows = [measure_in_fresh_process(model_dir, s, c) for c in configs(s.device)]
    return {"machine": machine_facts(), "device": s.device, "model": s.model, "batch_size": s.batch_size,
            "clip_seconds": s.clip_seconds, "steps": s.steps, "rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    s = settings_from_args(args)
    if args.child:
        precision, checkpointing = args.child.split(",")
        print(json.dumps(measure(args.model_dir, s, precision, checkpointing)))
        return 0
    r = run(s, args.workdir)
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

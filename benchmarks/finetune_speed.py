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
from pathlib import Path

from benchmarks.extraction import machine_facts
from benchmarks.memory import peak_rss, save_model
from benchmarks.workdir import run_child as fresh_process, work_folder
from featurestore.cli import HelpFormatter


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_speed", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", choices=["base", "tiny"], default="base", help="random Wav2Vec2 size")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=8, help="clips per step")
    p.add_argument("--clip-seconds", type=float, default=5.0, help="length of each clip (s)")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    p.add_argument("--workdir", default=None, help="where the random model is saved (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or not args.clip_seconds > 0:
        p.error("--batch-size and --steps must be >= 1 and --clip-seconds > 0")
    return args


def child(args) -> dict:
    """One configuration (``--child precision,checkpointing``) in this process -> its figures."""
    import numpy as np
    import torch

    from featurestore.frontends import load_frontend
    from heads.clip_heads import LinearHead
    from heads.finetune import ClipTask
    from heads.finetune_loop import LossStep, autocast_dtype
    from heads.finetune_model import (FineTuneModel, enable_gradient_checkpointing, set_train_mode,
                                      skip_cnn_backward, trainable_parts)
    from heads.modules import SumThenHead

    precision, ckpt = args.child.split(",")
    device = torch.device(args.device)
    torch.manual_seed(0)
    fe = load_frontend(args.model_dir, noise={"layerdrop": 0.0, "mask_time_prob": 0.0, "dropout": None})
    skip_cnn_backward(fe, "two-stage")
    if ckpt == "on":
        enable_gradient_checkpointing(fe)
    n_classes = 20
    est = LinearHead()
    model = FineTuneModel(fe, SumThenHead(fe.num_layers, fe.dim, est._make_head(fe.dim, n_classes)), "clip").to(device)
    for p in model.frontend.parameters():
        p.requires_grad_(False)
    parts = [p for _, p in trainable_parts(fe, "two-stage")]
    for p in parts:
        p.requires_grad_(True)
    set_train_mode(model, True)
    labels = np.arange(args.batch_size) % n_classes
    task = ClipTask(est, labels, labels, np.arange(n_classes), device)
    opt = torch.optim.Adam([{"params": list(model.head.parameters()), "lr": 3e-3}, {"params": parts, "lr": 5e-5}])
    step = LossStep(model, task, autocast_dtype(precision, device), True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    n = int(args.clip_seconds * fe.sample_rate)
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(n, generator=g).to(device) for _ in range(args.batch_size)]
    batch = {"i": list(range(args.batch_size)), "first": [0] * args.batch_size}

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
    for _ in range(args.steps):
        one()
    sync()
    seconds = time.perf_counter() - t0
    out = {"precision": precision, "checkpointing": ckpt, "seconds": seconds,
           "samples_per_s": args.steps * args.batch_size / seconds, **peak_rss()}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def run_child(args, config: str) -> dict:
    """Measure one configuration in a fresh process (:func:`child`)."""
    return fresh_process("benchmarks.finetune_speed", [
        "--child", config, "--model-dir", args.model_dir, "--device", args.device, "--batch-size", args.batch_size,
        "--clip-seconds", args.clip_seconds, "--steps", args.steps])


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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with work_folder(args.workdir, "finetune-speed-") as work:
        args.model_dir = save_model(Path(work) / f"w2v2-{args.model}", args.model)
        rows = [run_child(args, c) for c in configs(args.device)]
    r = {"machine": machine_facts(), "device": args.device, "model": args.model, "batch_size": args.batch_size,
         "clip_seconds": args.clip_seconds, "steps": args.steps, "rows": rows}
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m heads.fit``: train a head against a feature store and write a run folder.

    python -m heads.fit --backbone crepe --head linear              # demo store, singer task
    python -m heads.fit --backbone crepe --head crf                 # demo store, transcription
    python -m heads.fit --store a20.zarr --backbone mert --head mlp --task singer --lr 1e-4,1e-3,1e-2

The run folder holds metrics.json, the saved head (head.json + head.safetensors, :mod:`heads.persist`), predictions.csv (or notes per
clip for transcription), layer_weights.png and, for classification, confusion.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from featurestore.cli import HelpFormatter
from featurestore import open_store
from featurestore.store import BackboneNotInStore
from heads import metrics
from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.evaluation import score_clip_head, score_notes
from heads.protocol import FILE, SCORE_CHOICES, SELECT_CHOICES, protocol_label
from heads.tasks import DEFAULT_POOL, POOLS, TaskError, make_task, pool_suffix

CLIP_HEADS = {"linear": LinearHead, "mlp": MLPHead, "logreg": LogRegHead, "lgbm": LGBMHead}
FRAME_HEADS = ("crf", "frames")
HEADS = tuple(CLIP_HEADS) + FRAME_HEADS


def frame_head_class(name: str):
    from heads.frame_heads import CRFHead, FrameClassifierHead

    return {"crf": CRFHead, "frames": FrameClassifierHead}[name]


def plot_layer_weights(values: np.ndarray, layers: list[int], path: Path, title: str,
                       ylabel: str = "softmax weight (learned)") -> Path:
    """Bar plot of one value per stored layer: ``layers`` are the stored hidden-state indices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(values) + 2.5), 3.2))
    ax.bar(np.arange(len(values)), values, color="#4c72b0")
    if len(values) > 1:
        ax.axhline(1.0 / len(values), color="grey", lw=0.8, ls="--", label="uniform")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("stored hidden-state index (0 = first stored layer)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(np.arange(len(values)), [str(l) for l in layers])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def layer_plot(head) -> tuple[np.ndarray, str] | None:
    """What a head learned per stored layer, and its name: each probe's selection accuracy with
    ``--layers each``, the softmax weights of the torch heads, the per-layer importance of
    ``logreg``/``lgbm`` on concatenated layers, or None (nothing learned per layer: one layer, or
    their mean)."""
    if getattr(head, "layer_scores_", None) is not None:  # --layers each: one probe per layer
        return np.asarray(head.layer_scores_), "probe accuracy (selection split)"
    if getattr(head, "layer_weights_", None) is not None:
        return np.asarray(head.layer_weights_), "softmax weight (learned)"
    if getattr(head, "layer_importance_", None) is not None:
        return np.asarray(head.layer_importance_), "importance (share, from the fitted model)"
    return None


def parse_layers(text: str, n_layers: int):
    """``--layers``: ``all`` -> None, ``each``, ``concat``, or ``i,j,...`` -> stored layer indices (checked)."""
    if text in (None, "all"):
        return None
    if text in ("each", "concat"):
        return text
    try:
        layers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r}: expected all, each or comma-separated layer indices") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {text}: layer(s) {bad} out of range 0..{n_layers - 1}")
    return layers


def make_head(args, n_layers: int):
    layers = parse_layers(args.layers, n_layers)
    if layers == "each" and args.head != "linear":
        raise ValueError("--layers each fits one linear probe per layer: use it with --head linear")
    if layers == "concat" and args.head not in ("logreg", "lgbm"):
        raise ValueError("--layers concat (all layers side by side) is for --head logreg or lgbm")
    if args.head in CLIP_HEADS:
        cls = CLIP_HEADS[args.head]
        if args.context:
            raise ValueError(f"--context is the temporal layer of the frame heads (crf, frames), not of --head "
                             f"{args.head}")
        if args.head in ("logreg", "lgbm"):
            if isinstance(layers, list) and len(layers) > 1:
                raise ValueError(f"--head {args.head} takes one layer (--layers K) or all of them "
                                 "(their mean): not a list")
            features = "mean" if layers is None else layers if layers == "concat" else layers[0]
            return cls(features=features, class_weight=args.class_weight, seed=args.seed)
        return cls(lr=args.lr, epochs=args.epochs, layers=layers, class_weight=args.class_weight, seed=args.seed,
                   device=args.device, progress=not args.no_progress)
    if args.class_weight:
        raise ValueError(f"--class-weight applies to clip heads, not --head {args.head}")
    return frame_head_class(args.head)(lr=args.lr, epochs=args.epochs, layers=layers, context=args.context,
                                       seed=args.seed, device=args.device, progress=not args.no_progress)


def make_plan(args, store, backbone, task):
    """The run's split plan from the command line (see :mod:`heads.protocol`)."""
    return task.plan(store, backbone, group=args.group, score=args.score_split, select=args.select_split,
                     holdout_fraction=args.holdout_fraction, seed=args.seed,
                     allow_same=args.allow_scoring_selection_split)


def run_clip(args, store, backbone, task, out: Path, plan) -> dict:
    X, y, _ = task.data(store, backbone, plan.train)
    Xv, yv, _ = task.data(store, backbone, plan.select)
    Xt, yt, rows = task.data(store, backbone, plan.score)
    head = make_head(args, X.shape[1])
    t0 = time.perf_counter()
    head.fit(X, y, eval_set=(Xv, yv))
    fit_s = time.perf_counter() - t0
    scores = score_clip_head(head, Xt, yt)
    report, proba, known = scores.report, scores.proba, scores.known
    report.update(fit_seconds=fit_s, n_train=len(y), n_selection=len(yv))
    if hasattr(head, "lr_"):
        report["lr"], report["lr_scores"] = head.lr_, {str(k): v for k, v in head.lr_scores_.items()}
    if getattr(head, "layer_scores_", None) is not None:
        report["layer_curve"] = {"layers": [int(l) for l in head.layers_used_],
                                 "selection_accuracy": [float(v) for v in head.layer_scores_]}
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "true", "pred", "top3"])
        ids = store.clip_ids[rows[known]]
        for cid, t, p in zip(ids, yt[known], proba):
            top = head.classes_[np.argsort(-p)[:3]]
            w.writerow([cid, t, top[0], "|".join(map(str, top))])
    pool = "" if task.pool == DEFAULT_POOL else f" ({task.pool} pooling)"
    metrics.plot_confusion(np.array(report["confusion"]), [str(c) for c in head.classes_], out / "confusion.png",
                           title=f"{backbone} / {args.head} / {args.task}{pool}\n{plan.label()}")
    return head, report


def run_frames(args, store, backbone, task, out: Path, plan) -> dict:
    X, y, off, _ = task.data(store, backbone, plan.train)
    Xv, yv, offv, _ = task.data(store, backbone, plan.select)
    Xt, yt, offt, rows = task.data(store, backbone, plan.score)
    fr = store.frame_rate(backbone)
    head = make_head(args, store.shape(backbone)[0])
    t0 = time.perf_counter()
    head.fit(X, y, frame_rate=fr, offsets=off, eval_set=(Xv, yv, offv))
    fit_s = time.perf_counter() - t0
    rep = score_notes(store, rows, yt, head.predict(Xt, offsets=offt), out / "notes")
    report = {"mean": rep["mean"], "n_songs": rep["n_songs"], "fit_seconds": fit_s, "n_train": len(X),
              "n_selection": len(Xv), "context_frames": head.context_frames_, "best_epoch": head.best_epoch_,
              "per_song": rep["per_song"]}
    if hasattr(head, "lr_"):
        report["lr"], report["lr_scores"] = head.lr_, {str(k): v for k, v in head.lr_scores_.items()}
    return head, report


def check_device(device: str) -> None:
    """A clear error for a device torch cannot use (a typo, or CUDA on a machine without a GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")


def ensure_demo_store() -> Path:
    from featurestore.build import DEMO_SEGMENT_S, build, default_demo_dir, ensure_demo_corpus
    from featurestore.clips import ClipSettings

    path = default_demo_dir() / "store.zarr"
    try:
        if "crepe-tiny" in open_store(path).backbones:
            return path
    except (FileNotFoundError, ValueError):
        pass
    print(f"building the demo store at {path} ...", file=sys.stderr)
    build(ensure_demo_corpus(), path, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=DEMO_SEGMENT_S))
    return path


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The split options (shared with the task pipelines' ``fit``)."""
    p.add_argument("--score-split", choices=SCORE_CHOICES, default="auto",
                   help="split the reported scores are measured on: auto = test when the store has test clips, "
                        "else valid")
    p.add_argument("--select-split", choices=SELECT_CHOICES, default="auto",
                   help="clips that choose the model (learning rate, stopping epoch): auto = valid unless valid "
                        "is the scored split, then a holdout carved out of train (grouped by --group)")
    p.add_argument("--group", default=None,
                   help=f"label column the train holdout is grouped by, so no group is on both sides "
                        f"('{FILE}' = the audio file); default: album for singer, singer for technique, "
                        f"{FILE} otherwise")
    p.add_argument("--holdout-fraction", type=float, default=0.15,
                   help="share of train groups (per class, when groups nest in classes) carved out for selection")
    p.add_argument("--allow-scoring-selection-split", action="store_true",
                   help="allow --select-split valid while valid is scored (an optimistic score, labelled so)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m heads.fit",
                                description="Train a head on a feature store and write a run folder "
                                            "(metrics.json, head.json + head.safetensors, predictions, plots). The model is chosen "
                                            "on one split and scored on another (see --score-split).",
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="feature store built by featurestore.build (default: the demo store, built "
                                   "if missing)")
    p.add_argument("--backbone", default="crepe", help="backbone in the store (registry name or alias)")
    p.add_argument("--head", choices=HEADS, default="linear", help="head to train")
    p.add_argument("--task", default=None,
                   help="singer | technique | transcription | label:<column> | notes:<column> "
                        "(default: singer for clip heads, transcription for crf/frames)")
    p.add_argument("--lr", default="1e-3,3e-3,1e-2",
                   help="learning rate or comma-separated grid (chosen on the selection split; torch heads)")
    p.add_argument("--epochs", type=int, default=60, help="maximum epochs (early stopping on the selection split)")
    p.add_argument("--layers", default="all",
                   help="all (logreg/lgbm: their mean) | each (one probe per layer, linear head) | concat (logreg/lgbm: "
                        "all layers side by side, with a per-layer importance) | i,j,... (stored layer indices)")
    p.add_argument("--context", type=float, default=0.0, metavar="SECONDS",
                   help="crf/frames: temporal context each side of a frame, in seconds (a dilated convolution "
                        "stack of round(SECONDS x frame rate) frames each side between the layer sum and the "
                        "per-frame output; 0.15 suits slow sung onsets). 0: the paper's per-frame linear probe")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help=f"clip heads: clip statistics over time the head reads: mean, std, or mean+std (both "
                        f"side by side, D -> 2D per layer: statistics pooling); not given: {DEFAULT_POOL}. "
                        "Not for crf/frames (they read frames)")
    p.add_argument("--class-weight", choices=["balanced", "paper"], default=None,
                   help="clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2; not given: none")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and the holdout draw")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--out", help="run folder (default: runs/<backbone>-<head>-<task>, plus -stdpool or "
                                 "-meanstdpool for a --pool other than mean)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_protocol_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.task = args.task or ("transcription" if args.head in FRAME_HEADS else "singer")
    out, created = None, False
    try:
        if args.pool is not None and args.head in FRAME_HEADS:
            raise ValueError(f"--pool pools clips for the clip heads ({', '.join(CLIP_HEADS)}); --head {args.head} "
                             "reads every frame: leave --pool out")
        check_device(args.device)
        store = open_store(args.store) if args.store else open_store(ensure_demo_store())
        backbone = store.backbone_name(args.backbone)
        store.group(backbone)
        task = make_task(args.task, pool=args.pool)
        if task.kind == "clip" and args.head in FRAME_HEADS:
            raise TaskError(f"--head {args.head} is a frame-level note decoder; task {args.task!r} is a clip "
                            f"task: use one of {', '.join(CLIP_HEADS)}")
        if task.kind == "frames" and args.head in CLIP_HEADS:
            raise TaskError(f"--head {args.head} is a clip classifier; task {args.task!r} is frame-level "
                            f"transcription: use one of {', '.join(FRAME_HEADS)}")
        plan = make_plan(args, store, backbone, task)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        pool = getattr(task, "pool", None)
        out = Path(args.out or f"runs/{backbone}-{args.head}-{args.task.replace(':', '_')}{pool_suffix(pool)}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: this is a file; give a folder for the run (it holds metrics.json, "
                             "head.json, predictions, plots)")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        runner = run_clip if task.kind == "clip" else run_frames
        head, report = runner(args, store, backbone, task, out, plan)
    except (TaskError, BackboneNotInStore, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty run folder behind
        return 2
    head.save(out / "head.json")
    stored_layers = head.layers_used_
    learned = layer_plot(head)
    (out / "layer_weights.png").unlink(missing_ok=True)
    if learned is not None:
        plot_layer_weights(learned[0], list(stored_layers), out / "layer_weights.png",
                           f"{backbone} / {args.head} / {args.task}: per stored layer\n{plan.label()}",
                           ylabel=learned[1])
    report.update(backbone=backbone, head=args.head, task=args.task, store=str(store.path),
                  protocol=plan.describe(), scored_split=plan.score_split, selection_split=plan.select_split,
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in head.get_params().items()},
                  stored_layers=[int(l) for l in stored_layers])
    if task.kind == "clip":
        report["pool"] = task.pool  # what evaluate/predict must read: heads.tasks.pooled_features
    if learned is not None:
        key = {"softmax": "layer_weights", "importance": "layer_importance"}.get(learned[1].split()[0])
        if key:  # (the probe curve is in report["layer_curve"])
            report[key] = [float(v) for v in learned[0]]
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    print(summary_table(report))
    print(f"run folder: {out}")
    return 0


def summary_table(report: dict) -> str:
    if "mean" in report:
        rows = [{"metric": k, **v} for k, v in report["mean"].items()]
        body = metrics.format_table(rows, ["metric", "precision", "recall", "f1"])
    else:
        keys = [k for k in ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy") if k in report]
        body = metrics.format_table([{"metric": k, "value": report[k]} for k in keys], ["metric", "value"])
    pool = f" / {report['pool']} pooling" if report.get("pool", DEFAULT_POOL) != DEFAULT_POOL else ""
    return (f"{report['backbone']} / {report['head']} / {report['task']}{pool} "
            f"({protocol_label(report['protocol'])})\n{body}")


if __name__ == "__main__":
    sys.exit(main())

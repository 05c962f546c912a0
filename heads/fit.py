"""``python -m heads.fit``: train a head against a feature store and write a run folder.

    python -m heads.fit --backbone crepe --head linear              # demo store, singer task
    python -m heads.fit --backbone crepe --head crf                 # demo store, transcription
    python -m heads.fit --store a20.zarr --backbone mert --head mlp --task singer --lr 1e-4,1e-3,1e-2

The run folder holds metrics.json, the saved head (head.joblib), predictions.csv (or notes per
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

from featurestore import open_store
from featurestore.registry import resolve
from featurestore.store import BackboneNotInStore
from heads import metrics
from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.evaluation import eval_split, score_clip_head
from heads.tasks import TaskError, make_task

CLIP_HEADS = {"linear": LinearHead, "mlp": MLPHead, "logreg": LogRegHead, "lgbm": LGBMHead}
FRAME_HEADS = ("crf", "frames")
HEADS = tuple(CLIP_HEADS) + FRAME_HEADS


def frame_head_class(name: str):
    from heads.frame_heads import CRFHead, FrameClassifierHead

    return {"crf": CRFHead, "frames": FrameClassifierHead}[name]


def backbone_name(store, name: str) -> str:
    """A registry name or alias as stored (``crepe`` -> ``crepe-tiny``); other names as given."""
    if name in store.backbones:
        return name
    try:
        return resolve(name).name
    except KeyError:
        return name


def plot_layer_weights(weights: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(weights) + 2.5), 3.2))
    ax.bar(np.arange(len(weights)), weights, color="#4c72b0")
    ax.axhline(1.0 / len(weights), color="grey", lw=0.8, ls="--", label="uniform")
    ax.set_xlabel("hidden state index (0 = first stored layer)")
    ax.set_ylabel("softmax weight")
    ax.set_xticks(np.arange(len(weights)))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_head(args, n_layers: int):
    layers = None
    if args.layers == "each":
        layers = "each"
    elif args.layers not in (None, "all"):
        layers = [int(v) for v in args.layers.split(",")]
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"--layers {args.layers}: layer(s) {bad} out of range 0..{n_layers - 1}")
    if layers == "each" and args.head != "linear":
        raise ValueError("--layers each fits one linear probe per layer: use it with --head linear")
    if args.head in CLIP_HEADS:
        cls = CLIP_HEADS[args.head]
        if args.head in ("logreg", "lgbm"):
            if layers is not None and len(layers) > 1:
                raise ValueError(f"--head {args.head} takes one layer (--layers K) or all of them "
                                 "(their mean): not a list")
            return cls(features="mean" if layers is None else layers[0], class_weight=args.class_weight,
                       seed=args.seed)
        return cls(lr=args.lr, epochs=args.epochs, layers=layers, class_weight=args.class_weight, seed=args.seed,
                   device=args.device, progress=not args.no_progress)
    return frame_head_class(args.head)(lr=args.lr, epochs=args.epochs, layers=layers, seed=args.seed,
                                       device=args.device, progress=not args.no_progress)


def run_clip(args, store, backbone, task, out: Path) -> dict:
    X, y, _ = task.data(store, backbone, "train")
    Xv, yv, _ = task.data(store, backbone, "valid")
    Xt, yt, rows = task.data(store, backbone, eval_split(store))
    head = make_head(args, X.shape[1])
    t0 = time.perf_counter()
    head.fit(X, y, eval_set=(Xv, yv))
    fit_s = time.perf_counter() - t0
    scores = score_clip_head(head, Xt, yt)
    report, proba, known = scores.report, scores.proba, scores.known
    report.update(fit_seconds=fit_s, n_train=len(y), n_valid=len(yv), scored_split=eval_split(store))
    if hasattr(head, "lr_"):
        report["lr"], report["lr_scores"] = head.lr_, {str(k): v for k, v in head.lr_scores_.items()}
    if getattr(head, "layer_scores_", None) is not None:
        report["layer_curve"] = [float(v) for v in head.layer_scores_]
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "true", "pred", "top3"])
        ids = store.clip_ids[rows[known]]
        for cid, t, p in zip(ids, yt[known], proba):
            top = head.classes_[np.argsort(-p)[:3]]
            w.writerow([cid, t, top[0], "|".join(map(str, top))])
    metrics.plot_confusion(np.array(report["confusion"]), [str(c) for c in head.classes_], out / "confusion.png",
                           title=f"{backbone} / {args.head} / {args.task}")
    return head, report


def run_frames(args, store, backbone, task, out: Path) -> dict:
    from heads.notes import notes_to_arrays, write_notes

    X, y, off, _ = task.data(store, backbone, "train")
    Xv, yv, offv, _ = task.data(store, backbone, "valid")
    Xt, yt, offt, rows = task.data(store, backbone, eval_split(store))
    fr = store.frame_rate(backbone)
    head = make_head(args, store.shape(backbone)[0])
    t0 = time.perf_counter()
    head.fit(X, y, frame_rate=fr, offsets=off, eval_set=(Xv, yv, offv))
    fit_s = time.perf_counter() - t0
    est = head.predict(Xt, offsets=offt)
    pairs = {}
    (out / "notes").mkdir(exist_ok=True)
    for r, ref, e in zip(rows, yt, est):
        cid = str(store.clip_ids[r])
        ri, rp = notes_to_arrays(ref)
        ei, ep = notes_to_arrays(e)
        write_notes(out / "notes" / f"{cid.replace('/', '_')}.txt", ei, ep)
        pairs[cid] = (ri, rp, ei, ep)
    rep = metrics.transcription_report(pairs)
    report = {"mean": rep["mean"], "n_songs": rep["n_songs"], "fit_seconds": fit_s, "n_train": len(X),
              "per_song": rep["per_song"], "scored_split": eval_split(store)}
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m heads.fit",
                                description="Train a head on a feature store and write a run folder "
                                            "(metrics.json, head.joblib, predictions, plots).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", help="feature store built by featurestore.build (default: the demo store, built "
                                   "if missing)")
    p.add_argument("--backbone", default="crepe", help="backbone in the store (registry name or alias)")
    p.add_argument("--head", choices=HEADS, default="linear")
    p.add_argument("--task", default=None,
                   help="singer | technique | transcription | label:<column> | notes:<column> "
                        "(default: singer for clip heads, transcription for crf/frames)")
    p.add_argument("--lr", default="1e-3,3e-3,1e-2", help="learning rate or comma-separated grid (chosen on valid)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--layers", default="all", help="all | each (one probe per layer, linear head) | i,j,...")
    p.add_argument("--class-weight", choices=["paper", "balanced"], default=None,
                   help="paper: w_c = 1/n_c^0.2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="run folder (default: runs/<backbone>-<head>-<task>)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.task = args.task or ("transcription" if args.head in FRAME_HEADS else "singer")
    try:
        check_device(args.device)
        store = open_store(args.store) if args.store else open_store(ensure_demo_store())
        backbone = backbone_name(store, args.backbone)
        store.group(backbone)
        task = make_task(args.task)
        if task.kind == "clip" and args.head in FRAME_HEADS:
            raise TaskError(f"--head {args.head} is a frame-level note decoder; task {args.task!r} is a clip "
                            f"task: use one of {', '.join(CLIP_HEADS)}")
        if task.kind == "frames" and args.head in CLIP_HEADS:
            raise TaskError(f"--head {args.head} is a clip classifier; task {args.task!r} is frame-level "
                            f"transcription: use one of {', '.join(FRAME_HEADS)}")
        out = Path(args.out or f"runs/{backbone}-{args.head}-{args.task.replace(':', '_')}")
        out.mkdir(parents=True, exist_ok=True)
        runner = run_clip if task.kind == "clip" else run_frames
        head, report = runner(args, store, backbone, task, out)
    except (TaskError, BackboneNotInStore, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head.save(out / "head.joblib")
    plot_layer_weights(np.asarray(head.layer_weights_), out / "layer_weights.png",
                       f"{backbone} / {args.head} / {args.task}: layer weights")
    report.update(backbone=backbone, head=args.head, task=args.task, store=str(store.path),
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in head.get_params().items()},
                  layer_weights=[float(v) for v in head.layer_weights_])
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
    return f"{report['backbone']} / {report['head']} / {report['task']} ({report['scored_split']} split)\n{body}"


if __name__ == "__main__":
    sys.exit(main())

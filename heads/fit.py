"""``python -m heads.fit``: train a head against a feature store and write a run folder.

    python -m heads.fit --backbone crepe --head linear              # demo store, singer task
    python -m heads.fit --backbone crepe --head crf                 # demo store, transcription
    python -m heads.fit --store a20.zarr --backbone mert --head mlp --task singer --lr 1e-4,1e-3,1e-2

The run folder holds metrics.json (scores with bootstrap 95 % intervals, ``ci95``), the saved head
(head.json + head.safetensors, :mod:`heads.persist`), predictions.csv (or notes per clip for
transcription), layer_weights.png (or layer_table.png with ``--layers each``), learning_curve.png
and, for classification, confusion.png
(every figure also as SVG); each run appends its row to results.jsonl beside the run folder
(:mod:`heads.results_log`). ``--seeds 0,1,2`` makes one run per seed and prints mean ± sd.
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
from heads.intervals import classification_intervals, mean_intervals, mean_sd
from heads.protocol import FILE, SCORE_CHOICES, SELECT_CHOICES, protocol_label, selection_label
from heads.results_log import append_result
from heads.tasks import (DEFAULT_POOL, POOLS, TaskError, context_suffix, hyper_suffix, layers_suffix, make_task,
                         parse_seeds, pool_suffix, seed_suffix)

CLIP_HEADS = {"linear": LinearHead, "mlp": MLPHead, "logreg": LogRegHead, "lgbm": LGBMHead}
FRAME_HEADS = ("crf", "frames")
HEADS = tuple(CLIP_HEADS) + FRAME_HEADS
TORCH_HEADS = ("linear", "mlp") + FRAME_HEADS
#: Defaults of the torch heads' --lr grid and --epochs (refused for logreg / lgbm, which have neither).
DEFAULT_LR, DEFAULT_EPOCHS = "1e-3,3e-3,1e-2", 60
#: Hyperparameter options of one head only: option dest -> (head, estimator parameter).
HEAD_OPTIONS = {"C": ("logreg", "C"), "n_estimators": ("lgbm", "n_estimators"),
                "gbm_learning_rate": ("lgbm", "learning_rate"), "num_leaves": ("lgbm", "num_leaves"),
                "min_child_samples": ("lgbm", "min_child_samples")}


def frame_head_class(name: str):
    from heads.frame_heads import CRFHead, FrameClassifierHead

    return {"crf": CRFHead, "frames": FrameClassifierHead}[name]


#: Every figure is written as a PNG and as these vector formats beside it (heads.run_plots.save_figure).
PLOT_FORMATS = ("png", "svg")


def plot_layer_weights(values: np.ndarray, layers: list[int], path: Path, title: str,
                       ylabel: str = "softmax weight (learned)") -> Path:
    """Bar plot of one value per stored layer: ``layers`` are the model's hidden-state indices of
    those layers (:meth:`featurestore.store.FeatureStore.layer_ids`: a store built with ``--layers``
    holds only some)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(values) + 2.5), 3.2))
    ax.bar(np.arange(len(values)), values, color="#4c72b0")
    if len(values) > 1:
        ax.axhline(1.0 / len(values), color="grey", lw=0.8, ls="--", label="uniform")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("model hidden-state index (0 = input of layer 1)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(np.arange(len(values)), [str(l) for l in layers])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    from heads.run_plots import save_figure

    return save_figure(fig, path)


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


def parse_layers(text: str, layer_ids):
    """``--layers``: ``all`` -> None, ``each``, ``concat``, or ``i,j,...`` (the model's hidden-state
    indices) -> their positions in the stored layer axis (checked). ``layer_ids``: the model index
    of each stored layer (:meth:`featurestore.store.FeatureStore.layer_ids`), or their count L for a
    store of every layer."""
    ids = list(range(layer_ids)) if isinstance(layer_ids, (int, np.integer)) else [int(v) for v in layer_ids]
    if text in (None, "all"):
        return None
    if text in ("each", "concat"):
        return text
    try:
        layers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r}: expected all, each or comma-separated layer indices") from None
    pos = {m: k for k, m in enumerate(ids)}
    bad = [l for l in layers if l not in pos]
    if bad or not layers:
        held = f"0..{len(ids) - 1}" if ids == list(range(len(ids))) else f"only model layers {ids} (built with --layers)"
        raise ValueError(f"--layers {text}: layer(s) {bad} out of range: the store holds {held}")
    return [pos[l] for l in layers]


def check_options(args) -> None:
    """Refuse options that do not apply to ``--head`` (ValueError naming the option), then fill the
    torch heads' defaults of ``--lr`` and ``--epochs``."""
    flag = lambda dest: "--" + dest.replace("_", "-")  # noqa: E731
    if args.head not in TORCH_HEADS:
        for dest in ("lr", "epochs", "log_dir"):
            if getattr(args, dest, None) is not None:
                what = {"lr": "no learning rate (its grid is --C)" if args.head == "logreg" else
                        "no Adam learning rate (its boosting rate is --gbm-learning-rate)",
                        "epochs": "no epochs", "log_dir": "no training curve to log"}[dest]
                raise ValueError(f"{flag(dest)} does not apply to --head {args.head}: it has {what}")
    for dest, (head, _) in HEAD_OPTIONS.items():
        if getattr(args, dest, None) is not None and args.head != head:
            raise ValueError(f"{flag(dest)} is a --head {head} hyperparameter; it does not apply to --head {args.head}")
    if args.seeds is not None and args.seed is not None:
        raise ValueError("--seed and --seeds: give one of them")
    if args.head in TORCH_HEADS:
        args.lr = DEFAULT_LR if args.lr is None else args.lr
        args.epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs


def head_options(args) -> dict:
    """The options that make a run (for the results table and the run's metrics.json): layers, pool,
    context, class weight and the head's hyperparameter grids (not the seed, not paths)."""
    out = {"layers": args.layers, "pool": getattr(args, "pool", None), "context": args.context or None,
           "class_weight": args.class_weight}
    if args.head in TORCH_HEADS:
        out.update(lr=args.lr, epochs=args.epochs)
    for dest, (head, _) in HEAD_OPTIONS.items():
        if args.head == head and getattr(args, dest, None) is not None:
            out[dest] = getattr(args, dest)
    return {k: v for k, v in out.items() if v not in (None, "", "all")}


def make_head(args, layer_ids, layer: int | None = None):
    """The head of the command line; ``layer_ids``: the model index of each stored layer (or their
    count); ``layer``: the single-layer probe of stored layer position ``layer`` (one row of
    ``--layers each``)."""
    layers = [layer] if layer is not None else parse_layers(args.layers, layer_ids)
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
            grid = {param: getattr(args, dest) for dest, (head, param) in HEAD_OPTIONS.items()
                    if head == args.head and getattr(args, dest, None) is not None}
            return cls(features=features, class_weight=args.class_weight, seed=args.seed, **grid)
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
    ids = store.layer_ids(backbone)  # the model's index of each stored layer
    t0 = time.perf_counter()
    layer_table = None
    if parse_layers(args.layers, ids) == "each":
        from heads.layer_probe import fit_each_layer

        if args.head != "linear":
            raise ValueError("--layers each fits one linear probe per layer: use it with --head linear")
        layer_table = fit_each_layer(lambda k: make_head(args, ids, layer=k), X, y, (Xv, yv), Xt, yt, layer_ids=ids)
        head = layer_table.heads[layer_table.chosen]
    else:
        head = make_head(args, ids)
        head.fit(X, y, eval_set=(Xv, yv))
    fit_s = time.perf_counter() - t0
    scores = score_clip_head(head, Xt, yt)
    report, proba, known = scores.report, scores.proba, scores.known
    report.update(fit_seconds=fit_s, n_train=len(y), n_selection=len(yv))
    report["ci95"] = classification_intervals(scores.y, proba)
    if hasattr(head, "lr_"):
        report["lr"], report["lr_scores"] = head.lr_, {str(k): v for k, v in head.lr_scores_.items()}
    if getattr(head, "grid_scores_", None):
        report["best_params"] = head.best_params_
        report["grid_scores"] = head.grid_scores_
    if layer_table is not None:
        report["layer_table"] = layer_table.to_json(plan.select_split, plan.score_split)
        report["layer_curve"] = {"layers": layer_table.layers, "selection_accuracy": layer_table.selection,
                                 "scored_accuracy": layer_table.scored["accuracy"],
                                 "chosen_layer": layer_table.chosen_layer}
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "true", "pred", "top3"])
        ids = store.clip_ids[rows[known]]
        for cid, t, p in zip(ids, yt[known], proba):
            top = head.classes_[np.argsort(-p)[:3]]
            w.writerow([cid, t, top[0], "|".join(map(str, top))])
    pool = "" if task.pool == DEFAULT_POOL else f" ({task.pool} pooling)"
    metrics.plot_confusion(np.array(report["confusion"]), [str(c) for c in head.classes_], out / "confusion.png",
                           title=f"{backbone} / {args.head} / {args.task}{pool}\n"
                                 f"{protocol_label(plan.describe(), report)}")
    return head, report


def run_frames(args, store, backbone, task, out: Path, plan) -> dict:
    X, y, off, _ = task.data(store, backbone, plan.train)
    Xv, yv, offv, _ = task.data(store, backbone, plan.select)
    Xt, yt, offt, rows = task.data(store, backbone, plan.score)
    fr = store.frame_rate(backbone)
    store.require_frames(backbone, f"--head {args.head}")
    head = make_head(args, store.layer_ids(backbone))
    t0 = time.perf_counter()
    head.fit(X, y, frame_rate=fr, offsets=off, eval_set=(Xv, yv, offv))
    fit_s = time.perf_counter() - t0
    rep = score_notes(store, rows, yt, head.predict(Xt, offsets=offt), out / "notes")
    songs = list(rep["per_song"].values())
    ci = mean_intervals({f"{name}.f1": [s[name]["f1"] for s in songs] for name in rep["mean"]})
    report = {"mean": rep["mean"], "n_songs": rep["n_songs"], "fit_seconds": fit_s, "n_train": len(X),
              "n_selection": len(Xv), "context_frames": head.context_frames_, "best_epoch": head.best_epoch_,
              "per_song": rep["per_song"], "ci95": ci}
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
    p.add_argument("--lr", default=None,
                   help=f"torch heads (linear, mlp, frames, crf): learning rate or comma-separated grid, chosen on "
                        f"the selection split; not given: {DEFAULT_LR}. Refused for logreg/lgbm")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"torch heads: maximum epochs (early stopping on the selection split); not given: "
                        f"{DEFAULT_EPOCHS}. Refused for logreg/lgbm")
    p.add_argument("--C", dest="C", default=None,
                   help="logreg: inverse L2 strength, or a comma-separated grid (0.01,0.1,1,10) chosen on the "
                        "selection split; not given: 1.0")
    p.add_argument("--n-estimators", default=None,
                   help="lgbm: boosting rounds, or a grid (100,200,400) chosen on the selection split; not given: 200")
    p.add_argument("--gbm-learning-rate", default=None,
                   help="lgbm: shrinkage per round, or a grid (0.03,0.1); not given: 0.05")
    p.add_argument("--num-leaves", default=None, help="lgbm: leaves per tree, or a grid (7,15,31); not given: 15")
    p.add_argument("--min-child-samples", default=None,
                   help="lgbm: fewest clips in a leaf, or a grid (2,5,10); not given: 5")
    p.add_argument("--layers", default="all",
                   help="all (logreg/lgbm: their mean) | each (one probe per layer, linear head) | concat (logreg/lgbm: "
                        "all layers side by side, with a per-layer importance) | i,j,... (the model's hidden-state "
                        "indices, as stored: a store built with --layers holds only those)")
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
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, shuffling and the holdout draw; not given: 0")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (0,1,2): one run per seed, in <out>, <out>-seed1, <out>-seed2, ..., "
                        "and the mean ± sample sd of their scores")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--out", help="run folder (default: runs/<backbone>-<head>-<task>, plus -ctx<ms>ms for "
                                 "--context, -stdpool / -meanstdpool for --pool, -layers-<...> for --layers). Every "
                                 "run appends its row to results.jsonl beside it (runs/results.jsonl)")
    p.add_argument("--log-dir", default=None,
                   help="torch heads: write TensorBoard event files to LOG_DIR/<run folder name> (loss, selection "
                        "score, learning rate, layer weights per epoch and rate; needs the tracking extra: "
                        "pip install -e '.[tracking]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_protocol_arguments(p)
    return p.parse_args(argv)


def default_out(args, backbone: str, pool) -> Path:
    """``runs/<backbone>-<head>-<task>`` plus a suffix per run option (context, pool, layers, logreg / lgbm
    grids), so runs with other options never replace each other."""
    return Path(f"runs/{backbone}-{args.head}-{args.task.replace(':', '_')}{context_suffix(args.context)}"
                f"{pool_suffix(pool)}{layers_suffix(args.layers)}{hyper_suffix(vars(args))}")


def fit_run(args, store, backbone: str, task, out: Path) -> dict:
    """Fit, score and write one run folder (seed ``args.seed``) -> its metrics.json report; appends the
    run's row to ``out.parent/results.jsonl``."""
    plan = make_plan(args, store, backbone, task)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: this is a file; give a folder for the run (it holds metrics.json, "
                         "head.json, predictions, plots)")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    runner = run_clip if task.kind == "clip" else run_frames
    try:
        head, report = runner(args, store, backbone, task, out, plan)
    except Exception:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty run folder behind
        raise
    head.save(out / "head.json")
    ids = store.layer_ids(backbone)
    stored_layers = [ids[int(l)] for l in head.layers_used_]  # the model's indices, not positions
    learned = None if "layer_table" in report else layer_plot(head)
    for old in ("layer_weights", "layer_table"):
        for ext in PLOT_FORMATS:
            (out / f"{old}.{ext}").unlink(missing_ok=True)
    title = f"{backbone} / {args.head} / {args.task}"
    if learned is not None:
        plot_layer_weights(learned[0], list(stored_layers), out / "layer_weights.png",
                           f"{title}: per model layer\n{plan.label()}", ylabel=learned[1])
    if "layer_table" in report:
        from heads.run_plots import plot_layer_table

        plot_layer_table(report["layer_table"], out / "layer_table.png", f"{title}: one probe per layer")
    report.update(backbone=backbone, head=args.head, task=args.task, store=str(store.path),
                  protocol=plan.describe(), scored_split=plan.score_split, selection_split=plan.select_split,
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in head.get_params().items()},
                  stored_layers=[int(l) for l in stored_layers], options=head_options(args), seed=args.seed)
    if task.kind == "clip":
        report["pool"] = task.pool  # what evaluate/predict must read: heads.tasks.pooled_features
    if learned is not None:
        key = {"softmax": "layer_weights", "importance": "layer_importance"}.get(learned[1].split()[0])
        if key:
            report[key] = [float(v) for v in learned[0]]
    if getattr(head, "history_", None):
        report.setdefault("history", [dict(h) for h in head.history_])
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    if report.get("history"):
        from heads.run_plots import plot_learning_curve

        probe = f", probe of layer {report['layer_table']['chosen_layer']}" if "layer_table" in report else ""
        lr = f", lr {report['lr']:g}" if "lr" in report else ""
        plot_learning_curve(report["history"], out / "learning_curve.png",
                            f"{title}{probe}, seed {args.seed}{lr}\n{plan.label()}",
                            metric=f"selection score on {plan.select_split}")
    append_result(out.parent, results_row(report, "heads.fit", out.name))
    return report


def results_row(report: dict, command: str, run: str) -> dict:
    """The results-table row (:mod:`heads.results_log`) of a metrics.json or evaluation.json report."""
    if "mean" in report:  # transcription: F1 averaged over songs
        values = {f"{k}.f1": v["f1"] for k, v in report["mean"].items()}
        n, items = report.get("n_songs"), "songs"
    else:
        values = {k: report[k] for k in ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy") if k in report}
        n, items = report.get("n"), "clips"
    return {"command": command, "task": report.get("task"), "backbone": report.get("backbone"),
            "head": report.get("head"), "options": report.get("options") or {}, "seed": report.get("seed") or 0,
            "scored_split": report["protocol"]["scored_split"],
            "chosen_on": selection_label(report["protocol"], report),
            "n_scored": n, "items": items, "metrics": values, "ci95": report.get("ci95") or {}, "run": run}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.task = args.task or ("transcription" if args.head in FRAME_HEADS else "singer")
    try:
        check_options(args)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed or 0]
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
        base = Path(args.out) if args.out else default_out(args, backbone, getattr(task, "pool", None))
        reports = []
        for seed in seeds:
            args.seed = seed
            out = base.with_name(base.name + seed_suffix(seed)) if args.seeds is not None else base
            from heads.tracking import tracking

            with tracking(Path(args.log_dir) / out.name if args.log_dir else None):
                report = fit_run(args, store, backbone, task, out)
            print(summary_table(report))
            if "layer_table" in report:  # --layers each: every layer's scored-split scores, the kept one marked
                from heads.layer_probe import to_markdown as layer_markdown

                print(layer_markdown(report["layer_table"], f"one linear probe per layer ({args.task})"))
            print(f"run folder: {out}")
            reports.append(report)
    except (TaskError, BackboneNotInStore, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(reports) > 1:
        print(seed_summary(reports))
    return 0


def seed_summary(reports: list[dict]) -> str:
    """Mean ± sample sd over the seeds' runs of each score (the runs' own scored split)."""
    r0 = reports[0]
    if "mean" in r0:
        keys = [(f"{k} F1", lambda r, k=k: r["mean"][k]["f1"]) for k in r0["mean"]]
    else:
        keys = [(k, lambda r, k=k: r.get(k)) for k in ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy")
                if k in r0]
    rows = []
    for name, get in keys:
        m, sd = mean_sd([get(r) for r in reports])
        rows.append({"metric": name, "mean": m, "sd": sd})
    seeds = ",".join(str(r["seed"]) for r in reports)
    return (f"{len(reports)} seeds ({seeds}), {protocol_label(r0['protocol'], r0)}: mean ± sample sd\n"
            + metrics.format_table(rows, ["metric", "mean", "sd"]))


def summary_table(report: dict) -> str:
    if "mean" in report:
        rows = [{"metric": k, **v} for k, v in report["mean"].items()]
        body = metrics.format_table(rows, ["metric", "precision", "recall", "f1"])
    else:
        keys = [k for k in ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy") if k in report]
        body = metrics.format_table([{"metric": k, "value": report[k]} for k in keys], ["metric", "value"])
    pool = f" / {report['pool']} pooling" if report.get("pool", DEFAULT_POOL) != DEFAULT_POOL else ""
    if "layer_table" in report:
        lt = report["layer_table"]
        pool += f" / layer {lt['chosen_layer']} (chosen on {lt['selection_split']})"
    if len(report.get("grid_scores") or []) > 1:
        pool += " / " + ", ".join(f"{k}={v}" for k, v in report["best_params"].items())
    return (f"{report['backbone']} / {report['head']} / {report['task']}{pool} "
            f"({protocol_label(report['protocol'], report)})\n{body}")


if __name__ == "__main__":
    sys.exit(main())

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

The run is a :class:`heads.fit_spec.FitSpec` (the options are its fields) and the work is
:func:`fit_run`; the folder also holds ``config.yaml`` (the store and the spec, :mod:`heads.runs`), so
``--config RUN/config.yaml`` finds the same folder and reuses the fit (``--refit`` trains again).

    from heads.fit import fit_run
    from heads.fit_spec import FitSpec
    record = fit_run("a20.zarr", FitSpec(backbone="mert", head="mlp", lr="1e-4,1e-3"))
    record.scores, record.scored_split, record.selection_split, record.path
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from featurestore.cli import HelpFormatter
from featurestore import open_store
from featurestore.locking import LockTimeout, StoreLock
from featurestore.store import BackboneNotInStore
from heads import metrics
from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.evaluation import score_clip_head, score_notes
from heads.intervals import classification_intervals, mean_intervals, mean_sd
from featurestore.options import SpecError, add_config_options, add_options, from_namespace, parse_with_config, to_yaml
from heads.protocol import protocol_label, selection_label
from heads.results_log import append_result
from heads.tasks import DEFAULT_POOL, TaskError, parse_seeds, seed_suffix

from heads.fit_spec import FRAME_HEADS, HEADS, TORCH_HEADS, FitSpec, ProtocolSettings  # noqa: F401 (re-exported)
from heads.runs import RunError, RunFolder, RunRecord, store_path

#: The clip heads' estimator classes by name (the frame heads: :func:`frame_head_class`).
CLIP_HEADS = {"linear": LinearHead, "mlp": MLPHead, "logreg": LogRegHead, "lgbm": LGBMHead}


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
        raise ValueError(f"layers {text!r}: expected all, each or comma-separated layer indices") from None
    pos = {m: k for k, m in enumerate(ids)}
    bad = [l for l in layers if l not in pos]
    if bad or not layers:
        held = f"0..{len(ids) - 1}" if ids == list(range(len(ids))) else f"only model layers {ids} (built with --layers)"
        raise SpecError("layers", f"{text}: layer(s) {bad} out of range: the store holds {held}")
    return [pos[l] for l in layers]


def make_head(spec: FitSpec, layer_ids, layer: int | None = None):
    """The estimator of ``spec`` (unfitted); ``layer_ids``: the model index of each stored layer (or
    their count); ``layer``: the single-layer probe of stored layer position ``layer`` (one row of
    ``layers="each"``)."""
    layers = [layer] if layer is not None else parse_layers(spec.layers, layer_ids)
    progress = not spec.no_progress
    if spec.head in CLIP_HEADS:
        cls = CLIP_HEADS[spec.head]
        if spec.head in ("logreg", "lgbm"):
            features = "mean" if layers is None else layers if layers == "concat" else layers[0]
            return cls(features=features, class_weight=spec.class_weight, seed=spec.seed, **spec.head_params())
        return cls(lr=spec.lr, epochs=spec.epochs, layers=layers, class_weight=spec.class_weight, seed=spec.seed,
                   device=spec.device, progress=progress)
    return frame_head_class(spec.head)(lr=spec.lr, epochs=spec.epochs, layers=layers, context=spec.context,
                                       seed=spec.seed, device=spec.device, progress=progress)


def run_clip(spec: FitSpec, store, backbone, task, out: Path, plan) -> tuple:
    """Fit and score a clip head -> (fitted head, report); writes predictions.csv and confusion.png."""
    X, y, _ = task.data(store, backbone, plan.train)
    Xv, yv, _ = task.data(store, backbone, plan.select)
    Xt, yt, rows = task.data(store, backbone, plan.score)
    ids = store.layer_ids(backbone)  # the model's index of each stored layer
    t0 = time.perf_counter()
    layer_table = None
    if spec.layers == "each":
        from heads.layer_probe import fit_each_layer

        layer_table = fit_each_layer(lambda k: make_head(spec, ids, layer=k), X, y, (Xv, yv), Xt, yt, layer_ids=ids)
        head = layer_table.heads[layer_table.chosen]
    else:
        head = make_head(spec, ids)
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
                           title=f"{backbone} / {spec.head} / {spec.task}{pool}\n"
                                 f"{protocol_label(plan.describe(), report)}")
    return head, report


def run_frames(spec: FitSpec, store, backbone, task, out: Path, plan) -> tuple:
    """Fit and score a frame head -> (fitted head, report); writes the decoded notes per clip."""
    X, y, off, _ = task.data(store, backbone, plan.train)
    Xv, yv, offv, _ = task.data(store, backbone, plan.select)
    Xt, yt, offt, rows = task.data(store, backbone, plan.score)
    fr = store.frame_rate(backbone)
    store.require_frames(backbone, f"head {spec.head!r}")
    head = make_head(spec, store.layer_ids(backbone))
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
        raise SpecError("device", f"{device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("device", f"{device}: CUDA is not available on this machine (use cpu)")


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
    """The split options (:class:`heads.fit_spec.ProtocolSettings`; shared with fine-tuning and the task
    pipelines)."""
    add_options(p, ProtocolSettings)


#: Options of ``heads.fit`` that are not settings of the run: where it reads and writes, how many seeds.
COMMAND_OPTIONS = ("store", "out", "seeds", "refit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m heads.fit",
                                description="Train a head on a feature store and write a run folder "
                                            "(metrics.json, head.json + head.safetensors, predictions, plots, "
                                            "config.yaml). The model is chosen on one split and scored on another "
                                            "(see --score-split). A run folder already holding these settings is "
                                            "reused (--refit to train again).",
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="feature store built by featurestore.build (default: the demo store, built "
                                   "if missing)")
    add_options(p, FitSpec, skip=ProtocolSettings.__dataclass_fields__, defaults={"seed": None})
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (0,1,2): one run per seed, in <out>, <out>-seed1, <out>-seed2, ..., "
                        "and the mean ± sample sd of their scores")
    p.add_argument("--out", help="run folder (default: runs/<backbone>-<head>-<task>, plus -ctx<ms>ms for "
                                 "--context, -stdpool / -meanstdpool for --pool, -layers-<...> for --layers, "
                                 "-seed<k> for a seed k > 0). Every run appends its row to results.jsonl beside it "
                                 "(runs/results.jsonl)")
    p.add_argument("--refit", action="store_true",
                   help="train again even if the run folder holds a finished fit with the same settings")
    add_protocol_arguments(p)
    add_config_options(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    names = set(FitSpec.__dataclass_fields__) | set(COMMAND_OPTIONS)
    return parse_with_config(build_parser(), argv, names=names)


def spec_from_args(args: argparse.Namespace) -> tuple[FitSpec, list[int]]:
    """The run's spec and its seeds (``--seeds``, else ``--seed``, default 0)."""
    if args.seeds is not None and args.seed is not None:
        raise SpecError("seeds", "give seed or seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed or 0]
    return from_namespace(FitSpec, args, seed=seeds[0]), seeds


def default_out(spec: FitSpec, backbone: str) -> Path:
    """``runs/<backbone>-<head>-<task>`` plus a suffix per setting (:func:`heads.runs.run_name`)."""
    return RunFolder.for_spec("runs", spec, backbone).path


def resolve_store(store):
    """An open FeatureStore from a store, a path, or None (the demo store, built if missing)."""
    from featurestore.store import FeatureStore

    if isinstance(store, FeatureStore):
        return store
    return open_store(store) if store else open_store(ensure_demo_store())


def fit_run(store, spec: FitSpec, out=None, *, refit: bool = False, runs_dir="runs",
            with_task: bool = True) -> RunRecord:
    """Fit, score and write one run folder -> its :class:`heads.runs.RunRecord`.

    store: a FeatureStore, its path, or None (the demo store). out: the run folder (default: named from
    the spec under ``runs_dir``, :func:`heads.runs.run_name`; ``with_task`` False leaves the task out of
    the name, as the task pipelines do). A folder that already holds a finished fit of this spec is
    reused unless ``refit``; a fine-tuning run's folder is returned as it is (RunError with ``refit``).
    One process fits into a folder at a time: a second raises LockTimeout naming the first. Appends the run's row to ``out.parent/results.jsonl``. Raises SpecError
    (a setting the store cannot serve), TaskError, BackboneNotInStore, FileNotFoundError."""
    check_device(spec.device)
    store = resolve_store(store)
    backbone = store.backbone_name(spec.backbone)
    store.group(backbone)
    folder = RunFolder(out) if out is not None else RunFolder.for_spec(runs_dir, spec, backbone, with_task)
    out = folder.path
    if out.exists() and not out.is_dir():
        raise SpecError("out", f"{out}: this is a file; give a folder for the run (it holds metrics.json, "
                               "head.json, predictions, plots)")
    if folder.is_finetune:  # its head was trained with the frontend: fitting here would replace it
        if refit:
            raise RunError(f"{out} is a fine-tuning run (its head was trained with the frontend, heads.finetune): "
                           "retrain it with finetune --overwrite, not fit --refit")
        return folder.record(reused=True)
    # one process per run folder: a second one stops at once (LockTimeout naming the holder)
    with StoreLock(out, timeout=0, log=lambda _msg: None).hold("fitting a head into this run folder"):
        if not refit and folder.is_done(spec, store):
            return folder.record(reused=True)
        return _fit_into(folder, store, spec, backbone)


def _fit_into(folder: RunFolder, store, spec: FitSpec, backbone: str) -> RunRecord:
    """Fit ``spec`` on ``backbone`` of ``store`` and write the run folder (its lock held)."""
    out = folder.path
    task = spec.make_task()
    plan = spec.plan(task, store, backbone, spec.seed)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    folder.clear_config()  # a killed fit leaves no config.yaml: it is never taken for a finished one
    from heads.tracking import tracking

    runner = run_clip if task.kind == "clip" else run_frames
    try:
        with tracking(Path(spec.log_dir) / out.name if spec.log_dir else None):
            head, report = runner(spec, store, backbone, task, out, plan)
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
    title = f"{backbone} / {spec.head} / {spec.task}"
    if learned is not None:
        plot_layer_weights(learned[0], list(stored_layers), out / "layer_weights.png",
                           f"{title}: per model layer\n{plan.label()}", ylabel=learned[1])
    if "layer_table" in report:
        from heads.run_plots import plot_layer_table

        plot_layer_table(report["layer_table"], out / "layer_table.png", f"{title}: one probe per layer")
    report.update(backbone=backbone, head=spec.head, task=spec.task, store=str(store.path),
                  protocol=plan.describe(), scored_split=plan.score_split, selection_split=plan.select_split,
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in head.get_params().items()},
                  stored_layers=[int(l) for l in stored_layers], options=spec.options(), seed=spec.seed)
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
                            f"{title}{probe}, seed {spec.seed}{lr}\n{plan.label()}",
                            metric=f"selection score on {plan.select_split}")
    append_result(out.parent, results_row(report, "heads.fit", out.name))
    folder.write_config(spec, store)  # last: the folder now holds a finished fit of this spec
    return RunFolder(out).record()


def reused_message(rec: RunRecord) -> str:
    """What a command says of a run it did not fit again."""
    if RunFolder(rec.path).is_finetune:
        return (f"{rec.path} is a fine-tuning run, fitted by finetune (see {rec.path / 'metrics.json'}); "
                "evaluate it as it is")
    return f"{rec.path} is already fitted with these settings (see {rec.path / 'metrics.json'}); --refit to train again"


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
    try:
        spec, seeds = spec_from_args(args)
        if args.print_config:
            extra = {"store": store_path(args.store)} if args.store else None
            print(to_yaml(spec, header="python -m heads.fit --config FILE", extra=extra), end="")
            return 0
        store = resolve_store(args.store)
        base = Path(args.out) if args.out else None
        records = []
        for seed in seeds:
            one = dataclasses.replace(spec, seed=seed)
            out = None if base is None else base.with_name(base.name + seed_suffix(seed)) if len(seeds) > 1 else base
            rec = fit_run(store, one, out, refit=args.refit)
            if rec.reused:
                print(reused_message(rec))
            print(summary_table(rec.report))
            if "layer_table" in rec.report:  # layers each: every layer's scored-split scores, the kept one marked
                from heads.layer_probe import to_markdown as layer_markdown

                print(layer_markdown(rec.report["layer_table"], f"one linear probe per layer ({spec.task})"))
            print(f"run folder: {rec.path}")
            records.append(rec)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (TaskError, BackboneNotInStore, RunError, ValueError, FileNotFoundError, LockTimeout) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(records) > 1:
        print(seed_summary([r.report for r in records]))
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

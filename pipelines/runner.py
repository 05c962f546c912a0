"""The one path every task pipeline goes through: prepare -> build -> fit -> evaluate -> predict.

A task module (``pipelines.singer``, ``pipelines.transcription``, ``pipelines.technique``) declares a
:class:`TaskSpec` and calls :func:`main`. Every command works in one work folder::

    WORKDIR/manifest.csv            prepare: the dataset adapter's manifest for featurestore.build
    WORKDIR/prepare_report.json     prepare: what the adapter skipped, and why
    WORKDIR/store.zarr              build:   the feature store (featurestore.build with the task's settings)
    WORKDIR/runs/<backbone>-<head>/ fit:     heads.fit's run folder
    WORKDIR/runs/<...>/evaluation.json, WORKDIR/results.md   evaluate: task metrics, and a table of all runs

``prepare --demo`` turns the built-in demo corpus into the same manifest, so every pipeline runs
end to end without a download.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featurestore.cli import HelpFormatter
from featurestore.clips import ClipSettings
from featurestore.manifest import RESERVED
from heads import metrics


#: Written by ``prepare --demo`` (it holds the demo manifest's path), removed by ``prepare --raw``:
#: the task's store settings (e.g. shorter segments, no separation) follow it.
DEMO_FLAG = "demo.flag"


def is_demo(workdir) -> bool:
    """Was this work folder prepared from the built-in demo corpus?"""
    return (Path(workdir) / DEMO_FLAG).is_file()


@dataclass
class PrepareResult:
    """rows: manifest records (path, id, split, start, end, labels...); skipped: {where, reason, message}."""

    rows: list[dict]
    skipped: list[dict] = field(default_factory=list)


@dataclass
class TaskSpec:
    """What makes a task: its adapter, its store settings, its heads task and its evaluation.

    prepare(raw_dir, args) / prepare_demo(demo_manifest, args) -> PrepareResult
    clip_settings(args) -> featurestore ClipSettings (segments, trimming, separation)
    evaluate(store, run_dir, args) -> dict of metrics (the task's own conventions, e.g. song level)
    predict(args) -> int exit code (optional)
    add_arguments(parser, command): task-specific options
    summary_keys: metric keys (dotted paths into the evaluation dict) for results.md
    """

    name: str
    description: str
    heads_task: str
    default_head: str
    prepare: Callable
    prepare_demo: Callable
    clip_settings: Callable[[argparse.Namespace], ClipSettings]
    evaluate: Callable
    summary_keys: list[str]
    predict: Callable | None = None
    add_arguments: Callable | None = None
    default_class_weight: str | None = None


def write_manifest(rows: list[dict], path: Path) -> Path:
    """CSV with path, id, split, start, end first, then label columns (union over rows)."""
    labels = sorted({k for r in rows for k in r} - set(RESERVED))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(RESERVED) + labels)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else
                            json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r[k])
                        for k in list(RESERVED) + labels})
    return path


def cmd_prepare(spec: TaskSpec, args) -> int:
    work = Path(args.workdir)
    if args.demo:
        from featurestore.build import ensure_demo_corpus

        demo_manifest = ensure_demo_corpus()
        res = spec.prepare_demo(demo_manifest, args)
    else:
        if not args.raw:
            print("error: prepare needs --raw DATASET_DIR (or --demo)", file=sys.stderr)
            return 2
        raw = Path(args.raw)
        if not raw.is_dir():
            print(f"error: {raw} is not a folder", file=sys.stderr)
            return 2
        res = spec.prepare(raw, args)
    if not res.rows:
        print(f"error: no usable item found ({len(res.skipped)} skipped)", file=sys.stderr)
        for s in res.skipped[:20]:
            print(f"  - [{s['reason']}] {s['message']}", file=sys.stderr)
        return 2
    write_manifest(res.rows, work / "manifest.csv")
    if args.demo:
        (work / DEMO_FLAG).write_text(f"{demo_manifest}\n")
    else:
        (work / DEMO_FLAG).unlink(missing_ok=True)
    (work / "prepare_report.json").write_text(json.dumps({"items": len(res.rows), "skipped": res.skipped},
                                                         indent=2))
    splits: dict[str, int] = {}
    for r in res.rows:
        splits[r.get("split", "")] = splits.get(r.get("split", ""), 0) + 1
    counts = ", ".join(f"{k or '-'}: {v}" for k, v in sorted(splits.items()))
    print(f"{spec.name}: {len(res.rows)} items -> {work / 'manifest.csv'} ({counts})")
    if res.skipped:
        print(f"skipped {len(res.skipped)}:")
        for s in res.skipped:
            print(f"  - [{s['reason']}] {s['message']}")
    return 0


def cmd_build(spec: TaskSpec, args) -> int:
    from featurestore.build import main as build_main

    work = Path(args.workdir)
    if not (work / "manifest.csv").is_file():
        print(f"error: {work / 'manifest.csv'} is missing: run prepare first", file=sys.stderr)
        return 2
    cs = spec.clip_settings(args)
    argv = ["--input", str(work / "manifest.csv"), "--store", str(work / "store.zarr"),
            "--segment-seconds", str(cs.segment_s or 0), "--min-segment-seconds", str(cs.min_segment_s)]
    if cs.trim_db is not None:
        argv += ["--trim-db", str(cs.trim_db)]
    if cs.drop_quiet_db is not None:
        argv += ["--drop-quiet-db", str(cs.drop_quiet_db)]
    if cs.separate:
        argv += ["--separate-vocals", cs.separate]
    if cs.demucs_repo:
        argv += ["--demucs-repo", cs.demucs_repo]
    for bb in args.backbone:
        argv += ["--backbone", bb]
    for opt in ("model_path", "device", "num_workers", "batch_seconds"):
        v = getattr(args, opt, None)
        if v is not None:
            argv += [f"--{opt.replace('_', '-')}", str(v)]
    if args.overwrite:
        argv.append("--overwrite")
    if args.no_progress:
        argv.append("--no-progress")
    return build_main(argv)


def run_dir(args) -> Path:
    from featurestore.registry import resolve

    try:
        bb = resolve(args.backbone[0]).name
    except KeyError:
        bb = args.backbone[0]
    context = getattr(args, "context", 0.0) or 0.0
    suffix = f"-ctx{round(context * 1000)}ms" if context else ""
    return Path(args.workdir) / "runs" / f"{bb}-{args.head}{suffix}"


PROTOCOL_OPTIONS = ("score_split", "select_split", "group", "holdout_fraction")


def cmd_fit(spec: TaskSpec, args) -> int:
    from heads.fit import main as fit_main

    argv = ["--store", str(Path(args.workdir) / "store.zarr"), "--backbone", args.backbone[0], "--head", args.head,
            "--task", spec.heads_task, "--out", str(run_dir(args)), "--lr", args.lr, "--epochs", str(args.epochs),
            "--seed", str(args.seed), "--device", args.device or "cpu", "--layers", args.layers]
    if getattr(args, "class_weight", None):
        argv += ["--class-weight", args.class_weight]
    if getattr(args, "context", 0):
        argv += ["--context", str(args.context)]
    for opt in PROTOCOL_OPTIONS:
        if getattr(args, opt, None) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.allow_scoring_selection_split:
        argv.append("--allow-scoring-selection-split")
    # A finished fit leaves fit_args.json beside its metrics: the same fit is not run twice.
    rd = run_dir(args)
    marker, wanted = rd / "fit_args.json", json.dumps(argv)
    if (rd / "metrics.json").is_file() and marker.is_file() and marker.read_text() == wanted and not args.refit:
        print(f"{rd} is already fitted with these settings (see {rd / 'metrics.json'}); --refit to train again")
        return 0
    marker.unlink(missing_ok=True)
    code = fit_main(argv + (["--no-progress"] if args.no_progress else []))
    if code == 0:
        marker.write_text(wanted)
    return code


def run_plan(store, rd: Path, spec: TaskSpec, backbone: str, score: str | None = None):
    """The split plan a fitted run was trained under (from its metrics.json), scoring ``score`` (None: the
    run's own scored split). Scoring the split that chose the run's model is refused
    (:func:`heads.protocol.replan`)."""
    from heads.tasks import TaskError, make_task

    m = Path(rd) / "metrics.json"
    try:
        desc = json.loads(m.read_text())["protocol"]
    except (OSError, ValueError, KeyError):
        raise TaskError(f"{m} does not say which split chose the model (a run from an older version?): "
                        "fit it again with --refit") from None
    return make_task(spec.heads_task).replan(store, backbone, desc, score=score)


def run_backbone(store, rd: Path, args) -> str:
    """The backbone a run was fitted on, as named in the store (from its metrics.json, else --backbone)."""
    m = Path(rd) / "metrics.json"
    if m.is_file():
        try:
            bb = json.loads(m.read_text()).get("backbone")
            if bb:
                return bb
        except ValueError:
            pass
    return store.backbone_name(args.backbone[0])


def training_clip_settings(spec: TaskSpec, args) -> ClipSettings:
    """For predict: the clip settings of the work folder's training store, so new audio is cut and
    separated the same way (``--demucs-repo`` may point at a local copy of the weights); without a
    training store, the task's settings from the arguments."""
    from featurestore import open_store

    try:
        stored = dict(open_store(Path(args.workdir) / "store.zarr").clip_settings)
    except (FileNotFoundError, ValueError):
        stored = {}
    if not stored:
        print("note: no training store in the work folder: clip settings from the arguments", file=sys.stderr)
        return spec.clip_settings(args)
    if stored.get("separate") and getattr(args, "demucs_repo", None):
        stored["demucs_repo"] = args.demucs_repo
    return ClipSettings.from_dict(stored)


def fitted_run(args) -> Path | None:
    """The run folder of (--backbone, --head) holding a fitted head, or None after saying why not."""
    rd = run_dir(args)
    if not (rd / "head.joblib").is_file():
        print(f"error: no fitted head in {rd}: run fit first", file=sys.stderr)
        return None
    return rd


def input_folder(args, what: str = "audio files") -> Path | None:
    """``--input`` as an existing folder, or None after saying why not."""
    if not getattr(args, "input", None) or not Path(args.input).is_dir():
        print(f"error: --input must be a folder of {what} (got {getattr(args, 'input', None)!r})", file=sys.stderr)
        return None
    return Path(args.input)


def cmd_evaluate(spec: TaskSpec, args) -> int:
    from featurestore import open_store

    rd = fitted_run(args)
    if rd is None:
        return 2
    from featurestore.store import BackboneNotInStore
    from heads.tasks import TaskError

    try:
        store = open_store(Path(args.workdir) / "store.zarr")
        result = spec.evaluate(store, rd, args)
    except (FileNotFoundError, ValueError, TaskError, BackboneNotInStore, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    context = getattr(args, "context", 0.0) or 0.0
    result.update(backbone=run_backbone(store, rd, args), task=spec.name,
                  head=args.head + (f"+ctx{round(context * 1000)}ms" if context else ""))
    (rd / "evaluation.json").write_text(json.dumps(result, indent=2, default=float))
    table = results_table(spec, Path(args.workdir))
    (Path(args.workdir) / "results.md").write_text(table + "\n")
    print(table)
    return 0


def _dig(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def results_table(spec: TaskSpec, workdir: Path) -> str:
    """Markdown table of every evaluated run in the work folder (frontend x head)."""
    from heads.protocol import chosen_label

    rows = []
    for f in sorted((workdir / "runs").glob("*/evaluation.json")):
        e = json.loads(f.read_text())
        p = e.get("protocol") or {}
        rows.append({"run": f.parent.name, "scored on": p.get("scored_split", "?"),
                     "chosen on": chosen_label(p) if p else "?",
                     **{k: _dig(e, k) for k in spec.summary_keys}})
    cols = ["scored on", "chosen on"] + spec.summary_keys
    head = "| run | " + " | ".join(cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    lines = [f"# {spec.name}: {spec.description}", "", head, sep]
    for r in rows:
        cells = [r["run"]] + [("" if r[k] is None else f"{100 * r[k]:.1f}" if isinstance(r[k], float) else str(r[k]))
                              for k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("(scores in %; \"scored on\" is the split the scores were measured on, \"chosen on\" the clips that "
                 "chose the learning rate and the stopping epoch)")
    return "\n".join(lines)


def build_parser(spec: TaskSpec) -> argparse.ArgumentParser:
    from heads.fit import HEADS, add_protocol_arguments

    p = argparse.ArgumentParser(prog=f"python -m pipelines.{spec.name}", description=spec.description,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    commands = {"prepare": "turn the dataset folder (or --demo) into WORKDIR/manifest.csv",
                "build": "extract features into WORKDIR/store.zarr with the task's settings",
                "fit": "train a head on the store (heads.fit) into WORKDIR/runs/<backbone>-<head>",
                "evaluate": "score a fitted run with the task's conventions and update WORKDIR/results.md"}
    if spec.predict is not None:
        commands["predict"] = "predict for new audio with a fitted run"
    for name, help_ in commands.items():
        c = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        c.add_argument("--workdir", required=True, help="work folder of this task")
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "prepare":
            c.add_argument("--raw", help="the dataset folder, as downloaded")
            c.add_argument("--demo", action="store_true", help="use the built-in demo corpus instead")
        if name in ("build", "fit", "evaluate", "predict"):
            c.add_argument("--backbone", action="append", default=None,
                           help="backbone, a registry name or alias (repeat for several in build); not given: crepe")
            c.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1); not given: cpu")
        if name == "build":
            c.add_argument("--model-path", help="local folder of the backbone's weights (offline)")
            c.add_argument("--num-workers", type=int, default=None,
                           help="audio decoding workers; not given: featurestore.build's default")
            c.add_argument("--batch-seconds", type=float, default=None,
                           help="audio seconds per forward batch; not given: 10 on CPU, 80 on CUDA")
            c.add_argument("--overwrite", action="store_true", help="rebuild a store whose settings differ")
        if name in ("fit", "evaluate", "predict"):
            c.add_argument("--head", choices=HEADS, default=spec.default_head, help="head of the run")
            c.add_argument("--context", type=float, default=0.0, metavar="SECONDS",
                           help="crf/frames: temporal context each side of a frame, in seconds (0: per-frame "
                                "linear probe); a run with context lives in runs/<backbone>-<head>-ctx<ms>ms")
        if name == "fit":
            c.add_argument("--lr", default="1e-3,3e-3,1e-2",
                           help="learning rate or comma-separated grid, chosen on the selection split")
            c.add_argument("--epochs", type=int, default=60,
                           help="maximum epochs (early stopping on the selection split)")
            c.add_argument("--layers", default="all",
                           help="all (logreg/lgbm: their mean) | each (one linear probe per layer) | concat "
                                "(logreg/lgbm: layers side by side) | i,j,... (stored layer indices)")
            c.add_argument("--seed", type=int, default=0,
                           help="seed of initialisation, shuffling and the holdout draw")
            c.add_argument("--class-weight", choices=["balanced", "paper"], default=spec.default_class_weight,
                           help="balanced = n/(C n_c); paper = 1/n_c^0.2; None: no weighting")
            c.add_argument("--refit", action="store_true",
                           help="train again even if the run folder holds a fit with the same settings")
            add_protocol_arguments(c)
        if name == "evaluate":
            c.add_argument("--score-split", choices=["test", "valid"], default=None,
                           help="split to score; not given: the split the run was scored on at fit time "
                                "(the split that chose the model is refused)")
        if spec.add_arguments is not None:
            spec.add_arguments(c, name)
    return p


def main(spec: TaskSpec, argv=None) -> int:
    args = build_parser(spec).parse_args(argv)
    if hasattr(args, "backbone"):
        args.backbone = args.backbone or ["crepe"]
    handler = {"prepare": cmd_prepare, "build": cmd_build, "fit": cmd_fit, "evaluate": cmd_evaluate,
               "predict": lambda s, a: s.predict(a)}[args.command]
    return handler(spec, args)


def print_metrics(rows: list[dict], columns: list[str]) -> None:
    print(metrics.format_table(rows, columns))

"""The one path every task pipeline goes through: prepare -> build -> fit -> evaluate -> predict.

A task module (``pipelines.singer``, ``pipelines.transcription``, ``pipelines.technique``) declares a
:class:`TaskSpec` and calls :func:`main`. Every command works in one work folder::

    WORKDIR/manifest.csv            prepare: the dataset adapter's manifest for featurestore.build
    WORKDIR/prepare_report.json     prepare: what the adapter skipped, and why
    WORKDIR/store.zarr              build:   the feature store (featurestore.build with the task's settings)
    WORKDIR/runs/<backbone>-<head>/ fit:     heads.fit's run folder (-ctx<ms>ms with --context,
                                             -stdpool / -meanstdpool with --pool std / mean+std,
                                             -layers-each / -layers-3_7 with --layers)
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


def demo_audio(store) -> bool:
    """Are all the store's clips from the built-in demo corpus (its audio under the demo folder)?"""
    from featurestore.build import default_demo_dir

    base = str(default_demo_dir().resolve())
    src = [str(s) for s in store.clips["source"]]
    return bool(src) and all(Path(s).resolve().as_posix().startswith(base) for s in src)


def store_facts(store, label: str | None) -> dict:
    """What a store holds, for titles: ``segment_s`` (seconds, None = whole files), ``classes`` (distinct
    non-empty values of the ``label`` column, None without one), ``files`` (audio files)."""
    import numpy as np

    seg = store.clip_settings.get("segment_s")
    classes = None
    if label:
        try:
            values = np.asarray(store.labels(label)).astype(str)
            classes = len({v for v in values if v})
        except (KeyError, ValueError):
            classes = None
    return {"segment_s": seg or None, "classes": classes, "files": len(set(np.asarray(store.clips["file_id"]).tolist()))}


def data_label(spec: TaskSpec, workdir, store=None) -> str:
    """The task's title, told by the store rather than the task's description: the dataset (``demo corpus
    (synthetic singers)`` for a work folder prepared with ``--demo``), its class count and segment length."""
    from featurestore import open_store

    if store is None:
        try:
            store = open_store(Path(workdir) / "store.zarr")
        except (FileNotFoundError, ValueError):
            return spec.description
    facts = store_facts(store, None if spec.heads_task == "transcription" else spec.heads_task)
    parts = []
    if facts["classes"] is not None:
        parts.append(f"{facts['classes']} classes")
    parts.append(f"{facts['segment_s']:g} s segments" if facts["segment_s"] else "whole files")
    parts.append(f"{facts['files']} audio files")
    if is_demo(workdir) or demo_audio(store):
        return f"{spec.name} on the built-in demo corpus (synthetic singers): " + ", ".join(parts)
    return f"{spec.description}; this store: " + ", ".join(parts)


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
    """Build WORKDIR/store.zarr from the manifest with the task's clip settings
    (:func:`featurestore.build.build`, called with typed settings)."""
    from featurestore.build import ExtractSettings, SettingsMismatch, build, format_report, parse_layer_list

    work = Path(args.workdir)
    if not (work / "manifest.csv").is_file():
        print(f"error: {work / 'manifest.csv'} is missing: run prepare first", file=sys.stderr)
        return 2
    try:
        ext = ExtractSettings(batch_s=args.batch_seconds, dtype=args.dtype, frames=args.frames,
                              layers=parse_layer_list(args.layers))
        report = build(work / "manifest.csv", work / "store.zarr", args.backbone, clip_settings=spec.clip_settings(args),
                       extract=ext, model_path=args.model_path, trust_remote_code=args.trust_remote_code,
                       device=args.device,
                       num_workers=2 if args.num_workers is None else args.num_workers, overwrite=args.overwrite,
                       progress=not args.no_progress)
    except (SettingsMismatch, FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def run_dir(args) -> Path:
    from featurestore.registry import resolve

    try:
        bb = resolve(args.backbone[0]).name
    except KeyError:
        bb = args.backbone[0]
    from heads.tasks import context_suffix, hyper_suffix, layers_suffix, pool_suffix, seed_suffix

    suffix = context_suffix(getattr(args, "context", 0.0))
    suffix += pool_suffix(getattr(args, "pool", None))
    suffix += layers_suffix(getattr(args, "layers", None))
    suffix += hyper_suffix(vars(args))
    suffix += seed_suffix(getattr(args, "seed", None))
    return Path(args.workdir) / "runs" / f"{bb}-{args.head}{suffix}"


def run_pool(rd: Path) -> str:
    """The clip pooling a fitted run was trained on (``pool`` in its metrics.json; ``mean`` for runs
    that predate ``--pool`` or frame heads), so evaluate and predict read the same features."""
    from heads.tasks import DEFAULT_POOL, check_pool

    m = Path(rd) / "metrics.json"
    try:
        pool = json.loads(m.read_text()).get("pool") or DEFAULT_POOL
    except (OSError, ValueError):
        return DEFAULT_POOL
    try:
        return check_pool(pool)
    except ValueError:
        raise ValueError(f"{m}: unknown pool {pool!r}") from None


PROTOCOL_OPTIONS = ("score_split", "select_split", "group", "holdout_fraction")


#: ``fit`` options passed to ``heads.fit`` as they are, when given (heads.fit refuses those that do not
#: apply to the head).
FIT_OPTIONS = ("lr", "epochs", "C", "n_estimators", "gbm_learning_rate", "num_leaves", "min_child_samples")


def seeds_of(args) -> list[int]:
    """The seeds a command works on: ``--seeds`` (a list), else ``--seed`` (default 0)."""
    from heads.tasks import parse_seeds

    if getattr(args, "seeds", None) is not None:
        if getattr(args, "seed", None) is not None:
            raise ValueError("--seed and --seeds: give one of them")
        return parse_seeds(args.seeds)
    return [getattr(args, "seed", None) or 0]


def cmd_fit(spec: TaskSpec, args) -> int:
    """``fit`` once per seed (``--seeds``): seed k's run folder carries ``-seed<k>`` (none for 0)."""
    try:
        seeds = seeds_of(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = 0
    for seed in seeds:
        args.seed = seed
        code = fit_one(spec, args) or code
        if code:
            break
    return code


def fit_one(spec: TaskSpec, args) -> int:
    from heads.fit import main as fit_main

    argv = ["--store", str(Path(args.workdir) / "store.zarr"), "--backbone", args.backbone[0], "--head", args.head,
            "--task", spec.heads_task, "--out", str(run_dir(args)), "--seed", str(args.seed),
            "--device", args.device or "cpu", "--layers", args.layers]
    for opt in FIT_OPTIONS:
        if getattr(args, opt, None) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if getattr(args, "class_weight", None):
        argv += ["--class-weight", args.class_weight]
    if getattr(args, "context", 0):
        argv += ["--context", str(args.context)]
    if getattr(args, "pool", None) not in (None, "mean"):  # the default adds nothing: older markers still match
        argv += ["--pool", args.pool]
    for opt in PROTOCOL_OPTIONS:
        if getattr(args, opt, None) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.allow_scoring_selection_split:
        argv.append("--allow-scoring-selection-split")
    # A finished fit leaves fit_args.json beside its metrics: the same fit is not run twice.
    rd = run_dir(args)
    if (rd / "finetune_args.json").is_file():  # runs/<backbone>@<task>-<mode>-<head> of `finetune`
        if args.refit:
            print(f"error: {rd} is a fine-tuning run (its head was trained with the frontend): retrain it with "
                  "finetune --overwrite, not fit --refit", file=sys.stderr)
            return 2
        print(f"{rd} is a fine-tuning run, fitted by finetune (see {rd / 'metrics.json'}); evaluate it as it is")
        return 0
    marker, wanted = rd / "fit_args.json", json.dumps(argv)
    if (rd / "metrics.json").is_file() and marker.is_file() and marker.read_text() == wanted and not args.refit:
        print(f"{rd} is already fitted with these settings (see {rd / 'metrics.json'}); --refit to train again")
        return 0
    marker.unlink(missing_ok=True)
    code = fit_main(argv + (["--no-progress"] if args.no_progress else []))
    if code == 0:
        marker.write_text(wanted)
    return code


#: ``pipelines.<task> finetune`` options passed to ``heads.finetune`` as they are (when given).
FINETUNE_OPTIONS = ("mode", "epochs", "stage1_epochs", "head_lr", "frontend_lr", "batch_size", "accumulate",
                    "crop_seconds", "lora_rank", "lora_alpha", "lora_targets", "layerdrop", "mask_time_prob",
                    "dropout", "precision", "num_workers", "seed", "patience", "model_path", "class_weight",
                    "context", "log_dir")
FINETUNE_FLAGS = ("gradient_checkpointing", "resume", "overwrite", "allow_scoring_selection_split", "no_progress",
                  "trust_remote_code")


def finetuned_backbone(spec: TaskSpec, args) -> str:
    """The name a fine-tuned backbone gets in the task's store (``heads.finetune`` naming)."""
    from featurestore.registry import resolve
    from heads.finetune import finetuned_name

    try:
        base = resolve(args.backbone[0]).name
    except KeyError:
        base = args.backbone[0]
    return finetuned_name(base, spec.heads_task, args.mode)


def cmd_finetune(spec: TaskSpec, args) -> int:
    """Fine-tune end to end (``heads.finetune``) on the task's store, clips and splits; the run folder is
    ``runs/<backbone>@<task>-<mode>-<head>``, where ``evaluate --backbone <that backbone>`` looks once
    ``reextract`` has written it into the store."""
    from heads.finetune import main as finetune_main

    name = finetuned_backbone(spec, args)
    argv = ["--store", str(Path(args.workdir) / "store.zarr"), "--backbone", args.backbone[0], "--head", args.head,
            "--task", spec.heads_task, "--name", name, "--out", str(Path(args.workdir) / "runs" / f"{name}-{args.head}"),
            "--device", args.device or "cpu"]
    for opt in FINETUNE_OPTIONS + PROTOCOL_OPTIONS:
        v = getattr(args, opt, None)
        if v is not None and not (opt == "context" and not v):
            argv += [f"--{opt.replace('_', '-')}", str(v)]
    argv += [f"--{f.replace('_', '-')}" for f in FINETUNE_FLAGS if getattr(args, f, False)]
    return finetune_main(argv)


def cmd_reextract(spec: TaskSpec, args) -> int:
    """Write a fine-tuned run's frontend into the task's store as its backbone (``heads.reextract``)."""
    from heads.reextract import main as reextract_main

    name = finetuned_backbone(spec, args)
    argv = ["--run", str(Path(args.workdir) / "runs" / f"{name}-{args.head}"),
            "--store", str(Path(args.workdir) / "store.zarr"), "--device", args.device or "cpu"]
    argv += ["--no-progress"] if args.no_progress else []
    argv += ["--overwrite"] if args.overwrite else []
    return reextract_main(argv)


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


def run_label(plan, rd: Path) -> str:
    """``scored on X, chosen on Y`` of a run's evaluation, Y told honestly for a fit that chose nothing
    (:func:`heads.protocol.selection_label`, from the run's metrics.json)."""
    from heads.protocol import protocol_label

    m = Path(rd) / "metrics.json"
    try:
        fit = json.loads(m.read_text())
    except (OSError, ValueError):
        fit = None
    return protocol_label(plan.describe(), fit)


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
    from heads.persist import HEAD_FILE, LEGACY_FILE, legacy_message

    rd = run_dir(args)
    if not (rd / HEAD_FILE).is_file():
        if (rd / LEGACY_FILE).is_file():
            print(f"error: {legacy_message(rd / LEGACY_FILE)}", file=sys.stderr)
        else:
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
    """Evaluate the run of each seed (``--seeds``; else ``--seed``, default 0), append its row to
    ``WORKDIR/runs/results.jsonl`` and rewrite ``WORKDIR/results.md`` from every row there."""
    try:
        seeds = seeds_of(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for seed in seeds:
        args.seed = seed
        code = evaluate_one(spec, args)
        if code:
            return code
    return 0


def evaluate_one(spec: TaskSpec, args) -> int:
    from featurestore import open_store

    rd = fitted_run(args)
    if rd is None:
        return 2
    from featurestore.store import BackboneNotInStore
    from heads.results_log import append_result
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
    fit = json.loads((rd / "metrics.json").read_text()) if (rd / "metrics.json").is_file() else {}
    if "pool" in fit:
        result["pool"] = run_pool(rd)
    result["seed"], result["options"] = fit.get("seed", args.seed or 0), fit.get("options") or {}
    (rd / "evaluation.json").write_text(json.dumps(result, indent=2, default=float))
    append_result(rd.parent, evaluation_row(spec, result, rd.name, fit))
    table = results_table(spec, Path(args.workdir))
    (Path(args.workdir) / "results.md").write_text(table + "\n")
    print(table)
    return 0


def evaluation_row(spec: TaskSpec, result: dict, run: str, fit: dict | None = None) -> dict:
    """The results-table row (:mod:`heads.results_log`) of an evaluation: the task's summary scores and
    their bootstrap intervals (``ci95``, keyed like ``summary_keys``); ``fit``: the run's metrics.json
    (what its selection chose)."""
    from heads.protocol import selection_label

    p = result.get("protocol") or {}
    level = spec.summary_keys[0].split(".")[0]
    sub = result.get(level) if isinstance(result.get(level), dict) and "n" in result.get(level, {}) else result
    n = result.get("n_songs") or sub.get("n")
    items = "songs" if "n_songs" in result else "segments" if sub is not result else "clips"
    return {"command": "evaluate", "task": spec.name, "backbone": result.get("backbone"), "head": result.get("head"),
            "options": result.get("options") or {}, "seed": result.get("seed", 0),
            "scored_split": p.get("scored_split", "?"), "chosen_on": selection_label(p, fit) if p else "?",
            "n_scored": n, "items": items, "metrics": {k: _dig(result, k) for k in spec.summary_keys},
            "ci95": {k: v for k, v in (result.get("ci95") or {}).items() if k in spec.summary_keys}, "run": run}


def _dig(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def results_table(spec: TaskSpec, workdir: Path) -> str:
    """WORKDIR/results.md: every evaluated run of the work folder (the last row of each run in
    ``runs/results.jsonl``; runs evaluated before that file existed from their evaluation.json), each
    score with its bootstrap 95 % interval; then the runs gathered over seeds (mean ± sample sd); then
    the per-layer table of every ``--layers each`` run."""
    from heads import results_log
    from heads.layer_probe import to_markdown as layer_markdown

    runs = workdir / "runs"
    logged = results_log.latest(results_log.read_results(runs), "evaluate")
    seen = {r["run"] for r in logged}
    for f in sorted(runs.glob("*/evaluation.json")):  # evaluated before the results log existed
        if f.parent.name not in seen:
            m = f.parent / "metrics.json"
            fit = json.loads(m.read_text()) if m.is_file() else None
            logged.append(evaluation_row(spec, json.loads(f.read_text()), f.parent.name, fit))
    keys = [(k, k) for k in spec.summary_keys]
    cols = ["scored on", "chosen on"] + spec.summary_keys
    lines = [f"# {spec.name}: {data_label(spec, workdir)}", "", "| run | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for r in sorted(logged, key=lambda r: r["run"]):
        cells = [results_log.format_score(results_log.summarize([r], k)) for k, _ in keys]
        lines.append("| " + " | ".join([r["run"], str(r["scored_split"]), str(r["chosen_on"])] + cells) + " |")
    lines += ["", "(scores in %, [bootstrap 95 % interval over the scored items]; \"scored on\" is the split the "
                  "scores were measured on, \"chosen on\" the clips that chose the learning rate and the stopping "
                  "epoch)"]
    if any(len(g) > 1 for g in results_log.seed_groups(logged)):
        lines += ["", results_log.to_markdown([r for g in results_log.seed_groups(logged) if len(g) > 1 for r in g],
                                              keys, "Over seeds")]
    for r in sorted(logged, key=lambda r: r["run"]):
        m = runs / r["run"] / "metrics.json"
        table = json.loads(m.read_text()).get("layer_table") if m.is_file() else None
        if table:
            lines += ["", layer_markdown(table, f"## {r['run']}: one linear probe per layer (per clip)")]
    return "\n".join(lines)


def build_parser(spec: TaskSpec) -> argparse.ArgumentParser:
    from heads.fit import HEADS, add_protocol_arguments
    from heads.tasks import POOLS

    p = argparse.ArgumentParser(prog=f"python -m pipelines.{spec.name}", description=spec.description,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    commands = {"prepare": "turn the dataset folder (or --demo) into WORKDIR/manifest.csv",
                "build": "extract features into WORKDIR/store.zarr with the task's settings",
                "fit": "train a head on the store (heads.fit) into WORKDIR/runs/<backbone>-<head>",
                "evaluate": "score a fitted run with the task's conventions and update WORKDIR/results.md"}
    commands["finetune"] = ("fine-tune the backbone end to end with the head (heads.finetune: two-stage, lora or "
                            "full) into WORKDIR/runs/<backbone>@<task>-<mode>-<head>")
    commands["reextract"] = ("write a finetune run's frontend into WORKDIR/store.zarr as backbone "
                             "<backbone>@<task>-<mode>; then evaluate/fit it with --backbone <that name>")
    if spec.predict is not None:
        commands["predict"] = "predict for new audio with a fitted run"
    for name, help_ in commands.items():
        c = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        c.add_argument("--workdir", required=True, help="work folder of this task")
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "prepare":
            c.add_argument("--raw", help="the dataset folder, as downloaded")
            c.add_argument("--demo", action="store_true", help="use the built-in demo corpus instead")
        if name in ("build", "fit", "evaluate", "predict", "finetune", "reextract"):
            c.add_argument("--backbone", action="append", default=None,
                           help="backbone, a registry name or alias (repeat for several in build); not given: crepe")
            c.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1); not given: cpu")
        if name == "build":
            c.add_argument("--model-path", help="local folder of the backbone's weights (offline)")
            c.add_argument("--trust-remote-code", action="store_true",
                           help="let the model run Python code from its own repository (featurestore.build "
                                "--trust-remote-code; off: transformers' own classes)")
            c.add_argument("--num-workers", type=int, default=None,
                           help="audio decoding workers; not given: featurestore.build's default")
            c.add_argument("--batch-seconds", type=float, default=None,
                           help="audio seconds per forward batch; not given: 10 on CPU, 80 on CUDA")
            c.add_argument("--overwrite", action="store_true", help="rebuild a store whose settings differ")
            from featurestore.build import add_store_format_arguments

            add_store_format_arguments(c)
        if name in ("finetune", "reextract"):
            add_finetune_arguments(c, spec, name)
        if name in ("fit", "evaluate", "predict"):
            c.add_argument("--head", choices=HEADS, default=spec.default_head, help="head of the run")
            c.add_argument("--context", type=float, default=0.0, metavar="SECONDS",
                           help="crf/frames: temporal context each side of a frame, in seconds (0: per-frame "
                                "linear probe); a run with context lives in runs/<backbone>-<head>-ctx<ms>ms")
            c.add_argument("--pool", choices=POOLS, default=None,
                           help="clip heads: clip statistics the head reads: mean, std or mean+std (side by side, "
                                "D -> 2D per layer); not given: mean. A run with std / mean+std lives in "
                                "runs/<backbone>-<head>-stdpool / -meanstdpool"
                                + ("" if name == "fit" else "; its features are read as the run recorded them"))
        if name in ("fit", "evaluate", "predict"):
            c.add_argument("--seed", type=int, default=None,
                           help="seed of initialisation, shuffling and the holdout draw; not given: 0. A run with "
                                "seed k > 0 lives in runs/<...>-seed<k>")
        if name in ("fit", "evaluate", "predict"):
            where = "" if name == "fit" else " (as given to fit: it names the run folder, runs/<...>-C<...>)"
            c.add_argument("--C", dest="C", default=None,
                           help="logreg: inverse L2 strength or a grid (0.01,0.1,1,10), chosen on the selection "
                                "split" + where)
            for opt, help_ in (("n-estimators", "boosting rounds"), ("gbm-learning-rate", "shrinkage per round"),
                               ("num-leaves", "leaves per tree"), ("min-child-samples", "fewest clips in a leaf")):
                c.add_argument(f"--{opt}", default=None,
                               help=f"lgbm: {help_}, or a comma-separated grid chosen on the selection split" + where)
        if name in ("fit", "evaluate"):
            c.add_argument("--seeds", default=None,
                           help="comma-separated seeds (0,1,2): one run per seed; results.md gives their mean ± "
                                "sample sd")
        if name == "fit":
            c.add_argument("--lr", default=None,
                           help="torch heads: learning rate or comma-separated grid, chosen on the selection split; "
                                "not given: heads.fit's 1e-3,3e-3,1e-2")
            c.add_argument("--epochs", type=int, default=None,
                           help="torch heads: maximum epochs (early stopping on the selection split); not given: 60")

            c.add_argument("--layers", default="all",
                           help="all (logreg/lgbm: their mean) | each (one linear probe per layer) | concat "
                                "(logreg/lgbm: layers side by side) | i,j,... (stored layer indices)")
            c.add_argument("--class-weight", choices=["balanced", "paper"], default=spec.default_class_weight,
                           help="balanced = n/(C n_c); paper = 1/n_c^0.2; None: no weighting")
            c.add_argument("--refit", action="store_true",
                           help="train again even if the run folder holds a fit with the same settings")
            add_protocol_arguments(c)
        if name in ("evaluate", "predict"):
            c.add_argument("--layers", default="all",
                           help="the fit's --layers (a run fitted with --layers each / concat / i,j lives in "
                                "runs/<backbone>-<head>-layers-<...>)")
        if name == "evaluate":
            c.add_argument("--score-split", choices=["test", "valid"], default=None,
                           help="split to score; not given: the split the run was scored on at fit time "
                                "(the split that chose the model is refused)")
        if spec.add_arguments is not None:
            spec.add_arguments(c, name)
    return p


def add_finetune_arguments(c: argparse.ArgumentParser, spec: TaskSpec, command: str) -> None:
    """Options of ``finetune`` / ``reextract`` (defaults not given here are heads.finetune's)."""
    c.add_argument("--head", choices=("linear", "mlp", "frames", "crf"), default=spec.default_head,
                   help="head on the weighted layer sum")
    c.add_argument("--mode", choices=("two-stage", "lora", "full"), default="two-stage",
                   help="what of the frontend learns (see python -m heads.finetune --help)")
    if command == "reextract":
        c.add_argument("--overwrite", action="store_true",
                       help="replace the backbone when it was extracted from other weights (a run fine-tuned again)")
        return
    for opt, kind, help_ in (("epochs", int, "total epochs (paper: 30 singer, 20 technique)"),
                             ("stage1-epochs", int, "epochs with the frontend frozen (paper: 6 singer, 5 technique)"),
                             ("head-lr", float, "Adam rate of the head (default 3e-3)"),
                             ("frontend-lr", float, "Adam rate of the frontend (default 5e-5; 5e-4 for lora)"),
                             ("batch-size", int, "clips per step (paper: 32 singer, 16 technique)"),
                             ("accumulate", int, "batches per optimiser step"),
                             ("crop-seconds", float, "longest training input in seconds"),
                             ("lora-rank", int, "LoRA rank"), ("lora-alpha", float, "LoRA alpha"),
                             ("lora-targets", str, "modules with LoRA adapters (default q_proj,v_proj)"),
                             ("layerdrop", float, "layerdrop while training (default 0)"),
                             ("mask-time-prob", float, "SpecAugment time masking while training (default 0)"),
                             ("dropout", float, "frontend dropout (default: the checkpoint's)"),
                             ("precision", str, "auto | fp32 | bf16 | fp16 (CUDA autocast)"),
                             ("num-workers", int, "audio decoding workers"), ("patience", int, "early stopping"),
                             ("seed", int, "seed"), ("model-path", str, "local folder of the backbone's weights"),
                             ("context", float, "crf/frames: temporal context in seconds"),
                             ("log-dir", str, "TensorBoard event files of every epoch here (tracking extra)")):
        c.add_argument(f"--{opt}", type=kind, default=None, help=help_)
    c.add_argument("--class-weight", choices=["balanced", "paper"], default=spec.default_class_weight,
                   help="clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2")
    c.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    c.add_argument("--trust-remote-code", action="store_true",
                   help="let the model run Python code from its own repository (off: transformers' own classes)")
    c.add_argument("--resume", action="store_true", help="continue an unfinished run from its checkpoint")
    c.add_argument("--overwrite", action="store_true", help="start the run over")
    from heads.fit import add_protocol_arguments

    add_protocol_arguments(c)


def main(spec: TaskSpec, argv=None) -> int:
    args = build_parser(spec).parse_args(argv)
    if hasattr(args, "backbone"):
        args.backbone = args.backbone or ["crepe"]
    handler = {"prepare": cmd_prepare, "build": cmd_build, "fit": cmd_fit, "evaluate": cmd_evaluate,
               "finetune": cmd_finetune, "reextract": cmd_reextract,
               "predict": lambda s, a: s.predict(a)}[args.command]
    return handler(spec, args)


def print_metrics(rows: list[dict], columns: list[str]) -> None:
    print(metrics.format_table(rows, columns))

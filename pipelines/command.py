"""``python -m pipelines.<task> <command>``: the command line over :class:`pipelines.task_pipeline.TaskPipeline`.

Each sub-command parses its options into typed settings (a :class:`heads.fit_spec.FitSpec`, a
:class:`heads.finetune_spec.FinetuneSpec`, the task's own options), calls one pipeline method and
prints its record. The options come from the same declarations as ``heads.fit`` / ``heads.finetune``
(:mod:`featurestore.options`); ``fit`` and ``finetune`` also take ``--config FILE`` and
``--print-config``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from featurestore.cli import HelpFormatter
from featurestore.options import (SpecError, add_config_options, add_options, field_names, from_namespace,
                                  parse_with_config, to_yaml)
from heads.fit_spec import CLIP_HEADS
from pipelines.runner import TaskSpec

#: FitSpec settings that name a fitted run's folder (evaluate and predict find the run by them).
RUN_NAMING = ("backbone", "head", "layers", "context", "pool", "C", "n_estimators", "gbm_learning_rate",
              "num_leaves", "min_child_samples", "seed")
COMMANDS = {"prepare": "turn the dataset folder (or --demo) into WORKDIR/manifest.csv",
            "build": "extract features into WORKDIR/store.zarr with the task's settings",
            "fit": "train a head on the store (heads.fit) into WORKDIR/runs/<backbone>-<head>",
            "evaluate": "score a fitted run with the task's conventions and update WORKDIR/results.md",
            "finetune": "fine-tune the backbone end to end with the head (heads.finetune: two-stage, lora or "
                        "full) into WORKDIR/runs/<backbone>@<task>-<mode>-<head>",
            "reextract": "write a finetune run's frontend into WORKDIR/store.zarr as backbone "
                         "<backbone>@<task>-<mode>; then evaluate/fit it with --backbone <that name>",
            "predict": "predict for new audio with a fitted run"}


def _only(cls, keep) -> set[str]:
    """The fields of ``cls`` other than ``keep`` (to skip them)."""
    return field_names(cls) - set(keep)


def build_parser(spec: TaskSpec) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The task's parser and its sub-command parsers by name."""
    from featurestore.build import add_store_format_arguments
    from heads.finetune_spec import FinetuneSpec
    from heads.fit_spec import FitSpec, TORCH_HEADS

    p = argparse.ArgumentParser(prog=f"python -m pipelines.{spec.name}", description=spec.description,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    subs = {}
    fit_defaults = {"head": spec.default_head, "class_weight": spec.default_class_weight, "seed": None}
    for name, help_ in COMMANDS.items():
        if name == "predict" and spec.predict is None:
            continue
        c = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        subs[name] = c
        c.add_argument("--workdir", required=True, help="work folder of this task")
        if name == "prepare":
            c.add_argument("--raw", help="the dataset folder, as downloaded")
            c.add_argument("--demo", action="store_true", help="use the built-in demo corpus instead")
        if name == "build":
            c.add_argument("--backbone", action="append", default=None,
                           help="backbone, a registry name or alias (repeat for several); not given: crepe")
            c.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1); not given: cpu")
            c.add_argument("--model-path", help="local folder of the backbone's weights (offline)")
            c.add_argument("--trust-remote-code", action="store_true",
                           help="let the model run Python code from its own repository (featurestore.build "
                                "--trust-remote-code; off: transformers' own classes)")
            c.add_argument("--num-workers", type=int, default=None,
                           help="audio decoding workers; not given: featurestore.build's default")
            c.add_argument("--batch-seconds", type=float, default=None,
                           help="audio seconds per forward batch; not given: 10 on CPU, 80 on CUDA")
            c.add_argument("--overwrite", action="store_true", help="rebuild a store whose settings differ")
            add_store_format_arguments(c)
        if name == "fit":
            # a task's own class weights (technique: paper): the formatter shows it as the default, so the
            # spec's "not given: none" would contradict it
            cw_help = {"class_weight": "clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2"} \
                if spec.default_class_weight else None
            add_options(c, FitSpec, skip={"task"}, defaults=fit_defaults, help=cw_help)
            c.add_argument("--seeds", default=None,
                           help="comma-separated seeds (0,1,2): one run per seed; results.md gives their mean ± "
                                "sample sd")
            c.add_argument("--refit", action="store_true",
                           help="train again even if the run folder holds a fit with the same settings")
            add_config_options(c)
        if name in ("evaluate", "predict"):
            add_options(c, FitSpec, skip=_only(FitSpec, RUN_NAMING), defaults=fit_defaults,
                        help={"head": "head of the run", "seed": "seed of the run (a run with seed k > 0 lives in "
                                                                  "runs/<...>-seed<k>)"})
            c.add_argument("--run", default=None, metavar="DIR",
                           help="the run folder itself (then the options naming it are not needed)")
            c.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1); not given: cpu")
        if name == "evaluate":
            c.add_argument("--seeds", default=None, help="comma-separated seeds: evaluate the run of each")
            c.add_argument("--score-split", choices=["test", "valid"], default=None,
                           help="split to score; not given: the split the run was scored on at fit time "
                                "(the split that chose the model is refused)")
        if name == "finetune":
            add_options(c, FinetuneSpec, skip={"task"},
                        defaults={"head": spec.default_head, "class_weight": spec.default_class_weight},
                        help={"resume": "continue the unfinished run in its run folder (WORKDIR/runs/<backbone>@"
                                        "<task>-<mode>-<head>) from its last checkpoint"})
            add_config_options(c)
        if name == "reextract":
            c.add_argument("--backbone", default="crepe", help="the base backbone of the finetune run")
            c.add_argument("--head", choices=TORCH_HEADS, default=spec.default_head, help="head of the finetune run")
            c.add_argument("--mode", choices=("two-stage", "lora", "full"), default="two-stage",
                           help="mode of the finetune run")
            c.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1); not given: cpu")
            c.add_argument("--overwrite", action="store_true",
                           help="replace the backbone when it was extracted from other weights (a run fine-tuned "
                                "again)")
        if name not in ("fit", "finetune"):
            c.add_argument("--no-progress", action="store_true", help="no progress bars")
        add_options(c, spec.options, command=name)
    return p, subs


def parse_args(spec: TaskSpec, argv=None) -> argparse.Namespace:
    from heads.fit_spec import FitSpec

    argv = list(sys.argv[1:] if argv is None else argv)
    p, subs = build_parser(spec)
    command = next((a for a in argv if a in subs), None)
    if command in ("fit", "finetune") and "--config" in " ".join(argv):
        if command == "fit":
            cls = FitSpec
        else:
            from heads.finetune_spec import FinetuneSpec as cls
        # seeds and refit are fit's own options: in a finetune config they would be dropped unread
        names = field_names(cls) | field_names(spec.options, command) | {"store"} | (
            {"seeds", "refit"} if command == "fit" else set())
        return parse_with_config(p, argv, names=names, target=subs[command])
    return p.parse_args(argv)


def main(spec: TaskSpec, argv=None) -> int:
    args = parse_args(spec, argv)
    handler = {"prepare": cmd_prepare, "build": cmd_build, "fit": cmd_fit, "evaluate": cmd_evaluate,
               "predict": cmd_predict, "finetune": cmd_finetune, "reextract": cmd_reextract}[args.command]
    from heads.tasks import TaskError
    from featurestore.store import BackboneNotInStore
    from heads.runs import RunError

    try:
        return handler(spec, args)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
    except (TaskError, BackboneNotInStore, RunError, ValueError, FileNotFoundError, KeyError, RuntimeError,
            OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
    return 2


def pipeline_from_args(spec: TaskSpec, args: argparse.Namespace):
    from pipelines.task_pipeline import TaskPipeline

    return TaskPipeline(spec, args.workdir)


def options_from_args(spec: TaskSpec, args: argparse.Namespace):
    """The task's own settings of the parsed command (the others at their defaults)."""
    return from_namespace(spec.options, args)


def cmd_prepare(spec: TaskSpec, args: argparse.Namespace) -> int:
    if not args.demo and not args.raw:
        print("error: prepare needs --raw DATASET_DIR (or --demo)", file=sys.stderr)
        return 2
    pipe = pipeline_from_args(spec, args)
    rec = pipe.prepare(args.raw, demo=args.demo, options=options_from_args(spec, args))
    counts = ", ".join(f"{k or '-'}: {v}" for k, v in rec.splits.items())
    print(f"{spec.name}: {rec.items} items -> {rec.manifest} ({counts})")
    if rec.skipped:
        print(f"skipped {len(rec.skipped)}:")
        for s in rec.skipped:
            print(f"  - [{s['reason']}] {s['message']}")
    return 0


def cmd_build(spec: TaskSpec, args: argparse.Namespace) -> int:
    from featurestore.build import ExtractSettings, format_report, parse_layer_list

    pipe = pipeline_from_args(spec, args)
    ext = ExtractSettings(batch_s=args.batch_seconds, dtype=args.dtype, frames=args.frames,
                          layers=parse_layer_list(args.layers))
    report = pipe.build(args.backbone or ["crepe"], options=options_from_args(spec, args), extract=ext,
                        model_path=args.model_path, trust_remote_code=args.trust_remote_code, device=args.device,
                        num_workers=2 if args.num_workers is None else args.num_workers, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(format_report(report))
    return 0


def fit_specs_from_args(spec: TaskSpec, args: argparse.Namespace, keep=None) -> list:
    """One FitSpec per seed (``--seeds``, else ``--seed``, default 0); ``keep``: the FitSpec settings
    this command takes (the others at their defaults)."""
    from heads.fit_spec import FitSpec
    from heads.tasks import parse_seeds

    seeds_text = getattr(args, "seeds", None)
    if seeds_text is not None and args.seed is not None:
        raise SpecError("seeds", "give seed or seeds, not both")
    seeds = parse_seeds(seeds_text) if seeds_text is not None else [args.seed or 0]
    values = {k: v for k, v in vars(args).items() if k in field_names(FitSpec) and (keep is None or k in keep)}
    values.update(task=spec.heads_task, device=getattr(args, "device", None) or "cpu")
    values["class_weight"] = _class_weight(spec, values.get("head"), values.get("class_weight"))
    base = FitSpec(**{**values, "seed": seeds[0]})
    return [dataclasses.replace(base, seed=s) for s in seeds]


def _class_weight(spec: TaskSpec, head: str | None, given: str | None) -> str | None:
    """The class weighting a parsed command asks for: the task's default weighting is for clip heads, so
    with a frame head it is dropped (one given explicitly stays, and the spec refuses it)."""
    return None if head not in CLIP_HEADS and given == spec.default_class_weight else given


def _check_config_store(pipe, given: str | None) -> None:
    """A config file naming another store than the work folder's is refused (not silently ignored)."""
    from heads.runs import store_path

    if given and store_path(given) != store_path(pipe.store_path):
        raise SpecError("store", f"{given}: the {pipe.task.name} pipeline reads its work folder's store "
                                 f"{pipe.store_path}; use heads.fit --config for another store")


def cmd_fit(spec: TaskSpec, args: argparse.Namespace) -> int:
    from heads.fit import reused_message, summary_table
    from heads.runs import store_path

    pipe = pipeline_from_args(spec, args)
    _check_config_store(pipe, getattr(args, "store", None))
    specs = fit_specs_from_args(spec, args)
    if args.print_config:
        print(to_yaml(specs[0], header=f"python -m pipelines.{spec.name} fit --workdir {args.workdir} --config FILE",
                      extra={"store": store_path(pipe.store_path)}), end="")
        return 0
    for one in specs:
        rec = pipe.fit(one, refit=args.refit)
        if rec.reused:
            print(reused_message(rec))
        else:
            print(summary_table(rec.report))
            print(f"run folder: {rec.path}")
    return 0


def cmd_evaluate(spec: TaskSpec, args: argparse.Namespace) -> int:
    """Evaluate ``--run``, or the run of each seed (``--seeds``; else ``--seed``, default 0)."""
    pipe = pipeline_from_args(spec, args)
    opts = options_from_args(spec, args)
    runs = [Path(args.run)] if args.run else [pipe.run_folder(s).path
                                              for s in fit_specs_from_args(spec, args, keep=RUN_NAMING)]
    for run in runs:
        rec = pipe.evaluate(run, options=opts, score_split=args.score_split)
        if spec.describe is not None:
            print(spec.describe(rec.result, rec.run))
        print(rec.table)
    return 0


def cmd_predict(spec: TaskSpec, args: argparse.Namespace) -> int:
    pipe = pipeline_from_args(spec, args)
    run = Path(args.run) if args.run else pipe.run_folder(fit_specs_from_args(spec, args, keep=RUN_NAMING)[0]).path
    rec = pipe.predict(run, options=options_from_args(spec, args), backbone=None if args.run else args.backbone,
                       device=args.device or "cpu", progress=not args.no_progress)
    print(f"predictions for {rec.n_files} file(s) written to {rec.out}" + (f" ({rec.what})" if rec.what else ""))
    return 0


def finetune_spec_from_args(spec: TaskSpec, args: argparse.Namespace):
    from heads.finetune_spec import FinetuneSpec
    from pipelines.task_pipeline import TaskPipeline

    pipe = TaskPipeline(spec, args.workdir)
    values = {"task": spec.heads_task, "class_weight": _class_weight(spec, args.head, args.class_weight)}
    values["name"] = args.name or pipe.finetuned_backbone(args.backbone, args.mode)
    return from_namespace(FinetuneSpec, args, **values)


def cmd_finetune(spec: TaskSpec, args: argparse.Namespace) -> int:
    from heads.fit import summary_table

    pipe = pipeline_from_args(spec, args)
    _check_config_store(pipe, getattr(args, "store", None))
    ft = finetune_spec_from_args(spec, args)
    if args.print_config:
        print(to_yaml(ft, header=f"python -m pipelines.{spec.name} finetune --workdir {args.workdir} --config FILE"),
              end="")
        return 0
    rec = pipe.finetune(ft)
    if rec.report is not None:
        if rec.state == "already done":
            print(f"{rec.run} is already fine-tuned with these settings (see {rec.run / 'metrics.json'}); "
                  "--overwrite to train again")
        else:
            print(summary_table(rec.report))
        print(f"run folder: {rec.run}\nnext: python -m pipelines.{spec.name} reextract --workdir {args.workdir} "
              f"--backbone {args.backbone} --head {ft.head} --mode {ft.mode}")
    return 0


def cmd_reextract(spec: TaskSpec, args: argparse.Namespace) -> int:
    from heads.reextract import format_reextract

    from heads.runs import finetune_run_name

    pipe = pipeline_from_args(spec, args)
    rd = pipe.runs_dir / finetune_run_name(pipe.finetuned_backbone(args.backbone, args.mode), args.head)
    rec = pipe.reextract(rd, device=args.device or "cpu", overwrite=args.overwrite, progress=not args.no_progress)
    print(format_reextract(rec))
    return 0

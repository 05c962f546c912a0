"""What a task pipeline is made of: :class:`TaskSpec` (a task's adapter, store settings and evaluation)
and the helpers its steps share. The steps themselves are :class:`pipelines.task_pipeline.TaskPipeline`
(prepare -> build -> fit -> evaluate -> predict, finetune, reextract); the command line over them is
:mod:`pipelines.command`.

A task module (``pipelines.singer``, ``pipelines.transcription``, ``pipelines.technique``) declares a
:class:`TaskSpec` and calls :func:`pipelines.command.main`. Every step works in one work folder::

    WORKDIR/manifest.csv            prepare: the dataset adapter's manifest for featurestore.build
    WORKDIR/prepare_report.json     prepare: what the adapter skipped, and why
    WORKDIR/store.zarr              build:   the feature store (featurestore.build with the task's settings)
    WORKDIR/runs/<backbone>-<head>/ fit:     heads.fit's run folder (heads.runs naming: -ctx<ms>ms with --context,
                                             -stdpool / -meanstdpool with --pool std / mean+std,
                                             -layers-each / -layers-3_7 with --layers, -seed<k>)
    WORKDIR/runs/<...>/evaluation.json, WORKDIR/results.md   evaluate: task metrics, and a table of all runs

``prepare --demo`` turns the built-in demo corpus into the same manifest, so every pipeline runs
end to end without a download.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featurestore.clips import ClipSettings
from featurestore.manifest import RESERVED


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


@dataclass(frozen=True)
class NoOptions:
    """A task without options of its own."""


@dataclass(frozen=True)
class TaskSpec:
    """What makes a task: its adapter, its store settings, its heads task and its evaluation. ``opts``
    is an instance of ``options``, the task's own settings (a frozen dataclass declared with
    :func:`featurestore.options.option`, each field tagged with the sub-commands that show it).

    prepare(raw_dir: Path, opts) / prepare_demo(demo_manifest: Path, opts) -> PrepareResult
    clip_settings(opts, demo: bool) -> featurestore ClipSettings (segments, trimming, separation)
    evaluate(store, run_dir: Path, opts, score_split: str | None) -> dict of metrics (the task's own
        conventions, e.g. song level), on the run's scored split unless ``score_split`` is given
    predict(pipeline, run_dir: Path, backbone: str, opts, device: str, progress: bool) -> PredictRecord
        (optional)
    describe(result: dict, run_dir: Path) -> str: what ``evaluate`` prints of a run (optional)
    summary_keys: metric keys (dotted paths into the evaluation dict) for results.md
    """

    name: str
    description: str
    heads_task: str
    default_head: str
    prepare: Callable
    prepare_demo: Callable
    clip_settings: Callable[..., ClipSettings]
    evaluate: Callable
    summary_keys: list[str]
    predict: Callable | None = None
    options: type = NoOptions
    default_class_weight: str | None = None
    describe: Callable | None = None


@dataclass(frozen=True)
class PredictRecord:
    """What ``predict`` wrote: ``out`` (a CSV or a folder), ``n_files`` predicted, the files skipped,
    and what the output holds (``what``)."""

    out: Path
    n_files: int
    skipped: list = field(default_factory=list)
    what: str = ""


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


def run_pool(rd: Path) -> str:
    """The clip pooling a fitted run was trained on (``pool`` in its metrics.json; ``mean`` for runs
    that predate ``--pool`` or frame heads), so evaluate and predict read the same features."""
    from heads.runs import read_metrics
    from heads.tasks import DEFAULT_POOL, check_pool

    pool = (read_metrics(rd) or {}).get("pool") or DEFAULT_POOL
    try:
        return check_pool(pool)
    except ValueError:
        raise ValueError(f"{Path(rd) / 'metrics.json'}: unknown pool {pool!r}") from None


def run_plan(store, rd: Path, spec: TaskSpec, backbone: str, score: str | None = None):
    """The split plan a fitted run was trained under (from its metrics.json), scoring ``score`` (None: the
    run's own scored split). Scoring the split that chose the run's model is refused
    (:func:`heads.protocol.replan`)."""
    from heads.runs import read_metrics
    from heads.tasks import TaskError, make_task

    desc = (read_metrics(rd) or {}).get("protocol")
    if not desc:
        raise TaskError(f"{Path(rd) / 'metrics.json'} does not say which split chose the model (a run from an "
                        "older version?): fit it again with --refit")
    return make_task(spec.heads_task).replan(store, backbone, desc, score=score)


def run_label(plan, rd: Path) -> str:
    """``scored on X, chosen on Y`` of a run's evaluation, Y told honestly for a fit that chose nothing
    (:func:`heads.protocol.selection_label`, from the run's metrics.json)."""
    from heads.protocol import protocol_label
    from heads.runs import read_metrics

    return protocol_label(plan.describe(), read_metrics(rd))


def run_backbone(rd: Path, fallback: str | None = None) -> str | None:
    """The backbone a run was fitted on, as named in the store (from its metrics.json, else ``fallback``)."""
    from heads.runs import read_metrics

    return (read_metrics(rd) or {}).get("backbone") or fallback


def training_clip_settings(spec: TaskSpec, workdir, opts, demucs_repo: str | None = None) -> ClipSettings:
    """For predict: the clip settings of the work folder's training store, so new audio is cut and
    separated the same way (``demucs_repo`` may point at a local copy of the weights); without a
    training store, the task's settings from ``opts``."""
    from featurestore import open_store

    try:
        stored = dict(open_store(Path(workdir) / "store.zarr").clip_settings)
    except (FileNotFoundError, ValueError):
        stored = {}
    if not stored:
        print("note: no training store in the work folder: clip settings from the arguments", file=sys.stderr)
        return spec.clip_settings(opts, is_demo(workdir))
    if stored.get("separate") and demucs_repo:
        stored["demucs_repo"] = demucs_repo
    return ClipSettings.from_dict(stored)


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
    from heads.runs import read_metrics

    runs = workdir / "runs"
    logged = results_log.latest(results_log.read_results(runs), "evaluate")
    seen = {r["run"] for r in logged}
    for f in sorted(runs.glob("*/evaluation.json")):  # evaluated before the results log existed
        if f.parent.name not in seen:
            fit = read_metrics(f.parent)
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
        table = (read_metrics(runs / r["run"]) or {}).get("layer_table")
        if table:
            lines += ["", layer_markdown(table, f"## {r['run']}: one linear probe per layer (per clip)")]
    return "\n".join(lines)



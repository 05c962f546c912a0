"""``python -m benchmarks.frontends``: frontends side by side on the singing tasks, in the shape of the
paper's Tables I, II and IV, with the learned layer weights.

    python -m benchmarks.frontends --workdir cmp --demo                       # CI demo: built-in corpus
    python -m benchmarks.frontends --workdir cmp --demo --layers each --published
    python -m benchmarks.frontends --workdir cmp --tasks singer --backbones wavlm,mert-v0 --device cuda

The matrix is task x backbone x head. Every cell goes through the task pipeline's own steps
(:class:`pipelines.task_pipeline.TaskPipeline` prepare / build / fit / evaluate, typed calls: no argument
lists), in one pipelines work folder per task, ``WORKDIR/<task>/``. ``--config grid.yaml`` describes a whole
comparison (:class:`ComparisonSpec`: tasks, backbones, heads, seeds, fit options), and every call
records its resolved settings in ``WORKDIR/comparison.yaml``:

- prepare: only with ``--demo`` (the built-in demo corpus) and only when ``WORKDIR/<task>/manifest.csv``
  is missing; for a real dataset run ``python -m pipelines.<task> prepare --workdir WORKDIR/<task> --raw
  ...`` once first. ``--store PATH`` instead links ``WORKDIR/<task>/store.zarr`` to an existing store
  and nothing is prepared or built (backbones missing from it are marked ``not in store``);
- build: the backbones missing from the task's store are added to it, one build per backbone (a
  failure marks that frontend ``not built`` and the others go on);
- fit: ``TaskPipeline.fit``; a run folder holding a fit of the same spec is reused (its ``config.yaml``,
  :mod:`heads.runs`), so a second invocation only fits what is missing or what changed;
- evaluate: when the run has no ``evaluation.json`` newer than its ``metrics.json``;
- ``--layers each``: also one linear probe per stored layer (the layer sweep) for the clip tasks,
  in ``WORKDIR/<task>/layer_sweep/`` (a work folder sharing the task's store), so the main run is
  not overwritten.

Tables and plots are rendered from every finished run of the work folder, not only from this call's
cells: calls with other ``--tasks``, ``--backbones`` or ``--heads`` add up, and no call drops another's
rows. ``--seeds 0,1,2`` fits each cell once per seed (``<run>``, ``<run>-seed1``, ...) and shows mean ±
sample sd; a single run shows each score with its bootstrap 95 % interval (:mod:`heads.intervals`).

Outputs (scores in %, each row with its scored split and the split that chose the model):

- ``WORKDIR/<task>/comparison.md`` and ``comparison.csv``: one row per frontend (and head), the paper's
  columns (:mod:`benchmarks.frontend_table`); ``—`` and a footnote for a missing cell. The pipelines'
  own ``WORKDIR/<task>/results.md`` (every run of the folder) is left as the pipeline writes it;
- ``WORKDIR/comparison.md``: the task tables together, with the plots;
- ``WORKDIR/plots/layer_weights.png`` (frontend x layer heatmap, a panel per task, scaled by layer count
  or per frontend: ``--heatmap-scale``), ``layer_sweep.png`` (``--layers each``: scored-split accuracy per
  layer, chosen layer, chance), ``main_metric.png`` (bar chart with intervals, n and chance; published bars
  hatched, on ``main_metric_published.png`` when demo rows are shown, unless ``--published-beside-demo``),
  each also as SVG;
- ``WORKDIR/<task>/comparison_status.json``: why cells are missing (failures of this or earlier runs);
  ``WORKDIR/frontends.log``: what the pipelines printed.

Rows are labelled ``demo corpus`` (a work folder prepared from the demo, or a store of demo audio)
and ``random-init`` (a model folder holding :data:`RANDOM_MARKER`, such as the built-in ``random-tiny``:
a tiny wav2vec2 with random weights, seed 0, that exercises the transformer path and learns nothing
about singing). ``--published`` adds the paper's rows (:mod:`benchmarks.published`), labelled
``[published]``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.cli import HelpFormatter
from featurestore.options import (SpecError, add_config_options, add_options, field_names, from_namespace,
                                  option, parse_with_config, to_yaml, write_config)
from benchmarks import frontend_plots as plots
from benchmarks import frontend_table as table
from benchmarks.published import PAPER_BACKBONES
from heads.runs import read_metrics

TASKS = ("singer", "transcription", "technique")
#: Built-in backbone name: a tiny randomly initialised wav2vec2 written to ``WORKDIR/models/random-tiny``.
RANDOM_TINY = "random-tiny"
#: File in a model folder that marks its weights as random (rows labelled ``random-init``).
RANDOM_MARKER = "random_init.json"
#: The ``--demo`` default backbones (edit here). Registry names this version lacks are left out with a note.
DEMO_BACKBONES = ("crepe", "pesto", "logmel", RANDOM_TINY)
#: Without ``--demo``: the paper's four self-supervised checkpoints.
DEFAULT_BACKBONES = PAPER_BACKBONES
#: Sizes of the built-in random transformer (hidden 32, 2 layers: 3 stored hidden states).
RANDOM_TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                          mask_time_prob=0.0, mask_feature_prob=0.0)
STATUS_FILE = "comparison_status.json"
SWEEP_DIR = "layer_sweep"


# ----------------------------------------------------------------------------------------------
# backbones
# ----------------------------------------------------------------------------------------------
def make_random_tiny(folder: Path) -> Path:
    """A tiny wav2vec2 with random weights (seed 0) saved in ``folder`` with :data:`RANDOM_MARKER`;
    reused when already there."""
    folder = Path(folder)
    if (folder / RANDOM_MARKER).is_file() and (folder / "config.json").is_file():
        return folder
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = T.Wav2Vec2Model(T.Wav2Vec2Config(**RANDOM_TINY_CONFIG)).eval()
    model.save_pretrained(folder)
    (folder / RANDOM_MARKER).write_text(json.dumps(
        {"what": "wav2vec2 with random weights (torch seed 0): exercises the transformer path, learned nothing",
         "config": RANDOM_TINY_CONFIG}, indent=2))
    return folder


def _known_name(name: str) -> bool:
    from featurestore.registry import ALIASES, REGISTRY

    return name.lower() in REGISTRY or name.lower() in ALIASES


def default_backbones(demo: bool) -> list[str]:
    """:data:`DEMO_BACKBONES` (those this version knows) with ``--demo``, else :data:`DEFAULT_BACKBONES`."""
    if not demo:
        return list(DEFAULT_BACKBONES)
    out = [b for b in DEMO_BACKBONES if b == RANDOM_TINY or _known_name(b)]
    for b in DEMO_BACKBONES:
        if b not in out:
            print(f"note: {b} is not in this version's registry: left out of the demo backbones")
    return out


def display_name(backbone: str) -> str:
    """The name a backbone gets in a store and in run folders (registry name, or the folder's name)."""
    from featurestore.registry import resolve

    try:
        return resolve(backbone).name
    except KeyError:
        return backbone


def check_backbone(name: str) -> None:
    """A clear error for a name that is neither :data:`RANDOM_TINY`, a fine-tuned backbone
    (``<backbone>@<task>-<mode>``, already in the task's store), a registry name or alias, a local
    folder nor a Hugging Face id."""
    from featurestore.registry import resolve

    if name == RANDOM_TINY or "@" in name:  # "@": a fine-tuned backbone, written by pipelines.<task> reextract
        return
    try:
        resolve(name)
    except KeyError as e:
        raise SpecError("backbones", e.args[0]) from None


def finetune_provenance(store, name: str) -> dict | None:
    """The provenance of a fine-tuned backbone (``heads.finetune`` run, mode, task), or None."""
    try:
        return store.info(name)["frontend"].get("provenance")
    except Exception:  # noqa: BLE001 - not stored: nothing to say
        return None


def random_init(store, name: str) -> bool:
    """Is the stored backbone ``name`` a random-weights model (its source folder holds RANDOM_MARKER)?"""
    try:
        src = store.info(name)["frontend"].get("source") or ""
    except Exception:  # noqa: BLE001 - not stored: nothing to say
        return False
    return bool(src) and (Path(src) / RANDOM_MARKER).is_file()


def demo_store(store) -> bool:
    """Are all the store's clips from the built-in demo corpus? (:func:`pipelines.runner.demo_audio`)"""
    from pipelines.runner import demo_audio

    return demo_audio(store)


# ----------------------------------------------------------------------------------------------
# calling the pipelines
# ----------------------------------------------------------------------------------------------
class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


@contextlib.contextmanager
def logged(log, what: str):
    """What a step prints goes to ``log`` (stdout) and to the console and ``log`` (stderr)."""
    log.write(f"\n# {what}\n")
    log.flush()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        yield


def attempt(log, what: str, fn):
    """``fn()`` with its output logged -> (its result or None, "" or why it failed). One failing cell
    must not stop the comparison: an exception becomes its message (the traceback goes to the log)."""
    with logged(log, what):
        try:
            return fn(), ""
        except SpecError as e:
            return None, f"refused: {e}"
        except Exception as e:  # noqa: BLE001 - reported in the table's footnotes, traceback in the log
            traceback.print_exc(file=log)
            return None, f"{type(e).__name__}: {e}"


def _load_status(tdir: Path) -> dict:
    try:
        return json.loads((tdir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------
# one task
# ----------------------------------------------------------------------------------------------
class TaskRun:
    """The cells of one task: prepare/link, build, fit, evaluate, sweep; counts what was done. Every step
    is a call of the task's :class:`pipelines.task_pipeline.TaskPipeline`."""

    def __init__(self, task: str, root: Path, spec: "ComparisonSpec", backbones: list[str], heads: list[str], log,
                 say):
        from pipelines.task_pipeline import TaskPipeline

        self.task, self.cfg, self.backbones, self.heads, self.log, self.say = task, spec, backbones, heads, log, say
        self.dir = (root / task).resolve()
        self.pipe = TaskPipeline(task, self.dir)
        self.spec = self.pipe.task
        self.status = _load_status(self.dir)
        self.counts = {"fitted": 0, "reused": 0, "evaluated": 0, "failed": 0, "built": 0}
        self.stored: dict[str, str] = {}      # backbone argument -> name in the store
        self.missing: dict[str, tuple[str, str]] = {}  # backbone argument -> (state, why)

    # -- folder and store ------------------------------------------------------------------
    def prepare(self) -> str | None:
        """None when the work folder has (or links) a store or a manifest; else why not."""
        self.dir.mkdir(parents=True, exist_ok=True)
        link = self.dir / "store.zarr"
        if self.cfg.store:
            target = Path(self.cfg.store).resolve()
            if link.is_symlink() and link.resolve() != target:
                link.unlink()
            if not link.exists() and not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
            elif link.resolve() != target:
                return f"{link} is a store of its own: give another --workdir to use --store {target}"
            return None
        if (self.dir / "manifest.csv").is_file():
            return None
        if not self.cfg.demo:
            return (f"{self.dir / 'manifest.csv'} is missing: run python -m pipelines.{self.task} prepare "
                    f"--workdir {self.dir} --raw DATASET first, or pass --demo or --store")
        rec, why = attempt(self.log, f"{self.task}: prepare --demo", lambda: self.pipe.prepare(demo=True))
        return None if rec is not None else f"prepare --demo failed: {why}"

    def open_store(self):
        try:
            return self.pipe.open_store()
        except (FileNotFoundError, ValueError):
            return None

    def build(self) -> None:
        """Add the backbones missing from the task's store (one build each), or note them missing."""
        store = self.open_store()
        for bb in self.backbones:
            name = store.backbone_name(bb) if store is not None else display_name(bb)
            if store is not None and name in store.backbones:
                self.stored[bb] = name
                continue
            if self.cfg.store:
                self.missing[bb] = ("not in store", f"{display_name(bb)} is not in --store {self.cfg.store}")
                continue
            if self.cfg.table_only:
                self.missing[bb] = ("not built", "not in the task's store (--table-only: nothing built)")
                continue
            t0 = time.perf_counter()
            cfg = self.cfg
            report, why = attempt(self.log, f"{self.task}: build {bb}", lambda: self.pipe.build(
                [bb], device=cfg.device, num_workers=2 if cfg.num_workers is None else cfg.num_workers,
                progress=not cfg.no_progress))
            store = self.open_store()
            if report is not None and store is not None and store.backbone_name(bb) in store.backbones:
                self.say(f"{self.task}: {display_name(bb)} built in {time.perf_counter() - t0:.1f} s")
                self.stored[bb] = store.backbone_name(bb)
                self.counts["built"] += 1
                self.status.pop(f"build:{display_name(bb)}", None)
            else:
                why = why or "the backbone is not in the store after the build"
                self.missing[bb] = ("not built", why)
                self.status[f"build:{display_name(bb)}"] = {"status": "not built", "message": why}
                self.counts["failed"] += 1

    # -- cells -----------------------------------------------------------------------------
    def fit_spec(self, bb: str, head: str, each: bool = False, seed: int = 0):
        """The cell's FitSpec (SpecError when the comparison's options do not fit this head)."""
        from heads.fit_spec import TORCH_HEADS

        cfg = self.cfg
        settings = dict(backbone=bb, head=head, seed=seed, device=cfg.device or "cpu", no_progress=cfg.no_progress)
        if head in TORCH_HEADS:  # logreg / lgbm have no epochs and no learning rate
            settings.update({k: v for k, v in (("epochs", cfg.epochs), ("lr", cfg.lr)) if v is not None})
        if each:
            settings["layers"] = "each"
        if cfg.pool and self.spec.heads_task != "transcription":
            settings["pool"] = cfg.pool
        return self.pipe.fit_spec(**settings)

    def fit(self, bb: str, head: str, pipe=None, each: bool = False,
            seed: int = 0) -> tuple[Path | None, str, str]:
        """Fit one cell unless its run is already fitted with these settings -> (run, status, why)."""
        pipe = pipe or self.pipe
        try:
            spec = self.fit_spec(bb, head, each, seed)
        except SpecError as e:
            self.counts["failed"] += 1
            return None, "failed", f"pipelines.{self.task} fit refused its settings: {e}"
        run = pipe.run_folder(spec).path
        key = run.name + ("/each" if each else "")
        if self.cfg.table_only:
            return run, "ok", ""
        t0 = time.perf_counter()
        rec, why = attempt(self.log, f"{self.task}: fit {run.name}", lambda: pipe.fit(spec))
        if rec is None:
            self.status[key] = {"status": "failed", "stage": "fit", "message": why}
            self.counts["failed"] += 1
            return run, "failed", why
        sweep = " (layer sweep)" if each else ""
        if rec.reused:
            self.counts["reused"] += 1
            self.say(f"{self.task}: {run.name}{sweep}: reused (fitted with these settings)")
        else:
            self.counts["fitted"] += 1
            self.say(f"{self.task}: {run.name}{sweep} fitted in {time.perf_counter() - t0:.1f} s")
        self.status.pop(key, None)
        return run, "ok", ""

    def evaluate(self, run: Path) -> tuple[str, str]:
        if table.run_state(run) == "ok" or self.cfg.table_only:
            return "ok", ""
        t0 = time.perf_counter()
        rec, why = attempt(self.log, f"{self.task}: evaluate {run.name}", lambda: self.pipe.evaluate(run))
        self.say(f"{self.task}: {run.name} evaluated in {time.perf_counter() - t0:.1f} s")
        if rec is None:
            self.status[run.name] = {"status": "failed", "stage": "evaluate", "message": why}
            self.counts["failed"] += 1
            return "failed", why
        self.counts["evaluated"] += 1
        self.status.pop(run.name, None)
        return "ok", ""

    def tags(self, store, name: str) -> list[str]:
        from pipelines.runner import is_demo

        out = []
        if is_demo(self.dir) or (store is not None and demo_store(store)):
            out.append("demo corpus")
        if name == RANDOM_TINY or (store is not None and random_init(store, name)):
            out.append("random-init")
        tuned = finetune_provenance(store, name) if store is not None else None
        if tuned:
            out.append(f"fine-tuned ({tuned.get('mode')}, {tuned.get('task')})")
        return out

    def cells(self) -> list[table.Cell]:
        """Fit and evaluate every (head, backbone) of the task, once per seed -> its cells, in table order."""
        store = self.open_store()
        cells = []
        for bb in self.backbones:
            for head in self.heads:
                name = self.stored.get(bb, display_name(bb))
                tags = self.tags(store, name)
                if bb in self.missing:
                    state, why = self.missing[bb]
                    cells.append(table.Cell(self.task, name, head, None, state, why, tags))
                    continue
                runs, state, why = [], "ok", ""
                for seed in self.cfg.seed_list:
                    run, st, msg = self.fit(bb, head, seed=seed)
                    if st == "ok":
                        st, msg = self.evaluate(run)
                    if self.cfg.table_only and run is not None and run.name in self.status:
                        st, msg = self.status[run.name]["status"], self.status[run.name]["message"]
                    if run is not None:
                        runs.append(run)
                    if st != "ok" and state == "ok":
                        state, why = st, msg
                if self.cfg.table_only and runs:  # a redraw shows every seed an earlier call fitted
                    runs = sorted(set(runs) | set(seed_siblings(runs[0])), key=run_seed)
                cells.append(table.Cell(self.task, name, head, runs[0] if runs else None, state, why, tags,
                                        seed_runs=runs if len(runs) > 1 else []))
        return cells

    def stored_cells(self, exclude: set[str] = frozenset()) -> list[table.Cell]:
        """Cells of every run folder of the task folder (a previous call's runs), with their tags; runs of
        several seeds (``<run>``, ``<run>-seed<k>``) are one cell. Runs named in ``exclude`` are left out."""
        status = _load_status(self.dir)
        store = self.open_store()
        groups: dict[str, list[tuple[int, Path, dict]]] = {}
        excluded = {run_base(n) for n in exclude}  # a cell of this call holds all its seeds
        for m in sorted((self.dir / "runs").glob("*/metrics.json")):
            if run_base(m.parent.name) in excluded:
                continue
            meta = read_metrics(m.parent)
            if meta is None:
                continue
            groups.setdefault(run_base(m.parent.name), []).append((int(meta.get("seed") or 0), m.parent, meta))
        cells = []
        for base, runs in groups.items():
            runs.sort(key=lambda t: t[0])
            _, run, meta = runs[0]
            name = meta.get("backbone") or run.name
            st = next((status[r.name] for _, r, _ in runs if r.name in status), {})
            cells.append(table.Cell(self.task, name, meta.get("head", "?"), run, st.get("status", "ok"),
                                    st.get("message", ""), self.tags(store, name),
                                    seed_runs=[r for _, r, _ in runs] if len(runs) > 1 else []))
        return cells

    def sweep(self) -> list[tuple[str, Path]]:
        """``--layers each``: one linear probe per stored layer, in WORKDIR/<task>/layer_sweep."""
        wd = self.dir / SWEEP_DIR
        wd.mkdir(exist_ok=True)
        link = wd / "store.zarr"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("..") / "store.zarr", target_is_directory=True)
        from pipelines.task_pipeline import TaskPipeline

        pipe = TaskPipeline(self.spec, wd)
        out = []
        for bb in self.backbones:
            if bb in self.missing:
                continue
            run, state, why = self.fit(bb, "linear", pipe, each=True, seed=self.cfg.seed_list[0])
            if run is not None:
                out.append((self.stored.get(bb, display_name(bb)), run))
        return out

    def save_status(self) -> None:
        (self.dir / STATUS_FILE).write_text(json.dumps(self.status, indent=2))


def run_seed(run: Path) -> int:
    """The seed of a run folder: ``-seed<k>`` at the end of its name (:func:`heads.tasks.seed_suffix`), else 0."""
    m = re.search(r"-seed(\d+)$", Path(run).name)
    return int(m.group(1)) if m else 0


def run_base(name: str) -> str:
    """A run folder's name without its ``-seed<k>``: the runs of one cell, whatever their seed."""
    return re.sub(r"-seed\d+$", "", name)


def seed_siblings(run: Path) -> list[Path]:
    """The fitted ``<run>-seed<k>`` folders beside ``run``."""
    run = Path(run)
    return [p for p in run.parent.glob(f"{run.name}-seed*") if run_seed(p) and (p / "metrics.json").is_file()]


def sweep_runs(tdir: Path) -> list[tuple[str, Path]]:
    """Every layer-sweep run of a task folder, labelled by the backbone of its metrics.json."""
    out = []
    for m in sorted((Path(tdir) / SWEEP_DIR / "runs").glob("*/metrics.json")):
        meta = read_metrics(m.parent)
        if meta is not None:
            out.append((meta.get("backbone") or m.parent.name, m.parent))
    return out


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
DESCRIPTION = ("Frontends side by side on the singing tasks, in the shape of the paper's Tables I, II and IV, with "
               "their learned layer weights. Runs the missing task x backbone x head cells through "
               "pipelines.<task> (prepare --demo, build, fit, evaluate; finished runs are reused) and writes "
               "WORKDIR/<task>/comparison.md and comparison.csv, WORKDIR/comparison.md and WORKDIR/plots/*.png. "
               "Every score names the split it was measured on and the split that chose the model. See the "
               "module docstring (benchmarks/frontends.py) for the folder layout.")


def _csv_text(value) -> str | None:
    """A YAML list or a comma-separated string -> the comma-separated string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value)
    return str(value)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@dataclass(frozen=True)
class ComparisonSpec:
    """A whole comparison: tasks x backbones x heads x options, in one work folder. ``--config grid.yaml``
    holds these settings (lists may be YAML lists: ``backbones: [crepe, pesto]``)."""

    workdir: str | None = option(None, "comparison folder: one pipelines work folder per task inside (required, "
                                       "on the command line or in --config)")
    store: str | None = option(None, "an existing feature store to use for every task instead of building (linked "
                                     "as WORKDIR/<task>/store.zarr); backbones missing from it are marked 'not in "
                                     "store'")
    tasks: str = option(",".join(TASKS), "comma-separated tasks: " + ", ".join(TASKS))
    backbones: str | None = option(None, f"comma-separated registry names/aliases, local model folders, HF ids, or "
                                         f"'{RANDOM_TINY}'; not given: {','.join(DEMO_BACKBONES)} with --demo, else "
                                         f"{','.join(DEFAULT_BACKBONES)}")
    heads: str | None = option(None, "comma-separated heads (linear, mlp, logreg, lgbm, crf, frames); each task "
                                     "takes those of its kind (clip heads for singer/technique, crf/frames for "
                                     "transcription); not given, or none of a task's kind: the task's default head "
                                     "(linear, crf, linear)")
    demo: bool = option(False, "prepare the task folders from the built-in demo corpus")
    layers: str = option("all", "each: also fit one linear probe per stored layer (clip tasks): a per-layer table of "
                                "scored-split scores in the comparison, and the layer-sweep plot",
                         choices=("all", "each"))
    seeds: str = option("0", "comma-separated seeds (0,1,2): each cell is fitted once per seed (runs <run>, "
                              "<run>-seed1, ...) and the tables show mean ± sample sd; one seed: the score and its "
                              "bootstrap 95 %% interval. The layer sweep uses the first seed")
    heatmap_scale: str = option("layers", "layer-weight heatmap: layers = weight x the frontend's layer count (1 = "
                                          "uniform, above 1 = preferred); frontend = weight / the frontend's largest "
                                          "weight (1 = its favourite layer)", choices=("layers", "frontend"))
    published_beside_demo: bool = option(False, "draw published bars on the same axis as demo-corpus bars (by "
                                                "default they get their own figure, "
                                                "plots/main_metric_published.png: a demo score and a paper's score "
                                                "are not comparable)")
    published: bool = option(False, "show the paper's published rows (Yamamoto, APSIPA 2023, Tables I/II/IV) beside "
                                    "the measured ones")
    pool: str | None = option(None, "clip pooling of the clip tasks' fits (mean | std | mean+std)",
                              choices=("mean", "std", "mean+std"))
    epochs: int | None = option(None, "fit epochs of the torch heads; not given: the pipeline's default")
    lr: str | None = option(None, "fit learning rate (one rate or a comma-separated grid) of the torch heads; not "
                                  "given: the pipeline's default grid")
    device: str | None = option(None, "torch device for build and fit; not given: cpu", identity=False)
    num_workers: int | None = option(None, "build's audio decoding workers", identity=False)
    table_only: bool = option(False, "run nothing: tables and plots from the runs already in WORKDIR")
    no_progress: bool = option(False, "no progress bars", identity=False)

    def __post_init__(self):
        from heads.fit_spec import HEADS, FitSpec
        from heads.tasks import parse_seeds

        for name in ("tasks", "backbones", "heads", "seeds"):
            object.__setattr__(self, name, _csv_text(getattr(self, name)))
        if not self.workdir:
            raise SpecError("workdir", "required: the comparison folder")
        bad = [t for t in self.task_list if t not in TASKS]
        if bad or not self.task_list:
            raise SpecError("tasks", f"unknown task(s) {bad or self.tasks!r}: choose from {', '.join(TASKS)}")
        bad = [h for h in self.head_list if h not in HEADS]
        if bad:
            raise SpecError("heads", f"unknown head(s) {bad}: choose from {', '.join(HEADS)}")
        if self.backbones is not None:
            if not self.backbone_list:
                raise SpecError("backbones", "empty list")
            for b in self.backbone_list:
                check_backbone(b)
        parse_seeds(self.seeds)  # SpecError naming seeds
        # lr and epochs go to every torch head's fit: checked as a fit checks them, before anything runs
        # (an lr of [0.1, x] used to build every store and fail every fit)
        fit = FitSpec(head="linear", lr=self.lr, epochs=self.epochs)
        object.__setattr__(self, "lr", None if self.lr is None else fit.lr)
        if self.store and not Path(self.store).is_dir():
            raise SpecError("store", f"{self.store}: no such folder")

    @property
    def task_list(self) -> list[str]:
        return _split(self.tasks)

    @property
    def head_list(self) -> list[str]:
        return _split(self.heads)

    @property
    def backbone_list(self) -> list[str] | None:
        return _split(self.backbones) if self.backbones is not None else None

    @property
    def seed_list(self) -> list[int]:
        from heads.tasks import parse_seeds

        return parse_seeds(self.seeds)

    def heads_for(self, task_spec) -> list[str]:
        """The heads of this comparison that a task takes (its kind), else its default head."""
        from heads.fit_spec import CLIP_HEADS

        frames = task_spec.heads_task == "transcription"
        mine = [h for h in self.head_list if (h not in CLIP_HEADS) == frames]
        if self.head_list and not mine:
            print(f"note: none of --heads {self.heads} is a {task_spec.name} head: {task_spec.name} uses its "
                  f"default, {task_spec.default_head}")
        return mine or [task_spec.default_head]


@dataclass
class ComparisonReport:
    """What :func:`run_comparison` did: the summary (WORKDIR/comparison.md's text), the rows of every
    task's table, the figures made, the counts per task, and the exit status (0 ok, 1 a step failed,
    2 a task folder could not be prepared)."""

    summary: str
    rows: dict
    figures: dict
    counts: dict
    code: int
    errors: list = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontends", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    add_options(p, ComparisonSpec)
    add_config_options(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv, names=field_names(ComparisonSpec))


def run_comparison(spec: ComparisonSpec) -> ComparisonReport:
    """Run the comparison's missing cells and render its tables and plots (see the module docstring)."""
    root = Path(spec.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    backbones = spec.backbone_list if spec.backbones is not None else default_backbones(spec.demo)
    if RANDOM_TINY in backbones:
        folder = make_random_tiny(root / "models" / RANDOM_TINY)
        backbones = [str(folder) if b == RANDOM_TINY else b for b in backbones]
    (root / "plots").mkdir(exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(spec.task_list), unit="task", desc="frontends", disable=spec.no_progress, file=sys.stderr)

    def say(msg: str) -> None:
        bar.write(msg, file=sys.stdout)

    task_cells: dict[str, list[table.Cell]] = {}
    counts, errors = {}, []
    code = 0
    with open(root / "frontends.log", "a", encoding="utf-8") as log:
        for task in spec.task_list:
            from pipelines.task_pipeline import load_task

            tr = TaskRun(task, root, spec, backbones, spec.heads_for(load_task(task)), log, say)
            why = None if spec.table_only else tr.prepare()
            if why:
                errors.append(f"{task}: {why}")
                code = 2
                tr.missing = {bb: ("not built", why) for bb in backbones}
            elif spec.table_only and not (tr.dir / "store.zarr").exists():
                tr.missing = {bb: ("not built", "no store in the task folder") for bb in backbones}
            else:
                tr.build()
            if spec.table_only and spec.backbones is None:
                cells = tr.stored_cells()
            else:
                cells = tr.cells()
                mine = {r.name for c in cells for r in ([c.run] if c.run else []) + c.seed_runs}
                # finished runs of earlier calls (other backbones, heads, options) stay in the table
                cells += [c for c in tr.stored_cells(exclude=mine) if table.run_state(c.run) == "ok"]
            if spec.layers == "each" and tr.spec.heads_task != "transcription" and not spec.table_only:
                tr.sweep()
            tr.save_status()
            counts[task] = tr.counts
            task_cells[task] = cells
            bar.update(1)
        for task in TASKS:  # tasks only earlier calls ran: their finished runs are part of the comparison
            if task not in task_cells and (root / task / "runs").is_dir():
                tr = TaskRun(task, root, spec, [], [], log, say)
                cells = [c for c in tr.stored_cells() if table.run_state(c.run) == "ok"]
                if cells:
                    task_cells[task] = cells
    bar.close()
    all_rows = render(root, task_cells, spec)
    figures = plot_all(root, task_cells, all_rows, spec)
    summary = write_summary(root, all_rows, figures, counts)
    if sum(c["failed"] for c in counts.values()) and not code:
        code = 1
    write_config(spec, root / "comparison.yaml", header="this comparison's settings: python -m benchmarks.frontends "
                                                        "--config comparison.yaml runs it again")
    return ComparisonReport(summary, all_rows, figures, counts, code, errors)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = from_namespace(ComparisonSpec, args)
    except SpecError as e:
        build_parser().error(e.as_flag())
    if args.print_config:
        print(to_yaml(spec, header="python -m benchmarks.frontends --config FILE"), end="")
        return 0
    report = run_comparison(spec)
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    print(report.summary)
    failed = sum(c["failed"] for c in report.counts.values())
    if failed:
        print(f"error: {failed} step(s) failed (see the footnotes and {Path(spec.workdir).resolve() / 'frontends.log'})",
              file=sys.stderr)
    return report.code


def render(root: Path, task_cells: dict[str, list[table.Cell]], spec: ComparisonSpec) -> dict[str, list[dict]]:
    """Every task's rows; writes ``<task>/comparison.md`` / ``.csv`` (with the per-layer tables of its
    layer sweep) from all its finished runs, and returns the rows of all tasks for the summary."""
    from heads.layer_probe import to_markdown as layer_markdown

    all_rows = {}
    for task, cells in task_cells.items():
        rows = table.table_rows(task, cells, published=spec.published)
        all_rows[task] = rows
        from pipelines.runner import data_label

        task_spec = importlib.import_module(f"pipelines.{task}").SPEC
        note = ("Measured on the built-in demo corpus (synthetic singers): a check that the path runs, not a "
                "result. " if any("demo corpus" in c.tags for c in cells) else "")
        note += f"Data: {data_label(task_spec, root / task)}."
        md = table.to_markdown(task, rows, note)
        for name, run in sweep_runs(root / task):
            lt = (plots._metrics(run) or {}).get("layer_table")  # noqa: SLF001
            if lt:
                md += "\n\n" + layer_markdown(lt, f"## {task}, {name}: one linear probe per layer (per clip)")
        (root / task / "comparison.md").write_text(md + "\n")
        table.write_csv(task, rows, root / task / "comparison.csv")
    return all_rows


def plot_all(root: Path, task_cells: dict, all_rows: dict, spec: ComparisonSpec) -> dict:
    """The comparison's figures (PNG + SVG) from every task's cells and rows -> {what: path or None}."""
    weights, curves = {}, {}
    for task, cells in task_cells.items():
        multi = len({c.head for c in cells}) > 1
        weights[task] = plots.layer_weight_matrix(
            [(c.name + (f" / {c.head}" if multi else ""), c.run) for c in cells
             if c.run is not None and table.run_state(c.run) != "not fitted"], scale=spec.heatmap_scale)
        curves[task] = plots.layer_curves(sweep_runs(root / task))
    panels = {t: (table.main_metric(t), r) for t, r in all_rows.items()}
    measured = {t: (m, [r for r in rows if r["source"] == "measured"]) for t, (m, rows) in panels.items()}
    published = {t: (m, [r for r in rows if r["source"] == "published"]) for t, (m, rows) in panels.items()}
    demo = any("demo corpus" in r["tags"] for _, rows in measured.values() for r in rows)
    made = {"layer weights": plots.plot_layer_weights(weights, root / "plots" / "layer_weights.png",
                                                      scale=spec.heatmap_scale),
            "layer sweep": plots.plot_layer_sweep(curves, root / "plots" / "layer_sweep.png")}
    for stale in ("main_metric", "main_metric_published"):
        for ext in ("png", "svg"):
            (root / "plots" / f"{stale}.{ext}").unlink(missing_ok=True)
    if demo and not spec.published_beside_demo:  # demo and published numbers never share an axis unasked
        made["main metric"] = plots.plot_main_metric(measured, root / "plots" / "main_metric.png")
        if any(rows for _, rows in published.values()):
            made["main metric, published"] = plots.plot_main_metric(published, root / "plots" /
                                                                     "main_metric_published.png")
    else:
        made["main metric"] = plots.plot_main_metric(panels, root / "plots" / "main_metric.png")
    return made


def write_summary(root: Path, all_rows: dict, made: dict, counts: dict) -> str:
    """WORKDIR/comparison.md: every task's table file, the plots, and what this invocation did."""
    lines = ["# Frontend comparison", ""]
    for task in all_rows:
        if task not in counts:
            lines.append(f"- {task}: finished runs of earlier calls (not run by this invocation)")
    for task, c in counts.items():
        lines.append(f"- {task}: {c['built']} backbone(s) built, {c['fitted']} run(s) fitted, {c['reused']} reused, "
                     f"{c['evaluated']} evaluated, {c['failed']} failed (this invocation)")
    lines.append("")
    for task in all_rows:
        lines += [(root / task / "comparison.md").read_text(), f"(also {root / task / 'comparison.csv'})", ""]
    for what, path in made.items():
        if path is not None:
            lines += [f"![{what}]({Path(path).relative_to(root).as_posix()})", ""]
        else:
            lines += [f"({what}: nothing to plot"
                      + (": run with --layers each" if what == "layer sweep" else "") + ")", ""]
    text = "\n".join(lines)
    (root / "comparison.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())

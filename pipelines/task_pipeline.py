"""A task pipeline as an object: typed ``prepare``, ``build``, ``fit``, ``evaluate``, ``predict``,
``finetune`` and ``reextract`` over one work folder (the layout is in :mod:`pipelines.runner`).

    from pipelines.task_pipeline import TaskPipeline
    pipe = TaskPipeline("singer", "work/singer")
    pipe.prepare(demo=True)
    pipe.build(["crepe"])
    run = pipe.fit(pipe.fit_spec(backbone="crepe", head="linear", epochs=20))
    result = pipe.evaluate(run.path)          # a run folder alone is enough
    print(result.scores, result.scored_split, result.chosen_on)

The command line ``python -m pipelines.<task>`` (:mod:`pipelines.command`) only turns its arguments
into these calls. Every method raises a typed error (:class:`PipelineError`, SpecError, TaskError,
BackboneNotInStore, ...) naming the setting or the file; nothing here exits or reads an argument list.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.runner import (DEMO_FLAG, PredictRecord, TaskSpec, evaluation_row, is_demo, results_table,
                              run_backbone, run_pool, write_manifest)


class PipelineError(ValueError):
    """A pipeline step that cannot run here (no manifest yet, no fitted run, a bad input folder)."""


@dataclass(frozen=True)
class PrepareRecord:
    """``prepare``: the manifest written, its item count per split, and what the adapter skipped."""

    manifest: Path
    items: int
    splits: dict
    skipped: list = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationRecord:
    """``evaluate``: the task's scores of one run (``result``, as written to evaluation.json), the
    split they were measured on (``scored_split``) and the clips that chose the model (``chosen_on``);
    ``scores``: the task's summary keys; ``table``: results.md of the whole work folder."""

    run: Path
    result: dict = field(repr=False)
    scores: dict
    scored_split: str
    chosen_on: str
    table: str = field(repr=False)


def load_task(task) -> TaskSpec:
    """A TaskSpec, or a task name (``singer``, ``technique``, ``transcription``) -> its TaskSpec."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return importlib.import_module(f"pipelines.{task}").SPEC
    except (ModuleNotFoundError, AttributeError):
        raise PipelineError(f"task {task!r}: no such task pipeline (singer, technique, transcription)") from None


class TaskPipeline:
    """One task's steps in one work folder (see the module docstring)."""

    def __init__(self, task, workdir):
        self.task = load_task(task)
        self.workdir = Path(workdir)

    def __repr__(self) -> str:
        return f"TaskPipeline({self.task.name!r}, {str(self.workdir)!r})"

    @property
    def store_path(self) -> Path:
        return self.workdir / "store.zarr"

    @property
    def runs_dir(self) -> Path:
        return self.workdir / "runs"

    def options(self, **values):
        """The task's own settings (``self.task.options``), defaults for what is not given."""
        return self.task.options(**values)

    def open_store(self):
        from featurestore import open_store

        return open_store(self.store_path)

    # -- prepare, build ------------------------------------------------------------------------
    def prepare(self, raw=None, *, demo: bool = False, options=None) -> PrepareRecord:
        """The dataset folder ``raw`` (or the built-in demo corpus) -> WORKDIR/manifest.csv and
        prepare_report.json. PipelineError when nothing usable is found (nothing is written then)."""
        opts = options or self.options()
        if demo:
            from featurestore.build import ensure_demo_corpus

            demo_manifest = ensure_demo_corpus()
            res = self.task.prepare_demo(demo_manifest, opts)
        else:
            if raw is None:
                raise PipelineError("prepare needs the dataset folder (raw), or demo=True")
            raw = Path(raw)
            if not raw.is_dir():
                raise PipelineError(f"{raw} is not a folder")
            res = self.task.prepare(raw, opts)
        if not res.rows:
            lines = [f"  - [{s['reason']}] {s['message']}" for s in res.skipped[:20]]
            raise PipelineError("\n".join([f"no usable item found ({len(res.skipped)} skipped)"] + lines))
        manifest = write_manifest(res.rows, self.workdir / "manifest.csv")
        if demo:
            (self.workdir / DEMO_FLAG).write_text(f"{demo_manifest}\n")
        else:
            (self.workdir / DEMO_FLAG).unlink(missing_ok=True)
        (self.workdir / "prepare_report.json").write_text(json.dumps({"items": len(res.rows),
                                                                      "skipped": res.skipped}, indent=2))
        splits: dict[str, int] = {}
        for r in res.rows:
            splits[r.get("split", "")] = splits.get(r.get("split", ""), 0) + 1
        return PrepareRecord(manifest, len(res.rows), dict(sorted(splits.items())), list(res.skipped))

    def clip_settings(self, options=None):
        """The task's store settings for this work folder (demo folders get the demo's)."""
        return self.task.clip_settings(options or self.options(), is_demo(self.workdir))

    def build(self, backbones, *, options=None, extract=None, model_path=None, trust_remote_code: bool = False,
              device: str | None = None, num_workers: int = 2, overwrite: bool = False, progress: bool = True):
        """WORKDIR/store.zarr from the manifest with the task's clip settings
        (:func:`featurestore.build.build`) -> its BuildReport."""
        from featurestore.build import build

        if not (self.workdir / "manifest.csv").is_file():
            raise PipelineError(f"{self.workdir / 'manifest.csv'} is missing: run prepare first")
        backbones = [backbones] if isinstance(backbones, str) else list(backbones)
        return build(self.workdir / "manifest.csv", self.store_path, backbones,
                     clip_settings=self.clip_settings(options), extract=extract, model_path=model_path,
                     trust_remote_code=trust_remote_code, device=device, num_workers=num_workers,
                     overwrite=overwrite, progress=progress)

    # -- fit -----------------------------------------------------------------------------------
    def fit_spec(self, **settings):
        """A FitSpec for this task: ``task`` is the pipeline's; the head and (clip heads) the class
        weighting default to the task's (``default_head``, ``default_class_weight``)."""
        from heads.fit_spec import FitSpec

        return FitSpec(**self._task_settings(settings))

    def _task_settings(self, settings: dict) -> dict:
        """``settings`` with this task's task, and its default head and (clip heads) class weighting."""
        from heads.fit_spec import CLIP_HEADS

        settings = {"head": self.task.default_head, **settings, "task": self.task.heads_task}
        if settings["head"] in CLIP_HEADS:
            settings.setdefault("class_weight", self.task.default_class_weight)
        return settings

    def _check_spec(self, spec) -> None:
        from featurestore.options import SpecError

        if spec.task != self.task.heads_task:
            raise SpecError("task", f"{spec.task!r}: the {self.task.name} pipeline fits task "
                                    f"{self.task.heads_task!r}")

    def run_folder(self, spec):
        """The run folder of ``spec`` in this work folder (:class:`heads.runs.RunFolder`, the task left
        out of the name: the folder holds one task)."""
        from heads.runs import RunFolder

        return RunFolder.for_spec(self.runs_dir, spec, self._backbone_name(spec.backbone), with_task=False)

    def _backbone_name(self, backbone: str) -> str:
        try:
            return self.open_store().backbone_name(backbone)
        except Exception:  # noqa: BLE001 - no store yet, or not in it: the registry's name
            from featurestore.registry import resolve

            try:
                return resolve(backbone).name
            except KeyError:
                return backbone

    def fit(self, spec, *, refit: bool = False):
        """Fit ``spec`` on the work folder's store into its run folder (:func:`heads.fit.fit_run`) ->
        RunRecord; a folder holding a finished fit of the same spec is reused (``record.reused``)
        unless ``refit``. A fine-tuning run's folder is refused (RunError)."""
        from heads.fit import fit_run

        self._check_spec(spec)
        if not self.store_path.exists():
            first = "build" if (self.workdir / "manifest.csv").is_file() else "prepare, then build"
            raise PipelineError(f"{self.store_path} is missing: run {first} first")
        return fit_run(self.store_path, spec, self.run_folder(spec).path, refit=refit)

    # -- evaluate, predict ---------------------------------------------------------------------
    def find_run(self, run) -> Path:
        """A run folder from a path, a RunFolder, a RunRecord or a FitSpec; PipelineError when it holds
        no fitted head."""
        from heads.fit_spec import FitSpec
        from heads.persist import HEAD_FILE, LEGACY_FILE, legacy_message

        if isinstance(run, FitSpec):
            rd = self.run_folder(run).path
        else:
            rd = Path(getattr(run, "path", run))
        if rd.is_file():
            raise PipelineError(f"{rd} is a file, not a run folder (a run folder, WORKDIR/runs/<run>, holds "
                                f"{HEAD_FILE})")
        if not rd.is_dir():
            raise PipelineError(f"no run folder {rd}: run fit first")
        if not (rd / HEAD_FILE).is_file():
            if (rd / LEGACY_FILE).is_file():
                raise PipelineError(legacy_message(rd / LEGACY_FILE))
            raise PipelineError(f"no fitted head in {rd}: run fit first")
        return rd

    def evaluate(self, run, *, options=None, score_split: str | None = None) -> EvaluationRecord:
        """Score a fitted run with the task's conventions (on the split it was scored on at fit time,
        or ``score_split``; the split that chose the model is refused), write RUN/evaluation.json,
        append its row to WORKDIR/runs/results.jsonl and rewrite WORKDIR/results.md. ``run``: its
        folder is enough (see :meth:`find_run`)."""
        from heads.protocol import selection_label
        from heads.results_log import append_result
        from heads.runs import read_metrics

        from featurestore.store import BackboneNotInStore
        from heads.runs import RunFolder

        rd = self.find_run(run)
        store = self.open_store()
        try:
            result = self.task.evaluate(store, rd, options or self.options(), score_split)
        except BackboneNotInStore as e:
            if not RunFolder(rd).is_finetune:
                raise
            raise PipelineError(f"{rd} is a fine-tuning run whose backbone is not in {self.store_path} yet: write "
                                f"it there with reextract (python -m pipelines.{self.task.name} reextract "
                                f"--workdir {self.workdir} ...), then evaluate") from e
        fit = read_metrics(rd) or {}
        context = (fit.get("options") or {}).get("context") or 0.0
        head = fit.get("head") or rd.name
        result.update(backbone=run_backbone(rd, rd.name), task=self.task.name,
                      head=head + (f"+ctx{round(context * 1000)}ms" if context else ""))
        if "pool" in fit:
            result["pool"] = run_pool(rd)
        result["seed"], result["options"] = fit.get("seed", 0), fit.get("options") or {}
        (rd / "evaluation.json").write_text(json.dumps(result, indent=2, default=float))
        row = evaluation_row(self.task, result, rd.name, fit)
        append_result(rd.parent, row)
        table = results_table(self.task, self.workdir)
        (self.workdir / "results.md").write_text(table + "\n")
        p = result.get("protocol") or {}
        return EvaluationRecord(rd, result, dict(row["metrics"]), p.get("scored_split", "?"),
                                selection_label(p, fit) if p else "?", table)

    def predict(self, run, *, options=None, backbone: str | None = None, device: str = "cpu",
                progress: bool = True) -> PredictRecord:
        """Predict for new audio with a fitted run (the task's ``predict``; its input folder and output
        are task options)."""
        if self.task.predict is None:
            raise PipelineError(f"the {self.task.name} pipeline has no predict step")
        rd = self.find_run(run)
        bb = backbone or run_backbone(rd)
        if bb is None:
            raise PipelineError(f"{rd / 'metrics.json'} does not name its backbone: give the backbone")
        return self.task.predict(self, rd, bb, options or self.options(), device, progress)

    def results_table(self) -> str:
        """results.md of the work folder (every evaluated run)."""
        return results_table(self.task, self.workdir)

    # -- fine-tuning ---------------------------------------------------------------------------
    def finetune_spec(self, **settings):
        """A FinetuneSpec for this task (task, and default head and class weighting, as :meth:`fit_spec`)."""
        from heads.finetune_spec import FinetuneSpec

        settings = self._task_settings(settings)
        settings.setdefault("name", self.finetuned_backbone(settings.get("backbone", "crepe"),
                                                            settings.get("mode", "two-stage")))
        return FinetuneSpec(**settings)

    def finetuned_backbone(self, backbone: str, mode: str) -> str:
        """The name a fine-tuned backbone gets in the task's store (``heads.finetune`` naming)."""
        from heads.finetune import finetuned_name

        return finetuned_name(self._backbone_name(backbone), self.task.heads_task, mode)

    def finetune_folder(self, spec) -> Path:
        """``runs/<backbone>@<task>-<mode>-<head>``: where ``evaluate`` finds it once ``reextract`` has
        written the backbone into the store."""
        from heads.runs import finetune_run_name

        name = spec.name or self.finetuned_backbone(spec.backbone, spec.mode)
        return self.runs_dir / finetune_run_name(name, spec.head)

    def finetune(self, spec, on_checkpoint=None):
        """Fine-tune end to end on the task's store, clips and splits (:func:`heads.finetune.finetune_run`)."""
        from heads.finetune import finetune_run

        if spec.task != self.task.heads_task:
            from featurestore.options import SpecError

            raise SpecError("task", f"{spec.task!r}: the {self.task.name} pipeline fine-tunes task "
                                    f"{self.task.heads_task!r}")
        return finetune_run(self.store_path, spec, self.finetune_folder(spec), on_checkpoint=on_checkpoint)

    def reextract(self, run, *, device: str = "cpu", overwrite: bool = False, progress: bool = True):
        """Write a fine-tuning run's frontend into the task's store as its backbone
        (:func:`heads.reextract.reextract_run`); ``run``: its folder or the FinetuneSpec."""
        from heads.reextract import reextract_run

        rd = self.finetune_folder(run) if hasattr(run, "mode") else Path(getattr(run, "run", run))
        return reextract_run(rd, self.store_path, device=device, overwrite=overwrite, progress=progress)

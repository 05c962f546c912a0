"""The one owner of head run folders: how a folder is named from a spec, what it records, whether a
spec is already done, and the record a finished run holds.

    RUNS/<backbone>-<head>[-<task>]<-ctx150ms><-stdpool><-layers-each><-C0.1_1><-seed1>/
        config.yaml     the store it read and the run's resolved FitSpec (``--config`` of it reproduces the run)
        metrics.json    the fit's report: scores, the split they were measured on and the split that chose
        head.json + head.safetensors, predictions, plots   (:mod:`heads.fit`)

``heads.fit`` names its folders with the task (``runs/crepe-linear-singer``); a task pipeline's work
folder holds one task, so its folders leave it out (``WORKDIR/runs/crepe-linear``). A fine-tuning run
(``<backbone>@<task>-<mode>-<head>``, :mod:`heads.finetune`) is recognised by its ``finetune_args.json``.

Folders written before ``config.yaml`` existed still load: :meth:`RunFolder.spec` rebuilds their spec
from ``metrics.json`` (backbone, head, task, seed, options), and :meth:`RunFolder.is_done` never calls
them done, so a fit over one runs again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.options import identity, read_config, write_config
from heads.fit_spec import HEAD_OPTIONS, FitSpec
from heads.tasks import context_suffix, hyper_suffix, layers_suffix, pool_suffix, seed_suffix

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
FINETUNE_FILE = "finetune_args.json"
#: Clip scores of a metrics.json report, in table order.
CLIP_SCORES = ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy")


class RunError(ValueError):
    """A run folder that cannot serve what is asked (no fit in it, unreadable records)."""


def run_name(spec: FitSpec, backbone: str, with_task: bool = True) -> str:
    """The folder name of a run: ``<backbone>-<head>[-<task>]`` plus one suffix per setting that changes
    the result away from its default (context, pool, layers, logreg/lgbm grids, seed), so runs with other
    settings never replace each other. ``backbone``: its name in the store."""
    task = f"-{spec.task.replace(':', '_')}" if with_task else ""
    return (f"{backbone}-{spec.head}{task}{context_suffix(spec.context)}{pool_suffix(spec.pool)}"
            f"{layers_suffix(spec.layers)}{hyper_suffix({k: getattr(spec, k) for k in HEAD_OPTIONS})}"
            f"{seed_suffix(spec.seed)}")


def finetune_run_name(name: str, head: str) -> str:
    """The folder name of a fine-tuning run: ``<fine-tuned backbone>-<head>`` (``crepe-tiny@sid-ft-linear``),
    which is also the name :func:`run_name` gives a fit of that head on the re-extracted backbone, so
    ``evaluate`` finds the fine-tuned head there."""
    return f"{name}-{head}"


@dataclass(frozen=True)
class RunRecord:
    """A finished fit. ``scores``: the headline scores (clip tasks: accuracy, top-k, macro F1...;
    transcription: ``<measure>.f1`` averaged over songs), measured on ``scored_split`` for a model chosen
    on ``selection_split``; ``ci95``: their bootstrap 95 % intervals; ``report``: the whole metrics.json."""

    path: Path
    spec: FitSpec | None
    backbone: str
    head: str
    task: str
    scored_split: str
    selection_split: str
    scores: dict
    ci95: dict
    fit_seconds: float | None
    report: dict = field(repr=False)
    reused: bool = False


def headline_scores(report: dict) -> dict:
    """The scores a report leads with (see :class:`RunRecord`)."""
    if "mean" in report:
        return {f"{k}.f1": v["f1"] for k, v in report["mean"].items()}
    return {k: report[k] for k in CLIP_SCORES if k in report}


class RunFolder:
    """One run folder (it need not exist yet)."""

    def __init__(self, path):
        self.path = Path(path)
        self._metrics = None

    @classmethod
    def for_spec(cls, root, spec: FitSpec, backbone: str, with_task: bool = True) -> "RunFolder":
        """The folder of ``spec`` under ``root`` (:func:`run_name`)."""
        return cls(Path(root) / run_name(spec, backbone, with_task))

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- what it holds ---------------------------------------------------------------------------
    @property
    def is_finetune(self) -> bool:
        """Was this folder written by fine-tuning (``heads.finetune``)?"""
        return (self.path / FINETUNE_FILE).is_file()

    @property
    def is_fitted(self) -> bool:
        return (self.path / METRICS_FILE).is_file()

    def metrics(self) -> dict:
        """metrics.json, read once (RunError naming the file when it is missing or unreadable)."""
        if self._metrics is None:
            m = self.path / METRICS_FILE
            try:
                self._metrics = json.loads(m.read_text())
            except (FileNotFoundError, NotADirectoryError):
                raise RunError(f"{self.path} holds no fitted run ({METRICS_FILE} is missing): fit it first") from None
            except OSError as e:
                raise RunError(f"{m} cannot be read ({e})") from None
            except ValueError as e:
                raise RunError(f"{m} is not readable JSON ({e})") from None
        return self._metrics

    def spec(self) -> FitSpec | None:
        """The run's spec: its config.yaml, else rebuilt from an older metrics.json (None for a
        fine-tuning run or a folder without either)."""
        cfg = self.path / CONFIG_FILE
        if cfg.is_file():
            return spec_of(read_config(cfg))
        if self.is_finetune or not self.is_fitted:
            return None
        return legacy_spec(self.metrics())

    def stored_store(self) -> str | None:
        """The store the recorded fit read (config.yaml), as an absolute path."""
        cfg = self.path / CONFIG_FILE
        try:
            return read_config(cfg).get("store") if cfg.is_file() else None
        except ValueError:
            return None

    def is_done(self, spec: FitSpec, store=None) -> bool:
        """Does this folder hold a finished fit of ``spec`` (same identity; device and progress bars
        aside) on ``store`` (its path; None: any store)?"""
        cfg = self.path / CONFIG_FILE
        if not (self.is_fitted and cfg.is_file()):
            return False
        try:
            values = read_config(cfg)
            stored = spec_of(values)
        except (ValueError, TypeError):
            return False
        if store is not None and values.get("store") != store_path(store):
            return False
        return identity(stored) == identity(spec)

    def record(self, reused: bool = False) -> RunRecord:
        """The finished run's record (from metrics.json)."""
        r = self.metrics()
        protocol = r.get("protocol") or {}
        try:
            spec = self.spec()
        except (ValueError, TypeError):
            spec = None
        return RunRecord(path=self.path, spec=spec, backbone=r.get("backbone", "?"), head=r.get("head", "?"),
                         task=r.get("task", "?"), scored_split=protocol.get("scored_split", r.get("scored_split", "?")),
                         selection_split=protocol.get("selection_split", r.get("selection_split", "?")),
                         scores=headline_scores(r), ci95=dict(r.get("ci95") or {}), fit_seconds=r.get("fit_seconds"),
                         report=r, reused=reused)

    # -- writing ---------------------------------------------------------------------------------
    def write_config(self, spec: FitSpec, store=None, header: str | None = None) -> Path:
        """Record the run's store (absolute path) and resolved spec (config.yaml)."""
        return write_config(spec, self.path / CONFIG_FILE, extra={"store": store_path(store)} if store else None,
                            header=header or f"settings of this run: python -m heads.fit --config {CONFIG_FILE} "
                                             "reproduces it")

    def clear_config(self) -> None:
        """Forget the recorded spec (before a new fit: a killed fit must not look finished)."""
        (self.path / CONFIG_FILE).unlink(missing_ok=True)


def read_metrics(run) -> dict | None:
    """A run folder's metrics.json, or None when it has none or it is unreadable (the one reader of the
    file outside :meth:`RunFolder.metrics`, for listings that skip such folders)."""
    try:
        return RunFolder(run).metrics()
    except RunError:
        return None


def store_path(store) -> str:
    """A store (FeatureStore or path) as the absolute path recorded in config.yaml."""
    path = getattr(store, "path", store)
    return str(path) if "://" in str(path) else str(Path(path).expanduser().resolve())


def spec_of(values: dict) -> FitSpec:
    """A FitSpec from a config's values (keys that are not FitSpec fields, such as ``store``, left out)."""
    return FitSpec(**{k: v for k, v in values.items() if k in FitSpec.__dataclass_fields__})


def legacy_spec(report: dict) -> FitSpec | None:
    """The spec of a run folder written before config.yaml: backbone, head, task, seed and the options
    its metrics.json recorded (the split settings are not recorded there: their defaults)."""
    opts = dict(report.get("options") or {})
    values = {k: opts[k] for k in ("layers", "pool", "context", "class_weight", "lr", "epochs", *HEAD_OPTIONS)
              if k in opts}
    if "pool" in report and "pool" not in values and report["pool"] != "mean":
        values["pool"] = report["pool"]
    try:
        return FitSpec(backbone=report.get("backbone") or "crepe", head=report.get("head") or "linear",
                       task=report.get("task"), seed=int(report.get("seed") or 0), **values)
    except (ValueError, TypeError):
        return None

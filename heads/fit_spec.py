"""What a head's run is: :class:`FitSpec`, a frozen dataclass validated in one place when it is made.

    from heads.fit_spec import FitSpec
    spec = FitSpec(backbone="crepe", head="mlp", task="singer", lr="1e-3,1e-2", seed=1)
    FitSpec(head="logreg", lr="1e-3")        # SpecError: lr: does not apply to head 'logreg' ...

The same declaration gives ``python -m heads.fit``'s options, the pipelines' ``fit`` options, the
YAML config files (``--config``, ``--print-config``, every run folder's ``config.yaml``) and the Python
keywords (:mod:`featurestore.options`). The split options live in :class:`ProtocolSettings`, shared
with fine-tuning (:mod:`heads.finetune_spec`).

Fields with ``identity=False`` (device, log folder, progress bars) do not change the result: two
specs with the same :func:`featurestore.options.identity` are the same run (:mod:`heads.runs`).
"""
from __future__ import annotations

from dataclasses import dataclass

from featurestore.options import SpecError, float_setting, int_setting, option
from heads.protocol import FILE, SCORE_CHOICES, SELECT_CHOICES
from heads.tasks import DEFAULT_POOL, POOLS, TaskError, make_task

CLIP_HEADS = ("linear", "mlp", "logreg", "lgbm")
FRAME_HEADS = ("crf", "frames")
HEADS = CLIP_HEADS + FRAME_HEADS
TORCH_HEADS = ("linear", "mlp") + FRAME_HEADS
#: Defaults of the torch heads' lr grid and epochs (refused for logreg / lgbm, which have neither).
DEFAULT_LR, DEFAULT_EPOCHS = "1e-3,3e-3,1e-2", 60
#: Hyperparameters of one head only: spec field -> (head, estimator parameter).
HEAD_OPTIONS = {"C": ("logreg", "C"), "n_estimators": ("lgbm", "n_estimators"),
                "gbm_learning_rate": ("lgbm", "learning_rate"), "num_leaves": ("lgbm", "num_leaves"),
                "min_child_samples": ("lgbm", "min_child_samples")}
CLASS_WEIGHTS = ("balanced", "paper")


def default_task(head: str) -> str:
    """The task a head serves when none is named: transcription for the frame heads, else singer."""
    return "transcription" if head in FRAME_HEADS else "singer"


def grid_text(setting: str, value) -> str | None:
    """A hyperparameter grid as its comma-separated text (``0.1,1``): a number, a list of numbers or a
    string; None stays None. SpecError naming ``setting`` for an empty grid or a value that is not a number."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    items = [str(v).strip() for v in items if str(v).strip()]
    if not items:
        raise SpecError(setting, f"{value!r} is an empty grid")
    for v in items:
        try:
            float(v)
        except ValueError:
            raise SpecError(setting, f"{value!r}: expected a number or comma-separated numbers") from None
    return ",".join(items)


def check_layers_text(text: str) -> str:
    """``all`` | ``each`` | ``concat`` | ``i,j,...`` (integers >= 0): the syntax of the layers setting
    (which layers the store holds is checked against the store by :func:`heads.fit.parse_layers`)."""
    text = str(text).strip()
    if text in ("all", "each", "concat"):
        return text
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise SpecError("layers", f"{text!r}: expected all, each, concat or comma-separated layer indices")
    return ",".join(parts)


@dataclass(frozen=True)
class ProtocolSettings:
    """Which clips train, choose and score a run (:func:`heads.protocol.plan_splits`)."""

    score_split: str = option("auto", "split the reported scores are measured on: auto = test when the store has "
                                      "test clips, else valid", choices=SCORE_CHOICES)
    select_split: str = option("auto", "clips that choose the model (learning rate, stopping epoch): auto = valid "
                                       "unless valid is the scored split, then a holdout carved out of train "
                                       "(grouped by --group)", choices=SELECT_CHOICES)
    group: str | None = option(None, f"label column the train holdout is grouped by, so no group is on both sides "
                                     f"('{FILE}' = the audio file); default: album for singer, singer for "
                                     f"technique, {FILE} otherwise")
    holdout_fraction: float = option(0.15, "share of train groups (per class, when groups nest in classes) carved "
                                           "out for selection")
    allow_scoring_selection_split: bool = option(False, "allow --select-split valid while valid is scored (an "
                                                        "optimistic score, labelled so)")

    def check_protocol(self) -> None:
        if self.score_split not in SCORE_CHOICES:
            raise SpecError("score_split", f"{self.score_split!r}: choose one of {', '.join(SCORE_CHOICES)}")
        if self.select_split not in SELECT_CHOICES:
            raise SpecError("select_split", f"{self.select_split!r}: choose one of {', '.join(SELECT_CHOICES)}")
        object.__setattr__(self, "holdout_fraction", float_setting("holdout_fraction", self.holdout_fraction))
        if not 0.0 < self.holdout_fraction < 1.0:
            raise SpecError("holdout_fraction", f"{self.holdout_fraction}: expected a share between 0 and 1")

    def plan(self, task, store, backbone, seed: int):
        """The split plan of this run on ``store`` (see :mod:`heads.protocol`)."""
        return task.plan(store, backbone, group=self.group, score=self.score_split, select=self.select_split,
                         holdout_fraction=self.holdout_fraction, seed=seed,
                         allow_same=self.allow_scoring_selection_split)


@dataclass(frozen=True)
class FitSpec(ProtocolSettings):
    """One head fitted on one backbone's stored features for one task, with one seed."""

    backbone: str = option("crepe", "backbone in the store (registry name or alias)")
    head: str = option("linear", "head to train", choices=HEADS)
    task: str | None = option(None, "singer | technique | transcription | label:<column> | notes:<column> "
                                    "(default: singer for clip heads, transcription for crf/frames)")
    lr: str | None = option(None, f"torch heads (linear, mlp, frames, crf): learning rate or comma-separated grid, "
                                  f"chosen on the selection split; not given: {DEFAULT_LR}. Refused for logreg/lgbm")
    epochs: int | None = option(None, f"torch heads: maximum epochs (early stopping on the selection split); not "
                                      f"given: {DEFAULT_EPOCHS}. Refused for logreg/lgbm")
    C: str | None = option(None, "logreg: inverse L2 strength, or a comma-separated grid (0.01,0.1,1,10) chosen on "
                                 "the selection split; not given: 1.0", flag="--C")
    n_estimators: str | None = option(None, "lgbm: boosting rounds, or a grid (100,200,400) chosen on the selection "
                                            "split; not given: 200")
    gbm_learning_rate: str | None = option(None, "lgbm: shrinkage per round, or a grid (0.03,0.1); not given: 0.05")
    num_leaves: str | None = option(None, "lgbm: leaves per tree, or a grid (7,15,31); not given: 15")
    min_child_samples: str | None = option(None, "lgbm: fewest clips in a leaf, or a grid (2,5,10); not given: 5")
    layers: str = option("all", "all (logreg/lgbm: their mean) | each (one probe per layer, linear head) | concat "
                                "(logreg/lgbm: all layers side by side, with a per-layer importance) | i,j,... (the "
                                "model's hidden-state indices, as stored: a store built with --layers holds only "
                                "those)")
    context: float = option(0.0, "crf/frames: temporal context each side of a frame, in seconds (a dilated "
                                 "convolution stack of round(SECONDS x frame rate) frames each side between the "
                                 "layer sum and the per-frame output; 0.15 suits slow sung onsets). 0: the paper's "
                                 "per-frame linear probe", metavar="SECONDS")
    pool: str | None = option(None, f"clip heads: clip statistics over time the head reads: mean, std, or mean+std "
                                    f"(both side by side, D -> 2D per layer: statistics pooling); not given: "
                                    f"{DEFAULT_POOL}. Not for crf/frames (they read frames)", choices=POOLS)
    class_weight: str | None = option(None, "clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2; not given: none",
                                      choices=CLASS_WEIGHTS)
    seed: int = option(0, "seed of initialisation, shuffling and the holdout draw; not given: 0")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1)", identity=False)
    log_dir: str | None = option(None, "torch heads: write TensorBoard event files to LOG_DIR/<run folder name> "
                                       "(loss, selection score, learning rate, layer weights per epoch and rate; "
                                       "needs the tracking extra: pip install -e '.[tracking]')", identity=False)
    no_progress: bool = option(False, "no progress bars", identity=False)

    def __post_init__(self):
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - normalising a frozen spec once
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise SpecError("backbone", f"{self.backbone!r}: expected a backbone name (crepe, logmel, mert, ...)")
        if self.task is not None and not isinstance(self.task, str):
            raise SpecError("task", f"{self.task!r}: expected singer, technique, transcription, label:<column> or "
                                    "notes:<column>")
        if not isinstance(self.no_progress, bool):
            raise SpecError("no_progress", f"{self.no_progress!r}: expected True or False")
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise SpecError("device", f"{self.device!r}: expected a torch device (cpu, cuda, cuda:1)")
        if self.head not in HEADS:
            raise SpecError("head", f"{self.head!r}: choose one of {', '.join(HEADS)}")
        fix("task", self.task or default_task(self.head))
        for name in ("lr", *HEAD_OPTIONS):
            fix(name, grid_text(name, getattr(self, name)))
        fix("layers", check_layers_text(self.layers))
        fix("context", float_setting("context", self.context or 0.0))
        if self.pool == DEFAULT_POOL:
            fix("pool", None)  # the default pooling: the same run as not naming one
        fix("seed", int_setting("seed", self.seed, minimum=0))
        self.check_protocol()
        self._check_head_settings()
        self._check_task()
        if self.head in TORCH_HEADS:
            fix("lr", DEFAULT_LR if self.lr is None else self.lr)
            fix("epochs", DEFAULT_EPOCHS if self.epochs is None else int_setting("epochs", self.epochs, minimum=1))
            if any(float(v) <= 0 for v in self.lr.split(",")):
                raise SpecError("lr", f"{self.lr!r}: learning rates must be > 0")

    def _check_head_settings(self) -> None:
        head = self.head
        if head not in TORCH_HEADS:
            for name, what in (("lr", "no learning rate (its grid is C)" if head == "logreg" else
                                "no Adam learning rate (its boosting rate is gbm_learning_rate)"),
                               ("epochs", "no epochs"), ("log_dir", "no training curve to log")):
                if getattr(self, name) is not None:
                    raise SpecError(name, f"does not apply to head {head!r}: it has {what}")
        for name, (owner, _) in HEAD_OPTIONS.items():
            if getattr(self, name) is not None and head != owner:
                raise SpecError(name, f"is a hyperparameter of head {owner!r}; it does not apply to head {head!r}")
        if self.layers == "each" and head != "linear":
            raise SpecError("layers", "each fits one linear probe per layer: use it with head 'linear'")
        if self.layers == "concat" and head not in ("logreg", "lgbm"):
            raise SpecError("layers", "concat (all layers side by side) is for head 'logreg' or 'lgbm'")
        if head in ("logreg", "lgbm") and "," in self.layers:
            raise SpecError("layers", f"head {head!r} takes one layer (K) or all of them (their mean): not a list")
        if self.context < 0:
            raise SpecError("context", f"{self.context}: expected seconds >= 0")
        if head in CLIP_HEADS:
            if self.context:
                raise SpecError("context", f"is the temporal layer of the frame heads (crf, frames), not of head "
                                           f"{head!r}")
        else:
            if self.class_weight:
                raise SpecError("class_weight", f"applies to clip heads, not head {head!r}")
            if self.pool is not None:
                raise SpecError("pool", f"pools clips for the clip heads ({', '.join(CLIP_HEADS)}); head {head!r} "
                                        "reads every frame: leave pool out")
        if self.class_weight is not None and self.class_weight not in CLASS_WEIGHTS:
            raise SpecError("class_weight", f"{self.class_weight!r}: choose one of {', '.join(CLASS_WEIGHTS)}")
        if self.pool is not None and self.pool not in POOLS:
            raise SpecError("pool", f"{self.pool!r}: choose one of {', '.join(POOLS)}")

    def _check_task(self) -> None:
        if ":" in self.task and not self.task.split(":", 1)[1].strip():
            raise SpecError("task", f"{self.task!r} names no column (label:<column> or notes:<column>)")
        try:
            kind = make_task(self.task, pool=self.pool).kind
        except (TaskError, ValueError) as e:
            raise SpecError("task", str(e)) from None
        if kind == "clip" and self.head in FRAME_HEADS:
            raise SpecError("head", f"{self.head!r} is a frame-level note decoder; task {self.task!r} is a clip task: "
                                    f"use one of {', '.join(CLIP_HEADS)}")
        if kind == "frames" and self.head in CLIP_HEADS:
            raise SpecError("head", f"{self.head!r} is a clip classifier; task {self.task!r} is frame-level "
                                    f"transcription: use one of {', '.join(FRAME_HEADS)}")

    def make_task(self):
        """The task object (:func:`heads.tasks.make_task`) this run reads its X and y through."""
        return make_task(self.task, pool=self.pool)

    def head_params(self) -> dict:
        """The hyperparameter grids of this spec's head that were given (estimator parameter -> text)."""
        return {param: getattr(self, name) for name, (owner, param) in HEAD_OPTIONS.items()
                if owner == self.head and getattr(self, name) is not None}

    def options(self) -> dict:
        """The settings that make a run, for the results table and metrics.json (``options``): layers,
        pool, context, class weight and the head's grids (not the seed, not the device)."""
        out = {"layers": self.layers, "pool": self.pool, "context": self.context or None,
               "class_weight": self.class_weight}
        if self.head in TORCH_HEADS:
            out.update(lr=self.lr, epochs=self.epochs)
        for name, (owner, _) in HEAD_OPTIONS.items():
            if owner == self.head and getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {k: v for k, v in out.items() if v not in (None, "", "all")}

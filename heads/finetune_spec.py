"""What a fine-tuning run is: :class:`FinetuneSpec`, the settings of ``heads.finetune`` declared once.

The same declaration (:mod:`featurestore.options`) gives ``python -m heads.finetune``'s options, the
keys of its ``--config`` YAML files and the keywords of :func:`heads.finetune.finetune_run`:

    spec = FinetuneSpec(backbone="mert-v0", head="crf", mode="lora", epochs=10)
    record = finetune_run("w/store.zarr", spec)

A spec is checked when it is made: every setting that needs no store and no model weights (numbers
in range, choices, a head that fits the task, LoRA on a model with attention...) raises
:class:`featurestore.options.SpecError` naming the setting. Defaults that depend on other settings
are resolved then: ``task`` from the head, ``stage1_epochs`` and ``frontend_lr`` from the mode.
The store and the run folder are not settings of the run: they are arguments of ``finetune_run``.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass

from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.names import check_backbone_name
from featurestore.options import SpecError, option
from featurestore.registry import resolve
from heads.finetune_loop import PRECISIONS, LoopSettings
from heads.finetune_model import LORA_TARGETS, MODES, check_mode_for
from heads.fit_spec import CLIP_HEADS, FRAME_HEADS, HEADS, ProtocolSettings
from heads.protocol import SCORE_CHOICES, SELECT_CHOICES
from heads.tasks import TaskError, make_task

FINETUNE_HEADS = HEADS[:2] + FRAME_HEADS
STAGE1_FEATURES = ("auto", "store", "recompute")
CLASS_WEIGHTS = ("balanced", "paper")
#: the settings that take one of a few values (their command-line choices)
CHOICES = {"attention": ATTENTION_KINDS, "head": FINETUNE_HEADS, "mode": MODES, "stage1_features": STAGE1_FEATURES,
           "class_weight": CLASS_WEIGHTS, "precision": PRECISIONS, "score_split": SCORE_CHOICES,
           "select_split": SELECT_CHOICES}


@dataclass(frozen=True)
class FinetuneSpec(ProtocolSettings):
    """The settings of one fine-tuning run (see ``python -m heads.finetune --help`` for each).

    Durations are seconds, rates are Adam learning rates, ``context`` is seconds of temporal context
    each side of a frame. ``identity=False`` settings (device, workers, progress, log folder, resume,
    overwrite) do not change the result: two runs whose other settings are equal are the same run."""

    backbone: str = option("crepe", "frontend to fine-tune: registry name or alias, Hugging Face id, or local model "
                                    "folder")
    model_path: str | None = option(None, "local folder to load the --backbone's weights from")
    local_files_only: bool = option(False, "load Hugging Face models from the offline cache only")
    trust_remote_code: bool = option(False, "let a transformers model run Python code from its own repository or "
                                            "folder (off by default for every model: MERT loads into transformers' "
                                            "HuBERT). Only for a model you trust")
    attention: str | None = option(None, "attention kernel: sdpa or eager (default: sdpa where transformers offers it)",
                                   choices=ATTENTION_KINDS)
    head: str = option("linear", "head on the weighted layer sum (linear, mlp: clip tasks; frames, crf: transcription)",
                       choices=FINETUNE_HEADS)
    task: str | None = option(None, "singer | technique | transcription | label:<column> | notes:<column> (default: "
                                    "singer for clip heads, transcription for crf/frames)")
    mode: str = option("two-stage", "two-stage: frontend frozen for --stage1-epochs, then the transformer encoder "
                                    "learns (CNN feature encoder frozen; CREPE: conv blocks 5-6); lora: adapters only "
                                    "(peft); full: every frontend parameter", choices=MODES)
    epochs: int = option(10, "total epochs (the paper: 30 singer, 20 technique)")
    stage1_epochs: int | None = option(None, "epochs with the frontend frozen (the paper: 6 singer, 5 technique); "
                                             "default: a fifth of --epochs for two-stage, 0 for lora and full")
    stage1_features: str = option("auto", "stage 1 (frontend frozen) trains on the frozen frontend's output: read "
                                          "from the store (store: the base backbone must be stored from these "
                                          "weights; auto: when it is) or recomputed from audio every epoch",
                                  choices=STAGE1_FEATURES)
    head_lr: float = option(3e-3, "Adam rate of the head and layer weights")
    frontend_lr: float | None = option(None, "Adam rate of the frontend parts that learn (default 5e-5, the paper's; "
                                             "5e-4 for lora)")
    batch_size: int = option(8, "clips (or crops) per step and rank")
    accumulate: int = option(1, "batches per optimiser step (gradient accumulation)")
    crop_seconds: float = option(10.0, "longest training input; longer clips are cropped (clip tasks: one random "
                                       "crop per epoch; transcription: cut into crops that cover every frame once per "
                                       "epoch)")
    eval_window_seconds: float = option(30.0, "whole clips are evaluated in windows of this many seconds, as "
                                              "featurestore.build windows them")
    eval_context_seconds: float = option(5.0, "context margins of those windows (featurestore.build "
                                              "--context-seconds)")
    context: float = option(0.0, "crf/frames: temporal context of the head each side of a frame (as heads.fit "
                                 "--context)", metavar="SECONDS")
    class_weight: str | None = option(None, "clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2",
                                      choices=CLASS_WEIGHTS)
    patience: int | None = option(None, "stop after this many epochs without a better selection score (default: run "
                                        "every epoch)")
    lora_rank: int = option(8, "LoRA rank r")
    lora_alpha: float = option(16.0, "LoRA scale alpha (updates scaled by alpha / r)")
    lora_dropout: float = option(0.0, "dropout on the LoRA path")
    lora_targets: str = option("q_proj,v_proj", f"modules that get adapters, comma-separated among "
                                                f"{', '.join(LORA_TARGETS)}")
    layerdrop: float = option(0.0, "transformers layerdrop while training (default off)")
    mask_time_prob: float = option(0.0, "SpecAugment time masking while training (share of frames; default off)")
    dropout: float | None = option(None, "dropout of the transformer (hidden, attention, activation, projection); "
                                         "default: the checkpoint's own")
    precision: str = option("auto", "CUDA autocast: auto = bf16 where supported; fp16 uses a gradient scaler; CPU "
                                    "runs fp32", choices=PRECISIONS)
    gradient_checkpointing: bool = option(False, "recompute transformer activations in the backward pass (less "
                                                 "memory, more time)")
    num_workers: int = option(2, "audio decoding worker processes", identity=False)
    seed: int = option(0, "seed of initialisation, crops, shuffling and the holdout draw")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1); under torchrun cuda = cuda:LOCAL_RANK",
                         identity=False)
    name: str | None = option(None, "name of the fine-tuned backbone (default <backbone>@<task code>-<ft|lora|full>)")
    log_dir: str | None = option(None, "write TensorBoard event files here (loss, selection score, learning rates, "
                                       "layer weights per epoch; needs the tracking extra: pip install -e "
                                       "'.[tracking]')", identity=False)
    resume: bool = option(False, "continue the unfinished run in --out from its last checkpoint", identity=False)
    overwrite: bool = option(False, "start over in a run folder that holds another run", identity=False)
    no_progress: bool = option(False, "no progress bars", identity=False)

    def __post_init__(self):
        _check_types(self)
        for name in CHOICES:
            _check_choice(self, name)
        resolved = {}
        if self.task is None:
            resolved["task"] = "transcription" if self.head in FRAME_HEADS else "singer"
        if self.stage1_epochs is None:
            resolved["stage1_epochs"] = max(1, round(self.epochs / 5)) if self.mode == "two-stage" else 0
        if self.frontend_lr is None:
            resolved["frontend_lr"] = 5e-4 if self.mode == "lora" else 5e-5
        for k, v in resolved.items():
            object.__setattr__(self, k, v)
        self._check_backbone()
        self._check_task()
        self._check_numbers()
        if self.name is not None:
            try:
                check_backbone_name(self.name, "the name")
            except ValueError as e:
                raise SpecError("name", str(e)) from None

    # ---- checks ---------------------------------------------------------------------------------

    def _check_backbone(self) -> None:
        """What the backbone's kind (from the registry, no weights loaded) rules out."""
        if not self.backbone.strip():
            raise SpecError("backbone", "empty")
        try:
            kind = resolve(self.backbone).kind
        except KeyError as e:
            raise SpecError("backbone", e.args[0] if e.args else str(e)) from None
        check_mode_for(kind, self.backbone, self.mode, gradient_checkpointing=self.gradient_checkpointing)

    def _check_task(self) -> None:
        try:
            kind = make_task(self.task).kind
        except (TaskError, ValueError) as e:
            raise SpecError("task", str(e)) from None
        if kind == "clip" and self.head in FRAME_HEADS or kind == "frames" and self.head in CLIP_HEADS:
            raise SpecError("head", f"{self.head} does not fit task {self.task!r} ({kind} task)")
        if kind == "clip" and self.context:
            raise SpecError("context", f"is for the frame heads (crf, frames), not head {self.head}")
        if kind == "frames" and self.class_weight:
            raise SpecError("class_weight", f"applies to clip heads, not head {self.head}")

    def _check_numbers(self) -> None:
        self.loop_settings()
        _at_least(self, "seed", 0)
        _at_least(self, "lora_rank", 1)
        _in_range(self, "lora_alpha", 0.0, None, low_open=True)
        _in_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        _in_range(self, "layerdrop", 0.0, 1.0)
        _in_range(self, "mask_time_prob", 0.0, 1.0)
        if self.dropout is not None:
            _in_range(self, "dropout", 0.0, 1.0, high_open=True)
        _in_range(self, "context", 0.0, None)
        self.check_protocol()
        targets = self.lora_target_list
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets:
            raise SpecError("lora_targets", f"{self.lora_targets!r}: expected names among {', '.join(LORA_TARGETS)}")

    def loop_settings(self) -> LoopSettings:
        """The training loop's settings (:class:`heads.finetune_loop.LoopSettings`), checked
        (SpecError naming the setting)."""
        settings = LoopSettings(epochs=self.epochs, stage1_epochs=self.stage1_epochs, head_lr=self.head_lr,
                                frontend_lr=self.frontend_lr, batch_size=self.batch_size, accumulate=self.accumulate,
                                crop_s=self.crop_seconds, eval_window_s=self.eval_window_seconds,
                                eval_context_s=self.eval_context_seconds, precision=self.precision,
                                patience=self.patience, num_workers=self.num_workers, seed=self.seed)
        settings.check()
        return settings

    @property
    def lora_target_list(self) -> list[str]:
        """``lora_targets`` split at commas."""
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    @property
    def noise(self) -> dict:
        """The training-noise settings the frontend is loaded with."""
        return {"layerdrop": self.layerdrop, "mask_time_prob": self.mask_time_prob, "dropout": self.dropout}


def _check_types(spec) -> None:
    """Each field holds a value of its declared type (an int is a float; a bool is not a number)."""
    for name, hint in typing.get_type_hints(type(spec)).items():
        value = getattr(spec, name)
        allowed = list(typing.get_args(hint) or (hint,))
        if value is None and type(None) in allowed:
            continue
        ok = False
        for a in allowed:
            if a is bool:
                ok = ok or isinstance(value, bool)
            elif a is int:
                ok = ok or (isinstance(value, int) and not isinstance(value, bool))
            elif a is float:
                ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool))
            elif a is str:
                ok = ok or isinstance(value, str)
        if not ok:
            want = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
            raise SpecError(name, f"expected {want}, got {value!r} ({type(value).__name__})")


def _check_choice(spec, name: str) -> None:
    value = getattr(spec, name)
    if value is not None and value not in CHOICES[name]:
        raise SpecError(name, f"{value!r}: expected one of {', '.join(CHOICES[name])}")


def _at_least(spec, name: str, low: int) -> None:
    if getattr(spec, name) < low:
        raise SpecError(name, f"must be >= {low}, got {getattr(spec, name)}")


def _in_range(spec, name: str, low: float, high: float | None, *, low_open: bool = False,
              high_open: bool = False) -> None:
    v = getattr(spec, name)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise SpecError(name, f"must be {lo}{hi}, got {v}")

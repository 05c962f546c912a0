"""``python -m heads.finetune``: fine-tune a frontend end to end with a head, on a store's tasks and splits.

    python -m heads.finetune --backbone crepe --head linear                    # demo store, singer task
    python -m heads.finetune --store w/store.zarr --backbone mert-v0 --head crf --task transcription \\
        --mode two-stage --epochs 10 --stage1-epochs 2 --device cuda
    python -m heads.finetune ... --mode lora --lora-rank 8 --lora-targets q_proj,v_proj
    torchrun --nproc-per-node 4 -m heads.finetune ...                         # DDP, one GPU per rank
    python -m heads.finetune ... --resume                                     # continue a killed run

The model is backbone -> softmax weighted sum of all hidden states -> the head of ``heads.fit``
(:mod:`heads.finetune_model`). The clips, the split plan (what trains, what chooses the epoch, what
is scored) and the scoring are those of ``heads.fit`` (:mod:`heads.protocol`): the scored split never
chose the model. Audio is read on the fly from the store's clip table (:mod:`heads.finetune_data`).

The run folder (default ``runs/<name>-<head>``, where ``<name>`` is the new backbone's name, e.g.
``mert-v0-public@svt-ft``) receives ``finetune_args.json``, ``checkpoint.pt`` (every epoch),
``best.pt``, and when training ends: ``frontend/`` (the fine-tuned frontend, LoRA merged, loadable by
``featurestore.build --model-path``, with ``provenance.json``), ``head.json`` + ``head.safetensors`` (a fitted head of
``heads.fit``'s classes, which reads the new backbone's stored features), ``metrics.json`` and
``layer_weights.png``. ``python -m heads.reextract --run DIR`` then writes the fine-tuned frontend
into the store as backbone ``<name>``; probes, the clustering analysis and the pipelines' evaluate
treat it like any other frontend.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from featurestore import distributed, open_store
from featurestore.cli import HelpFormatter
from featurestore.frontends import CrepeFrontend, HFFrontend, PROVENANCE_FILE, load_frontend
from featurestore.geometry import GEOMETRY_KEYS
from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.locking import LockTimeout, StoreLock
from featurestore.names import check_backbone_name
from featurestore.registry import resolve
from featurestore.store import BackboneNotInStore
from heads.evaluation import score_clip_head, score_notes
from heads.finetune_data import ClipAudio
from heads.finetune_loop import PRECISIONS, Loop, LoopSettings, Task, autocast_dtype
from heads.finetune_model import (LORA_TARGETS, MODES, FineTuneError, FineTuneModel, add_lora, check_mode,
                                  enable_gradient_checkpointing, merge_lora, skip_cnn_backward,
                                  trainable_parts)
from heads.fit import (CLIP_HEADS, FRAME_HEADS, HEADS, add_protocol_arguments, check_device, ensure_demo_store,
                       frame_head_class, make_plan, plot_layer_weights,
                       summary_table)
from heads.frame_heads import conp_f1
from heads.modules import SumThenHead
from heads.tasks import TaskError, make_task, notes_in_span
from heads.temporal import context_frames
from heads.training import per_class_weights

#: Short task codes in the names of fine-tuned backbones (``<backbone>@<code>-<mode tag>``).
TASK_CODES = {"singer": "sid", "transcription": "svt", "notes": "svt", "technique": "tech"}
MODE_TAGS = {"two-stage": "ft", "lora": "lora", "full": "full"}
#: Options that may differ between a run and its ``--resume`` (they do not change the result).
RESUME_FREE = ("resume", "no_progress", "num_workers", "overwrite", "device", "log_dir")


def finetuned_name(base: str, task: str, mode: str) -> str:
    """``crepe-tiny`` + ``singer`` + ``two-stage`` -> ``crepe-tiny@sid-ft``."""
    code = TASK_CODES.get(task, task.split(":", 1)[-1])
    return f"{base}@{code}-{MODE_TAGS[mode]}"


# ---- tasks -----------------------------------------------------------------------------------

class ClipTask(Task):
    """Clip classification: cross-entropy (class-weighted as the probes are), scored by accuracy."""

    kind = "clip"

    def __init__(self, est, y_train, y_select, classes, device):
        self.est, self.classes = est, np.asarray(classes)
        index = {c: i for i, c in enumerate(self.classes.tolist())}
        self.y = torch.tensor([index[v] for v in y_train], dtype=torch.long)
        self.y_select = np.array([index.get(v, -1) for v in y_select])
        self.class_weight = per_class_weights(est.class_weight, self.y.numpy(), self.classes)
        self.weight = (None if est.class_weight is None
                       else torch.tensor(self.class_weight, dtype=torch.float32, device=device))
        self.device = device

    def loss(self, model, h, mask, batch):
        logits = model.head_output(h, mask)
        y = self.y[batch["i"]].to(logits.device)
        return torch.nn.functional.cross_entropy(logits, y, weight=self.weight)

    def logits(self, model, pooled: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.head(torch.from_numpy(pooled).to(self.device)).float().cpu().numpy()

    def score(self, model, outputs):
        known = self.y_select >= 0
        pred = self.logits(model, outputs[known]).argmax(1)
        correct = (pred == self.y_select[known]).astype(np.float64)
        w = None if self.est.class_weight is None else self.class_weight[self.y_select[known]]
        return float(correct.mean() if w is None or not w.sum() > 0 else (w @ correct) / w.sum())


class FramesTask(Task):
    """Note transcription: the frame head's own targets and loss, scored by COnP F1 of decoded notes."""

    kind = "frames"

    def __init__(self, est, targets, refs_select, offsets_select, device):
        self.est, self.targets = est, targets              # targets: per training clip {name: [T, ...]}
        self.refs, self.offsets, self.device = refs_select, offsets_select, device

    def loss(self, model, h, mask, batch):
        T = h.shape[1]
        names = self.targets[0].keys()
        tg = {}
        for k in names:
            rows = []
            for r, (i, a) in enumerate(zip(batch["i"], batch["first"])):
                t = self.targets[i][k][a:a + T]
                pad = torch.zeros((T - len(t),) + tuple(t.shape[1:]), dtype=t.dtype)
                rows.append(torch.cat([t, pad]))
            tg[k] = torch.stack(rows).to(h.device)
        return self.est._loss(model.head, h, tg, mask)

    def notes(self, model, outputs, offsets) -> list:
        """Per-clip head outputs [T_i, n_out] -> decoded note lists (the head's own decoder)."""
        out = []
        with torch.no_grad():
            for o, off in zip(outputs, offsets):
                if len(o) == 0:
                    out.append([])
                    continue
                mask = torch.ones((1, len(o)), dtype=torch.bool, device=self.device)
                out.append(self.est._decode(model.head, o[None].to(self.device), mask, [off])[0])
        return out

    def score(self, model, outputs):
        return conp_f1(self.refs, self.notes(model, outputs, self.offsets))


# ---- set-up ----------------------------------------------------------------------------------

def make_estimator(args, kind: str):
    """The ``heads.fit`` head whose module is fine-tuned (its hyperparameters as given)."""
    if kind == "clip":
        if args.context:
            raise FineTuneError(f"--context is for the frame heads (crf, frames), not --head {args.head}")
        return CLIP_HEADS[args.head](lr=args.head_lr, epochs=args.epochs, class_weight=args.class_weight,
                                     seed=args.seed, device=args.device)
    if args.class_weight:
        raise FineTuneError(f"--class-weight applies to clip heads, not --head {args.head}")
    return frame_head_class(args.head)(lr=args.head_lr, epochs=args.epochs, context=args.context, seed=args.seed,
                                       device=args.device)


def load_for_finetune(args):
    noise = {"layerdrop": args.layerdrop, "mask_time_prob": args.mask_time_prob, "dropout": args.dropout}
    fe = load_frontend(args.backbone, path=args.model_path, local_files_only=args.local_files_only,
                       device="cpu", noise=noise, trust_remote_code=args.trust_remote_code,
                       attention=args.attention)
    check_mode(fe, args.mode, gradient_checkpointing=args.gradient_checkpointing)
    return fe, noise


def clip_offsets(store, rows, fe) -> list[float]:
    """Time (s of the clip's file) of each clip's frame 0 for this frontend's framing."""
    t0 = fe.geometry.first_frame_s
    return [float(store.clips["start_s"][r]) + t0 for r in rows]


def clip_notes(store, task, rows) -> list:
    column = store.labels(task.label)
    return [notes_in_span(column[r], float(store.clips["start_s"][r]), float(store.clips["end_s"][r])) for r in rows]


def stored_stage1(args, store, planned_on, fe, data: dict[str, ClipAudio], rows: dict[str, np.ndarray]):
    """The stored frames stage 1 trains and selects on instead of recomputing the frozen frontend
    ({"train": StoredFrames, "select": StoredFrames}, for ``data``/``rows`` of those roles), or None.

    ``--stage1-features auto`` uses them when the store holds the base backbone extracted by these
    very weights (weights hash, sample rate, framing and input normalisation as recorded at
    extraction) on the same frame grid; ``store`` requires it (FineTuneError saying why not);
    ``recompute`` never. Stored frames are the whole clip's (a crop's frames computed in their clip's
    extraction window, in the store's dtype): for frame-local frontends (CREPE) that is what the
    frontend computes on the crop, up to float16 rounding."""
    from heads.finetune_data import StoredFrames

    if args.stage1_features == "recompute" or args.stage1_epochs == 0:
        return None
    why = None
    if planned_on is None:
        why = f"the store holds no {args.backbone!r} backbone"
    else:
        ident = dict(store.group(planned_on).attrs.get("identity", {}))
        have = {k: ident.get(k) for k in ("weights_hash", *GEOMETRY_KEYS)}
        want = {"weights_hash": fe.weights_hash(), **fe.geometry.as_dict()}
        if have != want or ident.get("do_normalize") != getattr(fe, "do_normalize", None):
            why = f"backbone {planned_on!r} in the store was extracted from other weights or settings"
        elif not store.has_frames(planned_on):
            why = f"backbone {planned_on!r} in the store holds pooled rows only (built with --frames none)"
        elif store.layer_ids(planned_on) != list(range(fe.num_layers)):
            why = (f"backbone {planned_on!r} in the store holds only model layers {store.layer_ids(planned_on)} "
                   f"(built with --layers); stage 1 weighs all {fe.num_layers}")
        elif not all(np.array_equal(store.n_frames(planned_on)[rows[k]], data[k].n_frames) for k in rows):
            why = f"backbone {planned_on!r} in the store has another frame grid"
    if why is None:
        return {k: StoredFrames(store, planned_on, rows[k]) for k in rows}
    if args.stage1_features == "store":
        raise FineTuneError(f"--stage1-features store: {why}")
    return None


#: options naming files or folders: compared (and recorded) as absolute, resolved paths
PATH_ARGS = ("store", "out", "model_path")


def resolved_settings(settings: dict) -> dict:
    """A run's settings with paths made absolute and resolved (``runs/x`` = ``./runs/x/`` =
    ``/abs/runs/x``) and ``backbone`` resolved to its registry name, or to the resolved folder of a
    local model (``crepe`` = ``CREPE`` = ``crepe-full``), so that equivalent spellings compare equal."""
    out = dict(settings)
    for k in PATH_ARGS:
        if isinstance(out.get(k), str) and out[k]:
            out[k] = str(Path(out[k]).expanduser().resolve())
    if isinstance(out.get("backbone"), str):
        try:
            spec = resolve(out["backbone"])
        except KeyError:
            pass
        else:
            local = spec.kind == "hf" and Path(spec.source).is_dir()
            out["backbone"] = str(Path(spec.source).resolve()) if local else spec.name
    return out


def run_args(args) -> dict:
    """The settings a run is recorded with (``finetune_args.json``), resolved (:func:`resolved_settings`)."""
    raw = {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_FREE}
    return resolved_settings(json.loads(json.dumps(raw)))


def check_run_folder(out: Path, args) -> str:
    """'new' (start), 'resume' or 'done'; raises FineTuneError for a folder holding another run."""
    marker = out / "finetune_args.json"
    if not marker.is_file() or args.overwrite:
        if (out / "checkpoint.pt").is_file() and not args.overwrite:
            raise FineTuneError(f"{out} holds a checkpoint without finetune_args.json: pass --overwrite to start over")
        return "new"
    try:
        stored = resolved_settings(json.loads(marker.read_text()))
    except (ValueError, TypeError, AttributeError):
        raise FineTuneError(f"{marker} is not readable JSON settings: use another --out, or --overwrite to start "
                            "this folder over (its checkpoint is then discarded)") from None
    want = run_args(args)
    if stored != want:
        diff = sorted(k for k in set(stored) | set(want) if stored.get(k) != want.get(k))
        changes = "; ".join(f"--{k.replace('_', '-')}: {stored.get(k)!r} -> {want.get(k)!r}" for k in diff)
        raise FineTuneError(f"{out} holds a run started with other settings ({changes}). To continue it, run with "
                            f"the settings recorded in {marker} and --resume; for a new run give another --out. "
                            "(--overwrite would discard its checkpoint and start over.)")
    if (out / "metrics.json").is_file():
        return "done"
    if not args.resume:
        raise FineTuneError(f"{out} holds an unfinished run (checkpoint.pt): pass --resume to continue it, or "
                            "--overwrite to start over")
    return "resume"


def read_checkpoint(path: Path, device) -> dict:
    """A run's ``checkpoint.pt`` read with ``torch.load(weights_only=True)``: tensors and plain values
    only, so nothing pickled in the file runs. One that needs more (planted, or not written by this
    version) raises FineTuneError naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError, or whatever a damaged file raises
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise FineTuneError(f"{path}: refused, it cannot be read as plain tensors and values (torch.load "
                            f"weights_only=True: {last}); nothing in it was run. It was not written by this "
                            "version: start the run again with --overwrite, or use another --out") from None


def save_frontend(fe, folder: Path, provenance: dict) -> Path:
    """The fine-tuned frontend as a folder ``featurestore.build --model-path`` loads (LoRA merged)."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(fe, HFFrontend):
        merge_lora(fe)
        fe.model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": fe.sample_rate,
             "do_normalize": fe.do_normalize, "feature_size": 1, "padding_value": 0.0,
             "return_attention_mask": True}))
    elif isinstance(fe, CrepeFrontend):
        fe.save_folder(folder)
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    return folder


def fitted_head(est, model: FineTuneModel, kind: str, classes, class_weight, history, best_epoch):
    """``est`` with the attributes ``heads.fit`` gives a fitted head, its module the fine-tuned head."""
    fe = model.frontend
    L, D = fe.num_layers, fe.dim
    est.layers_used_, est.n_layers_in_, est.n_features_in_ = list(range(L)), L, D
    est.module_ = model.head.cpu().eval()
    est.lr_, est.lr_scores_ = float(est.lr), {float(est.lr): max((h["val"] for h in history), default=float("nan"))}
    est.history_, est.best_epoch_ = history, best_epoch
    est.layer_weights_ = est.module_.sum.weights().detach().numpy()
    if kind == "clip":
        est.classes_, est.class_weight_ = np.asarray(classes), class_weight
    return est


# ---- the command -----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m heads.finetune",
                                description="Fine-tune a frontend end to end with a head (two-stage, LoRA or full) on "
                                            "a store's clips and splits; write a run folder with the fine-tuned "
                                            "frontend, a head that reads its stored features, and metrics. Then "
                                            "python -m heads.reextract --run DIR writes it into the store.",
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="feature store whose clip table (and splits, labels) is used (default: the demo "
                                   "store, built if missing)")
    p.add_argument("--backbone", default="crepe",
                   help="frontend to fine-tune: registry name or alias, Hugging Face id, or local model folder")
    p.add_argument("--model-path", help="local folder to load the --backbone's weights from")
    p.add_argument("--local-files-only", action="store_true", help="load Hugging Face models from the offline cache only")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a transformers model run Python code from its own repository or folder (off by default "
                        "for every model: MERT loads into transformers' HuBERT). Only for a model you trust")
    p.add_argument("--attention", choices=ATTENTION_KINDS, default=None,
                   help="attention kernel: sdpa or eager (default: sdpa where transformers offers it)")
    p.add_argument("--head", choices=HEADS[:2] + FRAME_HEADS, default="linear",
                   help="head on the weighted layer sum (linear, mlp: clip tasks; frames, crf: transcription)")
    p.add_argument("--task", default=None,
                   help="singer | technique | transcription | label:<column> | notes:<column> (default: singer for "
                        "clip heads, transcription for crf/frames)")
    p.add_argument("--mode", choices=MODES, default="two-stage",
                   help="two-stage: frontend frozen for --stage1-epochs, then the transformer encoder learns (CNN "
                        "feature encoder frozen; CREPE: conv blocks 5-6); lora: adapters only (peft); full: every "
                        "frontend parameter")
    p.add_argument("--epochs", type=int, default=10, help="total epochs (the paper: 30 singer, 20 technique)")
    p.add_argument("--stage1-epochs", type=int, default=None,
                   help="epochs with the frontend frozen (the paper: 6 singer, 5 technique); default: a fifth of "
                        "--epochs for two-stage, 0 for lora and full")
    p.add_argument("--stage1-features", choices=["auto", "store", "recompute"], default="auto",
                   help="stage 1 (frontend frozen) trains on the frozen frontend's output: read from the store "
                        "(store: the base backbone must be stored from these weights; auto: when it is) or "
                        "recomputed from audio every epoch")
    p.add_argument("--head-lr", type=float, default=3e-3, help="Adam rate of the head and layer weights")
    p.add_argument("--frontend-lr", type=float, default=None,
                   help="Adam rate of the frontend parts that learn (default 5e-5, the paper's; 5e-4 for lora)")
    p.add_argument("--batch-size", type=int, default=8, help="clips (or crops) per step and rank")
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimiser step (gradient accumulation)")
    p.add_argument("--crop-seconds", type=float, default=10.0,
                   help="longest training input; longer clips are cropped (clip tasks: one random crop per epoch; "
                        "transcription: cut into crops that cover every frame once per epoch)")
    p.add_argument("--eval-window-seconds", type=float, default=30.0,
                   help="whole clips are evaluated in windows of this many seconds, as featurestore.build windows them")
    p.add_argument("--eval-context-seconds", type=float, default=5.0,
                   help="context margins of those windows (featurestore.build --context-seconds)")
    p.add_argument("--context", type=float, default=0.0, metavar="SECONDS",
                   help="crf/frames: temporal context of the head each side of a frame (as heads.fit --context)")
    p.add_argument("--class-weight", choices=["balanced", "paper"], default=None,
                   help="clip heads: balanced = n/(C n_c); paper = 1/n_c^0.2")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better selection score (default: run every epoch)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha (updates scaled by alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA path")
    p.add_argument("--lora-targets", default="q_proj,v_proj",
                   help=f"modules that get adapters, comma-separated among {', '.join(LORA_TARGETS)}")
    p.add_argument("--layerdrop", type=float, default=0.0, help="transformers layerdrop while training (default off)")
    p.add_argument("--mask-time-prob", type=float, default=0.0,
                   help="SpecAugment time masking while training (share of frames; default off)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout of the transformer (hidden, attention, activation, projection); default: the "
                        "checkpoint's own")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="CUDA autocast: auto = bf16 where supported; fp16 uses a gradient scaler; CPU runs fp32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute transformer activations in the backward pass (less memory, more time)")
    p.add_argument("--num-workers", type=int, default=2, help="audio decoding worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, crops, shuffling and the holdout draw")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1); under torchrun cuda = cuda:LOCAL_RANK")
    p.add_argument("--name", help="name of the fine-tuned backbone (default <backbone>@<task code>-<ft|lora|full>)")
    p.add_argument("--out", help="run folder (default runs/<name>-<head>)")
    p.add_argument("--log-dir", default=None,
                   help="write TensorBoard event files here (loss, selection score, learning rates, layer weights "
                        "per epoch; needs the tracking extra: pip install -e '.[tracking]')")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds another run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_protocol_arguments(p)
    args = p.parse_args(argv)
    args.task = args.task or ("transcription" if args.head in FRAME_HEADS else "singer")
    if args.stage1_epochs is None:
        args.stage1_epochs = max(1, round(args.epochs / 5)) if args.mode == "two-stage" else 0
    if args.frontend_lr is None:
        args.frontend_lr = 5e-4 if args.mode == "lora" else 5e-5
    return args


def loop_settings(args) -> LoopSettings:
    """The loop's settings from the command line, checked (ValueError naming the option)."""
    settings = LoopSettings(epochs=args.epochs, stage1_epochs=args.stage1_epochs, head_lr=args.head_lr,
                            frontend_lr=args.frontend_lr, batch_size=args.batch_size, accumulate=args.accumulate,
                            crop_s=args.crop_seconds, eval_window_s=args.eval_window_seconds,
                            eval_context_s=args.eval_context_seconds, precision=args.precision,
                            patience=args.patience, num_workers=args.num_workers, seed=args.seed)
    settings.check()
    return settings


def finetune(args, on_checkpoint=None) -> Path:
    """Run (or resume) the fine-tune described by parsed ``args``; return the run folder.
    ``on_checkpoint(epoch)``: called after each epoch's checkpoint (tests use it to stop a run)."""
    if resolve(args.backbone).kind == "hear":  # before a store or a process group is touched
        raise FineTuneError(f"--backbone {args.backbone}: a HEAR module only serves embeddings (the HEAR API has no "
                            "training entry point), so it cannot be fine-tuned. Fit a probe on its stored "
                            "features with heads.fit instead")
    ranks = distributed.from_env()
    if ranks is not None:
        args.device = distributed.rank_device(args.device, ranks)
        ranks = distributed.init(ranks, args.device)
    try:
        return _finetune(args, ranks, on_checkpoint)
    finally:
        distributed.close(ranks)


def _finetune(args, ranks, on_checkpoint) -> Path:
    with contextlib.ExitStack() as stack:  # holds the run folder's lock, once it is known
        return _finetune_in(args, ranks, on_checkpoint, stack)


def _finetune_in(args, ranks, on_checkpoint, stack: contextlib.ExitStack) -> Path:
    check_device(args.device)
    settings = loop_settings(args)                             # bad values stop here, before anything is written
    autocast_dtype(args.precision, torch.device(args.device))
    store = open_store(args.store) if args.store else open_store(ensure_demo_store())
    task = make_task(args.task)
    kind = task.kind
    if kind == "clip" and args.head in FRAME_HEADS or kind == "frames" and args.head in CLIP_HEADS:
        raise TaskError(f"--head {args.head} does not fit task {args.task!r} ({kind} task)")
    spec = resolve(args.backbone)
    try:
        planned_on = store.backbone_name(args.backbone)
        store.group(planned_on)
    except (BackboneNotInStore, KeyError):
        planned_on = None  # not extracted: clips without frames are found from the frontend below
    plan = make_plan(args, store, planned_on, task)
    name = args.name or finetuned_name(planned_on or spec.name, args.task, args.mode)
    try:
        check_backbone_name(name, "--name")
    except ValueError as e:
        raise FineTuneError(str(e)) from None
    out = Path(args.out or f"runs/{name}-{args.head}")
    leader = ranks is None or ranks.rank == 0
    if leader:  # one process per run folder: a second one stops at once, naming the holder
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(StoreLock(out, timeout=0, log=lambda _msg: None).hold("fine-tuning into this run folder"))
    state = check_run_folder(out, args) if leader else "new"
    if ranks is not None and ranks.group:
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        state = box[0]
    if state == "done":
        print(f"{out} is already fine-tuned with these settings (see {out / 'metrics.json'}); --overwrite to train "
              "again", file=sys.stderr)
        return out
    for note in plan.notes if leader else []:
        print(f"note: {note}", file=sys.stderr)
    fe, noise = load_for_finetune(args)
    train, select, scored = (ClipAudio(store, rows, fe.geometry) for rows in (plan.train, plan.select, plan.score))
    stored = stored_stage1(args, store, planned_on, fe, {"train": train, "select": select},
                           {"train": plan.train, "select": plan.select})          # (before adapters change the weights)
    lora = None
    if args.mode == "lora":
        lora = add_lora(fe, rank=args.lora_rank, alpha=args.lora_alpha, targets=args.lora_targets.split(","),
                        dropout=args.lora_dropout)
    skip_cnn_backward(fe, args.mode)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(fe)
    est = make_estimator(args, kind)
    torch.manual_seed(args.seed)                               # the head's initialisation
    L, D = fe.num_layers, fe.dim
    if kind == "clip":
        y_train = store.labels(task.label)[plan.train]
        classes = np.unique(y_train)
        if len(classes) < 2:
            raise TaskError(f"the training clips hold one class only ({classes[0]!r})")
        head = SumThenHead(L, D, est._make_head(D, len(classes)), est.layer_norm)
        loop_task = ClipTask(est, y_train, store.labels(task.label)[plan.select], classes, args.device)
    else:
        est.frame_rate_ = fe.frame_rate
        est.context_frames_ = context_frames(est.context, est.frame_rate_)
        head = est._make_module(L, D)
        offsets = clip_offsets(store, plan.train, fe)
        targets = [est._targets(n, int(t), off) for n, t, off in
                   zip(clip_notes(store, task, plan.train), train.n_frames, offsets)]
        loop_task = FramesTask(est, targets, clip_notes(store, task, plan.select), clip_offsets(store, plan.select, fe),
                               args.device)
    model = FineTuneModel(fe, head, kind).to(args.device)
    parts = trainable_parts(fe, args.mode)
    out.mkdir(parents=True, exist_ok=True)
    loop = Loop(model, loop_task, settings, train, select, parts, out, device=args.device,
                progress=not args.no_progress, ranks=ranks, stored=stored, select_name=plan.select_split)
    if state == "resume":
        loop.load(read_checkpoint(out / "checkpoint.pt", args.device))
        if leader:
            print(f"resuming {out} after epoch {loop.epoch} of {args.epochs}", file=sys.stderr)
    elif leader:
        for stale in ("checkpoint.pt", "best.pt", "metrics.json", "head.json", "head.safetensors"):
            (out / stale).unlink(missing_ok=True)
        (out / "finetune_args.json").write_text(json.dumps(run_args(args), indent=2))
    if ranks is not None and ranks.group:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    from heads.tracking import tracking

    with tracking(getattr(args, "log_dir", None) if leader else None):
        best_state = loop.run(on_checkpoint)
    seconds = time.perf_counter() - t0
    if not leader:
        return out
    model.load_state_dict(best_state)
    model.eval()
    report = score_run(loop, loop_task, est, model, kind, store, task, plan, scored, out)
    report.update(backbone=name, base_backbone=planned_on or spec.name, head=args.head, task=args.task,
                  store=str(store.path), protocol=plan.describe(), scored_split=plan.score_split,
                  selection_split=plan.select_split, finetune={
                      "mode": args.mode, "epochs": args.epochs, "stage1_epochs": args.stage1_epochs,
                      "epochs_run": loop.epoch, "best_epoch": loop.best_epoch, "head_lr": args.head_lr,
                      "frontend_lr": args.frontend_lr, "trainable_frontend_parameters": int(sum(p.numel() for _, p in parts)),
                      "lora": lora, "noise": noise, "precision": args.precision, "batch_size": args.batch_size,
                      "accumulate": args.accumulate, "world_size": ranks.world_size if ranks else 1,
                      "gradient_checkpointing": args.gradient_checkpointing, "train_seconds": seconds,
                      "stage1_features": "store" if stored is not None else "recomputed",
                      "history": loop.history},
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in est.get_params().items()},
                  stored_layers=list(range(fe.num_layers)), layer_weights=[float(v) for v in est.layer_weights_])
    provenance = {"run": str(out.resolve()), "base_backbone": planned_on or spec.name, "base_source": args.backbone,
                  "base_model_path": args.model_path, "task": args.task, "head": args.head, "mode": args.mode,
                  "best_epoch": loop.best_epoch, "selection_split": plan.select_split,
                  "selection_score": loop.best, "store": str(store.path)}
    save_frontend(fe, out / "frontend", provenance)
    est.save(out / "head.json")
    plot_layer_weights(est.layer_weights_, list(range(fe.num_layers)), out / "layer_weights.png",
                       f"{name} / {args.head} / {args.task} (fine-tuned): per layer\n{plan.label()}")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    from heads.run_plots import plot_learning_curve

    plot_learning_curve(loop.history, out / "learning_curve.png",
                        f"{name} / {args.head} / {args.task} (fine-tuned)\n{plan.label()}",
                        metric=f"selection score on {plan.select_split}")
    print(summary_table(report))
    print(f"run folder: {out}\nnext: python -m heads.reextract --run {out}")
    return out


def score_run(loop, loop_task, est, model, kind, store, task, plan, scored, out: Path) -> dict:
    """Fit the estimator's attributes and score the scored split with heads.fit's scoring."""
    if kind == "clip":
        X = loop.evaluate(scored)
        fitted_head(est, model, kind, loop_task.classes, loop_task.class_weight, loop.history, loop.best_epoch)
        scores = score_clip_head(est, X, store.labels(task.label)[plan.score])
        report = scores.report
        report.update(n_train=len(plan.train), n_selection=len(plan.select))
        return report
    ests = loop_task.notes(model, loop.evaluate(scored), clip_offsets(store, plan.score, model.frontend))
    rep = score_notes(store, plan.score, clip_notes(store, task, plan.score), ests, out / "notes")
    fitted_head(est, model, kind, None, None, loop.history, loop.best_epoch)
    return {"mean": rep["mean"], "n_songs": rep["n_songs"], "n_train": len(plan.train),
            "n_selection": len(plan.select), "context_frames": est.context_frames_, "per_song": rep["per_song"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        finetune(args)
    except (FineTuneError, TaskError, BackboneNotInStore, ValueError, FileNotFoundError, KeyError,
            LockTimeout) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m heads.finetune``: fine-tune a frontend end to end with a head, on a store's tasks and splits.

    python -m heads.finetune --backbone crepe --head linear                    # demo store, singer task
    python -m heads.finetune --store w/store.zarr --backbone mert-v0 --head crf --task transcription \\
        --mode two-stage --epochs 10 --stage1-epochs 2 --device cuda
    python -m heads.finetune ... --mode lora --lora-rank 8 --lora-targets q_proj,v_proj
    torchrun --nproc-per-node 4 -m heads.finetune ...                         # DDP, one GPU per rank
    python -m heads.finetune ... --resume                                     # continue a killed run
    python -m heads.finetune --config runs/x/config.yaml --store w/store.zarr --out runs/x  # a run's settings again

From Python, the same run is :func:`finetune_run` of a :class:`heads.finetune_spec.FinetuneSpec`:

    from heads.finetune import FinetuneSpec, finetune_run
    record = finetune_run("w/store.zarr", FinetuneSpec(backbone="mert-v0", head="crf", epochs=10))
    record.run, record.backbone, record.report["mean"]

The model is backbone -> softmax weighted sum of all hidden states -> the head of ``heads.fit``
(:mod:`heads.finetune_model`). The clips, the split plan (what trains, what chooses the epoch, what
is scored) and the scoring are those of ``heads.fit`` (:mod:`heads.protocol`): the scored split never
chose the model. Audio is read on the fly from the store's clip table (:mod:`heads.finetune_data`).

The run folder (default ``runs/<name>-<head>``, where ``<name>`` is the new backbone's name, e.g.
``mert-v0-public@svt-ft``) receives ``finetune_args.json`` (the settings that make the result, the
store and the folder, resolved: what "is this run already done?" compares), ``config.yaml`` (every
setting, for ``--config``), ``checkpoint.pt`` (every epoch),
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
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurestore import distributed, open_store
from featurestore.cli import HelpFormatter
from featurestore.frontends import CrepeFrontend, HFFrontend, PROVENANCE_FILE, load_frontend
from featurestore.geometry import GEOMETRY_KEYS
from featurestore.locking import LockTimeout, StoreLock
from featurestore.names import check_backbone_name
from featurestore.options import (SpecError, add_config_options, add_options, from_namespace, identity,
                                  parse_with_config, to_yaml, write_config)
from featurestore.registry import resolve
from featurestore.store import BackboneNotInStore
from heads.evaluation import score_clip_head, score_notes
from heads.finetune_data import ClipAudio
from heads.finetune_loop import Loop, Task, autocast_dtype
from heads.finetune_model import (FineTuneError, FineTuneModel, FineTuneSettingError, add_lora, check_mode,
                                  enable_gradient_checkpointing, merge_lora, skip_cnn_backward, trainable_parts)
from heads.finetune_spec import FinetuneSpec
from heads.fit import CLIP_HEADS, check_device, ensure_demo_store, frame_head_class, plot_layer_weights, summary_table
from heads.frame_heads import conp_f1
from heads.runs import finetune_run_name
from heads.tasks import TaskError, make_task, notes_in_span
from heads.training import per_class_weights

__all__ = ["FinetuneSpec", "FinetuneRecord", "finetune_run", "FineTuneError", "finetuned_name", "main"]

#: Short task codes in the names of fine-tuned backbones (``<backbone>@<code>-<mode tag>``).
TASK_CODES = {"singer": "sid", "transcription": "svt", "notes": "svt", "technique": "tech"}
MODE_TAGS = {"two-stage": "ft", "lora": "lora", "full": "full"}
#: The run folder's record of its settings, and its config file.
SETTINGS_FILE, CONFIG_FILE = "finetune_args.json", "config.yaml"


def finetuned_name(base: str, task: str, mode: str) -> str:
    """``crepe-tiny`` + ``singer`` + ``two-stage`` -> ``crepe-tiny@sid-ft``."""
    code = TASK_CODES.get(task, task.split(":", 1)[-1])
    return f"{base}@{code}-{MODE_TAGS[mode]}"


@dataclass(frozen=True)
class FinetuneRecord:
    """What :func:`finetune_run` did. run: the run folder; backbone: the fine-tuned backbone's name
    (what ``heads.reextract`` writes into the store); state: "fitted" (trained from the start),
    "resumed" (continued from its checkpoint) or "already done" (the folder held this finished run:
    nothing trained); report: the run's ``metrics.json`` (scores on ``report["scored_split"]``, the
    model chosen on ``report["selection_split"]``), None on torchrun ranks other than 0;
    train_seconds: seconds this call spent in the training loop (0 when already done)."""

    run: Path
    backbone: str
    state: str
    report: dict | None
    train_seconds: float


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
        return self.est.module_loss(model.head, h, self.y[batch["i"]], mask, class_weight=self.weight)

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

    def __init__(self, est, targets, refs_select, offsets_select, device, frame_rate: float):
        self.est, self.targets = est, targets              # targets: per training clip {name: [T, ...]}
        self.refs, self.offsets, self.device = refs_select, offsets_select, device
        self.frame_rate = float(frame_rate)

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
        return self.est.module_loss(model.head, h, tg, mask)

    def notes(self, model, outputs, offsets) -> list:
        """Per-clip head outputs [T_i, n_out] -> decoded note lists (the head's own decoder)."""
        out = []
        with torch.no_grad():
            for o, off in zip(outputs, offsets):
                if len(o) == 0:
                    out.append([])
                    continue
                mask = torch.ones((1, len(o)), dtype=torch.bool, device=self.device)
                out.append(self.est.decode(model.head, o[None].to(self.device), mask, [off],
                                           frame_rate=self.frame_rate)[0])
        return out

    def score(self, model, outputs):
        return conp_f1(self.refs, self.notes(model, outputs, self.offsets))


# ---- set-up ----------------------------------------------------------------------------------

def make_estimator(spec: FinetuneSpec, kind: str, device: str):
    """The ``heads.fit`` head whose module is fine-tuned (its hyperparameters from the spec)."""
    if kind == "clip":
        return CLIP_HEADS[spec.head](lr=spec.head_lr, epochs=spec.epochs, class_weight=spec.class_weight,
                                     seed=spec.seed, device=device)
    return frame_head_class(spec.head)(lr=spec.head_lr, epochs=spec.epochs, context=spec.context, seed=spec.seed,
                                       device=device)


def load_for_finetune(spec: FinetuneSpec):
    """The frontend to fine-tune (on the CPU, with the spec's training noise) and that noise."""
    fe = load_frontend(spec.backbone, path=spec.model_path, local_files_only=spec.local_files_only,
                       device="cpu", noise=spec.noise, trust_remote_code=spec.trust_remote_code,
                       attention=spec.attention)
    check_mode(fe, spec.mode, gradient_checkpointing=spec.gradient_checkpointing)
    return fe, spec.noise


def clip_offsets(store, rows, fe) -> list[float]:
    """Time (s of the clip's file) of each clip's frame 0 for this frontend's framing."""
    t0 = fe.geometry.first_frame_s
    return [float(store.clips["start_s"][r]) + t0 for r in rows]


def clip_notes(store, task, rows) -> list:
    column = store.labels(task.label)
    return [notes_in_span(column[r], float(store.clips["start_s"][r]), float(store.clips["end_s"][r])) for r in rows]


def stored_stage1(store, planned_on, fe, data: dict[str, ClipAudio], rows: dict[str, np.ndarray], *,
                  features: str, stage1_epochs: int, backbone: str):
    """The stored frames stage 1 trains and selects on instead of recomputing the frozen frontend
    ({"train": StoredFrames, "select": StoredFrames}, for ``data``/``rows`` of those roles), or None.

    ``features`` (the spec's ``stage1_features``) ``auto`` uses them when the store holds the base
    backbone (``planned_on``; ``backbone`` as the user named it) extracted by these very weights
    (weights hash, sample rate, framing and input normalisation as recorded at extraction) on the
    same frame grid; ``store`` requires it (FineTuneError saying why not); ``recompute`` never.
    Stored frames are the whole clip's (a crop's frames computed in their clip's extraction window,
    in the store's dtype): for frame-local frontends (CREPE) that is what the frontend computes on
    the crop, up to float16 rounding."""
    from heads.finetune_data import StoredFrames

    if features == "recompute" or stage1_epochs == 0:
        return None
    why = None
    if planned_on is None:
        why = f"the store holds no {backbone!r} backbone"
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
    if features == "store":
        raise FineTuneSettingError("stage1_features", f"store: {why}")
    return None


# ---- the run folder's record of its settings -------------------------------------------------

#: settings naming files or folders: compared (and recorded) as absolute, resolved paths
PATH_ARGS = ("store", "out", "model_path")
#: recorded for the reader, not compared: the folder is where it is found
NOT_COMPARED = ("out",)


def resolved_settings(settings: dict) -> dict:
    """A run's settings with paths made absolute and resolved (``runs/x`` = ``./runs/x/`` =
    ``/abs/runs/x``) and ``backbone`` resolved to its registry name, or to the resolved folder of a
    local model (``crepe`` = ``CREPE`` = ``crepe-full``), so that equivalent spellings compare equal."""
    out = dict(settings)
    for k in PATH_ARGS:
        if isinstance(out.get(k), str) and out[k] and "://" not in out[k]:  # (a store URL is left as it is)
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


def run_settings(spec: FinetuneSpec, store_path, out: Path) -> dict:
    """What ``finetune_args.json`` records: the spec's identity (:func:`featurestore.options.identity`:
    the settings that make the result), the store and the run folder, resolved (:func:`resolved_settings`)."""
    raw = {**identity(spec), "store": str(store_path), "out": str(out)}
    return resolved_settings(json.loads(json.dumps(dict(sorted(raw.items())))))


def setting_changes(stored: dict, want: dict) -> dict[str, tuple]:
    """{setting: (recorded, wanted)} where a run folder's record (``stored``, resolved) differs from
    :func:`run_settings` of a new spec. ``out`` is not compared; a record without ``store`` (one of the
    demo store, from an earlier version) does not compare the store; a setting the record lacks is
    compared with its default; keys the record has that are no setting any more are ignored."""
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneSpec)}
    changes = {}
    for k, v in want.items():
        if k in NOT_COMPARED or (k == "store" and stored.get("store") is None):
            continue
        old = stored.get(k, defaults.get(k))
        if old != v:
            changes[k] = (old, v)
    return changes


def check_run_folder(out: Path, spec: FinetuneSpec, store_path) -> str:
    """'new' (start), 'resume' or 'done'; raises FineTuneError for a folder holding another run."""
    marker = out / SETTINGS_FILE
    if not marker.is_file() or spec.overwrite:
        if (out / "checkpoint.pt").is_file() and not spec.overwrite:
            raise FineTuneError(f"{out} holds a checkpoint without {SETTINGS_FILE}: start over with overwrite "
                                "(--overwrite)")
        return "new"
    try:
        stored = json.loads(marker.read_text())
        if not isinstance(stored, dict):
            raise TypeError
        stored = resolved_settings(stored)
    except (ValueError, TypeError, AttributeError):
        raise FineTuneError(f"{marker} is not readable JSON settings: use another run folder (out), or overwrite "
                            "to start this folder over (its checkpoint is then discarded)") from None
    changes = setting_changes(stored, run_settings(spec, store_path, out))
    if changes:
        said = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
        raise FineTuneError(f"{out} holds a run started with other settings ({said}). To continue it, run with "
                            f"the settings recorded in {marker} and resume (--resume); for a new run give another "
                            "run folder (--out). (overwrite would discard its checkpoint and start over.)")
    if (out / "metrics.json").is_file():
        return "done"
    if not spec.resume:
        raise FineTuneError(f"{out} holds an unfinished run (checkpoint.pt): continue it with resume (--resume), "
                            "or start over with overwrite (--overwrite)")
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


# ---- the run ---------------------------------------------------------------------------------

def open_run_store(store):
    """An open FeatureStore from a store, a path (or URL), or None (the demo store, built if missing)."""
    if store is None:
        return open_store(ensure_demo_store())
    if isinstance(store, (str, Path)):
        return open_store(store)
    return store


def finetune_run(store, spec: FinetuneSpec, out: Path | None = None, on_checkpoint=None) -> FinetuneRecord:
    """Run (or resume, or find already done) the fine-tune ``spec`` describes on ``store`` (an open
    FeatureStore, a path, or None for the demo store); the run folder is ``out`` (default
    ``runs/<name>-<head>``). ``on_checkpoint(epoch)``: called after each epoch's checkpoint (tests use
    it to stop a run). Prints nothing to stdout (progress and notes go to stderr). Raises
    FineTuneError / TaskError / SpecError (ValueErrors naming the setting), BackboneNotInStore,
    LockTimeout (another process fine-tunes into ``out``)."""
    if not isinstance(spec, FinetuneSpec):
        raise TypeError(f"spec: expected a FinetuneSpec, got a {type(spec).__name__}")
    ranks = distributed.from_env()
    device = spec.device
    if ranks is not None:
        device = distributed.rank_device(device, ranks)
        ranks = distributed.init(ranks, device)
    try:
        with contextlib.ExitStack() as stack:  # holds the run folder's lock, once it is known
            return _finetune_in(store, spec, out, device, ranks, on_checkpoint, stack)
    finally:
        distributed.close(ranks)


def _finetune_in(store, spec: FinetuneSpec, out, device: str, ranks, on_checkpoint,
                 stack: contextlib.ExitStack) -> FinetuneRecord:
    check_device(device)
    settings = spec.loop_settings()
    autocast_dtype(spec.precision, torch.device(device))   # bad values stop here, before anything is written
    store = open_run_store(store)
    task = make_task(spec.task)
    kind = task.kind
    base = resolve(spec.backbone)
    try:
        planned_on = store.backbone_name(spec.backbone)
        store.group(planned_on)
    except (BackboneNotInStore, KeyError):
        planned_on = None  # not extracted: clips without frames are found from the frontend below
    plan = spec.plan(task, store, planned_on, spec.seed)
    name = spec.name or finetuned_name(planned_on or base.name, spec.task, spec.mode)
    try:
        check_backbone_name(name, "name")
    except ValueError as e:
        raise FineTuneError(str(e)) from None
    out = Path(out) if out is not None else Path("runs") / finetune_run_name(name, spec.head)
    leader = ranks is None or ranks.rank == 0
    if leader:  # one process per run folder: a second one stops at once, naming the holder
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(StoreLock(out, timeout=0, log=lambda _msg: None).hold("fine-tuning into this run folder"))
    state = check_run_folder(out, spec, store.path) if leader else "new"
    if ranks is not None and ranks.group:
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        state = box[0]
    if state == "done":  # the commands say so (record.state): a library call prints nothing
        report = json.loads((out / "metrics.json").read_text()) if leader else None
        return FinetuneRecord(out, (report or {}).get("backbone", name), "already done", report, 0.0)
    for note in plan.notes if leader else []:
        print(f"note: {note}", file=sys.stderr)
    fe, noise = load_for_finetune(spec)
    train, select, scored = (ClipAudio(store, rows, fe.geometry) for rows in (plan.train, plan.select, plan.score))
    # (before adapters change the weights)
    stored = stored_stage1(store, planned_on, fe, {"train": train, "select": select},
                           {"train": plan.train, "select": plan.select}, features=spec.stage1_features,
                           stage1_epochs=spec.stage1_epochs, backbone=spec.backbone)
    lora = None
    if spec.mode == "lora":
        lora = add_lora(fe, rank=spec.lora_rank, alpha=spec.lora_alpha, targets=spec.lora_target_list,
                        dropout=spec.lora_dropout)
    skip_cnn_backward(fe, spec.mode)
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(fe)
    est = make_estimator(spec, kind, device)
    torch.manual_seed(spec.seed)                               # the head's initialisation
    L, D = fe.num_layers, fe.dim
    if kind == "clip":
        y_train = store.labels(task.label)[plan.train]
        classes = np.unique(y_train)
        if len(classes) < 2:
            raise TaskError(f"the training clips hold one class only ({classes[0]!r})")
        head = est.build_module(L, D, len(classes))
        loop_task = ClipTask(est, y_train, store.labels(task.label)[plan.select], classes, device)
    else:
        head = est.build_module(L, D, frame_rate=fe.frame_rate)
        offsets = clip_offsets(store, plan.train, fe)
        targets = [est.frame_targets(n, int(t), off, frame_rate=fe.frame_rate) for n, t, off in
                   zip(clip_notes(store, task, plan.train), train.n_frames, offsets)]
        loop_task = FramesTask(est, targets, clip_notes(store, task, plan.select), clip_offsets(store, plan.select, fe),
                               device, fe.frame_rate)
    model = FineTuneModel(fe, head, kind).to(device)
    parts = trainable_parts(fe, spec.mode)
    out.mkdir(parents=True, exist_ok=True)
    loop = Loop(model, loop_task, settings, train, select, parts, out, device=device,
                progress=not spec.no_progress, ranks=ranks, stored=stored, select_name=plan.select_split)
    if state == "resume":
        loop.load(read_checkpoint(out / "checkpoint.pt", device))
        if leader:
            print(f"resuming {out} after epoch {loop.epoch} of {spec.epochs}", file=sys.stderr)
    elif leader:
        for stale in ("checkpoint.pt", "best.pt", "metrics.json", "head.json", "head.safetensors"):
            (out / stale).unlink(missing_ok=True)
        (out / SETTINGS_FILE).write_text(json.dumps(run_settings(spec, store.path, out), indent=2))
        write_config(spec, out / CONFIG_FILE, header=f"heads.finetune settings of this run: python -m heads.finetune "
                                                     f"--config {CONFIG_FILE} --store STORE --out RUN")
    if ranks is not None and ranks.group:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    from heads.tracking import tracking

    with tracking(spec.log_dir if leader else None):
        best_state = loop.run(on_checkpoint)
    seconds = time.perf_counter() - t0
    done = "resumed" if state == "resume" else "fitted"
    if not leader:
        return FinetuneRecord(out, name, done, None, seconds)
    model.load_state_dict(best_state)
    model.eval()
    report, est = score_run(loop, loop_task, est, model, kind, store, task, plan, scored, out)
    base_name = planned_on or base.name
    report.update(backbone=name, base_backbone=base_name, head=spec.head, task=spec.task,
                  store=str(store.path), protocol=plan.describe(), scored_split=plan.score_split,
                  selection_split=plan.select_split, finetune={
                      "mode": spec.mode, "epochs": spec.epochs, "stage1_epochs": spec.stage1_epochs,
                      "epochs_run": loop.epoch, "best_epoch": loop.best_epoch, "head_lr": spec.head_lr,
                      "frontend_lr": spec.frontend_lr,
                      "trainable_frontend_parameters": int(sum(p.numel() for _, p in parts)),
                      "lora": lora, "noise": noise, "precision": spec.precision, "batch_size": spec.batch_size,
                      "accumulate": spec.accumulate, "world_size": ranks.world_size if ranks else 1,
                      "gradient_checkpointing": spec.gradient_checkpointing, "train_seconds": seconds,
                      "stage1_features": "store" if stored is not None else "recomputed",
                      "history": loop.history},
                  params={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                          for k, v in est.get_params().items()},
                  stored_layers=list(range(fe.num_layers)), layer_weights=[float(v) for v in est.layer_weights_])
    provenance = {"run": str(out.resolve()), "base_backbone": base_name, "base_source": spec.backbone,
                  "base_model_path": spec.model_path, "task": spec.task, "head": spec.head, "mode": spec.mode,
                  "best_epoch": loop.best_epoch, "selection_split": plan.select_split,
                  "selection_score": loop.best, "store": str(store.path)}
    save_frontend(fe, out / "frontend", provenance)
    est.save(out / "head.json")
    plot_layer_weights(est.layer_weights_, list(range(fe.num_layers)), out / "layer_weights.png",
                       f"{name} / {spec.head} / {spec.task} (fine-tuned): per layer\n{plan.label()}")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    from heads.run_plots import plot_learning_curve

    plot_learning_curve(loop.history, out / "learning_curve.png",
                        f"{name} / {spec.head} / {spec.task} (fine-tuned)\n{plan.label()}",
                        metric=f"selection score on {plan.select_split}")
    return FinetuneRecord(out, name, done, json.loads(json.dumps(report, default=float)), seconds)


def fitted_head(est, model: FineTuneModel, kind: str, classes, class_weight, history, best_epoch):
    """A fitted head of ``est``'s class and hyperparameters whose module is the fine-tuned head
    (:meth:`from_trained_module` of the head: the attributes ``heads.fit`` gives a fitted head)."""
    kw = ({"classes": classes, "class_weights": class_weight} if kind == "clip"
          else {"frame_rate": model.frontend.frame_rate})
    return type(est).from_trained_module(model.head, history=history, best_epoch=best_epoch, **kw, **est.get_params())


def score_run(loop, loop_task, est, model, kind, store, task, plan, scored, out: Path) -> tuple[dict, object]:
    """The scored split scored with heads.fit's scoring -> (report, the fitted head)."""
    if kind == "clip":
        X = loop.evaluate(scored)
        fitted = fitted_head(est, model, kind, loop_task.classes, loop_task.class_weight, loop.history,
                             loop.best_epoch)
        scores = score_clip_head(fitted, X, store.labels(task.label)[plan.score])
        report = scores.report
        report.update(n_train=len(plan.train), n_selection=len(plan.select))
        return report, fitted
    ests = loop_task.notes(model, loop.evaluate(scored), clip_offsets(store, plan.score, model.frontend))
    rep = score_notes(store, plan.score, clip_notes(store, task, plan.score), ests, out / "notes")
    fitted = fitted_head(est, model, kind, None, None, loop.history, loop.best_epoch)
    return {"mean": rep["mean"], "n_songs": rep["n_songs"], "n_train": len(plan.train),
            "n_selection": len(plan.select), "context_frames": fitted.context_frames_,
            "per_song": rep["per_song"]}, fitted


# ---- the command -----------------------------------------------------------------------------

#: settings whose options come after ``--out`` in ``--help`` (as before the spec existed)
_AFTER_OUT = ("log_dir", "resume", "overwrite", "no_progress", "score_split", "select_split", "group",
              "holdout_fraction", "allow_scoring_selection_split")


def build_parser() -> argparse.ArgumentParser:
    """``python -m heads.finetune``'s options: ``--store``, ``--out`` and one per FinetuneSpec field."""
    p = argparse.ArgumentParser(prog="python -m heads.finetune",
                                description="Fine-tune a frontend end to end with a head (two-stage, LoRA or full) on "
                                            "a store's clips and splits; write a run folder with the fine-tuned "
                                            "frontend, a head that reads its stored features, and metrics. Then "
                                            "python -m heads.reextract --run DIR writes it into the store.",
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="feature store whose clip table (and splits, labels) is used (default: the demo "
                                   "store, built if missing)")
    add_options(p, FinetuneSpec, skip=_AFTER_OUT)
    p.add_argument("--out", help="run folder (default runs/<name>-<head>)")
    add_options(p, FinetuneSpec, skip=[f.name for f in dataclasses.fields(FinetuneSpec) if f.name not in _AFTER_OUT])
    add_config_options(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    return parse_with_config(p, argv, names=[f.name for f in dataclasses.fields(FinetuneSpec)])


def spec_from_args(args: argparse.Namespace) -> FinetuneSpec:
    """The FinetuneSpec of parsed arguments (SpecError naming the setting for a bad value)."""
    return from_namespace(FinetuneSpec, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = spec_from_args(args)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(spec), end="")
        return 0
    try:
        record = finetune_run(args.store, spec, Path(args.out) if args.out else None)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (FineTuneError, TaskError, BackboneNotInStore, ValueError, FileNotFoundError, KeyError,
            LockTimeout) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if record.state == "already done":
        print(f"{record.run} is already fine-tuned with these settings (see {record.run / 'metrics.json'}); "
              "--overwrite to train again", file=sys.stderr)
    elif record.report is not None:
        print(summary_table(record.report))
        print(f"run folder: {record.run}\nnext: python -m heads.reextract --run {record.run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

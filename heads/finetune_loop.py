"""The fine-tuning loop: stages, optimiser, autocast, accumulation, checkpoints, resume, DDP.

One Adam optimiser with two parameter groups: the head (layer weights included; ``head_lr``, the
paper's 3e-3) and the frontend parts that learn in stage 2 (``frontend_lr``, the paper's 5e-5).
A per-epoch LambdaLR holds the frontend group's rate at 0 during stage 1 (epochs
``< stage1_epochs``), where its parameters also have ``requires_grad`` off, and at ``frontend_lr``
after. Each epoch ends with an evaluation of the selection split (the metric that picks the kept
epoch: accuracy, class-weighted as the probes do, for clip tasks; COnP F1 of the decoded notes for
transcription) and a checkpoint (``checkpoint.pt``: model, optimiser, scheduler, grad scaler, every
RNG, history), written atomically; the best epoch's weights go to ``best.pt``. A resumed run loads
``checkpoint.pt`` and continues with the next epoch as if it had never stopped.

In stage 1 the frozen frontend's output can come from the store (``stored``: :class:`StoredFrames`
of the training and selection clips, same items, no forward pass of the frontend).

Under torchrun (``RANK``/``WORLD_SIZE`` set) every rank trains on its share of each epoch's items
inside DistributedDataParallel (gradients averaged); rank 0 evaluates, checkpoints and reports.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from featurestore.extract import WindowSpan, context_frames as margin_frames, plan_windows, window_frames
from heads.finetune_data import ClipAudio, StoredFrames, collate, epoch_items
from heads.finetune_model import FineTuneModel, config_value, set_train_mode

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class LoopSettings:
    """How the loop runs (the hyperparameters a run is resumed under).

    epochs: total epochs; stage1_epochs: epochs with the frontend frozen; head_lr / frontend_lr:
    Adam rates of the two groups; batch_size: clips (or crops) per step and rank; accumulate:
    batches per optimiser step; crop_s: longest training input in seconds (longer clips are cropped,
    frame tasks tile them); eval_window_s / eval_context_s: the windows whole clips are evaluated
    in (as :mod:`featurestore.extract` windows them); precision: autocast dtype on CUDA (auto = bf16
    where supported); patience: stop after this many epochs without a better selection score (None:
    run every epoch); num_workers: audio decoding workers; seed."""

    epochs: int = 10
    stage1_epochs: int = 2
    head_lr: float = 3e-3
    frontend_lr: float = 5e-5
    batch_size: int = 8
    accumulate: int = 1
    crop_s: float = 10.0
    eval_window_s: float = 30.0
    eval_context_s: float = 5.0
    precision: str = "auto"
    patience: int | None = None
    num_workers: int = 2
    seed: int = 0

    def check(self) -> None:
        """:class:`featurestore.options.SpecError` (a ValueError) naming the setting of a bad value, as
        :class:`heads.finetune_spec.FinetuneSpec` calls it (``crop_seconds`` for ``crop_s``...)."""
        from featurestore.options import SpecError

        if self.epochs < 1:
            raise SpecError("epochs", f"must be >= 1, got {self.epochs}")
        if not 0 <= self.stage1_epochs <= self.epochs:
            raise SpecError("stage1_epochs", f"must be in 0..epochs ({self.epochs}), got {self.stage1_epochs}")
        names = {"head_lr": "head_lr", "frontend_lr": "frontend_lr", "crop_s": "crop_seconds",
                 "eval_window_s": "eval_window_seconds"}
        for field, setting in names.items():
            if not (np.isfinite(getattr(self, field)) and getattr(self, field) > 0):
                raise SpecError(setting, f"must be > 0, got {getattr(self, field)}")
        if not (np.isfinite(self.eval_context_s) and self.eval_context_s >= 0):
            raise SpecError("eval_context_seconds", f"must be >= 0, got {self.eval_context_s}")
        for setting, low in (("batch_size", 1), ("accumulate", 1), ("num_workers", 0)):
            if getattr(self, setting) < low:
                raise SpecError(setting, f"must be >= {low}, got {getattr(self, setting)}")
        if self.precision not in PRECISIONS:
            raise SpecError("precision", f"{self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.patience is not None and self.patience < 1:
            raise SpecError("patience", f"must be >= 1, got {self.patience}")


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype (None: float32). Autocast is for CUDA: on CPU only fp32/auto are accepted."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            from featurestore.options import SpecError

            raise SpecError("precision", f"{precision} is CUDA autocast; on {device} use fp32 (or auto)")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def rng_state(gen: torch.Generator) -> dict:
    """Every random state a resumed run needs, as tensors and plain values (a checkpoint must load
    with ``torch.load(weights_only=True)``: numpy's key array is stored as a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "shuffle": gen.get_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    gen.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Task:
    """What the loop needs of a task (built by :mod:`heads.finetune`): ``kind`` ("clip"/"frames"),
    ``loss(model, h, mask, batch)`` -> scalar, ``score(model, outputs)`` -> selection metric (higher
    is better) from :meth:`Loop.evaluate`'s outputs."""

    kind: str

    def loss(self, model: FineTuneModel, h, mask, batch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model: FineTuneModel, outputs) -> float:
        raise NotImplementedError


class LossStep(torch.nn.Module):
    """What DDP wraps: a batch -> its loss (so gradient averaging covers the whole step)."""

    def __init__(self, model: FineTuneModel, task: Task, amp_dtype, frontend_learns: bool):
        super().__init__()
        self.model, self.task, self.amp_dtype, self.frontend_learns = model, task, amp_dtype, frontend_learns

    def forward(self, waves, batch):
        if waves is None:  # stage 1 from the store: the frozen frontend's stored output
            dev = next(self.model.head.parameters()).device
            return self.task.loss(self.model, batch["frames"].to(dev), batch["mask"].to(dev), batch)
        dev = waves[0].device
        grad = contextlib.nullcontext() if self.frontend_learns else torch.no_grad()
        amp = (torch.autocast(dev.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with grad, amp:
            h, mask = self.model.hidden(waves)
        return self.task.loss(self.model, h.float(), mask, batch)  # the head runs in float32


class Loop:
    """Trains ``model`` on ``train`` (a :class:`ClipAudio`), choosing the epoch on ``select``.

    parts: the frontend (name, parameter) pairs that learn in stage 2; out: the run folder (checkpoints);
    ranks: this process's torchrun rank (:class:`featurestore.distributed.Ranks`) or None."""

    def __init__(self, model: FineTuneModel, task: Task, settings: LoopSettings, train: ClipAudio,
                 select: ClipAudio, parts, out: Path, *, device, progress: bool = True, ranks=None,
                 stored: dict | None = None, select_name: str = "the selection split"):
        settings.check()
        self.select_name = select_name
        self.model, self.task, self.s = model, task, settings
        self.train_data, self.select_data, self.stored = train, select, stored
        self.parts = [p for _, p in parts]
        self.out, self.device, self.progress, self.ranks = Path(out), torch.device(device), progress, ranks
        self.amp_dtype = autocast_dtype(settings.precision, self.device)
        fe = model.frontend
        self.crop = max(1, int(round(settings.crop_s * fe.sample_rate / fe.stride)))
        self.window_k, self.context_k = window_frames(fe, settings.eval_window_s), margin_frames(fe, settings.eval_context_s)
        head_params = list(model.head.parameters())
        groups = [{"params": head_params, "lr": settings.head_lr, "name": "head"}]
        if self.parts:
            groups.append({"params": self.parts, "lr": settings.frontend_lr, "name": "frontend"})
        self.opt = torch.optim.Adam(groups)
        k = settings.stage1_epochs
        lambdas = [lambda e: 1.0] + ([lambda e: 1.0 if e >= k else 0.0] if self.parts else [])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambdas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.epoch, self.history, self.best, self.best_epoch, self.wait = 0, [], -np.inf, -1, 0

    # ---- state ------------------------------------------------------------------------------

    @property
    def leader(self) -> bool:
        return self.ranks is None or self.ranks.rank == 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(self.gen), "history": self.history, "best": self.best,
                "best_epoch": self.best_epoch, "wait": self.wait, "settings": asdict(self.s)}

    def load(self, ckpt: dict) -> None:
        """Continue from a checkpoint written by this loop (same settings: checked by the caller)."""
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.gen)
        self.epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])
        self.best, self.best_epoch, self.wait = float(ckpt["best"]), int(ckpt["best_epoch"]), int(ckpt["wait"])

    # ---- stages -----------------------------------------------------------------------------

    def frontend_learns(self, epoch: int) -> bool:
        return bool(self.parts) and epoch >= self.s.stage1_epochs

    def _set_stage(self, learns: bool) -> None:
        for p in self.model.frontend.parameters():
            p.requires_grad_(False)
        for p in self.parts:
            p.requires_grad_(learns)
        for p in self.model.head.parameters():
            p.requires_grad_(True)

    def _wrapped(self, learns: bool):
        step = LossStep(self.model, self.task, self.amp_dtype, learns)
        if self.ranks is not None and self.ranks.group:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            unused = config_value(self.model.frontend, "layerdrop") > 0  # dropped layers get no gradient
            return DDP(step, device_ids=ids, find_unused_parameters=unused)
        return step

    # ---- one epoch --------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> float:
        learns = self.frontend_learns(epoch)
        self._set_stage(learns)
        set_train_mode(self.model, learns)
        step = self._wrapped(learns)
        rank, world = (self.ranks.rank, self.ranks.world_size) if self.ranks is not None and self.ranks.group else (0, 1)
        items = epoch_items(self.train_data.n_frames, self.crop, self.gen, tile_clips=self.task.kind == "frames",
                            rank=rank, world=world)
        # stage 1 reads the frozen frontend's output from the store when it holds it (same items)
        data = self.stored["train"] if (self.stored is not None and not learns) else self.train_data
        loader = torch.utils.data.DataLoader(data, batch_size=self.s.batch_size, sampler=items,
                                             collate_fn=collate, num_workers=self.s.num_workers)
        n_batches = -(-len(items) // self.s.batch_size)
        bar = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1}/{self.s.epochs}"
                   f" ({'frontend learns' if learns else 'frontend frozen'})", disable=not (self.progress and self.leader),
                   leave=False, dynamic_ncols=True)
        total, n = 0.0, 0
        self.opt.zero_grad(set_to_none=True)
        for b, batch in enumerate(bar):
            waves = [w.to(self.device) for w in batch["waves"]] if "waves" in batch else None
            last = b + 1 == n_batches or (b + 1) % self.s.accumulate == 0
            sync = contextlib.nullcontext() if last or not hasattr(step, "no_sync") else step.no_sync()
            with sync:
                loss = step(waves, batch)
                self.scaler.scale(loss / self.s.accumulate).backward()
            if last:
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
            total, n = total + float(loss.detach()), n + 1
            bar.set_postfix(loss=f"{total / n:.4f}")
        bar.close()
        self.sched.step()
        return total / max(n, 1)

    # ---- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data: ClipAudio | StoredFrames, batch_size: int | None = None):
        """Whole clips in extraction's windows (``eval_window_s`` with ``eval_context_s`` margins), or
        their stored frames (:class:`StoredFrames`, the frozen frontend's output in stage 1) ->
        for clip tasks the pooled mean hidden states [N, L, D] (float32 numpy); for frame tasks the
        head's outputs per clip ([T_i, n_out] tensors) from the layer sum of every window joined."""
        self.model.eval()
        fe = self.model.frontend
        windows = []  # (clip, window span)
        from_store = isinstance(data, StoredFrames)  # stage 1: the frozen frontend's stored output, whole clips
        for i, n in enumerate(int(v) for v in data.n_frames):
            windows += ([(i, WindowSpan(0, n, 0, 0, 0, 0))] if from_store else
                        [(i, w) for w in plan_windows(n, self.window_k, fe.stride, fe.receptive, self.context_k)])
        items = [(i, w.frame - w.lead, w.lead + w.n_frames + w.trail) for i, w in windows]
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size or self.s.batch_size, sampler=items,
                                             collate_fn=collate, num_workers=self.s.num_workers)
        L, D = fe.num_layers, fe.dim
        clip = self.task.kind == "clip"
        sums = np.zeros((len(data), L, D), dtype=np.float64) if clip else None
        summed = None if clip else [torch.zeros((int(n), D)) for n in data.n_frames]
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        k = 0
        bar = tqdm(loader, desc="evaluate", disable=not (self.progress and self.leader), leave=False, dynamic_ncols=True)
        for batch in bar:
            if from_store:
                h = batch["frames"].to(self.device)
            else:
                with amp:
                    h, _ = self.model.hidden([w.to(self.device) for w in batch["waves"]])
            h = h.float()
            for r in range(len(batch["i"])):
                i, w = windows[k]
                k += 1
                kept = h[r, w.lead:w.lead + w.n_frames]
                if clip:
                    sums[i] += kept.sum(0).double().cpu().numpy()
                else:
                    summed[i][w.frame:w.frame + w.n_frames] = self.model.head.sum(kept).cpu()
        if clip:
            return (sums / np.maximum(data.n_frames, 1)[:, None, None]).astype(np.float32)
        head = self.model.head
        out = []
        for s in summed:
            x = s[None].to(self.device)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)
            out.append(head.from_sum(x, mask)[0].cpu())
        return out

    # ---- the run ----------------------------------------------------------------------------

    def _barrier(self):
        if self.ranks is not None and self.ranks.group:
            import torch.distributed as dist

            dist.barrier()

    def _share(self, value):
        """Rank 0's value on every rank."""
        if self.ranks is None or not self.ranks.group:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run(self, on_checkpoint=None) -> dict:
        """Train the remaining epochs; return the best epoch's model state. ``on_checkpoint(epoch)``
        is called after each checkpoint is written."""
        ckpt, best_path = self.out / "checkpoint.pt", self.out / "best.pt"
        if self.leader and not best_path.is_file():
            atomic_save({"epoch": -1, "model": self.model.state_dict()}, best_path)
        while self.epoch < self.s.epochs:
            e = self.epoch
            t0 = time.perf_counter()
            loss = self.train_epoch(e)
            t1 = time.perf_counter()
            select = self.stored["select"] if self.stored is not None and not self.frontend_learns(e) else self.select_data
            metric = self.task.score(self.model, self.evaluate(select)) if self.leader else None
            metric = self._share(metric)
            self.history.append({"epoch": e, "stage": 2 if self.frontend_learns(e) else 1, "loss": loss,
                                 "val": metric, "train_s": t1 - t0, "val_s": time.perf_counter() - t1})
            improved = metric > self.best
            if improved:
                self.best, self.best_epoch, self.wait = metric, e, 0
            else:
                self.wait += 1
            if self.leader:
                from heads.tracking import log_epoch

                log_epoch("finetune", self.history[-1], self.model, self.opt)
                rec = self.history[-1]
                print(f"epoch {e + 1}/{self.s.epochs} (stage {rec['stage']}): loss {loss:.4f}, selection score "
                      f"{metric:.4f} on {self.select_name} (best {self.best:.4f}, epoch {self.best_epoch + 1})",
                      file=sys.stderr, flush=True)
            self.epoch = e + 1
            if self.leader:
                if improved:
                    atomic_save({"epoch": e, "model": self.model.state_dict()}, best_path)
                atomic_save(self.state(), ckpt)
            self._barrier()
            if on_checkpoint is not None:
                on_checkpoint(e)
            if self.s.patience is not None and self.wait >= self.s.patience:
                break
        best = torch.load(best_path, map_location="cpu", weights_only=True)
        return best["model"]

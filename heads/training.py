"""The one training loop every torch head uses.

Adam, early stopping on a validation metric (higher is better), the best weights restored at the
end, a tqdm bar per run showing loss and validation metric, deterministic under a seed, CPU or
CUDA. A learning-rate grid is swept by :func:`sweep_lr`, picking the rate with the best
validation metric (s3prl issue 498: a fair frontend comparison needs a sweep).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class TrainResult:
    state: dict
    best_metric: float
    best_epoch: int
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (module init) and return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_module(module: torch.nn.Module, *, loss_fn: Callable, batches: Callable[[torch.Generator], Iterable],
                 evaluate: Callable[[torch.nn.Module], float], lr: float, epochs: int, patience: int,
                 generator: torch.Generator, weight_decay: float = 0.0, progress: bool = False,
                 desc: str = "train") -> TrainResult:
    """Train ``module`` with Adam; keep the state with the best ``evaluate`` score.

    loss_fn(module, batch) -> scalar tensor; batches(generator) -> an epoch's batches;
    evaluate(module) -> validation metric (higher is better), called in eval mode without grad.
    Stops after ``patience`` epochs without improvement.
    """
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    best, best_epoch, best_state, history, wait = -np.inf, -1, copy.deepcopy(module.state_dict()), [], 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        module.train()
        total, n = 0.0, 0
        for batch in batches(generator):
            opt.zero_grad()
            loss = loss_fn(module, batch)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        module.eval()
        with torch.no_grad():
            metric = float(evaluate(module))
        history.append({"epoch": epoch, "loss": total / max(n, 1), "val": metric})
        bar.set_postfix(loss=f"{total / max(n, 1):.4f}", val=f"{metric:.4f}")
        if metric > best:
            best, best_epoch, best_state, wait = metric, epoch, copy.deepcopy(module.state_dict()), 0
        else:
            wait += 1
            if wait >= patience:
                break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    return TrainResult(best_state, best, best_epoch, history)


def lr_grid(lr) -> list[float]:
    """A learning rate, a list of them, or a comma-separated string -> list of floats."""
    if isinstance(lr, str):
        return [float(v) for v in lr.split(",") if v.strip()]
    if isinstance(lr, (list, tuple, np.ndarray)):
        return [float(v) for v in lr]
    return [float(lr)]


def sweep_lr(make_module: Callable[[], torch.nn.Module], lrs: list[float], seed: int, **train_kwargs):
    """Train one fresh module per learning rate (same seed); return (best module, best lr, {lr: metric}, result)."""
    best = None
    scores = {}
    for lr in lrs:
        gen = seed_everything(seed)
        module = make_module()
        res = train_module(module, lr=lr, generator=gen, desc=f"lr={lr:g}", **train_kwargs)
        scores[lr] = res.best_metric
        if best is None or res.best_metric > best[2].best_metric:
            best = (module, lr, res)
    module, lr, res = best
    return module, lr, scores, res


def class_weights(y: np.ndarray, n_classes: int, power: float = 0.2) -> np.ndarray:
    """w_c = 1 / n_c^power (the paper's rule with power 0.2), normalised to mean 1 over present classes."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    return w / w[counts > 0].mean()

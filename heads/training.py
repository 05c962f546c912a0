"""The one training loop every torch head uses.

Adam, early stopping on a validation metric (higher is better), the best weights restored at the
end, a tqdm bar per run showing loss and validation metric, deterministic under a seed, CPU or
CUDA. A learning-rate grid is swept by :func:`sweep_lr`, picking the rate with the best
validation metric (s3prl issue 498: a fair frontend comparison needs a sweep).
"""
from __future__ import annotations

import copy
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from heads.tracking import log_epoch


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
    Stops after ``patience`` epochs without improvement. ``history`` has one dict per epoch: epoch,
    loss (mean over batches), val, and the wall seconds of its training (``train_s``) and of its
    validation (``val_s``).
    """
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    best, best_epoch, best_state, history, wait = -np.inf, -1, copy.deepcopy(module.state_dict()), [], 0
    # counted by hand: an iterated tqdm only publishes its count every 0.1 s, so fast epochs showed 0/N
    bar = tqdm(total=epochs, desc=desc, disable=not progress, leave=False, dynamic_ncols=True, unit="epoch")
    for epoch in range(epochs):
        t0 = time.perf_counter()
        module.train()
        total, n = 0.0, 0
        for batch in batches(generator):
            opt.zero_grad()
            loss = loss_fn(module, batch)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        module.eval()
        t1 = time.perf_counter()
        with torch.no_grad():
            metric = float(evaluate(module))
        history.append({"epoch": epoch, "loss": total / max(n, 1), "val": metric,
                        "train_s": t1 - t0, "val_s": time.perf_counter() - t1})
        log_epoch(desc, history[-1], module, opt)  # TensorBoard, when heads.tracking has a log open
        bar.update(1)
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


def sweep_lr(make_module: Callable[[], torch.nn.Module], lrs: list[float], seed: int,
             select: Callable[[torch.nn.Module], float] | None = None, **train_kwargs):
    """Train one fresh module per learning rate (same seed); return (best module, best lr, {lr: score}, result).

    Each rate's module is its best epoch by ``evaluate`` (see :func:`train_module`). The rate is chosen
    by ``select(module)`` (higher is better) when given, called once per rate on that module, else by
    the best ``evaluate`` score itself."""
    best = None
    scores = {}
    for lr in lrs:
        gen = seed_everything(seed)
        module = make_module()
        res = train_module(module, lr=lr, generator=gen, desc=f"lr={lr:g}", **train_kwargs)
        if select is not None:
            module.eval()
            with torch.no_grad():
                scores[lr] = float(select(module))
        else:
            scores[lr] = res.best_metric
        if best is None or scores[lr] > best[3]:
            best = (module, lr, res, scores[lr])
    module, lr, res, _ = best
    return module, lr, scores, res


def class_weights(y: np.ndarray, n_classes: int, power: float = 0.2) -> np.ndarray:
    """w_c = 1 / n_c^power (the paper's rule with power 0.2), normalised to mean 1 over present classes."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    return w / w[counts > 0].mean()


#: The named class-weight rules every clip head accepts (besides None and a dict).
CLASS_WEIGHT_RULES = ("balanced", "paper")
_CLASS_WEIGHT_HELP = "expected None, 'balanced', 'paper' or a dict {class label: weight >= 0}"


def check_class_weight(class_weight) -> None:
    """Raise ValueError (naming ``class_weight``) unless it is None, one of
    :data:`CLASS_WEIGHT_RULES` or a dict {class label: finite weight >= 0}. Class labels of a dict
    are checked against the classes by :func:`per_class_weights`."""
    if class_weight is None:
        return
    if isinstance(class_weight, str):
        if class_weight not in CLASS_WEIGHT_RULES:
            raise ValueError(f"class_weight={class_weight!r}: unknown rule; {_CLASS_WEIGHT_HELP}")
        return
    if not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight={class_weight!r}: {_CLASS_WEIGHT_HELP}")
    for label, w in class_weight.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not np.isfinite(w) or w < 0:
            raise ValueError(f"class_weight: the weight of class {label!r} is {w!r}; weights must be finite "
                             "numbers >= 0")


def per_class_weights(class_weight, y: np.ndarray, classes) -> np.ndarray:
    """The weight of each class [C] (in ``classes`` order) for encoded labels ``y`` (ints 0..C-1).

    The one rule behind every clip head's ``class_weight`` (the torch heads weight their loss with
    it; logistic regression and LightGBM get ``{class: weight}`` built from it, so all agree):

    - None: all ones;
    - "balanced": n / (C * n_c), scikit-learn's rule (C: the number of classes present in y);
    - "paper": 1 / n_c^0.2 normalised to mean 1 over the present classes (:func:`class_weights`);
    - a dict {class label: weight}: that weight; classes the dict does not name weigh 1
      (scikit-learn's convention).

    Classes absent from ``y`` weigh 0 under "balanced" and "paper" (they have no sample to weight).
    Raises ValueError naming ``class_weight`` for an unknown rule, dict labels that are not among
    ``classes``, negative or non-finite weights, or weights that are 0 for every class of ``y``.
    """
    check_class_weight(class_weight)
    classes = np.asarray(classes)
    n_classes = len(classes)
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes)):
        raise ValueError(f"y must be a 1-D array of class indices 0..{n_classes - 1}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    if class_weight is None:
        w = np.ones(n_classes)
    elif isinstance(class_weight, str) and class_weight == "paper":
        w = class_weights(y, n_classes)
    elif isinstance(class_weight, str):  # "balanced"
        w = np.zeros(n_classes)
        w[present] = len(y) / (present.sum() * counts[present])
    else:
        index = {c: i for i, c in enumerate(classes.tolist())}
        unknown = [label for label in class_weight if label not in index]
        if unknown:
            raise ValueError(f"class_weight: class label(s) {unknown!r} are not among the classes "
                             f"{classes.tolist()!r}")
        w = np.ones(n_classes)
        for label, weight in class_weight.items():
            w[index[label]] = float(weight)
    if y.size and not (w[present] > 0).any():
        raise ValueError(f"class_weight={class_weight!r}: every class in y has weight 0")
    return w

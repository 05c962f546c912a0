"""Bootstrap 95 % intervals of a score over the scored items, and mean ± sd over seeds.

A score measured on the scored split is a statistic of its items (clips, songs). Resampling those
items with replacement ``n_boot`` times and recomputing the score gives its sampling spread; the
interval is the 2.5th and 97.5th percentiles of the resampled scores (the percentile bootstrap).
It says how much the number would move with other items *like these*; it says nothing about how
lucky the split itself was, about other datasets, or about the training run (seeds do that).

- :func:`bootstrap_interval`: any statistic of item indices; ``groups`` resamples whole groups
  (e.g. every segment of a song together: a cluster bootstrap).
- :func:`classification_intervals`: the classification report's scores (accuracy, top-k, macro F1,
  balanced accuracy) from one set of resamples.
- :func:`mean_intervals`: the mean over songs of per-song scores (transcription).
- :func:`mean_sd`: mean and sample standard deviation (ddof 1) of scores over seeds.

Resamples come from ``numpy.random.default_rng(seed)``: ``integers(0, n, (n_boot, n))``, so a fixed
seed gives a fixed interval.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

#: Resamples per interval.
N_BOOT = 1000
#: Coverage of the interval.
LEVEL = 0.95
#: Seed of the resampling (fixed: the same scores give the same interval).
SEED = 0


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Bootstrap draws of ``n`` item indices: int64 [n_boot, n]."""
    if n < 1:
        raise ValueError("bootstrap: no item to resample")
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(values: Sequence[float], level: float = LEVEL) -> list[float]:
    """[low, high]: the (1 - level)/2 and (1 + level)/2 quantiles of the finite values (linear
    interpolation, ``numpy.percentile``'s default); [nan, nan] when none is finite."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _expand(draw: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([members[g] for g in draw])


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, groups: Sequence | None = None,
                       n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> list[float]:
    """Percentile interval [low, high] of ``statistic(indices)`` over bootstrap resamples of ``n`` items.

    statistic: int indices into the items (with repeats) -> a score. groups: [n] labels; when given,
    whole groups are resampled (all items of a drawn group, as often as it is drawn)."""
    if groups is None:
        draws = resample_indices(n, n_boot, seed)
        return percentile_interval([statistic(d) for d in draws], level)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"bootstrap: {len(groups)} group labels for {n} items")
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    draws = resample_indices(len(members), n_boot, seed)
    return percentile_interval([statistic(_expand(d, members)) for d in draws], level)


#: Scores of :func:`heads.metrics.classification_report` that get an interval.
CLASSIFICATION_KEYS = ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy")


def classification_intervals(y_true, scores, groups: Sequence | None = None, n_boot: int = N_BOOT,
                             seed: int = SEED, level: float = LEVEL) -> dict[str, list[float]]:
    """``{score: [low, high]}`` for accuracy, top-2/3 (when there are more than k classes), macro F1
    and balanced accuracy of y_true int [N] against scores float [N, C], from the same resamples
    (items = rows, or whole ``groups``). Macro F1 averages over the classes present in each resample,
    as :func:`heads.metrics.macro_f1` does on the full set."""
    from heads import metrics

    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) == 0:
        return {}
    ranks = np.argsort(-s, axis=1, kind="stable")
    pred = ranks[:, 0]
    fns: dict[str, Callable] = {
        "accuracy": lambda i: float(np.mean(pred[i] == y[i])),
        "macro_f1": lambda i: metrics.macro_f1(y[i], pred[i]),
        "balanced_accuracy": lambda i: metrics.balanced_accuracy(y[i], pred[i]),
    }
    for k in (2, 3):
        if k < s.shape[1]:
            hit = np.any(ranks[:, :k] == y[:, None], axis=1)
            fns[f"top{k}"] = lambda i, hit=hit: float(np.mean(hit[i]))
    out = {}
    for key in CLASSIFICATION_KEYS:
        if key in fns:
            out[key] = bootstrap_interval(fns[key], len(y), groups, n_boot, seed, level)
    return out


def mean_intervals(per_item: Mapping[str, Sequence[float]], n_boot: int = N_BOOT, seed: int = SEED,
                   level: float = LEVEL) -> dict[str, list[float]]:
    """``{name: [low, high]}`` of the mean over items of each per-item score (``{name: [n]}``, all of
    one length n), from the same resamples: e.g. per-song F1 averaged over songs."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_item.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"mean_intervals: per-item scores of different lengths {sorted(n)}")
    draws = resample_indices(n.pop(), n_boot, seed)
    return {k: percentile_interval(v[draws].mean(1), level) for k, v in arrays.items()}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof 1) of finite values; sd is NaN for one value."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")

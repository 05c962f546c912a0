"""Layer-wise probing: one head per stored layer, each fitted on its own, scored on the scored split.

``heads.fit --layers each`` calls :func:`fit_each_layer`: for every stored layer k, a fresh head reading
only layer k is fitted exactly as ``--layers k`` would fit it (same seed, same learning-rate grid, same
selection split), so the table's row k *is* the single-layer run. The layer the run keeps is the one
with the best selection-split score (ties: the lower layer); every layer's scored-split scores and
bootstrap 95 % intervals are reported, the chosen one marked, as MARBLE and SUPERB report layer sweeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from heads.evaluation import score_clip_head
from heads.intervals import classification_intervals

#: Scores of the layer table (keys of :func:`heads.metrics.classification_report`).
TABLE_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "top2", "top3")


def selection_score(head) -> float:
    """The score that chose the head on the selection split: the best of its learning-rate grid (torch
    heads) or of its hyperparameter grid (logreg / lgbm)."""
    if getattr(head, "lr_scores_", None):
        return float(head.lr_scores_[head.lr_])
    grid = getattr(head, "grid_scores_", None)
    if grid:
        return float(max(g["score"] for g in grid))
    return float("nan")


@dataclass
class LayerTable:
    """layers: the model's index of each stored layer [L]; heads: the fitted head of each; selection: selection-split score
    of each [L]; scored: {score: [L]} on the scored split; ci95: {score: [[low, high]] * L}; chosen: the
    position (into ``layers``) of the layer with the best selection score; chance: 1 / classes (the
    accuracy of a uniform guess); n_scored: clips scored."""

    layers: list[int]
    heads: list
    selection: list[float]
    scored: dict[str, list[float]] = field(default_factory=dict)
    ci95: dict[str, list[list[float]]] = field(default_factory=dict)
    chosen: int = 0
    chance: float = float("nan")
    n_scored: int = 0
    reports: list[dict] = field(default_factory=list)

    @property
    def chosen_layer(self) -> int:
        return int(self.layers[self.chosen])

    def to_json(self, selection_split: str, scored_split: str) -> dict:
        return {"layers": [int(v) for v in self.layers], "selection_split": selection_split,
                "scored_split": scored_split, "selection_accuracy": [float(v) for v in self.selection],
                "scored": {k: [float(x) for x in v] for k, v in self.scored.items()},
                "ci95": self.ci95, "chosen_layer": self.chosen_layer, "chance": self.chance,
                "n_scored": self.n_scored}


def fit_each_layer(make_head: Callable[[int], object], X: np.ndarray, y, eval_set, X_scored: np.ndarray, y_scored,
                   groups=None, layer_ids=None) -> LayerTable:
    """One head per layer of X [N, L, D]: ``make_head(k)`` must read stored layer k (a position) only.
    Fitted on (X, y) with ``eval_set`` (the selection split), scored on (X_scored [M, L, D], y_scored
    [M]); ``groups`` [M]: bootstrap whole groups of scored clips (None: clips); ``layer_ids`` [L]: the
    model's index of each stored layer, which the table names (None: 0..L-1, a store of every layer)."""
    layers = list(range(X.shape[1])) if layer_ids is None else [int(v) for v in layer_ids]
    if len(layers) != X.shape[1]:
        raise ValueError(f"{len(layers)} layer indices for {X.shape[1]} stored layers")
    heads, selection, reports, cis = [], [], [], []
    n_scored = 0
    for k in range(X.shape[1]):
        head = make_head(k)
        head.fit(X, y, eval_set=eval_set)
        sc = score_clip_head(head, X_scored, y_scored)
        g = None if groups is None else np.asarray(groups)[sc.known]
        heads.append(head)
        selection.append(selection_score(head))
        reports.append(sc.report)
        cis.append(classification_intervals(sc.y, sc.proba, groups=g))
        n_scored = int(sc.known.sum())
    keys = [k for k in TABLE_KEYS if all(k in r for r in reports)]
    sel = np.asarray(selection, dtype=np.float64)
    chosen = int(np.nanargmax(sel)) if np.isfinite(sel).any() else 0
    return LayerTable(layers=layers, heads=heads, selection=selection,
                      scored={k: [r[k] for r in reports] for k in keys},
                      ci95={k: [c.get(k, [float("nan")] * 2) for c in cis] for k in keys},
                      chosen=chosen, chance=1.0 / len(heads[0].classes_), n_scored=n_scored, reports=reports)


def to_markdown(table: dict, title: str) -> str:
    """The per-layer table of a run's ``layer_table`` (metrics.json): scored-split scores with their
    bootstrap 95 % intervals, the selection-split accuracy, the chosen layer marked."""
    keys = list(table["scored"])
    scored, select = table["scored_split"], table["selection_split"]
    heads = " | ".join(f"{k} on {scored}" for k in keys)
    lines = [f"{title}", "", f"| layer | {heads} | accuracy on {select} (selection) | chosen |",
             "|---" * (len(keys) + 3) + "|"]
    for i, layer in enumerate(table["layers"]):
        cells = []
        for k in keys:
            v, ci = table["scored"][k][i], table["ci95"][k][i]
            known = ci is not None and ci[0] == ci[0]  # (no interval for top-k with k = classes: always 1)
            cells.append(f"{100 * v:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if known else ""))
        mark = "**chosen on " + table["selection_split"] + "**" if layer == table["chosen_layer"] else ""
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {100 * table['selection_accuracy'][i]:.1f} | {mark} |")
    lines += ["", f"Scores in % on {table['scored_split']} ({table['n_scored']} clips), one probe per layer fitted "
                  f"on its own; [bootstrap 95 % interval]; the kept layer is the one with the best accuracy on "
                  f"{table['selection_split']}. Chance (uniform guess): {100 * table['chance']:.1f} %."]
    return "\n".join(lines)

"""Plots of the frontend comparison (matplotlib, Agg backend: no display needed).

- :func:`plot_layer_weights`: heatmap of the learned softmax layer weights, frontend x stored layer,
  one panel per task; frontends with fewer layers are masked (grey) beyond their last layer. The
  matrix it draws is :func:`layer_weight_matrix` of the runs' ``metrics.json`` ``layer_weights``.
- :func:`plot_layer_sweep`: per frontend, the selection-split accuracy of one linear probe per stored
  layer (``metrics.json`` ``layer_curve`` of a ``--layers each`` run), one panel per task.
- :func:`plot_main_metric`: bar chart of each task's main metric per frontend; published rows hatched.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metrics(run: Path) -> dict | None:
    try:
        return json.loads((Path(run) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def layer_weight_matrix(runs: list[tuple[str, Path]]) -> tuple[list[str], np.ndarray]:
    """The heatmap's values: ``(labels [R], weights [R, L_max])`` from ``(label, run folder)`` pairs.

    Row r holds run r's ``layer_weights`` placed at its ``stored_layers`` indices (metrics.json); cells
    a run has no weight for (fewer layers, or a layer subset) are NaN. Runs without learned layer
    weights (logreg/lgbm, ``--layers each``, not fitted) are left out."""
    labels, rows = [], []
    for label, run in runs:
        m = _metrics(run) if run is not None else None
        if not m or m.get("layer_weights") is None:
            continue
        w = [float(v) for v in m["layer_weights"]]
        idx = [int(i) for i in m.get("stored_layers") or range(len(w))]
        if len(idx) != len(w):
            raise ValueError(f"{Path(run) / 'metrics.json'}: {len(w)} layer weights for {len(idx)} stored layers")
        labels.append(label)
        rows.append(dict(zip(idx, w)))
    width = max((max(r) + 1 for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        for j, v in r.items():
            out[i, j] = v
    return labels, out


def layer_curves(runs: list[tuple[str, Path]]) -> dict[str, tuple[list[int], list[float], str]]:
    """``{label: (stored layers, selection accuracy per layer, selection split)}`` of the runs whose
    metrics.json has a ``layer_curve`` (``--layers each``)."""
    out = {}
    for label, run in runs:
        m = _metrics(run) if run is not None else None
        curve = (m or {}).get("layer_curve")
        if curve:
            out[label] = ([int(v) for v in curve["layers"]], [float(v) for v in curve["selection_accuracy"]],
                          (m.get("protocol") or {}).get("selection_split", "?"))
    return out


def plot_layer_weights(panels: dict[str, tuple[list[str], np.ndarray]], path: Path) -> Path | None:
    """One heatmap panel per task (``{task: layer_weight_matrix(...)}``); None when no run has weights."""
    panels = {t: v for t, v in panels.items() if len(v[0])}
    if not panels:
        return None
    plt = _plt()
    n = len(panels)
    width = max(v[1].shape[1] for v in panels.values())
    height = max(len(v[0]) for v in panels.values())
    fig, axes = plt.subplots(n, 1, figsize=(max(5.0, 0.5 * width + 3.5), n * (0.4 * height + 1.4)), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    for ax, (task, (labels, m)) in zip(axes[:, 0], panels.items()):
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, vmin=0.0, vmax=max(np.nanmax(m), 1e-6))
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(m.shape[1]), [str(i) for i in range(m.shape[1])], fontsize=7)
        ax.set_xlabel("stored layer (0 = first stored hidden state)")
        ax.set_title(f"{task}: learned layer weights (grey: the frontend has no such layer)", fontsize=9)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v) and m.shape[1] <= 26:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * np.nanmax(m) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="softmax weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_layer_sweep(panels: dict[str, dict], path: Path) -> Path | None:
    """One panel per task, one line per frontend (``{task: layer_curves(...)}``); None when empty."""
    panels = {t: c for t, c in panels.items() if c}
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.4), squeeze=False)
    for ax, (task, curves) in zip(axes[0], panels.items()):
        splits = sorted({c[2] for c in curves.values()})
        for label, (layers, acc, _) in curves.items():
            ax.plot(layers, 100 * np.asarray(acc), marker="o", ms=3, label=label)
        ax.set_xlabel("stored layer (one linear probe each)")
        ax.set_ylabel(f"accuracy on {'/'.join(splits)} (%)")
        ax.set_title(f"{task}: layer sweep (probe accuracy on the selection split)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_main_metric(panels: dict[str, tuple[str, list[dict]]], path: Path) -> Path | None:
    """One bar panel per task: ``{task: (metric column, table rows)}``; measured bars solid (missing
    cells drawn as an empty slot marked ``—``), published bars hatched and grey."""
    panels = {t: v for t, v in panels.items() if v[1]}
    if not panels:
        return None
    plt = _plt()
    n_max = max(len(v[1]) for v in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(5.0, 0.6 * n_max + 2.0), 4.2 * len(panels)),
                             squeeze=False)
    for ax, (task, (metric, rows)) in zip(axes[:, 0], panels.items()):
        x = np.arange(len(rows))
        for i, r in enumerate(rows):
            v = r[metric]
            pub = r["source"] == "published"
            if v is None:
                ax.text(i, 1.0, "—", ha="center", va="bottom", fontsize=10)
                continue
            ax.bar(i, v, color="#bbbbbb" if pub else "#4c72b0", hatch="//" if pub else None,
                   edgecolor="black" if pub else None, linewidth=0.5)
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
        labels = [r["frontend"] + (" (published)" if r["source"] == "published" else
                                   f" / {r['head']}" + ("\n(random-init)" if "random-init" in r["tags"] else ""))
                  for r in rows]
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        scored = sorted({r["scored on"] for r in rows if r["source"] == "measured" and r["scored on"]})
        demo = any("demo corpus" in r["tags"] for r in rows)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{task}: {metric}; measured (blue{', demo corpus' if demo else ''}) scored on "
                     f"{'/'.join(scored) or '?'}; published (hatched grey) as printed", fontsize=9)
        ax.set_ylim(0, 105)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

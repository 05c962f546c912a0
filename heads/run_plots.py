"""Figures of one run folder (matplotlib, Agg backend), each written as PNG and SVG.

- :func:`save_figure`: every figure of the project goes through it (PNG at 150 dpi + SVG beside it).
- :func:`plot_layer_table`: ``--layers each``: scored-split accuracy per layer with bootstrap 95 %
  intervals, the selection-split accuracy, the chance line and the chosen layer marked.
- :func:`plot_learning_curve`: training loss and selection score per epoch (``history``).
- :func:`plot_piano_roll`: predicted notes against the reference notes of one song.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: Vector formats written beside every PNG.
VECTOR_FORMATS = ("svg",)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (a .png) and the same figure as SVG beside it; close it -> the PNG path."""
    path = Path(path)
    fig.savefig(path.with_suffix(".png"), format="png", dpi=dpi)
    for ext in VECTOR_FORMATS:
        fig.savefig(path.with_suffix(f".{ext}"), format=ext)
    pyplot().close(fig)
    return path.with_suffix(".png")


def plot_layer_table(table: dict, path, title: str) -> Path:
    """A ``layer_table`` (metrics.json of ``--layers each``): accuracy on the scored split per stored
    layer with its bootstrap 95 % interval (error bars), the selection-split accuracy (hollow), the
    chance level 1/C (dashed) and the layer chosen on the selection split (starred)."""
    plt = pyplot()
    layers = np.asarray(table["layers"])
    acc = 100 * np.asarray(table["scored"]["accuracy"], dtype=float)
    ci = 100 * np.asarray(table["ci95"]["accuracy"], dtype=float)
    sel = 100 * np.asarray(table["selection_accuracy"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(layers) + 3.0), 3.6))
    ax.errorbar(layers, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], fmt="o-", ms=4, capsize=3,
                label=f"accuracy on {table['scored_split']} (scored; 95 % bootstrap interval)")
    ax.plot(layers, sel, "s--", mfc="none", ms=4, color="grey", lw=0.8,
            label=f"accuracy on {table['selection_split']} (selection)")
    ax.axhline(100 * table["chance"], color="black", lw=0.8, ls=":", label=f"chance (1/{round(1 / table['chance'])})")
    k = list(layers).index(table["chosen_layer"])
    ax.plot([layers[k]], [acc[k]], "*", ms=14, color="#dd8452",
            label=f"layer {table['chosen_layer']}: chosen on {table['selection_split']}")
    ax.set_xticks(layers, [str(v) for v in layers])
    ax.set_xlabel("stored layer (one linear probe each)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{title}\nscored on {table['scored_split']} (n = {table['n_scored']} clips), "
                 f"chosen on {table['selection_split']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_learning_curve(history: list[dict], path, title: str, metric: str = "selection score") -> Path:
    """Training loss (left axis) and the selection-split score (right axis) per epoch; ``history`` holds
    one dict per epoch with ``epoch``, ``loss`` and ``val`` (:func:`heads.training.train_module`) or
    ``selection`` (fine-tuning); the best epoch is marked."""
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    loss = [h.get("loss", h.get("train_loss")) for h in history]
    val = [h.get("val", h.get("selection")) for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(ep, loss, color="#4c72b0", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="#4c72b0")
    if any(v is not None for v in val):
        ax2 = ax.twinx()
        v = np.array([np.nan if x is None else x for x in val], dtype=float)
        ax2.plot(ep, v, color="#dd8452", marker="o", ms=3, label=metric)
        best = int(np.nanargmax(v))
        ax2.axvline(ep[best], color="grey", lw=0.8, ls="--")
        ax2.set_ylabel(metric, color="#dd8452")
        ax.set_title(f"{title}\nbest epoch {ep[best]} (dashed)", fontsize=9)
    else:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_piano_roll(reference: np.ndarray, estimated: np.ndarray, path, title: str) -> Path:
    """Notes as bars on a time x MIDI-pitch plane: reference [n, 3] (onset s, offset s, MIDI) in grey,
    estimated [m, 3] in colour on top."""
    plt = pyplot()
    ref, est = np.asarray(reference, dtype=float).reshape(-1, 3), np.asarray(estimated, dtype=float).reshape(-1, 3)
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    for notes, color, h, label in ((ref, "#bbbbbb", 0.8, f"reference ({len(ref)} notes)"),
                                   (est, "#c44e52", 0.4, f"estimated ({len(est)} notes)")):
        if len(notes):
            for a, b, m in notes:
                ax.add_patch(plt.Rectangle((a, m - h / 2), b - a, h, color=color, alpha=0.9))
        ax.plot([], [], color=color, lw=6, label=label)
    both = np.concatenate([ref, est]) if len(ref) + len(est) else np.zeros((1, 3))
    ax.set_xlim(both[:, 0].min() - 0.1, both[:, 1].max() + 0.1)
    ax.set_ylim(both[:, 2].min() - 2, both[:, 2].max() + 2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)

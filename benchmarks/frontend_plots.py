"""Plots of the frontend comparison (matplotlib, Agg backend: no display needed), each written as PNG
and SVG (:func:`heads.run_plots.save_figure`).

- :func:`plot_layer_weights`: heatmap of the learned softmax layer weights, frontend x stored layer,
  one panel per task; frontends with fewer layers are masked (grey) beyond their last layer. The
  matrix it draws is :func:`layer_weight_matrix` of the runs' ``metrics.json`` ``layer_weights``,
  scaled so that frontends with different layer counts compare: ``layers`` = weight x L (1 is the
  uniform weight 1/L) or ``frontend`` = weight / the row's largest weight.
- :func:`plot_layer_sweep`: per frontend, the scored-split accuracy of one linear probe per stored
  layer with its bootstrap 95 % interval, the layer chosen on the selection split starred and the
  chance level (``metrics.json`` ``layer_table`` of a ``--layers each`` run), one panel per task.
- :func:`plot_main_metric`: bar chart of each task's main metric per frontend with its bootstrap 95 %
  interval (one run) or ± sd (seeds), n and the chance level; published rows hatched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    from heads.run_plots import pyplot

    return pyplot()


def _save(fig, path) -> Path:
    from heads.run_plots import save_figure

    fig.tight_layout()
    return save_figure(fig, path)


#: Heatmap scalings: what 1.0 means.
SCALES = {"layers": "weight x L (1 = uniform)", "frontend": "weight / its largest", None: "softmax weight"}


def _metrics(run: Path) -> dict | None:
    from heads.runs import read_metrics

    return read_metrics(run)


def layer_weight_matrix(runs: list[tuple[str, Path]], scale: str | None = None) -> tuple[list[str], np.ndarray]:
    """The heatmap's values: ``(labels [R], weights [R, L_max])`` from ``(label, run folder)`` pairs.

    Row r holds run r's ``layer_weights`` placed at its ``stored_layers`` indices (metrics.json); cells
    a run has no weight for (fewer layers, or a layer subset) are NaN. Runs without learned layer
    weights (logreg/lgbm, ``--layers each``, not fitted) are left out. ``scale``: None (the softmax
    weights), ``layers`` (x the run's number of weights L: 1 = uniform) or ``frontend`` (/ the row's
    largest weight)."""
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
        if scale == "layers":
            w = [v * len(w) for v in w]
        elif scale == "frontend":
            w = [v / max(w) for v in w]
        elif scale is not None:
            raise ValueError(f"heatmap scale {scale!r}: expected layers, frontend or None")
        rows.append(dict(zip(idx, w)))
    width = max((max(r) + 1 for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        for j, v in r.items():
            out[i, j] = v
    return labels, out


def layer_curves(runs: list[tuple[str, Path]]) -> dict[str, dict]:
    """``{label: layer_table}`` of the runs whose metrics.json has a ``layer_table`` (``--layers each``):
    layers, scored-split scores and intervals, selection-split accuracy, chosen layer, chance."""
    out = {}
    for label, run in runs:
        m = _metrics(run) if run is not None else None
        lt = (m or {}).get("layer_table")
        if lt:
            out[label] = lt
    return out


def plot_layer_weights(panels: dict[str, tuple[list[str], np.ndarray]], path: Path,
                       scale: str | None = "layers") -> Path | None:
    """One heatmap panel per task (``{task: layer_weight_matrix(..., scale)}``); None when no run has
    weights. ``scale`` names what the colours are (:data:`SCALES`): with ``layers`` the colour map is
    centred on 1 (uniform), so a frontend's preferred layers read above 1 whatever its layer count."""
    panels = {t: v for t, v in panels.items() if len(v[0])}
    if not panels:
        return None
    plt = _plt()
    n = len(panels)
    width = max(v[1].shape[1] for v in panels.values())
    height = max(len(v[0]) for v in panels.values())
    fig, axes = plt.subplots(n, 1, figsize=(max(5.0, 0.5 * width + 3.5), n * (0.4 * height + 1.4)), squeeze=False)
    for ax, (task, (labels, m)) in zip(axes[:, 0], panels.items()):
        top = max(float(np.nanmax(m)), 1e-6)
        from matplotlib.colors import Normalize

        if scale == "layers":  # centred on 1 (uniform), symmetric, so a 1 % preference stays pale
            d = max(float(np.nanmax(np.abs(m - 1.0))), 0.05)
            cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
            norm = Normalize(vmin=1.0 - d, vmax=1.0 + d)
        else:
            cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
            norm = Normalize(vmin=0.0, vmax=top)
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, norm=norm)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(m.shape[1]), [str(i) for i in range(m.shape[1])], fontsize=7)
        ax.set_xlabel("stored layer (0 = first stored hidden state; grey: the frontend has no such layer)", fontsize=8)
        ax.set_title(f"{task}: learned layer weights, {SCALES[scale]}", fontsize=9)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v) and m.shape[1] <= 26:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=SCALES[scale])
    return _save(fig, path)


def plot_layer_sweep(panels: dict[str, dict], path: Path) -> Path | None:
    """One panel per task, one line per frontend (``{task: layer_curves(...)}``): scored-split accuracy
    per stored layer with its bootstrap 95 % interval, the layer chosen on the selection split starred,
    and the chance level; None when empty."""
    panels = {t: c for t, c in panels.items() if c}
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (task, curves) in zip(axes[0], panels.items()):
        scored = sorted({c["scored_split"] for c in curves.values()})
        chosen_on = sorted({c["selection_split"] for c in curves.values()})
        ns = sorted({c["n_scored"] for c in curves.values()})
        for label, c in curves.items():
            layers = np.asarray(c["layers"])
            acc = 100 * np.asarray(c["scored"]["accuracy"], dtype=float)
            ci = 100 * np.asarray(c["ci95"]["accuracy"], dtype=float)
            line = ax.errorbar(layers, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], marker="o", ms=3, capsize=2,
                               label=label)
            k = list(layers).index(c["chosen_layer"])
            ax.plot([layers[k]], [acc[k]], "*", ms=12, color=line[0].get_color())
        for chance in sorted({c["chance"] for c in curves.values()}):
            ax.axhline(100 * chance, color="black", lw=0.8, ls=":")
            ax.text(ax.get_xlim()[1], 100 * chance, f" chance 1/{round(1 / chance)}", va="center", fontsize=7)
        ax.set_xlabel("stored layer (one linear probe each)")
        ax.set_ylabel(f"accuracy on {'/'.join(scored)} (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{task}: per-layer probes, scored on {'/'.join(scored)} (n = {'/'.join(map(str, ns))} clips)"
                     f"\n95 % bootstrap intervals; * = layer chosen on {'/'.join(chosen_on)}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_main_metric(panels: dict[str, tuple[str, list[dict]]], path: Path) -> Path | None:
    """One bar panel per task: ``{task: (metric column, table rows)}``; measured bars solid with their
    bootstrap 95 % interval (one run) or ± sd (seeds) and n under the label (missing cells drawn as an
    empty slot marked ``—``), published bars hatched and grey; the chance level of a uniform guess dotted
    where the rows give one. None when no panel has rows."""
    panels = {t: v for t, v in panels.items() if v[1]}
    if not panels:
        return None
    plt = _plt()
    n_max = max(len(v[1]) for v in panels.values())
    width = max(5.0, 0.7 * n_max + 2.0)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 4.6 * len(panels)), squeeze=False)
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
            ci, sd = r.get(f"{metric} ci"), r.get(f"{metric} sd")
            if sd is not None:
                ax.errorbar(i, v, yerr=sd, color="black", capsize=3, lw=0.8)
            elif ci:
                ax.errorbar(i, v, yerr=[[v - ci[0]], [ci[1] - v]], color="black", capsize=3, lw=0.8)
            ax.text(i + 0.05, v, f"{v:.1f}", ha="left", va="bottom", fontsize=6)
        labels = []
        for r in rows:
            if r["source"] == "published":
                labels.append(r["frontend"] + " (published)")
                continue
            seeds = len(r.get("seeds") or [])
            n = f"n={r['n']} {r.get('items', '')}" if r.get("n") is not None else ""
            extra = [t for t in ("random-init", "demo corpus") if t in r["tags"]]
            labels.append(f"{r['frontend']} / {r['head']}\n{n}" + (f", {seeds} seeds" if seeds > 1 else "")
                          + (f"\n({', '.join(extra)})" if extra else ""))
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        chances = sorted({r["chance"] for r in rows if r.get("chance")})
        for c in chances:
            ax.axhline(c, color="black", lw=0.8, ls=":")
        scored = sorted({r["scored on"] for r in rows if r["source"] == "measured" and r["scored on"]})
        demo = any("demo corpus" in r["tags"] for r in rows)
        measured = any(r["source"] == "measured" for r in rows)
        published = any(r["source"] == "published" for r in rows)
        what = []
        if measured:
            what.append(f"measured (blue{', DEMO CORPUS' if demo else ''}) scored on {'/'.join(scored) or '?'}, "
                        "95 % bootstrap interval or ± sd over seeds")
        if published:
            what.append("published (hatched grey) as printed")
        if chances:
            what.append("dotted: chance (uniform guess)")
        ax.set_ylabel(f"{metric} (%)")
        import textwrap

        ax.set_title(f"{task}: {metric}\n" + "\n".join(textwrap.wrap("; ".join(what), int(width * 14))), fontsize=8)
        ax.set_ylim(0, 105)
    return _save(fig, path)

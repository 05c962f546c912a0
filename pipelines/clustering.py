"""Do a frontend's frame features cluster by pitch class? (The analysis of seed report 000.)

    python -m pipelines.clustering --demo --out clus                       # demo store, last layer
    python -m pipelines.clustering --store W/store.zarr --backbone mert --layer 6 --out clus
    python -m pipelines.clustering --store W/store.zarr --backbone mert --run W/runs/mert-crf --out clus

Steps:

1. Features: the frames of one stored layer (``--layer K``), or the weighted sum of all layers with
   the softmax weights a fitted head learned (``--run RUN_DIR``: its ``head.json``'s
   ``layer_weights_``; a head fitted on a subset of layers gives the other layers weight 0; a head
   fitted with ``layer_norm`` gets the same per-layer LayerNorm, no affine, before the sum). With
   neither, the last stored layer.
2. Labels: the pitch class (MIDI % 12; 0 = C) of the note sounding at each frame, read from the
   store's JSON ``notes`` label column (``[[onset_s, offset_s, midi], ...]`` in seconds of the clip's
   file) at the frame centre times of :meth:`FeatureStore.frame_times`; a frame is in a note when
   ``onset_s <= t < offset_s``. Frames in no note are left out.
3. Sampling: ``--per-class N`` frames per pitch class (default 200; all of a class's frames when it has
   fewer), drawn without replacement with ``numpy.random.default_rng(seed)`` (deterministic).
4. Clustering, after standardising every feature (zero mean, unit variance) and, when the features
   have more than ``--pca`` dimensions (default 50; 0 = off), a PCA to that many dimensions (t-SNE
   and both clusterings see the same reduced features; it keeps them fast and less noisy):
   KMeans (k = 12, n_init = 10) and HDBSCAN (``sklearn.cluster.HDBSCAN``, ``--min-cluster-size``,
   default 10). HDBSCAN's noise label -1 is kept as one more cluster when scoring (noise points are
   not dropped, so a clustering that calls everything noise scores 0, not 1). KMeans, HDBSCAN and
   t-SNE run on one OpenMP thread by default (``--threads``; see :data:`THREADS`).
5. Scores: ARI and NMI against the pitch classes (``heads.metrics.clustering_scores``);
   ``out/clustering.json`` and a small table on stdout.
6. Plot: a 2-D t-SNE (perplexity 30, or (N - 1) / 3 when N is small) coloured by the true pitch class
   (left) and by KMeans cluster (right; each cluster coloured like the pitch class it matches best, by
   Hungarian matching), saved as ``out/tsne.png``.

From code, the whole analysis: ``run_clustering(ClusteringSpec(demo=True, per_class=100, out="clus"))``
returns a :class:`ClusteringReport` (without ``out`` nothing is written and no t-SNE computed); the
command line is the same spec (``--print-config`` writes it as YAML, ``--config FILE`` reads it back,
flags beside it win). Its steps: :func:`pitch_class_frames`, :func:`cluster_assignments`,
:func:`cluster_scores`, :func:`plot_tsne`, :func:`frame_pitch_classes`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.cli import HelpFormatter
from featurestore.options import (SpecError, add_config_options, add_options, from_namespace, option,
                                  parse_with_config, to_yaml)
from heads.notes import midi_number

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: 12 distinguishable colours (tab10 + two), one per pitch class.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#f5d000")
NOISE_COLOUR = "#d0d0d0"

#: OpenMP threads for KMeans, HDBSCAN and t-SNE (``threads=None``: the libraries' default, all cores).
#: One thread by default: on a small or shared machine scikit-learn's OpenMP loops spin-wait for
#: descheduled threads, and t-SNE of 2,400 points took 22-44 s with 2 threads on 2 busy cores
#: against 7 s with one.
THREADS = 1


def _threads(threads):
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads), user_api="openmp")


# ---------------------------------------------------------------------------------------------
# labels and features
# ---------------------------------------------------------------------------------------------
#: Sampled frames of a clip further apart than this many frames are read separately.
READ_GAP = 256


def frame_pitch_classes(times, notes) -> np.ndarray:
    """Pitch class (MIDI % 12) of the note sounding at each time, -1 where no note sounds.

    times: float [T] seconds; notes: ``[[onset_s, offset_s, midi], ...]``, midi rounded by
    :func:`heads.notes.midi_number` (halves up). A time t is in a note when
    ``onset_s <= t < offset_s`` (a later note wins if notes overlap). Returns int64 [T]."""
    times = np.asarray(times, dtype=np.float64)
    out = np.full(times.shape, -1, dtype=np.int64)
    for on, off, midi in notes or []:
        out[(times >= float(on)) & (times < float(off))] = midi_number(midi) % 12
    return out


def _notes(text) -> list:
    text = str(text).strip()
    if not text:
        return []
    notes = json.loads(text)
    if not isinstance(notes, list):
        raise ValueError(f"a notes label must be a JSON list, got {type(notes).__name__}")
    return notes


def _resolve_backbone(store, backbone: str) -> str:
    bb = store.backbone_name(backbone)
    store.group(bb)  # raises BackboneNotInStore with a helpful message
    return bb


def run_layer_weights(run_dir, n_layers: int) -> tuple[np.ndarray, bool]:
    """(weights [n_layers] over the stored layers, layer_norm) of the head fitted in ``run_dir``.

    A head fitted on a subset of layers (``--layers i,j``) gives the others weight 0."""
    from heads.persist import HEAD_FILE, LEGACY_FILE, load_head

    path = Path(run_dir) / HEAD_FILE
    if not path.is_file() and not (Path(run_dir) / LEGACY_FILE).is_file():
        raise FileNotFoundError(f"no fitted head in {run_dir} ({HEAD_FILE} is missing)")
    head = load_head(path)  # a pickled head.joblib is refused, naming heads.migrate
    if getattr(head, "layer_weights_", None) is None:
        raise ValueError(f"{path}: a {type(head).__name__} learns no softmax layer weights (only the torch heads "
                         "linear/mlp/frames/crf do): use --layer K instead of --run")
    w = np.asarray(head.layer_weights_, dtype=np.float64)
    layers = getattr(head, "layers", None)
    if isinstance(layers, (list, tuple, np.ndarray)) and len(layers) == len(w) and len(w) != n_layers:
        full = np.zeros(n_layers)
        full[np.asarray(layers, dtype=np.int64)] = w
        w = full
    if len(w) != n_layers:
        raise ValueError(f"{path}: {len(w)} layer weights for a backbone with {n_layers} stored layers")
    return w, bool(getattr(head, "layer_norm", False))


def _combine(x: np.ndarray, layer, weights, layer_norm: bool) -> np.ndarray:
    """x [n, L, D] -> [n, D]: one layer, or the weighted sum (optionally LayerNorm-ed per layer)."""
    x = x.astype(np.float32)
    if weights is None:
        return x[:, layer]
    if layer_norm:
        mu = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + 1e-5)
    return np.einsum("nld,l->nd", x, np.asarray(weights, dtype=np.float32))


def pitch_class_frames(store, backbone: str, layer: int | None = None, weights=None, per_class: int = 200,
                       seed: int = 0, *, split: str | None = None, layer_norm: bool = False,
                       notes_column: str = "notes"):
    """Frame features sampled per pitch class -> (X float32 [N, D], y int64 [N] in 0..11).

    One stored ``layer`` (negative counts from the end), or the ``weights`` [L] sum of all layers
    (e.g. a fitted head's softmax ``layer_weights_``; ``layer_norm``: per-layer LayerNorm first, as
    such a head does); neither: the last layer. Frames are labelled with MIDI % 12 of the note
    sounding at their centre time (the ``notes_column`` JSON labels); frames in no note are left out.
    ``per_class`` frames per class are drawn (all of them when a class has fewer) with
    ``numpy.random.default_rng(seed)``; ``split`` limits the clips to one split (None: all). Rows of X
    are grouped by class (0..11), in store order within a class.
    """
    if layer is not None and weights is not None:
        raise ValueError("give a layer or weights, not both")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    bb = _resolve_backbone(store, backbone)
    L, D = store.shape(bb)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (L,):
            raise ValueError(f"weights must have shape [{L}] (one per stored layer), got {weights.shape}")
    else:
        layer = L - 1 if layer is None else int(layer)
        if not -L <= layer < L:
            raise ValueError(f"layer {layer} out of range: {bb} has {L} stored layers (0..{L - 1})")
        layer %= L
    column = store.labels(notes_column)
    rows = np.arange(len(store)) if split is None else store.split_indices(split)
    clip_of, frame_of, label_of = [], [], []
    for r in rows:
        notes = _notes(column[r])
        if not notes:
            continue
        pc = frame_pitch_classes(store.frame_times(int(r), bb), notes)
        idx = np.flatnonzero(pc >= 0)
        clip_of.append(np.full(len(idx), r, dtype=np.int64))
        frame_of.append(idx)
        label_of.append(pc[idx])
    if not label_of or sum(len(v) for v in label_of) == 0:
        raise ValueError(f"no frame of {store.path} lies inside a note (column {notes_column!r}"
                         + (f", split {split!r}" if split else "") + ")")
    clip_of, frame_of, label_of = (np.concatenate(v) for v in (clip_of, frame_of, label_of))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(12):
        cand = np.flatnonzero(label_of == c)
        if len(cand) > per_class:
            cand = np.sort(rng.choice(cand, size=per_class, replace=False))
        chosen.append(cand)
    chosen = np.concatenate(chosen)
    X = np.empty((len(chosen), D), dtype=np.float32)
    sel = None if weights is not None else [layer]
    clips = clip_of[chosen]
    for r in np.unique(clips):
        pos = np.flatnonzero(clips == r)
        pos = pos[np.argsort(frame_of[chosen[pos]], kind="stable")]
        f = frame_of[chosen[pos]]
        # one read per run of sampled frames less than READ_GAP apart (whole-song clips stay cheap)
        cuts = np.flatnonzero(np.diff(f) > READ_GAP) + 1
        for p, g in zip(np.split(pos, cuts), np.split(f, cuts)):
            lo, hi = int(g[0]), int(g[-1]) + 1
            ids = None if sel is None else [store.layer_ids(bb)[k] for k in sel]  # positions -> model indices
            x = store.frames(int(r), bb, layers=ids, start=lo, stop=hi)[g - lo]
            X[p] = _combine(x, 0 if sel else None, weights, layer_norm)
    return X, label_of[chosen]


# ---------------------------------------------------------------------------------------------
# clustering and scores
# ---------------------------------------------------------------------------------------------
def preprocess(X, pca: int | None = 50, seed: int = 0) -> np.ndarray:
    """Standardise every feature, then PCA to ``pca`` dims when X has more (None/0: no PCA)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    if pca and Z.shape[1] > pca and Z.shape[0] > 1:
        Z = PCA(n_components=min(int(pca), Z.shape[0]), random_state=seed).fit_transform(Z)
    return Z


def cluster_assignments(X, seed: int = 0, *, k: int = 12, min_cluster_size: int = 10, pca: int | None = 50,
                        preprocessed: bool = False, threads: int | None = THREADS) -> dict:
    """``{"kmeans": int [N], "hdbscan": int [N] (-1 = noise)}`` on the standardised (+PCA) features.

    KMeans: ``k`` clusters (at most N), n_init=10, random_state=seed. HDBSCAN: ``min_cluster_size``
    (at most N). ``preprocessed=True``: X is used as given. ``threads``: see :data:`THREADS`."""
    from sklearn.cluster import HDBSCAN, KMeans

    Z = np.asarray(X, dtype=np.float64) if preprocessed else preprocess(X, pca, seed)
    n = len(Z)
    if n < 2:
        raise ValueError(f"need at least 2 samples to cluster, got {n}")
    with _threads(threads):
        km = KMeans(n_clusters=min(k, n), n_init=10, random_state=seed).fit_predict(Z)
        hd = HDBSCAN(min_cluster_size=max(2, min(int(min_cluster_size), n)), copy=True).fit_predict(Z)
    return {"kmeans": km.astype(np.int64), "hdbscan": hd.astype(np.int64)}


def cluster_scores(X, y, seed: int = 0, *, k: int = 12, min_cluster_size: int = 10, pca: int | None = 50,
                   assignments: dict | None = None, threads: int | None = THREADS) -> dict:
    """ARI and NMI of KMeans and HDBSCAN clusterings of X against the labels y.

    X [N, D] features, y [N] labels. Returns ``{"kmeans": {"ARI", "NMI", "n_clusters"}, "hdbscan":
    {"ARI", "NMI", "n_clusters", "noise_fraction"}, "n", "n_classes", "dims"}``. HDBSCAN's noise
    (-1) counts as one more cluster in ARI/NMI; ``n_clusters`` does not count it. ``assignments``:
    reuse the output of :func:`cluster_assignments` instead of clustering again."""
    from heads.metrics import clustering_scores

    y = np.asarray(y)
    X = np.asarray(X)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows, y {len(y)}")
    a = assignments or cluster_assignments(X, seed, k=k, min_cluster_size=min_cluster_size, pca=pca,
                                           threads=threads)
    out = {"n": int(len(y)), "n_classes": int(len(np.unique(y))),
           "dims": int(min(X.shape[1], pca, len(X)) if pca and X.shape[1] > pca else X.shape[1])}
    km, hd = a["kmeans"], a["hdbscan"]
    out["kmeans"] = {**clustering_scores(y, km), "n_clusters": int(len(np.unique(km)))}
    out["hdbscan"] = {**clustering_scores(y, hd), "n_clusters": int(len(np.unique(hd[hd >= 0]))),
                      "noise_fraction": float(np.mean(hd < 0))}
    return out


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------
def tsne_perplexity(n: int, perplexity: float = 30.0) -> float:
    """``perplexity``, capped at (n - 1) / 3 for small n (t-SNE needs perplexity < n)."""
    return float(min(perplexity, max(1.0, (n - 1) / 3.0)))


def tsne_2d(X, seed: int = 0, perplexity: float = 30.0, pca: int | None = 50, preprocessed: bool = False,
            threads: int | None = THREADS):
    """2-D t-SNE [N, 2] of the standardised (+PCA) features (``preprocessed=True``: X as given)."""
    from sklearn.manifold import TSNE

    Z = np.asarray(X, dtype=np.float64) if preprocessed else preprocess(X, pca, seed)
    with _threads(threads):
        return TSNE(n_components=2, perplexity=tsne_perplexity(len(Z), perplexity), init="pca",
                    learning_rate="auto", random_state=seed).fit_transform(Z)


def _match_colours(y: np.ndarray, clusters: np.ndarray) -> dict:
    """cluster -> pitch class it overlaps most (Hungarian matching on the contingency table)."""
    from scipy.optimize import linear_sum_assignment

    ids = [c for c in np.unique(clusters) if c >= 0]
    classes = np.arange(12)
    table = np.array([[np.sum((clusters == c) & (y == k)) for k in classes] for c in ids])
    match = {}
    if len(ids):
        r, c = linear_sum_assignment(-table)
        match = {ids[i]: int(classes[j]) for i, j in zip(r, c)}
    used = set(match.values())
    spare = [k for k in classes if k not in used]
    for c in ids:  # more clusters than classes: the remaining colours, then the best overlap
        if c not in match:
            match[c] = int(spare.pop(0)) if spare else int(np.argmax(table[ids.index(c)]))
    return match


def plot_tsne(X, y, clusters, path, *, seed: int = 0, perplexity: float = 30.0, pca: int | None = 50,
              title: str | None = None, embedding=None, threads: int | None = THREADS) -> Path:
    """Side-by-side 2-D t-SNE of X: coloured by true pitch class y (0..11) and by cluster (KMeans).

    Clusters are coloured like the pitch class they match best; -1 (noise) is grey. ``embedding``
    [N, 2]: reuse a computed t-SNE. Saves a PNG at ``path`` and returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    y = np.asarray(y, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    E = np.asarray(embedding) if embedding is not None else tsne_2d(X, seed, perplexity, pca, threads=threads)
    fig = Figure(figsize=(13, 5.8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    size = 10 if len(y) > 1000 else 18
    present = sorted(set(y.tolist()))
    for k in present:
        m = y == k
        ax1.scatter(E[m, 0], E[m, 1], s=size, c=COLOURS[k % 12], label=PITCH_CLASSES[k % 12], alpha=0.8,
                    linewidths=0)
    ax1.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2, title="pitch class", title_fontsize=8)
    ax1.set_title("true pitch class", fontsize=10)
    match = _match_colours(y, clusters)
    handles = []
    for c in sorted(set(clusters.tolist())):
        m = clusters == c
        colour = NOISE_COLOUR if c < 0 else COLOURS[match[c] % 12]
        ax2.scatter(E[m, 0], E[m, 1], s=size, c=colour, alpha=0.8, linewidths=0)
        name = "noise" if c < 0 else f"{c} (~{PITCH_CLASSES[match[c] % 12]})"
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=name))
    ax2.legend(handles=handles, fontsize=7, loc="best", ncol=2, title="cluster (matched class)",
               title_fontsize=8)
    ax2.set_title("KMeans cluster", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from heads.run_plots import save_figure

    save_figure(fig, path)  # and the SVG beside it
    return path


# ---------------------------------------------------------------------------------------------
# the analysis as one typed call
# ---------------------------------------------------------------------------------------------
def _at_least(spec, name: str, low) -> None:
    value = getattr(spec, name)
    if value is None or value < low:
        raise SpecError(name, f"must be >= {low}, got {value}")


@dataclass(frozen=True)
class ClusteringSpec:
    """The settings of one clustering analysis (module docstring, steps 1-6), validated when made.

    ``store`` or ``demo`` names the store; ``layer`` (a model hidden-state index; negative: counted
    from the last stored layer) or ``run`` (a fitted head's folder) the features, neither: the last
    stored layer. ``out``: the folder :func:`run_clustering` writes ``clustering.json`` and
    ``tsne.png`` to (None, from Python only: nothing is written and no t-SNE is computed)."""

    store: str | None = option(None, "feature store with a JSON 'notes' label column")
    demo: bool = option(False, "use the demo store (built if missing)")
    backbone: str | None = option(None, "backbone in the store (registry name or alias); not given: the --run's, "
                                        "else crepe")
    layer: int | None = option(None, "one layer, by the model's hidden-state index (negative: counted from the last "
                                     "stored layer; not given: the last stored one)")
    run: str | None = option(None, "run folder of a fitted head: use its softmax layer weights for a weighted sum")
    per_class: int = option(200, "frames sampled per pitch class")
    split: str | None = option(None, "only clips of this split (not given: all clips)")
    notes_column: str = option("notes", "JSON notes label column")
    k: int = option(12, "KMeans clusters")
    min_cluster_size: int = option(10, "HDBSCAN min_cluster_size")
    pca: int = option(50, "PCA dims after standardising (0: no PCA)")
    perplexity: float = option(30.0, "t-SNE perplexity (capped at (N-1)/3)")
    threads: int = option(THREADS, "OpenMP threads for KMeans/HDBSCAN/t-SNE (0: all cores, as the libraries do)",
                          identity=False)
    seed: int = option(0, "seed of the frame sampling, KMeans and t-SNE")
    out: str | None = option(None, "output folder (tsne.png, clustering.json); required, here or in the --config "
                                    "file", identity=False)

    def __post_init__(self):
        if self.store is not None and self.demo:
            raise SpecError("store", "give a store or demo, not both")
        if self.store is None and not self.demo:
            raise SpecError("store", "give a store (or demo=True for the demo store)")
        if self.layer is not None and self.run is not None:
            raise SpecError("layer", "give a layer or a run (its layer weights), not both")
        for name, low in (("per_class", 1), ("k", 1), ("min_cluster_size", 1), ("pca", 0), ("threads", 0),
                          ("seed", 0)):
            _at_least(self, name, low)
        if not self.perplexity > 0:
            raise SpecError("perplexity", f"must be > 0, got {self.perplexity}")
        if not str(self.notes_column).strip():
            raise SpecError("notes_column", "must name a label column")


@dataclass(frozen=True)
class ClusteringReport:
    """What :func:`run_clustering` found and wrote.

    ``result``: the record written to ``clustering.json`` (store, backbone, features, layer or layer
    weights, class counts, settings, and the scores of :func:`cluster_scores`: ``kmeans`` / ``hdbscan``
    ARI, NMI, n_clusters). ``json_path`` / ``plot_path``: the files written (None without ``out``)."""

    result: dict
    json_path: Path | None = None
    plot_path: Path | None = None

    @property
    def backbone(self) -> str:
        return self.result["backbone"]

    @property
    def features(self) -> str:
        return self.result["features"]

    def scores(self, algorithm: str) -> dict:
        """``{"ARI", "NMI", "n_clusters"[, "noise_fraction"]}`` of ``kmeans`` or ``hdbscan``."""
        return self.result[algorithm]


def _open_store(spec: ClusteringSpec):
    from featurestore import open_store

    if spec.demo:
        from heads.fit import ensure_demo_store

        return open_store(ensure_demo_store())
    return open_store(spec.store)


def _layer_position(store, bb: str, layer: int | None) -> int:
    """The position among the stored layers of ``layer`` (a model hidden-state index; negative:
    counted from the last stored layer; None: the last). SpecError naming ``layer`` when not stored."""
    L, _ = store.shape(bb)
    ids = store.layer_ids(bb)  # the model's layers (a store built with --layers holds some)
    if layer is None or layer < 0:
        pos = L - 1 if layer is None else layer
        if not -L <= pos < L:
            raise SpecError("layer", f"{pos} out of range: {bb} has {L} stored layers (0..{L - 1})")
        return pos % L
    if layer in ids:
        return ids.index(layer)
    held = f"0..{L - 1}" if ids == list(range(L)) else f"model layers {ids} (built with --layers)"
    raise SpecError("layer", f"{layer} out of range: {bb} holds {held}")


def run_clustering(spec: ClusteringSpec) -> ClusteringReport:
    """Sample, cluster and score a store's frame features by pitch class (module docstring), write
    ``spec.out/clustering.json`` and ``spec.out/tsne.png`` (+ SVG) when ``spec.out`` is given, and
    return the :class:`ClusteringReport`. Prints nothing (building the demo store notes it on stderr).

    Raises SpecError (a layer the store does not hold), BackboneNotInStore, FileNotFoundError (no
    fitted head in ``spec.run``), ValueError (no frame inside a note, a head without layer weights)
    and KeyError (no such label column)."""
    store = _open_store(spec)
    backbone = spec.backbone
    if backbone is None and spec.run:
        from heads.runs import read_metrics

        backbone = (read_metrics(spec.run) or {}).get("backbone")
    bb = _resolve_backbone(store, backbone or "crepe")
    L, _ = store.shape(bb)
    weights, layer_norm, layer = None, False, None
    if spec.run:
        weights, layer_norm = run_layer_weights(spec.run, L)
        features = f"weighted sum of {L} layers (weights of {spec.run})"
    else:
        layer = _layer_position(store, bb, spec.layer)
        features = f"layer {store.layer_ids(bb)[layer]}"
    X, y = pitch_class_frames(store, bb, layer=layer, weights=weights, per_class=spec.per_class, seed=spec.seed,
                              split=spec.split, layer_norm=layer_norm, notes_column=spec.notes_column)
    pca, threads = spec.pca or None, spec.threads or None
    Z = preprocess(X, pca, spec.seed)
    assign = cluster_assignments(Z, spec.seed, k=spec.k, min_cluster_size=spec.min_cluster_size, preprocessed=True,
                                 threads=threads)
    scores = cluster_scores(X, y, spec.seed, k=spec.k, min_cluster_size=spec.min_cluster_size, pca=pca,
                            assignments=assign)
    perplexity = tsne_perplexity(len(Z), spec.perplexity)
    counts = np.bincount(y, minlength=12)
    result = {"store": str(store.path), "backbone": bb, "features": features,
              "layer": None if layer is None else store.layer_ids(bb)[layer], "run": spec.run,
              "layer_weights": None if weights is None else [float(w) for w in weights], "layer_norm": layer_norm,
              "split": spec.split, "per_class": spec.per_class, "seed": spec.seed,
              "class_counts": {PITCH_CLASSES[k]: int(counts[k]) for k in range(12)},
              "settings": {"standardise": True, "pca": pca, "k": spec.k, "n_init": 10,
                           "min_cluster_size": spec.min_cluster_size, "hdbscan_noise": "kept as one cluster",
                           "tsne_perplexity": perplexity},
              **scores}
    if spec.out is None:
        return ClusteringReport(result)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    E = tsne_2d(Z, spec.seed, perplexity, preprocessed=True, threads=threads)
    plot = plot_tsne(X, y, assign["kmeans"], out / "tsne.png", embedding=E,
                     title=f"{bb}, {features}: KMeans ARI {scores['kmeans']['ARI']:.2f} / "
                           f"NMI {scores['kmeans']['NMI']:.2f}")
    (out / "clustering.json").write_text(json.dumps(result, indent=2))
    return ClusteringReport(result, out / "clustering.json", plot)


def format_summary(report: ClusteringReport) -> str:
    """The lines the command prints: what was clustered, the ARI/NMI table, the files written."""
    from heads import metrics

    r = report.result
    rows = [{"algorithm": "kmeans", **r["kmeans"]}, {"algorithm": "hdbscan", **r["hdbscan"]}]
    lines = [f"{r['backbone']}, {r['features']}: {r['n']} frames, {r['n_classes']} pitch classes, {r['dims']} dims",
             metrics.format_table(rows, ["algorithm", "ARI", "NMI", "n_clusters", "noise_fraction"])]
    if report.json_path is not None:
        lines.append(f"wrote {report.json_path} and {report.plot_path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _only(*names: str) -> set:
    """The spec fields other than ``names`` (to add ``names`` alone to an option group)."""
    return set(ClusteringSpec.__dataclass_fields__) - set(names)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.clustering",
                                description="Cluster a frontend's frame features and score the clusters against "
                                            "pitch classes (MIDI % 12): KMeans + HDBSCAN, ARI/NMI, t-SNE plot.",
                                formatter_class=HelpFormatter)
    # the groups are not required=True: a --config file may give --store / --out (checked in parse_args)
    add_options(p.add_mutually_exclusive_group(), ClusteringSpec, skip=_only("store", "demo"))
    add_options(p, ClusteringSpec, skip=_only("backbone"))
    add_options(p.add_mutually_exclusive_group(), ClusteringSpec, skip=_only("layer", "run"))
    add_options(p, ClusteringSpec, skip=("store", "demo", "backbone", "layer", "run"))
    add_config_options(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = parse_with_config(p, argv, names=ClusteringSpec.__dataclass_fields__)
    if args.store is None and not args.demo:
        p.error("one of the arguments --store --demo is required")
    if args.out is None and not args.print_config:
        p.error("the following arguments are required: --out")
    return args


def main(argv=None) -> int:
    from featurestore.store import BackboneNotInStore

    args = parse_args(argv)
    try:
        spec = from_namespace(ClusteringSpec, args)
        if args.print_config:
            print(to_yaml(spec, header="python -m pipelines.clustering --config FILE"), end="")
            return 0
        report = run_clustering(spec)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (BackboneNotInStore, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

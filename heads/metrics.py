"""Every score reported by the heads is computed here.

Classification: top-k accuracy, macro F1, balanced accuracy, confusion matrix, a report dict.
Transcription: ``mir_eval.transcription.evaluate`` with its defaults (onset tolerance 50 ms, pitch
tolerance 50 cents, offset tolerance max(50 ms, 0.2 x reference duration)); COnPOff / COnP / COn as in
MIR-ST500, averaged per song. Clustering: ARI and NMI. Plus a confusion-matrix PNG and a plain-text table.

sklearn and matplotlib are imported lazily so that ``python -m heads.score`` starts quickly.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def _labels_1d(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    return y


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = _labels_1d(y_true, "y_true")
    y_pred = _labels_1d(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}")
    return y_true, y_pred


def topk_accuracy(y_true, scores, k: int = 1) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores.

    y_true: int [N] in [0, C); scores: float [N, C] (logits or probabilities); k >= 1 (k > C counts as C).
    Ties are broken towards the lower class index (so k=1 equals ``argmax``). Returns NaN for N = 0.
    """
    y_true = _labels_1d(y_true, "y_true").astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores must have shape [N={y_true.shape[0]}, C], got {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, c = scores.shape
    if n == 0:
        return float("nan")
    if y_true.min() < 0 or y_true.max() >= c:
        raise ValueError(f"y_true has labels outside [0, {c})")
    k = min(int(k), c)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrix int64 [C, C]: rows are true classes, columns predicted classes.
    y_true, y_pred: int [N] in [0, n_classes)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    y_true = y_true.astype(np.int64)
    y_pred = y_pred.astype(np.int64)
    for y, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} has labels outside [0, {n_classes})")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def per_class_prf(y_true, y_pred, labels: Sequence | None = None) -> dict:
    """Per label ``{"precision", "recall", "f1", "support"}`` (0 where undefined).
    labels default: sorted union of the labels in y_true and y_pred."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred])).tolist()
    out = {}
    for lab in labels:
        t = y_true == lab
        p = y_pred == lab
        tp = int(np.sum(t & p))
        fp = int(np.sum(~t & p))
        fn = int(np.sum(t & ~p))
        out[lab] = {"precision": tp / (tp + fp) if tp + fp else 0.0,
                    "recall": tp / (tp + fn) if tp + fn else 0.0,
                    "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                    "support": int(np.sum(t))}
    return out


def macro_f1(y_true, y_pred, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 (``sklearn.metrics.f1_score(average="macro", zero_division=0)``).
    y_true, y_pred: [N]. labels: the classes to average over; default the union of the labels present
    in y_true and y_pred. Returns NaN for N = 0."""
    from sklearn.metrics import f1_score

    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(f1_score(y_true, y_pred, labels=None if labels is None else list(labels),
                          average="macro", zero_division=0))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in y_true of their recall (as
    ``sklearn.metrics.balanced_accuracy_score``, not adjusted). y_true, y_pred: [N]. NaN for N = 0."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.size == 0:
        return float("nan")
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def classification_report(y_true, scores, class_names: Sequence[str] | None = None,
                          ks: Iterable[int] = (1, 2, 3)) -> dict:
    """Scores of a classifier from its per-class scores.

    y_true: int [N] in [0, C); scores: float [N, C]. The prediction is ``argmax`` (ties -> lower index).
    Returns a JSON-ready dict: ``accuracy`` (top-1), ``top{k}`` for each other k in ``ks`` with k <= C,
    ``macro_f1`` (over the labels present in y_true or the predictions), ``balanced_accuracy``, ``n``,
    ``confusion`` (list of lists, [C][C], rows true), ``class_names`` ([C]) and ``per_class``
    (``{name: {precision, recall, f1, support}}`` for every class).
    """
    y_true = _labels_1d(y_true, "y_true").astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores must have shape [N={y_true.shape[0]}, C], got {scores.shape}")
    n, c = scores.shape
    if class_names is None:
        class_names = [str(i) for i in range(c)]
    class_names = [str(x) for x in class_names]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for {c} classes")
    y_pred = (np.argmax(scores, axis=1) if n else np.zeros(0, dtype=np.int64)).astype(np.int64)
    report: dict = {"n": int(n), "accuracy": topk_accuracy(y_true, scores, 1)}
    for k in sorted(set(int(k) for k in ks)):
        if 1 < k <= c:
            report[f"top{k}"] = topk_accuracy(y_true, scores, k)
    report["macro_f1"] = macro_f1(y_true, y_pred)
    report["balanced_accuracy"] = balanced_accuracy(y_true, y_pred)
    report["confusion"] = confusion(y_true, y_pred, c).tolist()
    report["class_names"] = class_names
    prf = per_class_prf(y_true, y_pred, labels=list(range(c)))
    report["per_class"] = {class_names[i]: prf[i] for i in range(c)}
    return report


# ----------------------------------------------------------------------------------------------
# Transcription
# ----------------------------------------------------------------------------------------------

#: our name -> (precision, recall, f1) keys of mir_eval.transcription.evaluate
TRANSCRIPTION_KEYS = {
    "COnPOff": ("Precision", "Recall", "F-measure"),
    "COnP": ("Precision_no_offset", "Recall_no_offset", "F-measure_no_offset"),
    "COn": ("Onset_Precision", "Onset_Recall", "Onset_F-measure"),
}
_PRF = ("precision", "recall", "f1")


def _as_notes(intervals, pitches, name: str) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.asarray(intervals, dtype=np.float64)
    pitches = np.asarray(pitches, dtype=np.float64)
    if intervals.size == 0:
        intervals = intervals.reshape(0, 2)
    if pitches.size == 0:
        pitches = pitches.reshape(0)
    if intervals.ndim != 2 or intervals.shape[1] != 2 or pitches.shape != (intervals.shape[0],):
        raise ValueError(f"{name}: need intervals [n, 2] and pitches [n], got {intervals.shape} "
                         f"and {pitches.shape}")
    return intervals, pitches


def transcription_scores(ref_intervals, ref_pitches_hz, est_intervals, est_pitches_hz) -> dict:
    """Note-level transcription scores of one song.

    ref_intervals [n, 2] s, ref_pitches_hz [n], est_intervals [m, 2] s, est_pitches_hz [m].
    Returns ``{"COnPOff"|"COnP"|"COn": {"precision", "recall", "f1"}, "raw": {14 mir_eval keys}}``
    from ``mir_eval.transcription.evaluate`` with its defaults. An empty reference or estimate gives
    zeros (mir_eval's "notes are empty" warnings are silenced).
    """
    import mir_eval.transcription

    ref_i, ref_p = _as_notes(ref_intervals, ref_pitches_hz, "reference")
    est_i, est_p = _as_notes(est_intervals, est_pitches_hz, "estimate")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Reference|Estimated) notes are empty")
        raw = mir_eval.transcription.evaluate(ref_i, ref_p, est_i, est_p)
    raw = {k: float(v) for k, v in raw.items()}
    out: dict = {name: dict(zip(_PRF, (raw[k] for k in keys)))
                 for name, keys in TRANSCRIPTION_KEYS.items()}
    out["raw"] = raw
    return out


def transcription_report(pairs: Mapping[Hashable, tuple]) -> dict:
    """Scores of many songs, averaged per song (MIR-ST500 convention).

    pairs: ``{song_id: (ref_intervals [n, 2], ref_pitches_hz [n], est_intervals [m, 2], est_pitches_hz [m])}``.
    Returns ``{"per_song": {song_id: transcription_scores(...)}, "mean": {"COnPOff"|"COnP"|"COn":
    {"precision", "recall", "f1"}}, "mean_raw": {mir_eval key: mean}, "n_songs": n}``. Each mean is the
    unweighted mean over songs of the per-song value (a song's F1 is not recomputed from mean P and R).
    """
    if len(pairs) == 0:
        raise ValueError("transcription_report: no songs")
    per_song = {sid: transcription_scores(*pair) for sid, pair in pairs.items()}
    songs = list(per_song.values())
    mean = {name: {m: float(np.mean([s[name][m] for s in songs])) for m in _PRF}
            for name in TRANSCRIPTION_KEYS}
    mean_raw = {k: float(np.mean([s["raw"][k] for s in songs])) for k in songs[0]["raw"]}
    return {"per_song": per_song, "mean": mean, "mean_raw": mean_raw, "n_songs": len(songs)}


# ----------------------------------------------------------------------------------------------
# Clustering
# ----------------------------------------------------------------------------------------------


def clustering_scores(labels_true, labels_pred) -> dict:
    """``{"ARI", "NMI"}`` of a clustering against true labels (sklearn ``adjusted_rand_score`` and
    ``normalized_mutual_info_score`` with its default arithmetic normalisation). Both inputs [N]."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels_true, labels_pred = _check_pair(labels_true, labels_pred)
    return {"ARI": float(adjusted_rand_score(labels_true, labels_pred)),
            "NMI": float(normalized_mutual_info_score(labels_true, labels_pred))}


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def plot_confusion(cm, class_names: Sequence[str], path: str | os.PathLike, title: str | None = None,
                   normalize: bool = True) -> Path:
    """Save a confusion matrix [C, C] (rows true, columns predicted) as a PNG and return its path.

    normalize: colour by row-normalised rates and annotate percentages (rows with no samples are 0);
    otherwise colour and annotate raw counts. Cells are annotated only when C <= 30.
    Uses the Agg canvas directly, so the global matplotlib backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be square [C, C], got {cm.shape}")
    c = cm.shape[0]
    names = [str(x) for x in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}x{c} matrix")
    counts = cm.astype(np.float64)
    if normalize:
        sums = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)
    else:
        values = counts

    side = min(max(4.0, 0.45 * c + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    vmax = 1.0 if normalize else max(float(values.max(initial=0.0)), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if c <= 30:
        fontsize = 9 if c <= 10 else 7 if c <= 20 else 5
        for i in range(c):
            for j in range(c):
                v = values[i, j]
                if normalize:
                    text = f"{100 * v:.0f}%" if c > 10 else f"{100 * v:.1f}%\n({int(cm[i, j])})"
                else:
                    text = f"{int(cm[i, j])}" if np.issubdtype(cm.dtype, np.integer) else f"{v:.3g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if v > 0.5 * vmax else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from heads.run_plots import save_figure

    save_figure(fig, path)
    return path


def _lookup(row: Mapping, column: str):
    if column in row:
        return row[column]
    value = row
    for part in column.split("."):  # "COnPOff.f1" reaches into nested dicts
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _cell(value, percent: bool) -> tuple[str, bool]:
    """(text, is_number)"""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan", True
        return (f"{100 * v:.1f}%" if percent else f"{v:.3f}"), True
    return str(value), False


def format_table(rows: Sequence[Mapping], columns: Sequence[str], percent: bool = False) -> str:
    """A plain-text table: a header, a dashed rule, one line per row.

    rows: dicts; columns: keys to show (a dotted key such as ``"COnPOff.f1"`` reaches into nested
    dicts; missing values are blank). Floats are shown to 3 decimals, or as percentages with one
    decimal when ``percent=True``; ints as ints. Numbers are right-aligned, text left-aligned.
    """
    columns = [str(c) for c in columns]
    cells = [[_cell(_lookup(r, c), percent) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[j][0]) for row in cells]) for j, c in enumerate(columns)]
    numeric = [any(row[j][1] for row in cells) and all(row[j][1] or not row[j][0] for row in cells)
               for j in range(len(columns))]

    def line(texts):
        return "  ".join(t.rjust(w) if num else t.ljust(w)
                         for t, w, num in zip(texts, widths, numeric)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line([t for t, _ in row]) for row in cells]
    return "\n".join(out)

"""Scoring a fitted clip head on labelled clips: shared by ``heads.fit`` and the task pipelines."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heads import metrics


@dataclass
class ClipScores:
    """report: metrics.classification_report of the clips whose label the head knows;
    proba [n_known, C]; y [n_known] class indices; known bool [N] (labels never seen in training
    cannot be scored and are counted in ``report['unseen_labels']``)."""

    report: dict
    proba: np.ndarray
    y: np.ndarray
    known: np.ndarray


def score_clip_head(head, X: np.ndarray, labels: np.ndarray) -> ClipScores:
    """Probabilities and the classification report of ``head`` on X [N, L, D] with string labels [N]."""
    labels = np.asarray(labels).astype(str)
    classes = np.asarray(head.classes_).astype(str)
    known = np.isin(labels, classes)
    order = np.argsort(classes)
    yi = order[np.searchsorted(classes[order], labels[known])]
    proba = head.predict_proba(X[known]) if known.any() else np.zeros((0, len(classes)))
    report = metrics.classification_report(yi, proba, class_names=[str(c) for c in classes])
    report["unseen_labels"] = int((~known).sum())
    return ClipScores(report, proba, yi, known)


def score_notes(store, rows, refs, ests, notes_dir=None) -> dict:
    """mir_eval transcription scores of estimated against reference note lists, one pair per clip row
    (``[[onset_s, offset_s, midi], ...]``), averaged over clips: the report of
    :func:`heads.metrics.transcription_report` (``mean``, ``n_songs``, ``per_song`` keyed by clip id).
    ``notes_dir``: also write each clip's estimated notes there as ``<safe_name(clip id)>.txt``
    (:func:`featurestore.names.safe_name`: ids differing only in ``/`` vs ``_`` get two files)."""
    from pathlib import Path

    from featurestore.names import safe_name
    from heads.notes import notes_to_arrays, write_notes

    pairs = {}
    if notes_dir is not None:
        Path(notes_dir).mkdir(parents=True, exist_ok=True)
    for r, ref, e in zip(rows, refs, ests):
        cid = str(store.clip_ids[r])
        ri, rp = notes_to_arrays(ref)
        ei, ep = notes_to_arrays(e)
        if notes_dir is not None:
            write_notes(Path(notes_dir) / f"{safe_name(cid)}.txt", ei, ep)
        pairs[cid] = (ri, rp, ei, ep)
    return metrics.transcription_report(pairs)

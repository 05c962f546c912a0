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

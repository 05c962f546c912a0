"""Saving and loading heads (joblib pickles of the fitted estimator, torch modules included)."""
from __future__ import annotations

from pathlib import Path

import joblib


class SaveLoadMixin:
    """``head.save(path)`` and ``type(head).load(path)`` / :func:`load_head`."""

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        return path

    @classmethod
    def load(cls, path):
        head = load_head(path)
        if not isinstance(head, cls):
            raise TypeError(f"{path} holds a {type(head).__name__}, not a {cls.__name__}")
        return head


def load_head(path):
    """Load any head saved with ``.save``."""
    return joblib.load(Path(path))

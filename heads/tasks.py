"""Generic tasks read from a store: what X and y are for a clip label or for note transcription.

- :class:`ClipLabelTask`: X = pooled [N, L, D] of a split, y = a label column of the clip table.
- :class:`NotesTask`: X = frames [T_i, L, D] per clip, y = notes [[onset_s, offset_s, midi], ...]
  in seconds of the clip's audio file, read from a JSON label column (default ``notes``).

Dataset-specific tasks (Artist20, MIR-ST500, VocalSet) build on these in ``pipelines``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from featurestore.datasets import ClipFrames
from featurestore.store import FeatureStore


class TaskError(ValueError):
    """A task that this store cannot serve (missing labels, empty split)."""


def _split_rows(store: FeatureStore, split: str, seed: int = 0) -> np.ndarray:
    rows = store.split_indices(split)
    if len(rows) == 0 and split == "valid":  # no validation split: hold out 15 % of train, per file
        train = store.split_indices("train")
        files = np.unique(store.clips["file_id"][train])
        held = set(np.random.default_rng(seed).permutation(files)[:max(1, round(0.15 * len(files)))])
        rows = np.array([r for r in train if store.clips["file_id"][r] in held], dtype=np.int64)
    return rows


def with_frames(store: FeatureStore, backbone: str, rows: np.ndarray) -> np.ndarray:
    """The rows whose clip has at least one frame for this backbone (a clip shorter than the
    receptive field has none, and NaN pooled rows; the build reported it as too_short)."""
    store.group(backbone)  # a clear error if the backbone is not there
    return rows[store.n_frames(backbone)[rows] > 0]


@dataclass
class ClipLabelTask:
    """Clip classification on a label column. ``kind`` = "clip"."""

    label: str
    kind: str = "clip"

    def rows(self, store: FeatureStore, split: str) -> np.ndarray:
        """Rows of a split; ``train`` excludes rows carved out as validation."""
        rows = _split_rows(store, split)
        if split == "train" and len(store.split_indices("valid")) == 0:
            held = set(_split_rows(store, "valid"))
            rows = np.array([r for r in rows if r not in held], dtype=np.int64)
        return rows

    def data(self, store: FeatureStore, backbone: str, split: str):
        """(X pooled float32 [n, L, D], y labels [n], rows [n]); clips with no frame are left out."""
        try:
            labels = store.labels(self.label)
        except KeyError as e:
            raise TaskError(str(e)) from None
        rows = with_frames(store, backbone, self.rows(store, split))
        if len(rows) == 0:
            raise TaskError(f"split {split!r} is empty in {store.path}")
        X = store.pooled(backbone, rows=rows).astype(np.float32)
        return X, labels[rows], rows


@dataclass
class NotesTask:
    """Note transcription from a JSON notes column (times in seconds of the clip's file). ``kind`` = "frames"."""

    column: str = "notes"
    kind: str = "frames"

    rows = ClipLabelTask.rows

    def data(self, store: FeatureStore, backbone: str, split: str):
        """(X lazy :class:`featurestore.datasets.ClipFrames` [T_i, L, D] per clip, y list of note lists inside
        each clip, offsets list of frame-0 times (s), rows [n])."""
        try:
            column = store.labels(self.column)
        except KeyError as e:
            raise TaskError(f"{e} (transcription needs a JSON notes column)") from None
        rows = with_frames(store, backbone, self.rows(store, split))
        if len(rows) == 0:
            raise TaskError(f"split {split!r} is empty in {store.path}")
        y, offsets = [], []
        for r in rows:
            t = store.frame_times(int(r), backbone)
            a, b = float(store.clips["start_s"][r]), float(store.clips["end_s"][r])
            notes = json.loads(column[r] or "[]")
            y.append([[max(on, a), min(off, b), int(m)] for on, off, m in notes if off > a and on < b])
            offsets.append(float(t[0]) if len(t) else a)
        return ClipFrames(store, backbone, rows), y, offsets, rows


def make_task(name: str):
    """``singer`` / ``technique`` / any ``label:<column>`` -> ClipLabelTask; ``transcription`` /
    ``notes:<column>`` -> NotesTask."""
    if name in ("transcription", "notes"):
        return NotesTask()
    if name.startswith("notes:"):
        return NotesTask(name.split(":", 1)[1])
    if name.startswith("label:"):
        return ClipLabelTask(name.split(":", 1)[1])
    return ClipLabelTask(name)

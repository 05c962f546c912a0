"""Generic tasks read from a store: what X and y are for a clip label or for note transcription.

- :class:`ClipLabelTask`: X = pooled [N, L, D] of some rows (``pool``: the clip mean, the std, or
  both side by side [N, L, 2D], see :func:`pooled_features`), y = a label column of the clip table.
- :class:`NotesTask`: X = frames [T_i, L, D] per clip, y = notes [[onset_s, offset_s, midi], ...]
  in seconds of the clip's audio file, read from a JSON label column (default ``notes``).

Which rows train, select and score comes from :meth:`plan` (:mod:`heads.protocol`).

Dataset-specific tasks (Artist20, MIR-ST500, VocalSet) build on these in ``pipelines``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from featurestore.datasets import ClipFrames
from featurestore.options import SpecError
from featurestore.store import FeatureStore
from heads.protocol import FILE, HOLDOUT, ProtocolError, SplitPlan, plan_splits, replan
from heads.notes import midi_number


class TaskError(ValueError):
    """A task that this store cannot serve (missing labels, empty split)."""


def notes_in_span(notes_json: str, start_s: float, end_s: float) -> list[list]:
    """Notes of a JSON notes cell that overlap [start_s, end_s), cut to it, pitches rounded by
    :func:`heads.notes.midi_number` -> [[onset_s, offset_s, midi int], ...] (seconds of the file)."""
    return [[max(float(on), start_s), min(float(off), end_s), midi_number(m)]
            for on, off, m in json.loads(notes_json or "[]") if off > start_s and on < end_s]


#: Clip pooling choices (``--pool``): the store's ``pooled_mean``, its ``pooled_std`` (population std
#: over the clip's frames), or both concatenated on the feature axis (statistics pooling, the
#: speaker-ID convention: D -> 2D per layer, mean first).
POOLS = ("mean", "std", "mean+std")
DEFAULT_POOL = "mean"


def check_pool(pool: str) -> str:
    """``pool`` if it is one of :data:`POOLS`, else ValueError naming the setting."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
    return pool


def pool_suffix(pool: str | None) -> str:
    """Run-folder suffix of a clip pooling: ``""`` for the default mean, ``-stdpool``, ``-meanstdpool``."""
    return "" if pool in (None, DEFAULT_POOL) else f"-{check_pool(pool).replace('+', '')}pool"


def layers_suffix(layers) -> str:
    """Run-folder suffix of ``--layers``: none for all layers, ``-layers-each`` / ``-layers-concat`` /
    ``-layers-3_7``, so a layer sweep or a layer subset never overwrites the all-layer run."""
    if layers in (None, "", "all"):
        return ""
    return "-layers-" + "_".join(v.strip() for v in str(layers).split(",") if v.strip())


def context_suffix(context: float | None) -> str:
    """Run-folder suffix of a frame head's ``--context`` seconds: ``-ctx150ms``; none for 0."""
    return f"-ctx{round(context * 1000)}ms" if context else ""


#: Run-folder tags of the logreg / lgbm hyperparameter options (``--C 0.1,1`` -> ``-C0.1_1``).
HYPER_TAGS = {"C": "C", "n_estimators": "trees", "gbm_learning_rate": "glr", "num_leaves": "leaves",
              "min_child_samples": "minleaf"}


def hyper_suffix(options: dict) -> str:
    """Run-folder suffix of the logreg / lgbm hyperparameters given (``{dest: "v1,v2"}``; None: not given), so
    a run with another grid never replaces the default one: ``-C0.1_1_10``, ``-trees100_400``."""
    out = ""
    for dest, tag in HYPER_TAGS.items():
        v = options.get(dest)
        if v is not None:
            out += f"-{tag}" + "_".join(x.strip() for x in str(v).split(",") if x.strip())
    return out


def seed_suffix(seed: int | None) -> str:
    """Run-folder suffix of a ``--seed`` / one seed of ``--seeds``: none for seed 0, ``-seed1``, ..."""
    return f"-seed{int(seed)}" if seed else ""


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` (or a config file's list, ``seeds: [0, 1, 2]``) -> [0, 1, 2] (distinct integers
    >= 0); SpecError naming seeds otherwise."""
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        if any(isinstance(v, (bool, float)) for v in items):
            raise ValueError
        seeds = [int(v) for v in items if str(v).strip()]
    except ValueError:
        raise SpecError("seeds", f"{text!r}: expected comma-separated integers such as 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SpecError("seeds", f"{text!r}: expected distinct integers >= 0, such as 0,1,2")
    return seeds


def pooled_features(store: FeatureStore, backbone: str, rows=None, pool: str = DEFAULT_POOL, layers=None) -> np.ndarray:
    """Clip features float32 [n, L', D] (``mean``, ``std``) or [n, L', 2D] (``mean+std``: the mean in
    ``[..., :D]``, the std in ``[..., D:]``) of ``rows`` (None: every clip), read from the store's
    ``pooled_mean`` / ``pooled_std``. Fit, evaluate and predict all read through here, so a run
    is scored on the features it was trained on."""
    check_pool(pool)
    stats = ("mean", "std") if pool == "mean+std" else (pool,)
    parts = [store.pooled(backbone, layers=layers, stat=s, rows=rows).astype(np.float32) for s in stats]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


@dataclass
class _Task:
    """What every task shares: its label column, the column its selection holdout is grouped by
    (:data:`heads.protocol.FILE` = the audio file) and the split plan."""

    label: str
    group: str = FILE
    stratify = True

    def plan(self, store: FeatureStore, backbone: str, group: str | None = None, **protocol) -> SplitPlan:
        """Train / selection / scored rows (:func:`heads.protocol.plan_splits`; ``protocol``: score,
        select, holdout_fraction, seed, allow_same). ``group`` None: the task's own group column, or
        the audio file when the store lacks that column (noted in the plan)."""
        note = None
        if group is None:
            group = self.group
            if group != FILE and group not in store.clips["labels"]:
                note = f"no {group!r} column in the store: the selection holdout is grouped by file"
                group = FILE
        try:
            plan = plan_splits(store, backbone, label=self.label, stratify=self.stratify, group=group, **protocol)
        except ProtocolError as e:
            raise TaskError(str(e)) from None
        if note and plan.select_split == HOLDOUT:
            plan.notes.insert(0, note)
        return plan

    def replan(self, store: FeatureStore, backbone: str, desc: dict, score: str | None = None) -> SplitPlan:
        """The plan of a fitted run (its saved ``protocol``), optionally scoring another split."""
        try:
            return replan(store, desc, backbone, label=self.label, stratify=self.stratify, score=score)
        except ProtocolError as e:
            raise TaskError(str(e)) from None


@dataclass
class ClipLabelTask(_Task):
    """Clip classification on a label column. ``kind`` = "clip". ``pool``: which clip statistics
    make X (one of :data:`POOLS`, see :func:`pooled_features`)."""

    pool: str = DEFAULT_POOL
    kind = "clip"

    def data(self, store: FeatureStore, backbone: str, rows: np.ndarray):
        """(X pooled float32 [n, L, D] (``mean+std``: [n, L, 2D]), y labels [n], rows [n]) of the clip
        rows (from :meth:`plan`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise TaskError(f"no clip to read from {store.path}")
        X = pooled_features(store, backbone, rows, self.pool)
        return X, store.labels(self.label)[rows], rows


@dataclass
class NotesTask(_Task):
    """Note transcription from a JSON notes column (times in seconds of the clip's file). ``kind`` = "frames"."""

    label: str = "notes"
    kind = "frames"
    stratify = False

    def data(self, store: FeatureStore, backbone: str, rows: np.ndarray):
        """(X lazy :class:`featurestore.datasets.ClipFrames` [T_i, L, D] per clip, y list of note lists inside
        each clip, offsets list of frame-0 times (s), rows [n]) of the clip rows (from :meth:`plan`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise TaskError(f"no clip to read from {store.path}")
        column = store.labels(self.label)
        y, offsets = [], []
        for r in rows:
            t = store.frame_times(int(r), backbone)
            a, b = float(store.clips["start_s"][r]), float(store.clips["end_s"][r])
            y.append(notes_in_span(column[r], a, b))
            offsets.append(float(t[0]) if len(t) else a)
        return ClipFrames(store, backbone, rows), y, offsets, rows


#: Each named task's label column and the column its selection holdout is grouped by: an album belongs
#: to one singer (Artist20), a singer sings every technique (VocalSet), a song is one file (MIR-ST500).
NAMED_TASKS = {"singer": ("singer", "album"), "technique": ("technique", "singer")}


def make_task(name: str, pool: str | None = None):
    """``singer`` / ``technique`` / any ``label:<column>`` -> ClipLabelTask; ``transcription`` /
    ``notes:<column>`` -> NotesTask. ``pool`` (clip tasks only; None: ``mean``) is checked against
    :data:`POOLS`; a frame task given a pool is a ValueError (its heads read frames, not pooled rows)."""
    if name in ("transcription", "notes") or name.startswith("notes:"):
        if pool is not None:
            raise ValueError(f"pool {pool} pools clips for the clip heads; task {name!r} is frame-level "
                             "transcription, whose heads read every frame")
        return NotesTask() if ":" not in name else NotesTask(name.split(":", 1)[1])
    pool = check_pool(DEFAULT_POOL if pool is None else pool)
    if name.startswith("label:"):
        return ClipLabelTask(name.split(":", 1)[1], pool=pool)
    if name in NAMED_TASKS:
        return ClipLabelTask(*NAMED_TASKS[name], pool=pool)
    return ClipLabelTask(name, pool=pool)

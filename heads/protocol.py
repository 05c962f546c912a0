"""Which clips train a head, which choose it, and which score it: the evaluation protocol.

Every head is *selected* (learning rate from a grid, stopping epoch) on one set of clips and *scored*
on another. The rule this module enforces: **the scored split never chose the model.**

- ``score="auto"``: the ``test`` split when the store has test clips, else ``valid`` (Artist20's
  course split has only train and valid: its test set is an unlabelled folder).
- ``select="auto"``: the ``valid`` split when it is not the scored one; otherwise a *holdout* carved
  out of ``train`` (named ``train-holdout``), grouped the way the task groups clips (album for
  singer, singer for technique, song file for transcription), so no album/singer/song is on both
  sides of the cut.
- ``select="valid"`` while ``valid`` is also scored is refused (:class:`ProtocolError`) unless
  ``allow_same=True``: that number is optimistic, and the reports then say so.

Holdout carving: when every group lies inside one class (an album belongs to one singer), the
carve is stratified: ``round(fraction x groups of the class)``, at least one, from each class that
has two groups or more (classes with one group stay whole in train, and are reported). Otherwise
(a singer sings every technique; songs have no class) ``round(fraction x groups)`` groups, at least
one and never all, are drawn with the seed.

Clips that cannot take part are left out and counted, split by split: clips with no frame for the
backbone (shorter than its receptive field), and clips whose label is empty (unlabelled).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Name of the selection set carved out of train.
HOLDOUT = "train-holdout"
#: Group value meaning "the clip's audio file" (a song: segments of one file stay together).
FILE = "file"
SCORE_CHOICES = ("auto", "test", "valid")
SELECT_CHOICES = ("auto", "valid", "holdout")


class ProtocolError(ValueError):
    """A split plan that cannot be made, or one that would score the split that chose the model."""


@dataclass(frozen=True)
class SplitPlan:
    """Rows (indices into the store's clip table) of the three roles, and how they were chosen.

    train / select / score: int64 arrays of rows. select_split is ``valid``, ``test`` or
    :data:`HOLDOUT`; ``same_split`` is True only when the user allowed scoring the selection split.
    dropped: {split: {"no_frames": n, "unlabelled": n}} for clips left out.
    """

    train: np.ndarray
    select: np.ndarray
    score: np.ndarray
    score_split: str
    select_split: str
    group: str
    holdout_fraction: float
    seed: int
    same_split: bool = False
    dropped: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def describe(self) -> dict:
        """The plan as JSON-ready facts for metrics.json / evaluation.json."""
        return {"scored_split": self.score_split, "selection_split": self.select_split,
                "holdout_group": self.group if self.select_split == HOLDOUT else None,
                "holdout_fraction": self.holdout_fraction if self.select_split == HOLDOUT else None,
                "seed": self.seed, "scored_is_selection": self.same_split,
                "n_train": int(len(self.train)), "n_selection": int(len(self.select)),
                "n_scored": int(len(self.score)), "left_out": self.dropped, "notes": list(self.notes)}

    def label(self) -> str:
        """One line for titles and tables: ``scored on test, chosen on valid``."""
        return protocol_label(self.describe())


def chosen_label(desc: dict) -> str:
    """What chose the model, from a :meth:`SplitPlan.describe` dict: ``valid``, ``train-holdout (by
    album)``, with ``[OPTIMISTIC: same split]`` when it is also the scored split."""
    sel = desc["selection_split"]
    chosen = sel + (f" (by {desc.get('holdout_group')})" if sel == HOLDOUT else "")
    return chosen + (" [OPTIMISTIC: same split]" if desc.get("scored_is_selection") else "")


def selection_label(desc: dict, fit_report: dict | None = None) -> str:
    """What chose the model, told honestly: :func:`chosen_label`, unless the fit (its metrics.json report)
    searched no grid and has no epochs (logreg / lgbm with one value of each hyperparameter), where
    nothing was chosen: ``nothing (fixed C=1.0)``."""
    grid = (fit_report or {}).get("grid_scores")
    if grid is not None and len(grid) <= 1 and not (fit_report or {}).get("history"):
        params = ", ".join(f"{k}={v}" for k, v in (fit_report.get("best_params") or {}).items())
        return f"nothing (fixed {params})" if params else "nothing"
    return chosen_label(desc)


def protocol_label(desc: dict, fit_report: dict | None = None) -> str:
    """:meth:`SplitPlan.label` from a saved :meth:`SplitPlan.describe` dict (``fit_report``: see
    :func:`selection_label`)."""
    return f"scored on {desc['scored_split']}, chosen on {selection_label(desc, fit_report)}"


def group_values(store, group: str) -> np.ndarray:
    """The group of every clip [N] as strings: the audio file for :data:`FILE`, else a label column
    (an empty value falls back to the clip's file, so an unlabelled group never merges clips)."""
    files = np.asarray(store.clips["file_id"]).astype(str)
    if group == FILE:
        return files
    try:
        values = np.asarray(store.labels(group)).astype(str)
    except KeyError as e:
        raise ProtocolError(f"cannot group by {group!r}: {e.args[0]}") from None
    return np.where(values == "", files, values)


def _share(n_groups: int, fraction: float) -> int:
    """How many of ``n_groups`` groups to hold out: round(fraction x n), at least one, never all."""
    return min(n_groups - 1, max(1, int(np.floor(fraction * n_groups + 0.5))))


def _carve(rows: np.ndarray, groups: np.ndarray, classes: np.ndarray | None, fraction: float,
           seed: int, group: str, notes: list) -> np.ndarray:
    """Rows of train (``rows``) to hold out for selection (see the module docstring)."""
    g = groups[rows]
    uniq = np.unique(g)
    if len(uniq) < 2:
        raise ProtocolError(f"cannot carve a selection set out of train: it holds {len(uniq)} {group} "
                            f"group(s); give the store a valid split or choose another --group")
    rng = np.random.default_rng(seed)
    held: list[str] = []
    nested = classes is not None and all(len(np.unique(classes[rows][g == u])) == 1 for u in uniq)
    if nested:
        c = classes[rows]
        whole = []
        for cls in np.unique(c):
            mine = np.unique(g[c == cls])
            if len(mine) < 2:
                whole.append(str(cls))
                continue
            held += list(rng.permutation(mine)[:_share(len(mine), fraction)])
        if whole:
            notes.append(f"{len(whole)} class(es) with a single {group} in train kept whole in train "
                         f"(not in the selection set): {', '.join(whole[:10])}{'...' if len(whole) > 10 else ''}")
        if not held:
            raise ProtocolError(f"cannot carve a selection set out of train: no class has two {group} groups")
    else:
        held = list(rng.permutation(uniq)[:_share(len(uniq), fraction)])
    return rows[np.isin(g, held)]


def plan_splits(store, backbone: str | None = None, *, label: str | None = None, stratify: bool = True,
                group: str = FILE, score: str = "auto", select: str = "auto", holdout_fraction: float = 0.15,
                seed: int = 0, allow_same: bool = False) -> SplitPlan:
    """Train / selection / scored rows of ``store`` for one task.

    backbone: clips without frames for it are left out. label: the task's label column (clips with an
    empty label are unlabelled and left out; with ``stratify`` its classes stratify the holdout). group: column the
    holdout is grouped by (:data:`FILE` = the audio file). score: ``auto|test|valid``. select:
    ``auto|valid|holdout``. Raises :class:`ProtocolError` for an impossible or leaking plan.
    """
    if score not in SCORE_CHOICES:
        raise ProtocolError(f"score split {score!r}: choose one of {', '.join(SCORE_CHOICES)}")
    if select not in SELECT_CHOICES:
        raise ProtocolError(f"selection split {select!r}: choose one of {', '.join(SELECT_CHOICES)}")
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise ProtocolError(f"holdout fraction (--holdout-fraction) {holdout_fraction!r}: must be in (0, 1)")
    splits = np.asarray(store.clips["split"]).astype(str)
    ok = np.ones(len(splits), dtype=bool)
    dropped: dict = {}
    reasons = []
    if backbone is not None:
        store.group(backbone)  # a clear error if the backbone is not in the store
        reasons.append(("no_frames", np.asarray(store.n_frames(backbone)) == 0))
    classes = None
    if label is not None:
        try:
            values = np.asarray(store.labels(label)).astype(str)
        except KeyError as e:
            raise ProtocolError(e.args[0]) from None
        reasons.append(("unlabelled", np.char.strip(values) == ""))
        classes = values if stratify else None
    for reason, bad in reasons:
        for s in np.unique(splits[bad & ok]):
            dropped.setdefault(str(s), {})[reason] = int(np.sum(bad & ok & (splits == s)))
        ok &= ~bad

    def rows_of(name):
        return np.flatnonzero(ok & (splits == name)).astype(np.int64)

    score_split = ("test" if len(rows_of("test")) else "valid") if score == "auto" else score
    score_rows = rows_of(score_split)
    if len(score_rows) == 0:
        raise ProtocolError(f"no {score_split} clip to score in {store.path}" + _left_out(dropped, score_split))
    train = rows_of("train")
    if len(train) == 0:
        raise ProtocolError(f"no train clip in {store.path}" + _left_out(dropped, "train"))
    notes: list[str] = [f"{split}: {_left_out(dropped, split).strip()[1:-1]}" for split in sorted(dropped)]
    if select == "auto":
        select = "valid" if score_split != "valid" and len(rows_of("valid")) else "holdout"
    same = False
    if select == "valid":
        if score_split == "valid":
            if not allow_same:
                raise ProtocolError("the scored split (valid) would also choose the model (learning rate, "
                                    "stopping epoch): that score is optimistic. Select on a holdout carved "
                                    "out of train (the default), score test, or allow it explicitly "
                                    "(--allow-scoring-selection-split; allow_same=True)")
            same = True
            notes.append("the scored split also chose the model: this score is optimistic")
        select_rows, select_split = rows_of("valid"), "valid"
        if len(select_rows) == 0:
            raise ProtocolError(f"no valid clip to select on in {store.path}" + _left_out(dropped, "valid"))
    else:
        groups = group_values(store, group)
        select_rows = _carve(train, groups, classes, float(holdout_fraction), seed, group, notes)
        train = np.setdiff1d(train, select_rows)
        select_split = HOLDOUT
    return SplitPlan(train, select_rows, score_rows, score_split, select_split, group, float(holdout_fraction),
                     int(seed), same, dropped, notes)


def _left_out(dropped: dict, split: str) -> str:
    d = dropped.get(split)
    return "" if not d else " (left out: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in d.items()) + ")"


def replan(store, desc: dict, backbone: str | None = None, *, label: str | None = None, stratify: bool = True,
           score: str | None = None) -> SplitPlan:
    """The plan a fitted run used (its saved :meth:`SplitPlan.describe`), optionally scoring another
    split. Scoring the run's own selection split is refused unless the run allowed it."""
    sel = desc["selection_split"]
    score = score or desc["scored_split"]
    if score == sel and not desc.get("scored_is_selection"):
        raise ProtocolError(f"split {score!r} chose this run's model (learning rate, stopping epoch): score "
                            f"another split (the run was scored on {desc['scored_split']!r})")
    return plan_splits(store, backbone, label=label, stratify=stratify, group=desc.get("holdout_group") or FILE,
                       score=score, select="holdout" if sel == HOLDOUT else sel,
                       holdout_fraction=desc.get("holdout_fraction") or 0.15, seed=int(desc.get("seed", 0)),
                       allow_same=bool(desc.get("scored_is_selection")))

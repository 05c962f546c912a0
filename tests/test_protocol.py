"""The evaluation protocol: the scored split never chose the model; unlabelled clips are left out.

A small Artist20-like tree with the course split (train and valid only) goes through
``pipelines.singer`` prepare -> build (log-mel, no separation) -> fit -> evaluate, and the split
plan is checked against the clip table read back from the store.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from featurestore import open_store
from heads.protocol import HOLDOUT, plan_splits, protocol_label
from heads.tasks import ClipLabelTask, TaskError, make_task
from pipelines.command import main
from pipelines.singer import SPEC

SR = 16000
ARTISTS = {"alpha": 220.0, "bravo": 330.0, "charlie": 440.0}
ALBUMS = ["A1", "A2", "A3", "A4", "A5"]


def _tone(path: Path, f: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(SR)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), SR)


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    """A course-split work folder: 3 artists x 5 albums x 2 songs of 1 s (the last album is valid),
    stored as 0.5 s log-mel segments, a linear head fitted and evaluated."""
    raw = tmp_path_factory.mktemp("a20") / "mp3s-32k"
    for i, (artist, f) in enumerate(ARTISTS.items()):
        for k, album in enumerate(ALBUMS):
            for s in range(2):
                _tone(raw / artist / album / f"0{s}-Song.wav", f * (1 + 0.01 * k), 100 * i + 10 * k + s)
    w = tmp_path_factory.mktemp("work")
    assert main(SPEC, ["prepare", "--raw", str(raw), "--workdir", str(w)]) == 0
    assert main(SPEC, ["build", "--workdir", str(w), "--backbone", "logmel", "--no-separate", "--segment-seconds",
                       "0.5", "--no-progress", "--num-workers", "0"]) == 0
    assert main(SPEC, ["fit", "--workdir", str(w), "--backbone", "logmel", "--epochs", "4", "--lr", "1e-2",
                       "--no-progress"]) == 0
    assert main(SPEC, ["evaluate", "--workdir", str(w), "--backbone", "logmel"]) == 0
    return w


def _albums(store, rows):
    return set(store.labels("album")[rows].astype(str).tolist()) if len(rows) else set()


def test_course_split_scores_valid_and_selects_on_a_train_holdout(course_run):
    w = course_run
    store = open_store(w / "store.zarr")
    rd = w / "runs" / "logmel-linear"
    m = json.loads((rd / "metrics.json").read_text())
    p = m["protocol"]
    assert (p["scored_split"], p["selection_split"], p["holdout_group"]) == ("valid", HOLDOUT, "album")
    assert m["scored_split"] != m["selection_split"]
    # the plan is deterministic: rebuild it and check it against the clip table read back from the store
    plan = make_task("singer").replan(store, "logmel", p)
    splits = store.clips["split"]
    assert set(splits[plan.score]) == {"valid"} and len(plan.score) == int(np.sum(splits == "valid"))
    assert set(splits[plan.select]) == {"train"} and set(splits[plan.train]) == {"train"}
    assert not set(plan.select) & set(plan.train) and not set(plan.select) & set(plan.score)
    sel_albums = {(a, s) for a, s in zip(store.labels("album")[plan.select], store.labels("singer")[plan.select])}
    train_albums = {(a, s) for a, s in zip(store.labels("album")[plan.train], store.labels("singer")[plan.train])}
    assert not sel_albums & train_albums                                # no album on both sides
    # stratified by singer: one of each artist's 4 train albums (round(0.15 x 4) = 1) chooses the model
    assert sorted(s for _, s in sel_albums) == sorted(ARTISTS)
    assert p["n_scored"] == len(plan.score) and p["n_selection"] == len(plan.select)
    assert m["n_selection"] == len(plan.select) and m["n_train"] == len(plan.train)
    # what the user reads names both splits
    ev = json.loads((rd / "evaluation.json").read_text())
    assert ev["protocol"]["scored_split"] == "valid" and ev["protocol"]["selection_split"] == HOLDOUT
    assert ev["segment"]["n"] == len(plan.score)
    table = (w / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| logmel-linear |"))
    assert "| valid | train-holdout (by album) |" in row
    assert "scored on" in table and "chosen on" in table


def test_scoring_the_selection_split_is_refused_unless_asked(course_run, capsys):
    w = course_run
    out = w / "runs" / "same"
    args = ["--store", str(w / "store.zarr"), "--backbone", "logmel", "--task", "singer", "--epochs", "2",
            "--lr", "1e-2", "--no-progress", "--out", str(out), "--select-split", "valid"]
    from heads.fit import main as fit_main

    assert fit_main(args) == 2
    err = capsys.readouterr().err
    assert "optimistic" in err and "valid" in err
    assert not (out / "metrics.json").exists()
    assert fit_main(args + ["--allow-scoring-selection-split"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["scored_is_selection"] is True
    assert "OPTIMISTIC" in protocol_label(m["protocol"]) and "OPTIMISTIC" in capsys.readouterr().out


def test_evaluate_refuses_the_runs_selection_split(tmp_path):
    """A run chosen on valid (paper-like store with a test split) cannot be scored on valid."""
    from tests.conftest import noise_clips
    from featurestore.build import build
    from featurestore.clips import ClipSettings

    paths = noise_clips(tmp_path / "a", SR, [0.5] * 6)
    rows = [("train", "x"), ("train", "y"), ("valid", "x"), ("valid", "y"), ("test", "x"), ("test", "y")]
    m = tmp_path / "m.csv"
    m.write_text("path,split,singer\n" + "".join(f"{p},{s},{c}\n" for p, (s, c) in zip(paths, rows)))
    build(m, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    store = open_store(tmp_path / "s.zarr")
    task = ClipLabelTask("singer")
    plan = task.plan(store, "logmel")
    assert (plan.score_split, plan.select_split) == ("test", "valid")
    with pytest.raises(TaskError, match="chose this run"):
        task.replan(store, "logmel", plan.describe(), score="valid")
    assert list(task.replan(store, "logmel", plan.describe()).score) == list(plan.score)


def test_unlabelled_clips_are_left_out_and_counted(tmp_path):
    from tests.conftest import noise_clips
    from featurestore.build import build
    from featurestore.clips import ClipSettings
    from heads.fit import main as fit_main

    paths = noise_clips(tmp_path / "a", SR, [0.5] * 9)
    rows = [("train", "x"), ("train", "y"), ("train", ""), ("train", "x"), ("train", "y"),
            ("valid", "x"), ("valid", "y"), ("test", "x"), ("test", "")]
    m = tmp_path / "m.csv"
    m.write_text("path,split,singer\n" + "".join(f"{p},{s},{c}\n" for p, (s, c) in zip(paths, rows)))
    build(m, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    store = open_store(tmp_path / "s.zarr")
    plan = ClipLabelTask("singer").plan(store, "logmel")
    labels = store.labels("singer")
    used = np.concatenate([plan.train, plan.select, plan.score])
    assert "" not in set(labels[used].tolist())
    assert len(used) == 7
    assert plan.dropped == {"train": {"unlabelled": 1}, "test": {"unlabelled": 1}}
    out = tmp_path / "run"
    assert fit_main(["--store", str(tmp_path / "s.zarr"), "--backbone", "logmel", "--epochs", "2", "--lr", "1e-2",
                     "--no-progress", "--out", str(out)]) == 0
    met = json.loads((out / "metrics.json").read_text())
    assert "" not in met["class_names"] and met["n"] == 1 and met["n_train"] == 4
    assert met["protocol"]["left_out"] == {"train": {"unlabelled": 1}, "test": {"unlabelled": 1}}


def test_holdout_is_grouped_and_never_takes_every_group():
    """plan_splits on a fake store: groups not nested in classes (a singer sings every technique)."""

    class Fake:
        path = "fake"

        def __init__(self):
            n = 24
            self.clips = {"split": np.array(["train"] * 20 + ["test"] * 4),
                          "file_id": np.array([f"f{i}" for i in range(n)]),
                          "labels": {}}
            singers = [f"s{i % 5}" for i in range(20)] + ["t0"] * 4
            self.clips["labels"] = {"technique": np.array([["belt", "breathy"][i % 2] for i in range(n)]),
                                    "singer": np.array(singers)}

        def labels(self, name):
            return self.clips["labels"][name]

    store = Fake()
    plan = plan_splits(store, label="technique", group="singer", select="holdout", seed=3)
    singers = store.labels("singer")
    assert len(set(singers[plan.select])) == 1                       # round(0.15 x 5) = 1 singer
    assert not set(singers[plan.select]) & set(singers[plan.train])
    assert len(plan.train) + len(plan.select) == 20
    with pytest.raises(ValueError, match="holdout fraction"):
        plan_splits(store, label="technique", group="singer", holdout_fraction=1.5)
    with pytest.raises(ValueError, match="cannot group by"):
        plan_splits(store, label="technique", group="album", select="holdout")

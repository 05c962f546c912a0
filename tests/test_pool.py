"""Clip pooling ``--pool mean|std|mean+std``: what the clip heads read, what the run records, and that
the task pipelines evaluate and predict from the same features the run was fitted on."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

import featurestore.build as fbuild
from featurestore import open_store
from featurestore.demo import make_demo_corpus
from heads import clip_heads
from heads import fit
from heads.persist import load_head
from heads.tasks import POOLS, make_task, pool_suffix, pooled_features
from pipelines import singer, technique
from pipelines.command import main as pipeline_main

#: 4 singers x 5 clips x 3 s (3 train / 1 valid / 1 test per singer); log-mel, the cheapest frontend.
SMALL_DEMO = dict(n_singers=4, clips_per_singer=5, duration_s=3.0)
BACKBONE = "logmel"


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory):
    home = tmp_path_factory.mktemp("pool_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SINGFRONT_HOME", str(home))
    mp.setattr(fbuild, "ensure_demo_corpus",
               lambda: make_demo_corpus(fbuild.default_demo_dir() / "corpus", **SMALL_DEMO))
    try:
        yield home / "demo" / "corpus"
    finally:
        mp.undo()


def _workdir(spec, demo_corpus, tmp_path_factory, name):
    w = tmp_path_factory.mktemp(name) / "work"
    assert pipeline_main(spec, ["prepare", "--demo", "--workdir", str(w)]) == 0
    assert pipeline_main(spec, ["build", "--workdir", str(w), "--backbone", BACKBONE, "--no-progress",
                                "--num-workers", "0"]) == 0
    return w


@pytest.fixture(scope="module")
def singer_work(demo_corpus, tmp_path_factory):
    return _workdir(singer.SPEC, demo_corpus, tmp_path_factory, "singer_pool")


def _stats_from_frames(store, backbone, rows):
    """Mean and population std over each clip's frames, computed here from the frames themselves."""
    mean, std = [], []
    for r in rows:
        x = store.frames(int(r), backbone).astype(np.float64)
        mean.append(x.mean(0))
        std.append(x.std(0))
    return np.array(mean), np.array(std)


def test_pooled_features_are_mean_std_side_by_side(singer_work):
    store = open_store(singer_work / "store.zarr")
    rows = np.arange(0, len(store), 3)
    mean = store.pooled(BACKBONE, rows=rows, stat="mean")
    std = store.pooled(BACKBONE, rows=rows, stat="std")
    L, D = store.shape(BACKBONE)
    both = pooled_features(store, BACKBONE, rows, "mean+std")
    assert both.shape == (len(rows), L, 2 * D) and both.dtype == np.float32
    np.testing.assert_array_equal(both, np.concatenate([mean, std], axis=-1).astype(np.float32))
    np.testing.assert_array_equal(pooled_features(store, BACKBONE, rows, "std"), std.astype(np.float32))
    np.testing.assert_array_equal(pooled_features(store, BACKBONE, rows), mean.astype(np.float32))
    # and the store's two statistics are what they say (float16 store: compared at its precision)
    m, s = _stats_from_frames(store, BACKBONE, rows)
    np.testing.assert_allclose(both[..., :D], m, rtol=2e-3, atol=2e-3 * np.abs(m).max())
    np.testing.assert_allclose(both[..., D:], s, rtol=2e-3, atol=2e-3 * np.abs(s).max())
    X, _, got_rows = make_task("singer", pool="mean+std").data(store, BACKBONE, rows)
    np.testing.assert_array_equal(X, both)
    np.testing.assert_array_equal(got_rows, rows)
    with pytest.raises(ValueError, match="^pool .max.: expected one of"):
        pooled_features(store, BACKBONE, rows, "max")
    with pytest.raises(ValueError, match="^pool std pools clips"):
        make_task("transcription", pool="std")
    assert [pool_suffix(p) for p in POOLS] == ["", "-stdpool", "-meanstdpool"]


@pytest.mark.parametrize("pool", ["mean+std", "std"])
def test_fit_reads_the_pooled_statistics_and_records_them(singer_work, tmp_path, monkeypatch, pool):
    """The head is fitted on exactly the store's pooled arrays of the plan's rows (mean+std: concatenated),
    and metrics.json says which pooling it was."""
    seen = []
    real_fit = clip_heads.LinearHead.fit

    def spy(self, X, y, eval_set=None):
        seen.append((np.array(X), np.array(eval_set[0])))
        return real_fit(self, X, y, eval_set=eval_set)

    monkeypatch.setattr(clip_heads.LinearHead, "fit", spy)
    monkeypatch.chdir(tmp_path)
    store_path = singer_work / "store.zarr"
    code = fit.main(["--store", str(store_path), "--backbone", BACKBONE, "--head", "linear", "--task", "singer",
                     "--pool", pool, "--epochs", "3", "--lr", "1e-2", "--no-progress"])
    assert code == 0
    out = tmp_path / "runs" / f"{BACKBONE}-linear-singer{pool_suffix(pool)}"  # its own default run folder
    m = json.loads((out / "metrics.json").read_text())
    assert m["pool"] == pool
    store = open_store(store_path)
    plan = make_task("singer").replan(store, BACKBONE, m["protocol"])
    stats = ("mean", "std") if pool == "mean+std" else (pool,)

    def expected(rows):
        return np.concatenate([store.pooled(BACKBONE, rows=rows, stat=s) for s in stats], -1).astype(np.float32)

    (X, Xv), = seen
    np.testing.assert_array_equal(X, expected(plan.train))
    np.testing.assert_array_equal(Xv, expected(plan.select))
    head = load_head(out / "head.json")
    assert head.n_features_in_ == len(stats) * store.shape(BACKBONE)[1]
    # the scored predictions come from the same features
    proba = head.predict_proba(expected(plan.score))
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == [str(c) for c in head.classes_[proba.argmax(1)]]


def test_default_pool_is_mean_and_frame_heads_refuse_pool(singer_work, tmp_path, capsys):
    out = tmp_path / "mean"
    assert fit.main(["--store", str(singer_work / "store.zarr"), "--backbone", BACKBONE, "--head", "logreg",
                     "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["pool"] == "mean"
    capsys.readouterr()
    for head in ("crf", "frames"):
        assert fit.main(["--store", str(singer_work / "store.zarr"), "--backbone", BACKBONE, "--head", head,
                         "--pool", "mean+std", "--out", str(tmp_path / head), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "--pool" in err and f"head {head!r}" in err
        assert not (tmp_path / head).exists()
    with pytest.raises(SystemExit):
        fit.parse_args(["--pool", "max"])


def test_singer_pipeline_fit_evaluate_predict_with_mean_std(singer_work, demo_corpus, tmp_path, capsys):
    w = singer_work
    fit_args = ["fit", "--workdir", str(w), "--backbone", BACKBONE, "--epochs", "5", "--lr", "1e-2", "--no-progress"]
    assert pipeline_main(singer.SPEC, fit_args + ["--pool", "mean+std"]) == 0
    rd = w / "runs" / f"{BACKBONE}-linear-meanstdpool"
    assert json.loads((rd / "metrics.json").read_text())["pool"] == "mean+std"
    assert yaml.safe_load((rd / "config.yaml").read_text())["pool"] == "mean+std"  # the run's recorded spec
    capsys.readouterr()
    assert pipeline_main(singer.SPEC, fit_args + ["--pool", "mean+std"]) == 0  # the same spec: not fitted again
    assert "already fitted" in capsys.readouterr().out
    # the default pool leaves the plain run folder, whose recorded spec has no pool
    assert pipeline_main(singer.SPEC, fit_args) == 0
    assert yaml.safe_load((w / "runs" / f"{BACKBONE}-linear" / "config.yaml").read_text())["pool"] is None
    assert pipeline_main(singer.SPEC, fit_args + ["--pool", "mean"]) == 0
    assert "already fitted" in capsys.readouterr().out

    assert pipeline_main(singer.SPEC, ["evaluate", "--workdir", str(w), "--backbone", BACKBONE,
                                       "--pool", "mean+std"]) == 0
    ev = json.loads((rd / "evaluation.json").read_text())
    assert ev["pool"] == "mean+std"
    # evaluate's segment scores are the head's on concat(mean, std) of the scored rows, computed here
    store = open_store(w / "store.zarr")
    head = load_head(rd / "head.json")
    plan = make_task("singer").replan(store, BACKBONE, json.loads((rd / "metrics.json").read_text())["protocol"])
    X = np.concatenate([store.pooled(BACKBONE, rows=plan.score, stat=s) for s in ("mean", "std")], -1)
    pred = head.classes_[head.predict_proba(X.astype(np.float32)).argmax(1)]
    truth = store.labels("singer")[plan.score].astype(str)
    assert ev["segment"]["n"] == len(truth)
    assert np.isclose(ev["segment"]["accuracy"], np.mean(pred.astype(str) == truth))
    assert f"| {BACKBONE}-linear-meanstdpool |" in (w / "results.md").read_text()

    # predict reads the run's pooling too (a mean head would refuse 2D features, and vice versa)
    recs = [r for r in json.loads((demo_corpus / "manifest.json").read_text()) if r["split"] == "test"][:2]
    inp = tmp_path / "inputs"
    inp.mkdir()
    for i, rec in enumerate(recs, 1):
        shutil.copy(demo_corpus / rec["path"], inp / f"{i}.wav")
    out = tmp_path / "pred.csv"
    assert pipeline_main(singer.SPEC, ["predict", "--workdir", str(w), "--backbone", BACKBONE, "--pool", "mean+std",
                                       "--input", str(inp), "--out", str(out), "--no-progress",
                                       "--num-workers", "0"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,No.1,No.2,No.3" and [r.split(",")[0] for r in lines[1:]] == ["1", "2"]


def test_technique_evaluate_reads_the_runs_pool(demo_corpus, tmp_path_factory):
    w = _workdir(technique.SPEC, demo_corpus, tmp_path_factory, "technique_pool")
    assert pipeline_main(technique.SPEC, ["fit", "--workdir", str(w), "--backbone", BACKBONE, "--head", "logreg",
                                          "--pool", "std", "--no-progress"]) == 0
    rd = w / "runs" / f"{BACKBONE}-logreg-stdpool"
    assert pipeline_main(technique.SPEC, ["evaluate", "--workdir", str(w), "--backbone", BACKBONE,
                                          "--head", "logreg", "--pool", "std"]) == 0
    ev = json.loads((rd / "evaluation.json").read_text())
    store = open_store(w / "store.zarr")
    head = load_head(rd / "head.json")
    plan = make_task("technique").replan(store, BACKBONE, json.loads((rd / "metrics.json").read_text())["protocol"])
    pred = head.predict(store.pooled(BACKBONE, rows=plan.score, stat="std").astype(np.float32))
    assert ev["pool"] == "std" and ev["n_clips"] == len(plan.score)
    assert np.isclose(ev["accuracy"], np.mean(pred.astype(str) == store.labels("technique")[plan.score].astype(str)))

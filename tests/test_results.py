"""Results a researcher can publish, at the heads.fit level: bootstrap intervals equal to an independent
computation, --seeds with mean ± sd, the per-layer table of --layers each equal to single-layer fits,
the logreg C grid chosen on the selection split, inapplicable options refused, and the results table
that every run appends to."""
from __future__ import annotations

import json

import numpy as np
import pytest

from heads import intervals, results_log
from test_heads import demo_home  # noqa: F401  (the small demo store heads.fit reads, built once per module)

FAST = ["--epochs", "4", "--lr", "1e-2", "--no-progress"]


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ---- intervals ---------------------------------------------------------------------------------

def test_bootstrap_interval_equals_scipy_with_the_same_seed():
    """The percentile interval of a mean, and of accuracy, equal scipy.stats.bootstrap's (an independent
    implementation) drawing from the same generator."""
    from scipy.stats import bootstrap

    x = np.random.default_rng(5).random(23)
    mine = intervals.bootstrap_interval(lambda i: float(x[i].mean()), len(x), seed=3)
    ref = bootstrap((x,), np.mean, n_resamples=intervals.N_BOOT, method="percentile",
                    rng=np.random.default_rng(3), vectorized=True).confidence_interval
    assert mine == pytest.approx([ref.low, ref.high], rel=1e-12)
    # classification: accuracy of 30 clips (the same resamples as scipy's, over the hit indicators)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 30)
    scores = rng.random((30, 3)) + 0.8 * np.eye(3)[y]
    hits = (scores.argmax(1) == y).astype(float)
    ci = intervals.classification_intervals(y, scores, seed=7)
    ref = bootstrap((hits,), np.mean, n_resamples=intervals.N_BOOT, method="percentile",
                    rng=np.random.default_rng(7), vectorized=True).confidence_interval
    assert ci["accuracy"] == pytest.approx([ref.low, ref.high], rel=1e-12)
    assert ci["accuracy"][0] <= hits.mean() <= ci["accuracy"][1]


def test_grouped_bootstrap_resamples_whole_groups():
    """With groups, each resample holds whole groups: a statistic counting distinct groups per item equals 1."""
    groups = np.repeat(["a", "b", "c", "d"], [1, 2, 3, 4])
    sizes = {g: (groups == g).sum() for g in set(groups)}
    seen = []

    def stat(i):
        picked = groups[i]
        for g in set(picked):  # every drawn group comes with all its items (a multiple of its size)
            assert (picked == g).sum() % sizes[g] == 0
        seen.append(len(i))
        return float(len(i))

    intervals.bootstrap_interval(stat, len(groups), groups=groups, n_boot=50)
    assert len(seen) == 50 and len(set(seen)) > 1


def test_mean_sd_is_the_sample_sd():
    assert intervals.mean_sd([0.5, 0.7, 0.9]) == pytest.approx((0.7, np.std([0.5, 0.7, 0.9], ddof=1)))
    assert np.isnan(intervals.mean_sd([0.5])[1])


# ---- heads.fit ---------------------------------------------------------------------------------

def test_seeds_give_one_run_each_and_their_mean_and_sd(demo_home, tmp_path, capsys):
    from heads.fit import main

    out = tmp_path / "runs" / "lin"
    assert main(["--backbone", "crepe", "--head", "linear", "--seeds", "0,1", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    runs = [out, tmp_path / "runs" / "lin-seed1"]
    ms = [_metrics(r) for r in runs]
    assert [m["seed"] for m in ms] == [0, 1]
    acc = [m["accuracy"] for m in ms]
    # the results table: one row per run, gathered into one configuration with the seeds' mean ± sd
    rows = results_log.read_results(tmp_path / "runs")
    assert [r["run"] for r in rows] == ["lin", "lin-seed1"]
    (group,) = results_log.seed_groups(rows)
    s = results_log.summarize(group, "accuracy")
    assert s["mean"] == pytest.approx(np.mean(acc)) and s["sd"] == pytest.approx(np.std(acc, ddof=1))
    assert "2 seeds (0,1)" in printed
    # each run carries its bootstrap interval, around its score
    for m in ms:
        lo, hi = m["ci95"]["accuracy"]
        assert lo <= m["accuracy"] <= hi
    md = results_log.to_markdown(rows, [("accuracy", "accuracy")], "t")
    assert f"{100 * np.mean(acc):.1f} ± {100 * np.std(acc, ddof=1):.1f}" in md


def test_layers_each_table_equals_separate_single_layer_fits(demo_home, tmp_path, capsys):
    """--layers each: row k of the scored-split table is the run of --layers k; the kept layer is the
    best on the selection split, and the run's own scores are that layer's."""
    from heads.fit import main

    each = tmp_path / "each"
    assert main(["--backbone", "crepe", "--head", "linear", "--layers", "each", "--out", str(each), *FAST]) == 0
    m = _metrics(each)
    printed = capsys.readouterr().out  # the console names every layer and marks the kept one
    assert f"| {m['layer_table']['chosen_layer']} | " in printed and "**chosen on valid**" in printed
    table = m["layer_table"]
    assert table["scored_split"] == "test" and table["selection_split"] == "valid"
    assert table["layers"] == list(range(6))
    singles = []
    for k in (0, 3, 5):
        run = tmp_path / f"layer{k}"
        assert main(["--backbone", "crepe", "--head", "linear", "--layers", str(k), "--out", str(run), *FAST]) == 0
        single = _metrics(run)
        singles.append(single)
        assert table["scored"]["accuracy"][k] == pytest.approx(single["accuracy"])
        assert table["scored"]["macro_f1"][k] == pytest.approx(single["macro_f1"])
        assert table["ci95"]["accuracy"][k] == pytest.approx(single["ci95"]["accuracy"])
        assert table["selection_accuracy"][k] == pytest.approx(single["lr_scores"][str(single["lr"])])
    chosen = table["chosen_layer"]
    assert chosen == int(np.argmax(table["selection_accuracy"]))
    assert m["accuracy"] == pytest.approx(table["scored"]["accuracy"][chosen]) and m["stored_layers"] == [chosen]
    assert table["chance"] == pytest.approx(1 / 4)
    assert (each / "layer_table.png").stat().st_size > 1000 and (each / "layer_table.svg").stat().st_size > 1000
    assert not (each / "layer_weights.png").exists()


def test_logreg_c_grid_is_chosen_on_the_selection_split(demo_home, tmp_path):
    """A C grid keeps the value whose separate fit scores best on the selection split, and scores as it does."""
    from heads.fit import main

    grid = [0.0001, 0.01, 1.0]
    assert main(["--backbone", "crepe", "--head", "logreg", "--C", ",".join(map(str, grid)),
                 "--out", str(tmp_path / "grid"), "--no-progress"]) == 0
    m = _metrics(tmp_path / "grid")
    separate = []
    for c in grid:
        assert main(["--backbone", "crepe", "--head", "logreg", "--C", str(c), "--out", str(tmp_path / f"c{c}"),
                     "--no-progress"]) == 0
        separate.append(_metrics(tmp_path / f"c{c}"))
    sel = [s["grid_scores"][0]["score"] for s in separate]
    best = int(np.argmax(sel))
    assert m["best_params"] == {"C": grid[best]}
    assert [g["score"] for g in m["grid_scores"]] == pytest.approx(sel)
    assert m["accuracy"] == pytest.approx(separate[best]["accuracy"])
    assert m["options"]["C"] == ",".join(map(str, grid))


def test_lgbm_grid_searches_every_combination():
    from heads.clip_heads import LGBMHead

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    X = rng.standard_normal((90, 2, 4)).astype(np.float32)
    X[:, 1, :3] += 2 * np.eye(3)[y]
    head = LGBMHead(n_estimators="10,30", num_leaves=[3, 7]).fit(X[:60], y[:60], eval_set=(X[60:], y[60:]))
    assert [g["params"]["n_estimators"] for g in head.grid_scores_] == [10, 10, 30, 30]
    best = max(head.grid_scores_, key=lambda g: g["score"])
    assert head.best_params_ == best["params"]
    one = LGBMHead(**best["params"]).fit(X[:60], y[:60])
    np.testing.assert_allclose(head.predict_proba(X[60:]), one.predict_proba(X[60:]))
    with pytest.raises(ValueError, match="eval_set"):
        LGBMHead(n_estimators=[10, 30]).fit(X[:60], y[:60])


@pytest.mark.parametrize("argv,message", [
    (["--head", "logreg", "--lr", "1e-2"], "--lr: does not apply to head 'logreg'"),
    (["--head", "lgbm", "--epochs", "5"], "--epochs: does not apply to head 'lgbm'"),
    (["--head", "linear", "--C", "1"], "--C: is a hyperparameter of head 'logreg'"),
    (["--head", "logreg", "--num-leaves", "7"], "--num-leaves: is a hyperparameter of head 'lgbm'"),
    (["--head", "linear", "--seed", "1", "--seeds", "0,1"], "--seeds: give seed or seeds, not both"),
    (["--head", "linear", "--seeds", "0,0"], "distinct"),
    (["--head", "logreg", "--C", "0.1,x"], "--C: '0.1,x': expected a number"),
])
def test_options_that_do_not_apply_are_refused(demo_home, tmp_path, capsys, argv, message):
    from heads.fit import main

    assert main(["--backbone", "crepe", *argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_results_table_only_grows(tmp_path):
    """Rows are appended, a run done again shows its last row, and a cut last line is skipped."""
    row = {"command": "evaluate", "task": "singer", "backbone": "b", "head": "linear", "options": {}, "seed": 0,
           "scored_split": "test", "chosen_on": "valid", "metrics": {"accuracy": 0.5}, "run": "r1"}
    results_log.append_result(tmp_path, row)
    results_log.append_result(tmp_path, {**row, "run": "r2", "backbone": "c"})
    results_log.append_result(tmp_path, {**row, "metrics": {"accuracy": 0.75}})
    with open(tmp_path / results_log.FILE, "a") as f:
        f.write('{"command": "evaluate", "ru')  # a writer killed mid-row
    rows = results_log.read_results(tmp_path)
    assert len(rows) == 3
    last = results_log.latest(rows)
    assert [(r["run"], r["metrics"]["accuracy"]) for r in last] == [("r1", 0.75), ("r2", 0.5)]
    (tmp_path / results_log.FILE).write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        results_log.read_results(tmp_path)


def test_log_dir_writes_the_training_curve_of_every_rate(demo_home, tmp_path):
    """heads.fit --log-dir: TensorBoard scalars equal the run's history (the kept rate's), per rate of the grid;
    the learning-curve figure is written; --log-dir is refused for logreg (no epochs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from heads.fit import main

    out, logs = tmp_path / "runs" / "lin", tmp_path / "tb"
    assert main(["--backbone", "crepe", "--head", "linear", "--epochs", "3", "--lr", "1e-3,1e-2", "--out", str(out),
                 "--log-dir", str(logs), "--no-progress"]) == 0
    m = _metrics(out)
    acc = EventAccumulator(str(logs / "lin"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"lr=0.001/loss", "lr=0.01/loss", "lr=0.01/selection_score", "lr=0.01/lr/0"} <= set(tags)
    kept = f"lr={m['lr']:g}"
    assert [e.value for e in acc.Scalars(f"{kept}/loss")] == pytest.approx([h["loss"] for h in m["history"]])
    assert [e.value for e in acc.Scalars(f"{kept}/selection_score")] == pytest.approx([h["val"] for h in m["history"]])
    assert len([t for t in tags if t.startswith(f"{kept}/layer_weight/")]) == 6
    assert (out / "learning_curve.png").stat().st_size > 1000 and (out / "learning_curve.svg").is_file()
    assert main(["--backbone", "crepe", "--head", "logreg", "--log-dir", str(logs), "--out", str(tmp_path / "lr"),
                 "--no-progress"]) == 2


def test_every_run_option_has_its_own_run_folder():
    """Pipelines: layers, seed and the logreg / lgbm grids each name their own run folder (fit and evaluate agree)."""
    from pipelines.command import RUN_NAMING, fit_specs_from_args, parse_args
    from pipelines.task_pipeline import TaskPipeline
    from pipelines.technique import SPEC

    pipe = TaskPipeline(SPEC, "w")
    names = set()
    for extra in ([], ["--layers", "each"], ["--seed", "2"], ["--head", "logreg", "--C", "0.1,1"],
                  ["--head", "lgbm", "--n-estimators", "100,400", "--num-leaves", "7"], ["--head", "logreg"]):
        fit = pipe.run_folder(fit_specs_from_args(SPEC, parse_args(SPEC, ["fit", "--workdir", "w", "--backbone",
                                                                        "crepe", *extra]))[0]).path
        ev = fit_specs_from_args(SPEC, parse_args(SPEC, ["evaluate", "--workdir", "w", "--backbone", "crepe", *extra]),
                                 keep=RUN_NAMING)[0]
        assert pipe.run_folder(ev).path == fit
        names.add(fit.name)
    assert names == {f"crepe-tiny-{n}" for n in ("linear", "linear-layers-each", "linear-seed2", "logreg-C0.1_1",
                                                  "lgbm-trees100_400-leaves7", "logreg")}


def test_heads_fit_default_run_folders_differ_per_option():
    """heads.fit's default --out: --layers each, --context, --pool and a C grid each get their own folder."""
    from heads.fit import default_out, parse_args, spec_from_args

    def out(*argv):
        spec, _ = spec_from_args(parse_args(list(argv)))  # task: singer for clip heads, transcription for crf
        return default_out(spec, "crepe-tiny").name

    names = [out(), out("--layers", "each"), out("--layers", "2,4"), out("--pool", "std"),
             out("--head", "logreg", "--C", "0.1,1"), out("--head", "crf", "--context", "0.15")]
    assert names == ["crepe-tiny-linear-singer", "crepe-tiny-linear-singer-layers-each",
                     "crepe-tiny-linear-singer-layers-2_4", "crepe-tiny-linear-singer-stdpool",
                     "crepe-tiny-logreg-singer-C0.1_1", "crepe-tiny-crf-transcription-ctx150ms"]
    assert out("--seed", "3") == "crepe-tiny-linear-singer-seed3"  # a seed names its own folder


def test_a_fit_that_chose_nothing_does_not_say_chosen_on_valid(demo_home, tmp_path, capsys):
    """logreg with one C: nothing was chosen on the selection split, and the console and results table say so."""
    from heads.fit import main

    out = tmp_path / "runs" / "fixed"
    assert main(["--backbone", "crepe", "--head", "logreg", "--out", str(out), "--no-progress"]) == 0
    assert "chosen on nothing (fixed C=1.0)" in capsys.readouterr().out
    (row,) = results_log.read_results(tmp_path / "runs")
    assert row["chosen_on"] == "nothing (fixed C=1.0)"
    assert main(["--backbone", "crepe", "--head", "logreg", "--C", "0.1,1", "--out", str(tmp_path / "runs" / "grid"),
                 "--no-progress"]) == 0
    assert "chosen on valid" in capsys.readouterr().out

"""benchmarks.frontends: the comparison tables read back from the runs, missing cells marked, finished runs
reused, the heatmap's values equal to the runs' layer weights, and the demo path (CREPE, log-mel and a tiny
random transformer) through the pipelines."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from featurestore.options import SpecError

from benchmarks import frontend_plots as plots
from benchmarks import frontend_table as table
from benchmarks import frontends, published

#: 4 singers x 4 clips x 2 s (2 train / 1 valid / 1 test per singer): CREPE tiny builds it in ~5 s of CPU.
SMALL_DEMO = dict(n_singers=4, clips_per_singer=4, duration_s=2.0)
BACKBONES = "crepe,pesto,logmel,random-tiny"
NAMES = ["crepe-tiny", "pesto", "logmel", "random-tiny"]
FIT = ["--epochs", "2", "--lr", "1e-2", "--no-progress"]
HEAD = {"singer": "linear", "transcription": "crf", "technique": "linear"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One demo store (all labels) with CREPE tiny, PESTO, log-mel and the random tiny wav2vec2, and one comparison
    of the three tasks on it (``--store``, ``--layers each``, ``--published``)."""
    import torch

    import featurestore.build as fbuild
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("home")
    mp.setenv("SINGFRONT_HOME", str(home))
    mp.setattr(fbuild, "ensure_demo_corpus",
               lambda: make_demo_corpus(fbuild.default_demo_dir() / "corpus", **SMALL_DEMO))
    base = tmp_path_factory.mktemp("cmp")
    root, store = base / "cmp", base / "store.zarr"
    tiny = frontends.make_random_tiny(root / "models" / frontends.RANDOM_TINY)   # a local folder as backbone
    fbuild.build(fbuild.ensure_demo_corpus(), store, ["crepe-tiny", "pesto", "logmel", str(tiny)],
                 clip_settings=ClipSettings(segment_s=1.0), num_workers=0, progress=False)
    argv = ["--workdir", str(root), "--store", str(store), "--backbones", BACKBONES, "--layers", "each",
            "--published", *FIT]
    try:
        rc = frontends.main(argv)
        yield SimpleNamespace(root=root, store=store, rc=rc, argv=argv)
    finally:
        mp.undo()
        torch.set_num_threads(threads)


def _csv(path: Path) -> list[dict]:
    return table.read_csv(path)


def _run(root: Path, task: str, name: str, head: str | None = None) -> Path:
    return root / task / "runs" / f"{name}-{head or HEAD[task]}"


# ----------------------------------------------------------------------------------------------
# the comparison on the demo store
# ----------------------------------------------------------------------------------------------
def test_tables_read_back_the_runs(env):
    assert env.rc == 0
    for task in frontends.TASKS:
        rows = _csv(env.root / task / "comparison.csv")
        measured = [r for r in rows if r["source"] == "measured"]
        assert [r["frontend"] for r in measured] == NAMES
        md = (env.root / task / "comparison.md").read_text()
        for r in measured:
            run = _run(env.root, task, r["frontend"])
            ev = json.loads((run / "evaluation.json").read_text())
            assert r["status"] == "ok" and r["run"] == str(run)
            for col, key in table.COLUMNS[task]:
                assert math.isclose(r[col], 100 * table.dig(ev, key), rel_tol=1e-12), (task, col)
            p = ev["protocol"]
            assert r["scored on"] == p["scored_split"] and r["chosen on"] == p["selection_split"]
            assert p["scored_split"] != p["selection_split"]
            tags = r["notes"].split("; ")
            assert "demo corpus" in tags                          # the store holds demo-corpus audio
            assert ("random-init" in tags) == (r["frontend"] == "random-tiny")
            # each score with its bootstrap interval (none for top-k with k = the class count: always 100 %)
            cells = []
            for c, key in table.COLUMNS[task]:
                lo, hi = ev["ci95"].get(key) or (None, None)
                cells.append(f"{r[c]:.1f}" + ("" if lo is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]"))
                assert r[f"{c} ci low"] == (None if lo is None else pytest.approx(100 * lo))
                assert lo is None or lo <= r[c] / 100 <= hi
            label = r["frontend"] + (" (random-init)" if r["frontend"] == "random-tiny" else "")
            splits = f" | {r['scored on']} | {r['chosen on']} |"
            assert f"| {label} | {HEAD[task]} | " + " | ".join(cells) + splits in md
        pub = [r for r in rows if r["source"] == "published"]
        assert [r["frontend"] for r in pub] == [m for m, _, _ in published.PUBLISHED[task]]
        for r, (model, _, values) in zip(pub, published.PUBLISHED[task]):
            assert {c: r[c] for c in values} == values and r["head"] == "paper"
            assert f"| {model} [published] | paper |" in md
        assert "Measured on the built-in demo corpus" in md
    summary = (env.root / "comparison.md").read_text()
    assert "![layer weights](plots/layer_weights.png)" in summary and "Table IV" in summary


def test_technique_scores_match_an_independent_count(env):
    """Technique row of the table against counts over the fit's predictions.csv (the same head scored on the
    same split): accuracy, top-2/3, macro F1 and balanced accuracy computed here by hand."""
    rows = {r["frontend"]: r for r in _csv(env.root / "technique" / "comparison.csv") if r["source"] == "measured"}
    for name in NAMES:
        with open(_run(env.root, "technique", name) / "predictions.csv", newline="") as f:
            pred = list(csv.DictReader(f))
        true = np.array([p["true"] for p in pred])
        top = [p["top3"].split("|") for p in pred]
        y = np.array([t[0] for t in top])
        f1, recall = [], []
        for c in sorted(set(true) | set(y)):
            tp = np.sum((true == c) & (y == c))
            prec = tp / max(np.sum(y == c), 1)
            rec = tp / max(np.sum(true == c), 1)
            f1.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
            if np.any(true == c):
                recall.append(rec)
        want = {"Acc": np.mean(true == y), "Top-2": np.mean([t in k[:2] for t, k in zip(true, top)]),
                "Top-3": np.mean([t in k[:3] for t, k in zip(true, top)]), "F1 (macro)": np.mean(f1),
                "Balanced acc": np.mean(recall)}
        for col, v in want.items():
            assert math.isclose(rows[name][col], 100 * v, rel_tol=1e-9, abs_tol=1e-9), (name, col)


def test_heatmap_values_are_the_runs_layer_weights(env):
    for task in frontends.TASKS:
        runs = [(n, _run(env.root, task, n)) for n in NAMES]
        labels, m = plots.layer_weight_matrix(runs)
        assert labels == NAMES
        assert m.shape[1] == max(len(json.loads((r / "metrics.json").read_text())["layer_weights"]) for _, r in runs)
        for i, (_, run) in enumerate(runs):
            w = json.loads((run / "metrics.json").read_text())["layer_weights"]
            np.testing.assert_array_equal(m[i, :len(w)], w)
            assert np.isnan(m[i, len(w):]).all()                    # padded: the frontend has no such layer
            assert math.isclose(sum(w), 1.0, rel_tol=1e-5)           # a softmax
        assert np.isnan(m[NAMES.index("logmel"), 1:]).all() and m.shape[1] == 10  # log-mel 1, CREPE 6, PESTO 10
        assert np.isnan(m[NAMES.index("crepe-tiny"), 6:]).all() and not np.isnan(m[NAMES.index("pesto")]).any()
        # scaled by the layer count (1 = uniform) and per frontend (1 = its largest weight)
        _, by_count = plots.layer_weight_matrix(runs, scale="layers")
        _, by_frontend = plots.layer_weight_matrix(runs, scale="frontend")
        for i, (_, run) in enumerate(runs):
            w = np.array(json.loads((run / "metrics.json").read_text())["layer_weights"])
            np.testing.assert_allclose(by_count[i, :len(w)], w * len(w))
            np.testing.assert_allclose(by_frontend[i, :len(w)], w / w.max())
        assert by_count[NAMES.index("logmel"), 0] == pytest.approx(1.0)  # one layer: uniform, not "1.00 preferred"
    # demo rows and published rows are never on one axis unasked: the published bars have their own figure
    for name in ("layer_weights", "layer_sweep", "main_metric", "main_metric_published"):
        assert (env.root / "plots" / f"{name}.png").stat().st_size > 5000
        assert (env.root / "plots" / f"{name}.svg").stat().st_size > 5000


def test_layer_sweep_lives_beside_the_main_runs(env):
    for task in ("singer", "technique"):
        curves = plots.layer_curves(frontends.sweep_runs(env.root / task))
        assert sorted(curves) == sorted(NAMES)
        md = (env.root / task / "comparison.md").read_text()
        for name, lt in curves.items():
            sweep = env.root / task / frontends.SWEEP_DIR / "runs" / f"{name}-linear-layers-each"
            m = json.loads((sweep / "metrics.json").read_text())
            assert lt == m["layer_table"] and lt["scored_split"] == m["protocol"]["scored_split"] == "test"
            assert lt["selection_split"] == m["protocol"]["selection_split"]
            assert f"## {task}, {name}: one linear probe per layer" in md   # the table is in the comparison
            chosen = lt["chosen_layer"]
            assert f"| {chosen} | {100 * lt['scored']['accuracy'][chosen]:.1f}" in md
            main = json.loads((_run(env.root, task, name) / "metrics.json").read_text())
            assert "layer_curve" not in main and "layer_weights" in main   # the main run was not overwritten
    assert not (env.root / "transcription" / frontends.SWEEP_DIR).exists()  # frame heads have no per-layer probe


def test_calls_add_up_to_one_table_with_seeds(env, tmp_path):
    """Two calls on different tasks leave one comparison holding both; --seeds 0,1 fits two runs per cell
    and shows the mean ± sd of their scores; a --table-only redraw keeps everything, demo label included."""
    root = tmp_path / "cmp"
    common = ["--workdir", str(root), "--store", str(env.store), "--backbones", "logmel", *FIT]
    assert frontends.main(common + ["--tasks", "singer"]) == 0
    assert frontends.main(common + ["--tasks", "technique", "--seeds", "0,1"]) == 0
    summary = (root / "comparison.md").read_text()
    assert "# singer:" in summary and "# technique:" in summary
    assert (root / "singer" / "runs" / "logmel-linear" / "evaluation.json").is_file()
    runs = [root / "technique" / "runs" / n for n in ("logmel-linear", "logmel-linear-seed1")]
    evs = [json.loads((r / "evaluation.json").read_text()) for r in runs]
    assert [e["seed"] for e in evs] == [0, 1]
    (row,) = _csv(root / "technique" / "comparison.csv")
    f1 = [100 * e["macro_f1"] for e in evs]
    assert row["F1 (macro)"] == pytest.approx(np.mean(f1))
    assert row["F1 (macro) sd"] == pytest.approx(np.std(f1, ddof=1)) and row["seeds"] == "0,1"
    assert f"| {np.mean(f1):.1f} ± {np.std(f1, ddof=1):.1f} |" in (root / "technique" / "comparison.md").read_text()
    # a third call on singer alone: the technique rows stay in the comparison
    assert frontends.main(common + ["--tasks", "singer"]) == 0
    assert "# technique:" in (root / "comparison.md").read_text()
    # a redraw runs nothing and keeps every row and its demo label
    assert frontends.main(["--workdir", str(root), "--tasks", "singer,technique", "--table-only", "--no-progress"]) == 0
    for task in ("singer", "technique"):
        (row,) = _csv(root / task / "comparison.csv")
        assert row["status"] == "ok" and "demo corpus" in row["notes"].split("; ")
    # a redraw naming the backbone shows the cell once, with every seed an earlier call fitted
    assert frontends.main(["--workdir", str(root), "--tasks", "technique", "--backbones", "logmel", "--table-only",
                           "--no-progress"]) == 0
    (row,) = _csv(root / "technique" / "comparison.csv")
    assert row["seeds"] == "0,1" and row["F1 (macro)"] == pytest.approx(np.mean(f1))
    assert (root / "plots" / "main_metric.svg").stat().st_size > 5000


def test_missing_cells_are_marked(env, tmp_path, capsys):
    """A backbone absent from --store, a fit that fails, and a cell never fitted: '—' with a footnote each."""
    w = tmp_path / "w"
    (w / "singer" / "runs").mkdir(parents=True)
    (w / "singer" / "runs" / "logmel-linear").write_text("a file where the run folder goes")  # the fit fails
    rc = frontends.main(["--workdir", str(w), "--store", str(env.store), "--tasks", "singer",
                         "--backbones", "logmel,wavlm", *FIT])
    assert rc == 1 and "step(s) failed" in capsys.readouterr().err
    rows = {r["frontend"]: r for r in _csv(w / "singer" / "comparison.csv")}
    assert rows["logmel"]["status"] == "failed" and "this is a file" in rows["logmel"]["message"]
    assert rows["wavlm-base-plus"]["status"] == "not in store"
    assert all(r[c] is None for r in rows.values() for c, _ in table.COLUMNS["singer"])
    md = (w / "singer" / "comparison.md").read_text()
    assert "| logmel | linear | — [1] | — | — |" in md
    assert "| wavlm-base-plus | linear | — [2] | — | — |" in md
    assert "[1] logmel / linear: failed: " in md and "[2] wavlm-base-plus / linear: not in store: " in md
    # --table-only: nothing runs; crepe has no run in this folder
    assert frontends.main(["--workdir", str(w), "--store", str(env.store), "--tasks", "singer", "--backbones",
                           "crepe", "--table-only", "--no-progress"]) == 0
    (row,) = _csv(w / "singer" / "comparison.csv")
    assert row["status"] == "not fitted" and row["F1 (macro)"] is None
    assert not (w / "singer" / "runs" / "crepe-tiny-linear").exists()


def test_finished_runs_are_not_recomputed(env, monkeypatch, capsys):
    import heads.fit

    calls = []  # the specs actually fitted (fit_run reuses a folder holding a fit of the same spec)
    real = heads.fit.fit_run

    def spy(store, spec, out=None, **kw):
        rec = real(store, spec, out, **kw)
        if not rec.reused:
            calls.append(spec)
        return rec

    monkeypatch.setattr(heads.fit, "fit_run", spy)
    files = sorted(env.root.glob("*/runs/*/*.json")) + sorted(env.root.glob("*/layer_sweep/runs/*/*.json"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert frontends.main(env.argv) == 0
    assert calls == [] and {f: f.stat().st_mtime_ns for f in files} == before
    out = capsys.readouterr().out
    n = len(NAMES)
    assert out.count("reused (fitted with these settings)") == 3 * n + 2 * n   # 3 tasks + 2 sweeps per frontend
    assert f"singer: 0 backbone(s) built, 0 run(s) fitted, {2 * n} reused, 0 evaluated, 0 failed" in out
    # a new head: only its cells are fitted; the linear runs stay as they are
    assert frontends.main(["--workdir", str(env.root), "--store", str(env.store), "--tasks", "singer",
                           "--backbones", BACKBONES, "--heads", "linear,logreg", *FIT]) == 0
    assert len(calls) == n and all(spec.head == "logreg" for spec in calls)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    rows = _csv(env.root / "singer" / "comparison.csv")
    assert [(r["frontend"], r["head"]) for r in rows] == [(n, h) for n in NAMES for h in ("linear", "logreg")]
    assert all(r["status"] == "ok" for r in rows)


def test_demo_builds_missing_backbones_into_the_task_store(env, tmp_path, monkeypatch):
    """--demo prepares the task folder, builds each missing backbone into its store (one build each), and a
    later backbone is added to the same store without rebuilding or refitting the others."""
    from featurestore import open_store
    from pipelines.runner import is_demo

    w = tmp_path / "w"
    common = ["--workdir", str(w), "--demo", "--tasks", "technique", *FIT, "--num-workers", "0"]
    assert frontends.main(common + ["--backbones", "logmel"]) == 0
    assert is_demo(w / "technique") and open_store(w / "technique" / "store.zarr").backbones == ["logmel"]
    first = (w / "technique" / "runs" / "logmel-linear" / "metrics.json").stat().st_mtime_ns
    assert frontends.main(common + ["--backbones", "logmel,random-tiny"]) == 0
    assert open_store(w / "technique" / "store.zarr").backbones == ["logmel", "random-tiny"]
    assert (w / "technique" / "runs" / "logmel-linear" / "metrics.json").stat().st_mtime_ns == first
    rows = _csv(w / "technique" / "comparison.csv")
    assert [r["notes"] for r in rows] == ["demo corpus", "demo corpus; random-init"]
    assert all(r["status"] == "ok" and r["F1 (macro)"] is not None for r in rows)


# ----------------------------------------------------------------------------------------------
# tables and heatmap from run folders written here
# ----------------------------------------------------------------------------------------------
PROTOCOL = {"scored_split": "valid", "selection_split": "train-holdout", "holdout_group": "singer",
            "scored_is_selection": False}


def _write_run(folder: Path, backbone: str, weights, stored, scores: dict | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"backbone": backbone, "head": "linear", "protocol": PROTOCOL,
                                                     "layer_weights": weights, "stored_layers": stored}))
    if scores is not None:
        os.utime(folder / "metrics.json", ns=(1_000_000_000, 1_000_000_000))   # evaluated after the fit
        (folder / "evaluation.json").write_text(json.dumps({**scores, "protocol": PROTOCOL}))
    return folder


def test_table_and_heatmap_from_written_runs(tmp_path):
    task_dir = tmp_path / "technique"
    a = {"macro_f1": 0.25, "accuracy": 0.5, "balanced_accuracy": 0.375, "top2": 0.75, "top3": 0.875}
    ra = _write_run(task_dir / "runs" / "a-linear", "a", [0.1, 0.2, 0.7], [0, 1, 2], a)
    rb = _write_run(task_dir / "runs" / "b-linear", "b", [0.4, 0.6], [1, 3], {k: v / 2 for k, v in a.items()
                                                                              if k != "top3"})
    rc = _write_run(task_dir / "runs" / "c-linear", "c", [1.0], [0], None)          # fitted, not evaluated
    cells = [table.Cell("technique", "a", "linear", ra), table.Cell("technique", "b", "linear", rb),
             table.Cell("technique", "c", "linear", rc),
             table.Cell("technique", "d", "linear", task_dir / "runs" / "d-linear")]  # never fitted
    rows = table.table_rows("technique", cells, published=True)
    table.write_csv("technique", rows, tmp_path / "t.csv")
    back = table.read_csv(tmp_path / "t.csv")
    assert [r["frontend"] for r in back[:4]] == ["a", "b", "c", "d"] and len(back) == 4 + 5
    assert [back[0][c] for c in ("F1 (macro)", "Acc", "Balanced acc", "Top-2", "Top-3")] == [25.0, 50.0, 37.5,
                                                                                           75.0, 87.5]
    assert back[1]["Top-3"] is None and back[1]["status"] == "ok" and math.isclose(back[1]["Acc"], 25.0)
    assert [r["status"] for r in back[:4]] == ["ok", "ok", "not evaluated", "not fitted"]
    assert back[0]["chosen on"] == "train-holdout (by singer)" and back[0]["scored on"] == "valid"
    md = table.to_markdown("technique", rows)
    lines = md.splitlines()
    assert "| a | linear | 25.0 | 50.0 | 37.5 | 75.0 | 87.5 | valid | train-holdout (by singer) |  |" in lines
    assert "| b | linear | 12.5 | 25.0 | 18.8 | 37.5 | n/a [1] | valid | train-holdout (by singer) |  |" in lines
    assert "| c | linear | — [2] | — | — | — | — | valid | train-holdout (by singer) |  |" in lines
    assert "| d | linear | — [3] | — | — | — | — | — | — |  |" in lines
    assert lines[-3].startswith("[1] Top-3 not in") and "[2] c / linear: not evaluated" in lines[-2]
    assert lines[-1].startswith("[3] d / linear: not fitted")
    labels, m = plots.layer_weight_matrix([(c.name, c.run) for c in cells])
    assert labels == ["a", "b", "c"]                                 # d has no metrics.json
    np.testing.assert_array_equal(m, [[0.1, 0.2, 0.7, np.nan], [np.nan, 0.4, np.nan, 0.6],
                                      [1.0, np.nan, np.nan, np.nan]])
    assert plots.plot_layer_weights({"technique": (labels, m)}, tmp_path / "h.png").stat().st_size > 1000
    # the CLI's --table-only reads the same runs (every run folder of the task)
    assert frontends.main(["--workdir", str(tmp_path), "--tasks", "technique", "--table-only", "--no-progress"]) == 0
    cli = table.read_csv(task_dir / "comparison.csv")
    assert [(r["frontend"], r["status"]) for r in cli] == [("a", "ok"), ("b", "ok"), ("c", "not evaluated")]
    assert cli[0]["Balanced acc"] == 37.5


def test_bad_options_name_the_option(capsys):
    for argv, word in ((["--tasks", "singer,karaoke"], "--tasks"), (["--heads", "svm"], "--heads"),
                       (["--backbones", "no-such-frontend"], "--backbones"), (["--epochs", "0"], "--epochs"),
                       (["--store", "/no/such/store.zarr"], "--store")):
        with pytest.raises(SystemExit) as e:
            frontends.main(["--workdir", "unused", *argv])
        assert e.value.code == 2 and word in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a pooling no clip head knows is refused before anything runs
        frontends.main(["--workdir", "unused", "--pool", "not-a-pooling"])
    assert e.value.code == 2 and "--pool" in capsys.readouterr().err
    from pipelines.task_pipeline import load_task

    assert frontends.ComparisonSpec(workdir="x", heads="mlp").heads_for(load_task("transcription")) == ["crf"]
    assert frontends.ComparisonSpec(workdir="x", heads=["mlp", "crf"]).heads_for(load_task("singer")) == ["mlp"]
    with pytest.raises(SpecError, match="^tasks: unknown task"):  # from Python: the setting, not a flag
        frontends.ComparisonSpec(workdir="x", tasks=["singer", "karaoke"])


def test_every_option_has_help():
    from test_cli_help import _problems

    assert _problems(frontends.build_parser()) == []

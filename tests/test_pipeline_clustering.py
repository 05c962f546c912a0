"""pipelines.clustering: scores on a planted clustering, the frame labelling (MIDI % 12 at frame
times), frame sampling against the store, and the CLI on the demo store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import clustering as C


def _blobs(n_per=30, k=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(k, dim))
    X = np.concatenate([c + rng.normal(scale=0.5, size=(n_per, dim)) for c in centres])
    y = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


def test_planted_clustering_scores_one():
    X, y = _blobs()
    s = C.cluster_scores(X, y, seed=0)
    assert s["kmeans"]["ARI"] == pytest.approx(1.0)
    assert s["kmeans"]["NMI"] == pytest.approx(1.0)
    assert s["kmeans"]["n_clusters"] == 12
    assert s["hdbscan"]["ARI"] == pytest.approx(1.0) and s["hdbscan"]["noise_fraction"] == 0.0
    assert s["n"] == len(y) and s["n_classes"] == 12 and s["dims"] == 16
    # with PCA (features wider than --pca) the blobs stay separable
    Xw = X @ np.random.default_rng(1).normal(size=(16, 80))
    s = C.cluster_scores(Xw, y, seed=0, pca=10)
    assert s["dims"] == 10 and s["kmeans"]["ARI"] == pytest.approx(1.0)


def test_scores_of_random_labels_are_low_and_noise_is_its_own_cluster():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 8))
    y = rng.integers(0, 12, size=240)
    s = C.cluster_scores(X, y, seed=0)
    assert abs(s["kmeans"]["ARI"]) < 0.1
    # everything noise: one cluster (-1) -> ARI 0, NMI 0 (not dropped, not perfect)
    a = {"kmeans": np.zeros(240, dtype=int), "hdbscan": np.full(240, -1)}
    s = C.cluster_scores(X, y, assignments=a)
    assert s["hdbscan"]["ARI"] == pytest.approx(0.0) and s["hdbscan"]["NMI"] == pytest.approx(0.0)
    assert s["hdbscan"]["n_clusters"] == 0 and s["hdbscan"]["noise_fraction"] == 1.0


def test_frame_pitch_classes():
    times = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 1.0])
    notes = [[0.1, 0.3, 60], [0.3, 0.5, 61.0], [0.7, 0.8, 59], [0.95, 1.2, 81]]
    pc = C.frame_pitch_classes(times, notes)
    assert pc.tolist() == [-1, 0, 0, 1, 1, -1, -1, 11, 11, -1, 9]
    assert C.frame_pitch_classes(times, []).tolist() == [-1] * len(times)


def test_tsne_plot(tmp_path):
    X, y = _blobs(n_per=8)
    a = C.cluster_assignments(X, seed=0)
    hd = a["hdbscan"].copy()
    hd[:5] = -1
    p = C.plot_tsne(X, y, hd, tmp_path / "t.png")
    assert p.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# the demo store
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from featurestore import open_store
    from heads.fit import ensure_demo_store

    home = tmp_path_factory.mktemp("singfront_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SINGFRONT_HOME", str(home))
        path = ensure_demo_store()
        yield open_store(path)


def test_pitch_class_frames_match_the_store(demo_store, monkeypatch):
    bb = "crepe-tiny"
    layer = 3
    X, y = C.pitch_class_frames(demo_store, "crepe", layer=layer, per_class=15, seed=1)
    counts = np.bincount(y, minlength=12)
    assert counts.max() <= 15 and len(X) == len(y) and X.shape[1] == demo_store.shape(bb)[1]
    # every sampled row is a stored frame of that layer whose centre lies in a note of its pitch class
    notes = demo_store.labels("notes")
    pool = {c: [] for c in range(12)}
    for r in range(len(demo_store)):
        pc = C.frame_pitch_classes(demo_store.frame_times(r, bb), json.loads(notes[r]))
        f = demo_store.frames(r, bb, layers=[layer])[:, 0].astype(np.float32)
        for c in range(12):
            pool[c].append(f[pc == c])
    pool = {c: np.concatenate(v) for c, v in pool.items()}
    for c in range(12):
        assert counts[c] == min(15, len(pool[c]))
    for x, c in zip(X, y):
        assert np.any(np.all(pool[c] == x, axis=1)), f"a row labelled {c} is no frame of pitch class {c}"
    # deterministic under the seed; a one-hot weighted sum equals the layer
    X2, y2 = C.pitch_class_frames(demo_store, "crepe", layer=layer, per_class=15, seed=1)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    w = np.eye(demo_store.shape(bb)[0])[layer]
    X3, y3 = C.pitch_class_frames(demo_store, "crepe", weights=w, per_class=15, seed=1)
    assert np.allclose(X, X3) and np.array_equal(y, y3)
    monkeypatch.setattr(C, "READ_GAP", 1)  # many small reads per clip give the same rows
    X5, y5 = C.pitch_class_frames(demo_store, "crepe", layer=layer, per_class=15, seed=1)
    assert np.array_equal(X, X5) and np.array_equal(y, y5)
    X4, _ = C.pitch_class_frames(demo_store, "crepe", layer=layer, per_class=15, seed=2)
    assert not np.array_equal(X, X4)
    with pytest.raises(ValueError, match="out of range"):
        C.pitch_class_frames(demo_store, "crepe", layer=99)


def test_cli_demo(demo_store, tmp_path, capsys):
    out = tmp_path / "clus"
    assert C.main(["--demo", "--backbone", "crepe", "--per-class", "20", "--out", str(out)]) == 0
    res = json.loads((out / "clustering.json").read_text())
    assert (out / "tsne.png").stat().st_size > 1000
    for algo in ("kmeans", "hdbscan"):
        assert -1.0 <= res[algo]["ARI"] <= 1.0 and 0.0 <= res[algo]["NMI"] <= 1.0
    assert res["n"] == sum(res["class_counts"].values()) and max(res["class_counts"].values()) <= 20
    assert res["layer"] == demo_store.shape("crepe-tiny")[0] - 1
    assert "kmeans" in capsys.readouterr().out


def test_cli_weighted_sum_from_a_run(demo_store, tmp_path):
    from heads.fit import main as fit_main

    run = tmp_path / "run"
    assert fit_main(["--store", str(demo_store.path), "--backbone", "crepe", "--task", "technique",
                     "--epochs", "3", "--lr", "1e-2", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "clus"
    assert C.main(["--store", str(demo_store.path), "--run", str(run), "--per-class", "10", "--pca", "0",
                   "--out", str(out)]) == 0
    res = json.loads((out / "clustering.json").read_text())
    assert res["backbone"] == "crepe-tiny" and res["layer"] is None
    assert len(res["layer_weights"]) == demo_store.shape("crepe-tiny")[0]
    assert sum(res["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert (out / "tsne.png").is_file()
    assert C.main(["--store", str(demo_store.path), "--layer", "42", "--out", str(out)]) == 2


def test_run_clustering_from_python_gives_the_scores_of_the_command_line(demo_store, tmp_path, capsys):
    spec = C.ClusteringSpec(demo=True, backbone="crepe", per_class=20, layer=-2)
    report = C.run_clustering(spec)  # no out: nothing written, no t-SNE
    assert report.json_path is None and report.plot_path is None and not capsys.readouterr().out
    out = tmp_path / "clus"
    assert C.main(["--demo", "--backbone", "crepe", "--per-class", "20", "--layer", "-2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads((out / "clustering.json").read_text())
    assert report.result == written
    for algo in ("kmeans", "hdbscan"):
        assert report.scores(algo)["ARI"] == written[algo]["ARI"] and report.scores(algo)["NMI"] == written[algo]["NMI"]
        row = next(line.split() for line in printed.splitlines() if line.startswith(algo))
        assert float(row[1]) == pytest.approx(written[algo]["ARI"], abs=1e-3)  # the table as printed
        assert float(row[2]) == pytest.approx(written[algo]["NMI"], abs=1e-3)
    assert report.backbone == "crepe-tiny" and written["layer"] == demo_store.layer_ids("crepe-tiny")[-2]
    # the same spec with an out folder writes what the command wrote
    again = C.run_clustering(C.ClusteringSpec(demo=True, backbone="crepe", per_class=20, layer=-2,
                                              out=str(tmp_path / "py")))
    assert again.json_path == tmp_path / "py" / "clustering.json" and again.plot_path.stat().st_size > 1000
    assert json.loads(again.json_path.read_text()) == written


def test_print_config_fed_back_with_config_gives_the_same_spec(tmp_path, capsys):
    argv = ["--store", "songs.zarr", "--backbone", "mert", "--layer", "6", "--per-class", "50", "--k", "7",
            "--pca", "0", "--perplexity", "12.5", "--split", "test", "--seed", "3", "--out", str(tmp_path / "o")]
    assert C.main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# python -m pipelines.clustering --config FILE") and "per_class: 50" in text
    assert not (tmp_path / "o").exists()  # printing the config runs nothing
    config = tmp_path / "clus.yaml"
    config.write_text(text)
    want = C.from_namespace(C.ClusteringSpec, C.parse_args(argv))
    assert want == C.ClusteringSpec(store="songs.zarr", backbone="mert", layer=6, per_class=50, k=7, pca=0,
                                    perplexity=12.5, split="test", seed=3, out=str(tmp_path / "o"))
    assert C.from_namespace(C.ClusteringSpec, C.parse_args(["--config", str(config)])) == want
    # a flag beside --config wins over the file
    over = C.from_namespace(C.ClusteringSpec, C.parse_args(["--config", str(config), "--k", "9"]))
    assert over.k == 9 and over.per_class == 50
    config.write_text(text + "kk: 3\n")
    with pytest.raises(SystemExit) as e:
        C.parse_args(["--config", str(config)])
    assert e.value.code == 2 and "unknown setting(s) kk" in capsys.readouterr().err


def test_a_bad_setting_is_refused_naming_it(demo_store, tmp_path, capsys):
    from featurestore.options import SpecError

    for kw, setting in (({"demo": True, "per_class": 0}, "per_class"), ({"demo": True, "k": 0}, "k"),
                        ({"demo": True, "pca": -1}, "pca"), ({"demo": True, "perplexity": 0.0}, "perplexity"),
                        ({}, "store"), ({"demo": True, "store": "s.zarr"}, "store"),
                        ({"demo": True, "layer": 1, "run": "r"}, "layer")):
        with pytest.raises(SpecError) as e:
            C.ClusteringSpec(**kw)
        assert e.value.setting == setting, kw
    with pytest.raises(SpecError) as e:  # a layer the store does not hold: known only once the store is open
        C.run_clustering(C.ClusteringSpec(demo=True, layer=42))
    assert e.value.setting == "layer" and "out of range" in str(e.value)
    out = tmp_path / "o"
    assert C.main(["--demo", "--per-class", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --per-class: must be >= 1, got 0")
    assert not out.exists()
    with pytest.raises(SystemExit):
        C.main(["--demo"])  # --out is still required on the command line
    assert "required: --out" in capsys.readouterr().err

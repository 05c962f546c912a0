"""Every head: separable problems learned, shuffled labels at chance, save/load, sklearn API, the
pooled identity, the layer sweep, and heads.fit end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone

from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.frame_heads import CRFHead, FrameClassifierHead
from heads.frame_targets import encode_targets
from heads.modules import SumThenHead
from heads.persist import load_head

FAST = dict(epochs=40, lr=1e-2, patience=10)


def clip_problem(n=240, L=3, D=8, C=4, seed=0, signal_layer=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    X = rng.standard_normal((n, L, D)).astype(np.float32)
    X[:, signal_layer, :C] += 4.0 * np.eye(C)[y]
    return X, np.array([f"class{c}" for c in y])


CLIP_HEADS = [lambda: LinearHead(**FAST), lambda: MLPHead(hidden=32, **FAST), lambda: LogRegHead(features="concat"),
              lambda: LGBMHead(features="concat", n_estimators=60)]


@pytest.mark.parametrize("make", CLIP_HEADS, ids=["linear", "mlp", "logreg", "lgbm"])
def test_clip_heads_learn_separable_and_not_shuffled(make, tmp_path):
    X, y = clip_problem()
    head = make().fit(X[:160], y[:160], eval_set=(X[160:200], y[160:200]))
    assert head.score(X[200:], y[200:]) >= 0.95
    proba = head.predict_proba(X[200:])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert list(head.classes_) == sorted(set(y))
    if isinstance(head, (LogRegHead, LGBMHead)):  # no learned layer weights: a real per-layer importance
        assert not hasattr(head, "layer_weights_")
        assert head.layer_importance_.shape == (3,) and np.isclose(head.layer_importance_.sum(), 1.0)
    else:
        assert head.layer_weights_.shape == (3,) and np.isclose(head.layer_weights_.sum(), 1.0)
    # save / load gives identical predictions
    head.save(tmp_path / "h.json")
    back = load_head(tmp_path / "h.json")
    np.testing.assert_array_equal(back.predict_proba(X[200:]), proba)
    # sklearn API: params round trip, clone is unfitted with the same params
    params = head.get_params()
    assert clone(head).get_params() == params
    # shuffled labels: chance level (4 classes -> 0.25)
    rng = np.random.default_rng(1)
    ys = rng.permutation(y)
    acc = make().fit(X[:160], ys[:160], eval_set=(X[160:200], ys[160:200])).score(X[200:], ys[200:])
    assert acc < 0.5


def test_set_params_changes_the_model():
    h = LinearHead().set_params(lr=0.5, layer_norm=True)
    assert h.get_params()["lr"] == 0.5 and h.layer_norm is True


def test_weighted_sum_on_pooled_equals_mean_of_frame_outputs():
    torch.manual_seed(0)
    L, D, C, T = 4, 6, 3, 17
    module = SumThenHead(L, D, torch.nn.Linear(D, C))
    with torch.no_grad():
        module.sum.logits.copy_(torch.randn(L))
        frames = torch.randn(T, L, D)
        per_frame = module(frames)  # [T, C]
        from_pooled = module(frames.mean(0))  # [C]
    torch.testing.assert_close(from_pooled, per_frame.mean(0), rtol=1e-5, atol=1e-6)


def test_learned_layer_weights_find_the_informative_layer():
    X, y = clip_problem(signal_layer=2, seed=3)
    head = LinearHead(epochs=80, lr=3e-2, patience=30).fit(X[:200], y[:200], eval_set=(X[200:], y[200:]))
    assert int(np.argmax(head.layer_weights_)) == 2


def test_layer_sweep_fits_one_probe_per_layer():
    X, y = clip_problem(L=4, signal_layer=3, seed=5)
    head = LinearHead(layers="each", **FAST).fit(X[:160], y[:160], eval_set=(X[160:200], y[160:200]))
    assert head.layer_scores_.shape == (4,) and head.best_layer_ == 3
    assert head.layer_scores_[3] >= 0.95 and head.layer_scores_[:3].max() < 0.6
    assert head.score(X[200:], y[200:]) >= 0.95
    # each probe equals a linear probe fitted on that layer alone: same accuracy order
    alone = LinearHead(layers=[3], **FAST).fit(X[:160], y[:160], eval_set=(X[160:200], y[160:200]))
    assert alone.score(X[200:], y[200:]) >= 0.95


# ---- frame heads ------------------------------------------------------------------------------

def note_problem(n_clips=10, T=200, fr=50.0, seed=0):
    """Clips whose layer 1 encodes the 20 frame targets (plus noise); layer 0 is noise."""
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for _ in range(n_clips):
        notes, t = [], 0.1
        while t < T / fr - 0.5:
            d = rng.uniform(0.2, 0.6)
            notes.append([round(t, 3), round(t + d, 3), int(rng.integers(48, 72))])
            t += d + (0 if rng.random() < 0.3 else rng.uniform(0.1, 0.3))
        tg = encode_targets(notes, T, fr)
        f = np.concatenate([tg["onset"][:, None], tg["silence"][:, None], np.eye(5)[tg["octave"]],
                            np.eye(13)[tg["pitch_class"]]], axis=1)
        x = 0.1 * rng.standard_normal((T, 2, 20)).astype(np.float32)
        x[:, 1] += 4.0 * f
        X.append(x)
        Y.append(notes)
    return X, Y


@pytest.mark.parametrize("cls", [FrameClassifierHead, CRFHead], ids=["frames", "crf"])
def test_frame_heads_transcribe_separable_notes(cls, tmp_path):
    X, Y = note_problem()
    head = cls(epochs=150, lr=3e-2, window=100, batch_size=8, patience=40)
    head.fit(X[:7], Y[:7], frame_rate=50.0, eval_set=(X[7:8], Y[7:8], None))
    assert head.score(X[8:], Y[8:]) >= 0.9
    assert head.layer_weights_[1] > head.layer_weights_[0]
    head.save(tmp_path / "h.json")
    assert load_head(tmp_path / "h.json").predict(X[8:]) == head.predict(X[8:])
    # notes of other clips: far below
    shuffled = cls(epochs=15, lr=1e-2, window=100, batch_size=8, patience=5)
    shuffled.fit(X[:7], Y[1:8], frame_rate=50.0, eval_set=(X[7:8], Y[0:1], None))
    assert shuffled.score(X[8:], Y[8:]) < 0.3


# ---- the CLI -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A small demo store built through the same path heads.fit takes (SINGFRONT_HOME)."""
    import os

    from featurestore.build import DEMO_SEGMENT_S, build, default_demo_dir
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("SINGFRONT_HOME")
    os.environ["SINGFRONT_HOME"] = str(home)
    manifest = make_demo_corpus(default_demo_dir() / "corpus", n_singers=4, clips_per_singer=5, duration_s=3.0)
    build(manifest, default_demo_dir() / "store.zarr", ["crepe-tiny"], progress=False, num_workers=0,
          clip_settings=ClipSettings(segment_s=DEMO_SEGMENT_S))
    yield home
    if old is None:
        os.environ.pop("SINGFRONT_HOME")
    else:
        os.environ["SINGFRONT_HOME"] = old


@pytest.mark.parametrize("head,task", [("linear", "singer"), ("logreg", "technique"), ("crf", "transcription")])
def test_fit_cli_end_to_end(demo_home, tmp_path, capsys, head, task):
    from heads.fit import main

    out = tmp_path / "run"
    torch_opts = [] if head == "logreg" else ["--epochs", "15", "--lr", "1e-2"]  # logreg has neither
    code = main(["--backbone", "crepe", "--head", head, "--task", task, *torch_opts,
                 "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["backbone"] == "crepe-tiny" and (out / "head.json").stat().st_size > 0
    if head == "logreg":  # the layer mean: nothing is learned per layer (no fake uniform layer weights)
        assert "layer_weights" not in m and not hasattr(load_head(out / "head.json"), "layer_weights_")
    else:
        assert len(m["layer_weights"]) == 6 and (out / "layer_weights.png").stat().st_size > 0
    if task == "transcription":
        assert "COnPOff" in printed and 0.0 <= m["mean"]["COnP"]["f1"] <= 1.0
        assert len(list((out / "notes").glob("*.txt"))) == m["n_songs"]
    else:
        assert (out / "confusion.png").stat().st_size > 0 and "accuracy" in printed
        rows = (out / "predictions.csv").read_text().splitlines()
        assert rows[0] == "id,true,pred,top3" and len(rows) == m["n"] + 1


def test_layer_plots_show_stored_layers_and_only_what_was_learned(demo_home, tmp_path, monkeypatch):
    """--layers 2,4: the plot's bars are stored layers 2 and 4; logreg on concatenated layers plots an
    importance that sums to 1; logreg on the layer mean plots nothing."""
    from heads import fit

    drawn = {}
    real = fit.plot_layer_weights

    def spy(values, layers, path, title, ylabel="softmax weight (learned)"):
        drawn[path.parent.name] = (list(values), list(layers), ylabel, title)
        return real(values, layers, path, title, ylabel)

    monkeypatch.setattr(fit, "plot_layer_weights", spy)
    common = ["--backbone", "crepe", "--no-progress"]
    torch_opts = ["--epochs", "3", "--lr", "1e-2"]
    assert fit.main(common + torch_opts + ["--head", "linear", "--layers", "2,4", "--out", str(tmp_path / "sub")]) == 0
    values, layers, ylabel, title = drawn["sub"]
    assert layers == [2, 4] and len(values) == 2 and ylabel.startswith("softmax")
    assert "scored on test, chosen on valid" in title
    m = json.loads((tmp_path / "sub" / "metrics.json").read_text())
    assert m["stored_layers"] == [2, 4] and np.isclose(sum(m["layer_weights"]), 1.0)
    assert fit.main(common + ["--head", "logreg", "--layers", "concat", "--out", str(tmp_path / "cat")]) == 0
    values, layers, ylabel, _ = drawn["cat"]
    assert layers == list(range(6)) and np.isclose(sum(values), 1.0) and ylabel.startswith("importance")
    head = load_head(tmp_path / "cat" / "head.json")
    np.testing.assert_allclose(values, head.layer_importance_)
    assert fit.main(common + ["--head", "logreg", "--out", str(tmp_path / "mean")]) == 0
    assert "mean" not in drawn and not (tmp_path / "mean" / "layer_weights.png").exists()
    assert fit.main(common + torch_opts + ["--head", "linear", "--layers", "concat", "--out", str(tmp_path / "bad")]) == 2


def test_fit_cli_errors(demo_home, tmp_path, capsys):
    from heads.fit import main

    assert main(["--backbone", "wavlm", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["--head", "crf", "--task", "singer", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "clip task" in capsys.readouterr().err
    assert main(["--head", "linear", "--task", "label:mood", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "mood" in capsys.readouterr().err
    assert main(["--head", "linear", "--context", "0.1", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "--context" in capsys.readouterr().err
    assert main(["--head", "crf", "--context", "-0.1", "--epochs", "1", "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2
    assert "--context: -0.1: expected seconds >= 0" in capsys.readouterr().err


def test_score_clip_head_counts_unseen_labels_and_matches_a_manual_score():
    from heads.evaluation import score_clip_head

    X, y = clip_problem(n=120, C=3, seed=7)
    head = LogRegHead(features="concat").fit(X[:80], y[:80])
    yt = y[80:].copy()
    yt[:5] = "never-seen"
    s = score_clip_head(head, X[80:], yt)
    assert s.report["unseen_labels"] == 5 and s.report["n"] == 35 and s.known.sum() == 35
    manual = np.mean(head.predict(X[80:][s.known]) == yt[s.known])
    assert np.isclose(s.report["accuracy"], manual)
    assert [head.classes_[i] for i in s.y] == list(yt[s.known])


def test_paper_class_weights_for_the_sklearn_heads():
    from heads.training import class_weights

    X, y = clip_problem(n=90, C=3, seed=2)
    y = np.where(np.arange(90) < 60, "a", y)  # imbalanced
    head = LogRegHead(class_weight="paper").fit(X, y)
    cw = head.model_[-1].class_weight
    classes, yi = np.unique(y, return_inverse=True)
    expected = class_weights(yi, len(classes))
    assert [cw[c] for c in classes] == pytest.approx(list(expected))
    counts = np.bincount(yi)
    assert cw[classes[0]] / cw[classes[1]] == pytest.approx((counts[1] / counts[0]) ** 0.2)


def test_fit_cli_rejects_bad_device_and_layer_choices(demo_home, tmp_path, capsys):
    import torch

    from heads.fit import main

    if not torch.cuda.is_available():
        assert main(["--device", "cuda", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(["--device", "nonsense", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert main(["--head", "mlp", "--layers", "each", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "one linear probe per layer" in capsys.readouterr().err
    assert main(["--head", "logreg", "--layers", "1,2", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "one layer" in capsys.readouterr().err


def test_frame_heads_train_the_same_from_lazy_store_windows_and_from_memory(demo_home, monkeypatch):
    """Large splits are read window by window from the store; small ones are loaded once. Same result."""
    from featurestore import open_store
    from featurestore.build import default_demo_dir
    from heads import frame_heads
    from heads.tasks import NotesTask

    store = open_store(default_demo_dir() / "store.zarr")
    plan = NotesTask().plan(store, "crepe-tiny")
    X, Y, off, _ = NotesTask().data(store, "crepe-tiny", plan.train)
    Xv, Yv, ov, _ = NotesTask().data(store, "crepe-tiny", plan.select)
    kw = dict(epochs=4, lr=1e-2, window=30, batch_size=8, patience=4)
    in_memory = CRFHead(**kw).fit(X, Y, frame_rate=50.0, offsets=off, eval_set=(Xv, Yv, ov))
    monkeypatch.setattr(frame_heads, "IN_MEMORY_BYTES", 0)
    lazy = CRFHead(**kw).fit(X, Y, frame_rate=50.0, offsets=off, eval_set=(Xv, Yv, ov))
    for a, b in zip(in_memory.module_.state_dict().values(), lazy.module_.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert in_memory.predict(Xv, offsets=ov) == lazy.predict(Xv, offsets=ov)


def test_frame_bank_reads_the_store_straight_into_its_tensor(demo_home):
    """The training bank of the frame heads, filled from the store's lazy clips (one copy into the
    tensor), equals the bank built from the clips read as arrays, with and without a layer selection."""
    from featurestore import open_store
    from featurestore.build import default_demo_dir
    from featurestore.datasets import ClipFrames
    from heads.frame_heads import _Clips, _FrameBank

    store = open_store(default_demo_dir() / "store.zarr")
    rows = np.arange(6)
    lazy = ClipFrames(store, "crepe-tiny", rows)
    arrays = [store.frames(int(r), "crepe-tiny") for r in rows]
    assert _Clips.of(lazy).can_read_into() and not _Clips.of(arrays).can_read_into()
    for layers in (None, [1, 4]):
        a = _FrameBank(_Clips.of(lazy), None, layers, "cpu")
        b = _FrameBank(_Clips.of(arrays), None, layers, "cpu")
        assert a.frames.dtype == torch.float32 and torch.equal(a.frames, b.frames)
        want = np.concatenate([x if layers is None else x[:, layers] for x in arrays]).astype(np.float32)
        np.testing.assert_array_equal(a.frames[:-1].numpy(), want)
        assert not a.frames[-1].any()  # the padding row

"""The scikit-learn estimator contract of the four clip heads, and their class weights.

- ``check_estimator`` on each head (2-D data, fast hyperparameters) with an explicit, short list of
  expected failures: any other failing check fails the test, and so does an expected failure that
  passes (the list stays honest).
- class_weight: one rule for every head (None, "balanced", "paper", a dict); the torch heads' loss
  really uses it; LogReg/LGBM get the same weights as scikit-learn would compute.
- input checks, fitted-state checks, decision_function shapes, the [N, L, D] path, and the
  per-layer importance of logreg/lgbm on concatenated layers.
"""
from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.estimator_checks import check_estimator

from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.training import per_class_weights

# fast hyperparameters; the sklearn heads use features="mean" (a 2-D X is one layer: its mean is X)
FAST = {
    LinearHead: dict(epochs=5, lr=5e-2, batch_size=32, patience=5),
    MLPHead: dict(hidden=16, epochs=5, lr=5e-2, batch_size=32, patience=5),
    LogRegHead: dict(features="mean"),
    LGBMHead: dict(features="mean", n_estimators=10),
}
HEADS = list(FAST)
IDS = [cls.__name__ for cls in HEADS]

# {head class: {check name: why it is expected to fail}}; at most 3 per head
EXPECTED_FAILURES = {
    LinearHead: {
        "check_class_weight_classifiers": (
            "very noisy blobs (std 20) with weights {0: 1000, others: 1e-4}: the weighted validation "
            "accuracy that picks the epoch saturates at 1.0 on the ~2 class-0 clips of a 15% validation "
            "split before the linear layer has moved every test point to class 0 (~64-86% instead of "
            "> 87%); that the loss and the selection use the weights is tested below"),
    },
    MLPHead: {},
    LogRegHead: {},
    LGBMHead: {},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and far faster on a busy 2-core machine (no spin-waiting)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def make(cls, **kw):
    return cls(**{**FAST[cls], **kw})


# ---- check_estimator -----------------------------------------------------------------------------

@pytest.mark.skipif("on_fail" not in inspect.signature(check_estimator).parameters,
                    reason="check_estimator(on_fail=None) needs scikit-learn >= 1.6")
@pytest.mark.parametrize("cls", HEADS, ids=IDS)
def test_check_estimator(cls):
    expected = EXPECTED_FAILURES[cls]
    assert len(expected) <= 3 and all(reason.strip() for reason in expected.values())
    results = check_estimator(make(cls), expected_failed_checks=expected, on_fail=None, on_skip=None)
    assert len(results) > 40  # the suite ran
    failed = {r["check_name"]: f"{type(r['exception']).__name__}: {r['exception']}"
              for r in results if r["status"] == "failed"}
    assert not failed, f"{cls.__name__} fails checks that are not expected to fail: {failed}"
    for name in expected:
        statuses = [r["status"] for r in results if r["check_name"] == name]
        assert statuses, f"{name} is listed as an expected failure of {cls.__name__} but no longer runs"
        assert "passed" not in statuses, (f"{name} now passes for {cls.__name__}: remove it from "
                                          "EXPECTED_FAILURES")


# ---- class weights: the one rule ---------------------------------------------------------------

def test_per_class_weights_rules():
    classes = np.array(["a", "b", "c"])
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    n, counts = len(y), np.array([60.0, 30.0, 10.0])
    np.testing.assert_array_equal(per_class_weights(None, y, classes), np.ones(3))
    balanced = per_class_weights("balanced", y, classes)
    np.testing.assert_allclose(balanced, n / (3 * counts))
    np.testing.assert_allclose(balanced, compute_class_weight("balanced", classes=np.arange(3), y=y))
    paper = per_class_weights("paper", y, classes)
    expected = counts ** -0.2
    np.testing.assert_allclose(paper, expected / expected.mean())
    np.testing.assert_allclose(per_class_weights({"c": 10, "a": 0.5}, y, classes), [0.5, 1.0, 10.0])
    # a class absent from the labels the loss sees weighs 0 under the rules
    assert per_class_weights("balanced", np.array([0, 0, 2]), classes)[1] == 0.0
    for bad, match in [("balance", "class_weight"), ({"d": 1.0}, "class_weight"), ({"a": -1.0}, "class_weight"),
                       ({"a": np.nan}, "class_weight"), ([1, 2, 3], "class_weight"),
                       ({"a": 0, "b": 0, "c": 0}, "class_weight")]:
        with pytest.raises(ValueError, match=match):
            per_class_weights(bad, y, classes)


def imbalanced(n=600, seed=0, L=None):
    """Two overlapping classes, 'a' four times as frequent as 'b' (b is the minority)."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.8, "a", "b")
    X = rng.standard_normal((n, 4)).astype(np.float32)
    X[:, 0] += 1.2 * (y == "b")
    if L is not None:
        X = np.repeat(X[:, None], L, axis=1) + 0.1 * rng.standard_normal((n, L, 4)).astype(np.float32)
    return X, y


TORCH_FAST = dict(epochs=30, lr=5e-2, batch_size=64, patience=30)


@pytest.mark.parametrize("cls", [LinearHead, MLPHead], ids=["linear", "mlp"])
def test_torch_heads_weight_their_loss(cls, monkeypatch):
    X, y = imbalanced(L=2)
    Xv, yv = imbalanced(n=300, seed=1, L=2)
    kw = dict(TORCH_FAST, **({"hidden": 16} if cls is MLPHead else {}))
    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weight"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    heads, expected_weights = {}, {}
    for cw in (None, "balanced", {"b": 10.0}, "paper"):
        seen.clear()
        heads[str(cw)] = head = cls(class_weight=cw, **kw).fit(X, y, eval_set=(Xv, yv))
        weights = {None if w is None else tuple(w.tolist()) for w in seen}
        assert len(seen) > 0 and len(weights) == 1  # the same weights in every loss call
        (w,) = weights
        n_a, n_b = (y == "a").sum(), (y == "b").sum()
        expected = {"None": None,
                    "balanced": (len(y) / (2 * n_a), len(y) / (2 * n_b)),  # n / (C * n_c), from the training y
                    "{'b': 10.0}": (1.0, 10.0),
                    "paper": tuple(np.array([n_a, n_b]) ** -0.2 / np.mean(np.array([n_a, n_b]) ** -0.2))}[str(cw)]
        if expected is None:
            assert w is None
        else:
            assert w is not None, f"class_weight={cw!r}: the loss is not weighted"
            np.testing.assert_allclose(w, expected, rtol=1e-6, err_msg=f"class_weight={cw!r}")
        expected_weights[str(cw)] = np.ones(2) if expected is None else np.array(expected)
    last = {k: (h.module_.head.weight if cls is LinearHead else h.module_.head[0].weight).detach().numpy()
            for k, h in heads.items()}
    assert not np.allclose(last["None"], last["balanced"]) and not np.allclose(last["None"], last["{'b': 10.0}"])
    # the weights move predictions towards the minority class
    share_b = {k: np.mean(h.predict(Xv) == "b") for k, h in heads.items()}
    assert share_b["balanced"] > share_b["None"] + 0.1, share_b
    assert share_b["{'b': 10.0}"] > share_b["None"] + 0.2, share_b
    for k, h in heads.items():  # the weights used are reported
        np.testing.assert_allclose(h.class_weight_, expected_weights[k], rtol=1e-12)


def test_torch_class_weights_come_from_the_training_part():
    """Without an eval_set the validation part is carved out first; the weights count the rest."""
    X, y = imbalanced(n=200)
    head = LinearHead(class_weight="balanced", epochs=2, validation_fraction=0.25).fit(X, y)
    idx = np.random.default_rng(head.seed).permutation(len(y))[50:]  # the head's own split (seed, 25%)
    yt = y[idx]
    n_a, n_b = (yt == "a").sum(), (yt == "b").sum()
    np.testing.assert_allclose(head.class_weight_, [len(yt) / (2 * n_a), len(yt) / (2 * n_b)])
    assert not np.allclose(head.class_weight_, compute_class_weight("balanced", classes=np.array(["a", "b"]), y=y))


@pytest.mark.parametrize("cw", ["balanced", "paper", {"b": 3.0}], ids=["balanced", "paper", "dict"])
def test_logreg_weights_agree_with_scikit_learn(cw):
    X, y = imbalanced(n=300)
    head = LogRegHead(class_weight=cw).fit(X, y)
    classes = np.array(["a", "b"])
    if cw == "balanced":
        expected = compute_class_weight("balanced", classes=classes, y=y)
    elif cw == "paper":
        c = np.array([(y == "a").sum(), (y == "b").sum()]) ** -0.2
        expected = c / c.mean()
    else:
        expected = np.array([1.0, 3.0])
    np.testing.assert_allclose(head.class_weight_, expected)
    assert head.model_[-1].class_weight == pytest.approx(dict(zip(classes, expected)))
    ref = LogisticRegression(max_iter=2000, random_state=0, class_weight=cw if cw == "balanced" else
                             dict(zip(classes, expected))).fit(StandardScaler().fit_transform(X), y)
    np.testing.assert_allclose(head.model_[-1].coef_, ref.coef_, rtol=1e-5, atol=1e-6)
    unweighted = LogRegHead().fit(X, y)
    assert np.mean(head.predict(X) == "b") > np.mean(unweighted.predict(X) == "b")


def test_lgbm_uses_the_weights():
    X, y = imbalanced(n=300)
    plain = LGBMHead(n_estimators=30).fit(X, y)
    heavy = LGBMHead(n_estimators=30, class_weight={"b": 10.0}).fit(X, y)
    assert heavy.model_[-1].class_weight == {"a": 1.0, "b": 10.0}
    assert np.mean(heavy.predict(X) == "b") > np.mean(plain.predict(X) == "b") + 0.1


# ---- hyperparameter and input checks ------------------------------------------------------------

def data(n=60, L=None, D=5, C=2, seed=0, labels="str"):
    rng = np.random.default_rng(seed)
    yi = np.arange(n) % C
    X = rng.standard_normal((n, D) if L is None else (n, L, D)).astype(np.float32)
    X[..., 0] += 3.0 * yi[:, None] if L is not None else 3.0 * yi
    y = np.array([f"c{v}" for v in yi]) if labels == "str" else yi * 10 + 1
    return X, y


BAD_PARAMS = {
    LinearHead: [("lr", -1.0), ("lr", "abc"), ("lr", []), ("epochs", 0), ("epochs", 2.5), ("batch_size", 0),
                 ("patience", 0), ("validation_fraction", 1.5), ("validation_fraction", 0.0), ("weight_decay", -1.0),
                 ("layers", "some"), ("layers", [])],
    MLPHead: [("lr", 0.0), ("epochs", -1), ("batch_size", None), ("patience", "3"), ("validation_fraction", -0.1),
              ("hidden", 0), ("dropout", 1.0), ("layers", "each")],
    LogRegHead: [("features", "max"), ("features", -1), ("C", 0.0), ("max_iter", 0)],
    LGBMHead: [("features", "first"), ("n_estimators", 0), ("learning_rate", -0.1), ("num_leaves", 1)],
}


@pytest.mark.parametrize("cls", HEADS, ids=IDS)
def test_bad_hyperparameters_raise_at_fit_naming_the_parameter(cls):
    X, y = data()
    for name, value in BAD_PARAMS[cls]:
        head = make(cls).set_params(**{name: value})
        with pytest.raises(ValueError, match=name):
            head.fit(X, y)
        assert not hasattr(head, "classes_")
    for cw in ("balance", {"c9": 1.0}, {"c0": -1.0}):
        with pytest.raises(ValueError, match="class_weight"):
            make(cls, class_weight=cw).fit(X, y)
    # a layer index out of range is found against the data
    key = "layers" if cls in (LinearHead, MLPHead) else "features"
    with pytest.raises(ValueError, match=key):
        make(cls, **{key: 3 if key == "features" else [0, 3]}).fit(*data(L=2))


@pytest.mark.parametrize("cls", HEADS, ids=IDS)
def test_bad_inputs_raise(cls):
    X, y = data(n=200)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        make(cls).fit(X[:150], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        make(cls).fit(data(n=200, L=3)[0][:150], y)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            make(cls).fit(Xb, y)
        with pytest.raises(ValueError, match="NaN|infinity"):
            make(cls).fit(X, y, eval_set=(Xb, y))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        make(cls).fit(X, y, eval_set=(X[:10], y[:12]))
    with pytest.raises(ValueError, match="features"):
        make(cls).fit(X, y, eval_set=(X[:, :3], y))
    with pytest.raises(ValueError, match="1D|2D"):
        make(cls).fit(X[:, 0], y)
    with pytest.raises(ValueError, match="4D"):
        make(cls).fit(X[:, None, None, :], y)
    with pytest.raises(ValueError, match="class"):  # one class only
        make(cls).fit(X, np.full(len(X), "c0"))
    with pytest.raises(ValueError, match="Unknown label type"):  # continuous target
        make(cls).fit(X, np.linspace(0, 1, len(X)))


@pytest.mark.parametrize("cls", HEADS, ids=IDS)
def test_not_fitted_and_feature_count_checked_at_prediction(cls):
    X, y = data(L=3)
    head = make(cls)
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(NotFittedError):
            getattr(head, method)(X)
    head.fit(X, y)
    assert head.n_layers_in_ == 3 and head.n_features_in_ == 5
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(ValueError, match="X has 4 features, but .* is expecting 5 features"):
            getattr(head, method)(X[..., :4])
        with pytest.raises(ValueError, match="X has 2 layers, but .* is expecting 3 layers"):
            getattr(head, method)(X[:, :2])
        with pytest.raises(ValueError, match="X has 1 layers"):  # a 2-D X is one layer
            getattr(head, method)(X[:, 0])
        with pytest.raises(ValueError, match="NaN"):
            getattr(head, method)(np.where(np.arange(5) == 2, np.nan, X))


@pytest.mark.parametrize("cls", HEADS, ids=IDS)
@pytest.mark.parametrize("labels", ["str", "int"])
def test_decision_function_shapes(cls, labels):
    X, y = data(n=80, labels=labels)
    head = make(cls).fit(X, y)
    assert list(head.classes_) == sorted(set(y.tolist()))
    d, p = head.decision_function(X), head.predict_proba(X)
    assert d.shape == (80,) and p.shape == (80, 2)
    np.testing.assert_array_equal(head.classes_[(d > 0).astype(int)], head.predict(X))
    np.testing.assert_allclose(p[:, 1], expit(d), rtol=1e-6, atol=1e-12)  # d: the log-odds of classes_[1]
    assert head.score(X, y) > 0.8
    X3, y3 = data(n=90, C=3, labels=labels)
    head = make(cls).fit(X3, y3)
    d = head.decision_function(X3)
    assert d.shape == (90, 3) and head.predict_proba(X3).shape == (90, 3)
    np.testing.assert_array_equal(head.classes_[d.argmax(1)], head.predict(X3))
    np.testing.assert_allclose(head.predict_proba(X3), softmax(d, axis=1), rtol=1e-5, atol=1e-9)  # d: logits


# ---- [N, L, D] input, fitted attributes ---------------------------------------------------------

@pytest.mark.parametrize("cls", HEADS, ids=IDS)
def test_three_d_input_clone_pickle_reproducible(cls):
    X, y = data(n=80, L=3)
    head = make(cls, class_weight={"c1": 2.0})
    params = head.get_params()
    fitted = head.fit(X, y)
    assert fitted is head and head.get_params() == params  # fit returns self, leaves params alone
    assert head.n_layers_in_ == 3 and head.n_features_in_ == 5 and head.layers_used_ == [0, 1, 2]
    again = clone(head)
    assert not hasattr(again, "classes_") and again.get_params() == params
    np.testing.assert_array_equal(again.fit(X, y).predict_proba(X), head.predict_proba(X))  # seeded
    back = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))
    two_d = make(cls).fit(X[:, 0], y)
    assert two_d.n_layers_in_ == 1 and two_d.n_features_in_ == 5 and two_d.layers_used_ == [0]
    # a 2-D X and the same data as [N, 1, D] are one input
    np.testing.assert_allclose(two_d.predict_proba(X[:, :1]), two_d.predict_proba(X[:, 0]))


def test_layers_used_are_stored_layer_indices():
    X, y = data(n=80, L=4)
    assert LinearHead(layers=[1, 3], **FAST[LinearHead]).fit(X, y).layers_used_ == [1, 3]
    assert LinearHead(layers=2, **FAST[LinearHead]).fit(X, y).layers_used_ == [2]
    each = LinearHead(layers="each", **FAST[LinearHead]).fit(X, y)
    assert each.layers_used_ == [0, 1, 2, 3] and each.layer_scores_.shape == (4,)
    head = MLPHead(layers=[0, 2], **FAST[MLPHead]).fit(X, y)
    assert head.layers_used_ == [0, 2] and head.layer_weights_.shape == (2,)
    assert LogRegHead(features=1).fit(X, y).layers_used_ == [1]
    assert LGBMHead(features="mean", n_estimators=5).fit(X, y).layers_used_ == [0, 1, 2, 3]


def informative_layer_problem(n=240, L=4, D=6, layer=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, L, D)).astype(np.float32)
    X[:, layer, :3] += 2.0 * np.eye(3)[y]
    return X, np.array(["x", "y", "z"])[y]


@pytest.mark.parametrize("cls", [LogRegHead, LGBMHead], ids=["logreg", "lgbm"])
def test_layer_importance_finds_the_informative_layer(cls):
    X, y = informative_layer_problem()
    kw = {} if cls is LogRegHead else dict(n_estimators=30)
    head = cls(features="concat", **kw).fit(X, y)
    imp = head.layer_importance_
    assert imp.shape == (4,) and np.isclose(imp.sum(), 1.0) and np.all(imp >= 0)
    assert int(np.argmax(imp)) == 2 and imp[2] > 0.5, imp
    assert not hasattr(head, "layer_weights_")
    for features in ("mean", 2):  # nothing per layer to report
        other = cls(features=features, **kw).fit(X, y)
        assert not hasattr(other, "layer_importance_") and not hasattr(other, "layer_weights_")


def test_torch_heads_keep_learned_layer_weights():
    X, y = informative_layer_problem()
    head = LinearHead(epochs=40, lr=5e-2, patience=40).fit(X, y)
    assert head.layer_weights_.shape == (4,) and np.isclose(head.layer_weights_.sum(), 1.0)
    assert int(np.argmax(head.layer_weights_)) == 2


def test_eval_set_labels_must_be_known_to_torch_heads():
    X, y = data()
    with pytest.raises(ValueError, match="not seen in training"):
        make(LinearHead).fit(X, y, eval_set=(X[:5], np.array(["c0", "c1", "new", "c0", "c1"])))


def test_heads_pickled_before_this_contract_still_predict():
    """Old pickles: no layers_used_; torch heads counted only the selected layers in n_layers_in_;
    logreg/lgbm carried a placeholder layer_weights_."""
    X, y = data(n=80, L=3)
    for head, old_extra in [(LinearHead(layers=[0, 2], **FAST[LinearHead]), {"n_layers_in_": 2}),
                            (MLPHead(**FAST[MLPHead]), {}),
                            (LogRegHead(features=1), {"layer_weights_": np.eye(3)[1]}),
                            (LGBMHead(features="concat", n_estimators=5), {"layer_weights_": np.full(3, 1 / 3)})]:
        head.fit(X, y)
        state = {k: v for k, v in head.__getstate__().items() if k not in ("layers_used_", "class_weight_")}
        state.update(old_extra)
        old = type(head).__new__(type(head))
        old.__setstate__(state)
        assert old.layers_used_ == head.layers_used_
        assert hasattr(old, "layer_weights_") == isinstance(head, (LinearHead, MLPHead))
        np.testing.assert_array_equal(old.predict_proba(X), head.predict_proba(X))

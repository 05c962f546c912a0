"""Clip-level classification heads with the scikit-learn estimator API.

X is [N, L, D] (pooled hidden states of N clips: ``store.pooled(backbone)``) and y holds N labels
of any type. Because mean pooling over time commutes with the weighted layer sum and with an affine
layer, the ``linear`` head trained on pooled features is exactly the mean-pooled version of the
frame-level linear head (tested), so clip tasks never read frames.

- :class:`LinearHead` (``linear``): softmax layer weights -> linear layer. ``layers="each"`` fits
  one probe per layer in one pass and reports the curve.
- :class:`MLPHead` (``mlp``): softmax layer weights -> MLP (512 hidden, dropout 0.2 by default).
- :class:`LogRegHead` (``logreg``), :class:`LGBMHead` (``lgbm``): scikit-learn logistic regression /
  LightGBM on one layer, the layer mean, or all layers concatenated, after standardisation.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from heads.modules import LayerSweepLinear, SumThenHead
from heads.persist import SaveLoadMixin
from heads.training import class_weights, lr_grid, sweep_lr


def _as_3d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise ValueError(f"expected X of shape [N, L, D] (or [N, D]), got {X.shape}")
    return X


def _select_layers(X: np.ndarray, layers) -> np.ndarray:
    if layers is None or isinstance(layers, str):
        return X
    return X[:, list(np.atleast_1d(layers))]


class _TorchClipClassifier(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Shared fit/predict of the torch clip heads. Subclasses build the module in ``_make_head``."""

    def _make_head(self, dim: int, n_classes: int) -> torch.nn.Module:
        raise NotImplementedError

    def _split_validation(self, X, y, eval_set):
        if eval_set is not None:
            Xv, yv = eval_set
            return X, y, _as_3d(Xv), self._encode(yv)
        rng = np.random.default_rng(self.seed)
        idx = rng.permutation(len(X))
        n_val = max(1, int(round(self.validation_fraction * len(X))))
        return X[idx[n_val:]], y[idx[n_val:]], X[idx[:n_val]], y[idx[:n_val]]

    def _encode(self, y) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes_)}
        try:
            return np.array([index[v] for v in np.asarray(y)], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} was not seen in training") from None

    def fit(self, X, y, eval_set=None):
        """X [N, L, D], y [N]; ``eval_set=(X_val, y_val)`` for early stopping and the lr choice
        (default: a ``validation_fraction`` of the training data)."""
        X = _select_layers(_as_3d(X), self.layers)
        self.classes_ = np.unique(np.asarray(y))
        yi = self._encode(y)
        Xt, yt, Xv, yv = self._split_validation(X, yi, eval_set)
        if eval_set is not None:
            Xv = _select_layers(Xv, self.layers)
        self.n_layers_in_, self.n_features_in_ = X.shape[1], X.shape[2]
        C = len(self.classes_)
        dev = torch.device(self.device)
        xt, ytt = torch.from_numpy(Xt).to(dev), torch.from_numpy(yt).to(dev)
        xv = torch.from_numpy(Xv).to(dev)
        w = None
        if self.class_weight == "paper":
            w = torch.tensor(class_weights(yt, C), dtype=torch.float32, device=dev)
        sweep = self.layers == "each"

        def loss_fn(module, idx):
            out = module(xt[idx])
            if sweep:  # [B, L, C]: one loss per probe, summed
                return sum(torch.nn.functional.cross_entropy(out[:, l], ytt[idx], weight=w)
                           for l in range(out.shape[1]))
            return torch.nn.functional.cross_entropy(out, ytt[idx], weight=w)

        def batches(gen):
            perm = torch.randperm(len(xt), generator=gen)
            return [perm[i:i + self.batch_size].to(dev) for i in range(0, len(perm), self.batch_size)]

        def evaluate(module):
            out = module(xv)
            if sweep:
                acc = (out.argmax(-1).cpu().numpy() == yv[:, None]).mean(0)
                # each probe keeps its own best epoch (kept on the module: one record per lr of the grid)
                if not hasattr(module, "best_probe"):
                    module.best_probe = {"acc": np.full(len(acc), -1.0), "w": module.weight.detach().clone(),
                                         "b": module.bias.detach().clone()}
                store = module.best_probe
                better = torch.from_numpy(acc > store["acc"])
                store["w"][better] = module.weight.detach()[better]
                store["b"][better] = module.bias.detach()[better]
                store["acc"] = np.maximum(acc, store["acc"])
                return float(acc.mean())
            return float((out.argmax(-1).cpu().numpy() == yv).mean())

        def make_module():
            if sweep:
                return LayerSweepLinear(X.shape[1], X.shape[2], C).to(dev)
            return SumThenHead(X.shape[1], X.shape[2], self._make_head(X.shape[2], C), self.layer_norm).to(dev)

        module, lr, scores, res = sweep_lr(make_module, lr_grid(self.lr), self.seed, loss_fn=loss_fn,
                                           batches=batches, evaluate=evaluate, epochs=self.epochs,
                                           patience=self.patience, weight_decay=self.weight_decay,
                                           progress=self.progress)
        self.module_, self.lr_, self.lr_scores_, self.history_ = module.cpu().eval(), lr, scores, res.history
        self.best_epoch_ = res.best_epoch
        if sweep:
            kept = module.best_probe
            del module.best_probe
            with torch.no_grad():
                self.module_.weight.copy_(kept["w"].cpu())
                self.module_.bias.copy_(kept["b"].cpu())
                out = self.module_(torch.from_numpy(Xv))
            self.layer_scores_ = (out.argmax(-1).numpy() == yv[:, None]).mean(0)
            self.best_layer_ = int(np.argmax(self.layer_scores_))
            self.layer_weights_ = np.eye(X.shape[1])[self.best_layer_]
        else:
            self.layer_weights_ = self.module_.sum.weights().detach().numpy()
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits [N, C]."""
        X = _select_layers(_as_3d(X), self.layers)
        with torch.no_grad():
            out = self.module_(torch.from_numpy(X))
        if self.layers == "each":
            out = out[:, self.best_layer_]
        return out.numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [N, C] (columns in ``classes_`` order)."""
        z = self.decision_function(X)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]


class LinearHead(_TorchClipClassifier):
    """Softmax-weighted sum of layers (optional per-layer LayerNorm), then one linear layer.

    Parameters: lr (float, list or "1e-4,1e-3": a grid chosen on validation), epochs, batch_size,
    patience (early stopping, epochs), layer_norm, layers (None = all, list of layer indices, or
    "each" = one probe per layer in one pass), class_weight (None or "paper": 1/n_c^0.2),
    validation_fraction, weight_decay, seed, device, progress.

    Learned: ``classes_``, ``layer_weights_`` [L], ``module_``, ``lr_``, ``lr_scores_``,
    ``history_``, ``best_epoch_``; with layers="each" also ``layer_scores_`` [L], ``best_layer_``.
    """

    def __init__(self, lr=3e-3, epochs=100, batch_size=64, patience=15, layer_norm=False, layers=None,
                 class_weight=None, validation_fraction=0.15, weight_decay=0.0, seed=0, device="cpu",
                 progress=False):
        self.lr, self.epochs, self.batch_size, self.patience = lr, epochs, batch_size, patience
        self.layer_norm, self.layers, self.class_weight = layer_norm, layers, class_weight
        self.validation_fraction, self.weight_decay, self.seed = validation_fraction, weight_decay, seed
        self.device, self.progress = device, progress

    def _make_head(self, dim, n_classes):
        return torch.nn.Linear(dim, n_classes)


class MLPHead(_TorchClipClassifier):
    """Softmax-weighted sum of layers, then Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, C).
    Defaults follow MARBLE's constrained track: one hidden layer of 512, dropout 0.2. Other
    parameters as :class:`LinearHead`."""

    def __init__(self, hidden=512, dropout=0.2, lr=3e-3, epochs=100, batch_size=64, patience=15, layer_norm=False,
                 layers=None, class_weight=None, validation_fraction=0.15, weight_decay=0.0, seed=0, device="cpu",
                 progress=False):
        self.hidden, self.dropout = hidden, dropout
        self.lr, self.epochs, self.batch_size, self.patience = lr, epochs, batch_size, patience
        self.layer_norm, self.layers, self.class_weight = layer_norm, layers, class_weight
        self.validation_fraction, self.weight_decay, self.seed = validation_fraction, weight_decay, seed
        self.device, self.progress = device, progress

    def _make_head(self, dim, n_classes):
        return torch.nn.Sequential(torch.nn.Linear(dim, self.hidden), torch.nn.ReLU(),
                                   torch.nn.Dropout(self.dropout), torch.nn.Linear(self.hidden, n_classes))

    def fit(self, X, y, eval_set=None):
        if self.layers == "each":
            raise ValueError("layers='each' is a linear-probe sweep: use LinearHead (--head linear)")
        return super().fit(X, y, eval_set)


class _PooledSklearnHead(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Standardise pooled features of one layer (int), the layer mean ("mean") or all layers
    concatenated ("concat"), then a scikit-learn-style classifier."""

    def _features(self, X) -> np.ndarray:
        X = _as_3d(X)
        if self.features == "concat":
            return X.reshape(len(X), -1)
        if self.features == "mean":
            return X.mean(1)
        return X[:, int(self.features)]

    def _make_model(self, class_weight):
        raise NotImplementedError

    def _class_weight(self, y: np.ndarray):
        """None, sklearn's "balanced" (1/n_c), or "paper": {class: 1/n_c^0.2} as the torch heads use."""
        if self.class_weight == "paper":
            classes, yi = np.unique(y, return_inverse=True)
            return dict(zip(classes, class_weights(yi, len(classes))))
        return self.class_weight

    def fit(self, X, y, eval_set=None):
        """X [N, L, D], y [N]. ``eval_set`` is accepted for API symmetry and not used."""
        X3 = _as_3d(X)
        y = np.asarray(y)
        self.n_layers_in_, self.n_features_in_ = X3.shape[1], X3.shape[2]
        if self.features not in ("concat", "mean") and not 0 <= int(self.features) < X3.shape[1]:
            raise ValueError(f"features={self.features!r}: layer out of range 0..{X3.shape[1] - 1}")
        self.model_ = make_pipeline(StandardScaler(), self._make_model(self._class_weight(y)))
        self.model_.fit(self._features(X3), y)
        self.classes_ = self.model_.classes_
        L = X3.shape[1]
        if self.features == "concat" or self.features == "mean":
            self.layer_weights_ = np.full(L, 1.0 / L)
        else:
            self.layer_weights_ = np.eye(L)[int(self.features)]
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(self._features(X))

    def decision_function(self, X):
        return np.log(np.clip(self.predict_proba(X), 1e-12, None))

    def predict(self, X):
        return self.model_.predict(self._features(X))


class LogRegHead(_PooledSklearnHead):
    """Logistic regression (lbfgs, L2 with inverse strength ``C``) on standardised pooled features.
    class_weight: None, "balanced" (1/n_c) or "paper" (1/n_c^0.2)."""

    def __init__(self, features="mean", C=1.0, max_iter=2000, class_weight=None, seed=0):
        self.features, self.C, self.max_iter, self.class_weight, self.seed = features, C, max_iter, class_weight, seed

    def _make_model(self, class_weight):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=class_weight, random_state=self.seed)


class LGBMHead(_PooledSklearnHead):
    """LightGBM gradient boosting on standardised pooled features."""

    def __init__(self, features="mean", n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=5,
                 class_weight=None, seed=0):
        self.features, self.n_estimators, self.learning_rate = features, n_estimators, learning_rate
        self.num_leaves, self.min_child_samples, self.class_weight, self.seed = (num_leaves, min_child_samples,
                                                                               class_weight, seed)

    def _make_model(self, class_weight):
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                              num_leaves=self.num_leaves, min_child_samples=self.min_child_samples,
                              class_weight=class_weight, random_state=self.seed, n_jobs=1, verbose=-1, deterministic=True,
                              force_col_wise=True)

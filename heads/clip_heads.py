"""Clip-level classification heads with the scikit-learn estimator API.

X is [N, L, D] (pooled hidden states of N clips: ``store.pooled(backbone)``) or [N, D] (one layer:
treated as L = 1), and y holds N labels of any type (strings or ints). Because mean pooling over
time commutes with the weighted layer sum and with an affine layer, the ``linear`` head trained on
pooled features is exactly the mean-pooled version of the frame-level linear head (tested), so
clip tasks never read frames.

- :class:`LinearHead` (``linear``): softmax layer weights -> linear layer. ``layers="each"`` fits
  one probe per layer in one pass and reports the curve.
- :class:`MLPHead` (``mlp``): softmax layer weights -> MLP (512 hidden, dropout 0.2 by default).
- :class:`LogRegHead` (``logreg``), :class:`LGBMHead` (``lgbm``): scikit-learn logistic regression /
  LightGBM on one layer, the layer mean, or all layers concatenated, after standardisation.

The scikit-learn contract every head keeps (``tests/test_estimator_contract.py`` runs
``check_estimator``):

- hyperparameters are validated when ``fit`` starts (ValueError naming the parameter) and never
  modified by it; ``fit`` returns self; ``get_params`` / ``set_params`` / ``clone`` / pickle work;
  fits are reproducible under ``seed``;
- X and y (and an ``eval_set``) are checked: same number of rows, finite numbers, not sparse,
  2-D [N, D] or 3-D [N, L, D], at least two classes, classification (not continuous) targets;
- after fit: ``classes_``, ``n_layers_in_`` (L; 1 for a 2-D X) and ``n_features_in_`` (D, the
  features per layer: for a 3-D X this is *not* the flattened L * D), ``class_weight_`` [C] (the
  weight of each class actually used), ``layers_used_`` (the stored layer indices the head reads);
  predict / predict_proba / decision_function raise NotFittedError before fit and ValueError when
  L or D differ from fit;
- ``predict_proba`` is [N, C]; ``decision_function`` is [N, C] logits, except for two classes
  where it is [N]: the score of ``classes_[1]`` (logit difference / log-odds), as in scikit-learn.

``class_weight`` is None, "balanced" (n / (C n_c)), "paper" (1 / n_c^0.2) or a dict {label: weight}
for every head, all through :func:`heads.training.per_class_weights` (the torch heads weight their
cross-entropy with it, computed on the training labels; logistic regression / LightGBM get the
same weights as a dict).
"""
from __future__ import annotations


import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6
    def validate_data(_estimator, X="no_validation", y="no_validation", reset=True, **check_params):
        return _estimator._validate_data(X, y, reset=reset, **check_params)

from heads.head_codec import SaveLoadMixin
from heads.modules import LayerSweepLinear, SumThenHead, masked_mean
from heads.params import (BOOL, AnyOf, ClassWeight, Free, Grid, Int, LayerSelection, Options, Real,
                          grid_values, is_int, validate_params)
from heads.trained_module import adopt_trained_module
from heads.training import lr_grid, per_class_weights, sweep_lr

# X: numbers as float32, finite, dense, 2-D or 3-D (the dimension is checked by _to_3d)
_X_CHECKS = dict(accept_sparse=False, dtype=np.float32, allow_nd=True, ensure_2d=False)


# ---- data checks (the hyperparameters: heads.params, declared per head) ------------------------------ -----------------------------------------------------------------------------

def _to_3d(X: np.ndarray, what: str = "X") -> np.ndarray:
    """A checked array [N, D] or [N, L, D] -> [N, L, D] (a 2-D X is one layer)."""
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise ValueError(f"Expected a 2D array [N, D] or a 3D array [N, L, D] for {what}, got a {X.ndim}D array "
                         f"of shape {X.shape} instead. Reshape your data either using array.reshape(-1, 1) if "
                         "your data has a single feature or array.reshape(1, -1) if it contains a single sample.")
    if X.shape[1] == 0 or X.shape[2] == 0:
        raise ValueError(f"{what} of shape {X.shape}: 0 layers or 0 feature(s); a minimum of 1 is required.")
    return X


def _writeable(X: np.ndarray) -> np.ndarray:
    """torch.from_numpy wants a writeable array (read-only memmaps are copied)."""
    return X if X.flags.writeable else np.array(X)


def _encode(y, classes) -> np.ndarray:
    index = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    try:
        return np.array([index[v] for v in np.asarray(y).tolist()], dtype=np.int64)
    except (KeyError, TypeError) as e:
        raise ValueError(f"label {e.args[0]!r} was not seen in training") from None


class _ClipInput:
    """Input checks shared by every clip head (fit and prediction)."""

    def _check_fit_data(self, X, y):
        """-> (X [N, L, D] float32, y [N], classes [C], encoded y [N])."""
        X, y = validate_data(self, X, y, reset=True, **_X_CHECKS)
        X = _to_3d(X)
        check_classification_targets(y)
        classes, yi = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, but the data "
                             f"contains only one class: {classes[0]!r}")
        return X, y, classes, yi.reshape(-1).astype(np.int64)

    def _check_shape(self, X: np.ndarray, what: str = "X", n_layers=None, n_features=None):
        L, D = X.shape[1], X.shape[2]
        n_layers = self.n_layers_in_ if n_layers is None else n_layers
        n_features = self.n_features_in_ if n_features is None else n_features
        name = type(self).__name__
        if D != n_features:
            raise ValueError(f"{what} has {D} features, but {name} is expecting {n_features} features as input "
                             "(features per layer: the last axis of [N, L, D])")
        if n_layers is not None and L != n_layers:  # (None: a head pickled before L was recorded)
            raise ValueError(f"{what} has {L} layers, but {name} is expecting {n_layers} layers as input "
                             "(X is [N, L, D]; a 2-D X is one layer)")

    def _check_eval_set(self, eval_set, n_layers, n_features):
        """-> (X_val [N, L, D], y_val) checked like the training data (labels are not encoded)."""
        try:
            Xv, yv = eval_set
        except (TypeError, ValueError):
            raise ValueError("eval_set must be a pair (X_val, y_val)") from None
        Xv, yv = check_X_y(Xv, yv, estimator=self, **_X_CHECKS)
        Xv = _to_3d(Xv, "eval_set X")
        self._check_shape(Xv, "eval_set X", n_layers, n_features)
        return Xv, yv

    def _check_predict_data(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, **_X_CHECKS)
        X = _to_3d(X)
        self._check_shape(X)
        return X


# ---- torch heads -----------------------------------------------------------------------------

class _TorchClipClassifier(_ClipInput, SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Shared fit/predict of the torch clip heads. Subclasses build the layers after the layer sum in
    ``_make_head``.

    The public interface a trainer outside this module uses (``heads.finetune`` trains the module
    together with a frontend), and that :meth:`fit` uses itself:

    - :meth:`build_module` ``(n_layers, dim, n_classes)``: the untrained module, [B, L, D] -> [B, C];
    - :meth:`module_loss` ``(module, x, targets, mask=None, class_weight=None)``: its training loss;
    - :meth:`from_trained_module`: a fitted head around a module trained elsewhere.
    """

    def _make_head(self, dim: int, n_classes: int) -> torch.nn.Module:
        raise NotImplementedError

    def build_module(self, n_layers: int, dim: int, n_classes: int) -> torch.nn.Module:
        """The untrained module this head trains: x [B, L, D] (pooled hidden states of ``n_layers``
        layers of ``dim`` features) -> logits [B, ``n_classes``]: softmax layer weights (``.sum``, a
        :class:`heads.modules.WeightedLayerSum`; per-layer LayerNorm with ``layer_norm``), then the
        head's own layers (``.head``)."""
        return SumThenHead(int(n_layers), int(dim), self._make_head(int(dim), int(n_classes)), self.layer_norm)

    @staticmethod
    def module_loss(module: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                    class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The mean cross-entropy (a scalar tensor) of ``module``'s logits [B, C] against ``targets``
        [B] (class indices into ``classes_``, long). ``x``: pooled features [B, L, D]; with ``mask``
        [B, T] (True on valid frames), hidden states [B, T, L, D], mean-pooled over each row's valid
        frames first (mean pooling commutes with the layer sum and an affine layer). ``class_weight``:
        the weight of each class [C] (None: unweighted)."""
        if mask is not None:
            x = masked_mean(x, mask)
        logits = module(x)
        return torch.nn.functional.cross_entropy(logits, targets.to(logits.device), weight=class_weight)

    @classmethod
    def from_trained_module(cls, module: torch.nn.Module, *, classes, class_weights=None, history=(),
                            best_epoch: int = -1, **params):
        """A fitted head whose module is ``module``, trained elsewhere (a :meth:`build_module` module:
        ``heads.finetune`` trains it with the frontend). Its weights are copied into a module built by
        :meth:`build_module` (so it is checked to be one: ValueError otherwise), on the CPU in eval
        mode; ``module`` itself is not changed.

        classes: the labels of the module's C outputs, in order; class_weights: the weight of each
        class [C] its loss used (None: ones; the hyperparameter ``class_weight``, the rule that gave
        them, is one of ``params``); history: per-epoch records (``{"epoch", "val", ...}``,
        ``val`` the selection score); best_epoch: the kept epoch (0-based); params: the head's
        hyperparameters (validated as ``fit`` does; ``lr`` is the one rate the module was trained
        with; ``layers`` must be None: the module reads every layer it is given).

        Sets what ``fit`` sets: ``classes_``, ``class_weight_``, ``layers_used_``, ``n_layers_in_``,
        ``n_features_in_``, ``module_``, ``lr_``, ``lr_scores_`` ({lr: best selection score}),
        ``history_``, ``best_epoch_``, ``layer_weights_``."""
        est = cls(**params)
        est._validate_params()
        classes = np.asarray(classes)
        if len(classes) < 2:
            raise ValueError(f"classes: a classifier needs at least 2 classes, got {len(classes)}")
        cw = np.ones(len(classes)) if class_weights is None else np.asarray(class_weights, dtype=np.float64)
        if cw.shape != (len(classes),):
            raise ValueError(f"class_weights: expected one weight per class ({len(classes)}), got shape {cw.shape}")
        adopt_trained_module(est, module, SumThenHead, lambda L, D: est.build_module(L, D, len(classes)),
                             history=history, best_epoch=best_epoch,
                             built=f"{cls.__name__}.build_module(n_classes={len(classes)})")
        est.classes_, est.class_weight_ = classes, cw
        return est

    def _sweep(self) -> bool:
        return isinstance(self.layers, str) and self.layers == "each"

    def _module_skeleton(self) -> torch.nn.Module:
        """An untrained module of the fitted shape (``heads.persist`` loads the weights into it)."""
        L, D, C = len(self.layers_used_), self.n_features_in_, len(self.classes_)
        if getattr(self, "layer_scores_", None) is not None:  # a layers="each" sweep
            return LayerSweepLinear(L, D, C)
        return self.build_module(L, D, C)

    def __setstate__(self, state):
        """Heads pickled before ``layers_used_`` existed: derive it. Their ``n_layers_in_`` counted
        the selected layers, not the stored ones, so with a layer list it is not checked."""
        if "module_" in state and "layers_used_" not in state:
            state = dict(state)
            layers = state.get("layers")
            if layers is None or isinstance(layers, str):
                state["layers_used_"] = list(range(state["n_layers_in_"]))
            else:
                state["layers_used_"] = [int(i) for i in np.atleast_1d(layers)]
                state["n_layers_in_"] = None
        super().__setstate__(state)

    #: Every constructor parameter and what it may be (:mod:`heads.params`).
    _parameter_constraints = {
        "lr": Grid(Real(0.0)), "epochs": Int(1), "batch_size": Int(1), "patience": Int(1), "layer_norm": BOOL,
        "layers": LayerSelection(("each",)), "class_weight": ClassWeight(), "validation_fraction": Real(0.0, 1.0),
        "weight_decay": Real(0.0, low_inclusive=True), "seed": Int(0), "device": Free(), "progress": BOOL}

    def _validate_params(self) -> list[float]:
        """Check the hyperparameters (ValueError naming the bad one); return the lr grid."""
        validate_params(self)
        return lr_grid(self.lr)

    def _layer_indices(self, n_layers: int) -> list[int]:
        """The stored layers this head reads, checked against the L of X."""
        if self.layers is None or self._sweep():
            return list(range(n_layers))
        idx = [int(i) for i in np.atleast_1d(np.asarray(self.layers, dtype=object))]
        bad = [i for i in idx if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"layers={self.layers!r}: layer(s) {bad} out of range 0..{n_layers - 1}")
        return idx

    @staticmethod
    def _select(X: np.ndarray, idx: list[int]) -> np.ndarray:
        return X if idx == list(range(X.shape[1])) else X[:, idx]

    def fit(self, X, y, eval_set=None):
        """X [N, L, D] or [N, D], y [N]; ``eval_set=(X_val, y_val)`` for early stopping and the lr
        choice (default: a ``validation_fraction`` of the training data). Class weights are computed
        from the labels the loss sees (y, less the validation part when it is carved out); with
        class weights, the validation accuracy that picks the epoch and the lr is weighted the same
        way (with "balanced": balanced accuracy)."""
        lrs = self._validate_params()
        X, y, classes, yi = self._check_fit_data(X, y)
        n_layers, dim = X.shape[1], X.shape[2]
        used = self._layer_indices(n_layers)
        if eval_set is not None:
            Xv, yv = self._check_eval_set(eval_set, n_layers, dim)
            Xt, yt, Xv, yv = X, yi, Xv, _encode(yv, classes)
        else:
            rng = np.random.default_rng(self.seed)
            idx = rng.permutation(len(X))
            n_val = min(len(X) - 1, max(1, int(round(self.validation_fraction * len(X)))))
            Xt, yt, Xv, yv = X[idx[n_val:]], yi[idx[n_val:]], X[idx[:n_val]], yi[idx[:n_val]]
        Xt, Xv = _writeable(self._select(Xt, used)), _writeable(self._select(Xv, used))
        C = len(classes)
        class_weight = per_class_weights(self.class_weight, yt, classes)
        dev = torch.device(self.device)
        xt, ytt = torch.from_numpy(Xt).to(dev), torch.from_numpy(yt).to(dev)
        xv = torch.from_numpy(Xv).to(dev)
        w = None if self.class_weight is None else torch.tensor(class_weight, dtype=torch.float32, device=dev)
        sweep = self._sweep()
        # model selection (epoch, lr, probe) scores the validation clips with the same class weights
        # as the loss (as scikit-learn's HistGradientBoosting does): plain accuracy without weights
        vw = None if w is None else class_weight[yv]
        if vw is not None and not vw.sum() > 0:
            vw = None

        def val_score(correct):  # correct [Nv] or [Nv, L] -> (weighted) accuracy, [] or [L]
            return correct.mean(0) if vw is None else (vw @ correct) / vw.sum()

        def loss_fn(module, idx):
            if sweep:  # [B, L, C]: one loss per probe, summed
                out = module(xt[idx])
                return sum(torch.nn.functional.cross_entropy(out[:, l], ytt[idx], weight=w)
                           for l in range(out.shape[1]))
            return self.module_loss(module, xt[idx], ytt[idx], class_weight=w)

        def batches(gen):
            perm = torch.randperm(len(xt), generator=gen)
            return [perm[i:i + self.batch_size].to(dev) for i in range(0, len(perm), self.batch_size)]

        def evaluate(module):
            out = module(xv)
            if sweep:
                acc = val_score(out.argmax(-1).cpu().numpy() == yv[:, None])
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
            return float(val_score(out.argmax(-1).cpu().numpy() == yv))

        def make_module():
            if sweep:
                return LayerSweepLinear(Xt.shape[1], dim, C).to(dev)
            return self.build_module(Xt.shape[1], dim, C).to(dev)

        module, lr, scores, res = sweep_lr(make_module, lrs, self.seed, loss_fn=loss_fn,
                                           batches=batches, evaluate=evaluate, epochs=self.epochs,
                                           patience=self.patience, weight_decay=self.weight_decay,
                                           progress=self.progress)
        self.classes_, self.class_weight_, self.layers_used_ = classes, class_weight, used
        self.n_layers_in_, self.n_features_in_ = n_layers, dim
        self.module_, self.lr_, self.lr_scores_, self.history_ = module.cpu().eval(), lr, scores, res.history
        self.best_epoch_ = res.best_epoch
        if sweep:
            kept = module.best_probe
            del module.best_probe
            with torch.no_grad():
                self.module_.weight.copy_(kept["w"].cpu())
                self.module_.bias.copy_(kept["b"].cpu())
                out = self.module_(torch.from_numpy(Xv))
            self.layer_scores_ = val_score(out.argmax(-1).numpy() == yv[:, None])
            self.best_layer_ = int(np.argmax(self.layer_scores_))
            self.layer_weights_ = np.eye(Xt.shape[1])[self.best_layer_]
        else:
            self.layer_weights_ = self.module_.sum.weights().detach().numpy()
        return self

    def _logits(self, X) -> np.ndarray:
        """Logits [N, C] (float32)."""
        X = self._check_predict_data(X)
        X = _writeable(self._select(X, self.layers_used_))
        with torch.no_grad():
            out = self.module_(torch.from_numpy(X))
        if isinstance(self.module_, LayerSweepLinear):
            out = out[:, self.best_layer_]
        return out.numpy()

    def decision_function(self, X) -> np.ndarray:
        """Logits [N, C]; for two classes [N]: the logit of ``classes_[1]`` minus that of ``classes_[0]``."""
        z = self._logits(X).astype(np.float64)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [N, C] (columns in ``classes_`` order)."""
        z = self._logits(X).astype(np.float64)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        z = self._logits(X)
        return self.classes_[z.argmax(1)]


class LinearHead(_TorchClipClassifier):
    """Softmax-weighted sum of layers (optional per-layer LayerNorm), then one linear layer.

    Parameters: lr (float, list or "1e-4,1e-3": a grid chosen on validation), epochs, batch_size,
    patience (early stopping, epochs), layer_norm, layers (None = all, a layer index or a list of
    them, or "each" = one probe per layer in one pass), class_weight (None, "balanced": n/(C n_c),
    "paper": 1/n_c^0.2, or a dict {class label: weight}; the loss is weighted by it),
    validation_fraction, weight_decay, seed, device, progress.

    Learned: ``classes_``, ``class_weight_`` [C], ``layer_weights_`` [len(layers_used_)] (softmax
    weights), ``layers_used_``, ``n_layers_in_``, ``n_features_in_``, ``module_``, ``lr_``,
    ``lr_scores_``, ``history_``, ``best_epoch_``; with layers="each" also ``layer_scores_`` [L],
    ``best_layer_``.
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

    _parameter_constraints = {**_TorchClipClassifier._parameter_constraints,
                              "hidden": Int(1), "dropout": Real(0.0, 1.0, low_inclusive=True)}

    def _validate_params(self):
        lrs = super()._validate_params()
        if self._sweep():
            raise ValueError("layers='each' is a linear-probe sweep: use LinearHead (--head linear)")
        return lrs


# ---- scikit-learn heads ----------------------------------------------------------------------

class _PooledSklearnHead(_ClipInput, SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Standardise pooled features of one layer (int), the layer mean ("mean") or all layers
    concatenated ("concat"), then a scikit-learn-style classifier.

    Learned: ``model_`` (the scaler + classifier pipeline), ``classes_``, ``class_weight_`` [C],
    ``layers_used_`` ([k] for features=k, all L for "mean" / "concat"), ``n_layers_in_``,
    ``n_features_in_`` (D per layer); with features="concat" also ``layer_importance_`` [L]: each
    layer's share of the classifier's use of its features (sums to 1). There are no
    ``layer_weights_``: nothing here learns a weighting of layers.
    """

    def _features(self, X) -> np.ndarray:
        if self.features == "concat":
            return X.reshape(len(X), -1)
        if self.features == "mean":
            return X.mean(1)
        return X[:, int(self.features)]

    def _make_model(self, class_weight, params: dict):
        """The classifier with ``params`` (one combination of the grid hyperparameters)."""
        raise NotImplementedError

    def __setstate__(self, state):
        """Heads pickled before ``layers_used_`` existed: derive it, and drop their placeholder
        ``layer_weights_`` (uniform or one-hot, never learned)."""
        if "model_" in state and "layers_used_" not in state:
            state = dict(state)
            state.pop("layer_weights_", None)
            f = state.get("features")
            state["layers_used_"] = (list(range(state["n_layers_in_"])) if f in ("mean", "concat")
                                     else [int(f)])
        super().__setstate__(state)

    _parameter_constraints = {"features": AnyOf((Options(("mean", "concat")), Int(0))),
                              "class_weight": ClassWeight(), "seed": Int(0)}

    def _validate_params(self):
        validate_params(self)

    def _layer_importance(self, per_feature: np.ndarray, n_layers: int) -> np.ndarray:
        """Per-layer sums of a non-negative per-feature importance [L * D], normalised to sum 1
        (all zeros when the model uses no feature at all)."""
        per_layer = np.asarray(per_feature, dtype=np.float64).reshape(n_layers, -1).sum(1)
        total = per_layer.sum()
        return per_layer / total if total > 0 else per_layer

    #: Hyperparameters that take a grid (a list, or a comma-separated string), searched on eval_set.
    GRID: tuple[str, ...] = ()

    def _grid(self) -> list[dict]:
        """Every combination of the grid hyperparameters' values (:attr:`GRID`), in grid order."""
        import itertools

        values = {name: grid_values(name, getattr(self, name)) for name in self.GRID}
        return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]

    def fit(self, X, y, eval_set=None):
        """X [N, L, D] or [N, D], y [N]. A hyperparameter of :attr:`GRID` given as several values (a list
        or ``"0.1,1,10"``) is a grid: one model per combination is fitted on X and scored on ``eval_set``
        (accuracy, weighted by the class weights as the torch heads' selection is), and the best is kept
        (ties: the first in grid order); a grid needs an ``eval_set``. Learned: ``best_params_``,
        ``grid_scores_`` ([{params, score}], the selection score of each combination; empty without
        an eval_set)."""
        self._validate_params()
        grid = self._grid()
        X, y, classes, yi = self._check_fit_data(X, y)
        n_layers, dim = X.shape[1], X.shape[2]
        if is_int(self.features) and not self.features < n_layers:
            raise ValueError(f"features={self.features!r}: layer out of range 0..{n_layers - 1}")
        if len(grid) > 1 and eval_set is None:
            raise ValueError(f"a grid of {', '.join(self.GRID)} ({len(grid)} combinations) is chosen on eval_set: "
                             "pass eval_set=(X_val, y_val)")
        class_weight = per_class_weights(self.class_weight, yi, classes)
        as_dict = None if self.class_weight is None else dict(zip(classes.tolist(), class_weight.tolist()))
        F = self._features(X)
        if eval_set is not None:
            Xv, yv = self._check_eval_set(eval_set, n_layers, dim)
            Fv, yv = self._features(Xv), np.asarray(yv)
            index = {c: i for i, c in enumerate(classes.tolist())}
            vw = np.array([class_weight[index[v]] if v in index else 0.0 for v in yv.tolist()])
            if self.class_weight is None or not vw.sum() > 0:
                vw = np.ones(len(yv))
        best, scores = None, []
        for params in grid:
            model = make_pipeline(StandardScaler(), self._make_model(as_dict, params))
            model.fit(F, y)
            if eval_set is None:
                best = (model, params, float("nan"))
                break
            score = float(vw @ (model.predict(Fv) == yv) / vw.sum()) if vw.sum() > 0 else float("nan")
            scores.append({"params": params, "score": score})
            if best is None or score > best[2]:
                best = (model, params, score)
        model, params, _ = best
        self.model_, self.classes_, self.class_weight_ = model, model.classes_, class_weight
        self.best_params_, self.grid_scores_ = params, scores
        self.n_layers_in_, self.n_features_in_ = n_layers, dim
        self.layers_used_ = [int(self.features)] if is_int(self.features) else list(range(n_layers))
        if self.features == "concat":
            self.layer_importance_ = self._layer_importance(self._feature_importance(), n_layers)
        return self

    def _feature_importance(self) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X):
        """Class probabilities [N, C] (columns in ``classes_`` order)."""
        F = self._features(self._check_predict_data(X))
        return self.model_.predict_proba(F)

    def predict(self, X):
        F = self._features(self._check_predict_data(X))
        return self.model_.predict(F)


class LogRegHead(_PooledSklearnHead):
    """Logistic regression (lbfgs, L2 with inverse strength ``C``) on standardised pooled features.
    ``C`` may be a grid (``[0.1, 1, 10]`` or ``"0.1,1,10"``), chosen on ``eval_set``.
    class_weight: None, "balanced" (n/(C n_c)), "paper" (1/n_c^0.2) or a dict {class label: weight}.

    ``layer_importance_`` (features="concat"): sum over classes and over the layer's standardised
    features of |coef|, normalised to sum 1. Also learned: ``n_iter_``."""

    def __init__(self, features="mean", C=1.0, max_iter=2000, class_weight=None, seed=0):
        self.features, self.C, self.max_iter, self.class_weight, self.seed = features, C, max_iter, class_weight, seed

    GRID = ("C",)
    _parameter_constraints = {**_PooledSklearnHead._parameter_constraints, "C": Grid(Real(0.0)), "max_iter": Int(1)}

    def _make_model(self, class_weight, params):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=params["C"], max_iter=self.max_iter, class_weight=class_weight,
                                  random_state=self.seed)

    def fit(self, X, y, eval_set=None):
        super().fit(X, y, eval_set)
        self.n_iter_ = self.model_[-1].n_iter_
        return self

    def _feature_importance(self):
        return np.abs(self.model_[-1].coef_).sum(0)

    def decision_function(self, X):
        """Logits [N, C]; for two classes [N]: the log-odds of ``classes_[1]``."""
        F = self._features(self._check_predict_data(X))
        return self.model_.decision_function(F)


class LGBMHead(_PooledSklearnHead):
    """LightGBM gradient boosting on standardised pooled features. class_weight as
    :class:`LogRegHead`. ``n_estimators``, ``learning_rate``, ``num_leaves`` and ``min_child_samples``
    may each be a grid (a list or a comma-separated string); every combination is fitted and the best
    on ``eval_set`` is kept.

    ``layer_importance_`` (features="concat"): the summed split gain of the layer's features,
    normalised to sum 1."""

    def __init__(self, features="mean", n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=5,
                 class_weight=None, seed=0):
        self.features, self.n_estimators, self.learning_rate = features, n_estimators, learning_rate
        self.num_leaves, self.min_child_samples, self.class_weight, self.seed = (num_leaves, min_child_samples,
                                                                               class_weight, seed)

    GRID = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples")
    _parameter_constraints = {**_PooledSklearnHead._parameter_constraints, "n_estimators": Grid(Int(1)),
                              "learning_rate": Grid(Real(0.0)), "num_leaves": Grid(Int(2)),
                              "min_child_samples": Grid(Int(0))}

    def _make_model(self, class_weight, params):
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=params["n_estimators"], learning_rate=params["learning_rate"],
                              num_leaves=params["num_leaves"], min_child_samples=params["min_child_samples"],
                              class_weight=class_weight, random_state=self.seed, n_jobs=1, verbose=-1, deterministic=True,
                              force_col_wise=True)

    def _feature_importance(self):
        return self.model_[-1].booster_.feature_importance(importance_type="gain")

    def decision_function(self, X):
        """Raw scores [N, C] (softmax of them is ``predict_proba``); for two classes [N]: the
        log-odds of ``classes_[1]``."""
        F = self._features(self._check_predict_data(X))
        F = self.model_[:-1].transform(F)
        return self.model_[-1].predict(F, raw_score=True)

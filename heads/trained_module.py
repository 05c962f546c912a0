"""A head made from a module trained elsewhere: what the torch heads' ``from_trained_module`` share
(:meth:`heads.clip_heads.LinearHead.from_trained_module`, :meth:`heads.frame_heads.CRFHead.from_trained_module`).
"""
from __future__ import annotations

from typing import Callable

import torch

from heads.training import lr_grid


def adopt_trained_module(est, module: torch.nn.Module, module_type: type, build: Callable[[int, int], torch.nn.Module],
                         *, history, best_epoch: int, built: str):
    """What the torch heads' ``from_trained_module`` share: ``est`` (a head, its hyperparameters
    validated) takes ``module``, trained elsewhere, as its fitted module, and returns itself.

    ``module`` must be a ``module_type`` whose ``.sum`` (:class:`heads.modules.WeightedLayerSum`) weighs
    L layers of D features; its weights are copied into ``build(L, D)`` (so it has that module's
    shape: ValueError naming ``built`` otherwise), which becomes ``module_`` (CPU, eval mode; the
    caller's module is not changed). ``est.lr`` must be one rate and ``est.layers`` None. Sets
    ``layers_used_``, ``n_layers_in_``, ``n_features_in_``, ``module_``, ``lr_``, ``lr_scores_``
    ({lr: the best ``val`` of ``history``}), ``history_``, ``best_epoch_``, ``layer_weights_`` [L]."""
    lrs = lr_grid(est.lr)
    if len(lrs) != 1:
        raise ValueError(f"lr={est.lr!r}: a trained module was trained with one learning rate, not a grid")
    if est.layers is not None:
        raise ValueError(f"layers={est.layers!r}: a trained module reads every layer it is given; pass layers=None")
    layer_sum = getattr(module, "sum", None)
    if not isinstance(module, module_type) or layer_sum is None:
        raise ValueError(f"module: expected the module of {built}, got a {type(module).__name__}")
    L, D = int(layer_sum.logits.shape[0]), int(layer_sum.dim)
    fresh = build(L, D)
    try:
        fresh.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"module does not have the shape of {built}({L}, {D}) ({str(e).splitlines()[0]})") from None
    history = list(history)
    est.layers_used_, est.n_layers_in_, est.n_features_in_ = list(range(L)), L, D
    est.module_ = fresh.cpu().eval()
    est.lr_ = float(lrs[0])
    est.lr_scores_ = {est.lr_: max((h["val"] for h in history), default=float("nan"))}
    est.history_, est.best_epoch_ = history, int(best_epoch)
    est.layer_weights_ = est.module_.sum.weights().detach().numpy()
    return est

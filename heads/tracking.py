"""Experiment tracking: TensorBoard event files of the training loops (``--log-dir``), an optional extra.

``heads.fit --log-dir DIR`` and ``heads.finetune --log-dir DIR`` open a :class:`TensorBoardLog` with
:func:`tracking`; while it is open, every epoch of :func:`heads.training.train_module` and of the
fine-tuning loop calls :func:`log_epoch`, which writes (one step per epoch)::

    <run>/loss                 mean training loss of the epoch
    <run>/selection_score      the selection-split score that picks the epoch (and the rate)
    <run>/lr/<param group>     the learning rate of each optimiser parameter group
    <run>/layer_weight/<k>     the softmax weight of stored layer k (heads with a weighted layer sum)

``<run>`` names the training (``lr=0.001`` for one rate of a grid, ``finetune``). Without an open log,
:func:`log_epoch` does nothing. Needs the ``tensorboard`` package (``pip install -e .[tracking]``);
read the files with ``tensorboard --logdir DIR``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from featurestore.options import SpecError

_ACTIVE: list = []


class TensorBoardLog:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; :meth:`epoch` writes one epoch's scalars."""

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise SpecError("log_dir", "writes TensorBoard files and needs the tensorboard package: "
                                       "pip install -e '.[tracking]'") from None
        self.path = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.path))

    def epoch(self, run: str, epoch: int, loss: float, selection: float | None, lrs: dict[str, float],
              layer_weights=None) -> None:
        w = self.writer
        w.add_scalar(f"{run}/loss", float(loss), epoch)
        if selection is not None:
            w.add_scalar(f"{run}/selection_score", float(selection), epoch)
        for name, lr in lrs.items():
            w.add_scalar(f"{run}/lr/{name}", float(lr), epoch)
        if layer_weights is not None:
            for k, v in enumerate(layer_weights):
                w.add_scalar(f"{run}/layer_weight/{k}", float(v), epoch)
        w.flush()

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def tracking(log_dir):
    """Open a :class:`TensorBoardLog` on ``log_dir`` for the ``with`` block (None: no tracking)."""
    if log_dir is None:
        yield None
        return
    log = TensorBoardLog(log_dir)
    _ACTIVE.append(log)
    try:
        yield log
    finally:
        _ACTIVE.remove(log)
        log.close()


def layer_weights_of(module):
    """The softmax layer weights [L] of the first weighted layer sum inside ``module``, or None."""
    from heads.modules import WeightedLayerSum

    for m in module.modules():
        if isinstance(m, WeightedLayerSum):
            return m.weights().detach().cpu().numpy()
    return None


def log_epoch(run: str, record: dict, module=None, optimizer=None) -> None:
    """Write one epoch (``record``: ``epoch``, ``loss``, ``val``) to the open log, if any."""
    if not _ACTIVE:
        return
    lrs = {}
    if optimizer is not None:
        for i, g in enumerate(optimizer.param_groups):
            lrs[str(g.get("name", i))] = g["lr"]
    weights = layer_weights_of(module) if module is not None else None
    _ACTIVE[-1].epoch(run, int(record["epoch"]), record["loss"], record.get("val"), lrs, weights)

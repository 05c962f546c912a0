"""Saving and loading heads in files that cannot run code: JSON for settings and histories,
safetensors for arrays and torch weights, LightGBM's own text model for boosted trees.

A saved head is two files side by side (``head.save(run / "head.json")``):

- ``head.json``: ``{"format": "singfront.head", "version": 1, "object": ...}``: the head's class,
  its hyperparameters and every fitted attribute, encoded as tagged JSON (tuples, dicts with
  non-string keys, arrays of strings, a LightGBM booster as its text model);
- ``head.safetensors``: every numeric array (``{"__array__": key}`` in the JSON) and the torch
  module's ``state_dict`` (keys ``module_.<name>``).

Loading (:func:`load_head`) builds objects only of the classes in :data:`ALLOWED` (the project's
heads and the scikit-learn / LightGBM pieces inside them), looked up by name in that table, never
imported by name: an unknown class is refused (:class:`HeadFileError`, naming the file and the
class). The torch module is rebuilt empty by the head (``_module_skeleton``) and its weights
loaded with ``strict=True``. The format itself is :mod:`heads.head_codec`, which knows no head
class: the heads import it, and this module imports the heads.

Heads written by earlier versions are joblib pickles (``head.joblib``), which run code when loaded.
They are never loaded implicitly: :func:`load_head` refuses them and names the explicit migration,
``python -m heads.migrate RUN_DIR --trust-pickle`` (:mod:`heads.migrate`), to be run only on run
folders whose origin you trust.
"""
from __future__ import annotations

from pathlib import Path

from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.frame_heads import CRFHead, FrameClassifierHead
from heads.head_codec import (FORMAT, HEAD_FILE, LEGACY_FILE, MIGRATE_HINT, VERSION, HeadFileError,  # noqa: F401
                              SaveLoadMixin, class_name, legacy_message, read_head, sklearn_pieces, write_head)

#: the project's heads, by class name
HEAD_CLASSES = {class_name(c): c for c in (LinearHead, MLPHead, LogRegHead, LGBMHead, FrameClassifierHead, CRFHead)}


def _allowed() -> dict:
    return {**HEAD_CLASSES, **sklearn_pieces()}


def __getattr__(name):  # ALLOWED imports scikit-learn and LightGBM on first use
    if name == "ALLOWED":
        return _allowed()
    raise AttributeError(name)


def save_head(head, path) -> Path:
    """Write ``head`` (one of the project's heads) to ``path`` (JSON) and ``path.with_suffix('.safetensors')``;
    returns ``path``. Raises TypeError (naming the attribute) for state that these formats cannot hold."""
    allowed = _allowed()
    if class_name(type(head)) not in allowed:
        raise TypeError(f"a {class_name(type(head))} is not a head that can be saved")
    return write_head(head, path, allowed)


def load_head(path):
    """Load any head saved with ``.save`` / :func:`save_head` (``head.json``; a run folder is accepted
    too). A pickle (``head.joblib``) is refused with the migration command (:class:`HeadFileError`);
    nothing in the files is executed."""
    return read_head(path, _allowed())

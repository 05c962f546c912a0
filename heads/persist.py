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
loaded with ``strict=True``.

Heads written by earlier versions are joblib pickles (``head.joblib``), which run code when loaded.
They are never loaded implicitly: :func:`load_head` refuses them and names the explicit migration,
``python -m heads.migrate RUN_DIR --trust-pickle`` (:mod:`heads.migrate`), to be run only on run
folders whose origin you trust.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT, VERSION = "singfront.head", 1
HEAD_FILE = "head.json"          #: the head of a run folder
LEGACY_FILE = "head.joblib"      #: a pickled head of an earlier version (only :mod:`heads.migrate` reads it)
MIGRATE_HINT = "python -m heads.migrate {run} --trust-pickle"


class HeadFileError(ValueError):
    """A head file that cannot be loaded safely: a pickle, an unknown class, a damaged file."""


def _allowed() -> dict:
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
    from heads.frame_heads import CRFHead, FrameClassifierHead

    classes = (LinearHead, MLPHead, LogRegHead, LGBMHead, FrameClassifierHead, CRFHead,
               Pipeline, StandardScaler, LogisticRegression, LabelEncoder, LGBMClassifier)
    return {class_name(c): c for c in classes}


def class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def __getattr__(name):  # ALLOWED is built on first use (importing the heads imports this module)
    if name == "ALLOWED":
        return _allowed()
    raise AttributeError(name)


# ---- encoding --------------------------------------------------------------------------------

class _Encoder:
    """Tagged JSON for a head's state; numeric arrays and module weights go to ``tensors``."""

    def __init__(self, allowed: dict):
        self.allowed, self.tensors = allowed, {}

    def array(self, a: np.ndarray):
        if a.dtype.kind in "biuf":
            key = f"array.{len(self.tensors)}"
            self.tensors[key] = np.ascontiguousarray(a)
            return {"__array__": key}
        if a.dtype.kind in "USO":
            items = a.ravel().tolist()
            if not all(isinstance(v, (str, int, float, bool)) or v is None for v in items):
                raise TypeError(f"an object array holding {sorted({type(v).__name__ for v in items})} cannot be saved")
            return {"__strings__": items, "shape": list(a.shape), "kind": a.dtype.kind}
        raise TypeError(f"arrays of dtype {a.dtype} cannot be saved")

    def value(self, v, where: str):
        import torch

        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return float(v)
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.str_):
            return str(v)
        if isinstance(v, np.ndarray):
            return self.array(v)
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, tuple):
            return {"__tuple__": [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, dict):
            return {"__dict__": [[self.value(k, f"{where} key"), self.value(x, f"{where}[{k!r}]")]
                                 for k, x in v.items()]}
        if isinstance(v, torch.nn.Module):
            if where != "module_":
                raise TypeError(f"{where}: only the head's module_ may be a torch module")
            for k, t in v.state_dict().items():
                self.tensors[f"module_.{k}"] = t.detach().cpu().contiguous().clone().numpy()
            return {"__module__": "module_"}
        if type(v).__name__ == "Booster" and type(v).__module__.startswith("lightgbm"):
            return {"__lightgbm_booster__": v.model_to_string()}
        name = class_name(type(v))
        if name in self.allowed:
            return self.object(v)
        raise TypeError(f"{where}: a {name} cannot be saved as a head (not in heads.persist.ALLOWED)")

    def object(self, obj):
        name = class_name(type(obj))
        state = {k: self.value(v, k if isinstance(obj, _head_types(self.allowed)) else f"{name}.{k}")
                 for k, v in vars(obj).items()}
        return {"__object__": name, "state": state}


def _head_types(allowed: dict) -> tuple:
    return tuple(c for n, c in allowed.items() if n.startswith("heads."))


class _Decoder:
    def __init__(self, allowed: dict, tensors: dict, path: Path):
        self.allowed, self.tensors, self.path, self.modules = allowed, tensors, path, []

    def fail(self, msg: str):
        raise HeadFileError(f"{self.path}: {msg}")

    def value(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict) or len(v) == 0:
            self.fail(f"unexpected value {v!r}")
        if "__array__" in v:
            key = v["__array__"]
            if key not in self.tensors:
                self.fail(f"array {key!r} is missing from {self.path.with_suffix('.safetensors').name}")
            return self.tensors[key]
        if "__strings__" in v:
            kind = v.get("kind")
            dtype = {"U": str, "S": bytes, "O": object}.get(kind)
            if dtype is None:
                self.fail(f"unknown string array kind {kind!r}")
            return np.array(v["__strings__"], dtype=object if kind == "O" else None).reshape(v["shape"])
        if "__tuple__" in v:
            return tuple(self.value(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {self._key(self.value(k)): self.value(x) for k, x in v["__dict__"]}
        if "__module__" in v:
            return _ModulePlaceholder()
        if "__lightgbm_booster__" in v:
            import lightgbm

            return lightgbm.Booster(model_str=v["__lightgbm_booster__"])
        if "__object__" in v:
            return self.object(v)
        self.fail(f"unexpected value with keys {sorted(v)}")

    @staticmethod
    def _key(k):
        return tuple(k) if isinstance(k, list) else k

    def object(self, v):
        name = v["__object__"]
        cls = self.allowed.get(name)
        if cls is None:
            self.fail(f"refusing to build a {name!r}: not one of the classes a head may hold "
                      "(heads.persist.ALLOWED)")
        state = v.get("state")
        if not isinstance(state, dict):
            self.fail(f"the state of {name} is not an object")
        obj = cls.__new__(cls)
        obj.__dict__.update({k: self.value(x) for k, x in state.items()})
        return obj


class _ModulePlaceholder:
    """Where the head's torch module goes, until the head has rebuilt it."""


# ---- public API ------------------------------------------------------------------------------

def save_head(head, path) -> Path:
    """Write ``head`` to ``path`` (JSON) and ``path.with_suffix('.safetensors')``; returns ``path``.
    Raises TypeError (naming the attribute) for state that these formats cannot hold."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: a head is saved as a .json file (with its .safetensors beside it)")
    allowed = _allowed()
    if class_name(type(head)) not in allowed:
        raise TypeError(f"a {class_name(type(head))} is not a head that can be saved")
    enc = _Encoder(allowed)
    doc = {"format": FORMAT, "version": VERSION, "object": enc.object(head)}
    text = json.dumps(doc, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_t, tmp_j = path.with_suffix(".safetensors.tmp"), path.with_suffix(".json.tmp")
    save_file(enc.tensors, str(tmp_t), metadata={"format": FORMAT})
    tmp_j.write_text(text)
    tmp_t.replace(path.with_suffix(".safetensors"))
    tmp_j.replace(path)
    return path


def legacy_message(path: Path) -> str:
    run = path.parent
    return (f"{path} is a pickled head written by an earlier version; pickles can run code, so it is never "
            f"loaded implicitly. If you trust where this run folder came from, convert it once with: "
            f"{MIGRATE_HINT.format(run=run)}")


def load_head(path):
    """Load a head saved with ``.save`` / :func:`save_head` (``head.json``; a run folder is accepted
    too). A pickle (``head.joblib``) is refused with the migration command (:class:`HeadFileError`);
    nothing in the files is executed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_dir():
        path = path / HEAD_FILE
    if path.suffix == ".joblib" or (not path.exists() and (path.parent / LEGACY_FILE).exists()):
        raise HeadFileError(legacy_message(path.parent / LEGACY_FILE if path.suffix != ".joblib" else path))
    if not path.is_file():
        raise FileNotFoundError(f"no saved head: {path} is missing")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise HeadFileError(f"{path}: not a readable head file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HeadFileError(f"{path}: not a singfront head file (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != VERSION:
        raise HeadFileError(f"{path}: head file version {doc.get('version')!r}; this version reads {VERSION}")
    weights = path.with_suffix(".safetensors")
    try:
        tensors = load_file(str(weights)) if weights.exists() else {}
    except (SafetensorError, OSError) as e:
        raise HeadFileError(f"{weights}: not a readable safetensors file ({e})") from None
    allowed = _allowed()
    dec = _Decoder(allowed, tensors, path)
    top = doc.get("object")
    if not isinstance(top, dict) or not str(top.get("__object__", "")).startswith("heads."):
        raise HeadFileError(f"{path}: the saved object is not a head")
    head = dec.object(top)
    if isinstance(vars(head).get("module_"), _ModulePlaceholder):
        import torch

        module = head._module_skeleton()
        state = {k[len("module_."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                 if k.startswith("module_.")}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise HeadFileError(f"{weights}: the module weights do not fit the head ({e})") from None
        head.module_ = module.eval()
    return head


class SaveLoadMixin:
    """``head.save(path)`` and ``type(head).load(path)`` / :func:`load_head`."""

    def save(self, path) -> Path:
        return save_head(self, path)

    @classmethod
    def load(cls, path):
        head = load_head(path)
        if not isinstance(head, cls):
            raise TypeError(f"{path} holds a {type(head).__name__}, not a {cls.__name__}")
        return head

    def _module_skeleton(self):
        """The head's torch module with fresh weights, shaped from the fitted attributes (for loading)."""
        raise NotImplementedError

"""The head file format, with no knowledge of which heads exist: tagged JSON for settings and
histories, safetensors for arrays and torch weights, LightGBM's own text model for boosted trees
(:mod:`heads.persist` describes the files). :func:`write_head` and :func:`read_head` take the table of
classes a file may hold; :class:`SaveLoadMixin` gives each head ``save`` and ``load`` with a table of
its own class and the scikit-learn / LightGBM pieces. The heads import this module;
:mod:`heads.persist` imports the heads (its :func:`heads.persist.load_head` reads any of them), so
nothing imports in a circle.
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


def sklearn_pieces() -> dict:
    """{class name: class} of the scikit-learn / LightGBM objects a head may hold (imported on first use)."""
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    return {class_name(c): c for c in (Pipeline, StandardScaler, LogisticRegression, LabelEncoder, LGBMClassifier)}


def class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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


# ---- writing and reading ------------------------------------------------------------------------------

def write_head(head, path, allowed: dict) -> Path:
    """Write ``head`` to ``path`` (JSON) and ``path.with_suffix('.safetensors')``; returns ``path``.
    ``allowed``: {class name: class} of what the head may hold. Raises TypeError (naming the
    attribute) for state that these formats cannot hold."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: a head is saved as a .json file (with its .safetensors beside it)")
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


def read_head(path, allowed: dict, expect: type | None = None):
    """Load a head saved with :func:`write_head` (``head.json``; a run folder is accepted too), building
    only classes of ``allowed`` ({class name: class}). ``expect``: the head class the file must hold
    (TypeError naming both otherwise). A pickle (``head.joblib``) is refused with the migration
    command (:class:`HeadFileError`); nothing in the files is executed."""
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
        found = doc.get("format") if isinstance(doc, dict) else None
        raise HeadFileError(f"{path}: not a singfront head file (format {found!r})")
    if doc.get("version") != VERSION:
        raise HeadFileError(f"{path}: head file version {doc.get('version')!r}; this version reads {VERSION}")
    weights = path.with_suffix(".safetensors")
    try:
        tensors = load_file(str(weights)) if weights.exists() else {}
    except (SafetensorError, OSError) as e:
        raise HeadFileError(f"{weights}: not a readable safetensors file ({e})") from None
    dec = _Decoder(allowed, tensors, path)
    top = doc.get("object")
    if not isinstance(top, dict) or not str(top.get("__object__", "")).startswith("heads."):
        raise HeadFileError(f"{path}: the saved object is not a head")
    if expect is not None and top["__object__"] != class_name(expect):
        raise TypeError(f"{path} holds a {top['__object__'].rsplit('.', 1)[-1]}, not a {expect.__name__}")
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
    """``head.save(path)`` and ``type(head).load(path)`` (:func:`heads.persist.load_head` reads any head)."""

    def save(self, path) -> Path:
        if not class_name(type(self)).startswith("heads."):  # read_head builds the project's heads only
            raise TypeError(f"a {class_name(type(self))} is not a head that can be saved")
        return write_head(self, path, {class_name(type(self)): type(self), **sklearn_pieces()})

    @classmethod
    def load(cls, path):
        return read_head(path, {class_name(cls): cls, **sklearn_pieces()}, expect=cls)

    def _module_skeleton(self):
        """The head's torch module with fresh weights, shaped from the fitted attributes (for loading)."""
        raise NotImplementedError

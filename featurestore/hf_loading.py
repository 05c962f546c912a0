"""Load a transformers audio model into transformers' own classes, running no code from the model.

A model is named by a Hugging Face id (resolved through the hub cache, offline with
``HF_HUB_OFFLINE=1`` or ``local_files_only``) or a local folder in the form ``save_pretrained``
writes. What is read from it is data only: ``config.json`` and ``preprocessor_config.json`` as JSON,
and the weights through ``from_pretrained`` with ``weights_only=True`` (safetensors, or
``pytorch_model.bin`` read without unpickling code).

Native model types (``wav2vec2``, ``wavlm``, ``hubert``, ``data2vec-audio``, ...) load as they are.
MERT (``model_type: mert_model``, shipped with remote code in ``configuration_MERT.py`` /
``modeling_MERT.py``) is, for its public checkpoints (no CQT input, no deepnorm), transformers'
HuBERT with the feature-projection LayerNorm: its config is mapped onto :class:`HubertConfig` and its
weights (the same key names, ``weight_g``/``weight_v`` weight norm included) load into
:class:`HubertModel`. A config the native class cannot express is refused, naming the field.

Remote code runs only when the caller passes ``trust_remote_code=True`` (``--trust-remote-code``).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: MERT's config fields that change the architecture beyond HuBERT, with the value the native class
#: can express. A config with another value is refused unless remote code is allowed.
MERT_UNSUPPORTED = {
    "feature_extractor_cqt": False,  # a CQT branch concatenated to the CNN features (nnAudio)
    "deepnorm": False,  # up-scaled residuals in a custom encoder layer
}
#: MERT fields with no effect on the public checkpoints' computation: ``feature_extractor_cqt_bins``
#: is read only with the CQT branch, ``attention_relax`` only by the deepnorm encoder's layers, and
#: ``sample_rate`` only by the CQT branch (the input rate comes from ``preprocessor_config.json``).
MERT_INERT = {"feature_extractor_cqt_bins", "attention_relax", "sample_rate"}
#: Config keys that describe no computation: generation and bookkeeping settings written by older
#: transformers versions, and legacy wav2vec2-family names kept by published configs.
GENERIC_KEYS = {
    "_name_or_path", "_commit_hash", "architectures", "auto_map", "model_type", "transformers_version",
    "torch_dtype", "dtype", "use_bfloat16", "torchscript", "return_dict", "output_hidden_states",
    "output_attentions", "pruned_heads", "tie_word_embeddings", "is_decoder", "is_encoder_decoder",
    "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size", "chunk_size_feed_forward",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "gradient_checkpointing", "feat_extract_dropout", "hidden_dropout_prob",
}
MERT_MODEL_TYPE = "mert_model"
#: Attention kernels a user may ask for (transformers' ``attn_implementation``).
ATTENTION_KINDS = ("sdpa", "eager")


class RemoteCodeRequired(ValueError):
    """The model needs Python code from its own repository, and the caller did not allow it."""


class WeightsMismatch(ValueError):
    """The weight files do not fill the native model (missing or unexpected tensors)."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded transformers model and what was read beside it.

    ``sample_rate`` (Hz) and ``do_normalize`` come from ``preprocessor_config.json`` (None when the
    model has none); ``native`` is False only for a model built by its own remote code;
    ``attention``: the attention kernel in use (``sdpa`` or ``eager``)."""

    model: object
    sample_rate: int | None
    do_normalize: bool | None
    native: bool
    attention: str
    mapped_from: str | None = None  # "mert_model" when a MERT config was mapped onto HuBERT


def _not_found(source: str, filename: str, local_files_only: bool) -> str:
    """Why a hub id's ``filename`` was not found: offline and not in the cache, or absent."""
    from huggingface_hub import constants

    if local_files_only or constants.HF_HUB_OFFLINE:
        how = "--local-files-only" if local_files_only else "HF_HUB_OFFLINE=1"
        return (f"{source}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub is "
                f"not asked ({how}): download the model there first, or give its folder with --model-path")
    return f"{source}: the model has no {filename} (is the id right, and is it a transformers model?)"


def _cached_json(source: str, filename: str, *, local_files_only: bool, required: bool) -> dict | None:
    """``filename`` of a local folder or a hub id (cache or hub), parsed as JSON; None if absent and not
    ``required``. Raises FileNotFoundError naming the source, ValueError naming a file that is no JSON."""
    folder = Path(os.path.expanduser(source))
    if not folder.is_dir() and (str(source).startswith(("/", ".", "~")) or folder.exists()):
        raise FileNotFoundError(f"{source}: no such model folder (a path, not a Hugging Face id)")
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"{folder}: no {filename} (a transformers model folder holds "
                                        "config.json and its weights, as save_pretrained writes them)")
            return None
    else:
        from transformers.utils import cached_file

        try:
            got = cached_file(source, filename, local_files_only=local_files_only,
                              _raise_exceptions_for_missing_entries=False)
        except OSError as e:
            if required:
                raise FileNotFoundError(f"{source}: cannot read its {filename} ({e})") from None
            return None
        if got is None:
            if required:
                raise FileNotFoundError(_not_found(source, filename, local_files_only))
            return None
        path = Path(got)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None


def mert_to_hubert(raw: dict, source: str):
    """Map a MERT ``config.json`` (dict) onto :class:`transformers.HubertConfig`.

    Raises :class:`RemoteCodeRequired` naming the field when the config needs MERT's own code: a
    :data:`MERT_UNSUPPORTED` field set, or a field that is neither HuBERT's, MERT's nor generic."""
    from transformers import HubertConfig, Wav2Vec2Config

    for field, supported in MERT_UNSUPPORTED.items():
        if bool(raw.get(field, supported)) != supported:
            raise RemoteCodeRequired(
                f"{source}: config.json sets {field}={raw[field]!r}, which transformers' HuBERT cannot "
                "express; only MERT's own code (remote code in the model's repository) builds this model. "
                "Pass --trust-remote-code (trust_remote_code=True) to run that code, if you trust it")
    hubert_keys = set(HubertConfig().to_dict())
    known = hubert_keys | set(Wav2Vec2Config().to_dict()) | GENERIC_KEYS | MERT_INERT | set(MERT_UNSUPPORTED)
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise RemoteCodeRequired(
            f"{source}: config.json has field(s) {', '.join(unknown)} that neither transformers' HuBERT nor "
            "the public MERT configuration knows, so the native loader cannot tell what they change. "
            "Pass --trust-remote-code (trust_remote_code=True) to build it with its own code, if you trust it")
    kept = {k: v for k, v in raw.items() if k in hubert_keys and k not in ("model_type", "architectures",
                                                                            "transformers_version")}
    # MERT's configuration has no conv_pos_batch_norm: its positional convolution is weight-normed.
    kept.setdefault("conv_pos_batch_norm", False)
    config = HubertConfig(**kept)
    config.architectures = ["HubertModel"]
    return config


def native_config(raw: dict, source: str):
    """A transformers config object for ``raw`` (a parsed ``config.json``) built by transformers' own
    classes, or :class:`RemoteCodeRequired` naming why it needs the model's own code."""
    from transformers import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if model_type == MERT_MODEL_TYPE:
        return mert_to_hubert(raw, source)
    if model_type in CONFIG_MAPPING:
        cls = CONFIG_MAPPING[model_type]
        return cls.from_dict({k: v for k, v in raw.items() if k != "auto_map"})
    hint = " (its auto_map points to code in the repository)" if raw.get("auto_map") else ""
    raise RemoteCodeRequired(f"{source}: model_type {model_type!r} is not a transformers class{hint}; pass "
                             "--trust-remote-code (trust_remote_code=True) to run the model's own code, "
                             "if you trust it")


@contextmanager
def _quiet_load_report():
    """transformers prints a load report listing unused tensors (the CTC head of a ``ForCTC``
    checkpoint, MERT's ``masked_spec_embed`` when masking is off) as warnings; :func:`load_model`
    judges the loading info itself, so the report is held back while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def model_class(config):
    """transformers' base model class for a native config (``AutoModel``'s choice)."""
    from transformers import AutoModel

    return AutoModel._model_mapping[type(config)]


def supports_sdpa(cls) -> bool:
    """Does transformers offer scaled-dot-product attention for this model class?"""
    return bool(getattr(cls, "_supports_sdpa", False))


#: Top-level modules of the published task classes around a base model (pre-training quantizer and
#: projections, CTC and classification heads): a native checkpoint may hold them; they are not used.
TASK_HEAD_MODULES = ("quantizer", "project_q", "project_hid", "lm_head", "dropout_features", "projector",
                     "classifier", "final_proj", "label_embs_concat")


def _check_loading_info(info: dict, source: str, model, *, mapped: bool, custom_code: bool = False) -> None:
    """Refuse weights that leave a tensor of the native model random, or, for a ``mapped`` config
    (MERT onto HuBERT), hold tensors it has no place for: a sign of an architecture the mapping does
    not cover. A native checkpoint may hold more than the base model (the quantizer of
    ``Wav2Vec2ForPreTraining``, the CTC head of ``Wav2Vec2ForCTC``): those tensors are not used.
    ``custom_code``: the config's ``auto_map`` names the repository's own model class; then tensors
    other than those task heads (:data:`TASK_HEAD_MODULES`) are refused as well: the native class
    would silently drop what that code adds."""
    optional = {"masked_spec_embed"}  # SpecAugment's learned mask vector: only used when masking
    missing = sorted(k for k in info.get("missing_keys", []) if k.split(".")[-1] not in optional)
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if k.split(".")[-1] not in optional) if mapped else []
    if custom_code and not mapped:
        unexpected = sorted(k for k in info.get("unexpected_keys", []) if k.split(".")[-1] not in optional
                            and k.split(".")[0] not in TASK_HEAD_MODULES)
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", []))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of {type(model).__name__} are not in the weights "
                        f"(e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the weights have no place in {type(model).__name__} "
                        f"(e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"tensor(s) of another shape: {', '.join(mismatched[:3])}")
    if problems:
        hint = (" (its config.json's auto_map names the repository's own model code: --trust-remote-code runs it, "
                "if you trust it)" if custom_code and not mapped else "")
        raise WeightsMismatch(f"{source}: the weight files do not match the config: " + "; ".join(problems) + hint)


class WeightsUnreadable(ValueError):
    """A weight file that is damaged, or holds more than tensors (refused without running it)."""


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_error(source: str, error: Exception) -> WeightsUnreadable | None:
    """The error to show for ``error`` raised while reading ``source``'s weights: a
    :class:`WeightsUnreadable` naming the weight file(s) for a pickle that needs more than tensors,
    a damaged zip (``pytorch_model.bin``) or safetensors header; None for anything else."""
    import pickle

    files = [str(Path(source) / f) for f in WEIGHT_FILES if (Path(source) / f).is_file()] or [source]
    where = " / ".join(files)
    if isinstance(error, pickle.UnpicklingError):
        return WeightsUnreadable(f"{where}: not a file of plain tensors (damaged, or holding Python objects besides "
                                 "tensors), so it is refused without being unpickled (read with weights_only=True; "
                                 "nothing in it ran). Only load weights from such a file if you trust it, after "
                                 "re-saving its tensors as safetensors")
    text = str(error)
    if type(error).__name__ == "SafetensorError" or "PytorchStreamReader" in text or "zip archive" in text:
        return WeightsUnreadable(f"{where}: the weight file is damaged or truncated ({text.splitlines()[0]})")
    return None


def preprocessor_settings(pre: dict, source: str) -> tuple[int | None, bool | None]:
    """(``sampling_rate`` in Hz, ``do_normalize``) of a parsed ``preprocessor_config.json``, None where
    absent. ValueError naming the file and the field for a rate that is not a positive whole number or
    a ``do_normalize`` that is not true/false (the text ``"false"`` would otherwise count as true)."""
    where = f"{source}: preprocessor_config.json"
    if not isinstance(pre, dict):
        raise ValueError(f"{where} is not a JSON object")
    sr, norm = pre.get("sampling_rate"), pre.get("do_normalize")
    if sr is not None and (isinstance(sr, bool) or not isinstance(sr, (int, float)) or not sr > 0 or sr == float("inf")
                           or sr != int(sr)):
        raise ValueError(f"{where}: sampling_rate must be a positive whole number of Hz, got {sr!r}")
    if norm is not None and not isinstance(norm, bool):
        raise ValueError(f"{where}: do_normalize must be true or false, got {norm!r}")
    return (None if sr is None else int(sr)), norm


def load_model(source: str, *, config_edit=None, local_files_only: bool = False, trust_remote_code: bool = False,
               attention: str | None = None) -> LoadedModel:
    """Load the model at ``source`` (hub id or folder).

    ``config_edit(config)`` is called on the config before the model is built (switching training
    noise off, for instance). ``attention``: ``sdpa`` or ``eager``; None takes SDPA where
    transformers offers it for the class, eager elsewhere. Raises :class:`RemoteCodeRequired`,
    :class:`WeightsMismatch`, FileNotFoundError or ValueError, each naming the source."""
    if attention is not None and attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION_KINDS)}")
    raw = _cached_json(source, "config.json", local_files_only=local_files_only, required=True)
    pre = _cached_json(source, "preprocessor_config.json", local_files_only=local_files_only, required=False) or {}
    sr, do_norm = preprocessor_settings(pre, source)
    if trust_remote_code:
        return _load_remote(source, raw, config_edit, local_files_only, attention, sr, do_norm)
    config = native_config(raw, source)
    if config_edit is not None:
        config_edit(config)
    cls = model_class(config)
    kind = attention or ("sdpa" if supports_sdpa(cls) else "eager")
    if kind == "sdpa" and not supports_sdpa(cls):
        raise ValueError(f"{source}: transformers offers no SDPA attention for {cls.__name__}; use eager")
    try:
        with _quiet_load_report():  # the loading info is checked below, strictly, instead
            model, info = cls.from_pretrained(source, config=config, local_files_only=local_files_only,
                                              weights_only=True, output_loading_info=True, attn_implementation=kind)
    except Exception as e:  # noqa: BLE001 - sorted by what the weight files did wrong
        unreadable = weights_error(source, e)
        if unreadable is None:
            raise
        raise unreadable from e
    mapped = raw.get("model_type") == MERT_MODEL_TYPE
    _check_loading_info(info, source, model, mapped=mapped, custom_code="AutoModel" in (raw.get("auto_map") or {}))
    return LoadedModel(model, None if sr is None else int(sr), None if do_norm is None else bool(do_norm),
                       native=True, attention=kind, mapped_from=MERT_MODEL_TYPE if mapped else None)


def _load_remote(source, raw, config_edit, local_files_only, attention, sr, do_norm) -> LoadedModel:
    """The user asked for the model's own code (``trust_remote_code=True``)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(source, trust_remote_code=True, local_files_only=local_files_only)
    if config_edit is not None:
        config_edit(config)
    kw = {"attn_implementation": attention} if attention else {}
    model = AutoModel.from_pretrained(source, config=config, trust_remote_code=True,
                                      local_files_only=local_files_only, **kw)
    kind = getattr(model.config, "_attn_implementation", None) or attention or "eager"
    return LoadedModel(model, None if sr is None else int(sr), None if do_norm is None else bool(do_norm),
                       native=False, attention=str(kind))

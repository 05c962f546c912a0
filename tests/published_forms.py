"""Tiny model folders written in the form each registry family's publisher ships it.

Each family's folder has the published ``model_type`` and ``architectures``, the structural config
fields of the real checkpoint (feature-extractor norm, stable layer norm, conv bias, feature-projection
LayerNorm) with tiny sizes, the published weight file name(s) and key names (including the weight norm
of the positional convolution stored as ``weight_g``/``weight_v``, as checkpoints written before torch's
parametrizations do), and a ``preprocessor_config.json``. MERT folders also carry ``configuration_MERT.py``
and ``modeling_MERT.py`` beside an ``auto_map``, as the hub repositories do; the files here only leave a
marker file when imported, so a test can tell whether the model's own code ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@dataclass(frozen=True)
class Family:
    """One registry family as published: registry name, hub id, transformers class that produced the
    weights, ``model_type``/``architectures`` of its config.json, structural fields, weight files,
    preprocessor settings."""

    name: str
    hub_id: str
    arch: str  # class the published weights come from (its state-dict key names)
    model_type: str
    architectures: tuple
    structure: dict
    files: tuple  # "pytorch_model.bin" and/or "model.safetensors"
    sample_rate: int
    do_normalize: bool
    extra: dict = field(default_factory=dict)  # further published config fields


MERT_EXTRA = {"auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
              "feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336, "deepnorm": False,
              "attention_relax": -1.0, "feat_extract_dropout": 0.0, "gradient_checkpointing": False,
              "hidden_dropout_prob": 0.1, "tokenizer_class": "Wav2Vec2CTCTokenizer", "torch_dtype": "float32",
              "transformers_version": "4.25.1"}

FAMILIES = [
    Family("mert-v0-public", "m-a-p/MERT-v0-public", "hubert", "mert_model", ("MERTModel",),
           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, feat_proj_layer_norm=True),
           ("pytorch_model.bin",), 16000, True, {**MERT_EXTRA, "sample_rate": 16000}),
    Family("mert-v1-95m", "m-a-p/MERT-v1-95M", "hubert", "mert_model", ("MERTModel",),
           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, feat_proj_layer_norm=True),
           ("pytorch_model.bin", "model.safetensors"), 24000, True, {**MERT_EXTRA, "sample_rate": 24000}),
    Family("mert-v1-330m", "m-a-p/MERT-v1-330M", "hubert", "mert_model", ("MERTModel",),
           dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_proj_layer_norm=True),
           ("model.safetensors",), 24000, True, {**MERT_EXTRA, "sample_rate": 24000, "attention_relax": 32.0}),
    Family("music2vec-v1", "m-a-p/music2vec-v1", "data2vec", "data2vec-audio", ("Data2VecAudioModel",),
           dict(feat_extract_norm="layer", conv_bias=True), ("pytorch_model.bin",), 16000, True),
    Family("wavlm-base-plus", "microsoft/wavlm-base-plus", "wavlm", "wavlm", ("WavLMModel",),
           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
           ("pytorch_model.bin",), 16000, False),
    Family("wavlm-large", "microsoft/wavlm-large", "wavlm", "wavlm", ("WavLMModel",),
           dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False),
           ("pytorch_model.bin",), 16000, True),
    Family("wav2vec2-base", "facebook/wav2vec2-base", "wav2vec2-pretraining", "wav2vec2", ("Wav2Vec2ForPreTraining",),
           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
           ("pytorch_model.bin",), 16000, True),
    Family("wav2vec2-base-960h", "facebook/wav2vec2-base-960h", "wav2vec2-ctc", "wav2vec2", ("Wav2Vec2ForCTC",),
           dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, vocab_size=32),
           ("pytorch_model.bin", "model.safetensors"), 16000, True),
    Family("wav2vec2-large-lv60", "facebook/wav2vec2-large-lv60", "wav2vec2-pretraining", "wav2vec2",
           ("Wav2Vec2ForPreTraining",), dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
           ("pytorch_model.bin",), 16000, True),
]
BY_NAME = {f.name: f for f in FAMILIES}

#: Imported only if the model's own code runs: each leaves a marker file named in the folder's config.
REMOTE_CONFIG = '''
import pathlib
from transformers import HubertConfig
MARKER = {marker!r}
pathlib.Path(MARKER).write_text("configuration_MERT.py ran")


class MERTConfig(HubertConfig):
    model_type = "mert_model"

    def __init__(self, feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                 attention_relax=-1.0, sample_rate=24000, **kwargs):
        super().__init__(**kwargs)
        self.feature_extractor_cqt, self.feature_extractor_cqt_bins = feature_extractor_cqt, feature_extractor_cqt_bins
        self.deepnorm, self.attention_relax, self.sample_rate = deepnorm, attention_relax, sample_rate
'''
REMOTE_MODEL = '''
import pathlib
from transformers import HubertModel
from .configuration_MERT import MERTConfig
pathlib.Path({marker!r}).write_text("modeling_MERT.py ran")


class MERTModel(HubertModel):
    config_class = MERTConfig
'''


def reference_model(fam: Family):
    """The tiny model of the class the family's weights come from, seeded -> (full model, base model
    whose hidden states the frontend stores)."""
    import transformers as T

    cfg_cls, cls = {"hubert": (T.HubertConfig, T.HubertModel), "data2vec": (T.Data2VecAudioConfig, T.Data2VecAudioModel),
                    "wavlm": (T.WavLMConfig, T.WavLMModel),
                    "wav2vec2-pretraining": (T.Wav2Vec2Config, T.Wav2Vec2ForPreTraining),
                    "wav2vec2-ctc": (T.Wav2Vec2Config, T.Wav2Vec2ForCTC)}[fam.arch]
    torch.manual_seed(0)
    model = cls(cfg_cls(**{**TINY, **fam.structure})).eval()
    base = getattr(model, "wav2vec2", model)
    return model, base


def published_state_dict(model) -> dict:
    """State dict under the published key names: weight norm as ``weight_g``/``weight_v``."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v")
        out[k] = v.detach().clone().contiguous()
    return out


def write_published(folder: Path, fam: Family, *, marker: Path | None = None, **config_changes) -> Path:
    """Write ``fam``'s tiny published folder into ``folder`` -> folder. ``config_changes`` edit config.json
    (e.g. ``feature_extractor_cqt=True``); ``marker``: file the MERT remote code writes if it runs."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model, _ = reference_model(fam)
    sd = published_state_dict(model)
    for f in fam.files:
        if f == "pytorch_model.bin":
            torch.save(sd, folder / f)
        else:
            save_file(sd, str(folder / f), metadata={"format": "pt"})
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k not in ("architectures", "model_type", "transformers_version", "conv_pos_batch_norm", "dtype")}
    cfg.update({"model_type": fam.model_type, "architectures": list(fam.architectures), **fam.extra, **config_changes})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": fam.do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
         "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
         "sampling_rate": fam.sample_rate}))
    if fam.model_type == "mert_model":
        marker = marker or folder / "REMOTE_CODE_RAN"
        (folder / "configuration_MERT.py").write_text(REMOTE_CONFIG.format(marker=str(marker)))
        (folder / "modeling_MERT.py").write_text(REMOTE_MODEL.format(marker=str(marker)))
    return folder


def write_hub_cache(cache: Path, fam: Family, **kw) -> Path:
    """Lay ``fam``'s folder out as the Hugging Face hub cache holds a downloaded repository:
    ``models--org--name/refs/main`` naming a snapshot, ``snapshots/<commit>/<files>``. -> snapshot."""
    repo = cache / ("models--" + fam.hub_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return write_published(repo / "snapshots" / commit, fam, **kw)

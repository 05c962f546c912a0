"""The model fine-tuned end to end, and which of its parameters train when.

:class:`FineTuneModel`: frontend (:class:`featurestore.frontends.Frontend`) -> every hidden state
[B, T, L, D] -> the head's own torch module, built by the head estimator of ``heads.fit`` so the
fine-tuned head is the probe's architecture exactly:

- clip heads (``linear``, ``mlp``): hidden states mean-pooled over each clip's valid frames
  [B, L, D] -> softmax layer weights -> linear / MLP -> logits [B, C] (mean pooling commutes with
  the layer sum and an affine layer, so this is the paper's "weighted sum, pooled, linear");
- frame heads (``frames``, ``crf``): [B, T, L, D] -> layer weights (-> temporal context) -> per-frame
  outputs [B, T, n_out] (the CRF rides on the module).

Fine-tuning modes (:func:`trainable_parts`), each with a first stage of ``stage1_epochs`` in which
the frontend is frozen and only the head (layer weights included) learns:

=============  ===================================================  ==========================
mode           transformers model (Wav2Vec2, WavLM, HuBERT/MERT...)  CREPE
=============  ===================================================  ==========================
``two-stage``  stage 2 trains the transformer encoder, feature       stage 2 trains the last
               projection and positional convolution; the CNN        two conv blocks (5, 6);
               feature encoder stays frozen (the paper)               blocks 1-4 stay frozen
``lora``       low-rank adapters (peft) on the attention             refused: no attention
               projections (``q_proj``, ``v_proj`` by default),
               everything else frozen
``full``       every frontend parameter, CNN included                every conv block
=============  ===================================================  ==========================

The log-mel baseline has no learned parameter: every mode is refused for it (fit a probe instead).
Frozen modules stay in eval mode (no dropout, BatchNorm statistics untouched), so a frozen
frontend's outputs do not change while the head learns.
"""
from __future__ import annotations

import torch

from featurestore.frontends import CrepeFrontend, Frontend, HFFrontend, LogMelFrontend
from featurestore.options import SpecError
from heads.modules import masked_mean

MODES = ("two-stage", "lora", "full")
#: Attention projections of the transformers audio encoders, and the feed-forward dense layers,
#: that LoRA adapters may sit on (``--lora-targets``).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
#: CREPE's conv blocks trained in the second stage of ``two-stage``.
CREPE_STAGE2_BLOCKS = (5, 6)


class FineTuneError(ValueError):
    """A fine-tuning run that cannot go on (said in words, naming the setting or the file)."""


class FineTuneSettingError(SpecError, FineTuneError):
    """A setting (``setting``: a :class:`heads.finetune_spec.FinetuneSpec` field, shown as its flag on
    the command line) that this frontend cannot take: found once the model is loaded."""


def check_mode_for(kind: str, name: str, mode: str, *, gradient_checkpointing: bool = False) -> None:
    """Refuse what a frontend of ``kind`` (a registry kind: "hf", "crepe", "logmel", "hear") named
    ``name`` cannot do in ``mode`` (FineTuneSettingError naming the setting). Needs no weights:
    :class:`heads.finetune_spec.FinetuneSpec` calls it when it is made."""
    if mode not in MODES:
        raise FineTuneSettingError("mode", f"{mode!r}: expected one of {', '.join(MODES)}")
    if kind == "hear":
        raise FineTuneSettingError("backbone", f"{name}: a HEAR module only serves embeddings (the HEAR API has no "
                                               "training entry point), so it cannot be fine-tuned. Fit a probe on "
                                               "its stored features with heads.fit instead")
    if kind == "logmel":
        raise FineTuneSettingError("backbone", f"{name} is not learned (a fixed log-mel transform): there is "
                                               "nothing to fine-tune. Fit a probe on its stored features with "
                                               "heads.fit instead")
    if kind == "crepe" and mode == "lora":
        raise FineTuneSettingError("mode", f"lora puts adapters on attention projections; {name} is a conv net "
                                           "without attention. Use mode two-stage (blocks 5-6 unfrozen in stage 2) "
                                           "or full")
    if gradient_checkpointing and kind != "hf":
        raise FineTuneSettingError("gradient_checkpointing", f"is for transformers models; {name} has none")


def check_mode(fe: Frontend, mode: str, *, gradient_checkpointing: bool = False) -> None:
    """:func:`check_mode_for` of a loaded frontend (a frontend without parameters is not learned)."""
    if isinstance(fe, LogMelFrontend) or not any(True for _ in fe.parameters()):
        kind = "logmel"
    else:
        kind = "crepe" if isinstance(fe, CrepeFrontend) else "hf" if isinstance(fe, HFFrontend) else "other"
    check_mode_for(kind, fe.name, mode, gradient_checkpointing=gradient_checkpointing)


def _crepe_block(name: str) -> int | None:
    """CREPE parameter name -> its conv block 1..6 (``conv3.weight``, ``conv3_BN.bias``), or None (the
    classifier, which the hidden states never use)."""
    head = name.split(".")[0]
    if head.startswith("conv"):
        return int(head[4:].split("_")[0])
    return None


def config_value(fe: Frontend, name: str) -> float:
    """A training-noise setting (``layerdrop``, ``mask_time_prob``...) of a transformers frontend's
    config; 0 for frontends without one (CREPE) or a config without it."""
    config = getattr(getattr(fe, "model", None), "config", None)
    return float(getattr(config, name, 0.0) or 0.0)


def trainable_parts(fe: Frontend, mode: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The frontend parameters (name, parameter) that learn in stage 2 of ``mode``.

    For ``lora`` these are the adapters' (peft names them ``lora_A`` / ``lora_B``): apply
    :func:`add_lora` first."""
    named = list(fe.named_parameters())
    if isinstance(fe, CrepeFrontend):
        blocks = CREPE_STAGE2_BLOCKS if mode == "two-stage" else range(1, 7)
        return [(n, p) for n, p in named if _crepe_block(n.split("model.", 1)[-1]) in blocks]
    if mode == "lora":
        return [(n, p) for n, p in named if "lora_" in n]
    masking = config_value(fe, "mask_time_prob") > 0  # the mask embedding is used only when masking is on
    named = [(n, p) for n, p in named if masking or not n.endswith("masked_spec_embed")]
    if mode == "two-stage":  # the CNN feature encoder stays frozen, as HF's freeze_feature_encoder()
        return [(n, p) for n, p in named if ".feature_extractor." not in f".{n}"]
    return named


def skip_cnn_backward(fe: Frontend, mode: str) -> None:
    """Where the CNN feature encoder stays frozen (``two-stage``, ``lora``), tell a transformers model
    so (what its ``freeze_feature_encoder`` does): otherwise, in train mode, it makes the CNN output
    require grad and the backward pass runs through the CNN for nothing."""
    if not isinstance(fe, HFFrontend) or mode == "full":
        return
    base = fe.model.get_base_model() if hasattr(fe.model, "get_base_model") else fe.model
    cnn = getattr(base, "feature_extractor", None)
    if cnn is not None and hasattr(cnn, "_requires_grad"):
        cnn._requires_grad = False


def add_lora(fe: HFFrontend, *, rank: int, alpha: float, targets, dropout: float = 0.0) -> dict:
    """Wrap the frontend's transformers model with peft LoRA adapters on the modules whose names end
    in ``targets`` (see :data:`LORA_TARGETS`). The base weights stay as they were: the adapters' B
    matrices start at zero, so the wrapped model computes exactly what it did. Returns the config
    (JSON-able) for the run's record."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency
        raise FineTuneSettingError("mode", "lora needs the peft package: pip install peft") from None
    targets = [t.strip() for t in targets if t.strip()]
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise FineTuneSettingError("lora_targets",
                                   f"{','.join(targets)}: expected names among {', '.join(LORA_TARGETS)}")
    if int(rank) < 1 or not float(alpha) > 0:
        raise FineTuneSettingError("lora_rank", f"must be >= 1 (and lora_alpha > 0), got {rank} and {alpha}")
    found = {n.rsplit(".", 1)[-1] for n, _ in fe.model.named_modules()}
    missing = [t for t in targets if t not in found]
    if missing:
        raise FineTuneSettingError("lora_targets", f"{fe.name} has no module named {', '.join(missing)}")
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=targets,
                     bias="none")
    fe.model = get_peft_model(fe.model, cfg)
    return {"rank": int(rank), "alpha": float(alpha), "dropout": float(dropout), "targets": targets}


def merge_lora(fe: HFFrontend) -> HFFrontend:
    """Fold the adapters into the base weights (W + B A alpha / r) and drop peft's wrapper: the plain
    transformers model that extraction loads. A frontend without adapters is returned unchanged."""
    if hasattr(fe.model, "merge_and_unload"):
        fe.model = fe.model.merge_and_unload()
    return fe


class FineTuneModel(torch.nn.Module):
    """frontend + head module.

    ``kind``: ``"clip"`` (head maps pooled [B, L, D] -> [B, C]) or ``"frames"`` (head maps
    ([B, T, L, D], mask [B, T]) -> [B, T, n_out]).

    :meth:`hidden` takes a list of 1-D waves (samples of the *padded* clip, the frontend's own
    ``pad`` included, on its frame grid) and returns hidden states [B, T, L, D] and a mask [B, T].
    Waves of equal length run in one batch and no wave is zero-padded, so every row's hidden states
    equal a pass over that wave alone, for every model (group-norm CNNs and per-input normalisation
    included): the same numbers the store holds for it.
    """

    def __init__(self, frontend: Frontend, head: torch.nn.Module, kind: str):
        super().__init__()
        if kind not in ("clip", "frames"):
            raise ValueError(f"kind must be 'clip' or 'frames', got {kind!r}")
        self.frontend, self.head, self.kind = frontend, head, kind

    def n_frames(self, n_samples: int) -> int:
        """Frames of a padded-clip wave of ``n_samples`` samples (valid framing)."""
        return self.frontend.geometry.valid_frames(n_samples)

    def hidden(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """waves: B float32 tensors [S_b] on the model's device -> (h [B, T, L, D] float32, T = the
        longest row's frames, zeros past a row's own; mask [B, T] bool)."""
        counts = [self.n_frames(len(w)) for w in waves]
        T = max(counts) if counts else 0
        fe = self.frontend
        dev = waves[0].device
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            groups.setdefault(len(w), []).append(i)
        h = None
        for n, rows in groups.items():
            x = torch.stack([waves[i] for i in rows])
            out = fe.hidden_states(x, torch.full((len(rows),), n, device=dev))
            if h is None:
                h = out.new_zeros((len(waves), T) + tuple(out.shape[2:]))
            h[rows, :out.shape[1]] = out
        mask = torch.arange(T, device=dev)[None, :] < torch.tensor(counts, device=dev)[:, None]
        return h.float(), mask

    def head_output(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits [B, C] (clip) or per-frame outputs [B, T, n_out] (frames)."""
        if self.kind == "clip":
            return self.head(masked_mean(h, mask))
        return self.head(h, mask)

    def forward(self, waves):
        h, mask = self.hidden(waves)
        return self.head_output(h, mask), mask


def set_train_mode(model: FineTuneModel, frontend_learns: bool) -> None:
    """Head in train mode; the frontend in train mode only while some of it learns, and even then
    its frozen BatchNorm layers (CREPE's) stay in eval mode so their statistics do not move."""
    model.train()
    if not frontend_learns:
        model.frontend.eval()
        return
    for m in model.frontend.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def enable_gradient_checkpointing(fe: HFFrontend) -> None:
    """Recompute each transformer layer's activations in the backward pass instead of keeping them
    (transformers' gradient checkpointing; non-reentrant, so a frozen CNN below is fine)."""
    model = fe.model.get_base_model() if hasattr(fe.model, "get_base_model") else fe.model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise FineTuneSettingError("gradient_checkpointing", f"{type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

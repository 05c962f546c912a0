"""Vocal separation with demucs, cached on disk so each input file is separated once.

Audio conventions follow :mod:`featurestore.audio`: float32 arrays with time last,
sample rates in Hz, lengths in samples unless a name ends in ``_s`` (seconds).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch
from demucs.apply import apply_model

from .audio import AudioError, MISSING, read_audio_channels, resample

__all__ = ["SeparatorLoadError", "load_separator", "VocalSeparator", "VOCALS"]

PathLike = Union[str, os.PathLike]

#: Name of the demucs source that is kept.
VOCALS = "vocals"
#: Overlap between consecutive demucs chunks (fraction of a chunk).
OVERLAP = 0.25


class SeparatorLoadError(RuntimeError):
    """A demucs model could not be found or loaded (message names the model and repo)."""


def load_separator(name: str = "htdemucs", repo: PathLike | None = None, device="cpu"):
    """Load a demucs model like demucs does: ``demucs.pretrained.get_model(name, repo=repo)``.

    Args:
        name: model name or signature (e.g. ``"htdemucs"``), or a bag-of-models yaml stem.
        repo: None to use demucs' own lookup (HuggingFace hub / remote repo through the
            torch hub cache; needs network or a warm cache), or a local folder holding
            ``<name>.th`` / ``<name>-<sha256[:8]>.th`` (a package as written by
            ``demucs.states.serialize_model`` + ``save_with_checksum``) or ``<name>.yaml``
            (a bag of models), which loads offline.
        device: torch device the model is moved to.

    Returns:
        The model (``demucs`` Model or BagOfModels) in eval mode, with attributes
        ``samplerate`` (Hz), ``audio_channels`` and ``sources``.

    Raises:
        SeparatorLoadError (a RuntimeError): the model cannot be found or loaded; the
            message names the model and the repo.
    """
    from demucs.pretrained import get_model

    repo_path = Path(repo).expanduser().resolve() if repo is not None else None
    where = f"local repo {str(repo_path)!r}" if repo_path is not None else "demucs' default repositories"
    if repo_path is not None and not repo_path.is_dir():
        # demucs would print and sys.exit() here; raise a proper error instead.
        raise SeparatorLoadError(
            f"Cannot load demucs model {name!r}: repo {str(repo_path)!r} is not a directory."
        )
    try:
        model = get_model(name) if repo_path is None else _local_model(name, repo_path)
    except SystemExit as exc:  # demucs.utils.fatal
        raise SeparatorLoadError(f"Cannot load demucs model {name!r} from {where} (demucs exited).") from exc
    except Exception as exc:
        raise SeparatorLoadError(
            f"Cannot load demucs model {name!r} from {where}: {type(exc).__name__}: {exc}"
        ) from exc
    model.to(device)
    model.eval()
    return model


def _allowed_demucs_globals() -> list:
    """What a demucs model package may name besides tensors and plain values: its model class (the
    package's ``klass``) and ``fractions.Fraction`` (a segment length)."""
    from fractions import Fraction

    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return [Demucs, HDemucs, HTDemucs, Fraction]


def _local_model(name: str, repo: Path):
    """A model or bag of models from a local demucs repo, as ``demucs.pretrained.get_model(name,
    repo=repo)`` finds it (demucs' own repo classes, its checksum check), except that each ``.th``
    package is read with ``torch.load(weights_only=True)`` allowing only demucs' model classes
    (:func:`_allowed_demucs_globals`): demucs itself unpickles the file, which would run any code
    planted in it. A package needing anything else is refused (the caller names model and repo)."""
    import torch
    from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo, ModelLoadingError, check_checksum
    from demucs.states import load_model

    class WeightsOnlyRepo(LocalRepo):
        def get_model(self, sig: str):
            if sig not in self._models:
                raise ModelLoadingError(f"Could not find pre-trained model with signature {sig}.")
            file = self._models[sig]
            if sig in self._checksums:
                check_checksum(file, self._checksums[sig])
            try:
                with torch.serialization.safe_globals(_allowed_demucs_globals()):
                    package = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - UnpicklingError, or what a damaged file raises
                last = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
                raise ModelLoadingError(f"{file}: refused, not a demucs package of tensors and demucs model "
                                        f"classes (torch.load weights_only=True: {last}); nothing in it was run")
            return load_model(package)

    models = WeightsOnlyRepo(repo)
    return AnyModelRepo(models, BagOnlyRepo(repo, models)).get_model(name)


def _sha256_file(path: Path, hasher) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)


class VocalSeparator:
    """Separates vocals with demucs and caches them as FLAC files under ``cache_dir``.

    Cache key: sha256 of the input file's bytes, then the model name, then (if given)
    the resolved repo path and (if given) ``segment_s``; the vocals of a file live in
    ``cache_dir/<key>.flac`` (mono, PCM_24, at ``model.samplerate`` Hz). Files are
    written to a temporary file in ``cache_dir`` and moved into place with
    ``os.replace``, so an interrupted run never leaves a partial cache file.

    Args:
        cache_dir: folder for the cached FLAC files (created if needed).
        name, repo, device: see :func:`load_separator`. The model is loaded lazily,
            on the first file that is not cached yet.
        segment_s: length in seconds of the chunks demucs processes (None: the
            model's own ``segment``). For HTDemucs it must not exceed the model's
            training segment.
    """

    def __init__(
        self,
        cache_dir: PathLike,
        name: str = "htdemucs",
        repo: PathLike | None = None,
        device="cpu",
        segment_s: float | None = None,
    ):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.repo = Path(repo).expanduser().resolve() if repo is not None else None
        self.device = device
        self.segment_s = segment_s
        self._model = None

    # -- model -----------------------------------------------------------------
    @property
    def model(self):
        """The demucs model, loaded on first access."""
        if self._model is None:
            model = load_separator(self.name, self.repo, self.device)
            if VOCALS not in list(model.sources):
                raise SeparatorLoadError(
                    f"demucs model {self.name!r} has no {VOCALS!r} source (sources: {list(model.sources)})"
                )
            self._model = model
        return self._model

    @property
    def samplerate(self) -> int:
        """Sample rate of the separated vocals in Hz (``model.samplerate``; loads the model)."""
        return int(self.model.samplerate)

    # -- cache -----------------------------------------------------------------
    def cache_key(self, path: PathLike) -> str:
        """Hex sha256 identifying the vocals of ``path`` for this model configuration.

        Raises AudioError ``missing`` if ``path`` does not exist.
        """
        p = Path(path)
        if not p.is_file():
            raise AudioError(MISSING, f"Audio file does not exist: {p}")
        h = hashlib.sha256()
        _sha256_file(p, h)
        h.update(b"\0model=" + self.name.encode("utf-8"))
        if self.repo is not None:
            h.update(b"\0repo=" + str(self.repo).encode("utf-8"))
        if self.segment_s is not None:
            h.update(b"\0segment_s=" + repr(float(self.segment_s)).encode("ascii"))
        return h.hexdigest()

    def cache_path(self, path: PathLike) -> Path:
        """``cache_dir/<key>.flac``, the cached vocals file of ``path`` (may not exist yet)."""
        return self.cache_dir / f"{self.cache_key(path)}.flac"

    # -- separation ------------------------------------------------------------
    def separate(self, path: PathLike, *, check: bool = True) -> np.ndarray:
        """Separate the vocals of ``path`` without touching the cache.

        The file is decoded keeping its channels, each channel is resampled to
        ``model.samplerate``; mono input is duplicated to ``model.audio_channels``
        (input with another channel count than the model's is downmixed to mono
        first). ``demucs.apply.apply_model`` then runs with ``split=True``,
        ``overlap=0.25``, ``shifts=0`` (deterministic), and the ``vocals`` source
        is downmixed to mono by averaging its channels.

        Returns:
            float32 ``[samples]`` at ``model.samplerate`` Hz, with
            ``samples = ceil(n * model.samplerate / native_sr)`` for an input of ``n``
            samples at ``native_sr`` Hz.

        Raises:
            AudioError: bad input (see :func:`featurestore.audio.read_audio_channels`).
            SeparatorLoadError: the model cannot be loaded.
        """
        x, sr = read_audio_channels(path, check=check)  # [C, n] float32
        model = self.model
        model_sr = int(model.samplerate)
        n_ch = int(model.audio_channels)
        if x.shape[0] != n_ch:
            mono = x.mean(axis=0, keepdims=True) if x.shape[0] > 1 else x
            x = np.repeat(mono, n_ch, axis=0)
        x = resample(x, sr, model_sr)  # [channels, m]
        mix = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]  # [1, C, m]
        with torch.no_grad():
            est = apply_model(
                model,
                mix,
                shifts=0,
                split=True,
                overlap=OVERLAP,
                progress=False,
                device=self.device,
                segment=self.segment_s,
            )  # [1, n_sources, C, m]
        k = list(model.sources).index(VOCALS)
        vocals = est[0, k].mean(dim=0)
        return vocals.detach().cpu().numpy().astype(np.float32, copy=False)

    def vocals_path(self, path: PathLike, *, check: bool = True) -> Path:
        """Return the cached vocals file of ``path``, separating it first if absent.

        The file is mono FLAC (subtype PCM_24, samples clipped to [-1, 1]) at
        ``model.samplerate`` Hz, holding the output of :meth:`separate`. A cache hit
        neither loads the model nor decodes the audio.

        Raises:
            AudioError, SeparatorLoadError: see :meth:`separate`.
        """
        target = self.cache_path(path)
        if target.is_file():
            return target
        vocals = self.separate(path, check=check)
        self._write_atomic(target, np.clip(vocals, -1.0, 1.0), self.samplerate)
        return target

    def _write_atomic(self, target: Path, x: np.ndarray, sr: int) -> None:
        import soundfile as sf

        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=self.cache_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                sf.write(f, x, sr, format="FLAC", subtype="PCM_24")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

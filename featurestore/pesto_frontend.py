"""PESTO (self-supervised pitch estimation, Riou et al., ISMIR 2023) as a frontend of the store.

PESTO comes from the ``pesto-pitch`` package, which ships its trained weights inside its wheel
(``pesto/weights/*.ckpt``): no download. ``pesto-pitch`` is LGPL-3.0; this project uses it as an
unmodified library dependency (imported, never copied or vendored), which the LGPL allows from an
MIT-licensed project. Its model code and weights stay under their own license.

What PESTO computes on a waveform (``pesto.model.PESTO.forward``, read from the installed package):

1. a constant-Q transform (``pesto.utils.hcqt``: 3 bins per semitone from 27.5 Hz, variable-Q with
   ``gamma``), one 1-D convolution per harmonic with complex kernels of ``kernel_width`` samples
   (4096 at 16 kHz), stride = hop, *centred* with ``kernel_width // 2`` samples of **reflect**
   padding on each side, times the square root of each bin's kernel length;
2. log magnitude ``20 log10(max(|c|, eps))`` in dB, then (an in-place ``mul_`` on the way to the
   energy used by the confidence head) times ``ln(10) / 10``: the encoder sees that scaled copy;
3. the bins cropped by the pitch-shift range (``crop_cqt``: 251 -> 219 bins for ``mir-1k_g7``);
4. the encoder ``Resnet1d`` applied to every frame *on its own* (time is the batch axis): a layer
   norm over (harmonics, bins), a prefiltering conv over frequency, residual prefiltering convs,
   four 1x1 conv blocks, a Toeplitz "linear" layer (a convolution over frequency, so transposing
   the input shifts the output) giving 384 logits, a softmax;
5. the activations rolled by ``-round(shift * bins_per_semitone)`` bins so that bin ``k`` is MIDI
   pitch ``k / 3``; the pitch is an argmax-local weighted average of them.

Frame geometry. The stored frames use the same grid as PESTO: frame ``j`` is centred on sample
``j * hop`` and a clip of ``n`` samples gives ``n // hop + 1`` frames. The CQT kernels are
zero outside a central band (samples 985..3110 of the 4096 at 16 kHz: the longest, lowest-bin
kernel is 2126 samples), so the kernel bank is trimmed to the smallest centred span holding every
non-zero tap: ``receptive`` = 2126 samples (133 ms), ``pad`` = 1063. Trimming only drops
multiplications by zero. Frame ``j`` then covers samples ``[j*hop - pad, j*hop + pad)`` of the clip,
and depends on them only (the CQT is a windowed transform and the encoder sees one frame at a
time), so the frontend is ``frame_local``: windows need no context margins and a windowed long
clip equals a whole-clip pass.

Edge frames, the one deviation. The extractor zero-pads the clip by ``pad`` on both sides;
PESTO reflect-pads. So the frames whose span reaches past a clip edge (the first
``ceil(pad / hop)`` frames, 4 at a 320-sample hop, and as many or one fewer at the end) differ from
``pesto.predict``; every other frame is PESTO's own number (to float rounding). Reflect padding
cannot be reproduced frame-locally: a window of a long clip does not know where the clip ends.
(PESTO itself refuses clips of at most ``kernel_width // 2`` samples, 2048 at 16 kHz, which reflect
padding cannot handle; the store takes any length.)

Not used: the streaming variant (``streaming=True`` in PESTO's CQT: cached convolutions holding
the previous call's samples, a causal, stateful front with a delay), which would make a frame
depend on what was processed before; the voicing-confidence head and the volume; the pitch
decoding itself (a reduction of the last layer).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from featurestore.fingerprint import file_sha256
from featurestore.frontend_base import Frontend
from featurestore.registry import BackboneSpec


def _kernel_band(weight: torch.Tensor, centre: int) -> tuple[int, int]:
    """(first, last + 1) non-zero taps of a conv weight [out, 1, K], relative to ``centre``."""
    nz = torch.nonzero(weight.abs().sum(dim=(0, 1)) > 0).flatten()
    return int(nz.min()) - centre, int(nz.max()) + 1 - centre


def _checkpoint_path(checkpoint: str) -> Path:
    """A checkpoint file, or the name of one shipped in ``pesto/weights`` (``mir-1k_g7``) -> its path.
    FileNotFoundError naming the shipped ones otherwise."""
    import pesto

    if Path(checkpoint).is_file():
        return Path(checkpoint).resolve()
    shipped = Path(pesto.__file__).parent / "weights"
    path = shipped / f"{checkpoint}.ckpt"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in shipped.glob("*.ckpt"))) or "none"
        raise FileNotFoundError(f"PESTO checkpoint {checkpoint!r}: not a file, and not one shipped with pesto-pitch "
                                f"({have})")
    return path


#: sha256 of the checkpoints pesto-pitch 2.0.1 ships in its wheel (``pesto/weights``). Only a file with
#: one of these hashes is handed to ``pesto.load_model``, which unpickles it (the shipped files hold
#: omegaconf objects, so they cannot be read with ``weights_only=True``).
SHIPPED_SHA256 = {
    "mir-1k_g7": "16c32e06ddd950e3e4866dfa3c7f8a87c4988f8adf43e57977b189f031f26f3e",
    "mir-1k": "f48c355153fc2fce13393a216ff1629cdfe776b527ce11c8e879df9165e1fb3d",
}


def shipped_copy(path: Path) -> Path | None:
    """The wheel's own file (``pesto/weights/<name>.ckpt``) when ``path`` holds the same bytes as a
    shipped checkpoint and the wheel's file still has its recorded sha256; None otherwise."""
    import pesto

    digest = file_sha256(path)
    for name, expected in SHIPPED_SHA256.items():
        if digest == expected:
            own = Path(pesto.__file__).parent / "weights" / f"{name}.ckpt"
            if own.is_file() and file_sha256(own) == expected:
                return own
    return None


def _plain_checkpoint(path: Path) -> dict:
    """A user's checkpoint read with ``torch.load(weights_only=True)``: tensors and plain Python values
    only, so nothing in the file runs. A file that needs more (pickled classes, or code) is refused."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and whatever a damaged file raises: the file is not used
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"PESTO checkpoint {path}: refused, it cannot be read as plain tensors and values "
                         f"(torch.load weights_only=True: {first.strip()}). Loading it fully would run any code "
                         "pickled in it; only the checkpoints shipped with pesto-pitch (checked by sha256) are. "
                         "Re-save a trusted checkpoint with its hparams/hcqt_params as plain dicts and lists") from None
    missing = [k for k in ("hparams", "state_dict", "hcqt_params") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"PESTO checkpoint {path}: not a PESTO checkpoint (no {', '.join(missing)})")
    return ckpt


def _model_from_plain(ckpt: dict, step_ms: float, sample_rate: int):
    """A ``pesto.model.PESTO`` built from a plain checkpoint dict with pesto-pitch's own classes, as
    ``pesto.load_model`` builds it (non-strict weights: the CQT kernels are computed, not stored)."""
    from pesto.data import Preprocessor
    from pesto.model import PESTO, Resnet1d

    hparams = ckpt["hparams"]
    pre = Preprocessor(hop_size=step_ms, sampling_rate=sample_rate, **dict(ckpt["hcqt_params"]))
    model = PESTO(Resnet1d(**hparams["encoder"]), preprocessor=pre, crop_kwargs=hparams["pitch_shift"],
                  reduction=hparams["reduction"])
    model.load_state_dict(ckpt["state_dict"], strict=False)
    return model.eval()


def load_pesto(path: Path, step_ms: float, sample_rate: int):
    """-> (model, state_dict keys). Shipped checkpoints (sha256 in :data:`SHIPPED_SHA256`) through
    ``pesto.load_model``; any other file through :func:`_plain_checkpoint` (``weights_only=True``)."""
    own = shipped_copy(path)
    if own is not None:  # the wheel's file, hash-verified: pesto's own loader may unpickle it
        import pesto

        model = pesto.load_model(str(own), step_size=step_ms, sampling_rate=sample_rate)
        keys = set(torch.load(own, map_location="cpu", weights_only=False)["state_dict"])
        return model, keys
    ckpt = _plain_checkpoint(path)
    return _model_from_plain(ckpt, step_ms, sample_rate), set(ckpt["state_dict"])


def _check_encoder_loaded(model: torch.nn.Module, keys: set, path: Path) -> None:
    """``pesto.load_model`` falls back on a non-strict load with a log warning; refuse a checkpoint that
    leaves encoder weights at their random initialisation (pesto-pitch 2.0.1 does that to its own older
    ``mir-1k.ckpt``: its prefiltering layers are stored under other names). ``keys``: the checkpoint's
    state_dict keys."""
    missing = sorted(k for k in model.state_dict() if k.startswith("encoder.") and k not in keys)
    if missing:
        raise ValueError(f"PESTO checkpoint {path} does not hold encoder weights {', '.join(missing)} in the layout "
                         f"of the installed pesto-pitch: they would stay random (use mir-1k_g7)")


class PestoFrontend(Frontend):
    """PESTO's encoder as a stack of layers, frame-aligned with PESTO's own output.

    Sample rate 16 kHz (PESTO's kernels are built for any rate; its training data, MIR-1K, is
    16 kHz). Hop ``hop`` samples (registry: 320 = 20 ms, 50 frames/s, like the other frontends of
    the registry; PESTO's command-line default is 10 ms = 160). See the module docstring for the
    CQT, the frame geometry (``receptive`` 2126, ``pad`` 1063 samples at 16 kHz) and the edge frames.

    Layers (for the shipped ``mir-1k_g7`` model; counts and widths are read off the model), each
    frame on its own; ``F`` = 219 CQT bins (3 per semitone), D = 384 (the encoder's output width):

    ====  =======================================================  =============  ==============
    l     block of ``pesto.model.Resnet1d``                         native shape   stored as
    ====  =======================================================  =============  ==============
    0     ``layernorm``: the normalised CQT, the encoder's input   [1, 219]       219 + 165 zeros
    1     ``conv1``: prefiltering conv (kernel 39 bins) + LReLU      [40, 219]      9 bins: 360 + 24 zeros
    2-3   ``prefilt_layers[i]``, residual sum included              [40, 219]      9 bins: 360 + 24 zeros
    4-5   ``conv_layers`` 1x1 blocks to 30 channels                 [30, 219]      12 bins: 360 + 24 zeros
    6     ``conv_layers`` 1x1 block to 10 channels                  [10, 219]      38 bins: 380 + 4 zeros
    7     ``conv_layers`` 1x1 block to 3 channels                   [3, 219]       128 bins: 384
    8     ``fc`` (Toeplitz) logits, rolled like the activations      [384]          as is
    9     ``final_norm`` softmax, rolled: PESTO's ``activations``    [384]          as is
    ====  =======================================================  =============  ==============

    Equal width, as for CREPE: a block output [C, F] has its frequency axis average-pooled
    (``adaptive_avg_pool1d``: windows of about F / bins bins, e.g. 25 for 9 outputs) to ``min(F, D // C)`` bins and is
    flattened channel-major; the ``D - C * bins`` dims left over are zero (every frame, every clip).
    Layer 0 is unpooled (its first 219 dims are the encoder's input exactly), layers 8-9 are native.
    Layer 9 is the 384-bin pitch distribution that ``pesto.predict`` returns as ``activations``
    (bin ``k`` = MIDI ``k / 3``): its argmax-local weighted average is PESTO's pitch estimate. Layer 8
    are the logits of that softmax, rolled the same way (softmax of layer 8 = layer 9).

    ``checkpoint``: a name shipped in ``pesto/weights`` (the registry's ``mir-1k_g7``) or a ``.ckpt``
    file (``load_frontend("pesto", path=...)``); one whose encoder weights the installed
    ``pesto-pitch`` cannot load (its own older ``mir-1k``) is refused rather than left random. Only
    the shipped checkpoints (by sha256) go through ``pesto.load_model``, which unpickles; a user's
    file is read with ``torch.load(weights_only=True)`` or refused (:func:`load_pesto`).
    """

    def __init__(self, spec: BackboneSpec, checkpoint: str, hop: int, sample_rate: int = 16000):
        super().__init__()
        import pesto

        self.name, self.spec, self.checkpoint = spec.name, spec, checkpoint
        self.sample_rate, self.stride = int(sample_rate), int(hop)
        step_ms = 1000.0 * self.stride / self.sample_rate
        path = _checkpoint_path(checkpoint)
        model, keys = load_pesto(path, step_ms, self.sample_rate)
        _check_encoder_loaded(model, keys, path)
        model.eval()
        self.model = model
        pre = model.preprocessor
        if int(pre.hcqt_kernels.cqt_kernels[0].hop_length) != self.stride:
            raise ValueError(f"{spec.name}: hop {hop} samples at {sample_rate} Hz is a step of {step_ms} ms, "
                             f"which PESTO rounds to a hop of {pre.hcqt_kernels.cqt_kernels[0].hop_length} samples")
        # One kernel bank over all harmonics, trimmed to the smallest centred span with every
        # non-zero tap, so that frame j is centred on sample j * hop exactly as PESTO's.
        cqts = list(pre.hcqt_kernels.cqt_kernels)
        bands = []
        for cqt in cqts:
            if not cqt.center:
                raise ValueError(f"{spec.name}: PESTO checkpoint {checkpoint!r} uses an uncentred CQT")
            bands.append(_kernel_band(cqt.conv.weight, cqt.kernel_width // 2))
        half = max(max(-lo, hi) for lo, hi in bands)
        kernels, scales = [], []
        for cqt in cqts:
            w, c = cqt.conv.weight.detach(), cqt.kernel_width // 2
            k = torch.zeros(w.shape[0], 1, 2 * half, dtype=w.dtype)
            lo, hi = max(0, c - half), min(w.shape[-1], c + half)
            k[..., lo - c + half:hi - c + half] = w[..., lo:hi]
            kernels.append(k)
            scales.append(cqt.sqrt_lengths.detach().reshape(-1))
        self.register_buffer("kernels", torch.cat(kernels), persistent=False)  # [H * 2 * bins, 1, 2*half]
        self.register_buffer("sqrt_lengths", torch.stack(scales), persistent=False)  # [H, bins]
        self.n_harmonics, self.n_bins = len(cqts), int(cqts[0].n_bins)
        self.receptive, self.pad = 2 * half, half
        self.frame_local = True  # a windowed CQT frame, then the encoder on that frame alone
        self.roll = -round(float(model.shift) * model.bins_per_semitone)
        self.out_bins = int(model.encoder.hparams["output_dim"])  # D: the activations' bins (384)
        self.source = str(path)
        self.version = getattr(pesto, "__version__", None)

    # ---------------------------------------------------------------------------------------

    def encoder_input(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, S] (already padded by ``pad``) -> the encoder's input [B, T, H, F]: the cropped,
        scaled log-magnitude CQT exactly as ``PESTO.forward`` feeds ``encoder`` (dB x ln(10)/10)."""
        b = wave.shape[0]
        out = F.conv1d(wave[:, None, :], self.kernels, stride=self.stride)  # [B, H*2*bins, T]
        t = out.shape[-1]
        out = out.view(b, self.n_harmonics, 2, self.n_bins, t) * self.sqrt_lengths[None, :, None, :, None]
        cplx = torch.view_as_complex(out.permute(0, 4, 1, 3, 2).contiguous())  # [B, T, H, bins]
        db = cplx.abs().clamp(min=torch.finfo(torch.float32).eps).log10().mul(20)
        x = db * (math.log(10) / 10.0)
        return self.model.crop_cqt(x)

    def blocks(self, x: torch.Tensor):
        """Encoder input [N, H, F] -> yields every block's output in order: [N, C_l, F] for the conv
        blocks, then the rolled logits [N, 384] and the rolled softmax activations [N, 384] (a
        generator, so that a caller can pool each block before the next one is computed)."""
        enc = self.model.encoder
        x = enc.layernorm(x)
        yield x
        x = enc.conv1(x)
        yield x
        for p in range(enc.n_prefilt_layers - 1):
            y = enc.prefilt_layers[p](x)
            x = y + x if enc.residual else y
            yield x
        layers = list(enc.conv_layers)
        for i, m in enumerate(layers):
            x = m(x)
            if isinstance(m, torch.nn.Conv1d):
                continue
            if i + 1 == len(layers) or isinstance(layers[i + 1], torch.nn.Conv1d):
                yield x  # after the block's activation (and its dropout, identity in eval)
        logits = enc.fc(enc.flatten(x))
        yield logits.roll(self.roll, -1)
        yield enc.final_norm(logits).roll(self.roll, -1)

    def hidden_states(self, wave, lengths):
        b = wave.shape[0]
        x = self.encoder_input(wave)  # [B, T, H, F]
        t = x.shape[1]
        width = self.out_bins
        layers = []
        for y in self.blocks(x.reshape(b * t, *x.shape[2:])):
            if y.dim() == 3:  # [N, C, F]: frequency pooled to D // C bins, flattened channel-major
                c, f = y.shape[1], y.shape[2]
                bins = min(f, width // c)
                if bins != f:
                    y = F.adaptive_avg_pool1d(y, bins)
                y = y.reshape(y.shape[0], -1)
            if y.shape[1] < width:
                y = F.pad(y, (0, width - y.shape[1]))
            layers.append(y)
        return torch.stack(layers, dim=1).reshape(b, t, len(layers), width)

    def _padding_is_exact(self, x, h_full):
        """As the base class, on an input long enough that its shorter row still holds a frame (the
        constant-Q kernels of a checkpoint without ``gamma`` reach ~2 s at 16 kHz)."""
        reps = -(-int(self.receptive / 0.6 + 1) // x.shape[1])
        return super()._padding_is_exact(x.repeat(1, reps) if reps > 1 else x, h_full)

    def describe(self):
        d = super().describe()
        d.update(model_class="pesto.PESTO", checkpoint=self.checkpoint, source=self.source,
                 pesto_version=self.version, edge_padding="zeros (PESTO reflect-pads)")
        return d

"""8-bit frames (``--dtype int8``): codes per (chunk, layer, channel) with an offset and a step.

A chunk of ``chunk`` frames [chunk, L, D] is stored as uint8 codes ``q`` and, for each of its
(layer, channel) pairs, float32 ``offset`` and ``step``:

    x_hat = offset + step * q          (float32 arithmetic, q in 0..255)

``offset`` is the smallest value the pair takes over the chunk's clip frames and ``step`` its range
/ 255 (asymmetric min/max quantisation: the affine "scale and zero point" scheme, with the zero
point kept as a float offset so that a channel far from 0 loses nothing to an integer zero point).
Frames that belong to no clip (alignment padding) take no part in the range and are stored as code 0.

Why per (chunk, layer, channel): hidden states of self-supervised models have a few channels whose
values are hundreds of times larger than the rest (the "outlier dimensions" of transformers): one
step per layer would spend every code on those channels. Per channel and per chunk (256 frames,
about 5 s at 50 Hz), a burst in one chunk or one channel costs resolution only there. The price is
8 bytes per (layer, channel) per chunk: 8 / 256 = 3.1 % of the codes, so a store takes
(256 + 8) / 512 = 0.516x the bytes of float16 frames.

Error bound (tested on random and real frontend outputs, outlier channels included): for every
value, ``|x - x_hat| <= (1/2 + 1e-4) step + 2 eps32 max(|offset|, |offset + 255 step|)``, where ``step`` =
(max - min) / 255 of its (chunk, layer, channel); i.e. the maximum error is half a step, 1/510 =
0.20 % of the channel's range within the chunk (plus float32 rounding), and for values spread
evenly within a step the RMS error is step / sqrt(12), 0.11 % of that range. A chunk whose
channel is constant is exact (step 0).

Each chunk is quantised from its own frames only, so a unit (which owns whole chunks) is quantised
the same whatever order units are built in, by whichever process: resume and parallel builds give
the same bytes.
"""
from __future__ import annotations

import numpy as np

#: number of codes
LEVELS = 255
#: dtype of the stored codes and of the per-chunk parameters
CODE_DTYPE = np.dtype("uint8")
PARAM_DTYPE = np.dtype("float32")
#: storage dtype name accepted by the build (``--dtype int8``)
NAME = "int8"


def quantize_chunks(block: np.ndarray, valid: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantise frames [n, L, D] (float32, n a multiple of ``chunk``, starting on a chunk boundary)
    -> (codes uint8 [n, L, D], params float32 [n / chunk, 2, L, D]: row 0 offset, row 1 step).

    ``valid`` bool [n]: frames that hold clip data; the others (alignment padding) are left out of
    each chunk's range and stored as code 0. A chunk with no valid frame gets offset 0, step 0.
    NaN frames make their pair's parameters NaN (``featurestore.verify`` reports them)."""
    block = np.asarray(block, dtype=np.float32)
    n, shape = block.shape[0], block.shape[1:]
    if n % chunk:
        raise ValueError(f"quantize_chunks: {n} frames are not whole chunks of {chunk}")
    valid = np.asarray(valid, dtype=bool).reshape(n)
    codes = np.zeros(block.shape, dtype=CODE_DTYPE)
    params = np.zeros((n // chunk, 2) + shape, dtype=PARAM_DTYPE)
    for c in range(n // chunk):
        rows = slice(c * chunk, (c + 1) * chunk)
        v = valid[rows]
        if not v.any():
            continue
        x = block[rows][v] if not v.all() else block[rows]
        lo, hi = x.min(axis=0), x.max(axis=0)
        with np.errstate(over="ignore", invalid="ignore"):
            step = ((hi.astype(np.float64) - lo) / LEVELS).astype(np.float32)
            safe = np.where(step > 0, step, 1).astype(np.float32)
            q = np.rint((x - lo) / safe)
        q = np.clip(np.nan_to_num(q, nan=0.0), 0, LEVELS).astype(CODE_DTYPE)
        out = codes[rows]
        if v.all():
            out[...] = q
        else:
            out[v] = q
        params[c, 0], params[c, 1] = lo, step
    return codes, params


def dequantize_into(codes: np.ndarray, offset: np.ndarray, step: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = offset + step * codes`` (codes [t, L', D] uint8; offset/step [L', D] float32),
    computed in float32 whatever ``out``'s float dtype; returns ``out``."""
    if out.dtype == np.float32:
        np.multiply(codes, step, out=out, dtype=np.float32)
        out += offset
    else:
        out[...] = np.multiply(codes, step, dtype=np.float32) + offset
    return out


def dequantize(codes: np.ndarray, params: np.ndarray, chunk: int, first: int = 0) -> np.ndarray:
    """Frames [t, L, D] float32 of codes [t, L, D] starting at frame ``first`` of an array whose
    chunk c has ``params[c]`` = (offset, step) [2, L, D] (``params`` indexed from chunk
    first // chunk)."""
    out = np.empty(codes.shape, dtype=np.float32)
    c0 = first // chunk
    pos = 0
    while pos < len(codes):
        c = (first + pos) // chunk
        end = min(len(codes), (c + 1) * chunk - first)
        dequantize_into(codes[pos:end], params[c - c0, 0], params[c - c0, 1], out[pos:end])
        pos = end
    return out


def error_bound(params: np.ndarray) -> np.ndarray:
    """The largest ``|x - x_hat|`` the module docstring allows for each (chunk, layer, channel):
    params [C, 2, L, D] -> [C, L, D] float64."""
    lo, step = params[:, 0].astype(np.float64), params[:, 1].astype(np.float64)
    eps = float(np.finfo(np.float32).eps)
    return (0.5 + 1e-4) * step + 2 * eps * np.maximum(np.abs(lo), np.abs(lo + LEVELS * step))

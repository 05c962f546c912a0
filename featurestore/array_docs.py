"""What each array of a store is: the dimension names and attributes written with it.

With these, a store describes itself to any Zarr 3 reader: ``zarr.open_array(...).attrs`` says what
an array holds and in which units, and ``xarray.open_zarr(store, group="clips",
consolidated=False)`` (or ``group="backbones/<name>"``) gives a Dataset with named dimensions.

Dimensions: ``clip`` (N clips, the rows of ``clips/``), ``frame`` (F frames of a backbone),
``layer`` (L), ``dim`` (D), ``bound`` (2: start, end), ``unit`` (U units of work), ``row`` (rows of
``inputs/``, see :mod:`featurestore.fingerprint`). Strings use Zarr 3's ``string`` data type
(variable-length UTF-8), which zarr-python and xarray read as they are.
"""
from __future__ import annotations

#: Dimension names of the clip table's columns and labels.
CLIP_DIMS = ["clip"]

#: Dimension names of a backbone's arrays.
BACKBONE_DIMS = {
    "frames": ["frame", "layer", "dim"],
    "offsets": ["clip", "bound"],
    "pooled_mean": ["clip", "layer", "dim"],
    "pooled_std": ["clip", "layer", "dim"],
    "unit_done": ["unit"],
    "unit_checksum": ["unit"],
    "piece_sums": ["unit", "stat", "layer", "dim"],
    "frames_quant": ["chunk", "param", "layer", "dim"],
}

_CLIP_COLUMNS = {
    "id": "clip id: the input row's id, with '#NNNN' (segment number, from 0000) appended when files are "
          "cut into segments",
    "file_id": "id of the input row the clip was cut from",
    "source": "input audio file of the clip (path)",
    "audio": "audio file decoded for the clip: its source, or the source's separated vocals in the vocals cache",
    "start_s": "start of the clip, in seconds from the beginning of `audio`",
    "end_s": "end of the clip (exclusive), in seconds from the beginning of `audio`",
    "split": "split of the clip (e.g. train, valid, test; '' when the input gives none)",
}


def clip_column(name: str) -> dict:
    """Attributes of the clip-table column ``name`` (one of ``featurestore.clips.COLUMNS``)."""
    attrs = {"description": _CLIP_COLUMNS[name]}
    if name.endswith("_s"):
        attrs["units"] = "s"
    return attrs


def label_column(name: str) -> dict:
    """Attributes of ``clips/labels/<name>``."""
    return {"description": f"label column {name!r} of the input, as text ('' where a row has none; "
                           "JSON lists and objects are kept as JSON text)"}


def backbone_array(name: str, frontend: dict, dtype: str) -> dict:
    """Attributes of a backbone's array ``name`` (a key of :data:`BACKBONE_DIMS`).

    ``frontend``: the frontend's description (``Frontend.describe()``: sample_rate, frame_rate,
    stride, receptive, pad in samples / Hz); ``dtype``: the store dtype of frames and pooled rows.
    """
    if name == "frames":
        held = ("hidden states of every layer of the frontend (or of the model layers listed in the backbone "
                "attribute `layers`), frame by frame")
        stored = ("as 8-bit codes q (uint8): the value is offset + step * q, with offset and step of the frame's "
                  "chunk, layer and dim in `frames_quant` (featurestore.quantize)" if dtype == "int8"
                  else f"in the store dtype ({dtype})")
        return {
            "description": f"{held}, {stored}. Clip i holds frames offsets[i, 0] to offsets[i, 1] (exclusive); clips "
                           "are laid out in units that start on a chunk boundary, so frames that no clip's "
                           "offsets cover are alignment padding, filled with 0: not data",
            "sample_rate_hz": frontend.get("sample_rate"),
            "frame_rate_hz": frontend.get("frame_rate"),
            "stride_samples": frontend.get("stride"),
            "receptive_field_samples": frontend.get("receptive"),
            "pad_samples": frontend.get("pad"),
            "frame_span": "frame j of a clip covers the clip's samples [j*stride - pad, j*stride - pad + "
                          "receptive) at sample_rate_hz; its time is the centre of that span (seconds) plus the "
                          "clip's start_s",
        }
    if name == "frames_quant":
        return {"description": "per chunk of `frames` (rows [c*chunk, (c+1)*chunk)), layer and dim: param 0 = offset "
                               "(the smallest value over the chunk's clip frames), param 1 = step (range / 255), "
                               "float32; a frame's value is offset + step * code (featurestore.quantize)",
                "param": ["offset", "step"]}
    if name == "offsets":
        return {"description": "frame range [start, end) of each clip in `frames` (int64, in frames); row i is "
                               "clip i of the clip table clips/; start == end for a clip shorter than the "
                               "frontend's receptive field (no frame)",
                "units": "frame", "bound": ["start", "end"]}
    if name in ("pooled_mean", "pooled_std"):
        what = "mean" if name == "pooled_mean" else "standard deviation (population, ddof=0)"
        cast = "float16 (the frames are 8-bit codes; the pooled rows come from the unquantised frames)" \
            if dtype == "int8" else f"the store dtype ({dtype})"
        return {"description": f"{what} over each clip's frames, per layer and dim: computed in float32, cast "
                               f"to {cast}; NaN for a clip with no frame"}
    if name == "unit_done":
        return {"description": "1 once the unit's frames and pooled rows are written (the marker is written "
                               "last), 0 before; unit u holds clips u*clips_per_unit to (u+1)*clips_per_unit "
                               "(exclusive; clips_per_unit is an attribute of the backbone group), except in "
                               "a backbone with the attribute piece_frames, where a clip longer than that is "
                               "split over several units of piece_frames frames each "
                               "(featurestore.layout.unit_table)"}
    if name == "unit_checksum":
        return {"description": "CRC-32 (zlib.crc32) of each unit's bytes as stored: its frames (alignment frames "
                               "included; none in a store built with --frames none), then its frames_quant rows "
                               "(int8 stores), then its pooled_mean and pooled_std rows (for a piece of a split "
                               "clip: its piece_sums row instead, float64), C order, store dtype; written before "
                               "the unit's unit_done marker, checked by python -m featurestore.verify "
                               "(see featurestore.writer.unit_checksum)"}
    if name == "piece_sums":
        return {"description": "for a unit that is one piece of a clip split over several units (attribute "
                               "piece_frames): the sum (stat 0) and sum of squares (stat 1) over the piece's "
                               "frames, float64, computed before the cast to the store dtype; the clip's "
                               "pooled rows are computed from its pieces' sums once all are done. Zero for "
                               "other units", "stat": ["sum", "sum_of_squares"]}
    raise KeyError(f"no description for backbone array {name!r}")

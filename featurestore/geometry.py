"""The frame geometry of a backbone: how many frames a clip has and where each frame lies in time.

A frontend with *valid* framing (:mod:`featurestore.frontends`) pads a clip of ``n`` samples with
``pad`` zeros on each side; its frame ``j`` covers padded-clip samples
``[j * stride, j * stride + receptive)``, i.e. clip samples ``[j * stride - pad, ... + receptive)``,
at ``sample_rate`` Hz. So a clip has ``(n + 2 pad - receptive) // stride + 1`` frames (0 when the
padded clip is shorter than ``receptive``) and frame ``j``'s time is the centre of its span,
``(j * stride - pad + receptive / 2) / sample_rate`` seconds from the clip's start.

:class:`FrameGeometry` is the one home of these rules: the frontends (``Frontend.geometry``), the
build, ingest, verify, the store reader and fine-tuning all count and time frames through it. It is
stored in a backbone's ``frontend`` attribute (:meth:`FrameGeometry.to_attrs`,
:meth:`FrameGeometry.from_attrs`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the ``frontend`` attributes that hold the geometry (samples, and Hz for the sample rate)
GEOMETRY_KEYS = ("sample_rate", "stride", "receptive", "pad")


@dataclass(frozen=True)
class FrameGeometry:
    """Valid framing of one frontend. sample_rate: Hz; stride (hop), receptive (samples one frame
    covers), pad (zeros the frontend adds on each side of a clip): samples. Raises ValueError
    when sample_rate, stride or receptive is < 1 or pad < 0."""

    sample_rate: int
    stride: int
    receptive: int
    pad: int = 0

    def __post_init__(self):
        for k in GEOMETRY_KEYS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"frame geometry: {k} must be a whole number of samples (Hz for sample_rate), "
                                 f"got {v!r}")
            object.__setattr__(self, k, int(v))
        if self.sample_rate < 1 or self.stride < 1 or self.receptive < 1 or self.pad < 0:
            raise ValueError(f"frame geometry: need sample_rate, stride, receptive >= 1 and pad >= 0, got "
                             f"sample_rate {self.sample_rate}, stride {self.stride}, receptive {self.receptive}, "
                             f"pad {self.pad}")

    @classmethod
    def of(cls, frontend) -> "FrameGeometry":
        """The geometry of an object with ``sample_rate``, ``stride``, ``receptive`` and ``pad``
        attributes (a :class:`featurestore.frontend_base.Frontend`)."""
        return cls(frontend.sample_rate, frontend.stride, frontend.receptive, getattr(frontend, "pad", 0))

    @classmethod
    def from_attrs(cls, frontend_attrs) -> "FrameGeometry":
        """From a backbone's ``frontend`` attribute (a mapping holding at least :data:`GEOMETRY_KEYS`).
        Raises KeyError naming the missing keys, ValueError for a value that is not a whole number."""
        missing = [k for k in GEOMETRY_KEYS if k not in frontend_attrs]
        if missing:
            raise KeyError(f"frame geometry: the frontend attributes have no {', '.join(missing)}")
        return cls(*(_whole(frontend_attrs[k], k) for k in GEOMETRY_KEYS))

    def as_dict(self) -> dict:
        """``{"sample_rate", "stride", "receptive", "pad"}``: the geometry as a backbone's ``identity``
        records it (what must match to resume or reuse a backbone)."""
        return {k: getattr(self, k) for k in GEOMETRY_KEYS}

    def to_attrs(self) -> dict:
        """JSON-able ``{"sample_rate", "frame_rate", "stride", "receptive", "pad"}``, the geometry part
        of a backbone's ``frontend`` attribute."""
        return {"sample_rate": self.sample_rate, "frame_rate": self.frame_rate, "stride": self.stride,
                "receptive": self.receptive, "pad": self.pad}

    @property
    def frame_rate(self) -> float:
        """Frames per second (Hz): sample_rate / stride."""
        return self.sample_rate / self.stride

    def n_frames(self, n_samples) -> int:
        """Frames of a clip of ``n_samples`` samples, the ``pad`` zeros on each side included."""
        return self.valid_frames(int(n_samples) + 2 * self.pad)

    def valid_frames(self, n_padded: int) -> int:
        """Frames of ``n_padded`` samples that already include any padding (a window of the padded
        clip): (n_padded - receptive) // stride + 1, 0 when shorter than ``receptive``."""
        n = int(n_padded)
        return (n - self.receptive) // self.stride + 1 if n >= self.receptive else 0

    def frame_counts(self, n_samples) -> np.ndarray:
        """:meth:`n_frames` of each clip length -> int64 [N] (``n_samples``: int [N])."""
        return np.array([self.n_frames(n) for n in np.asarray(n_samples).reshape(-1)], dtype=np.int64)

    def frame_times(self, n_frames: int, start_s: float = 0.0) -> np.ndarray:
        """Centre of each frame's span in seconds -> float64 [n_frames]: from the clip's start, plus
        ``start_s`` (the clip's start in its file) when given."""
        j = np.arange(int(n_frames), dtype=np.float64)
        t = (j * self.stride - self.pad + self.receptive / 2) / self.sample_rate
        return t + start_s if start_s else t

    @property
    def first_frame_s(self) -> float:
        """Time of frame 0's centre from the clip's start, in seconds (negative when ``pad`` exceeds
        half the receptive field)."""
        return (self.receptive / 2 - self.pad) / self.sample_rate

    def samples_for(self, n_frames: int) -> int:
        """The fewest clip samples that give ``n_frames`` frames (0 for none)."""
        T = int(n_frames)
        return max(1, (T - 1) * self.stride + self.receptive - 2 * self.pad) if T else 0

    def frame_span(self, first: int, k: int) -> tuple[int, int]:
        """Padded-clip samples [p0, p1) that frames [first, first + k) need (k >= 1)."""
        return first * self.stride, (first + k - 1) * self.stride + self.receptive


def _whole(value, key: str) -> int:
    """An attribute's whole number (JSON may hold 16000 as 16000.0); ValueError naming ``key`` otherwise."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"frame geometry: {key} must be a whole number, got {value!r}") from None
    if v != value:
        raise ValueError(f"frame geometry: {key} must be a whole number, got {value!r}")
    return v

"""The layout plan of one backbone: where each clip's frames go in its ``frames`` array.

:func:`plan_backbone` is the one rule, used by the build (planning a backbone), ingest (laying out
imported features) and verify (recomputing the plan a store should have): frame counts from the
clip table's start/end and the frame geometry (:class:`featurestore.geometry.FrameGeometry`), then
units and offsets (:func:`featurestore.layout.unit_plan`, :func:`featurestore.layout.layout_frames`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore import layout
from featurestore.clips import clip_samples
from featurestore.geometry import FrameGeometry


@dataclass
class BackbonePlan:
    """Where each clip of one backbone goes. offsets int64 [N, 2]; frames F total; piece: frames per
    piece when long clips are split over several units (:func:`featurestore.layout.unit_table`)."""

    offsets: np.ndarray
    per_unit: int
    align: int
    total_frames: int
    piece: int | None = None

    @property
    def units(self) -> np.ndarray:
        """int64 [U, 4]: clip_lo, clip_hi, frame_start, frame_end of every unit."""
        return layout.unit_table(self.offsets, self.per_unit, self.align, self.piece)

    @property
    def n_units(self) -> int:
        return len(self.units)


def clip_frame_counts(start_s, end_s, geometry: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(frames int64 [N], samples int64 [N]) of clips [start_s, end_s) (seconds, float [N]) under
    ``geometry``; samples as :func:`featurestore.clips.clip_samples` rounds them."""
    a, b = clip_samples(np.asarray(start_s, dtype=np.float64), np.asarray(end_s, dtype=np.float64),
                        geometry.sample_rate)
    return geometry.frame_counts(b - a), b - a


def plan_backbone(start_s, end_s, geometry: FrameGeometry, target_unit_frames: int, align: int, *,
                  pieces: bool = True) -> tuple[BackbonePlan, np.ndarray, np.ndarray]:
    """The layout of a backbone over clips [start_s, end_s) (seconds, float [N]) -> (plan, frames
    int64 [N], samples int64 [N]).

    target_unit_frames: frames a unit aims at; align: frames a unit starts on a multiple of (the
    chunk, or the shard when sharded). ``pieces=False`` gives the layout of stores planned before
    long clips were split into pieces (no ``piece_frames`` in their identity)."""
    nf, samples = clip_frame_counts(start_s, end_s, geometry)
    per_unit, piece = layout.unit_plan(nf, int(target_unit_frames), int(align), pieces=pieces)
    offsets, total = layout.layout_frames(nf, per_unit, int(align))
    return BackbonePlan(offsets, per_unit, int(align), total, piece), nf, samples

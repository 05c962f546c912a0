"""Audio for fine-tuning, read on the fly from a store's clip table.

A clip of the store is ``audio`` (the decoded file: the input, or its cached separated vocals) at
samples ``[round(start_s * sr), round(end_s * sr))``, resampled to the frontend's rate ``sr``
(:func:`featurestore.clips.clip_samples`, :func:`featurestore.audio.load_audio_range`): the same
segments, resampling and vocals cache the extraction read. Waves handed to the model are stretches
of the *padded clip* (the clip with the frontend's ``pad`` zeros on both sides, as extraction pads
it) on the frame grid: frames ``[a, a + k)`` are padded-clip samples
``[a * stride, (a + k - 1) * stride + receptive)``, so a crop's hidden states are the clip's frames
a .. a + k - 1 computed from exactly their own samples.

Which stretches an epoch reads is decided in the main process from a seeded generator
(:func:`epoch_items`), so workers hold no randomness and a resumed run reads the same crops.
"""
from __future__ import annotations

import numpy as np
import torch

from featurestore import audio as au
from featurestore.clips import clip_samples
from featurestore.geometry import FrameGeometry


class ClipAudio(torch.utils.data.Dataset):
    """Items ``(i, first, k)`` (clip ``i`` of ``rows``, first frame, frames; ``k`` None = to the
    clip's end) -> dict(i, first, wave float32 [samples of the padded-clip stretch]).

    store: a :class:`featurestore.store.FeatureStore`; rows: clip-table rows; ``geometry``: the
    frontend's frame geometry (:class:`featurestore.geometry.FrameGeometry`, ``Frontend.geometry``).
    ``n_frames[i]``: the clip's frames, as the store lays them out."""

    def __init__(self, store, rows, geometry: FrameGeometry):
        clips = store.clips
        self.rows = np.asarray(rows, dtype=np.int64)
        self.paths = [str(clips["audio"][r]) for r in self.rows]
        a, b = clip_samples(clips["start_s"][self.rows], clips["end_s"][self.rows], geometry.sample_rate)
        self.starts, self.lengths = a, b - a
        self.geometry = geometry
        self.sr, self.pad = geometry.sample_rate, geometry.pad
        self.n_frames = geometry.frame_counts(self.lengths)

    def __len__(self):
        return len(self.rows)

    def span(self, i: int, first: int, k: int | None) -> tuple[int, int]:
        """Padded-clip samples [p0, p1) of frames [first, first + k) of clip ``i``."""
        k = int(self.n_frames[i]) - first if k is None else int(k)
        return self.geometry.frame_span(first, k)

    def read(self, i: int, first: int = 0, k: int | None = None) -> np.ndarray:
        """float32 [p1 - p0]: the padded clip's samples of frames [first, first + k)."""
        p0, p1 = self.span(i, first, k)
        out = np.zeros(p1 - p0, dtype=np.float32)
        # padded-clip sample p is clip sample p - pad, i.e. file sample starts[i] + p - pad
        c0, c1 = max(p0 - self.pad, 0), min(p1 - self.pad, int(self.lengths[i]))
        if c1 > c0:
            a = int(self.starts[i])
            x = au.load_audio_range(self.paths[i], self.sr, a + c0, a + c1)
            out[c0 + self.pad - p0:c1 + self.pad - p0] = x
        return out

    def __getitem__(self, item):
        i, first, k = item
        return {"i": int(i), "first": int(first), "wave": torch.from_numpy(self.read(int(i), int(first), k))}


class StoredFrames(torch.utils.data.Dataset):
    """The frozen frontend's output, read from the store instead of recomputed (stage 1).

    Items ``(i, first, k)`` as :class:`ClipAudio`'s -> dict(i, first, frames float32 [k, L, D]): frames
    [first, first + k) of clip ``i`` of ``rows`` for ``backbone`` (one copy from the chunk files)."""

    def __init__(self, store, backbone: str, rows):
        from featurestore.datasets import ClipFrames

        self.clips = ClipFrames(store, backbone, rows)
        self.n_frames = np.array([self.clips.n_frames(i) for i in range(len(self.clips))], dtype=np.int64)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, item):
        i, first, k = (int(item[0]), int(item[1]), item[2])
        k = int(self.n_frames[i]) - first if k is None else int(k)
        out = np.empty((k,) + tuple(self.clips.shape_ld), dtype=np.float32)
        self.clips.window_into(i, first, first + k, out)
        return {"i": i, "first": first, "frames": torch.from_numpy(out)}


def collate(items: list[dict]) -> dict:
    """A batch: ``i`` [B], ``first`` [B] (lists of ints), and either ``waves``: list of B 1-D tensors
    (not padded: :meth:`heads.finetune_model.FineTuneModel.hidden` batches equal lengths), or, from
    :class:`StoredFrames`, ``frames`` [B, T, L, D] zero-padded with ``mask`` [B, T]."""
    out = {"i": [it["i"] for it in items], "first": [it["first"] for it in items]}
    if "frames" not in items[0]:
        out["waves"] = [it["wave"] for it in items]
        return out
    T = max(len(it["frames"]) for it in items)
    frames = torch.zeros((len(items), T) + tuple(items[0]["frames"].shape[1:]))
    mask = torch.zeros((len(items), T), dtype=torch.bool)
    for r, it in enumerate(items):
        frames[r, :len(it["frames"])] = it["frames"]
        mask[r, :len(it["frames"])] = True
    out.update(frames=frames, mask=mask)
    return out


def tile(n: int, window: int, phase: int) -> list[tuple[int, int]]:
    """Windows [(start, stop), ...] of at most ``window`` frames tiling [0, n) once, cut at ``phase``
    (see :meth:`heads.frame_heads._FrameHead._tile`)."""
    from heads.frame_heads import _FrameHead

    return _FrameHead._tile(n, window, phase)


def epoch_items(n_frames: np.ndarray, crop: int | None, generator: torch.Generator, *, tile_clips: bool,
                rank: int = 0, world: int = 1) -> list[tuple[int, int, int | None]]:
    """One epoch's items ``(clip, first frame, frames or None)`` for this rank, shuffled.

    Clips of at most ``crop`` frames (or any clip when ``crop`` is None) are read whole. Longer clips:
    with ``tile_clips`` (frame tasks) cut into windows of ``crop`` frames at a random phase, so every
    frame is trained once per epoch; otherwise (clip tasks) one random crop of ``crop`` frames.
    Clips without frames are left out. Every rank draws the same list from the same generator and
    takes every ``world``-th item from ``rank`` on (after the shuffle), cut to a common length so
    that ranks run the same number of batches."""
    items = []
    for i, n in enumerate(int(v) for v in n_frames):
        if n <= 0:
            continue
        if crop is None or n <= crop:
            items.append((i, 0, None))
        elif tile_clips:
            phase = int(torch.randint(0, crop, (1,), generator=generator))
            items += [(i, a, b - a) for a, b in tile(n, crop, phase)]
        else:
            items.append((i, int(torch.randint(0, n - crop + 1, (1,), generator=generator)), crop))
    order = torch.randperm(len(items), generator=generator).tolist()
    items = [items[j] for j in order]
    per_rank = len(items) // world if world > 1 else len(items)
    return items[rank::world][:per_rank]

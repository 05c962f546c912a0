"""torch Datasets over a store, so heads train with a plain DataLoader.

- :class:`ClipDataset`: one item per clip: pooled [L, D] (default) or all frames [T, L, D].
- :class:`FrameWindowDataset`: fixed-length windows of frames [W, L, D] cut from clips, with the
  clip row and the first frame, for frame-level tasks.

Items are float32 torch tensors. Frames are copied from the store's chunk files straight into
each item's float32 buffer (:meth:`featurestore.store.FeatureStore.frames_into`: one pass that
also converts from float16, no intermediate arrays); a window never reads more than the chunks it
overlaps.
"""
from __future__ import annotations

import numpy as np
import torch

from featurestore.store import FeatureStore


def _rows(store: FeatureStore, split: str | None, rows) -> np.ndarray:
    if rows is not None:
        return np.asarray(rows, dtype=np.int64)
    if split is not None:
        return store.split_indices(split)
    return np.arange(len(store))


class ClipDataset(torch.utils.data.Dataset):
    """Items: dict(x=float32 [L', D] pooled (or [T, L', D] frames if ``pooled=False``), row=int).
    ``layers``: the model's hidden-state indices (:meth:`FeatureStore.layer_ids`), None: all stored.

    The pooled view is read once into memory ([N, L', D] is small); frames are read per item.
    """

    def __init__(self, store: FeatureStore, backbone: str, *, layers=None, split: str | None = None, rows=None,
                 pooled: bool = True, stat: str = "mean"):
        self.store, self.backbone, self.layers, self.pooled = store, backbone, layers, pooled
        if not pooled:
            store.require_frames(backbone, "ClipDataset(pooled=False)")
        self.rows = _rows(store, split, rows)
        self._pooled = store.pooled(backbone, layers=layers, stat=stat, rows=self.rows) if pooled else None
        L, D = store.shape(backbone)
        self._shape_ld = (L if layers is None else len(np.atleast_1d(layers)), D)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        if self.pooled:
            x = np.asarray(self._pooled[i], dtype=np.float32)
        else:
            x = np.empty((int(self.store.n_frames(self.backbone)[row]),) + self._shape_ld, dtype=np.float32)
            self.store.frames_into(row, self.backbone, x, layers=self.layers)
        return {"x": torch.from_numpy(x), "row": row}


class FrameWindowDataset(torch.utils.data.Dataset):
    """Items: dict(x=float32 [W, L', D], row=int clip row, start=int first frame, length=int valid frames).

    Windows of ``window`` frames with hop ``hop`` (default: ``window``, no overlap) tile every clip;
    the last window of a clip is zero-padded to ``window`` frames and ``length`` says how many are real.
    Clips with no frame are left out.
    """

    def __init__(self, store: FeatureStore, backbone: str, *, window: int = 250, hop: int | None = None,
                 layers=None, split: str | None = None, rows=None):
        if window < 1:
            raise ValueError("window must be >= 1 frame")
        self.store, self.backbone, self.layers = store, backbone, layers
        store.require_frames(backbone, "FrameWindowDataset")
        self.window, self.hop = int(window), int(hop or window)
        n = store.n_frames(backbone)
        self._n = n
        index = []
        for r in _rows(store, split, rows):
            for s in range(0, max(int(n[r]) - self.window, 0) + 1, self.hop) if n[r] > 0 else []:
                index.append((int(r), s))
            if n[r] > self.window and (int(n[r]) - self.window) % self.hop:
                index.append((int(r), int(n[r]) - self.window))  # last frames not covered by the hop grid
        self.index = index
        L, D = store.shape(backbone)
        self._shape_ld = (L if layers is None else len(np.atleast_1d(layers)), D)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        row, start = self.index[i]
        stop = min(start + self.window, int(self._n[row]))  # a clip shorter than the window is padded
        out = np.empty((self.window,) + self._shape_ld, dtype=np.float32)
        n = self.store.frames_into(row, self.backbone, out, layers=self.layers, start=start, stop=stop)
        out[n:] = 0
        return {"x": torch.from_numpy(out), "row": row, "start": start, "length": n}


class ClipFrames:
    """A lazy list of clips' frames: nothing is read until a clip or a window of it is asked for.

    ``len(cf)`` clips; ``cf[i]`` -> [T_i, L, D] (store dtype); ``cf.window(i, a, b)`` -> frames
    [a, b) of clip i; ``cf.n_frames(i)``; ``cf.shape_ld`` = (L, D). Frame-level heads train from
    this without holding a split in memory (a 4-minute song of a 13 x 768 backbone is ~480 MB
    as float32).
    """

    def __init__(self, store: FeatureStore, backbone: str, rows):
        store.require_frames(backbone, "a frame head (or anything reading a clip's frames)")
        self.store, self.backbone = store, backbone
        self._ids = store.layer_ids(backbone)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._n = store.n_frames(backbone)[self.rows]
        self.shape_ld = store.shape(backbone)

    def __len__(self):
        return len(self.rows)

    def n_frames(self, i: int) -> int:
        return int(self._n[i])

    def window(self, i: int, a: int, b: int) -> np.ndarray:
        return self.store.frames(int(self.rows[i]), self.backbone, start=a, stop=b)

    def window_into(self, i: int, a: int, b: int, out: np.ndarray, layers=None) -> int:
        """Frames [a, b) of clip i (``layers``: positions in the stored layer axis, as the heads count
        them; None = all) written into ``out[:b - a]`` (e.g. a float32 buffer: one copy, the
        conversion included); returns b - a."""
        ids = None if layers is None else [self._ids[int(k)] for k in layers]  # the reader takes model indices
        return self.store.frames_into(int(self.rows[i]), self.backbone, out, layers=ids, start=a, stop=b)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.window(i, 0, self.n_frames(i))

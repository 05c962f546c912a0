"""Frame heads' training epochs: every frame of every clip is fed exactly once per epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.frame_heads import CRFHead, FrameClassifierHead, _Clips, _FrameHead

WINDOW = 8


def _clips(lengths):
    """Clip i as [T_i, 1, 2] float32 whose values are (i, frame index), and targets holding the frame
    index, so every fed frame says which clip and frame it is."""
    X, targets = [], []
    for i, n in enumerate(lengths):
        x = np.zeros((n, 1, 2), np.float32)
        x[:, 0, 0] = i
        x[:, 0, 1] = np.arange(n)
        X.append(x)
        targets.append({"frame": torch.arange(n, dtype=torch.long), "clip": torch.full((n,), i, dtype=torch.long)})
    return _Clips.of(X), targets


def _head(cls=FrameClassifierHead, batch_size=3):
    head = cls(window=WINDOW, batch_size=batch_size)
    head.n_layers_in_, head.n_features_in_ = 1, 2      # what fit sets before training
    return head


def _epoch(head, X, targets, seed):
    """Feed counts per (clip, frame), window lengths, and the batches' shapes of one epoch."""
    counts = [np.zeros(X.n_frames(i), np.int64) for i in range(len(X))]
    lengths, batches = [], []
    for x, tg, mask in head._windows(X, targets, torch.Generator().manual_seed(seed)):
        assert x.shape[:2] == mask.shape and x.shape[2:] == (1, 2)
        batches.append((x.shape[0], x.shape[1]))
        assert mask.shape[1] <= WINDOW
        assert mask.sum(1).max() == mask.shape[1]               # padded to the batch's longest window
        for r in range(x.shape[0]):
            m = mask[r]
            n = int(m.sum())
            assert n >= 1 and bool(m[:n].all()) and not bool(m[n:].any())   # right-padded
            clip = x[r, :n, 0, 0].long()
            frame = x[r, :n, 0, 1].long()
            i = int(clip[0])
            assert (clip == i).all()
            assert torch.equal(frame, torch.arange(int(frame[0]), int(frame[0]) + n))   # contiguous
            assert torch.equal(tg["frame"][r, :n], frame) and (tg["clip"][r, :n] == i).all()
            np.add.at(counts[i], frame.numpy(), 1)
            lengths.append(n)
    return counts, lengths, batches


LENGTHS = [1, 3, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW, 2 * WINDOW + 1, 5 * WINDOW + 3, 37]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("cls", [FrameClassifierHead, CRFHead])
def test_every_frame_fed_exactly_once_per_epoch(seed, cls):
    X, targets = _clips(LENGTHS)
    counts, lengths, _ = _epoch(_head(cls), X, targets, seed)
    for n, c in zip(LENGTHS, counts):
        assert (c == 1).all(), f"clip of {n} frames fed {c.tolist()}"
    assert max(lengths) <= WINDOW
    assert sum(lengths) == sum(LENGTHS)


@pytest.mark.parametrize("n", [1, 5, WINDOW - 1, WINDOW])
def test_a_clip_no_longer_than_the_window_is_one_window(n):
    X, targets = _clips([n])
    for seed in range(10):
        counts, lengths, _ = _epoch(_head(), X, targets, seed)
        assert lengths == [n] and (counts[0] == 1).all()


def test_phase_is_random_per_clip_and_epoch():
    n = 5 * WINDOW + 3
    X, targets = _clips([n] * 4)
    per_epoch = []
    for seed in range(6):
        starts = [set() for _ in range(4)]
        for x, _, mask in _head()._windows(X, targets, torch.Generator().manual_seed(seed)):
            for r in range(x.shape[0]):
                starts[int(x[r, 0, 0, 0])].add(int(x[r, 0, 0, 1]))
        phases = [min(s - {0}) % WINDOW for s in starts]      # first cut after frame 0
        per_epoch.append(tuple(phases))
    assert len(set(per_epoch)) > 1                            # differs between epochs
    assert any(len(set(p)) > 1 for p in per_epoch)            # and between clips of one epoch


def test_tile():
    assert _FrameHead._tile(0, 8, 3) == []
    assert _FrameHead._tile(5, 8, 3) == [(0, 5)]
    assert _FrameHead._tile(8, 8, 3) == [(0, 8)]
    assert _FrameHead._tile(20, 8, 0) == [(0, 8), (8, 16), (16, 20)]
    assert _FrameHead._tile(20, 8, 3) == [(0, 3), (3, 11), (11, 19), (19, 20)]
    assert _FrameHead._tile(19, 8, 3) == [(0, 3), (3, 11), (11, 19)]
    for n in range(1, 40):
        for phase in range(8):
            w = _FrameHead._tile(n, 8, phase)
            assert w[0][0] == 0 and w[-1][1] == n
            assert all(a < b <= a + 8 for a, b in w)
            assert all(w[k][1] == w[k + 1][0] for k in range(len(w) - 1))


def test_order_is_shuffled_and_batches_padded_to_their_longest_window():
    X, targets = _clips([3 * WINDOW + 5] * 6)
    head = _head(batch_size=4)
    orders = []
    for seed in range(3):
        order = []
        for x, _, mask in head._windows(X, targets, torch.Generator().manual_seed(seed)):
            assert x.shape[1] == int(mask.sum(1).max())
            order += [(int(x[r, 0, 0, 0]), int(x[r, 0, 0, 1])) for r in range(x.shape[0])]
        orders.append(order)
    assert orders[0] != sorted(orders[0])
    assert len({tuple(o) for o in orders}) == 3

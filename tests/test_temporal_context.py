"""The temporal context layer of the frame heads (heads.temporal): its receptive field is exactly the
documented number of frames on each side (impulse test), padding does not leak into a padded batch,
and the heads turn ``context`` seconds into frames at the store's frame rate."""
import numpy as np
import pytest
import torch

from heads.frame_heads import CRFHead, FrameClassifierHead, _Net
from heads.temporal import TemporalContext, context_frames, dilations


@pytest.mark.parametrize("radius", [1, 2, 3, 7, 8, 15])
def test_dilations_add_up_to_the_radius(radius):
    d = dilations(radius)
    assert sum(d) == radius and all(v >= 1 for v in d)
    assert len(d) <= int(np.ceil(np.log2(radius + 1))) + 1


@pytest.mark.parametrize("radius", [1, 3, 8, 15])
def test_impulse_reaches_exactly_radius_frames_each_side(radius):
    torch.manual_seed(radius)
    layer = TemporalContext(dim=5, width=6, radius=radius).double()
    T, t0 = 4 * radius + 21, 2 * radius + 10
    base = torch.randn(1, T, 5, dtype=torch.float64)
    bumped = base.clone()
    bumped[0, t0] += 10.0 * torch.randn(5, dtype=torch.float64)
    with torch.no_grad():
        diff = (layer(bumped) - layer(base)).abs().amax(dim=2)[0]       # [T]
    changed = np.flatnonzero(diff.numpy() > 1e-12)
    assert changed.min() == t0 - radius and changed.max() == t0 + radius
    assert len(changed) == 2 * radius + 1                                # every frame in between too


def test_padded_rows_equal_the_clip_alone():
    torch.manual_seed(0)
    layer = TemporalContext(dim=4, width=8, radius=6)
    x = torch.randn(2, 40, 4)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :40], mask[1, :17] = True, True
    x[1, 17:] = 123.0                                                    # garbage in the padding
    with torch.no_grad():
        together = layer(x, mask)
        alone = layer(x[1:, :17])
    torch.testing.assert_close(together[1, :17], alone[0])


def test_context_seconds_become_frames_at_the_frame_rate():
    assert context_frames(0.15, 50.0) == 8 and context_frames(0.15, 100.0) == 15 and context_frames(0, 75.0) == 0
    with pytest.raises(ValueError, match="context"):
        context_frames(-0.1, 50.0)
    net = _Net(L=3, D=4, n_out=5, layer_norm=False, radius=8, width=6)
    assert net.context.radius == 8 and sum(c.dilation[0] for c in net.context.convs) == 8
    assert _Net(L=3, D=4, n_out=5, layer_norm=False).context is None      # context 0: the per-frame linear probe


@pytest.mark.parametrize("cls", [FrameClassifierHead, CRFHead])
def test_heads_fit_with_context_and_record_its_frames(cls):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((60, 2, 3)).astype(np.float32) for _ in range(6)]
    y = [[[0.1, 0.5, 60], [0.6, 1.0, 62]] for _ in range(6)]
    head = cls(epochs=2, lr=1e-2, window=20, context=0.1).fit(X, y, frame_rate=50.0)
    assert head.context_frames_ == 5 and head.module_.context.radius == 5
    assert len(head.predict(X[:2])) == 2
    with pytest.raises(ValueError, match="context"):
        cls(epochs=1, context=-1).fit(X, y, frame_rate=50.0)


@pytest.mark.parametrize("cls", [FrameClassifierHead, CRFHead])
def test_batched_predict_equals_clip_by_clip(cls):
    """Clips of different lengths decoded in one padded batch give the notes each gives alone (the
    temporal layer zeroes the padding; Viterbi carries padded frames)."""
    rng = np.random.default_rng(1)
    X = [rng.standard_normal((n, 2, 3)).astype(np.float32) for n in (70, 23, 51, 8)]
    y = [[[0.1, 0.4, 60], [0.5, 0.9, 64]]] * 4
    head = cls(epochs=3, lr=3e-2, window=20, context=0.1).fit(X, y, frame_rate=50.0)
    offsets = [0.0, 1.5, 3.0, 7.25]
    together = head.predict(X, offsets=offsets)
    alone = [head.predict([x], offsets=[o])[0] for x, o in zip(X, offsets)]
    assert together == alone and any(len(n) for n in together)

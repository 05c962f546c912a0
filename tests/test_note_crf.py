"""The structured note CRF (heads.note_crf) against the dense LinearChainCRF with the same parameters:
log Z, its gradients, Viterbi paths and marginals on random inputs, with padded rows; and batched
decoding against song-by-song decoding."""
import numpy as np
import pytest
import torch

from heads.crf import LinearChainCRF
from heads.note_crf import NoteChainCRF
from heads.note_states import NoteStates


def pair(P=12, seed=0, scale=1.0):
    """A structured CRF and a dense CRF sharing random transition/start/end parameters."""
    states = NoteStates(60, 60 + P - 1)
    torch.manual_seed(seed)
    fast = NoteChainCRF(states)
    dense = LinearChainCRF(states.num_states, states.allowed())
    with torch.no_grad():
        for p in ("transitions", "start", "end"):
            getattr(fast, p).copy_(scale * torch.randn_like(getattr(fast, p)))
        dense.load_state_dict(fast.state_dict())
    return states, fast, dense


def batch(S, lengths, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    em = scale * torch.randn(len(lengths), T, S, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return em, mask


@pytest.mark.parametrize("lengths", [[1], [7], [40, 40, 40], [40, 13, 1, 0, 27]])
def test_log_partition_and_gradients_equal_the_dense_crf(lengths):
    states, fast, dense = pair()
    em, mask = batch(states.num_states, lengths)
    em = em.double()
    fast.double(), dense.double()
    e1, e2 = em.clone().requires_grad_(), em.clone().requires_grad_()
    z1, z2 = fast.log_partition(e1, mask), dense.log_partition(e2, mask)
    torch.testing.assert_close(z1, z2, rtol=1e-9, atol=1e-9)
    w = torch.linspace(0.5, 1.5, len(lengths), dtype=torch.float64)     # unequal row weights
    (z1 * w).sum().backward()
    (z2 * w).sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-7, atol=1e-9)
    for p in ("transitions", "start", "end"):
        g1, g2 = getattr(fast, p).grad, getattr(dense, p).grad
        g2 = torch.zeros_like(g1) if g2 is None else g2                  # T == 1: no transition was used
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-9)


def test_nll_in_float32_matches_float64_dense_and_is_finite_for_large_emissions():
    states, fast, dense = pair(scale=2.0)
    em, mask = batch(states.num_states, [60, 33], scale=40.0)          # emissions spread over ~300 nats
    tags = torch.stack([states.encode([[0.0, 0.3, 61], [0.3, 0.5, 63]], 60, 100.0),
                        states.encode([[0.1, 0.2, 70]], 60, 100.0)])
    n1 = fast.nll(em, tags, mask, reduction="none")
    n2 = dense.double().nll(em.double(), tags, mask, reduction="none")
    assert torch.isfinite(n1).all()
    torch.testing.assert_close(n1.double(), n2, rtol=1e-5, atol=1e-2)


def test_viterbi_and_marginals_equal_the_dense_crf():
    states, fast, dense = pair(P=24, seed=3)
    em, mask = batch(states.num_states, [200, 150, 1, 90], seed=4)
    p1, p2 = fast.viterbi(em, mask), dense.viterbi(em, mask)
    assert torch.equal(p1, p2)
    for r in range(len(p1)):
        n = int(mask[r].sum())
        path = p1[r, :n]
        assert bool(states.allowed()[path[:-1], path[1:]].all())          # a sustain continues its pitch
    m1, m2 = fast.marginals(em.double(), mask), dense.double().marginals(em.double(), mask)
    torch.testing.assert_close(m1, m2, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(m1.sum(2), mask.double())


def test_batched_decoding_equals_song_by_song():
    states, fast, _ = pair(P=24, seed=5)
    lengths = [120, 77, 5, 120, 64]
    em, mask = batch(states.num_states, lengths, seed=6)
    together = fast.viterbi(em, mask)
    for r, n in enumerate(lengths):
        alone = fast.viterbi(em[r:r + 1, :n], mask[r:r + 1, :n])[0]
        assert torch.equal(together[r, :n], alone)
        assert (together[r, n:] == -1).all()


def test_crf_head_selection_rules():
    """selection="conp" keeps the epoch with the best decoded COnP; "nll" the epoch with the lowest
    validation NLL per frame (history's val = minus it); anything else is refused by name."""
    from heads.frame_heads import CRFHead

    rng = np.random.default_rng(0)
    X = [rng.standard_normal((50, 2, 3)).astype(np.float32) for _ in range(6)]
    y = [[[0.1, 0.5, 60], [0.6, 0.9, 62]] for _ in range(6)]
    for rule in ("conp", "nll"):
        head = CRFHead(epochs=3, lr=1e-2, window=20, selection=rule).fit(X, y, frame_rate=50.0)
        vals = [h["val"] for h in head.history_]
        assert head.best_epoch_ == int(np.argmax(vals))
        assert all(h["train_s"] > 0 and h["val_s"] > 0 for h in head.history_)
        if rule == "nll":
            assert all(v < 0 for v in vals)                                  # minus an NLL per frame
        else:
            assert all(0.0 <= v <= 1.0 for v in vals)                         # an F1
    with pytest.raises(ValueError, match="selection"):
        CRFHead(epochs=1, selection="loss").fit(X, y, frame_rate=50.0)


def test_float32_gradients_are_finite_when_emissions_favour_an_impossible_path():
    """Emissions that favour an impossible path by ~100 nats (sustain of one pitch straight into the
    sustain of the next, every onset far below: what PESTO's features gave early in training): the
    states of the only possible paths underflow to alpha = 0 in float32 while their beta-hat passes
    float32's range, so the backward pass must be redone in float64. Gradients are then finite, no
    overflow warning is raised, and they equal the dense CRF's in float64."""
    import warnings

    states, fast, dense = pair(P=48)
    with torch.no_grad():
        for crf in (fast, dense):
            for p in ("transitions", "start", "end"):
                getattr(crf, p).zero_()
    T, switch = 51, 34
    g = torch.Generator().manual_seed(0)
    em = -110.0 + torch.randn(1, T, states.num_states, generator=g)     # onsets, other pitches: far below
    a, b = 2 + 2 * 8, 2 + 2 * 9                                         # sustain of pitch 8, then of pitch 9
    em[0, :, 0] = -13.0                                                 # silence: possible, unlikely
    em[0, :switch, a], em[0, switch:, a] = 0.0, -10.0
    em[0, :switch, b], em[0, switch:, b] = -32.0, 0.0
    mask = torch.ones(1, T, dtype=torch.bool)
    e1 = em.clone().requires_grad_()
    e2 = em.double().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)                  # no overflow / invalid value
        fast.log_partition(e1, mask).sum().backward()
    dense.double().log_partition(e2, mask).sum().backward()
    assert torch.isfinite(e1.grad).all()
    torch.testing.assert_close(e1.grad.double(), e2.grad, rtol=1e-4, atol=1e-5)
    for p in ("transitions", "start", "end"):
        assert torch.isfinite(getattr(fast, p).grad).all()

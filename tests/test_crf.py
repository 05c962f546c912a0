"""LinearChainCRF against brute-force enumeration, a small training run, and NoteStates round trips."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from heads.crf import LinearChainCRF
from heads.note_states import NoteStates

LENGTHS = [(1, 1, 1), (2, 1, 2), (3, 1, 2), (4, 2, 3), (5, 3, 1)]   # B = 3 rows of different lengths


# ------------------------------------------------------------------------------ brute force
def _problem(S: int, lengths, seed: int, constrained: bool):
    """Random float64 CRF + emissions + right-padded mask."""
    g = torch.Generator().manual_seed(seed)
    allowed = allowed_start = None
    if constrained:
        allowed = torch.rand(S, S, generator=g) < 0.55
        allowed |= torch.eye(S, dtype=torch.bool)                    # every state reachable from itself
        allowed_start = torch.rand(S, generator=g) < 0.5
        allowed_start[int(torch.randint(S, (1,), generator=g))] = True
    crf = LinearChainCRF(S, allowed, allowed_start).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(S, S, generator=g, dtype=torch.float64))
        crf.start.copy_(torch.randn(S, generator=g, dtype=torch.float64))
        crf.end.copy_(torch.randn(S, generator=g, dtype=torch.float64))
    B, T = len(lengths), max(lengths)
    em = torch.randn(B, T, S, generator=g, dtype=torch.float64) * 1.5
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return crf, em, mask


def _all_paths(S: int, L: int) -> np.ndarray:
    return np.array(list(itertools.product(range(S), repeat=L)), dtype=np.int64).reshape(-1, L)


def _brute(crf: LinearChainCRF, em_row: torch.Tensor, L: int):
    """(paths [N, L], scores [N]) over ALLOWED paths, scored independently of the module's code."""
    S = crf.num_states
    trans = crf.transitions.detach().numpy()
    start = crf.start.detach().numpy()
    end = crf.end.detach().numpy()
    al = crf.allowed.numpy()
    als = crf.allowed_start.numpy()
    e = em_row[:L].numpy()
    p = _all_paths(S, L)
    keep = als[p[:, 0]] & al[p[:, :-1], p[:, 1:]].all(axis=1)
    p = p[keep]
    sc = start[p[:, 0]] + e[np.arange(L), p].sum(1) + trans[p[:, :-1], p[:, 1:]].sum(1) + end[p[:, -1]]
    return p, sc


def _logsumexp(x: np.ndarray) -> float:
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


CASES = [(S, lengths, constrained) for S in (3, 4) for lengths in LENGTHS for constrained in (False, True)]


@pytest.mark.parametrize("S,lengths,constrained", CASES)
def test_against_brute_force(S, lengths, constrained):
    crf, em, mask = _problem(S, lengths, seed=17 * S + sum(lengths) + 100 * constrained, constrained=constrained)
    with torch.no_grad():
        logz = crf.log_partition(em, mask)
        vit = crf.viterbi(em, mask)
        marg = crf.marginals(em, mask)
    T = em.shape[1]
    for b, L in enumerate(lengths):
        paths, sc = _brute(crf, em[b], L)
        assert len(paths) > 0
        # forward algorithm
        assert logz[b].item() == pytest.approx(_logsumexp(sc), abs=1e-8)
        # viterbi: argmax path and its score
        best = paths[int(np.argmax(sc))]
        assert vit[b, :L].tolist() == best.tolist()
        assert (vit[b, L:] == -1).all()
        assert crf.score(em[b:b + 1], vit[b:b + 1], mask[b:b + 1]).item() == pytest.approx(sc.max(), abs=1e-8)
        # marginals
        prob = np.exp(sc - _logsumexp(sc))
        ref = np.zeros((L, S))
        for t in range(L):
            np.add.at(ref[t], paths[:, t], prob)
        np.testing.assert_allclose(marg[b, :L].numpy(), ref, atol=1e-9)
        assert (marg[b, L:] == 0).all()
        # score and nll of every allowed path; exp(-nll) sums to one
        N = len(paths)
        tags = torch.full((N, T), -1, dtype=torch.long)
        tags[:, :L] = torch.from_numpy(paths)
        em_n = em[b:b + 1].expand(N, -1, -1)
        mask_n = mask[b:b + 1].expand(N, -1)
        with torch.no_grad():
            np.testing.assert_allclose(crf.score(em_n, tags, mask_n).numpy(), sc, atol=1e-9)
            nll = crf.nll(em_n, tags, mask_n, reduction="none")
        np.testing.assert_allclose(nll.numpy(), _logsumexp(sc) - sc, atol=1e-9)
        assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)
        assert crf.nll(em_n, tags, mask_n, reduction="sum").item() == pytest.approx(nll.sum().item())
        assert crf.nll(em_n, tags, mask_n, reduction="mean").item() == pytest.approx(nll.mean().item())


def test_nll_batch_reductions_and_padding_tags():
    crf, em, mask = _problem(4, (5, 3, 1), seed=3, constrained=False)
    tags = torch.randint(0, 4, mask.shape)
    per = crf.nll(em, tags, mask, reduction="none")
    assert per.shape == (3,)
    # what sits in padded positions does not matter
    tags2 = tags.masked_fill(~mask, -1)
    torch.testing.assert_close(crf.nll(em, tags2, mask, reduction="none"), per)
    torch.testing.assert_close(crf.nll(em, tags, mask), per.mean())
    torch.testing.assert_close(crf.nll(em, tags, mask, reduction="sum"), per.sum())
    assert (per > 0).all()
    with pytest.raises(ValueError):
        crf.nll(em, tags, mask, reduction="bogus")


def test_disallowed_entries_fixed_and_gradients_finite():
    S = 4
    allowed = torch.ones(S, S, dtype=torch.bool)
    allowed[0, 1] = allowed[2, 3] = False
    allowed_start = torch.tensor([True, False, True, True])
    crf = LinearChainCRF(S, allowed, allowed_start)
    em = torch.randn(2, 6, S, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    tags = torch.tensor([[0, 0, 2, 2, 1, 1], [1, 2, 3, 0, -1, -1]])     # row 1 uses disallowed start and 2->3
    loss = crf.nll(em, tags, mask, reduction="sum")
    assert torch.isfinite(loss)
    loss.backward()
    for p in (crf.transitions, crf.start, crf.end, em):
        assert torch.isfinite(p.grad).all()
    assert crf.transitions.grad[~allowed].abs().max() == 0
    assert crf.start.grad[~allowed_start].abs().max() == 0
    # viterbi never uses a disallowed transition even when emissions push for it
    em2 = torch.zeros(1, 4, S)
    em2[0, 0, 1] = em2[0, 1, 3] = em2[0, 2, 1] = 50.0
    em2[0, 1, 2] = 45.0
    path = crf.viterbi(em2, torch.ones(1, 4, dtype=torch.bool))[0]
    assert bool(allowed_start[path[0]]) and bool(allowed[path[:-1], path[1:]].all())


def test_empty_row_and_single_frame():
    crf, em, _ = _problem(3, (2, 2), seed=5, constrained=False)
    mask = torch.tensor([[True, True], [False, False]])
    assert crf.log_partition(em, mask)[1].item() == 0.0
    assert crf.score(em, torch.zeros(2, 2, dtype=torch.long), mask)[1].item() == 0.0
    assert (crf.viterbi(em, mask)[1] == -1).all()
    m = crf.marginals(em, mask)
    torch.testing.assert_close(m[0].sum(-1), torch.ones(2, dtype=torch.float64))
    assert (m[1] == 0).all()
    one = crf.viterbi(em[:, :1], torch.ones(2, 1, dtype=torch.bool))
    assert one.shape == (2, 1) and (one >= 0).all()


def test_training_learns_tags():
    torch.manual_seed(0)
    S, F, B, T = 4, 8, 8, 40
    # sticky Markov chain tags
    stay = 0.8
    tags = torch.empty(B, T, dtype=torch.long)
    tags[:, 0] = torch.randint(0, S, (B,))
    for t in range(1, T):
        jump = torch.rand(B) > stay
        tags[:, t] = torch.where(jump, torch.randint(0, S, (B,)), tags[:, t - 1])
    lengths = torch.randint(T // 2, T + 1, (B,))
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    feats = torch.zeros(B, T, F)
    feats[..., :S] = torch.nn.functional.one_hot(tags, S).float()
    feats = feats + 0.35 * torch.randn(B, T, F)

    proj = torch.nn.Linear(F, S)
    crf = LinearChainCRF(S)
    opt = torch.optim.Adam([*proj.parameters(), *crf.parameters()], lr=0.1)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = crf.nll(proj(feats), tags, mask) / T
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first
    with torch.no_grad():
        pred = crf.viterbi(proj(feats), mask)
    acc = (pred == tags)[mask].float().mean().item()
    assert acc > 0.95
    assert (pred[~mask] == -1).all()


# ------------------------------------------------------------------------------ note states
def test_note_state_space():
    ns = NoteStates()
    assert (ns.midi_low, ns.midi_high, ns.num_states) == (36, 83, 97)
    a, s = ns.allowed(), ns.allowed_start()
    assert a.shape == (97, 97) and s.shape == (97,)
    assert a[:, 0].all() and a[:, 1::2].all()            # silence and onsets follow anything
    for k in range(48):
        col = a[:, 2 + 2 * k]
        assert col.nonzero().flatten().tolist() == [1 + 2 * k, 2 + 2 * k]
    assert s[0] and s[1::2].all() and not s[2::2].any()
    assert int(a.sum()) == 97 * 49 + 2 * 48
    assert ns.state_midi(ns.onset_state(60)) == 60 and ns.state_midi(ns.sustain_state(83)) == 83
    assert ns.clip_midi(30) == 42 and ns.clip_midi(24) == 36 and ns.clip_midi(90) == 78
    assert ns.clip_midi(84) == 72 and ns.clip_midi(59.6) == 60


def _random_notes(rng, frame_rate, n=25, midi=(36, 83)):
    notes, t = [], float(rng.uniform(0, 0.3))
    for _ in range(n):
        dur = float(rng.uniform(3, 30)) / frame_rate
        notes.append([t, t + dur, int(rng.integers(midi[0], midi[1] + 1))])
        gap = 0.0 if rng.random() < 0.35 else float(rng.uniform(0, 20)) / frame_rate
        t += dur + gap
    return notes, t


@pytest.mark.parametrize("frame_rate", [50.0, 75.0])
@pytest.mark.parametrize("frame_offset_s", [0.0, 0.37])
@pytest.mark.parametrize("seed", range(4))
def test_note_round_trip(frame_rate, frame_offset_s, seed):
    ns = NoteStates()
    rng = np.random.default_rng(seed)
    notes, end = _random_notes(rng, frame_rate)
    notes = [[on + frame_offset_s, off + frame_offset_s, m] for on, off, m in notes]
    n_frames = int(np.ceil(end * frame_rate)) + 5
    states = ns.encode(notes, n_frames, frame_rate, frame_offset_s)
    assert states.dtype == torch.long and states.shape == (n_frames,)
    assert ns.is_valid(states)
    a, s = ns.allowed(), ns.allowed_start()
    assert bool(s[states[0]]) and bool(a[states[:-1], states[1:]].all())
    back = ns.decode(states, frame_rate, frame_offset_s)
    assert len(back) == len(notes)
    for (on, off, m), (on2, off2, m2) in zip(notes, back):
        assert abs(on2 - on) <= 0.5 / frame_rate + 1e-9
        assert abs(off2 - off) <= 1.0 / frame_rate + 1e-9
        assert m2 == m and isinstance(m2, int)
    # decode(encode(decode(x))) is stable
    assert ns.decode(ns.encode(back, n_frames, frame_rate, frame_offset_s), frame_rate, frame_offset_s) == back


def test_encode_rules():
    ns = NoteStates()
    fr = 50.0
    on60, su60 = ns.onset_state(60), ns.sustain_state(60)
    # note shorter than a frame still gets its onset frame
    st = ns.encode([[0.101, 0.105, 60]], 10, fr)
    assert st.tolist() == [0] * 5 + [on60] + [0] * 4
    # octave folding
    st = ns.encode([[0.0, 0.1, 24], [0.2, 0.3, 95]], 20, fr)
    assert st[0] == ns.onset_state(36) and st[10] == ns.onset_state(83)
    # overlap: later onset wins, earlier note cut at its onset frame
    st = ns.encode([[0.0, 0.3, 60], [0.1, 0.2, 62]], 20, fr)
    assert st[:5].tolist() == [on60] + [su60] * 4
    assert st[5] == ns.onset_state(62) and (st[6:10] == ns.sustain_state(62)).all()
    assert (st[10:] == 0).all() and ns.is_valid(st)
    # note begun before the window: onset on frame 0; notes outside the window dropped
    st = ns.encode([[-0.5, 0.05, 60], [1.0, 2.0, 61]], 10, fr)
    assert st.tolist() == [on60, su60, su60] + [0] * 7
    # repeated pitch, legato: two notes
    st = ns.encode([[0.0, 0.1, 60], [0.1, 0.2, 60]], 12, fr)
    assert ns.decode(st, fr) == [[0.0, 0.1, 60], [0.1, 0.2, 60]]


def test_decode_tolerates_invalid():
    ns = NoteStates(48, 71)
    s = lambda m: ns.sustain_state(m)  # noqa: E731
    o = lambda m: ns.onset_state(m)  # noqa: E731
    seq = [s(60), s(60), 0, s(62), s(64), o(64), s(64), -1]
    notes = ns.decode(torch.tensor(seq), 100.0)
    assert notes == [[0.0, 0.02, 60], [0.03, 0.04, 62], [0.04, 0.05, 64], [0.05, 0.07, 64]]
    assert ns.decode([], 100.0) == []
    assert ns.decode([o(50), s(50)], 10.0, 1.0) == [[1.0, 1.2, 50]]


def test_crf_with_note_grammar_decodes_valid_notes():
    ns = NoteStates()
    crf = LinearChainCRF(ns.num_states, ns.allowed(), ns.allowed_start())
    torch.manual_seed(1)
    em = torch.randn(2, 30, ns.num_states) * 3
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    path = crf.viterbi(em, mask)
    assert ns.is_valid(path[0]) and ns.is_valid(path[1, :20])
    m = crf.marginals(em, mask)
    torch.testing.assert_close(m[mask].sum(-1), torch.ones(50), atol=1e-4, rtol=0)
    assert torch.isfinite(crf.nll(em, path.clamp(min=0), mask))


def test_forward_recursion_stays_exact_with_large_emissions():
    """Emission spreads of tens to hundreds of nats (un-normalised features) must not floor states."""
    from heads.note_states import NoteStates

    ns = NoteStates()
    crf = LinearChainCRF(ns.num_states, ns.allowed())
    torch.manual_seed(0)
    with torch.no_grad():
        crf.transitions.normal_(0, 3)
    trans, start, end = crf._effective(torch.float64)
    for scale in (5.0, 80.0, 200.0):
        em = torch.randn(2, 40, ns.num_states) * scale
        mask = torch.ones(2, 40, dtype=torch.bool)
        a = start + em[:, 0].double()
        for t in range(1, 40):
            a = torch.logsumexp(a[:, :, None] + trans, 1) + em[:, t].double()
        exact = torch.logsumexp(a + end, 1)
        got = crf.log_partition(em, mask).double()
        assert torch.allclose(got, exact, rtol=1e-5, atol=1e-2), (scale, got, exact)


# ------------------------------------------------------------------------------ long sequences
def _note_crf(seed: int, T: int, B: int = 1):
    """The note-state CRF (S = 97, NoteStates' grammar) with random transitions, float32 emissions."""
    ns = NoteStates()
    g = torch.Generator().manual_seed(seed)
    crf = LinearChainCRF(ns.num_states, ns.allowed(), ns.allowed_start())
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(ns.num_states, ns.num_states, generator=g))
        crf.start.copy_(torch.randn(ns.num_states, generator=g))
        crf.end.copy_(torch.randn(ns.num_states, generator=g))
    em = torch.randn(B, T, ns.num_states, generator=g) * 3
    return ns, crf, em


@pytest.fixture
def one_thread():
    """Viterbi is a loop of tiny steps: one thread runs it several times faster than two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_viterbi_float32_equals_float64_on_a_long_song(one_thread):
    """20,000 frames (a 6.7-minute song at 50 Hz): scores accumulated without renormalisation drifted
    so far in float32 that near-ties flipped (18-44 frames differed from float64 for seeds 0-2)."""
    ns, crf, em = _note_crf(seed=0, T=20_000)
    mask = torch.ones(1, em.shape[1], dtype=torch.bool)
    p32 = crf.viterbi(em, mask)
    p64 = crf.double().viterbi(em.double(), mask)
    assert p32.dtype == torch.long and p32.shape == (1, 20_000)
    assert int((p32 != p64).sum()) == 0
    assert ns.is_valid(p32[0])


def test_viterbi_batched_rows_equal_single_rows(one_thread):
    """Whole songs of different lengths decoded as rows of one call give each song's own path."""
    lengths = [600, 40, 1, 0, 599]
    ns, crf, em = _note_crf(seed=3, T=max(lengths), B=len(lengths))
    mask = torch.arange(em.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    batched = crf.viterbi(em, mask)
    assert batched.shape == mask.shape
    for b, L in enumerate(lengths):
        assert (batched[b, L:] == -1).all()
        if L == 0:
            continue
        alone = crf.viterbi(em[b:b + 1, :L], None)[0]
        assert batched[b, :L].tolist() == alone.tolist()
        assert ns.is_valid(alone)

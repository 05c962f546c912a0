"""Frame targets / loss / parser of the EfficientNet-b0 MIR-ST500 baseline convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heads.frame_targets import (INACTIVE_OCTAVE, INACTIVE_PC, N_OUTPUTS, OCTAVE, ONSET, PITCH_CLASS,
                                 SILENCE, encode_targets, frame_loss, join_chunks, parse_notes,
                                 probabilities)


def ideal_probs(t: dict) -> dict:
    T = len(t["onset"])
    return {"onset": t["onset"].astype(np.float64), "silence": t["silence"].astype(np.float64),
            "octave": np.eye(5)[t["octave"]].reshape(T, 5),
            "pitch_class": np.eye(13)[t["pitch_class"]].reshape(T, 13)}


def random_notes(rng, frame_rate, n_notes=25, start_s=0.13):
    """Monophonic notes, MIDI 36..83, each >= 3 frames long; gaps are 0 (legato, pitch change),
    under a frame, or several frames.  Onset frames are kept >= 4 frames apart: the peak rule
    (frames i-3..i+3, ties with earlier frames lose) merges equal onsets 3 frames apart."""
    hop = 1.0 / frame_rate
    notes, t, prev = [], start_s, None
    for _ in range(n_notes):
        kind = rng.integers(3)
        gap = 0.0 if (kind == 0 and prev is not None) else (
            rng.uniform(0.1, 0.9) * hop if kind == 1 else rng.uniform(2, 10) * hop)
        dur = rng.uniform(3.0, 15.0) * hop
        on = t + gap
        if prev is not None:
            on = max(on, prev[0] + 4.2 * hop)  # onset-to-onset >= 4 frames (+ rounding margin)
            if gap == 0.0:  # legato: previous note ends where this one starts
                prev[1] = on
        midi = int(rng.integers(36, 84))
        if gap == 0.0 and prev is not None and midi == prev[2]:
            midi = 36 + (midi - 36 + 1 + int(rng.integers(47))) % 48  # pitch change
        note = [on, on + dur, midi]
        notes.append(note)
        prev, t = note, on + dur
    return notes


@pytest.mark.parametrize("frame_rate", [50.0, 75.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(frame_rate, seed):
    rng = np.random.default_rng(seed)
    offset_s = 0.0 if seed == 0 else 0.37
    notes = random_notes(rng, frame_rate, start_s=offset_s + 0.13)
    assert any(b[0] == a[1] for a, b in zip(notes, notes[1:])), "want some legato notes"
    T = int(np.ceil((notes[-1][1] - offset_s) * frame_rate)) + 5
    t = encode_targets(notes, T, frame_rate, frame_offset_s=offset_s)
    assert t["onset"].dtype == np.float32 and t["silence"].dtype == np.float32
    assert t["octave"].dtype == np.int64 and t["pitch_class"].dtype == np.int64
    assert t["onset"].sum() == len(notes)
    got = parse_notes(ideal_probs(t), frame_rate, frame_offset_s=offset_s)
    assert len(got) == len(notes)
    tol = 1.0 / frame_rate + 1e-9
    for (on, off, m), (gon, goff, gm) in zip(notes, got):
        assert abs(gon - on) <= tol / 2 + 1e-9
        assert abs(goff - off) <= tol
        assert gm == m


def test_round_trip_in_chunks():
    """Encode per chunk, join, parse the whole song."""
    fr = 50.0
    notes = random_notes(np.random.default_rng(5), fr, n_notes=15)
    T = int(np.ceil(notes[-1][1] * fr)) + 3
    whole = encode_targets(notes, T, fr)
    bounds = [0, 37, 100, 101, T]
    parts = [encode_targets(notes, b - a, fr, frame_offset_s=a / fr) for a, b in zip(bounds, bounds[1:])]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    # join per-chunk "logits" (large +/- values) and parse
    def to_logits(t):
        x = np.full((len(t["onset"]), N_OUTPUTS), -30.0)
        x[:, ONSET] = np.where(t["onset"] > 0, 30.0, -30.0)
        x[:, SILENCE] = np.where(t["silence"] > 0, 30.0, -30.0)
        x[np.arange(len(x)), OCTAVE.start + t["octave"]] = 30.0
        x[np.arange(len(x)), PITCH_CLASS.start + t["pitch_class"]] = 30.0
        return x
    joined = join_chunks([torch.tensor(to_logits(p)) for p in parts])
    assert joined.shape == (T, N_OUTPUTS)
    got = parse_notes(probabilities(joined), fr)
    assert [n[2] for n in got] == [n[2] for n in notes]
    assert np.allclose([n[0] for n in got], [n[0] for n in notes], atol=0.5 / fr + 1e-9)
    assert np.allclose([n[1] for n in got], [n[1] for n in notes], atol=1.0 / fr + 1e-9)


def test_encode_layout_and_octave_clip():
    fr = 50.0
    notes = [[0.1, 0.2, 30], [0.3, 0.4, 60], [0.5, 0.6, 83], [0.7, 0.8, 84], [0.9, 1.0, 100], [1.1, 1.2, 35]]
    t = encode_targets(notes, 70, fr)
    for on, off, m in notes:
        j = int(round(on * fr))
        assert t["onset"][j] == 1
        assert t["octave"][j] == np.clip((m - 36) // 12, 0, 3)
        assert t["pitch_class"][j] == m % 12
    assert [t["octave"][int(round(n[0] * fr))] for n in notes] == [0, 2, 3, 3, 3, 0]
    # voiced frames: onset <= t_j < offset -> frames 5..9 for [0.1, 0.2)
    np.testing.assert_array_equal(t["silence"][4:11], [1, 0, 0, 0, 0, 0, 1])
    assert t["octave"][4] == INACTIVE_OCTAVE and t["pitch_class"][4] == INACTIVE_PC
    assert t["onset"].sum() == len(notes)


def test_encode_onset_frame_nearest_and_voiced():
    fr = 50.0  # frames at 0.00, 0.02, 0.04, ...
    t = encode_targets([[0.139, 0.3, 60]], 20, fr)  # nearest frame 7 (0.14), after the onset
    assert np.flatnonzero(t["onset"]).tolist() == [7]
    assert t["silence"][6] == 1 and t["silence"][7] == 0
    t = encode_targets([[0.141, 0.3, 60]], 20, fr)  # nearest frame 7 (0.14), before the onset
    assert np.flatnonzero(t["onset"]).tolist() == [7]
    assert t["silence"][7] == 0 and t["pitch_class"][7] == 0 and t["octave"][7] == 2
    assert t["silence"][14] == 0 and t["silence"][15] == 1  # 0.28 voiced, 0.30 not
    # an onset in an earlier chunk is not marked, its frames are voiced
    t = encode_targets([[0.1, 0.5, 60]], 10, fr, frame_offset_s=0.2)
    assert t["onset"].sum() == 0 and t["silence"].sum() == 0


def make_probs(T, onset=(), silence=(), pitches=None):
    """Probabilities: onset dict {frame: p}, silence dict {frame: p}, pitches [T] MIDI or None."""
    p = {"onset": np.zeros(T), "silence": np.zeros(T),
         "octave": np.zeros((T, 5)), "pitch_class": np.zeros((T, 13))}
    for i, v in dict(onset).items():
        p["onset"][i] = v
    for i, v in dict(silence).items():
        p["silence"][i] = v
    pitches = [60] * T if pitches is None else pitches
    for i, m in enumerate(pitches):
        if m is None:
            p["octave"][i, INACTIVE_OCTAVE] = 1
            p["pitch_class"][i, INACTIVE_PC] = 1
        else:
            p["octave"][i, (m - 36) // 12] = 1
            p["pitch_class"][i, m % 12] = 1
    return p


def test_parser_threshold():
    fr = 50.0
    assert parse_notes(make_probs(20, onset={5: 0.39}), fr) == []
    assert parse_notes(make_probs(20, onset={5: 0.4}), fr) == [[0.1, 0.4, 60]]
    # a sub-threshold bump inside a note does not split it
    assert parse_notes(make_probs(20, onset={2: 0.9, 10: 0.39}), fr) == [[0.04, 0.4, 60]]
    assert parse_notes(make_probs(20, onset={5: 0.9}), fr, onset_threshold=0.95) == []


def test_parser_neighbourhood():
    fr = 50.0
    # two peaks within 3 frames -> one onset, at the larger
    assert parse_notes(make_probs(30, onset={5: 0.6, 8: 0.9}), fr) == [[0.16, 0.6, 60]]
    assert parse_notes(make_probs(30, onset={5: 0.9, 7: 0.6}), fr) == [[0.1, 0.6, 60]]
    # 4 frames apart -> two onsets
    got = parse_notes(make_probs(30, onset={5: 0.6, 9: 0.9}), fr)
    assert [n[:2] for n in got] == [[0.1, 0.18], [0.18, 0.6]]
    # a plateau gives one onset, its first frame
    assert parse_notes(make_probs(30, onset={5: 0.8, 6: 0.8, 7: 0.8}), fr) == [[0.1, 0.6, 60]]
    # a peak at the song edges (window clipped)
    assert parse_notes(make_probs(10, onset={0: 0.7}), fr) == [[0.0, 0.2, 60]]
    assert parse_notes(make_probs(10, onset={9: 0.7}), fr) == [[0.18, 0.2, 60]]


def test_parser_silence_ends_note():
    fr = 50.0
    sil = {i: 0.9 for i in range(12, 20)}
    assert parse_notes(make_probs(30, onset={2: 0.9}, silence=sil), fr) == [[0.04, 0.24, 60]]
    assert parse_notes(make_probs(30, onset={2: 0.9}, silence={7: 0.5}), fr) == [[0.04, 0.14, 60]]
    assert parse_notes(make_probs(30, onset={2: 0.9}, silence={7: 0.49}), fr) == [[0.04, 0.6, 60]]
    # silence before an onset is ignored; silence on the onset frame does not end the note
    got = parse_notes(make_probs(30, onset={5: 0.9}, silence={0: 1, 1: 1, 5: 1, 9: 1}), fr,
                      frame_offset_s=1.0)
    assert got == [[1.1, 1.18, 60]]


def test_parser_pitch_vote():
    fr = 50.0
    pitches = [60] * 30
    for i in (3, 4, 9):
        pitches[i] = 61       # noisy frames
    pitches[5] = 48            # another octave
    pitches[6] = None          # unvoiced frame: not counted
    pitches[7] = None
    assert parse_notes(make_probs(30, onset={2: 1.0}, silence={12: 1}, pitches=pitches), fr) \
        == [[0.04, 0.24, 60]]
    # tie -> lowest
    pitches = [None, 70, 70, 65, 65, 80, None, None]
    assert parse_notes(make_probs(8, onset={1: 1.0}, pitches=pitches), fr)[0][2] == 65
    # inactive octave or inactive pitch class alone makes a frame unvoiced
    p = make_probs(8, onset={1: 1.0}, pitches=[60, 72, 72, 60, 60, 60, 60, 60])
    p["octave"][3:] = np.eye(5)[INACTIVE_OCTAVE]
    assert parse_notes(p, fr)[0][2] == 72
    # a note with no voiced frame is dropped
    p = make_probs(20, onset={1: 1.0, 10: 1.0}, pitches=[None] * 10 + [50] * 10)
    assert parse_notes(p, fr) == [[0.2, 0.4, 50]]


def test_probabilities_shapes():
    x = torch.randn(2, 7, N_OUTPUTS)
    p = probabilities(x)
    assert p["onset"].shape == (2, 7) and p["silence"].shape == (2, 7)
    assert p["octave"].shape == (2, 7, 5) and p["pitch_class"].shape == (2, 7, 13)
    np.testing.assert_allclose(p["onset"], torch.sigmoid(x[..., 0]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(p["octave"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p["pitch_class"], torch.softmax(x[..., 7:], -1).numpy(), rtol=1e-5, atol=1e-7)
    q = probabilities(x[0].numpy().astype(np.float64) * 100)  # extreme logits stay finite
    assert all(np.isfinite(v).all() for v in q.values()) and q["onset"].shape == (7,)
    assert join_chunks([]).shape == (0, N_OUTPUTS)


def random_targets(g, B, T):
    return {"onset": (torch.rand(B, T, generator=g) < 0.2).float(),
            "silence": (torch.rand(B, T, generator=g) < 0.4).float(),
            "octave": torch.randint(0, 5, (B, T), generator=g),
            "pitch_class": torch.randint(0, 13, (B, T), generator=g)}


def test_frame_loss_matches_manual():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 11
    logits = torch.randn(B, T, N_OUTPUTS, generator=g)
    tg = random_targets(g, B, T)
    mask = torch.rand(B, T, generator=g) < 0.7
    # garbage at masked frames must be ignored
    tg["octave"][~mask] = -100
    tg["onset"][~mask] = 7.0
    loss = frame_loss(logits, tg, mask)
    x = logits[mask]
    manual = (F.binary_cross_entropy_with_logits(x[:, 0], tg["onset"][mask], pos_weight=torch.tensor(15.0))
              + F.binary_cross_entropy_with_logits(x[:, 1], tg["silence"][mask])
              + F.cross_entropy(x[:, 2:7], tg["octave"][mask])
              + F.cross_entropy(x[:, 7:20], tg["pitch_class"][mask]))
    torch.testing.assert_close(loss, manual)
    # the onset term written out element-wise: -(w * y * log s(z) + (1 - y) * log(1 - s(z)))
    z, y = x[:, 0], tg["onset"][mask]
    by_hand = -(15.0 * y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    torch.testing.assert_close(by_hand, F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(15.0)))
    # mask=None -> all frames
    tg2 = random_targets(g, B, T)
    full = frame_loss(logits, tg2, None)
    torch.testing.assert_close(full, frame_loss(logits, tg2, torch.ones(B, T, dtype=torch.bool)))
    # no valid frame -> 0
    assert float(frame_loss(logits, tg, torch.zeros(B, T, dtype=torch.bool))) == 0.0


def test_frame_loss_decreases_under_sgd():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    B, T, D = 2, 16, 8
    feats = torch.randn(B, T, D, generator=g)
    tg = random_targets(g, B, T)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 12:] = False
    model = torch.nn.Linear(D, N_OUTPUTS)
    losses = []
    for _ in range(20):  # plain SGD by hand (torch.optim's first use costs seconds of imports)
        model.zero_grad()
        loss = frame_loss(model(feats), tg, mask)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2

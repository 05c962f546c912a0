"""heads.notes / heads.metrics / heads.score, checked against mir_eval's own regression fixtures and
against small hand computations."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heads import metrics as M
from heads.notes import hz_to_midi, midi_to_hz, notes_to_arrays, read_notes, write_notes

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "data" / "mir_eval_transcription"
SETS = sorted(p.name[3:-4] for p in FIXTURES.glob("ref*.txt"))  # "00", "01", ...
MAPPING = {"COnPOff": ("Precision", "Recall", "F-measure"),
           "COnP": ("Precision_no_offset", "Recall_no_offset", "F-measure_no_offset"),
           "COn": ("Onset_Precision", "Onset_Recall", "Onset_F-measure")}


def load_set(nn):
    ref = read_notes(FIXTURES / f"ref{nn}.txt")
    est = read_notes(FIXTURES / f"est{nn}.txt")
    expected = json.loads((FIXTURES / f"output{nn}.json").read_text())
    return ref, est, expected


# ---------------------------------------------------------------------------------------------- fixtures

def test_fixtures_present():
    assert FIXTURES.is_dir(), f"missing {FIXTURES}"
    assert len(SETS) >= 5, SETS
    # the velocity sets live in a subfolder and must not be picked up
    assert all(len(nn) == 2 for nn in SETS)


@pytest.mark.parametrize("nn", SETS)
def test_transcription_scores_match_mir_eval_fixtures(nn):
    (ref_i, ref_p), (est_i, est_p), expected = load_set(nn)
    assert ref_i.dtype == np.float64 and ref_i.shape == (ref_p.shape[0], 2)
    scores = M.transcription_scores(ref_i, ref_p, est_i, est_p)
    raw = scores["raw"]
    assert set(raw) == set(expected)
    for key, value in expected.items():
        assert abs(raw[key] - value) <= 1e-12, (nn, key, raw[key], value)
    for name, keys in MAPPING.items():
        assert set(scores[name]) == {"precision", "recall", "f1"}
        for ours, theirs in zip(("precision", "recall", "f1"), keys):
            assert abs(scores[name][ours] - expected[theirs]) <= 1e-12, (nn, name, ours)
    assert set(scores) == {"COnPOff", "COnP", "COn", "raw"}


def test_read_notes_comment_and_values():
    intervals, pitches = read_notes(FIXTURES / "est00.txt")  # begins with "# a comment"
    first = next(l for l in (FIXTURES / "est00.txt").read_text().splitlines() if not l.startswith("#"))
    on, off, hz = (float(x) for x in first.split())
    assert intervals[0].tolist() == [on, off] and pitches[0] == hz
    n_lines = sum(1 for l in (FIXTURES / "est00.txt").read_text().splitlines()
                  if l.strip() and not l.startswith("#"))
    assert intervals.shape == (n_lines, 2) and pitches.shape == (n_lines,)


# ---------------------------------------------------------------------------------------------- notes io

def test_read_notes_formats_and_empty(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text("# header\n\n0.5  1.0\t440\n  \n1.25\t2 220.5   # trailing comment\n")
    intervals, pitches = read_notes(f)
    assert intervals.tolist() == [[0.5, 1.0], [1.25, 2.0]]
    assert pitches.tolist() == [440.0, 220.5]

    e = tmp_path / "empty.txt"
    e.write_text("")
    i, p = read_notes(e)
    assert i.shape == (0, 2) and p.shape == (0,) and i.dtype == p.dtype == np.float64
    c = tmp_path / "comments.txt"
    c.write_text("# nothing\n\n")
    assert read_notes(c)[0].shape == (0, 2)


@pytest.mark.parametrize("bad_line", ["1.0 2.0 abc", "1.0 2.0", "1.0 2.0 3.0 4.0", "1 nan 440"])
def test_read_notes_malformed(tmp_path, bad_line):
    f = tmp_path / "bad_notes.txt"
    f.write_text(f"# c\n0.1\t0.2\t440\n{bad_line}\n")
    with pytest.raises(ValueError) as info:
        read_notes(f)
    msg = str(info.value)
    assert "bad_notes.txt" in msg and "line 3" in msg


def test_write_read_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    on = np.sort(rng.uniform(0, 300, 200))
    intervals = np.column_stack([on, on + rng.uniform(1e-3, 2, 200)])
    intervals[0] = [1 / 3, 0.1 + 0.2 + 1e-9]
    pitches = midi_to_hz(rng.uniform(36, 84, 200))
    path = write_notes(tmp_path / "n.txt", intervals, pitches)
    i2, p2 = read_notes(path)
    assert np.array_equal(i2, intervals) and np.array_equal(p2, pitches)
    assert "\t" in path.read_text().splitlines()[0]
    # empty round trip
    write_notes(tmp_path / "e.txt", np.zeros((0, 2)), np.zeros(0))
    assert read_notes(tmp_path / "e.txt")[0].shape == (0, 2)


def test_midi_hz_and_notes_to_arrays():
    assert midi_to_hz(69) == 440.0 and midi_to_hz(81) == 880.0 and hz_to_midi(440.0) == 69.0
    assert math.isclose(midi_to_hz(60), 261.6255653005986, rel_tol=1e-12)
    m = np.arange(21, 109, dtype=float)
    assert np.allclose(hz_to_midi(midi_to_hz(m)), m, atol=1e-9)
    assert isinstance(midi_to_hz(60), float) and midi_to_hz(m).shape == m.shape
    assert np.isnan(hz_to_midi(0.0))
    intervals, hz = notes_to_arrays([[0.5, 1.0, 69], [1.0, 1.5, 57]])
    assert intervals.tolist() == [[0.5, 1.0], [1.0, 1.5]] and np.allclose(hz, [440.0, 220.0])
    i0, h0 = notes_to_arrays([])
    assert i0.shape == (0, 2) and h0.shape == (0,)


# ---------------------------------------------------------------------------------------------- CLI

def run_score(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "heads.score", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_score_cli_and_errors(tmp_path):
    nn = SETS[-1]
    proc = run_score(FIXTURES / f"ref{nn}.txt", FIXTURES / f"est{nn}.txt", "--indent", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = json.loads((FIXTURES / f"output{nn}.json").read_text())
    assert set(out) == set(MAPPING)
    for name, keys in MAPPING.items():
        assert out[name] == dict(zip(("precision", "recall", "f1"), (expected[k] for k in keys)))

    missing = run_score(tmp_path / "nope.txt", FIXTURES / f"est{nn}.txt")
    assert missing.returncode == 2 and missing.stdout == ""
    err = missing.stderr.strip()
    assert "\n" not in err and "nope.txt" in err and "error" in err

    bad = tmp_path / "bad.txt"
    bad.write_text("0.1 0.2 440\n0.3 oops 440\n")
    malformed = run_score(FIXTURES / f"ref{nn}.txt", bad)
    assert malformed.returncode == 2
    assert "\n" not in malformed.stderr.strip() and "line 2" in malformed.stderr


# ---------------------------------------------------------------------------------------------- classification

def test_topk_accuracy_by_hand():
    rng = np.random.default_rng(1)
    n, c = 60, 5
    scores = rng.normal(size=(n, c))
    y = rng.integers(0, c, n)
    for k in range(1, c + 1):
        hits = 0
        for i in range(n):
            higher = sum(1 for j in range(c) if scores[i, j] > scores[i, y[i]])
            hits += higher < k
        assert M.topk_accuracy(y, scores, k) == pytest.approx(hits / n, abs=1e-15)
    assert M.topk_accuracy(y, scores, c) == 1.0
    assert M.topk_accuracy(y, scores, c + 3) == 1.0
    # tiny explicit case: row0 true=2 ranks 2nd, row1 true=0 ranks 1st, row2 true=1 ranks 3rd
    s = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])
    yt = np.array([2, 0, 1])
    assert M.topk_accuracy(yt, s, 1) == pytest.approx(1 / 3)
    assert M.topk_accuracy(yt, s, 2) == pytest.approx(2 / 3)
    assert M.topk_accuracy(yt, s, 3) == 1.0
    # ties go to the lower index, like argmax
    assert M.topk_accuracy([0, 1], np.array([[1.0, 1.0], [1.0, 1.0]]), 1) == 0.5


def test_confusion_f1_balanced_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 2, 0, 2, 2])
    c = 4
    cm = M.confusion(y_true, y_pred, c)
    expected = [[0] * c for _ in range(c)]
    for t, p in zip(y_true, y_pred):
        expected[t][p] += 1
    assert cm.tolist() == expected and cm.dtype.kind == "i"
    assert cm.tolist() == [[2, 1, 1, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 1, 0]]

    f1s = []
    for lab in range(c):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == lab and p == lab)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != lab and p == lab)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == lab and p != lab)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    assert M.macro_f1(y_true, y_pred) == pytest.approx(sum(f1s) / c, abs=1e-12)
    # class 0: P=2/3 R=1/2 -> 4/7; class 1: P=2/3 R=1 -> 4/5; class 2: P=1/2 R=2/3 -> 4/7; class 3: 0
    assert M.macro_f1(y_true, y_pred) == pytest.approx((4 / 7 + 4 / 5 + 4 / 7 + 0) / 4, abs=1e-12)
    # restricting labels
    assert M.macro_f1(y_true, y_pred, labels=[0, 1]) == pytest.approx((4 / 7 + 4 / 5) / 2, abs=1e-12)

    recalls = []
    for lab in sorted(set(y_true.tolist())):
        idx = [i for i in range(len(y_true)) if y_true[i] == lab]
        recalls.append(sum(1 for i in idx if y_pred[i] == lab) / len(idx))
    assert M.balanced_accuracy(y_true, y_pred) == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)
    assert M.balanced_accuracy(y_true, y_pred) == pytest.approx((1 / 2 + 1 + 2 / 3 + 0) / 4, abs=1e-12)


def test_classification_report():
    rng = np.random.default_rng(2)
    n, c = 40, 4
    y = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), y] += 1.0
    rep = M.classification_report(y, scores, class_names=list("abcd"))
    for key in ("accuracy", "top2", "top3", "macro_f1", "balanced_accuracy", "n", "confusion"):
        assert key in rep
    pred = scores.argmax(1)
    assert rep["n"] == n
    assert rep["accuracy"] == pytest.approx(sum(int(p == t) for p, t in zip(pred, y)) / n)
    assert rep["top2"] == M.topk_accuracy(y, scores, 2)
    assert np.array(rep["confusion"]).sum() == n and len(rep["confusion"]) == c
    assert rep["macro_f1"] == M.macro_f1(y, pred)
    assert set(rep["per_class"]) == set("abcd")
    json.dumps(rep)  # JSON-ready
    two = M.classification_report([0, 1, 1], np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    assert "top2" in two and "top3" not in two and two["top2"] == 1.0


# ---------------------------------------------------------------------------------------------- clustering

def test_clustering_scores():
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(5), 40)
    perm = rng.permutation(5) + 10  # same partition, different ids
    s = M.clustering_scores(truth, perm[truth])
    assert s["ARI"] == pytest.approx(1.0, abs=1e-12) and s["NMI"] == pytest.approx(1.0, abs=1e-12)
    big = np.repeat(np.arange(5), 400)
    r = M.clustering_scores(big, rng.integers(0, 5, big.size))
    assert abs(r["ARI"]) < 0.02 and r["NMI"] < 0.02


# ---------------------------------------------------------------------------------------------- transcription

def test_transcription_report_means_per_song():
    pairs = {}
    for nn in SETS[:3]:
        (ri, rp), (ei, ep), _ = load_set(nn)
        pairs[f"song{nn}"] = (ri, rp, ei, ep)
    (ri, rp), _, _ = load_set(SETS[0])
    pairs["perfect"] = (ri, rp, ri.copy(), rp.copy())
    rep = M.transcription_report(pairs)
    assert rep["n_songs"] == len(pairs) and set(rep["per_song"]) == set(pairs)
    assert rep["per_song"]["perfect"]["COnPOff"]["f1"] == 1.0
    for name in MAPPING:
        for m in ("precision", "recall", "f1"):
            manual = 0.0
            for pair in pairs.values():
                manual += M.transcription_scores(*pair)[name][m]
            assert rep["mean"][name][m] == pytest.approx(manual / len(pairs), abs=1e-12)
    # per-song F1 averaged, not F1 of averaged P and R
    p, r = rep["mean"]["COn"]["precision"], rep["mean"]["COn"]["recall"]
    assert rep["mean"]["COn"]["f1"] != pytest.approx(2 * p * r / (p + r), abs=1e-6)


def test_transcription_empty(recwarn):
    (ri, rp), _, _ = load_set(SETS[0])
    empty_i, empty_p = np.zeros((0, 2)), np.zeros(0)
    for args in ((ri, rp, empty_i, empty_p), (empty_i, empty_p, ri, rp),
                 (empty_i, empty_p, empty_i, empty_p), (ri, rp, [], [])):
        s = M.transcription_scores(*args)
        assert all(v == 0.0 for v in s["raw"].values())
        assert all(s[name][m] == 0.0 for name in MAPPING for m in ("precision", "recall", "f1"))
    assert not [w for w in recwarn if "notes are empty" in str(w.message)]
    rep = M.transcription_report({"a": (ri, rp, empty_i, empty_p), "b": (ri, rp, ri, rp)})
    assert rep["mean"]["COnPOff"]["f1"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- output

def test_plot_confusion_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    for normalize in (True, False):
        path = M.plot_confusion(cm, ["a", "b", "c"], tmp_path / f"sub/cm_{normalize}.png",
                                title="test", normalize=normalize)
        data = Path(path).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table():
    rows = [{"name": "crepe", "acc": 0.91234, "n": 120, "COnPOff": {"f1": 0.5}},
            {"name": "wavlm-large", "acc": 0.5, "n": 7}]
    text = M.format_table(rows, ["name", "acc", "n", "COnPOff.f1"])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["name", "acc", "n", "COnPOff.f1"]
    assert "0.912" in lines[2] and "0.500" in lines[2] and "120" in lines[2]
    assert lines[3].split() == ["wavlm-large", "0.500", "7"]
    assert len(set(len(l) for l in lines[:3])) == 1  # aligned
    pct = M.format_table(rows, ["name", "acc"], percent=True)
    assert "91.2%" in pct and "50.0%" in pct

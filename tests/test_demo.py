"""Tests for the synthetic demo corpus (featurestore.demo).

All audio analysis here (pitch, levels, spectra) is computed independently of the synthesis code,
with plain numpy.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from featurestore import demo

SR = demo.DEMO_SAMPLE_RATE


# ---------------------------------------------------------------------------------------------
# independent analysis helpers
# ---------------------------------------------------------------------------------------------
def yin_f0(x, sr, fmin=60.0, fmax=1100.0, win=512, threshold=0.15):
    """YIN f0 (Hz) of the frame x[:win + sr/fmin + 1]; nan when x is too short."""
    tau_max, tau_min = int(sr / fmin), max(2, int(sr / fmax))
    if len(x) < win + tau_max + 1:
        return np.nan
    frames = np.lib.stride_tricks.sliding_window_view(x[: win + tau_max + 1], win)[: tau_max + 1]
    d = ((frames[0][None, :] - frames) ** 2).sum(axis=1)
    cum = np.cumsum(d[1:])
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * np.arange(1, tau_max + 1) / np.maximum(cum, 1e-12)
    # first dip below the absolute threshold (or, in noisy frames, close to the global minimum:
    # this avoids picking a multiple of the period), then descend to its local minimum
    gmin = cmnd[tau_min:tau_max].min()
    tau = tau_min + int(np.flatnonzero(cmnd[tau_min:tau_max] <= max(threshold, gmin + 0.1))[0])
    while tau + 1 < tau_max and cmnd[tau + 1] < cmnd[tau]:
        tau += 1
    if 1 <= tau < tau_max:                                  # parabolic interpolation
        a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den > 0 else 0.0
    else:
        shift = 0.0
    return sr / (tau + shift)


def note_pitch_error_cents(x, sr, onset, offset, midi):
    """Median pitch error in cents over 10 ms-hop frames from 160 ms after the onset (past the scoop and
    the portamento) to 30 ms before the offset."""
    win, span = 512, 512 + int(sr / 60.0) + 1
    errs = []
    for tc in np.arange(onset + 0.16, max(offset - 0.03, onset + 0.16) + 1e-9, 0.01):
        a = int(round(tc * sr)) - span // 2
        if a < 0 or a + span > len(x):
            continue
        f0 = yin_f0(x[a:a + span], sr, win=win)
        if np.isfinite(f0):
            errs.append(1200.0 * np.log2(f0 / (440.0 * 2.0 ** ((midi - 69) / 12.0))))
    return float(np.median(errs)) if errs else np.nan


def rms_db(x):
    return 10.0 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2) + 1e-20)


def mean_log_spectrum(x, nfft=1024, hop=512):
    """Gain-normalised mean log-magnitude spectrum [nfft//2+1]: mean over frames within 30 dB of
    the loudest frame, minus its own mean over frequency."""
    frames = np.lib.stride_tricks.sliding_window_view(x, nfft)[::hop] * np.hanning(nfft)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    energy = 10 * np.log10((frames ** 2).sum(axis=1) + 1e-12)
    keep = energy > energy.max() - 30.0
    spec = np.log(mag[keep] + 1e-6).mean(axis=0)
    return spec - spec.mean()


def read(root, rec):
    x, sr = sf.read(Path(root) / rec["path"], dtype="float64")
    return x, sr


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The default corpus (4 singers x 8 clips x 5 s), built once, with its build time."""
    root = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    manifest = demo.make_demo_corpus(root)
    elapsed = time.perf_counter() - t0
    records = json.loads(manifest.read_text())
    return root, manifest, records, elapsed


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_constants_and_singers():
    assert demo.DEMO_SAMPLE_RATE == 16000
    assert demo.TECHNIQUES == ("straight", "vibrato", "breathy")
    assert len(demo.SINGERS) >= 4
    for name, s in demo.SINGERS.items():
        assert s["midi_low"] < s["midi_high"]
        assert s["vowels"] and all(len(f) == 5 for f in s["vowels"].values())
        lo, hi = s["vibrato_rate_hz"]
        assert 5.0 <= lo <= hi <= 6.5
        lo, hi = s["vibrato_depth_cents"]
        assert 0 < lo <= hi
        assert s["tilt"] > 0 and s["breathiness"] >= 0
        lo, hi = s["attack_s"]
        assert 0.08 <= lo < hi <= 0.2                      # slow attacks, 80-200 ms
        lo, hi = s["release_s"]
        assert 0.04 <= lo < hi <= 0.1
        lo, hi = s["portamento_s"]
        assert 0.06 <= lo < hi <= 0.14
        for formants in s["vowels"].values():
            assert all(0 < f < SR / 2 and bw > 0 for f, bw, _ in formants)
    tables = [json.dumps(s["vowels"], sort_keys=True) for s in demo.SINGERS.values()]
    assert len(set(tables)) == len(tables), "every singer has its own formants"


def test_default_corpus_is_fast(corpus):
    *_, elapsed = corpus
    assert elapsed < 15.0, f"default corpus took {elapsed:.1f} s"   # ~1 s expected; lenient for CI


def test_manifest_matches_files(corpus):
    root, manifest, records, _ = corpus
    assert manifest == root / "manifest.json"
    assert (root / "corpus.json").is_file()
    assert len(records) == 4 * 8
    assert len({r["id"] for r in records}) == len(records)
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "audio").rglob("*.wav"))
    assert on_disk == sorted(r["path"] for r in records)
    for r in records:
        assert set(r) == {"path", "id", "split", "singer", "technique", "notes"}
        assert r["path"] == f"audio/{r['singer']}/{r['id']}.wav"
        assert r["singer"] in demo.SINGERS and r["technique"] in demo.TECHNIQUES
        info = sf.info(root / r["path"])
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        assert info.frames == round(5.0 * SR)


def test_notes_valid(corpus):
    _, _, records, _ = corpus
    kinds = {"legato": 0, "breath": 0, "repeat": 0, "rest": 0}
    for r in records:
        spec = demo.SINGERS[r["singer"]]
        notes = r["notes"]
        assert len(notes) >= 2
        for on, off, m in notes:
            assert isinstance(m, int)
            assert 0.1 - 1e-9 <= on < off <= 5.0 - 0.1 + 1e-9
            assert 0.2 - 1e-9 <= off - on <= 0.9 + 1e-9
            assert spec["midi_low"] <= m <= spec["midi_high"]
        for (on0, off0, m0), (on1, off1, m1) in zip(notes, notes[1:]):
            gap = on1 - off0
            if gap < 1e-6:
                kinds["legato"] += 1
                assert m0 != m1, "legato notes must change pitch"
            elif gap <= 0.06 + 1e-9:
                assert gap >= 0.02 - 1e-9, gap
                kinds["breath"] += 1
                kinds["repeat"] += m0 == m1
            else:
                assert 0.15 - 1e-9 <= gap <= 0.4 + 1e-9, gap
                kinds["rest"] += 1
    assert min(kinds.values()) >= 10, kinds


def test_random_notes_direct():
    rng = np.random.default_rng(123)
    for _ in range(50):
        notes = demo.random_notes(rng, duration_s=3.0, midi_low=60, midi_high=64)
        assert notes == sorted(notes)
        for on, off, m in notes:
            assert 0.1 <= on < off <= 2.9 + 1e-9 and 60 <= m <= 64 and off - on >= 0.2 - 1e-9
        assert all(b[0] >= a[1] for a, b in zip(notes, notes[1:]))
    assert demo.random_notes(rng, duration_s=0.3, midi_low=60, midi_high=64) == []
    with pytest.raises(ValueError):
        demo.random_notes(rng, duration_s=3.0, midi_low=65, midi_high=60)


def test_splits_and_techniques(corpus):
    _, _, records, _ = corpus
    by_singer = {}
    for r in records:
        by_singer.setdefault(r["singer"], []).append(r)
    assert list(by_singer) == list(demo.SINGERS)[:4]
    for singer, recs in by_singer.items():
        recs = sorted(recs, key=lambda r: r["id"])
        assert [r["split"] for r in recs] == ["train"] * 6 + ["valid", "test"]
        assert {r["technique"] for r in recs} == set(demo.TECHNIQUES)


def test_pitch_matches_notes(corpus):
    root, _, records, _ = corpus
    errors = {t: [] for t in demo.TECHNIQUES}
    for r in records:
        x, sr = read(root, r)
        for on, off, m in r["notes"]:
            if off - on >= 0.4:      # a median over >= 0.2 s: at least one vibrato cycle
                errors[r["technique"]].append(note_pitch_error_cents(x, sr, on, off, m))
    for tech in ("straight", "vibrato"):
        e = np.abs(np.array(errors[tech]))
        assert e.size > 20
        assert np.all(np.isfinite(e)) and np.all(e < 50.0), (tech, np.sort(e)[-5:])
    # breathy notes are noisier; still require the large majority to be in tune
    e = np.abs(np.array(errors["breathy"]))
    assert np.mean(np.nan_to_num(e, nan=1e9) < 50.0) >= 0.8


def test_vibrato_is_present_only_for_vibrato(corpus):
    """Pitch modulation over long notes: strong for vibrato, absent for straight."""
    root, _, records, _ = corpus
    spread = {t: [] for t in demo.TECHNIQUES}
    for r in records:
        x, sr = read(root, r)
        for on, off, m in r["notes"]:
            if off - on < 0.5:
                continue
            ref = 440.0 * 2.0 ** ((m - 69) / 12.0)
            cents = [1200 * np.log2(yin_f0(x[int(tc * sr) - 400:int(tc * sr) + 400], sr) / ref)
                     for tc in np.arange(on + 0.2, off - 0.08, 0.01)]
            spread[r["technique"]].append(np.std(cents))
    assert np.median(spread["vibrato"]) > 20.0
    assert np.median(spread["straight"]) < 8.0


def test_silence_between_notes(corpus):
    root, _, records, _ = corpus
    checked = 0
    for r in records:
        x, sr = read(root, r)
        assert np.any(x != 0.0)
        assert 0.7 <= np.abs(x).max() <= 0.85
        notes = r["notes"]
        note_db = rms_db(np.concatenate([
            x[int((on + 0.05) * sr):int((off - 0.05) * sr)] for on, off, _ in notes]))
        lead = x[: int((notes[0][0] - 0.01) * sr)]
        assert rms_db(lead) < note_db - 30.0
        assert np.any(lead != 0.0), "silence should carry a low noise floor, not digital zero"
        assert -85.0 < rms_db(lead) < -60.0
        for (_, off0, _), (on1, _, _) in zip(notes, notes[1:]):
            if on1 - off0 < 0.3:
                continue
            # a rest of >= 0.3 s: the release tail (time constant <= 0.1 s) has decayed by >= 26 dB
            gap = x[int((on1 - 0.06) * sr):int((on1 - 0.01) * sr)]
            assert rms_db(gap) < note_db - 20.0, (r["id"], off0, on1)
            checked += 1
    assert checked > 5


def rms_envelope(x, sr, hop_s=0.005, win_s=0.02):
    """RMS amplitude of ``win_s`` windows centred every ``hop_s`` seconds (frame j at time j * hop_s)."""
    h, w = int(hop_s * sr), int(win_s * sr)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (w // 2, w // 2)), w)[::h]
    return np.sqrt((frames ** 2).mean(axis=1))


def test_attack_times_are_the_singers(corpus):
    """Measured from the audio: the time from the annotated onset of a note after a rest until its RMS
    envelope reaches 90 % of the note's plateau lies in the singer's ``attack_s`` range (80-200 ms)."""
    root, _, records, _ = corpus
    hop = 0.005
    measured = {}
    for r in records:
        x, sr = read(root, r)
        e = rms_envelope(x, sr, hop)
        notes = r["notes"]
        for k, (on, off, _) in enumerate(notes):
            after_rest = k == 0 or on - notes[k - 1][1] >= 0.25
            if not after_rest or off - on < 0.45:
                continue
            i0, i1 = int(round(on / hop)), int(round(off / hop))
            plateau = np.median(e[i0 + int(0.3 / hop):i1])
            measured.setdefault(r["singer"], []).append(np.flatnonzero(e[i0:i1] >= 0.9 * plateau)[0] * hop)
    assert set(measured) == {r["singer"] for r in records}
    for singer, times in measured.items():
        lo, hi = demo.SINGERS[singer]["attack_s"]
        times = np.array(times)
        assert len(times) >= 3, singer
        assert lo - 0.015 <= times.min() and times.max() <= hi + 0.045, (singer, np.sort(times))
        assert lo - 0.01 <= np.median(times) <= hi + 0.01, (singer, np.median(times))


def test_repeated_notes_are_separated_by_short_breaths(corpus):
    """The same pitch sung again after a 20-60 ms breath: the level dips between the two notes (the tail
    decays for the breath, then a slow attack starts from there) but does not fall to silence."""
    root, _, records, _ = corpus
    hop = 0.005
    dips = []
    for r in records:
        x, sr = read(root, r)
        e = rms_envelope(x, sr, hop)
        for (on0, off0, m0), (on1, off1, m1) in zip(r["notes"], r["notes"][1:]):
            if m0 != m1 or on1 - off0 > 0.06 or off0 - on0 < 0.35 or off1 - on1 < 0.35:
                continue
            before = np.median(e[int(round((on0 + 0.25) / hop)):int(round(off0 / hop))])
            after = np.median(e[int(round((on1 + 0.25) / hop)):int(round(off1 / hop))])
            low = e[int(round(off0 / hop)):int(round((on1 + 0.04) / hop))].min()
            dips.append(20 * np.log10(low / min(before, after)))
    dips = np.array(dips)
    assert len(dips) >= 10
    assert (dips < 0).all() and np.median(dips) < -2.0, np.sort(dips)
    assert (dips > -30).all(), "a breath is a dip, not a rest"


def harmonicity_db(x, sr, onset, offset, midi, win_s=0.04):
    """HNR-like measure (dB) from the normalised autocorrelation at the note's period, note centre."""
    period = sr / (440.0 * 2.0 ** ((midi - 69) / 12.0))
    a = int(round((0.5 * (onset + offset) - win_s / 2) * sr))
    n = int(win_s * sr)
    best = 0.0
    for lag in range(int(period * 0.97), int(np.ceil(period * 1.03)) + 1):
        u, v = x[a:a + n], x[a + lag:a + lag + n]
        best = max(best, float(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v))))
    best = min(max(best, 1e-6), 1 - 1e-6)
    return 10.0 * np.log10(best / (1.0 - best))


def test_breathy_is_noisier(corpus):
    """Breathy clips are clearly less harmonic than straight clips of the same singer."""
    root, _, records, _ = corpus
    hnr = {}
    for r in records:
        x, sr = read(root, r)
        hnr.setdefault((r["singer"], r["technique"]), []).extend(
            harmonicity_db(x, sr, on, off, m) for on, off, m in r["notes"])
    for singer in {s for s, _ in hnr}:
        straight, breathy = np.median(hnr[(singer, "straight")]), np.median(hnr[(singer, "breathy")])
        assert straight > 15.0 and breathy < straight - 8.0, (singer, straight, breathy)


def test_singers_separable(corpus):
    root, _, records, _ = corpus
    feats = {r["id"]: mean_log_spectrum(read(root, r)[0]) for r in records}
    singers = sorted({r["singer"] for r in records})
    centroids = np.stack([
        np.mean([feats[r["id"]] for r in records if r["singer"] == s and r["split"] == "train"],
                axis=0) for s in singers])
    held = [r for r in records if r["split"] != "train"]
    correct = 0
    for r in held:
        d = np.linalg.norm(centroids - feats[r["id"]][None, :], axis=1)
        correct += singers[int(np.argmin(d))] == r["singer"]
    acc = correct / len(held)
    assert acc >= 0.75, acc       # chance is 0.25


def test_deterministic(tmp_path):
    kw = dict(n_singers=2, clips_per_singer=3, duration_s=2.0, seed=7)
    m1 = demo.make_demo_corpus(tmp_path / "a", **kw)
    m2 = demo.make_demo_corpus(tmp_path / "b", **kw)
    files1 = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files1 == files2 and len(files1) == 2 * 3 + 2
    for rel in files1:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert m1.read_bytes() == m2.read_bytes()
    # a different seed gives different audio
    m3 = demo.make_demo_corpus(tmp_path / "c", **{**kw, "seed": 8})
    rel = json.loads(m1.read_text())[0]["path"]
    assert (tmp_path / "a" / rel).read_bytes() != (m3.parent / rel).read_bytes()


def test_marker_makes_second_call_noop(tmp_path):
    kw = dict(n_singers=2, clips_per_singer=3, duration_s=1.5, seed=1)
    manifest = demo.make_demo_corpus(tmp_path, **kw)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    time.sleep(0.02)
    assert demo.make_demo_corpus(tmp_path, **kw) == manifest
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    # different arguments -> rebuilt, stale files of the old corpus removed
    demo.make_demo_corpus(tmp_path, **{**kw, "n_singers": 1})
    recs = json.loads(manifest.read_text())
    assert {r["singer"] for r in recs} == {list(demo.SINGERS)[0]}
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "audio").rglob("*.wav"))
    assert on_disk == sorted(r["path"] for r in recs)
    assert json.loads((tmp_path / "corpus.json").read_text())["n_singers"] == 1
    # an incomplete corpus (missing file) is rebuilt even though the marker matches
    first = tmp_path / recs[0]["path"]
    first.unlink()
    demo.make_demo_corpus(tmp_path, **{**kw, "n_singers": 1})
    assert first.is_file()


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        demo.make_demo_corpus(tmp_path, clips_per_singer=2)
    with pytest.raises(ValueError):
        demo.make_demo_corpus(tmp_path, n_singers=len(demo.SINGERS) + 1)
    with pytest.raises(ValueError):
        demo.synth_melody([[0.1, 0.5, 60]], singer="nobody", technique="straight",
                          duration_s=1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        demo.synth_melody([[0.1, 0.5, 60]], singer="tenor", technique="growl",
                          duration_s=1.0, rng=np.random.default_rng(0))
    assert not (tmp_path / "corpus.json").exists()


def test_synth_melody_shape_and_range():
    rng = np.random.default_rng(0)
    notes = [[0.1, 0.4, 60], [0.4, 0.7, 62], [0.9, 1.2, 64]]
    for tech in demo.TECHNIQUES:
        x = demo.synth_melody(notes, singer="tenor", technique=tech, duration_s=1.3, rng=rng)
        assert x.dtype == np.float32 and x.shape == (round(1.3 * SR),)
        assert np.abs(x).max() <= 1.0 and abs(np.abs(x).max() - 0.8) < 0.01
    empty = demo.synth_melody([], singer="tenor", technique="straight", duration_s=0.5, rng=rng)
    assert empty.shape == (8000,) and 0 < np.abs(empty).max() < 0.01


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    assert "OUT_DIR" in capsys.readouterr().out
    assert demo.main([str(tmp_path / "out"), "--n-singers", "1", "--clips-per-singer", "3",
                      "--duration", "1.0"]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == tmp_path / "out" / "manifest.json"
    assert len(json.loads(Path(out).read_text())) == 3

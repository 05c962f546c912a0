"""Built-in synthetic demo corpus of sung-like melodies (no download needed).

The corpus is small and generated deterministically so that feature extraction, classifier heads
(singer identification, singing technique) and note-transcription heads can be trained and scored
end to end on any machine.

Conventions used throughout this module:

- time is in seconds (s), frequencies in hertz (Hz), pitch as MIDI note numbers
  (69 = A4 = 440 Hz, one unit = one equal-tempered semitone = 100 cents);
- waveforms are mono float32 arrays of shape ``[n_samples]`` with values in ``[-1, 1]``;
- a note list is ``[[onset_s, offset_s, midi], ...]`` (``midi`` an int), sorted by onset, monophonic.

Entry points: :func:`make_demo_corpus` (writes WAV files and a JSON manifest), :func:`synth_melody`
(renders one note list), :func:`random_notes` (draws one note list), and the CLI
``python -m featurestore.demo OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.ndimage import uniform_filter1d
from scipy.signal import lfilter

from featurestore.cli import add_field
from featurestore.options import SpecError, add_options, from_namespace, option

__all__ = [
    "DEMO_SAMPLE_RATE",
    "SINGERS",
    "TECHNIQUES",
    "synth_melody",
    "random_notes",
    "make_demo_corpus",
    "DemoCorpusSpec",
    "write_demo_corpus",
    "main",
]

#: Sample rate of the demo corpus, Hz.
DEMO_SAMPLE_RATE = 16000

#: Singing techniques. ``straight``: no vibrato, little breath noise; ``vibrato``: strong 5-6.5 Hz
#: vibrato; ``breathy``: strong breath noise, weaker (and darker) harmonics, light vibrato.
TECHNIQUES = ("straight", "vibrato", "breathy")

#: Bumped whenever the synthesis changes, so that an old corpus on disk is rebuilt.
CORPUS_FORMAT_VERSION = 2

_PEAK = 0.8                      # peak amplitude after normalisation (full scale = 1.0)
_NOISE_FLOOR_DBFS = -70.0        # RMS of the always-present noise floor, dBFS
_GLIDE_S = 0.04                  # legato vowel / level cross-fade length, s (centred on the boundary)
_ATTACK_90 = 0.7952              # a raised-cosine ramp of length R reaches 90 % at 0.7952 R
_SCOOP_S = 0.05                  # time constant of the onset pitch scoop, s
_VOICED_FLOOR = 1e-4             # amplitude below which a release tail is cut (-80 dB)
_VIBRATO_ONSET_S = 0.15          # time for vibrato depth to build up after a note onset, s
_DIRECT_CUTOFF_HZ = 400.0        # cut-off of the low-pass direct (non-formant) path, Hz
_DIRECT_GAIN = 0.3               # gain of that path relative to a formant peak
_HNR_WINDOW_S = 0.05             # window over which the harmonics-to-noise ratio is held, s

# Technique -> (vibrato depth factor, harmonics-to-breath-noise ratio in dB before the singer's
# breathiness is subtracted, extra spectral tilt of the harmonics).
_TECHNIQUE_PARAMS = {
    "straight": (0.0, 32.0, 0.0),
    "vibrato": (1.0, 28.0, 0.0),
    "breathy": (0.25, 11.0, 0.4),
}

# Reference vowel formants (F1, F2, F3) in Hz for an adult male speaker (Peterson & Barney style).
_BASE_VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
_BASE_BANDWIDTHS = (80.0, 100.0, 140.0, 180.0, 220.0)   # Hz, for F1..F5


def _make_singer(*, midi_low, midi_high, vowels, scale, warp, f4, f5, bw_scale, gains_db, tilt,
                 vibrato_rate_hz, vibrato_depth_cents, breathiness, attack_s, release_s, portamento_s,
                 scoop_cents):
    """Build one singer record with explicit per-vowel formant tables."""
    table = {}
    for v in vowels:
        f1, f2, f3 = _BASE_VOWELS[v]
        freqs = (f1 * scale * warp[0], f2 * scale * warp[1], f3 * scale * warp[2], f4, f5)
        table[v] = [[round(float(f), 1), round(float(bw * bw_scale), 1), float(g)]
                    for f, bw, g in zip(freqs, _BASE_BANDWIDTHS, gains_db)]
    return {
        "midi_low": int(midi_low),
        "midi_high": int(midi_high),
        "vowels": table,
        "tilt": float(tilt),
        "vibrato_rate_hz": tuple(float(r) for r in vibrato_rate_hz),
        "vibrato_depth_cents": tuple(float(d) for d in vibrato_depth_cents),
        "breathiness": float(breathiness),
        "attack_s": tuple(float(v) for v in attack_s),
        "release_s": tuple(float(v) for v in release_s),
        "portamento_s": tuple(float(v) for v in portamento_s),
        "scoop_cents": tuple(float(v) for v in scoop_cents),
    }


#: Synthetic singers, in the order :func:`make_demo_corpus` uses them (the first ``n_singers``).
#: Each record:
#:
#: - ``midi_low`` / ``midi_high``: pitch range, MIDI note numbers (inclusive);
#: - ``vowels``: ``{vowel: [[freq_hz, bandwidth_hz, gain_db], ...]}`` for formants F1..F5;
#: - ``tilt``: harmonic amplitude exponent, harmonic k has amplitude ``k ** -tilt``
#:   (1.0 is -6 dB/octave);
#: - ``vibrato_rate_hz``: (low, high) range of the vibrato rate, Hz;
#: - ``vibrato_depth_cents``: (low, high) range of the vibrato extent (half peak-to-peak), cents;
#: - ``breathiness``: extra breath noise, dB: the harmonics-to-noise energy ratio of a clip is
#:   ~32 dB (straight), ~28 dB (vibrato) or ~11 dB (breathy) minus this value;
#: - ``attack_s``: (low, high) range of the attack time, s: the time from a note's annotated onset
#:   (after a rest or a breath) until its amplitude reaches 90 % of the note's level (drawn per note);
#: - ``release_s``: (low, high) range of the release time constant, s: after an annotated offset the
#:   amplitude decays as ``exp(-t / release)`` (a tail that runs on past the offset, into the rest,
#:   the breath or the next note's attack; drawn per clip);
#: - ``portamento_s``: (low, high) range of the legato pitch glide, s: the pitch leaves the old note
#:   10 % of the glide before the annotated boundary and reaches the new one 90 % after it (drawn
#:   per clip): the sung pitch lags the annotation;
#: - ``scoop_cents``: (low, high) range of the pitch scoop at a note started after a rest or a breath:
#:   the pitch starts this many cents flat and rises to the note with a 50 ms time constant.
SINGERS: dict[str, dict] = {
    "soprano": _make_singer(
        midi_low=62, midi_high=79, vowels=("a", "e", "o"), scale=1.25, warp=(1.0, 1.05, 1.0),
        f4=4300.0, f5=5000.0, bw_scale=1.2, gains_db=(0.0, -4.0, -12.0, -16.0, -22.0), tilt=1.3,
        vibrato_rate_hz=(5.8, 6.4), vibrato_depth_cents=(50.0, 70.0), breathiness=2.0,
        attack_s=(0.08, 0.12), release_s=(0.04, 0.07), portamento_s=(0.06, 0.10), scoop_cents=(40.0, 70.0)),
    "tenor": _make_singer(
        midi_low=50, midi_high=67, vowels=("a", "e", "i"), scale=1.02, warp=(1.0, 1.0, 0.96),
        f4=2900.0, f5=3500.0, bw_scale=0.85, gains_db=(0.0, -3.0, -6.0, -2.0, -12.0), tilt=0.85,
        vibrato_rate_hz=(5.5, 6.2), vibrato_depth_cents=(40.0, 60.0), breathiness=0.0,
        attack_s=(0.10, 0.15), release_s=(0.05, 0.08), portamento_s=(0.08, 0.12), scoop_cents=(50.0, 90.0)),
    "alto": _make_singer(
        midi_low=55, midi_high=72, vowels=("o", "u", "a"), scale=1.12, warp=(0.95, 0.92, 1.05),
        f4=3700.0, f5=4400.0, bw_scale=1.5, gains_db=(0.0, -8.0, -18.0, -26.0, -32.0), tilt=2.0,
        vibrato_rate_hz=(5.0, 5.6), vibrato_depth_cents=(45.0, 65.0), breathiness=4.0,
        attack_s=(0.14, 0.20), release_s=(0.06, 0.10), portamento_s=(0.10, 0.14), scoop_cents=(60.0, 100.0)),
    "bass": _make_singer(
        midi_low=40, midi_high=57, vowels=("o", "a", "u", "e"), scale=0.86, warp=(1.05, 0.95, 0.95),
        f4=2500.0, f5=3000.0, bw_scale=1.0, gains_db=(0.0, -4.0, -8.0, -5.0, -14.0), tilt=1.4,
        vibrato_rate_hz=(5.0, 5.5), vibrato_depth_cents=(40.0, 55.0), breathiness=1.0,
        attack_s=(0.12, 0.18), release_s=(0.05, 0.09), portamento_s=(0.09, 0.13), scoop_cents=(50.0, 80.0)),
    "mezzo": _make_singer(
        midi_low=57, midi_high=74, vowels=("e", "i", "a"), scale=1.16, warp=(1.02, 1.08, 0.98),
        f4=3500.0, f5=4200.0, bw_scale=1.05, gains_db=(0.0, -2.0, -10.0, -16.0, -22.0), tilt=1.3,
        vibrato_rate_hz=(5.4, 6.0), vibrato_depth_cents=(45.0, 65.0), breathiness=3.0,
        attack_s=(0.09, 0.14), release_s=(0.04, 0.08), portamento_s=(0.07, 0.11), scoop_cents=(40.0, 80.0)),
    "baritone": _make_singer(
        midi_low=45, midi_high=62, vowels=("u", "o", "i"), scale=0.96, warp=(1.0, 1.0, 1.0),
        f4=2750.0, f5=3300.0, bw_scale=0.8, gains_db=(0.0, -6.0, -9.0, -8.0, -16.0), tilt=1.1,
        vibrato_rate_hz=(5.2, 5.8), vibrato_depth_cents=(40.0, 60.0), breathiness=1.5,
        attack_s=(0.11, 0.16), release_s=(0.05, 0.09), portamento_s=(0.08, 0.12), scoop_cents=(50.0, 90.0)),
}


# ---------------------------------------------------------------------------------------------
# note lists
# ---------------------------------------------------------------------------------------------
#: Gaps between consecutive notes: (kind, probability, (shortest, longest) in ms). ``legato``: the
#: next note starts where the previous ends, at another pitch; ``breath``: a short breath, and the
#: same pitch is repeated with probability :data:`REPEAT_AFTER_BREATH`; ``rest``: a rest.
GAPS = (("legato", 0.3, (0, 0)), ("breath", 0.35, (20, 60)), ("rest", 0.35, (150, 400)))
#: Probability that the note after a breath repeats the pitch before it.
REPEAT_AFTER_BREATH = 0.6
#: Shortest and longest note, ms.
NOTE_MS = (200, 900)


def random_notes(rng: np.random.Generator, *, duration_s: float, midi_low: int,
                 midi_high: int) -> list[list[float]]:
    """Draw a random monophonic melody that phrases like a singer.

    Args:
        rng: numpy random generator (the only source of randomness).
        duration_s: clip length, s. Notes lie inside ``[0.1, duration_s - 0.1]`` s.
        midi_low, midi_high: inclusive MIDI pitch range.

    Returns:
        ``[[onset_s, offset_s, midi], ...]``: onsets/offsets in seconds (whole milliseconds), ``midi``
        an int in ``[midi_low, midi_high]``. Sorted by onset and non-overlapping; note lengths
        :data:`NOTE_MS` (the last may be cut by the clip's end, down to 0.2 s); the gap between
        consecutive notes is drawn from :data:`GAPS`: legato (0 s, always a new pitch), a breath of
        20-60 ms (the same pitch again with probability 0.6, else a step) or a rest of 0.15-0.4 s.
        Other steps are small melodic intervals (up to a fourth). Empty when ``duration_s < 0.4``.
    """
    midi_low, midi_high = int(midi_low), int(midi_high)
    if midi_low > midi_high:
        raise ValueError(f"midi_low ({midi_low}) > midi_high ({midi_high})")
    start_ms, end_ms = 100, int(round(duration_s * 1000.0)) - 100
    min_len, max_len = NOTE_MS
    notes: list[list[float]] = []
    if end_ms - start_ms < min_len:
        return notes
    t = min(start_ms + int(rng.integers(0, 201)), end_ms - min_len)
    midi = int(rng.integers(midi_low, midi_high + 1))
    kinds, probs = [g[0] for g in GAPS], [g[1] for g in GAPS]
    spans = {g[0]: g[2] for g in GAPS}
    while end_ms - t >= min_len:
        length = min(int(rng.integers(min_len, max_len + 1)), end_ms - t)
        notes.append([t / 1000.0, (t + length) / 1000.0, midi])
        t += length
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        if kind == "legato" and midi_high == midi_low:
            kind = "breath"
        lo, hi = spans[kind]
        t += int(rng.integers(lo, hi + 1))
        if kind == "breath" and rng.random() < REPEAT_AFTER_BREATH:
            continue                                             # the same pitch again
        # next pitch: a small melodic step, reflected back into the range
        step = int(rng.choice((-5, -4, -3, -2, -1, 1, 2, 3, 4, 5),
                              p=(0.04, 0.07, 0.11, 0.14, 0.14, 0.14, 0.14, 0.11, 0.07, 0.04)))
        nxt = midi + step
        if nxt > midi_high or nxt < midi_low:
            nxt = midi - step
        nxt = min(max(nxt, midi_low), midi_high)
        if nxt == midi and midi_high > midi_low:
            nxt = midi + 1 if midi < midi_high else midi - 1
        midi = nxt
    return notes


# ---------------------------------------------------------------------------------------------
# synthesis
# ---------------------------------------------------------------------------------------------
def _raised_cosine(n: int) -> np.ndarray:
    """Rising half-cosine ramp of n samples from 0 to 1 (exclusive of both ends)."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float) -> np.ndarray:
    """Unit-RMS-ish low-pass noise of n samples (one-pole filtered white noise, applied twice)."""
    a = np.exp(-2.0 * np.pi * cutoff_hz / sr)
    x = rng.standard_normal(n)
    y = lfilter([1.0 - a], [1.0, -a], lfilter([1.0 - a], [1.0, -a], x))
    std = y.std()
    return y / std if std > 0 else y


def _resonator(freq_hz: float, bw_hz: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """2nd-order band-pass resonator (zeros at DC and Nyquist, ~unit gain at freq_hz)."""
    freq_hz = min(freq_hz, 0.49 * sr)
    r = np.exp(-np.pi * bw_hz / sr)
    theta = 2.0 * np.pi * freq_hz / sr
    g = (1.0 - r * r) / 2.0
    return np.array([g, 0.0, -g]), np.array([1.0, -2.0 * r * np.cos(theta), r * r])


def _vowel_filter(x: np.ndarray, formants, sr: int) -> np.ndarray:
    """Parallel formant bank: sum of 2nd-order resonators with alternating polarity."""
    y = np.zeros_like(x)
    for j, (f, bw, gain_db) in enumerate(formants):
        if f >= 0.49 * sr:
            continue
        b, a = _resonator(f, bw, sr)
        sign = 1.0 if j % 2 == 0 else -1.0
        y = y + sign * 10.0 ** (gain_db / 20.0) * lfilter(b, a, x)
    return y


def _segments(notes, n: int, sr: int):
    """Sample ranges of the notes, grouped into legato phrases.

    Returns (note_ranges, phrases): note_ranges is a list of (start, stop) sample indices per note;
    phrases is a list of lists of note indices, consecutive notes joined when the gap is < 1 ms.
    """
    ranges, phrases = [], []
    prev_off = None
    for i, (on, off, _m) in enumerate(notes):
        a = min(max(int(round(on * sr)), 0), n)
        b = min(max(int(round(off * sr)), 0), n)
        ranges.append((a, b))
        if prev_off is not None and on - prev_off < 1e-3 and phrases:
            phrases[-1].append(i)
        else:
            phrases.append([i])
        prev_off = off
    return ranges, phrases


def _piecewise(values, ranges, phrases, n: int, sr: int, glide_s: float = _GLIDE_S,
               lead: float = 0.5) -> np.ndarray:
    """Per-note constant values held outside the notes (until the next note starts), with
    raised-cosine transitions of ``glide_s`` seconds at legato note boundaries, starting
    ``lead * glide_s`` before the boundary. Shape [n]."""
    out = np.empty(n)
    # hold: each note's value from its start until the next note's start
    starts = [r[0] for r in ranges]
    out[: starts[0]] = values[0]
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else n
        out[s:e] = values[i]
    before, after = int(round(glide_s * lead * sr)), int(round(glide_s * (1.0 - lead) * sr))
    for ph in phrases:
        for i, j in zip(ph[:-1], ph[1:]):
            bnd = ranges[j][0]
            lo, hi = max(bnd - before, ranges[i][0]), min(bnd + after, ranges[j][1])
            if hi - lo > 1:
                out[lo:hi] = values[i] + (values[j] - values[i]) * _raised_cosine(hi - lo)
    return out


def _envelope(ranges, phrases, level: np.ndarray, attacks, release: float, n: int, sr: int) -> np.ndarray:
    """Amplitude envelope [n] of the voice. Each phrase (legato notes) starts from the amplitude the
    previous phrase's tail has decayed to, rises to ``level`` along a raised cosine that reaches 90 %
    ``attacks[p]`` seconds after the annotated onset, follows ``level`` (cross-faded at legato
    boundaries) and, from the annotated offset of its last note on, decays as ``exp(-t / release)``
    until the next phrase starts (or the clip ends)."""
    env = np.zeros(n)
    tail_from, tail_amp = None, 0.0
    tau = max(release, 1e-4) * sr
    for p, ph in enumerate(phrases):
        a, b = ranges[ph[0]][0], ranges[ph[-1]][1]
        if b <= a:
            continue
        amp0 = 0.0
        if tail_from is not None:
            env[tail_from:a] = tail_amp * np.exp(-np.arange(a - tail_from) / tau)
            amp0 = tail_amp * np.exp(-(a - tail_from) / tau)
        ramp = np.ones(b - a)
        k = min(max(1, int(round(attacks[p] / _ATTACK_90 * sr))), b - a)
        ramp[:k] = _raised_cosine(max(1, int(round(attacks[p] / _ATTACK_90 * sr))))[:k]
        env[a:b] = amp0 * (1.0 - ramp) + level[a:b] * ramp
        tail_from, tail_amp = b, float(env[b - 1])
    if tail_from is not None and tail_from < n:
        env[tail_from:] = tail_amp * np.exp(-np.arange(n - tail_from) / tau)
    return env


def synth_melody(notes, *, singer: str, technique: str, duration_s: float,
                 sr: int = DEMO_SAMPLE_RATE, rng: np.random.Generator) -> np.ndarray:
    """Render a note list as a sung-like waveform.

    Args:
        notes: ``[[onset_s, offset_s, midi], ...]`` (seconds, seconds, MIDI number), sorted and
            non-overlapping; a note starting < 1 ms after the previous one ends is sung legato
            (continuous voicing, a portamento pitch glide and a ~40 ms vowel/level cross-fade).
        singer: key of :data:`SINGERS` (vowel formants, spectral tilt, vibrato, breathiness).
        technique: one of :data:`TECHNIQUES`.
        duration_s: output length, s.
        sr: sample rate, Hz.
        rng: numpy random generator (vowels, vibrato, levels, noise all come from it).

    Returns:
        float32 waveform of shape ``[round(duration_s * sr)]`` in ``[-1, 1]``, peak ~0.8.

    Model: a harmonic source (all harmonics below ~0.45 * sr, harmonic k with amplitude
    ``k ** -tilt``, tilt steeper by 0.4 for ``breathy``; phase-continuous f0 following the notes,
    slow drift of a few cents and, depending on the technique, vibrato at the singer's rate
    (5-6.5 Hz) that builds up over ~0.15 s after each onset) and white breath noise, shaped by a
    singer-like amplitude envelope and filtered by a parallel bank of five 2nd-order formant
    resonators for a vowel drawn per note from the singer's vowel set (cross-faded over ~40 ms at
    legato boundaries), plus a low-passed (400 Hz) direct path for the harmonics that keeps the
    fundamental strong. Like a human singer (see :data:`SINGERS` for the ranges):

    - **slow attacks**: after a rest or a breath the amplitude rises along a raised cosine from
      wherever the previous tail has decayed to, reaching 90 % of the note's level ``attack_s``
      (80-200 ms by singer) after the annotated onset;
    - **release tails**: after the annotated offset the amplitude decays as ``exp(-t / release_s)``
      (40-100 ms), into the rest, the breath or the next attack (cut at -80 dB);
    - **onset lag**: a note after a rest or a breath starts ``scoop_cents`` flat and rises to its
      pitch with a 50 ms time constant; a legato note's pitch glides over ``portamento_s``
      (60-140 ms), starting 10 % of it before the annotated boundary;
    - **breaths**: a 20-60 ms gap between notes (often the same pitch again) is only a dip: the tail
      decays for the length of the gap, then the next attack starts from there.

    The noise is mixed at a local (50 ms) harmonics-to-noise energy ratio of about 32 dB
    (straight), 28 dB (vibrato) or 11 dB (breathy) minus the singer's ``breathiness``. Where the
    voice has decayed there is only a noise floor at about -70 dBFS RMS (so files are never
    digital silence).
    """
    if singer not in SINGERS:
        raise ValueError(f"unknown singer {singer!r}; known: {sorted(SINGERS)}")
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r}; known: {TECHNIQUES}")
    spec = SINGERS[singer]
    n = int(round(duration_s * sr))
    notes = [(float(on), float(off), float(m)) for on, off, m in notes
             if float(off) > float(on) and float(on) < duration_s and float(off) > 0.0]
    floor = 10.0 ** (_NOISE_FLOOR_DBFS / 20.0)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if not notes:
        return np.clip(floor * rng.standard_normal(n), -1.0, 1.0).astype(np.float32)

    vib_factor, hnr_db, extra_tilt = _TECHNIQUE_PARAMS[technique]
    hnr_db -= spec["breathiness"]
    ranges, phrases = _segments(notes, n, sr)
    n_notes = len(notes)
    t = np.arange(n) / sr

    # --- per-note random choices (drawn in a fixed order) -------------------------------------
    vowel_names = sorted(spec["vowels"])
    vowel_idx = rng.integers(0, len(vowel_names), size=n_notes)
    levels = rng.uniform(0.6, 1.0, size=n_notes)
    rate = rng.uniform(*spec["vibrato_rate_hz"])
    depth = rng.uniform(*spec["vibrato_depth_cents"]) * vib_factor
    attacks = rng.uniform(*spec["attack_s"], size=len(phrases))
    scoops = rng.uniform(*spec["scoop_cents"], size=len(phrases))
    release = rng.uniform(*spec["release_s"])
    portamento = rng.uniform(*spec["portamento_s"])
    vib_phase0, src_phase0 = rng.uniform(0.0, 2.0 * np.pi, size=2)

    # --- pitch contour in MIDI units ------------------------------------------------------------
    # legato: the glide starts 10 % of the portamento before the annotated boundary (pitch lags)
    midi = _piecewise([m for _, _, m in notes], ranges, phrases, n, sr, glide_s=portamento, lead=0.1)
    cents = 4.0 * _smooth_noise(rng, n, sr, 1.5)          # slow drift, a few cents
    vib_env = np.zeros(n)
    for a, b in ranges:
        ramp = np.minimum(1.0, (t[a:b] - t[a]) / _VIBRATO_ONSET_S)
        vib_env[a:b] = ramp * ramp * (3.0 - 2.0 * ramp)    # smoothstep
    for p, ph in enumerate(phrases):                       # onset scoop after a rest or a breath
        a, b = ranges[ph[0]]
        cents[a:b] -= scoops[p] * np.exp(-(t[a:b] - t[a]) / _SCOOP_S)
    inst_rate = rate * (1.0 + 0.03 * _smooth_noise(rng, n, sr, 2.0))
    vib_phase = vib_phase0 + 2.0 * np.pi * np.cumsum(inst_rate) / sr
    vib = np.sin(vib_phase)
    cents += depth * vib_env * vib
    f0 = 440.0 * 2.0 ** ((midi + cents / 100.0 - 69.0) / 12.0)
    phase = src_phase0 + 2.0 * np.pi * np.cumsum(f0) / sr

    # --- amplitude envelope: slow attacks from wherever the last tail is, release tails -------
    env = _envelope(ranges, phrases, _piecewise(list(levels), ranges, phrases, n, sr), attacks, release, n, sr)
    if vib_factor > 0:
        env *= 1.0 + 0.08 * vib_env * vib                   # slight tremolo with the vibrato

    # --- harmonic source and breath noise (only where voiced) --------------------------------
    voiced = np.flatnonzero(env > _VOICED_FLOOR)
    env[env <= _VOICED_FLOOR] = 0.0
    harm_src = np.zeros(n)
    noise = rng.standard_normal(n)                         # breath noise: white, formant-shaped
    noise_src = env * noise
    if voiced.size:
        ph_v = phase[voiced]
        f0_v = f0[voiced]
        tilt = spec["tilt"] + extra_tilt
        nyq_hi, nyq_lo = 0.45 * sr, 0.40 * sr
        k_max = max(1, int(nyq_hi / f0_v.min()))
        k_gate = int(nyq_lo / f0_v.max())                 # harmonics above this may need gating
        z = np.exp(1j * ph_v)
        zk = z.copy()
        harm = np.zeros(voiced.size)
        for k in range(1, k_max + 1):
            amp = float(k) ** -tilt
            if k <= k_gate:
                harm += amp * zk.imag
            else:
                gate = np.clip((nyq_hi - k * f0_v) / (nyq_hi - nyq_lo), 0.0, 1.0)
                harm += amp * gate * zk.imag
            zk *= z
        harm_src[voiced] = env[voiced] * harm

    # --- vowel formant filtering, cross-faded per note ---------------------------------------
    # low-pass direct path: stands in for the vocal tract's gain below F1 (a cascade formant
    # filter passes DC), so that the fundamental stays strong even when F1 is far from it
    a_lp = np.exp(-2.0 * np.pi * _DIRECT_CUTOFF_HZ / sr)
    voiced_out = _DIRECT_GAIN * lfilter([1.0 - a_lp], [1.0, -a_lp], harm_src)
    breath_out = np.zeros(n)
    for v in sorted(set(int(v) for v in vowel_idx)):
        weights = _piecewise([1.0 if int(vi) == v else 0.0 for vi in vowel_idx],
                             ranges, phrases, n, sr)
        formants = spec["vowels"][vowel_names[v]]
        voiced_out += weights * _vowel_filter(harm_src, formants, sr)
        breath_out += weights * _vowel_filter(noise_src, formants, sr)
    # breath noise gain follows the local (50 ms) harmonic level, so that every note has about
    # the same harmonics-to-noise ratio whatever its vowel and pitch
    win = max(1, int(round(_HNR_WINDOW_S * sr)))
    p_h = np.maximum(uniform_filter1d(voiced_out * voiced_out, win, mode="constant"), 0.0)
    p_n = np.maximum(uniform_filter1d(breath_out * breath_out, win, mode="constant"), 0.0)
    tiny = 1e-12 * max(float(p_n.max()), 1e-30)
    gain = np.sqrt(p_h / (p_n + tiny) * 10.0 ** (-hnr_db / 10.0))
    out = voiced_out + np.minimum(gain, 1e3) * breath_out

    peak = np.abs(out).max()
    if peak > 0:
        out *= _PEAK / peak
    out += floor * rng.standard_normal(n)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------
def _split_for(clip_index: int, clips_per_singer: int) -> str:
    if clip_index == clips_per_singer - 1:
        return "test"
    if clip_index == clips_per_singer - 2:
        return "valid"
    return "train"


def _corpus_complete(root: Path, manifest_path: Path) -> bool:
    try:
        records = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(records, list) and all(
        isinstance(r, dict) and (root / r.get("path", "")).is_file() for r in records)


@dataclass(frozen=True)
class DemoCorpusSpec:
    """The settings of the demo corpus (:func:`make_demo_corpus`), validated when made. ``duration``
    is ``make_demo_corpus``'s ``duration_s`` (s)."""

    out_dir: str | None = option(None, "output folder", metavar="OUT_DIR")
    n_singers: int = option(4, f"number of singers, 1..{len(SINGERS)} (default: 4)")
    clips_per_singer: int = option(8, "clips per singer, >= 3 (default: 8)")
    duration: float = option(5.0, "clip length in seconds (default: 5.0)")
    seed: int = option(0, "random seed (default: 0)")
    sr: int = option(DEMO_SAMPLE_RATE, f"sample rate in Hz (default: {DEMO_SAMPLE_RATE})")

    def __post_init__(self):
        if not self.out_dir:
            raise SpecError("out_dir", "give the output folder")
        try:
            for name, kind in (("n_singers", int), ("clips_per_singer", int), ("duration", float), ("seed", int),
                               ("sr", int)):
                object.__setattr__(self, name, kind(getattr(self, name)))
        except (TypeError, ValueError):
            raise SpecError(name, f"expected a number, got {getattr(self, name)!r}") from None
        if self.clips_per_singer < 3:
            raise SpecError("clips_per_singer", f"must be >= 3 (train/valid/test), got {self.clips_per_singer}")
        if not 1 <= self.n_singers <= len(SINGERS):
            raise SpecError("n_singers", f"must be in 1..{len(SINGERS)}, got {self.n_singers}")
        if self.duration < 0.35:
            raise SpecError("duration", f"must be >= 0.35 s, got {self.duration}")
        if self.sr <= 0:
            raise SpecError("sr", f"must be positive, got {self.sr}")


def make_demo_corpus(root, *, n_singers: int = 4, clips_per_singer: int = 8, duration_s: float = 5.0,
                     seed: int = 0, sr: int = DEMO_SAMPLE_RATE) -> Path:
    """Write the synthetic demo corpus under ``root`` and return ``root / 'manifest.json'``.

    Args:
        root: output folder (created if needed).
        n_singers: number of singers, the first ``n_singers`` keys of :data:`SINGERS`
            (1..len(SINGERS)).
        clips_per_singer: clips per singer, >= 3.
        duration_s: length of every clip, s (>= 0.35 so that a clip holds at least one note).
        seed: base seed; clip ``c`` of singer ``s`` uses ``np.random.default_rng([seed, s, c])``.
        sr: sample rate of the WAV files, Hz.

    Files:
        ``root/audio/<singer>/<clip_id>.wav``: PCM_16 mono at ``sr``, ``round(duration_s * sr)``
        samples, ``clip_id = f"{singer}_{c:03d}"``;
        ``root/manifest.json``: JSON list of records, one per file, ordered by singer then clip::

            {"path": "audio/<singer>/<clip_id>.wav",   # relative to root
             "id": clip_id, "split": "train" | "valid" | "test", "singer": name,
             "technique": one of TECHNIQUES,
             "notes": [[onset_s, offset_s, midi], ...]}   # seconds, seconds, MIDI int

        ``root/corpus.json``: marker with the build arguments, written last.

    Splits per singer: the last clip -> ``test``, the one before -> ``valid``, the rest -> ``train``.
    Technique of clip ``c`` of singer ``s``: ``TECHNIQUES[(c + s) % 3]``, so every singer has every
    technique and the held-out clips cover different techniques across singers.

    Deterministic: the same arguments give byte-identical files. If ``corpus.json`` matches the
    arguments and every file of the manifest exists, nothing is written (the call is a no-op).
    Otherwise the corpus is rewritten; WAV files listed in an older manifest but not in the new
    one are removed.

    Raises:
        SpecError (a ValueError) naming the setting: ``clips_per_singer < 3``, ``n_singers`` out of
        range, ``duration_s < 0.35`` (named ``duration``) or ``sr <= 0``.
    """
    spec = DemoCorpusSpec(out_dir=str(root), n_singers=n_singers, clips_per_singer=clips_per_singer,
                          duration=duration_s, seed=seed, sr=sr)  # validates (SpecError, a ValueError)
    n_singers, clips_per_singer, seed, sr = spec.n_singers, spec.clips_per_singer, spec.seed, spec.sr
    duration_s = spec.duration

    root = Path(root)
    manifest_path = root / "manifest.json"
    marker_path = root / "corpus.json"
    params = {"format_version": CORPUS_FORMAT_VERSION, "n_singers": n_singers,
              "clips_per_singer": clips_per_singer, "duration_s": duration_s, "seed": seed, "sr": sr}

    old_paths: set[str] = set()
    if marker_path.is_file():
        try:
            old_params = json.loads(marker_path.read_text())
        except (OSError, ValueError):
            old_params = None
        if old_params == params and _corpus_complete(root, manifest_path):
            return manifest_path
        marker_path.unlink()
    if manifest_path.is_file():
        try:
            old_paths = {r["path"] for r in json.loads(manifest_path.read_text())
                         if isinstance(r, dict) and "path" in r}
        except (OSError, ValueError, TypeError):
            old_paths = set()

    root.mkdir(parents=True, exist_ok=True)
    records = []
    for s, singer in enumerate(list(SINGERS)[:n_singers]):
        spec = SINGERS[singer]
        (root / "audio" / singer).mkdir(parents=True, exist_ok=True)
        for c in range(clips_per_singer):
            rng = np.random.default_rng([seed, s, c])
            technique = TECHNIQUES[(c + s) % len(TECHNIQUES)]
            notes = random_notes(rng, duration_s=duration_s,
                                 midi_low=spec["midi_low"], midi_high=spec["midi_high"])
            wav = synth_melody(notes, singer=singer, technique=technique, duration_s=duration_s,
                               sr=sr, rng=rng)
            clip_id = f"{singer}_{c:03d}"
            rel = f"audio/{singer}/{clip_id}.wav"
            pcm = np.round(wav.astype(np.float64) * 32767.0).astype(np.int16)
            sf.write(root / rel, pcm, sr, subtype="PCM_16", format="WAV")
            records.append({"path": rel, "id": clip_id,
                            "split": _split_for(c, clips_per_singer), "singer": singer,
                            "technique": technique, "notes": notes})

    new_paths = {r["path"] for r in records}
    for rel in sorted(old_paths - new_paths):
        p = root / rel
        if rel.startswith("audio/") and rel.endswith(".wav") and p.is_file():
            p.unlink()

    _write_text(manifest_path, json.dumps(records, indent=1) + "\n")
    _write_text(marker_path, json.dumps(params, indent=1, sort_keys=True) + "\n")
    return manifest_path


def _write_text(path: Path, text: str) -> None:
    """Write text atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_demo_corpus(spec: DemoCorpusSpec) -> Path:
    """:func:`make_demo_corpus` with the settings of ``spec``; returns the manifest path."""
    return make_demo_corpus(spec.out_dir, n_singers=spec.n_singers, clips_per_singer=spec.clips_per_singer,
                            duration_s=spec.duration, seed=spec.seed, sr=spec.sr)


def main(argv=None) -> int:
    """CLI: ``python -m featurestore.demo OUT_DIR [--n-singers N] ...``; prints the manifest path."""
    parser = argparse.ArgumentParser(
        prog="python -m featurestore.demo",
        description="Generate the synthetic singing demo corpus (WAV files + manifest.json).")
    add_field(parser, DemoCorpusSpec, "out_dir", positional=True)
    add_options(parser, DemoCorpusSpec, skip=("out_dir",))
    args = parser.parse_args(argv)
    try:
        path = write_demo_corpus(from_namespace(DemoCorpusSpec, args))
    except SpecError as e:
        parser.error(e.as_flag())
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

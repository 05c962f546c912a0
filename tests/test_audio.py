import math
import pickle

import numpy as np
import pytest
import soundfile as sf

from featurestore import audio
from featurestore.audio import (
    AudioError,
    frame_rms_db,
    load_audio,
    read_audio,
    read_audio_channels,
    resample,
    segment_bounds,
    segment_rms_db,
    trim_bounds,
)


def sine(freq, sr, seconds, amp=0.5, phase=0.0):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def peak_freq(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


# --------------------------------------------------------------------------- decoding


def test_read_wav_mono_exact(tmp_path):
    x = sine(300, 16000, 0.5)
    p = tmp_path / "a.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    y, sr = read_audio(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, x)


def test_read_flac_stereo_downmix(tmp_path):
    sr = 22050
    left = sine(200, sr, 0.4, amp=0.6)
    right = sine(500, sr, 0.4, amp=0.2)
    p = tmp_path / "s.flac"
    sf.write(p, np.stack([left, right], axis=1), sr, subtype="PCM_24")
    y, got_sr = read_audio(str(p))
    assert got_sr == sr and y.ndim == 1 and y.dtype == np.float32
    np.testing.assert_allclose(y, (left + right) / 2, atol=2 / 2**23)
    ch, _ = read_audio_channels(p)
    assert ch.shape == (2, len(left))
    np.testing.assert_allclose(ch[0], left, atol=1 / 2**23)
    np.testing.assert_allclose(ch[1], right, atol=1 / 2**23)


def test_read_mp3_stereo(tmp_path):
    sr = 44100
    x = sine(440, sr, 1.0, amp=0.4)
    p = tmp_path / "m.mp3"
    sf.write(p, np.stack([x, x], axis=1), sr, format="MP3")
    y, got_sr = read_audio(p)
    assert got_sr == sr and y.ndim == 1 and y.dtype == np.float32
    # lossy codec: length within a few frames, same pitch and level
    assert abs(len(y) - len(x)) < 4 * 1152
    assert abs(peak_freq(y, sr) - 440) < 2
    rms_in = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(y.astype(np.float64) ** 2))
    assert abs(20 * np.log10(rms_out / rms_in)) < 1.0


def test_missing(tmp_path):
    for check in (True, False):
        with pytest.raises(AudioError) as ei:
            read_audio(tmp_path / "nope.wav", check=check)
        assert ei.value.reason == audio.MISSING == "missing"
        assert "nope.wav" in str(ei.value)


def test_corrupt(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    for check in (True, False):
        with pytest.raises(AudioError) as ei:
            read_audio(p, check=check)
        assert ei.value.reason == "unreadable"


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(AudioError) as ei:
        read_audio(tmp_path)
    assert ei.value.reason == "unreadable"


def test_empty(tmp_path):
    p = tmp_path / "e.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000)
    assert sf.info(p).frames == 0
    for check in (True, False):
        with pytest.raises(AudioError) as ei:
            read_audio(p, check=check)
        assert ei.value.reason == "empty"


def test_zeros_silent(tmp_path):
    p = tmp_path / "z.wav"
    sf.write(p, np.zeros(8000, np.float32), 16000)
    with pytest.raises(AudioError) as ei:
        read_audio(p)
    assert ei.value.reason == "silent"
    y, _ = read_audio(p, check=False)
    assert y.shape == (8000,) and not y.any()


def test_below_silence_peak(tmp_path):
    x = np.full(1000, 0.5e-6, np.float32)
    p = tmp_path / "tiny.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError) as ei:
        read_audio(p)
    assert ei.value.reason == "silent"
    q = tmp_path / "quiet.wav"
    sf.write(q, np.full(1000, 1e-5, np.float32), 8000, subtype="FLOAT")
    y, _ = read_audio(q)
    assert y.max() > audio.SILENCE_PEAK


def test_nan_checked_before_silence(tmp_path):
    x = np.zeros(1000, np.float32)
    x[10] = np.nan  # otherwise silent: nonfinite must win
    p = tmp_path / "nan.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError) as ei:
        read_audio(p)
    assert ei.value.reason == "nonfinite"
    x2 = sine(100, 8000, 0.1)
    x2[5] = np.inf
    sf.write(tmp_path / "inf.wav", x2, 8000, subtype="FLOAT")
    with pytest.raises(AudioError) as ei:
        read_audio(tmp_path / "inf.wav")
    assert ei.value.reason == "nonfinite"
    y, _ = read_audio(p, check=False)
    assert np.isnan(y[10])


def test_audio_error_pickles():
    e = AudioError("silent", "the file is silent")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, AudioError) and e2.reason == "silent" and str(e2) == "the file is silent"


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("n", [1, 2, 3, 100, 44100, 44101, 12345])
@pytest.mark.parametrize("rates", [(44100, 16000), (16000, 44100), (48000, 16000), (22050, 24000)])
def test_resample_length(n, rates):
    a, b = rates
    y = resample(np.zeros(n, np.float32), a, b)
    assert y.dtype == np.float32
    assert y.shape == (math.ceil(n * b / a),)


def test_resample_identity():
    x = sine(100, 8000, 0.1)
    y = resample(x, 8000, 8000)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


def test_resample_keeps_frequency():
    x = sine(440, 44100, 1.0)
    y = resample(x, 44100, 16000)
    assert len(y) == 16000
    # FFT bin width is 1 Hz for 1 s of audio
    assert abs(peak_freq(y, 16000) - 440) <= 1
    # amplitude preserved away from the edges
    mid = y[1000:-1000]
    assert abs(np.max(np.abs(mid)) - 0.5) < 0.01
    # deterministic
    np.testing.assert_array_equal(resample(x, 44100, 16000), y)


def test_resample_multichannel_matches_per_channel():
    x = np.stack([sine(300, 22050, 0.2), sine(700, 22050, 0.2)])
    y = resample(x, 22050, 16000)
    assert y.shape == (2, math.ceil(x.shape[1] * 16000 / 22050))
    np.testing.assert_allclose(y[1], resample(x[1], 22050, 16000), atol=1e-6)


def test_load_audio(tmp_path):
    x = sine(1000, 48000, 0.5)
    p = tmp_path / "l.wav"
    sf.write(p, np.stack([x, x], 1), 48000, subtype="FLOAT")
    y = load_audio(p, 16000)
    assert y.dtype == np.float32 and y.shape == (8000,)
    assert abs(peak_freq(y, 16000) - 1000) <= 2


# --------------------------------------------------------------------------- levels and trimming


def test_frame_rms_db_matches_direct():
    rng = np.random.default_rng(1)
    sr, frame_s = 1000, 0.05  # 50-sample frames
    x = (rng.standard_normal(1234) * 0.1).astype(np.float32)
    db = frame_rms_db(x, sr, frame_s)
    L = 50
    expected = [
        20 * math.log10(math.sqrt(np.mean(x[i:i + L].astype(np.float64) ** 2)) + 1e-10)
        for i in range(0, len(x), L)
    ]
    assert db.shape == (math.ceil(1234 / 50),)
    np.testing.assert_allclose(db, expected, rtol=1e-9, atol=1e-9)


def test_frame_rms_db_sine_level():
    x = sine(100, 16000, 1.0, amp=1.0)
    db = frame_rms_db(x, 16000, 0.05)  # frames hold 5 whole periods
    np.testing.assert_allclose(db, 20 * np.log10(1 / np.sqrt(2)), atol=1e-3)
    assert frame_rms_db(np.zeros(0, np.float32), 16000).shape == (0,)
    np.testing.assert_allclose(frame_rms_db(np.zeros(10), 16000), -200.0)


@pytest.mark.parametrize("lead_s,tone_s,tail_s", [(0.5, 1.0, 0.7), (0.0, 0.8, 0.3), (0.33, 0.61, 0.0), (0.123, 0.4, 0.0517)])
def test_trim_bounds_silence_tone_silence(lead_s, tone_s, tail_s):
    sr, frame_s = 16000, 0.05
    L = int(round(sr * frame_s))
    lead, tone_n, tail = (int(round(s * sr)) for s in (lead_s, tone_s, tail_s))
    x = np.concatenate([
        np.zeros(lead, np.float32),
        sine(440, sr, tone_s, amp=0.5),
        np.zeros(tail, np.float32),
    ])
    start, end = trim_bounds(x, sr, threshold_db=-40.0, frame_s=frame_s)
    true_start, true_end = lead, lead + tone_n
    assert abs(start - true_start) <= L and abs(end - true_end) <= L
    assert start <= true_start and end >= true_end  # a frame holding tone is kept
    assert start % L == 0 and 0 <= start < end <= len(x)


def test_trim_bounds_nothing_loud():
    x = np.full(16000, 1e-4, np.float32)  # -80 dBFS
    assert trim_bounds(x, 16000, threshold_db=-60.0) == (0, 0)
    assert trim_bounds(np.zeros(0, np.float32), 16000, threshold_db=-60.0) == (0, 0)
    assert trim_bounds(x, 16000, threshold_db=-90.0) == (0, 16000)


# --------------------------------------------------------------------------- segmentation


def test_segment_bounds_exact_multiple():
    sr = 16000
    b = segment_bounds(0, 3 * 2 * sr, sr, 2.0, min_segment_s=1.0)
    assert b == [(i * 2 * sr, (i + 1) * 2 * sr) for i in range(3)]


def test_segment_bounds_offset_and_remainder():
    sr = 100
    # [37, 37 + 2*150 + 60): two full 1.5 s segments and a 0.6 s remainder
    start, end = 37, 37 + 360
    kept = segment_bounds(start, end, sr, 1.5, min_segment_s=0.5)
    assert kept == [(37, 187), (187, 337), (337, 397)]
    dropped = segment_bounds(start, end, sr, 1.5, min_segment_s=0.61)
    assert dropped == [(37, 187), (187, 337)]
    # remainder exactly min_segment_s long is kept
    assert segment_bounds(start, end, sr, 1.5, min_segment_s=0.6)[-1] == (337, 397)
    # default min 0: any non-empty remainder is kept
    assert segment_bounds(0, 301, sr, 1.5) == [(0, 150), (150, 300), (300, 301)]


def test_segment_bounds_contiguous_cover():
    sr = 16000
    b = segment_bounds(123, 123 + 98765, sr, 0.37)
    seg = round(0.37 * sr)
    assert b[0][0] == 123 and b[-1][1] == 123 + 98765
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(b, b[1:]))
    assert all(e - s == seg for s, e in b[:-1])
    assert len(b) == math.ceil(98765 / seg)


def test_segment_bounds_none_and_nonpositive():
    sr = 8000
    for seg in (None, 0, -1.0):
        assert segment_bounds(10, 8010, sr, seg) == [(10, 8010)]
        assert segment_bounds(10, 8010, sr, seg, min_segment_s=1.0) == [(10, 8010)]
        assert segment_bounds(10, 8009, sr, seg, min_segment_s=1.0) == []


def test_segment_bounds_short_and_empty():
    sr = 8000
    assert segment_bounds(5, 5, sr, 1.0) == []
    assert segment_bounds(5, 5, sr, None) == []
    assert segment_bounds(0, 3000, sr, 1.0, min_segment_s=0.5) == []  # only a 0.375 s remainder
    assert segment_bounds(0, 4000, sr, 1.0, min_segment_s=0.5) == [(0, 4000)]
    with pytest.raises(ValueError):
        segment_bounds(10, 5, sr, 1.0)
    with pytest.raises(ValueError):
        segment_bounds(0, 100, sr, 1.0, min_segment_s=2.0)


def test_segment_rms_db():
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.3, 0.3, 1000).astype(np.float32)
    x[500:700] = 0
    bounds = [(0, 100), (100, 350), (500, 700), (990, 1000), (5, 5)]
    db = segment_rms_db(x, bounds)
    assert db.shape == (5,)
    for (s, e), d in zip(bounds[:4], db[:4]):
        seg = x[s:e].astype(np.float64)
        rms = math.sqrt(float(np.sum(seg * seg)) / len(seg))
        assert d == pytest.approx(20 * math.log10(rms + 1e-10), abs=1e-9)
    assert db[2] == pytest.approx(-200.0)
    assert db[4] == pytest.approx(-200.0)
    assert segment_rms_db(x, []).shape == (0,)

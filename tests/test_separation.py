import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from demucs.apply import apply_model as demucs_apply_model
from demucs.hdemucs import HDemucs
from demucs.states import get_state, save_with_checksum

from featurestore import separation
from featurestore.audio import AudioError
from featurestore.separation import VocalSeparator, load_separator

SOURCES = ["drums", "bass", "other", "vocals"]
MODEL_SR = 16000
NAME = "tinydemucs"  # no '-' : demucs' LocalRepo splits "<sig>-<checksum>.th"
PCM24_STEP = 1.0 / 2**23


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A local demucs repo holding one tiny random HDemucs, in demucs' package format.

    The package dict mirrors demucs.states.serialize_model (klass/args/kwargs/state/
    training_args; omegaconf is not installed so it is built directly), saved with
    demucs.states.save_with_checksum as ``<sig>-<sha256[:8]>.th``.
    """
    torch.manual_seed(0)
    model = HDemucs(
        SOURCES, audio_channels=2, channels=4, depth=4, nfft=1024,
        samplerate=MODEL_SR, segment=2,
    ).eval()
    args, kwargs = model._init_args_kwargs
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=False),
        "training_args": {},
    }
    repo = tmp_path_factory.mktemp("demucs_repo")
    save_with_checksum(package, repo / f"{NAME}.th")
    (repo / "tinybag.yaml").write_text(f"models: ['{NAME}']\n")
    return repo, model


def reference_vocals(model, stereo):
    """Independent separation: apply_model on [1, 2, n], vocals source, channel mean."""
    mix = torch.from_numpy(np.ascontiguousarray(stereo, dtype=np.float32))[None]
    with torch.no_grad():
        est = demucs_apply_model(model, mix, shifts=0, split=True, overlap=0.25)
    return est[0, SOURCES.index("vocals")].mean(0).numpy()


def write_mix(path, sr, seconds, channels, seed=0):
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    chans = [
        0.2 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.05 * rng.standard_normal(n)
        for c in range(channels)
    ]
    data = np.stack(chans, axis=1).astype(np.float32)
    sf.write(path, data, sr, subtype="FLOAT")
    return data.T  # [channels, n]


def test_load_separator_local_repo(tiny_repo):
    repo, model = tiny_repo
    loaded = load_separator(NAME, repo=repo)
    assert not loaded.training
    assert list(loaded.sources) == SOURCES and loaded.samplerate == MODEL_SR
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    bag = load_separator("tinybag", repo=str(repo))
    assert list(bag.sources) == SOURCES and bag.samplerate == MODEL_SR


def test_load_separator_missing(tiny_repo, tmp_path):
    repo, _ = tiny_repo
    with pytest.raises(RuntimeError) as ei:
        load_separator("no_such_model", repo=repo)
    msg = str(ei.value)
    assert "no_such_model" in msg and str(repo.resolve()) in msg
    with pytest.raises(RuntimeError) as ei:  # not SystemExit from demucs.utils.fatal
        load_separator(NAME, repo=tmp_path / "absent")
    assert NAME in str(ei.value) and "absent" in str(ei.value)


def test_vocals_path_stereo_matches_apply_model(tiny_repo, tmp_path, monkeypatch):
    repo, model = tiny_repo
    src = tmp_path / "mix.wav"
    data = write_mix(src, MODEL_SR, 2.7, channels=2)

    calls = []

    def counting_apply_model(*a, **kw):
        calls.append(kw)
        return demucs_apply_model(*a, **kw)

    monkeypatch.setattr(separation, "apply_model", counting_apply_model)

    cache = tmp_path / "cache"
    sep = VocalSeparator(cache, name=NAME, repo=repo)
    assert sep._model is None  # lazy
    out = sep.vocals_path(src)
    assert len(calls) == 1
    assert calls[0]["shifts"] == 0 and calls[0]["split"] is True and calls[0]["overlap"] == 0.25
    assert out == sep.cache_path(src) and out.parent == cache and out.suffix == ".flac"
    assert sorted(p.name for p in cache.iterdir()) == [out.name]  # no temp files left

    info = sf.info(out)
    assert info.channels == 1 and info.samplerate == MODEL_SR
    assert info.format == "FLAC" and info.subtype == "PCM_24"
    assert abs(info.frames - data.shape[1]) <= 2

    got, _ = sf.read(out, dtype="float64")
    ref = reference_vocals(model, data)
    assert np.abs(ref).max() < 1.0  # no clipping involved in the comparison
    assert np.abs(ref).max() > 1e-4  # the comparison is not trivially between zeros
    np.testing.assert_allclose(got, ref, atol=PCM24_STEP + 1e-6)

    # second call (same or fresh separator): cached, model neither run nor loaded
    mtime = out.stat().st_mtime_ns
    assert sep.vocals_path(src) == out
    sep2 = VocalSeparator(cache, name=NAME, repo=repo)
    assert sep2.vocals_path(str(src)) == out
    assert sep2._model is None
    assert len(calls) == 1 and out.stat().st_mtime_ns == mtime


def test_vocals_path_mono_resampled(tiny_repo, tmp_path):
    repo, model = tiny_repo
    src_sr = 22050
    src = tmp_path / "mono.flac"
    rng = np.random.default_rng(3)
    n = int(1.3 * src_sr)
    mono = (0.3 * np.sin(2 * np.pi * 330 * np.arange(n) / src_sr)
            + 0.03 * rng.standard_normal(n)).astype(np.float32)
    sf.write(src, mono, src_sr, subtype="PCM_24")
    decoded, _ = sf.read(src, dtype="float32")

    sep = VocalSeparator(tmp_path / "c", name=NAME, repo=repo)
    out = sep.vocals_path(src)
    got, sr = sf.read(out, dtype="float64")
    assert sr == MODEL_SR and got.ndim == 1
    expected_len = math.ceil(n * MODEL_SR / src_sr)
    assert abs(len(got) - expected_len) <= 2

    rs = AF.resample(torch.from_numpy(decoded), src_sr, MODEL_SR).numpy()
    ref = reference_vocals(model, np.stack([rs, rs]))
    assert len(ref) == len(got)
    np.testing.assert_allclose(got, ref, atol=PCM24_STEP + 1e-5)


def test_cache_key(tiny_repo, tmp_path):
    repo, _ = tiny_repo
    a = tmp_path / "a.wav"
    write_mix(a, MODEL_SR, 0.2, channels=1, seed=1)
    b = tmp_path / "sub" / "b.wav"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    c = tmp_path / "c.wav"
    write_mix(c, MODEL_SR, 0.2, channels=1, seed=2)

    s1 = VocalSeparator(tmp_path / "cache", name=NAME, repo=repo)
    assert s1.cache_path(a) == s1.cache_path(b)  # content-addressed, not path-addressed
    assert s1.cache_path(a) != s1.cache_path(c)
    s2 = VocalSeparator(tmp_path / "cache", name="tinybag", repo=repo)
    assert s2.cache_path(a) != s1.cache_path(a)
    s3 = VocalSeparator(tmp_path / "cache", name=NAME)
    assert s3.cache_path(a) != s1.cache_path(a)
    assert len(s1.cache_path(a).stem) == 64
    with pytest.raises(AudioError) as ei:
        s1.cache_path(tmp_path / "missing.wav")
    assert ei.value.reason == "missing"


def test_failed_write_leaves_no_file(tiny_repo, tmp_path, monkeypatch):
    repo, _ = tiny_repo
    src = tmp_path / "x.wav"
    write_mix(src, MODEL_SR, 0.5, channels=2)
    cache = tmp_path / "cache"
    sep = VocalSeparator(cache, name=NAME, repo=repo)

    def broken_write(f, data, sr, **kw):
        f.write(b"fLaC partial")
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(OSError):
        sep.vocals_path(src)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert sep.vocals_path(src).is_file()


def test_bad_input_raises_audio_error(tiny_repo, tmp_path):
    repo, _ = tiny_repo
    z = tmp_path / "z.wav"
    sf.write(z, np.zeros(1600, np.float32), MODEL_SR)
    sep = VocalSeparator(tmp_path / "cache", name=NAME, repo=repo)
    with pytest.raises(AudioError) as ei:
        sep.vocals_path(z)
    assert ei.value.reason == "silent"
    assert list((tmp_path / "cache").iterdir()) == []


def test_build_with_vocal_separation_trim_and_quiet_drop(tiny_repo, tmp_path, monkeypatch):
    """The build path: separated vocals are what the store holds, cached so a re-plan separates nothing."""
    from featurestore import open_store
    from featurestore.build import main

    repo, model = tiny_repo
    (tmp_path / "in").mkdir()
    stereo = write_mix(tmp_path / "in" / "song.wav", MODEL_SR, 3.0, 2)
    store = tmp_path / "s.zarr"
    args = ["--input", str(tmp_path / "in"), "--store", str(store), "--separate-vocals", NAME, "--demucs-repo",
            str(repo), "--segment-seconds", "1", "--trim-db", "-80", "--drop-quiet-db", "-90", "--no-progress",
            "--num-workers", "0", "--backbone", "logmel"]
    assert main(args) == 0
    s = open_store(store)
    vocals = Path(s.clips["audio"][0])
    assert vocals.parent == tmp_path / "s.zarr.vocals" and vocals.suffix == ".flac"
    assert list(s.clips["source"]) == [str(tmp_path / "in" / "song.wav")] * len(s)
    v, sr = sf.read(vocals, dtype="float32")
    assert sr == MODEL_SR
    np.testing.assert_allclose(v, reference_vocals(model, stereo)[:len(v)], atol=2 * PCM24_STEP + 1e-6)
    # the stored log-mel frames of clip 1 are those of the vocals, not of the mix
    from featurestore.frontends import load_frontend
    fe = load_frontend("logmel")
    a, b = round(s.clips["start_s"][1] * sr), round(s.clips["end_s"][1] * sr)
    with torch.no_grad():
        ref = fe.hidden_states(torch.from_numpy(v[a:b])[None], torch.tensor([b - a]))[0].numpy()
    np.testing.assert_allclose(s.frames(1, "logmel").astype(np.float32), ref, rtol=2e-3, atol=2e-2)
    # a rebuilt clip table (--overwrite) reads the cache instead of separating again
    calls = []
    monkeypatch.setattr(separation, "apply_model", lambda *a, **k: calls.append(1))
    args[args.index("--segment-seconds") + 1] = "1.5"
    assert main(args + ["--overwrite"]) == 0
    assert calls == [] and len(open_store(store)) == 2

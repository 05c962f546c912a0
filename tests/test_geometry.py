"""The one frame geometry (featurestore.geometry.FrameGeometry) against the frontends' own forward
passes, and the frame times a store reports against where the audio actually is."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_wav
from published_forms import BY_NAME, write_published

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.frontends import load_frontend
from featurestore.geometry import FrameGeometry
from featurestore.verify import verify

#: frontends in their shipped forms: the embedded ones, and tiny transformers folders as published
#: (MERT at 24 kHz; group-norm and layer-norm conv encoders)
EMBEDDED = ["crepe-tiny", "logmel", "pesto"]
PUBLISHED = ["mert-v1-95m", "wav2vec2-base", "music2vec-v1", "wavlm-base-plus"]


def _frontend(name, tmp_path):
    if name in PUBLISHED:
        return load_frontend(name, path=write_published(tmp_path / name, BY_NAME[name]))
    return load_frontend(name)


@pytest.mark.parametrize("name", EMBEDDED + PUBLISHED)
def test_geometry_counts_the_frames_of_each_frontends_forward_pass(tmp_path, name):
    fe = _frontend(name, tmp_path)
    geo = fe.geometry
    assert geo == FrameGeometry.from_attrs(json.loads(json.dumps(fe.describe())))  # as a store records it
    assert fe.describe()["frame_rate"] == geo.frame_rate == fe.sample_rate / fe.stride
    g = torch.Generator().manual_seed(0)
    lengths = {}
    for T in (1, 2, 7):
        n = geo.samples_for(T)
        lengths.update({n: T, n + fe.stride - 1: T, n + fe.stride: T + 1})
    for n, T in lengths.items():
        assert geo.n_frames(n) == fe.n_frames(n) == T, n
        x = 0.1 * torch.randn(1, n + 2 * fe.pad, generator=g)  # the clip with the frontend's own padding
        with torch.inference_mode():
            h = fe.hidden_states(x, torch.tensor([x.shape[1]]))
        assert h.shape[:3] == (1, T, fe.num_layers), (n, tuple(h.shape))
    if fe.receptive > 2 * fe.pad:  # (CREPE pads half its window: even 0 samples give a frame)
        assert geo.n_frames(geo.samples_for(1) - 1) == 0
    assert geo.samples_for(0) == 0


@pytest.mark.parametrize("name", ["crepe-tiny", "logmel"])
def test_stored_frame_times_are_where_the_audio_is(tmp_path, name):
    """Silence with one click in each of two 1 s segments (clips that start at 1 s and 2 s of the file):
    the frames the click reaches are centred on it, at the times the store reports (within a hop),
    the clip without a click has none, and every clip's frame count is the geometry's."""
    sr, clicks = 16000, (1.37, 2.61)
    x = np.zeros(3 * sr, np.float32)
    for t in clicks:
        x[int(round(t * sr))] = 0.9
    wav = write_wav(tmp_path / "audio" / "clicks.wav", x, sr)
    store = tmp_path / "s.zarr"
    build(wav.parent, store, [name], clip_settings=ClipSettings(segment_s=1.0, min_segment_s=0.5),
          extract=ExtractSettings(dtype="float32"), num_workers=0, progress=False, device="cpu")
    s = open_store(store)
    geo = FrameGeometry.from_attrs(s.info(name)["frontend"])
    assert geo == load_frontend(name).geometry
    ids = list(s.clip_ids)
    starts = np.asarray(s.clips["start_s"], dtype=np.float64)
    ends = np.asarray(s.clips["end_s"], dtype=np.float64)
    assert sorted(starts.tolist()) == [0.0, 1.0, 2.0]
    for i, cid in enumerate(ids):
        f = s.frames(cid, backbone=name)[:, 0]            # [T, D], the first stored layer
        t = s.frame_times(cid, backbone=name)
        assert len(f) == len(t) == geo.n_frames(int(round((ends[i] - starts[i]) * sr)))
        hop = geo.stride / sr
        np.testing.assert_allclose(np.diff(t), hop)
        hit = np.abs(f - f[0]).max(axis=1) > 1e-3  # frame 0 is more than 0.3 s from every click
        inside = [c for c in clicks if starts[i] <= c < ends[i]]
        if not inside:
            assert not hit.any()
            continue
        assert hit.sum() >= 2
        assert abs(float(t[hit].mean()) - inside[0]) <= hop, (cid, t[hit])
    assert verify(store).ok


def test_bad_geometry_is_refused_by_name():
    with pytest.raises(ValueError, match="stride"):
        FrameGeometry(16000, 0, 400)
    with pytest.raises(ValueError, match="pad"):
        FrameGeometry(16000, 320, 400, -1)
    with pytest.raises(ValueError, match="receptive"):
        FrameGeometry(16000, 320, 400.5)
    with pytest.raises(KeyError, match="receptive, pad"):
        FrameGeometry.from_attrs({"sample_rate": 16000, "stride": 320})
    with pytest.raises(ValueError, match="stride"):
        FrameGeometry.from_attrs({"sample_rate": 16000, "stride": "320x", "receptive": 400, "pad": 0})
    g = FrameGeometry.from_attrs({"sample_rate": 16000.0, "stride": 320, "receptive": 400, "pad": 0, "name": "x"})
    assert g == FrameGeometry(16000, 320, 400, 0) and isinstance(g.sample_rate, int)
    assert FrameGeometry.from_attrs(g.to_attrs()) == g and g.as_dict() == {"sample_rate": 16000, "stride": 320,
                                                                          "receptive": 400, "pad": 0}

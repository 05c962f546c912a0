"""Overlapping extraction windows with context margins (featurestore.extract's windowing contract).

A 7 s clip is extracted with 2 s windows by a tiny random transformers model and compared with one
pass of the model over the whole clip: hidden state 0 (CNN + positional convolution) must equal it
once the margin covers the positional convolution's reach, and the transformer layers must be much
closer to it with margins than without.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featurestore import open_store
from featurestore.build import ExtractSettings, SettingsMismatch, build, parse_args
from featurestore.clips import ClipSettings
from featurestore.extract import context_frames, plan_windows, window_frames, window_plan
from featurestore.frontends import load_frontend
from tests.conftest import tiny_model, write_wav

SR = 16000
WINDOW_S, CONTEXT_S = 2.0, 0.5
CLIPS_S = {"long": 7.0, "short": 1.5}  # the short clip fits one window


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny layer-norm WavLM (positional convolution 16 frames wide, no input normalisation) and two
    clips: a 7 s gliding tone with noise and a 1.5 s one."""
    tmp = tmp_path_factory.mktemp("ctx")
    folder = tmp / "tiny-wavlm"
    tiny_model("wavlm", feat_extract_norm="layer").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": SR, "do_normalize": False}))
    rng = np.random.default_rng(0)
    waves = {}
    for name, seconds in CLIPS_S.items():
        t = np.arange(int(seconds * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * t)))
        waves[name] = (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        write_wav(tmp / "audio" / f"{name}.wav", waves[name], SR)
    return tmp, folder, waves


def _build(tmp, folder, context_s, store_name, **kw):
    path = tmp / store_name
    build(tmp / "audio", path, [str(folder)], name="tiny", num_workers=0, progress=False,
          clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
          extract=ExtractSettings(window_s=WINDOW_S, context_s=context_s, batch_s=4.0, dtype="float32"), **kw)
    return open_store(path)


@pytest.fixture(scope="module")
def stores(corpus):
    tmp, folder, _ = corpus
    return {c: _build(tmp, folder, c, f"ctx{c}.zarr") for c in (0.0, CONTEXT_S)}


def _whole_clip(folder, x: np.ndarray) -> np.ndarray:
    """Hidden states of one pass of the model itself over the whole clip -> [T, L, D]."""
    model = tiny_model("wavlm", feat_extract_norm="layer")
    with torch.no_grad():
        hs = model(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states
    return torch.stack(hs, dim=2)[0].numpy()


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_frames,k,c", [(1, 5, 2), (99, 99, 25), (100, 99, 25), (349, 99, 25), (1000, 99, 0),
                                          (349, 99, 49), (50, 7, 3), (8, 7, 3), (14999, 1499, 250)])
def test_kept_frames_tile_the_clip_and_see_their_context(n_frames, k, c):
    stride, receptive = 320, 400
    padded = (n_frames - 1) * stride + receptive  # samples of the (padded) clip that frames use
    spans = plan_windows(n_frames, k, stride, receptive, c)
    kept = np.concatenate([np.arange(s.frame, s.frame + s.n_frames) for s in spans])
    np.testing.assert_array_equal(kept, np.arange(n_frames))  # every frame exactly once, in order
    for s in spans:
        computed = s.lead + s.n_frames + s.trail
        assert 1 <= computed <= k and s.n_frames >= 1
        assert s.start == (s.frame - s.lead) * stride  # on the clip's frame grid
        assert s.samples == (computed - 1) * stride + receptive and s.start + s.samples <= padded
        first_span = s.frame * stride, s.frame * stride + receptive  # samples of the first kept frame
        last_span = (s.frame + s.n_frames - 1) * stride, (s.frame + s.n_frames - 1) * stride + receptive
        # context before every kept frame, unless the window starts at the clip start
        assert s.start == 0 or first_span[0] - s.start >= c * stride
        # context after every kept frame, unless the window ends at the clip end
        assert s.start + s.samples == padded or s.start + s.samples - last_span[1] >= c * stride
    if n_frames <= k:  # fits one window: no margins, nothing computed twice
        assert spans == [(0, n_frames, 0, 0, 0, padded)]
    else:
        assert sum(s.lead + s.n_frames + s.trail for s in spans) == n_frames + 2 * c * (len(spans) - 1)


def test_context_frames_cover_the_requested_seconds(corpus):
    _, folder, _ = corpus
    fe = load_frontend(str(folder))
    for context_s in (0.0, 0.01, 0.5, 0.51, 5.0):
        c = context_frames(fe, context_s)
        assert c * fe.stride >= context_s * fe.sample_rate > (c - 1) * fe.stride
    assert window_plan(fe, WINDOW_S, CONTEXT_S) == (window_frames(fe, WINDOW_S), 25)
    for bad in ({"window_s": 1.0, "context_s": 0.5}, {"window_s": 2.0, "context_s": -1.0},
                {"window_s": 2.0, "context_s": float("nan")}, {"window_s": 0.0, "context_s": 0.0}):
        with pytest.raises(ValueError, match="--context-seconds|--window-seconds"):
            window_plan(fe, **bad)
    crepe = load_frontend("crepe-tiny")
    assert crepe.frame_local and context_frames(crepe, 5.0) == 0
    assert window_plan(crepe, 1.0, 5.0) == (window_frames(crepe, 1.0), 0)  # no margins: no constraint


# ---------------------------------------------------------------------------------------------
# extraction against a whole-clip pass
# ---------------------------------------------------------------------------------------------

def test_windowed_layer0_equals_a_whole_clip_pass(corpus, stores):
    _, folder, waves = corpus
    ref = _whole_clip(folder, waves["long"])
    got = stores[CONTEXT_S].frames("long", backbone="tiny")
    assert got.shape == ref.shape and got.dtype == np.float32
    # hidden state 0 reaches 8 frames (positional convolution 16 wide) past its receptive field;
    # the 25-frame margin covers that, so it equals the whole-clip pass at every frame
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5 * np.abs(ref[:, 0]).max())
    # without margins it does not, at the window edges
    old = stores[0.0].frames("long", backbone="tiny")
    assert np.abs(old[:, 0] - ref[:, 0]).max() > 1e-2 * np.abs(ref[:, 0]).max()


def test_a_clip_shorter_than_a_window_is_one_plain_pass(corpus, stores):
    _, folder, waves = corpus
    ref = _whole_clip(folder, waves["short"])
    for store in stores.values():
        np.testing.assert_allclose(store.frames("short", backbone="tiny"), ref, rtol=1e-5,
                                   atol=1e-5 * np.abs(ref).max())


def test_margins_bring_transformer_frames_at_window_edges_close_to_a_whole_clip_pass(corpus, stores):
    _, folder, waves = corpus
    ref = _whole_clip(folder, waves["long"])
    k = window_frames(load_frontend(str(folder)), WINDOW_S)
    edges = np.arange(k, len(ref), k)  # first frames of the windows without margins
    near = np.unique(np.clip((edges[:, None] + np.arange(-10, 10)).ravel(), 0, len(ref) - 1))
    diff = {c: np.abs(s.frames("long", backbone="tiny")[:, 1:] - ref[:, 1:]) for c, s in stores.items()}
    before, after = diff[0.0][near].max(), diff[CONTEXT_S][near].max()
    scale = np.abs(ref[:, 1:]).max()
    assert before > 0.05 * scale  # the defect is real
    assert after * 5 < before, (before, after)
    assert diff[CONTEXT_S].max() * 5 < before  # and no frame anywhere is as far off


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------

def test_context_is_part_of_the_identity_and_old_stores_mean_zero(corpus, stores):
    tmp, folder, _ = corpus
    assert "context_s" not in stores[0.0].info("tiny")["identity"]  # as in stores built before margins
    assert stores[CONTEXT_S].info("tiny")["identity"]["context_s"] == CONTEXT_S
    # resuming with another margin is refused, naming it
    for have, now in ((0.0, CONTEXT_S), (CONTEXT_S, 0.25)):
        with pytest.raises(SettingsMismatch, match="context_s"):
            _build(tmp, folder, now, f"ctx{have}.zarr")
    # frame-local frontends do not depend on margins: their identity has none
    assert "context_s" not in ExtractSettings(context_s=5.0).identity(frame_local=True)


def test_a_window_too_short_for_its_margins_fails_before_planning(corpus):
    tmp, folder, _ = corpus
    with pytest.raises(ValueError, match="--context-seconds"):
        build(tmp / "audio", tmp / "bad.zarr", [str(folder)], name="tiny", num_workers=0, progress=False,
              clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
              extract=ExtractSettings(window_s=1.0, context_s=0.5))
    assert "tiny" not in open_store(tmp / "bad.zarr").backbones


def test_cli_context_seconds():
    assert parse_args([]).context_seconds == ExtractSettings().context_s == 5.0
    assert parse_args(["--context-seconds", "0"]).context_seconds == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--context-seconds", "-1"])

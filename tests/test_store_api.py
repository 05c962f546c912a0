"""Several backbones side by side, settings checks, the reading API and the torch datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore import open_store
from featurestore.build import ExtractSettings, SettingsMismatch, build, main
from featurestore.clips import ClipSettings
from featurestore.datasets import ClipDataset, FrameWindowDataset
from featurestore.store import BackboneNotInStore
from tests.conftest import noise_clips


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    noise_clips(tmp / "audio", 16000, [3.2, 2.0, 1.3])
    store = tmp / "s.zarr"
    kw = dict(clip_settings=ClipSettings(segment_s=1.0, min_segment_s=0.5), num_workers=0, progress=False)
    build(tmp / "audio", store, ["crepe-tiny"], extract=ExtractSettings(target_unit_frames=120), **kw)
    build(tmp / "audio", store, ["logmel"], **kw)
    return tmp, store, kw


def test_backbones_side_by_side_share_the_clip_table(two_backbones):
    _, path, _ = two_backbones
    s = open_store(path)
    assert s.backbones == ["crepe-tiny", "logmel"]
    # 3.2 s -> 1+1+1 (+0.2 dropped), 2.0 -> 1+1, 1.3 -> 1 (+0.3 dropped)
    assert list(s.clip_ids) == ["clip00#0000", "clip00#0001", "clip00#0002", "clip01#0000", "clip01#0001",
                                "clip02#0000"]
    assert list(s.clips["file_id"]) == ["clip00"] * 3 + ["clip01"] * 2 + ["clip02"]
    np.testing.assert_allclose(s.clips["start_s"], [0, 1, 2, 0, 1, 0])
    assert s.shape("crepe-tiny") == (6, 256) and s.shape("logmel") == (1, 128)
    # 1 s at 16 kHz: CREPE centred frames 1 + 16000 // 320 = 51; log-mel (16000 - 1024) // 320 + 1 = 47
    assert set(s.n_frames("crepe-tiny")) == {51} and set(s.n_frames("logmel")) == {47}
    info = s.info("crepe-tiny")
    assert len(info["identity"]["weights_hash"]) == 64 and info["versions"]["torch"]
    assert s.clip_settings["segment_s"] == 1.0


def test_frames_layers_pooled_and_times(two_backbones):
    _, path, _ = two_backbones
    s = open_store(path)
    x = s.frames("clip01#0001", "crepe-tiny")
    assert x.shape == (51, 6, 256) and x.dtype == np.float16
    np.testing.assert_array_equal(s.frames("clip01#0001", "crepe-tiny", layers=[1, 4]), x[:, [1, 4]])
    np.testing.assert_array_equal(s.frames(4, "crepe-tiny", layers=2), x[:, [2]])
    # pooled = mean / std over the stored frames (frames are float16-rounded, pooled computed before rounding)
    for i in range(len(s)):
        f = s.frames(i, "crepe-tiny").astype(np.float64)
        scale = np.abs(f).max()
        np.testing.assert_allclose(s.pooled("crepe-tiny")[i], f.mean(0), rtol=2e-3, atol=1e-3 * scale)
        np.testing.assert_allclose(s.pooled("crepe-tiny", stat="std")[i], f.std(0), rtol=5e-3, atol=1e-3 * scale)
    assert s.pooled("crepe-tiny", layers=[0, 5]).shape == (6, 2, 256)
    t = s.frame_times("clip01#0001", "logmel")
    np.testing.assert_allclose(t, 1.0 + (np.arange(47) * 320 + 512) / 16000)
    assert s.frame_rate("logmel") == 50.0


def test_datasets(two_backbones):
    _, path, _ = two_backbones
    s = open_store(path)
    ds = FrameWindowDataset(s, "crepe-tiny", window=20, hop=20)
    covered = {}
    for item in ds:
        r, st, n = item["row"], item["start"], item["length"]
        np.testing.assert_array_equal(item["x"][:n].numpy(), s.frames(r, "crepe-tiny", start=st, stop=st + n))
        assert torch.all(item["x"][n:] == 0)
        covered.setdefault(r, set()).update(range(st, st + n))
    assert all(covered[r] == set(range(51)) for r in range(len(s)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader))["x"].shape == (4, 20, 6, 256)
    clips = ClipDataset(s, "crepe-tiny", layers=[0, 1])
    np.testing.assert_allclose(clips[3]["x"].numpy(), s.pooled("crepe-tiny", layers=[0, 1])[3].astype(np.float32))
    framed = ClipDataset(s, "logmel", pooled=False, rows=[5])
    assert framed[0]["x"].shape == (47, 1, 128) and framed[0]["row"] == 5


def test_changed_settings_fail_clearly_unless_overwrite(two_backbones, capsys):
    tmp, path, kw = two_backbones
    with pytest.raises(SettingsMismatch, match="window_s"):
        build(tmp / "audio", path, ["crepe-tiny"], extract=ExtractSettings(target_unit_frames=120, window_s=10),
              **kw)
    with pytest.raises(SettingsMismatch, match="clip_settings"):
        build(tmp / "audio", path, ["logmel"], clip_settings=ClipSettings(segment_s=2.0), num_workers=0,
              progress=False)
    code = main(["--input", str(tmp / "audio"), "--store", str(path), "--segment-seconds", "2", "--no-progress",
                 "--backbone", "logmel"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    s = open_store(path)
    assert s.backbones == ["crepe-tiny", "logmel"]  # nothing lost by the refused runs
    # a backbone rebuilt with --overwrite; the other one is untouched
    before = s.frames(0, "logmel")
    build(tmp / "audio", path, ["crepe-tiny"], extract=ExtractSettings(target_unit_frames=120, window_s=0.5),
          overwrite=True, **kw)
    s = open_store(path)
    assert s.info("crepe-tiny")["identity"]["window_s"] == 0.5
    np.testing.assert_array_equal(s.frames(0, "logmel"), before)


def test_reader_errors(tmp_path, two_backbones):
    _, path, _ = two_backbones
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "nothing")
    s = open_store(path)
    with pytest.raises(BackboneNotInStore, match="featurestore.build"):
        s.frames(0, "mert-v1-95m")
    with pytest.raises(KeyError, match="no clip"):
        s.frames("nope", "logmel")
    with pytest.raises(KeyError, match="label"):
        s.labels("singer")


def test_raw_chunk_reads_equal_zarr_and_sharded_layout_reads_back(two_backbones, tmp_path):
    from featurestore.store import RawChunkReader

    tmp, path, kw = two_backbones
    s = open_store(path)
    arr = s.frames_array("crepe-tiny")
    assert RawChunkReader.supports(arr)
    off = s.offsets("crepe-tiny")
    for i in range(len(s)):
        np.testing.assert_array_equal(s.frames(i, "crepe-tiny"), arr[off[i, 0]:off[i, 1]])
    reader = RawChunkReader(arr, path / "backbones" / "crepe-tiny" / "frames")
    np.testing.assert_array_equal(reader.read(0, arr.shape[0]), arr[:])
    # sharded frames (units aligned to shards): Zarr reads them, same values as the unsharded store
    sharded = tmp_path / "sharded.zarr"
    build(tmp / "audio", sharded, ["crepe-tiny"], extract=ExtractSettings(target_unit_frames=120, chunk_frames=64,
                                                                          shard_frames=128), **kw)
    t = open_store(sharded)
    assert not RawChunkReader.supports(t.frames_array("crepe-tiny"))
    assert t.frames_array("crepe-tiny").shards == (128, 6, 256)
    for i in range(len(s)):
        np.testing.assert_array_equal(t.frames(i, "crepe-tiny"), s.frames(i, "crepe-tiny"))



def test_frames_into_fills_a_caller_buffer_like_zarr_reads(two_backbones, tmp_path):
    """The copy-free path of the datasets: frames [start, stop) of a clip, any layer selection, written
    into a float32 buffer (converted on the copy), equal to the Zarr array itself; the same through
    the Zarr-backed reader of a sharded store; wrong buffers and bounds are refused naming the clip."""
    from featurestore.store import CheckedArray, RawChunkReader

    tmp, path, kw = two_backbones
    s = open_store(path)
    arr, off = s.frames_array("crepe-tiny"), s.offsets("crepe-tiny")
    assert arr.chunks[0] < off[-1, 1]          # windows below cross chunk files
    ref = arr[:].astype(np.float32)
    sharded = tmp_path / "sharded.zarr"
    build(tmp / "audio", sharded, ["crepe-tiny"], extract=ExtractSettings(target_unit_frames=120, chunk_frames=64,
                                                                          shard_frames=128), **kw)
    t = open_store(sharded)
    assert isinstance(s._reader("crepe-tiny"), RawChunkReader) and isinstance(t._reader("crepe-tiny"), CheckedArray)
    rng = np.random.default_rng(0)
    for layers, sel in ((None, slice(None)), ([1, 4], [1, 4]), ([2, 3, 4], [2, 3, 4]), (5, [5]), ([-1, 0], [-1, 0])):
        for i in range(len(s)):
            n = int(off[i, 1] - off[i, 0])
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            want = ref[off[i, 0] + a:off[i, 0] + b][:, sel]
            for store in (s, t):
                out = np.full((b - a + 3,) + want.shape[1:], 7.0, dtype=np.float32)
                assert store.frames_into(i, "crepe-tiny", out, layers=layers, start=a, stop=b) == b - a
                np.testing.assert_array_equal(out[:b - a], want)
                assert np.all(out[b - a:] == 7.0)        # rows past the frames are left alone
                np.testing.assert_array_equal(store.frames(i, "crepe-tiny", layers=layers, start=a, stop=b),
                                              want.astype(np.float16))
    with pytest.raises(ValueError, match="clip00#0001"):
        s.frames_into("clip00#0001", "crepe-tiny", np.empty((51, 5, 256), np.float32))
    with pytest.raises(ValueError, match=r"need \[>= 51, 2, 256\]"):
        s.frames_into(1, "crepe-tiny", np.empty((50, 2, 256), np.float32), layers=[0, 1])
    with pytest.raises(IndexError, match="clip00#0001"):
        s.frames_into(1, "crepe-tiny", np.empty((60, 6, 256), np.float32), start=0, stop=52)
    with pytest.raises(IndexError):
        s.frames(1, "crepe-tiny", layers=[6])
    # alignment frames between units (no clip's offsets) read as 0 and match Zarr's fill value
    reader = s._reader("crepe-tiny")
    whole = reader.read_into(0, arr.shape[0], np.full(arr.shape, np.nan, dtype=np.float32))
    np.testing.assert_array_equal(whole, ref)

def test_replanning_the_clips_with_overwrite_drops_every_old_backbone(tmp_path):
    noise_clips(tmp_path / "audio", 16000, [2.0, 1.0])
    kw = dict(num_workers=0, progress=False)
    build(tmp_path / "audio", tmp_path / "s.zarr", ["logmel", "crepe-tiny"], clip_settings=ClipSettings(segment_s=1.0),
          **kw)
    assert open_store(tmp_path / "s.zarr").backbones == ["crepe-tiny", "logmel"]
    build(tmp_path / "audio", tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=0.5,
                                                                                         min_segment_s=0.5),
          overwrite=True, **kw)
    s = open_store(tmp_path / "s.zarr")
    assert s.backbones == ["logmel"] and len(s) == 6  # crepe's frames belonged to the old clips
    assert s.clip_settings["segment_s"] == 0.5


def test_clips_without_frames_are_left_out_of_tasks(tmp_path):
    """A 40 ms file is stored (CREPE frames it) but gives no log-mel frame (1024-sample window): the
    split plan leaves it out and counts it."""
    from heads.tasks import ClipLabelTask
    from tests.conftest import write_wav

    paths = noise_clips(tmp_path / "audio", 16000, [1.0, 1.0, 1.0])
    write_wav(tmp_path / "audio" / "tiny.wav", (0.1 * np.sin(np.arange(640) / 3.0)).astype(np.float32), 16000)
    m = tmp_path / "m.csv"
    splits = ["train", "train", "test"]
    m.write_text("path,split,singer\n" + "".join(f"{p},{sp},s0\n" for p, sp in zip(paths, splits))
                 + f"{tmp_path / 'audio' / 'tiny.wav'},train,s0\n")
    report = build(m, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
                   progress=False)
    assert [s["reason"] for s in report.skipped] == ["too_short"]
    s = open_store(tmp_path / "s.zarr")
    assert len(s) == 4 and list(s.n_frames("logmel")) == [47, 47, 47, 0]
    task = ClipLabelTask("singer")
    plan = task.plan(s, "logmel", select="holdout", group="file")
    assert plan.dropped == {"train": {"no_frames": 1}}
    assert sorted(np.concatenate([plan.train, plan.select])) == [0, 1] and list(plan.score) == [2]
    X, y, rows = task.data(s, "logmel", np.concatenate([plan.train, plan.select]))
    assert np.isfinite(X).all()

"""Stores on fsspec URLs: built into and read from fsspec's in-memory and local file systems, compared
byte for byte with a local build of the same input; the lease lock through fsspec; missing chunks."""
from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.location import Location, is_url
from featurestore.locking import LockTimeout, LockUnsupported, StoreLock
from featurestore.verify import verify
from featurestore.store import CheckedArray, RawChunkReader, StoreCorrupted
from tests.conftest import noise_clips

KW = dict(clip_settings=ClipSettings(segment_s=1.0, min_segment_s=0.5), num_workers=0, progress=False)
SHARDED = ExtractSettings(target_unit_frames=120, chunk_frames=32, shard_frames=128)


def _build(audio, store):
    build(audio, store, ["logmel"], **KW)
    build(audio, store, ["crepe-tiny"], extract=SHARDED, **KW)  # the layout recommended for object stores


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsspec")
    noise_clips(tmp / "audio", 16000, [3.2, 2.0, 1.3])
    _build(tmp / "audio", tmp / "local.zarr")
    return tmp, tmp / "local.zarr"


@pytest.fixture
def memory_url():
    url = f"memory://fsspec-test-{uuid.uuid4().hex}/songs.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    root = Location(url).fs_path.rsplit("/", 1)[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _assert_same_store(a, b):
    """Clip table, frames of every clip and pooled views equal, bytes included."""
    assert a.backbones == b.backbones and len(a) == len(b) > 0
    for col in ("id", "file_id", "source", "audio", "split", "start_s", "end_s"):
        np.testing.assert_array_equal(a.clips[col], b.clips[col])
    for bb in a.backbones:
        np.testing.assert_array_equal(a.offsets(bb), b.offsets(bb))
        for stat in ("mean", "std"):
            pa, pb = a.pooled(bb, stat=stat), b.pooled(bb, stat=stat)
            assert pa.tobytes() == pb.tobytes()
        for cid in a.clip_ids:
            fa, fb = a.frames(cid, bb), b.frames(cid, bb)
            assert fa.shape == fb.shape and fa.dtype == fb.dtype and fa.tobytes() == fb.tobytes()


def test_location_classifies_paths_and_urls(tmp_path):
    assert is_url("s3://bucket/x.zarr") and is_url("memory://x.zarr") and is_url("file:///tmp/x.zarr")
    assert not is_url(tmp_path / "x.zarr") and not is_url("relative/x.zarr")
    loc = Location("memory://a/b/songs.zarr")
    assert loc.is_url and loc.name == "songs.zarr" and type(loc.fs).__name__ == "MemoryFileSystem"
    assert loc.join("clips", "zarr.json") == loc.fs_path + "/clips/zarr.json"
    assert str(loc.sibling("songs.zarr.lease")) == "memory://a/b/songs.zarr.lease"
    local = Location(tmp_path / "x.zarr")
    assert not local.is_url and local.path == tmp_path / "x.zarr" and local.sibling("y").path == tmp_path / "y"
    with pytest.raises(ValueError, match="nosuchproto://x.zarr"):
        Location("nosuchproto://x.zarr")


def test_memory_store_round_trip(local_build, memory_url):
    tmp, local = local_build
    _build(tmp / "audio", memory_url)
    fs = fsspec.filesystem("memory")
    assert fs.isfile(Location(memory_url).join("zarr.json"))
    assert not fs.exists(Location(memory_url).fs_path + ".lease")  # the lease went with the build
    remote, ref = open_store(memory_url), open_store(local)
    assert str(remote.path) == memory_url
    _assert_same_store(remote, ref)
    # URL stores read frames through Zarr with chunk checks, local unsharded ones memory-map
    assert isinstance(remote._reader("logmel"), CheckedArray)
    assert isinstance(ref._reader("logmel"), RawChunkReader)
    # a second build of the same URL finds everything done and changes nothing
    before = {p: fs.cat_file(p) for p in fs.find(Location(memory_url).fs_path)}
    _build(tmp / "audio", memory_url)
    assert {p: fs.cat_file(p) for p in fs.find(Location(memory_url).fs_path)} == before


def test_file_url_store_round_trip(local_build):
    tmp, local = local_build
    url = (tmp / "shared" / "songs.zarr").as_uri()  # file:///.../shared/songs.zarr, through fsspec
    build(tmp / "audio", url, ["logmel"], lock="lease", **KW)
    assert (tmp / "shared" / "songs.zarr" / "zarr.json").is_file()
    assert not (tmp / "shared" / "songs.zarr.lease").exists()
    remote, ref = open_store(url), open_store(local)
    assert remote.backbones == ["logmel"]
    np.testing.assert_array_equal(remote.pooled("logmel"), ref.pooled("logmel"))
    for cid in ref.clip_ids:
        assert remote.frames(cid, "logmel").tobytes() == ref.frames(cid, "logmel").tobytes()


def test_local_store_copied_to_memory_reads_the_same_and_catches_missing_chunks(local_build, memory_url):
    _, local = local_build
    fs = fsspec.filesystem("memory")
    dest = Location(memory_url).fs_path
    fs.put(str(local), dest, recursive=True)
    remote, ref = open_store(memory_url), open_store(local)
    _assert_same_store(remote, ref)
    assert verify(memory_url).ok

    # a chunk of frames a clip owns goes missing: Zarr would hand out zeros; the reader refuses
    files = [p for p in fs.find(dest + "/backbones/crepe-tiny/frames/c")]
    assert files
    fs.rm_file(files[0])
    fresh = open_store(memory_url)
    with pytest.raises(StoreCorrupted, match=r"memory://.*crepe-tiny/frames/c.* is missing"):
        for cid in fresh.clip_ids:
            fresh.frames(cid, "crepe-tiny")
    report = verify(memory_url, quick=True)
    assert not report.ok and [p.check for p in report.problems] == ["missing_chunk"]
    assert files[0] in report.problems[0].message
    # a pooled chunk with the wrong size
    pooled = sorted(fs.find(dest + "/backbones/logmel/pooled_mean/c"))[0]
    fs.pipe_file(pooled, b"short")
    if ref.group("logmel")["pooled_mean"].metadata.codecs[-1].__class__.__name__ == "BytesCodec":
        with pytest.raises(StoreCorrupted, match="bytes, expected"):
            open_store(memory_url).pooled("logmel")


def test_missing_url_store_is_named(memory_url):
    with pytest.raises(FileNotFoundError, match=r"memory://.*songs\.zarr is not a feature store"):
        open_store(memory_url)


def test_lease_lock_through_fsspec(memory_url):
    fs = fsspec.filesystem("memory")
    lease = Location(memory_url).fs_path + ".lease"
    a = StoreLock(memory_url, timeout=0, log=lambda m: None)
    b = StoreLock(memory_url, timeout=0, log=lambda m: None)
    with a.hold("planning the clip table"):
        assert fs.isfile(lease)
        held = fs.cat_file(lease)
        assert b"planning the clip table" in held
        with pytest.raises(LockTimeout, match="planning the clip table"):
            with b.hold("something else"):
                pass
    assert not fs.exists(lease)
    with b.hold("now free"):  # released: the other one gets it
        assert fs.isfile(lease)
    with pytest.raises(LockUnsupported, match="use the lease lock"):
        StoreLock(memory_url, kind="flock")

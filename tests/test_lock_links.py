"""Locks never write through a symbolic link: a lock or lease path that is a link (or not a regular
file) is refused with a message naming it, and the link's target is left as it was."""
from __future__ import annotations

import os

import pytest

from featurestore.build import main
from featurestore.locking import LockPathRefused, StoreLock, lock_path
from tests.conftest import noise_clips


@pytest.mark.parametrize("kind", ["flock", "lease"])
def test_a_symlinked_lock_file_is_refused_and_its_target_unchanged(tmp_path, kind):
    store = tmp_path / "sym.zarr"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n")
    before = victim.read_bytes(), victim.stat().st_mtime_ns
    os.symlink(victim, lock_path(store, kind))
    with pytest.raises(LockPathRefused, match=r"sym\.zarr\.(lock|lease) is a symbolic link .*victim\.txt"):
        with StoreLock(store, kind, timeout=1).hold("x"):
            pass
    assert (victim.read_bytes(), victim.stat().st_mtime_ns) == before
    assert os.path.islink(lock_path(store, kind))  # the link itself is not removed either


def test_a_lock_path_that_is_a_folder_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    lock_path(store, "flock").mkdir()
    with pytest.raises(LockPathRefused, match="not a regular file"):
        with StoreLock(store, "flock", timeout=1).hold("x"):
            pass


def test_a_dangling_symlink_is_not_created_through(tmp_path):
    """A link to a file that does not exist yet: O_CREAT would create the target; it must not."""
    store = tmp_path / "s.zarr"
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    os.symlink(target, lock_path(store, "flock"))
    with pytest.raises(LockPathRefused):
        with StoreLock(store, "flock", timeout=1).hold("x"):
            pass
    assert not target.exists()


def test_build_with_a_symlinked_lock_exits_2_with_the_message(tmp_path, capsys):
    noise_clips(tmp_path / "audio", 16000, [1.0, 1.0])
    store = tmp_path / "sym.zarr"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, lock_path(store, "flock"))
    rc = main(["--input", str(tmp_path / "audio"), "--store", str(store), "--backbone", "logmel", "--lock", "flock",
               "--num-workers", "0", "--no-progress", "--segment-seconds", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "symbolic link" in err and "Traceback" not in err
    assert victim.read_text() == "keep me"
    assert not (store / "clips").exists()

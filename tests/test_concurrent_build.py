"""Builds of one store started at the same moment (no --shard) wait for each other's planning,
extract side by side and leave the store one build makes; --overwrite recovers a half-planned
store; the flock and lease locks exclude, wait with a message, time out and take over stale leases."""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from featurestore.build import ExtractSettings, build, main
from featurestore.clips import ClipSettings
from featurestore.locking import LockTimeout, StoreLock, lock_path
from featurestore.verify import verify
from tests.conftest import noise_clips

BACKBONE = "logmel"  # the cheapest frontend: the test is about the store, not the model
KW = dict(clip_settings=ClipSettings(segment_s=0.5, min_segment_s=0.2),
          extract=ExtractSettings(target_unit_frames=40, chunk_frames=16), num_workers=0, progress=False)
CLIP_COLUMNS = ("id", "file_id", "source", "audio", "start_s", "end_s", "split")
BACKBONE_ARRAYS = ("offsets", "frames", "pooled_mean", "pooled_std", "unit_done", "unit_checksum")


def assert_same_store(ref: Path, other: Path, backbone: str = BACKBONE) -> None:
    """Every array read back equal (NaN equal to NaN), and the backbone marked complete in both."""
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(other), mode="r")
    assert a["clips"].attrs["complete"] and b["clips"].attrs["complete"]
    for col in CLIP_COLUMNS:
        np.testing.assert_array_equal(a["clips"][col][:], b["clips"][col][:], err_msg=col)
    ga, gb = a[f"backbones/{backbone}"], b[f"backbones/{backbone}"]
    for name in BACKBONE_ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert gb.attrs.get("complete") is True and gb.attrs["identity"] == ga.attrs["identity"]


def _worker(tasks, results, barrier):
    """One builder process: for each job, start together with the other worker, then build."""
    while (job := tasks.get()) is not None:
        inp, store, delay, kind, timeout = job
        err = io.StringIO()
        sys.stderr = err
        barrier.wait()
        time.sleep(delay)
        try:
            build(inp, store, [BACKBONE], lock=kind, lock_timeout=timeout, **KW)
            results.put(("ok", err.getvalue()))
        except LockTimeout as e:
            results.put(("timeout", str(e)))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            results.put(("error", f"{type(e).__name__}: {e}\n{err.getvalue()}"))
        finally:
            sys.stderr = sys.__stderr__


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concurrent")
    noise_clips(tmp / "audio", 16000, [1.0, 0.8], seed=5)
    ref = tmp / "ref.zarr"
    build(tmp / "audio", ref, [BACKBONE], **KW)
    return tmp, ref


def test_two_unsharded_builds_started_together_give_the_reference_store(corpus):
    tmp, ref = corpus
    ctx = mp.get_context("spawn")
    tasks, results, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_worker, args=(tasks, results, barrier), daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    waited, timed_out = 0, 0
    try:
        for k in range(20):
            store = tmp / f"trial{k}.zarr"
            kind = "flock" if k % 2 == 0 else "lease"
            # the second builder starts 0-40 ms later, and in some trials gives up at once instead of waiting
            jobs = [(tmp / "audio", store, 0.0, kind, None),
                    (tmp / "audio", store, (k % 5) * 0.01, kind, 0.0 if k % 4 in (1, 2) else None)]
            for job in jobs:
                tasks.put(job)
            outcome = [results.get(timeout=120) for _ in jobs]
            states = sorted(s for s, _ in outcome)
            assert states in (["ok", "ok"], ["ok", "timeout"]), (k, outcome)
            for state, text in outcome:
                if state == "timeout":  # the clear message: who holds the lock, and what to do
                    timed_out += 1
                    # (a timeout of 0 never waited: the store is busy, and who holds it)
                    assert "is busy: its lock is held by" in text and f"{socket.gethostname()}:" in text
                    assert str(store) in text
                    assert "run again once that process is done" in text
                for line in text.splitlines():
                    if "waiting for the lock" in line:
                        waited += 1
                        assert str(store) in line and f"{socket.gethostname()}:" in line, line
            if "timeout" in states:  # not wedged: a rerun completes the store
                build(tmp / "audio", store, [BACKBONE], lock=kind, **KW)
            assert_same_store(ref, store)
            assert verify(store).ok
            assert not lock_path(store, kind).exists()  # the lock file goes with its holder
    finally:
        for _ in workers:
            tasks.put(None)
        for w in workers:
            w.join(timeout=30)
    assert waited + timed_out > 0, "the builds never met at the lock: the test did not exercise it"


def _half_planned(store: Path, fault: str) -> None:
    """Leave ``store`` as an interrupted or racing planner might have."""
    root = zarr.open_group(str(store), mode="a")
    g = f"backbones/{BACKBONE}"
    if fault == "clip column gone":  # the table is marked complete but a column is missing
        del root["clips/audio"]
    elif fault == "clip group metadata gone":  # arrays left without their group (re-creating them used to fail)
        os.remove(store / "clips" / "zarr.json")
    elif fault == "backbone without offsets":
        del root[f"{g}/offsets"]
    elif fault == "backbone planned on an empty clip table":
        attrs = dict(root[g].attrs)
        del root[g]
        h = root.create_group(g, attributes={**attrs, "n_clips": 0})
        h.create_array("offsets", shape=(0, 2), dtype="int64")
    else:
        raise ValueError(fault)


@pytest.mark.parametrize("fault", ["clip column gone", "clip group metadata gone", "backbone without offsets",
                                   "backbone planned on an empty clip table"])
def test_overwrite_recovers_a_half_planned_store(corpus, fault):
    tmp, ref = corpus
    store = tmp / f"half-{fault.replace(' ', '-')}.zarr"
    shutil.copytree(ref, store)
    _half_planned(store, fault)
    assert not verify(store).ok
    build(tmp / "audio", store, [BACKBONE], overwrite=True, **KW)
    assert_same_store(ref, store)
    assert verify(store).ok


def test_a_held_lock_makes_the_cli_wait_or_give_up_with_a_message(corpus, capsys):
    tmp, _ = corpus
    store = tmp / "held.zarr"
    args = ["--input", str(tmp / "audio"), "--store", str(store), "--backbone", BACKBONE, "--segment-seconds", "0.5",
            "--min-segment-seconds", "0.2", "--unit-frames", "40", "--chunk-frames", "16", "--num-workers", "0",
            "--no-progress"]
    with StoreLock(store).hold("a test holding it"):
        assert main(args + ["--lock-timeout", "0.2"]) == 2
        err = capsys.readouterr().err
        assert "gave up after" in err and f"{socket.gethostname()}:{os.getpid()}" in err and "a test holding it" in err
        assert "Traceback" not in err
        assert not (store / "clips").exists()  # nothing planned behind the holder's back
    # released: the same command (no timeout) builds the store
    assert main(args) == 0
    assert verify(store).ok


@pytest.mark.parametrize("kind", ["flock", "lease"])
def test_locks_exclude_wait_with_a_message_and_time_out(tmp_path, kind):
    store = tmp_path / "s.zarr"
    order, messages = [], []
    holder = StoreLock(store, kind, ttl=0.6)
    with holder.hold("planning the clip table"):
        info = json.loads(lock_path(store, kind).read_text())
        assert (info["host"], info["pid"], info["what"]) == (socket.gethostname(), os.getpid(),
                                                             "planning the clip table")
        with pytest.raises(LockTimeout, match=rf"{socket.gethostname()}:{os.getpid()} since .*planning the clip table"):
            with StoreLock(store, kind, timeout=0.2, ttl=0.6, log=messages.append).hold("x"):
                pass
        def second():
            with StoreLock(store, kind, ttl=0.6, log=messages.append).hold("second"):
                order.append("second")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.5)  # longer than the lease time: the holder's renewals keep it
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second"]
    assert not lock_path(store, kind).exists()
    assert any("waiting for the lock" in m and "planning the clip table" in m for m in messages)


def test_a_stale_lease_is_taken_over(tmp_path):
    store = tmp_path / "s.zarr"
    lease = lock_path(store, "lease")
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "old", "since": time.time() - 100,
                                 "expires": time.time() - 1, "what": "planning"}))
    with StoreLock(store, "lease", timeout=2).hold("taking over"):
        assert json.loads(lease.read_text())["pid"] == os.getpid()
    assert not lease.exists()
    # a live lease of another host is respected until it expires
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "since": time.time(),
                                 "expires": time.time() + 60, "what": "planning"}))
    with pytest.raises(LockTimeout, match="elsewhere:1"):
        with StoreLock(store, "lease", timeout=0.3).hold("x"):
            pass
    # a lease of a dead process on this host is stale at once
    dead = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t2", "since": time.time(),
                                 "expires": time.time() + 60, "what": "planning"}))
    with StoreLock(store, "lease", timeout=2).hold("taking over"):
        pass

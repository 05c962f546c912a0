"""A build killed at any point and run again gives the same store as an uninterrupted build."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from tests.conftest import noise_clips

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--segment-seconds", "1", "--unit-frames", "60", "--batch-seconds", "2", "--num-workers", "0",
        "--no-progress", "--backbone", "crepe-tiny"]


def run_build(inp, store, extra=(), wait=True):
    cmd = [sys.executable, "-m", "featurestore.build", "--input", str(inp), "--store", str(store), *ARGS, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def units_done(store: Path) -> int:
    d = store / "backbones" / "crepe-tiny" / "unit_done" / "c"
    return len(list(d.iterdir())) if d.is_dir() else 0


def assert_same_store(a: Path, b: Path):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for col in ("id", "file_id", "start_s", "end_s", "split"):
        np.testing.assert_array_equal(ga["clips"][col][:], gb["clips"][col][:])
    ba, bb = ga["backbones/crepe-tiny"], gb["backbones/crepe-tiny"]
    for name in ("frames", "offsets", "pooled_mean", "pooled_std", "unit_done"):
        np.testing.assert_array_equal(ba[name][:], bb[name][:], err_msg=name)
    assert ba.attrs["complete"] and bb.attrs["complete"]
    assert ba.attrs["identity"] == bb.attrs["identity"]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    inp = tmp_path / "audio"
    noise_clips(inp, 16000, [2.0] * 10)
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    r = run_build(inp, ref)
    assert r.returncode == 0, r.stderr
    n_units = zarr.open_group(str(ref), mode="r")["backbones/crepe-tiny/unit_done"].shape[0]
    assert n_units >= 10

    # 1) SIGKILL while units are being written
    proc = run_build(inp, killed, wait=False)
    deadline = time.time() + 120
    while units_done(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = units_done(killed)
    assert 0 < partial < n_units, "the build was not interrupted mid-way"
    assert not zarr.open_group(str(killed), mode="r")["backbones/crepe-tiny"].attrs.get("complete", False)

    # 2) a crash between a unit's frames and its marker: the unit must be redone, not counted
    crash = ("import os, sys, featurestore.writer as w\n"
             "orig = w.write_unit\n"
             "def write_unit(g, r):\n"
             "    if g['unit_done'][r.unit] == 0 and sum(g['unit_done'][:]) >= %d:\n"
             "        g['frames'][r.start:r.start + len(r.frames)] = r.frames * 0 + 7  # garbage, then die\n"
             "        os._exit(9)\n"
             "    orig(g, r)\n"
             "w.write_unit = write_unit\n"
             "from featurestore.build import main\n"
             "sys.exit(main(sys.argv[1:]))\n") % (partial + 2)
    cmd = [sys.executable, "-c", crash, "--input", str(inp), "--store", str(killed), *ARGS]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert units_done(killed) == partial + 2

    # 3) run again: finishes the job, redoing only what is not marked done
    r = run_build(inp, killed)
    assert r.returncode == 0, r.stderr
    assert_same_store(ref, killed)

    # 4) a finished store is not extracted again
    before = {p: p.stat().st_mtime_ns for p in (killed / "backbones" / "crepe-tiny" / "frames" / "c").rglob("*")}
    r = run_build(inp, killed)
    assert r.returncode == 0, r.stderr
    after = {p: p.stat().st_mtime_ns for p in (killed / "backbones" / "crepe-tiny" / "frames" / "c").rglob("*")}
    assert before == after


def test_two_processes_write_one_store_without_locks(tmp_path):
    inp = tmp_path / "audio"
    noise_clips(inp, 16000, [2.0] * 6, seed=3)
    ref, shared = tmp_path / "ref.zarr", tmp_path / "shared.zarr"
    assert run_build(inp, ref).returncode == 0
    r = run_build(inp, shared, ["--shard", "0/2"])
    assert r.returncode != 0 and "--plan-only" in r.stderr
    r = run_build(inp, shared, ["--plan-only"])
    assert r.returncode == 0, r.stderr
    assert units_done(shared) == 0
    procs = [run_build(inp, shared, ["--shard", f"{i}/2"], wait=False) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    g = zarr.open_group(str(shared), mode="r")["backbones/crepe-tiny"]
    if not g.attrs.get("complete", False):  # both finished their halves at the same moment: a last pass marks it
        assert run_build(inp, shared).returncode == 0
    assert_same_store(ref, shared)

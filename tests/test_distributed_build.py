"""Builds across processes started by torchrun (gloo on CPU): the units are split between the ranks
by audio seconds, the store equals a single-process build byte for byte, and a build where one
rank's share was never done (a rank that died) is finished by running the job again."""
from __future__ import annotations

import itertools
from pathlib import Path
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

import featurestore
from featurestore import distributed, layout
from featurestore.build import _audio_seconds, main
from featurestore.clips import clip_samples
from featurestore.demo import make_demo_corpus
from featurestore.distributed import Ranks, assign_units
from featurestore.verify import main as verify_main
from featurestore.registry import REGISTRY
from tests.test_concurrent_build import assert_same_store

BACKBONE = "logmel"  # the cheapest registry frontend: the test is about who writes what, not the model
SR = REGISTRY[BACKBONE].sample_rate
# 0.5 s segments of 2 s clips: 24 clips of 25 frames; 50-frame units of 16-frame chunks: 12 units
OPTS = ["--backbone", BACKBONE, "--segment-seconds", "0.5", "--min-segment-seconds", "0.2",
        "--unit-frames", "50", "--chunk-frames", "16", "--num-workers", "0", "--device", "cpu", "--no-progress"]


def test_assign_units_partitions_every_unit_once_deterministically():
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 5):
        seconds = rng.uniform(0, 10, size=17)
        shares = assign_units(seconds, world)
        assert len(shares) == world
        np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(17))
        for a, b in zip(shares, assign_units(seconds.copy(), world)):
            np.testing.assert_array_equal(a, b)


def test_assign_units_balances_seconds_not_counts():
    # one long unit and ten short ones: the long one's rank gets nothing else
    seconds = np.array([1.0] * 5 + [10.0] + [1.0] * 5)
    long_rank, short_rank = sorted(assign_units(seconds, 2), key=len)
    np.testing.assert_array_equal(long_rank, [5])
    assert len(short_rank) == 10


def test_assign_units_is_close_to_the_best_split():
    """Greedy longest-first is within 4/3 of the best makespan (Graham), checked by brute force."""
    rng = np.random.default_rng(1)
    for world, n in ((2, 9), (3, 7)):
        for _ in range(5):
            seconds = rng.uniform(0.1, 5, size=n)
            got = max(seconds[s].sum() for s in assign_units(seconds, world))
            best = min(max(seconds[np.array(o) == r].sum() for r in range(world))
                       for o in itertools.product(range(world), repeat=n))
            assert best - 1e-9 <= got <= 4 / 3 * best + 1e-9


def test_assign_units_and_env_reject_bad_values():
    with pytest.raises(ValueError, match="world_size"):
        assign_units([1.0], 0)
    with pytest.raises(ValueError, match="finite"):
        assign_units([1.0, float("nan")], 2)
    assert distributed.from_env({"RANK": "0"}) is None  # not torchrun
    assert distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Ranks(1, 2, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.from_env({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="RANK=2"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert distributed.rank_device("cuda", Ranks(3, 4, 1)) == "cuda:1"
    assert distributed.rank_device("cpu", Ranks(3, 4, 1)) == "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    repo = str(Path(featurestore.__file__).resolve().parents[1])  # this checkout, whatever is installed
    env.update(OMP_NUM_THREADS="1", SINGFRONT_DIST_TIMEOUT_S="120",
               PYTHONPATH=os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "featurestore.build", *args]
    res = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _units_and_shares(store, mode: str):
    """(backbone group, unit table [U, 4], each of 2 ranks' units), computed here independently of the
    build from the store's layout and the clips' audio seconds."""
    g = zarr.open_group(str(store), mode=mode)[layout.backbone_path(BACKBONE)]
    offsets = g["offsets"][:]
    units = layout.unit_table(offsets, int(g.attrs["clips_per_unit"]), int(g.attrs["align"]),
                              g.attrs.get("piece_frames"))
    clips = zarr.open_group(str(store), mode="r")[layout.CLIPS]
    a, b = clip_samples(clips["start_s"][:], clips["end_s"][:], SR)
    seconds = [_audio_seconds(units[u:u + 1], offsets, b - a, SR) for u in range(len(units))]
    return g, units, assign_units(seconds, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    manifest = make_demo_corpus(tmp / "corpus", n_singers=2, clips_per_singer=3, duration_s=2)
    ref = tmp / "ref.zarr"
    assert main(["--input", str(manifest), "--store", str(ref), *OPTS]) == 0
    return tmp, manifest, ref


def test_two_torchrun_ranks_build_the_single_process_store(corpus):
    tmp, manifest, ref = corpus
    store = tmp / "two.zarr"
    res = torchrun(2, "--input", str(manifest), "--store", str(store), *OPTS)
    assert_same_store(ref, store)
    # each rank extracted part of the audio, and together all of it
    done = dict(re.findall(r"\(rank (\d)/2\).*?([\d.]+) audio-s", res.stdout))
    clips = zarr.open_group(str(store), mode="r")[layout.CLIPS]
    total = float((clips["end_s"][:] - clips["start_s"][:]).sum())
    assert sorted(done) == ["0", "1"] and all(float(v) > 0 for v in done.values())
    assert sum(float(v) for v in done.values()) == pytest.approx(total, abs=0.1)
    assert zarr.open_group(str(store), mode="r")[layout.backbone_path(BACKBONE)]["unit_done"][:].size > 2


def test_a_rank_that_never_finished_is_redone_by_rerunning(corpus, capsys):
    tmp, manifest, ref = corpus
    store = tmp / "crashed.zarr"
    args = ["--input", str(manifest), "--store", str(store), *OPTS]
    assert main([*args, "--plan-only"]) == 0
    assert main([*args, "--rank", "0/2"]) == 0  # rank 0's share alone: rank 1 "died" before doing any
    g, units, shares = _units_and_shares(store, "r")
    share0 = shares[0]
    np.testing.assert_array_equal(np.flatnonzero(g["unit_done"][:]), share0)
    assert 0 < len(share0) < len(units) and not g.attrs.get("complete", False)
    res = torchrun(2, *args)  # the whole job again: rank 0 skips its finished units, rank 1 does its share
    assert "complete" in res.stdout
    assert_same_store(ref, store)
    capsys.readouterr()
    assert verify_main([str(store)]) == 0, capsys.readouterr().out


def test_rank_option_needs_a_planned_store_and_no_torchrun_mix(corpus, capsys, monkeypatch):
    tmp, manifest, _ = corpus
    store = tmp / "unplanned.zarr"
    assert main(["--input", str(manifest), "--store", str(store), *OPTS, "--rank", "1/2"]) == 2
    assert "--plan-only" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["--input", str(manifest), "--store", str(store), *OPTS, "--shard", "0/2"]) == 2
    assert "under torchrun" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", str(manifest), "--store", str(store), *OPTS, "--rank", "2/2"])


def test_a_rank_killed_mid_way_is_finished_by_rerunning(corpus, capsys):
    """The state a rank killed in the middle of its share leaves: some of its units marked done, the
    next one's frames half written (garbage, no marker), the rest untouched. Rerunning the torchrun
    job redoes exactly the unmarked units and gives the reference store, which verify passes."""
    tmp, manifest, ref = corpus
    store = tmp / "killed.zarr"
    args = ["--input", str(manifest), "--store", str(store), *OPTS]
    assert main([*args, "--plan-only"]) == 0
    assert main([*args, "--rank", "0/2"]) == 0
    assert main([*args, "--rank", "1/2"]) == 0
    g, units, shares = _units_and_shares(store, "a")
    share1 = shares[1]
    assert len(share1) >= 3
    killed = share1[len(share1) // 2:]                       # rank 1 died after its first half
    g["unit_done"][killed] = 0
    start, stop = (int(v) for v in units[killed[0]][2:4])   # frames of the unit being written when it died
    g["frames"][start:stop] = np.float16(7.0)                # half-written garbage, no marker
    g.attrs["complete"] = False
    res = torchrun(2, *args)
    assert "complete" in res.stdout
    assert_same_store(ref, store)
    capsys.readouterr()
    assert verify_main([str(store)]) == 0, capsys.readouterr().out

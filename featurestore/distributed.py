"""Extraction across several processes started by ``torchrun``: which process does which units.

``torchrun --nproc-per-node N [--nnodes M ...] -m featurestore.build ...`` starts N*M copies of the
build. Each learns its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Rank 0 plans the store (clip table, backbone layout) while the others wait; then
every rank extracts its own share of the units (:func:`assign_units`: balanced by audio seconds,
the same in every rank and on every run, so a rerun resumes each rank's units); a unit owns whole
chunks (:mod:`featurestore.layout`), so the ranks write without locks. Once all have finished,
rank 0 marks the backbone complete.

The process group only carries these handshakes (who failed, when planning and extraction are
over), never features: backend ``nccl`` when the build runs on CUDA, ``gloo`` otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

#: How long a rank waits for the others at a handshake. Rank 0 plans the whole clip table while
#: the others wait (decoding every input file: hours for a large corpus), hence a long default;
#: override with the environment variable SINGFRONT_DIST_TIMEOUT_S (seconds).
DEFAULT_TIMEOUT_S = 24 * 3600.0

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def assign_units(seconds, world_size: int) -> list[np.ndarray]:
    """Units of work -> the ranks that extract them, balanced by audio duration.

    seconds: float [U], audio seconds each unit extracts. Greedy longest-first: units in order of
    decreasing seconds (ties: lower unit first) each go to the rank with the least seconds so far
    (ties: lower rank). Deterministic: every rank, and every rerun, computes the same assignment.
    Returns ``world_size`` sorted int64 arrays of unit indices; together they hold every unit once.
    """
    seconds = np.asarray(seconds, dtype=np.float64).reshape(-1)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not np.isfinite(seconds).all() or (seconds < 0).any():
        raise ValueError("unit seconds must be finite and >= 0")
    load = np.zeros(world_size)
    owner = np.empty(len(seconds), dtype=np.int64)
    for u in np.lexsort((np.arange(len(seconds)), -seconds)):
        r = int(np.argmin(load))  # argmin returns the lowest rank among ties
        owner[u] = r
        load[r] += seconds[u]
    return [np.flatnonzero(owner == r) for r in range(world_size)]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process build: ``rank`` of ``world_size``, ``local_rank`` on
    its node (its GPU index). ``group``: whether a torch.distributed process group connects the
    ranks (False for one rank's share run alone, see ``--rank`` of :mod:`featurestore.build`)."""

    rank: int
    world_size: int
    local_rank: int = 0
    group: bool = False

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier_then(self, fn, what: str):
        """Rank 0 runs ``fn()`` while the other ranks wait; then every rank goes on (without a group:
        every process runs ``fn``). An exception in rank 0 is raised in every rank as a
        RuntimeError naming ``what``, instead of leaving the others waiting."""
        if not self.group:
            return fn()
        import torch.distributed as dist

        result, error = None, None
        if self.leader:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - told to the other ranks, then raised
                error = e
        msg = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(msg, src=0)
        if error is not None:
            raise error
        if msg[0] is not None:
            raise RuntimeError(f"rank 0 failed while {what}: {msg[0]}")
        return result

    def wait_all(self) -> None:
        """Wait until every rank gets here (no-op without a group)."""
        if self.group:
            import torch.distributed as dist

            dist.barrier()


def from_env(env=None) -> Ranks | None:
    """The torchrun rank of this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` all set), or None
    when not started by torchrun. A value that is not an integer, or a rank outside the world,
    raises ValueError naming the variable."""
    env = os.environ if env is None else env
    if not all(k in env for k in ENV_KEYS):
        return None
    vals = {}
    for k in ENV_KEYS:
        try:
            vals[k] = int(env[k])
        except ValueError:
            raise ValueError(f"environment variable {k}={env[k]!r} is not an integer (set by torchrun)") from None
    if not 0 <= vals["RANK"] < vals["WORLD_SIZE"] or vals["LOCAL_RANK"] < 0:
        raise ValueError(f"torchrun environment out of range: RANK={vals['RANK']}, "
                         f"WORLD_SIZE={vals['WORLD_SIZE']}, LOCAL_RANK={vals['LOCAL_RANK']}")
    return Ranks(vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"])


def rank_device(device: str | None, ranks: Ranks) -> str:
    """The device a rank extracts on: ``cuda`` (or None with CUDA available) becomes
    ``cuda:{LOCAL_RANK}``, one GPU per rank on each node; ``cpu`` and an explicit ``cuda:K`` stay."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return f"cuda:{ranks.local_rank}" if device == "cuda" else device


def init(ranks: Ranks, device: str) -> Ranks:
    """Join torchrun's process group (``nccl`` on CUDA devices, else ``gloo``); returns ``ranks`` with
    ``group=True``. On CUDA the rank's device becomes the current one (nccl handshakes use it)."""
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    raw = os.environ.get("SINGFRONT_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    try:
        timeout = float(raw)
        if not timeout > 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"environment variable SINGFRONT_DIST_TIMEOUT_S={raw!r} is not a number of seconds > 0") from None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return Ranks(ranks.rank, ranks.world_size, ranks.local_rank, group=True)


def close(ranks: Ranks | None) -> None:
    """Leave the process group (if this process joined one)."""
    if ranks is not None and ranks.group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

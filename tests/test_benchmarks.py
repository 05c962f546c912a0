"""Smoke test of ``python -m benchmarks.extraction`` (runs, writes complete JSON; no timing assertions)."""
from __future__ import annotations

import json
import math

from benchmarks import extraction


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_extraction_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = extraction.main(["--n-singers", "2", "--clips-per-singer", "3", "--corpus-seconds", "2",
                          "--read-batches", "5", "--batch-size", "4", "--window", "50", "--scan-seconds", "0.1",
                          "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bare forward passes" in printed and "store/mm" in printed

    r = json.loads(out.read_text())
    assert r["machine"]["nproc"] >= 1
    assert r["corpus"]["clips"] == 6 and math.isclose(r["corpus"]["audio_seconds"], 12.0)
    for key in ("forward", "build", "naive"):
        for field in ("seconds", "ratio_vs_forward", "audio_s_per_s"):
            assert _positive(r[key][field]), (key, field, r[key][field])
    assert r["naive"]["npy_files"] == 6 * r["corpus"]["layers"]
    assert math.isclose(r["naive"]["audio_seconds"], r["corpus"]["audio_seconds"])
    assert r["forward"]["check_max_rel_diff"] < 1e-2  # the forward pass reproduces the stored frames
    assert r["read"]["cache"] == "warm"
    for kind in ("random", "scan"):
        for src in ("zarr", "store", "memmap"):
            assert _positive(r["read"][kind][src]["mb_per_s"]), (kind, src)
        assert _positive(r["read"][kind]["ratio_zarr_over_memmap"])
        assert _positive(r["read"][kind]["ratio_store_over_memmap"])
    rnd = r["read"]["random"]
    assert rnd["zarr"]["bytes"] == rnd["store"]["bytes"] == rnd["memmap"]["bytes"] > 0

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


def test_heads_fit_benchmark_reports_consistent_numbers(tmp_path, capsys, monkeypatch):
    """``benchmarks.heads_fit`` on a small corpus store: the ratio, frames per second and scores it prints
    are the quantities they claim to be (recomputed here from the JSON's own parts)."""
    from benchmarks import heads_fit
    from featurestore import open_store

    monkeypatch.setenv("SINGFRONT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(heads_fit, "SONG_S", 4.0)
    monkeypatch.setattr(heads_fit, "SINGERS", 2)
    out = tmp_path / "bench.json"
    # 0.4 minutes of 4 s songs, 2 singers -> 3 songs each: one train, one valid, one test per singer
    assert heads_fit.main(["--corpus-minutes", "0.4", "--epochs", "2", "--skip-clip-heads",
                           "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    store = open_store(r["store"])
    assert store.clip_settings.get("segment_s") is None                     # whole songs
    rows = {row["head"]: row for row in r["transcription"]}
    assert list(rows) == ["frames", "crf", "crf+ctx150ms"]
    info = r["transcription_data"]
    assert info["scored_split"] == "test" and info["selection_split"] == "valid"
    assert info["train_songs"] == 2 and info["test_songs"] == 2
    assert info["train_frames"] == int(store.n_frames("crepe-tiny")[store.split_indices("train")].sum())
    for row in rows.values():
        assert row["epochs"] == 2 and 0 <= row["best_epoch"] < 2
        assert math.isclose(row["vs_frames"], row["fit_s"] / rows["frames"]["fit_s"])
        assert math.isclose(row["train_fps"], info["train_frames"] * row["epochs"] / row["fit_s"])
        assert 0.0 <= row["val_share"] < 1.0
        assert all(0.0 <= row[k] <= 1.0 for k in ("COnPOff", "COnP", "COn"))
        assert row["COnPOff"] <= row["COnP"] + 1e-12
    assert f"{rows['crf']['vs_frames']:.2f}x" in printed


def test_speed_table_has_every_row_with_ratios_of_its_own_seconds(tmp_path, capsys):
    """``benchmarks.speed`` on 12 s of audio (log-mel, no warm-up): every row of the table is printed and
    written, each speed is the row's baseline seconds over its seconds, and those seconds are the
    measurements the JSON reports elsewhere (build, forward, naive, reads, training)."""
    from benchmarks import speed

    out, md = tmp_path / "speed.json", tmp_path / "speed.md"
    assert speed.main(["--backbone", "logmel", "--minutes", "0.2", "--file-seconds", "1", "--epochs", "3",
                       "--recompute-epochs", "2", "--read-seconds", "0.05", "--no-warmup", "--quiet",
                       "--workdir", str(tmp_path / "work"), "--json", str(out), "--out", str(md)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert md.read_text().strip() == printed.strip()
    assert printed.startswith("machine: ") and f"{r['machine']['nproc']} CPU cores" in printed
    assert "device cpu" in printed
    assert math.isclose(r["corpus"]["audio_seconds"], 12.0) and r["corpus"]["clips"] == 12

    rows = r["rows"]
    assert len(rows) == 8
    names = [row["name"] for row in rows]
    for want in ("featurestore build", "window-batch reads, shuffled", "window-batch reads, in order",
                 "random windows into a batch buffer", "full sequential scan", "build included", "already built"):
        assert any(want in n for n in names), want
    for row in rows:
        assert _positive(row["seconds"]) and _positive(row["baseline_seconds"]) and _positive(row["speed"])
        assert math.isclose(row["speed"], row["baseline_seconds"] / row["seconds"], rel_tol=1e-9)
        line = next(l for l in printed.splitlines() if l.startswith(f"| {row['name']} | {row['baseline']} |"))
        assert f"| {row['seconds']:.3f} | {row['baseline_seconds']:.3f} | {row['speed']:.2f}x |" in line
    assert "| peak memory |" in printed and "VmHWM" in printed

    build_fwd, build_naive, rd_rand, rd_scan, _, _, tr_all, tr_store = rows
    assert build_fwd["seconds"] == build_naive["seconds"] == r["build"]["seconds"]
    assert build_fwd["baseline_seconds"] == r["forward"]["seconds"]
    assert build_naive["baseline_seconds"] == r["naive"]["seconds"]
    loader = r["reads"]["loader"]
    assert rd_rand["seconds"] == min(loader["random"]["store"]["epochs"])
    assert rd_scan["baseline_seconds"] == min(loader["scan"]["memmap"]["epochs"])
    assert r["reads"]["identical_items"]
    # training: 3 epochs from the store, 2 recomputed and extrapolated to 3 (said so in the table)
    t = r["training"]
    assert len(t["store"]["epoch_seconds"]) == 3 and len(t["recompute"]["epoch_seconds"]) == 2
    assert math.isclose(tr_store["baseline_seconds"], t["recompute"]["seconds"] * 3 / 2)
    assert math.isclose(tr_all["seconds"], r["build"]["seconds"] + t["store"]["seconds"])
    assert tr_store["seconds"] == t["store"]["seconds"] and t["recompute_extrapolated"]
    assert "measured 2 of 3 epochs" in printed and "extrapolated" in printed
    # the same head on the same clips in the same order: equal losses up to float16 storage
    assert t["max_loss_diff_same_epochs"] < 1e-2
    for stage in ("build", "forward", "naive", "reads_random", "reads_scan", "train_store", "train_recompute"):
        assert _positive(r["memory"][stage]["self_peak_mib"]), stage


def test_finetune_speed_table_rows_and_ratios():
    """benchmarks.finetune_speed: every configuration ran in its own process; the ratios are the
    reported speeds divided by the fp32 baseline's, and checkpointing leaves the model unchanged."""
    import io
    import json as _json
    from contextlib import redirect_stdout

    import pytest

    from benchmarks import finetune_speed as FS

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert FS.main(["--model", "tiny", "--steps", "2", "--batch-size", "2", "--clip-seconds", "0.5", "--json"]) == 0
    r = _json.loads(buf.getvalue()[buf.getvalue().index("{"):])
    assert [(row["precision"], row["checkpointing"]) for row in r["rows"]] == [("fp32", "off"), ("fp32", "on")]
    for row in r["rows"]:
        assert row["samples_per_s"] == pytest.approx(2 * 2 / row["seconds"]) and row["self_mib"] > 0
    table = FS.format_table(r)
    ratio = r["rows"][1]["samples_per_s"] / r["rows"][0]["samples_per_s"]
    assert f"| fp32 | on | {r['rows'][1]['samples_per_s']:.2f} | {ratio:.2f} |" in table


def test_extraction_benchmark_reports_eager_against_sdpa(tmp_path, capsys, save_tiny):
    """A transformers frontend: the attention section times eager and SDPA in one run over the same
    batches, its ratio is the ratio of its own seconds, and the two kernels give the same frames."""
    folder = save_tiny("hubert", feat_extract_norm="layer")
    out = tmp_path / "bench.json"
    assert extraction.main(["--backbone", str(folder), "--n-singers", "2", "--clips-per-singer", "3",
                            "--corpus-seconds", "1", "--read-batches", "2", "--batch-size", "2", "--window", "20",
                            "--scan-seconds", "0.05", "--repeats", "2", "--workdir", str(tmp_path / "work"),
                            "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    at = json.loads(out.read_text())["attention"]
    assert len(at["runs"]["eager"]) == len(at["runs"]["sdpa"]) == 2
    assert at["eager_seconds"] == min(at["runs"]["eager"]) and at["sdpa_seconds"] == min(at["runs"]["sdpa"])
    assert math.isclose(at["speedup_sdpa_over_eager"], at["eager_seconds"] / at["sdpa_seconds"])
    assert at["max_rel_diff"] < 1e-4
    assert "sdpa (scaled-dot-product attention)" in printed

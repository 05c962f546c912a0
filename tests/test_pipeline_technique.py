"""pipelines.technique: the VocalSet adapter (layout, technique spellings, singer split, bad input) and
the whole prepare -> build -> fit -> evaluate path on the demo corpus."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines import technique as T
from pipelines.command import main
from pipelines.task_pipeline import TaskPipeline

SR = 16000


def _sine(path: Path, freq: float = 440.0, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


# singer -> (context, technique folder) pairs written for it
LAYOUT = {
    "female1": [("arpeggios", "belt"), ("arpeggios", "vibrado"), ("long_tones", "lip trill"),
                ("scales", "fast_forte")],
    "female2": [("arpeggios", "belt"), ("excerpts", "spoken"), ("long_tones", "vocal_fry")],
    "female3": [("arpeggios", "breathy"), ("scales", "inhaled"), ("long_tones", "trillo")],
    "female4": [("arpeggios", "straight"), ("scales", "trill")],
    "male1": [("arpeggios", "belt"), ("long_tones", "Vocal Fry"), ("arpeggios", "vibrato")],
    "male2": [("arpeggios", "straight"), ("scales", "lip_trill")],
    "male3": [("arpeggios", "breathy"), ("excerpts", "spoken")],
}


@pytest.fixture
def vocalset(tmp_path) -> Path:
    """A small folder in the VocalSet layout, with a few things wrong in it."""
    root = tmp_path / "VocalSet"
    full = root / "FULL"
    for singer, items in LAYOUT.items():
        for i, (context, folder) in enumerate(items):
            _sine(full / singer / context / folder / f"{singer[0]}{singer[-1]}_{context}_{i}.wav", 220 + 30 * i)
    (full / "female3" / "arpeggios" / "straight").mkdir(parents=True)
    (full / "female3" / "arpeggios" / "straight" / "empty.wav").write_bytes(b"")          # empty file
    _sine(full / "female1" / "arpeggios" / "stray.wav")                                   # wrong depth
    (full / "female1" / "notes.txt").write_text("not audio")                              # not audio
    (full / ".DS_Store").write_bytes(b"\0")                                               # hidden: ignored
    (root / "README.txt").write_text("beside FULL: not walked")
    return root


def _args(**kw):
    return T.TechniqueOptions(**kw)


def test_singer_file(tmp_path):
    f = tmp_path / T.TEST_SINGERS_FILE
    f.write_text("{\\rtf1\\ansi female2\\\nfemale8\\\nmale3\\\nMale5\\\nmale10}")
    assert T.read_singer_file(f) == ["female2", "female8", "male3", "male5", "male10"]


def test_technique_mapping():
    assert T.map_technique("vibrado") == "vibrato"
    assert T.map_technique("lip trill") == "lip_trill"
    assert T.map_technique("Lip_Trill") == "lip_trill"
    assert T.map_technique("vocal fry") == "vocal_fry"
    assert T.map_technique("fry") == "vocal_fry"
    assert T.map_technique("straight") == "straight"
    assert T.map_technique("fast_forte") is None
    assert set(T.TECHNIQUE_ALIASES.values()) == set(T.TECHNIQUES) and len(T.TECHNIQUES) == 10
    assert T.parse_singers("f2, F8,male3 m11") == ["female2", "female8", "male3", "male11"]
    assert T.parse_singers(None) is None


def test_adapter_rows_mapping_and_split(vocalset):
    res = T.prepare_vocalset(vocalset, _args(test_singers="f2,m1"))
    n_used = sum(1 for items in LAYOUT.values() for _, f in items if T.map_technique(f))
    assert len(res.rows) == n_used
    for r in res.rows:
        assert set(r) == {"path", "id", "split", "technique", "singer", "context"}
        assert Path(r["path"]).is_file() and r["technique"] in T.TECHNIQUES
        assert r["id"].startswith(r["singer"] + "/" + r["context"] + "/")
    by_id = {r["id"]: r for r in res.rows}
    assert by_id["female1/arpeggios/vibrado/f1_arpeggios_1"]["technique"] == "vibrato"
    assert by_id["female1/long_tones/lip trill/f1_long_tones_2"]["technique"] == "lip_trill"
    assert by_id["male1/long_tones/Vocal Fry/m1_long_tones_1"]["technique"] == "vocal_fry"
    assert not any("fast_forte" in r["id"] for r in res.rows)

    splits = {}
    for r in res.rows:
        splits.setdefault(r["singer"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()), "a singer is in two splits"
    split_of = {k: next(iter(v)) for k, v in splits.items()}
    assert {s for s, v in split_of.items() if v == "test"} == {"female2", "male1"}
    # default validation: the last female and the last male training singer
    assert {s for s, v in split_of.items() if v == "valid"} == {"female4", "male3"}
    assert {s for s, v in split_of.items() if v == "train"} == {"female1", "female3", "male2"}

    reasons = {s["reason"]: s for s in res.skipped}
    assert reasons["bad_layout"]["where"] == "female1/arpeggios/stray.wav"
    assert reasons["empty"]["where"] == "female3/arpeggios/straight/empty.wav"
    assert reasons["not_audio"]["where"] == "female1/notes.txt"
    assert "fast_forte" in reasons["other_technique"]["message"]
    assert not any(".DS_Store" in s["where"] or "README" in s["where"] for s in res.skipped)


def test_adapter_default_and_configured_singers(vocalset):
    # FULL itself as --raw, the default test singers (female2, female8, male3, male5, male10)
    res = T.prepare_vocalset(vocalset / "FULL", _args())
    test = {r["singer"] for r in res.rows if r["split"] == "test"}
    assert test == {"female2", "male3"}
    missing = {s["message"].split("'")[1] for s in res.skipped if s["reason"] == "singer_not_found"}
    assert missing == {"female8", "male5", "male10"}
    # the archive's own split file beside FULL wins over the default; --test-singers over both
    (vocalset / T.TEST_SINGERS_FILE).write_text("female3\nmale2\n")
    for raw in (vocalset, vocalset / "FULL"):
        res = T.prepare_vocalset(raw, _args())
        assert {r["singer"] for r in res.rows if r["split"] == "test"} == {"female3", "male2"}
    res = T.prepare_vocalset(vocalset, _args(test_singers="m1"))
    assert {r["singer"] for r in res.rows if r["split"] == "test"} == {"male1"}
    # explicit validation singers
    res = T.prepare_vocalset(vocalset, _args(test_singers="female1", valid_singers="m2"))
    split_of = {r["singer"]: r["split"] for r in res.rows}
    assert [s for s, v in split_of.items() if v == "test"] == ["female1"]
    assert [s for s, v in split_of.items() if v == "valid"] == ["male2"]
    with pytest.raises(ValueError, match="one split"):
        T.prepare_vocalset(vocalset, _args(test_singers="f1", valid_singers="f1"))


def test_prepare_cli_and_clip_settings(vocalset, tmp_path, capsys):
    work = tmp_path / "work"
    (work).mkdir()
    (work / T.DEMO_FLAG).write_text("stale")  # a real prepare turns the work folder into a real-data one
    assert main(T.SPEC, ["prepare", "--workdir", str(work), "--raw", str(vocalset), "--test-singers", "f2,m1"]) == 0
    assert not (work / T.DEMO_FLAG).exists()
    with open(work / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"technique", "singer", "context"} <= set(rows[0])
    report = json.loads((work / "prepare_report.json").read_text())
    assert report["items"] == len(rows)
    assert {"bad_layout", "empty", "other_technique"} <= {s["reason"] for s in report["skipped"]}

    pipe = TaskPipeline(T.SPEC, work)
    cs = pipe.clip_settings(T.TechniqueOptions())
    assert (cs.segment_s, cs.min_segment_s, cs.trim_db) == (3.0, 1.0, -40.0)
    cs = pipe.clip_settings(T.TechniqueOptions(trim_db=-35.0))
    assert cs.trim_db == -35.0
    (work / T.DEMO_FLAG).write_text("demo")  # a demo work folder gets the demo's settings
    cs = pipe.clip_settings(T.TechniqueOptions())
    assert (cs.segment_s, cs.trim_db) == (1.0, -50.0)


def test_prepare_nothing_usable(tmp_path):
    (tmp_path / "FULL" / "female1" / "arpeggios" / "fast_forte").mkdir(parents=True)
    _sine(tmp_path / "FULL" / "female1" / "arpeggios" / "fast_forte" / "a.wav")
    assert main(T.SPEC, ["prepare", "--workdir", str(tmp_path / "w"), "--raw", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------
# end to end on the demo corpus
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("singfront_home")
    work = tmp_path_factory.mktemp("technique_work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SINGFRONT_HOME", str(home))
        assert main(T.SPEC, ["prepare", "--workdir", str(work), "--demo"]) == 0
        assert main(T.SPEC, ["build", "--workdir", str(work), "--backbone", "crepe", "--no-progress"]) == 0
        assert main(T.SPEC, ["fit", "--workdir", str(work), "--backbone", "crepe", "--epochs", "10", "--lr", "1e-2",
                             "--no-progress"]) == 0
        assert main(T.SPEC, ["evaluate", "--workdir", str(work), "--backbone", "crepe"]) == 0
    return work


def test_demo_prepare(demo_run):
    assert (demo_run / T.DEMO_FLAG).is_file()
    with open(demo_run / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["technique"] for r in rows} == {"straight", "vibrato", "breathy"}
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    assert all(Path(r["path"]).is_file() for r in rows)


def test_demo_store_settings(demo_run):
    from featurestore import open_store

    store = open_store(demo_run / "store.zarr")
    cs = store.clip_settings
    assert (cs["segment_s"], cs["trim_db"], cs["min_segment_s"]) == (1.0, -50.0, 1.0)
    assert "crepe-tiny" in store.backbones
    assert set(store.labels("technique")) == {"straight", "vibrato", "breathy"}


def test_demo_evaluation(demo_run):
    run = demo_run / "runs" / "crepe-tiny-linear"
    ev = json.loads((run / "evaluation.json").read_text())
    for k in T.SPEC.summary_keys:
        assert 0.0 <= ev[k] <= 1.0, k
    assert ev["split"] == "test" and ev["n"] > 0 and ev["task"] == "technique"
    assert ev["top3"] >= ev["top2"] >= ev["accuracy"]
    assert np.array(ev["confusion"]).sum() == ev["n"]
    assert (run / "confusion_technique.png").stat().st_size > 1000
    # the paper's class weights were used for the fit
    assert json.loads((run / "metrics.json").read_text())["params"]["class_weight"] == "paper"
    table = (demo_run / "results.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith("| crepe-tiny-linear |"))
    assert len(line.strip("|").split("|")) == 3 + len(T.SPEC.summary_keys)   # run, scored on, chosen on
    assert "| test | valid |" in line and ev["protocol"]["selection_split"] == "valid"
    assert f"{100 * ev['accuracy']:.1f}" in line


def test_a_finished_fit_is_not_redone(demo_run, capsys):
    run = demo_run / "runs" / "crepe-tiny-linear"
    fit = ["fit", "--workdir", str(demo_run), "--backbone", "crepe", "--epochs", "10", "--lr", "1e-2", "--no-progress"]
    before = (run / "head.json").stat().st_mtime_ns
    assert main(T.SPEC, fit) == 0
    assert "already fitted" in capsys.readouterr().out
    assert (run / "head.json").stat().st_mtime_ns == before
    assert main(T.SPEC, fit + ["--refit"]) == 0  # asked for: trained again
    assert (run / "head.json").stat().st_mtime_ns != before
    assert main(T.SPEC, fit[:-1] + ["--epochs", "11"]) == 0  # other settings: trained again too
    assert "already fitted" not in capsys.readouterr().out


def test_evaluate_without_a_store_is_a_clear_error(demo_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "runs" / "crepe-tiny-linear"
    run.mkdir(parents=True)
    for name in ("head.json", "head.safetensors"):
        shutil.copy(demo_run / "runs" / "crepe-tiny-linear" / name, run / name)
    assert main(T.SPEC, ["evaluate", "--workdir", str(tmp_path), "--backbone", "crepe"]) == 2
    assert "not a feature store" in capsys.readouterr().err


def test_titles_come_from_the_store_not_the_dataset_description(demo_run):
    """results.md names the demo corpus, the store's class count and segment length, not 'VocalSet, 10 techniques'."""
    from featurestore import open_store

    store = open_store(demo_run / "store.zarr")
    classes = {v for v in store.labels("technique").astype(str) if v}
    title = (demo_run / "results.md").read_text().splitlines()[0]
    assert "demo corpus" in title and f"{len(classes)} classes" in title
    assert f"{store.clip_settings['segment_s']:g} s segments" in title
    assert "VocalSet" not in title and "10 techniques" not in title

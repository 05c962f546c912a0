"""pipelines.singer: the Artist20 adapter, song-level aggregation, the course's CSV, and the demo end to end."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import featurestore.build as fbuild
from featurestore.demo import make_demo_corpus
from pipelines import singer
from pipelines.command import main
from pipelines.singer import SPEC

SR = 16000

# ----------------------------------------------------------------------------------------------
# adapter
# ----------------------------------------------------------------------------------------------
ALBUMS = {
    "aerosmith": ["Aerosmith", "Draw_the_Line", "Get_Your_Wings", "Pump", "Rocks", "Done_With_Mirrors"],
    "beatles": ["Abbey_Road", "Help", "Revolver"],
    "cure": ["Disintegration", "Wish"],
    "madonna": ["Like_a_Prayer"],
}


def _sine(path: Path, seconds=0.2, f=220.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    fmt = {".mp3": "MP3", ".wav": "WAV", ".flac": "FLAC"}[path.suffix]
    sf.write(str(path), x, SR, format=fmt)
    return path


@pytest.fixture(scope="module")
def artist20(tmp_path_factory) -> Path:
    """A small Artist20-like tree (two songs per album, mp3 and wav) plus bad entries."""
    raw = tmp_path_factory.mktemp("a20")
    root = raw / "mp3s-32k"
    for artist, albums in ALBUMS.items():
        for k, album in enumerate(albums):
            _sine(root / artist / album / "01-First_Song.mp3", f=200 + 10 * k)
            _sine(root / artist / album / "02-Second_Song.wav", f=300 + 10 * k)
    _sine(root / "aerosmith" / "stray.mp3")                                  # wrong depth (no album)
    _sine(root / "beatles" / "Help" / "bonus" / "03-Deep.wav")               # wrong depth (too deep)
    (root / "cure" / "Wish" / "notes.txt").write_text("not audio")           # not audio
    (root / "cure" / "Wish" / "03-Empty.mp3").write_bytes(b"")               # empty
    (root / "madonna" / "Like_a_Prayer" / ".DS_Store").write_bytes(b"\0")    # ignored silently
    return raw


def _prepare(raw, split="course", workdir="/nonexistent-workdir"):
    return singer.prepare_artist20(Path(raw), singer.SingerOptions(split=split))


def test_adapter_rows_and_course_split(artist20):
    res = _prepare(artist20)
    n_good = 2 * sum(len(a) for a in ALBUMS.values())
    assert len(res.rows) == n_good
    r = next(r for r in res.rows if r["id"] == "aerosmith/Rocks/01-First_Song")
    assert r == {"path": str((artist20 / "mp3s-32k/aerosmith/Rocks/01-First_Song.mp3").resolve()),
                 "id": "aerosmith/Rocks/01-First_Song", "split": "valid", "singer": "aerosmith",
                 "album": "Rocks", "song": "aerosmith/Rocks/01-First_Song"}
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in res.rows)
    assert len({r["id"] for r in res.rows}) == n_good
    # the course rule: within each artist the album that comes last alphabetically is valid
    for artist, albums in ALBUMS.items():
        split_of = {r["album"]: r["split"] for r in res.rows if r["singer"] == artist}
        if len(albums) == 1:
            assert set(split_of.values()) == {"train"}       # a lone album stays in training
        else:
            assert split_of[max(albums)] == "valid"
            assert all(s == "train" for a, s in split_of.items() if a != max(albums))
    assert {r["split"] for r in res.rows} == {"train", "valid"}


def test_adapter_paper_split(artist20):
    res = _prepare(artist20, "paper")
    split_of = {(r["singer"], r["album"]): r["split"] for r in res.rows}
    assert [split_of[("aerosmith", a)] for a in sorted(ALBUMS["aerosmith"])] == \
        ["train"] * 4 + ["valid", "test"]                                     # 4/1/1
    assert [split_of[("beatles", a)] for a in ["Abbey_Road", "Help", "Revolver"]] == ["train", "valid", "test"]
    assert [split_of[("cure", a)] for a in ["Disintegration", "Wish"]] == ["train", "test"]
    assert split_of[("madonna", "Like_a_Prayer")] == "train"


@pytest.mark.parametrize("mode", ["course", "paper"])
def test_no_album_in_two_splits(artist20, mode):
    res = _prepare(artist20, mode)
    splits: dict = {}
    for r in res.rows:
        splits.setdefault((r["singer"], r["album"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert len(splits) == sum(len(a) for a in ALBUMS.values())


def test_adapter_reports_bad_entries(artist20):
    res = _prepare(artist20)
    reasons = {s["where"]: s["reason"] for s in res.skipped}
    assert reasons == {"aerosmith/stray.mp3": "bad_layout", "beatles/Help/bonus/03-Deep.wav": "bad_layout",
                       "cure/Wish/notes.txt": "not_audio", "cure/Wish/03-Empty.mp3": "empty"}
    assert all(s["message"] for s in res.skipped)
    assert not any("DS_Store" in r["path"] for r in res.rows)


def test_adapter_accepts_both_roots(artist20):
    a, b = _prepare(artist20), _prepare(artist20 / "mp3s-32k")
    assert a.rows == b.rows and a.skipped == b.skipped


def test_prepare_through_runner(artist20, tmp_path, capsys):
    w = tmp_path / "w"
    assert main(SPEC, ["prepare", "--raw", str(artist20), "--workdir", str(w), "--split", "paper"]) == 0
    with open(w / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"path", "id", "split", "singer", "album", "song"} <= set(rows[0])
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    report = json.loads((w / "prepare_report.json").read_text())
    assert report["items"] == len(rows) and len(report["skipped"]) == 4
    out = capsys.readouterr().out
    assert "cure" in out and "madonna" in out                 # artists with few albums are reported
    assert not (w / singer.DEMO_FLAG).exists()


def test_album_splits_rule():
    assert singer.album_splits(["B", "A", "C"], "course")[0] == {"A": "train", "B": "train", "C": "valid"}
    assert singer.album_splits(["B", "A", "C", "D"], "paper")[0] == \
        {"A": "train", "B": "train", "C": "valid", "D": "test"}
    with pytest.raises(ValueError):
        singer.album_splits(["A"], "random")


def test_clip_settings(tmp_path):
    """The build command's options reach the clip settings (parsed as the command line parses them)."""
    from pipelines.command import options_from_args, parse_args
    from pipelines.task_pipeline import TaskPipeline

    pipe = TaskPipeline(SPEC, tmp_path)

    def cs_of(*extra):
        return pipe.clip_settings(options_from_args(SPEC, parse_args(SPEC, ["build", "--workdir", str(tmp_path),
                                                                            *extra])))

    cs = cs_of()
    assert (cs.segment_s, cs.separate, cs.drop_quiet_db) == (5.0, "htdemucs", -35.0)
    cs = cs_of("--no-separate", "--drop-quiet-db", "-50", "--demucs-repo", "/w")
    assert (cs.separate, cs.drop_quiet_db, cs.demucs_repo) == (None, -50.0, None)
    cs = cs_of("--demucs-repo", "/w")
    assert cs.demucs_repo == "/w"
    (tmp_path / singer.DEMO_FLAG).write_text("demo")
    cs = cs_of()
    assert (cs.segment_s, cs.separate) == (1.0, None)


# ----------------------------------------------------------------------------------------------
# song-level aggregation and the CSV
# ----------------------------------------------------------------------------------------------
def test_aggregate_mean_by_hand():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [4.0, -1.0, 0.5]])
    ids, s = singer.aggregate(logits, ["s1", "s2", "s1", "s1"], "mean")
    assert ids == ["s1", "s2"]
    np.testing.assert_allclose(s, [[7 / 3, 0.0, 0.5], [0.0, 3.0, 0.0]])


def test_aggregate_vote_by_hand():
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0],    # song a: votes 1, 2, 0
                       [1.0, 0.0, 0.0], [0.0, 5.0, 0.0],                      # song b: tie 1-1
                       [0.0, 0.0, 2.0]])                                      # song c: one vote
    groups = ["a", "a", "a", "b", "b", "c"]
    ids, v = singer.aggregate(logits, groups, "vote")
    assert ids == ["a", "b", "c"]
    np.testing.assert_array_equal(np.floor(v), [[1, 2, 0], [1, 1, 0], [0, 0, 1]])   # the vote counts
    assert list(v.argmax(1)) == [1, 1, 2]  # majority; the tie in b goes to the higher mean probability
    # mean logits disagrees with the vote on song a (one very confident segment)
    _, m = singer.aggregate(logits, groups, "mean")
    np.testing.assert_allclose(m[0], [10 / 3, 2 / 3, 0.0])
    assert m[0].argmax() == 0
    with pytest.raises(ValueError):
        singer.aggregate(logits, groups, "median")


def test_csv_writer_exact_format(tmp_path):
    classes = ["alto", "bass", "soprano", "tenor"]
    ids = ["10", "0002", "1", "003"]
    scores = np.array([[0.1, 0.2, 0.3, 0.4],      # 10: tenor soprano bass
                       [4.0, 3.0, 2.0, 1.0],      # 0002: alto bass soprano
                       [0.0, 5.0, -1.0, 2.0],     # 1: bass tenor alto
                       [1.0, 1.0, 1.0, 9.0]])     # 003: tenor alto bass (ties: lower index first)
    path = singer.write_predictions_csv(tmp_path / "p.csv", ids, scores, classes)
    assert path.read_text() == ("ID,No.1,No.2,No.3\n"
                                "1,bass,tenor,alto\n"
                                "2,alto,bass,soprano\n"
                                "3,tenor,alto,bass\n"
                                "10,tenor,soprano,bass\n")
    text = singer.write_predictions_csv(tmp_path / "q.csv", ids, scores, classes, keep_id_text=True).read_text()
    assert [line.split(",")[0] for line in text.splitlines()] == ["ID", "1", "0002", "003", "10"]
    text = singer.write_predictions_csv(tmp_path / "r.csv", ["b", "a10", "a2"], scores[:3], classes).read_text()
    assert [line.split(",")[0] for line in text.splitlines()] == ["ID", "a10", "a2", "b"]
    with pytest.raises(ValueError):
        singer.write_predictions_csv(tmp_path / "s.csv", ["1", "1"], scores[:2], classes)


# ----------------------------------------------------------------------------------------------
# the demo, end to end
# ----------------------------------------------------------------------------------------------
#: A smaller demo corpus (same generator, 4 singers x 5 clips x 3 s: 3 train / 1 valid / 1 test clips
#: per singer) so that building CREPE tiny over it takes seconds on two CPU cores.
SMALL_DEMO = dict(n_singers=4, clips_per_singer=5, duration_s=3.0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("singfront_home")
    w = tmp_path_factory.mktemp("singer_demo") / "work"
    mp = pytest.MonkeyPatch()
    mp.setenv("SINGFRONT_HOME", str(home))
    mp.setattr(fbuild, "ensure_demo_corpus",
               lambda: make_demo_corpus(fbuild.default_demo_dir() / "corpus", **SMALL_DEMO))
    try:
        assert main(SPEC, ["prepare", "--demo", "--workdir", str(w)]) == 0
        assert main(SPEC, ["build", "--workdir", str(w), "--backbone", "crepe", "--no-progress",
                           "--num-workers", "0"]) == 0
        assert main(SPEC, ["fit", "--workdir", str(w), "--epochs", "10", "--lr", "1e-2", "--no-progress"]) == 0
        assert main(SPEC, ["evaluate", "--workdir", str(w)]) == 0
        yield w, home / "demo" / "corpus"
    finally:
        mp.undo()


def test_demo_prepare_rows(demo_run):
    w, corpus = demo_run
    assert (w / singer.DEMO_FLAG).is_file()
    with open(w / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    recs = json.loads((corpus / "manifest.json").read_text())
    assert len(rows) == len(recs) == 20
    by_id = {r["id"]: r for r in rows}
    for rec in recs:
        r = by_id[rec["id"]]
        assert (r["singer"], r["album"], r["song"], r["split"]) == \
            (rec["singer"], rec["technique"], rec["id"], rec["split"])
        assert Path(r["path"]) == (corpus / rec["path"]).resolve()


def test_demo_store_settings(demo_run):
    from featurestore import open_store

    w, _ = demo_run
    cs = open_store(w / "store.zarr").clip_settings
    assert cs["segment_s"] == 1.0 and cs["separate"] is None and cs["drop_quiet_db"] == -35.0


def test_demo_evaluate(demo_run):
    w, _ = demo_run
    rd = w / "runs" / "crepe-tiny-linear"
    ev = json.loads((rd / "evaluation.json").read_text())
    assert ev["split"] == "test" and ev["aggregate"] == "mean"
    assert (ev["protocol"]["scored_split"], ev["protocol"]["selection_split"]) == ("test", "valid")
    for level in ("segment", "song"):
        for k in ("accuracy", "top2", "top3", "macro_f1"):
            assert 0.0 <= ev[level][k] <= 1.0, (level, k)
    assert ev["segment"]["n"] == 4 * 3 and ev["song"]["n"] == 4          # 3 one-second segments per song
    assert np.array(ev["song"]["confusion"]).sum() == 4
    assert (rd / "confusion_song.png").stat().st_size > 0
    table = (w / "results.md").read_text()
    assert "| crepe-tiny-linear |" in table and "song.accuracy" in table


def test_demo_evaluate_vote(demo_run):
    w, _ = demo_run
    assert main(SPEC, ["evaluate", "--workdir", str(w), "--aggregate", "vote"]) == 0
    ev = json.loads((w / "runs" / "crepe-tiny-linear" / "evaluation.json").read_text())
    assert ev["aggregate"] == "vote" and 0.0 <= ev["song"]["accuracy"] <= 1.0


def _names(w):
    from heads.persist import load_head

    return {str(c) for c in load_head(w / "runs" / "crepe-tiny-linear" / "head.json").classes_}


def test_demo_predict_csv(demo_run, tmp_path, capsys):
    w, corpus = demo_run
    recs = [r for r in json.loads((corpus / "manifest.json").read_text()) if r["split"] == "test"][:3]
    inp = tmp_path / "test_set"
    inp.mkdir()
    for name, rec in zip(["1", "2", "10"], recs):
        shutil.copy(corpus / rec["path"], inp / f"{name}.wav")
    out = tmp_path / "student.csv"
    assert main(SPEC, ["predict", "--workdir", str(w), "--input", str(inp), "--out", str(out),
                       "--no-progress", "--num-workers", "0"]) == 0
    assert str(out) in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,No.1,No.2,No.3"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "2", "10"]
    names = _names(w)
    for r in rows:
        assert len(r) == 4 and set(r[1:]) <= names and len(set(r[1:])) == 3


def test_demo_predict_hard_inputs(demo_run, tmp_path, capsys):
    """A near-silent file (no segment above the RMS floor) is predicted from all its segments; an
    undecodable one gets a row ranked by the training prior; a .txt is skipped."""
    w, corpus = demo_run
    rec = json.loads((corpus / "manifest.json").read_text())[0]
    inp = tmp_path / "test_set"
    inp.mkdir()
    x, sr = sf.read(corpus / rec["path"])
    sf.write(inp / "0007.wav", x * 1e-3, sr)                  # about -75 dBFS
    shutil.copy(corpus / rec["path"], inp / "0003.wav")
    (inp / "0005.mp3").write_bytes(b"this is not an mp3" * 50)
    (inp / "readme.txt").write_text("x")
    assert main(SPEC, ["predict", "--workdir", str(w), "--input", str(inp), "--no-progress",
                       "--num-workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "readme.txt" in captured.out and "0005" in captured.err
    lines = (w / "predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["ID", "3", "5", "7"]
    assert all(len(line.split(",")) == 4 for line in lines)


def test_predict_inputs_whose_ids_collide_are_an_error_naming_both(tmp_path):
    inp = tmp_path / "in"
    for name in ("0001.wav", "1.mp3", "2.wav"):
        _sine(inp / name)
    with pytest.raises(ValueError, match=r"ID 1 would be given by 0001\.wav and 1\.mp3"):
        singer.collect_inputs(inp)
    items, _ = singer.collect_inputs(inp, keep_id_text=True)          # 0001 and 1 stay distinct
    assert sorted(i for i, _ in items) == ["0001", "1", "2"]
    _sine(inp / "2.flac")
    with pytest.raises(ValueError, match=r"2\.flac and 2\.wav"):
        singer.collect_inputs(inp, keep_id_text=True)
    with pytest.raises(ValueError, match="duplicate IDs"):
        singer.write_predictions_csv(tmp_path / "p.csv", ["0001", "1"], np.zeros((2, 3)), ["a", "b", "c"])


def test_predict_cli_refuses_colliding_ids(demo_run, tmp_path, capsys):
    w, corpus = demo_run
    rec = json.loads((corpus / "manifest.json").read_text())[0]
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(corpus / rec["path"], inp / "0001.wav")
    shutil.copy(corpus / rec["path"], inp / "1.wav")
    out = tmp_path / "p.csv"
    assert main(SPEC, ["predict", "--workdir", str(w), "--input", str(inp), "--out", str(out), "--no-progress",
                       "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "0001.wav" in err and "1.wav" in err and not out.exists()


def test_demo_layer_sweep_has_its_own_run_folder(demo_run):
    """fit --layers each (one probe per layer) lives beside the all-layer run instead of replacing it,
    and evaluate --layers each finds it."""
    w, _ = demo_run
    main_run = w / "runs" / "crepe-tiny-linear"
    before = (main_run / "head.json").stat().st_mtime_ns
    assert main(SPEC, ["fit", "--workdir", str(w), "--layers", "each", "--epochs", "3", "--lr", "1e-2",
                       "--no-progress"]) == 0
    sweep = w / "runs" / "crepe-tiny-linear-layers-each"
    assert "layer_curve" in json.loads((sweep / "metrics.json").read_text())
    assert (main_run / "head.json").stat().st_mtime_ns == before
    assert "layer_curve" not in json.loads((main_run / "metrics.json").read_text())
    assert main(SPEC, ["evaluate", "--workdir", str(w), "--layers", "each"]) == 0
    assert (sweep / "evaluation.json").is_file()
    assert "| crepe-tiny-linear-layers-each |" in (w / "results.md").read_text()

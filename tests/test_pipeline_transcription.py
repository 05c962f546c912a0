"""pipelines.transcription: the MIR-ST500 adapter, MIDI writing, and the demo end to end."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from featurestore.names import safe_name
from heads.notes import hz_to_midi, read_notes
from pipelines.command import main
from pipelines.transcription import SPEC, TranscriptionOptions, clean_notes, prepare_mirst500, write_midi

SR = 16000


def _sine(path: Path, seconds: float = 1.0, hz: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return path


GOOD = [[0.1, 0.4, 60.0], [0.5, 0.9, 62.0]]
LABELS = {
    "1": GOOD,                                                     # Mixture.wav + Vocal.wav -> vocals
    "2": [[0.1, 0.4, 60.0], [0.6, 0.5, 62.0], [0.7, 0.9, 64.0]],   # one note with offset <= onset
    "3": GOOD,                                                     # labelled, no audio folder
    "401": [[0.1, 0.3, 130.0], [0.3, 0.6, 65.0], [0.6, 0.9, 67.0]],  # MIDI 130
    "402": [[0.1, 0.5, 60.0], [0.4, 0.8, 62.0], [0.8, 1.0, 64.0]],   # overlap: 0.1-0.5 cut at 0.4
}


@pytest.fixture
def raw(tmp_path) -> Path:
    """A small dataset in the MIR-ST500 layout."""
    root = tmp_path / "MIR-ST500"
    root.mkdir()
    (root / "MIR-ST500_corrected.json").write_text(json.dumps(LABELS))
    _sine(root / "1" / "Mixture.wav")
    _sine(root / "1" / "Vocal.wav")
    _sine(root / "2" / "mixture.wav")
    _sine(root / "401" / "vocals.wav")
    _sine(root / "402" / "Mixture.wav")
    _sine(root / "403" / "Mixture.wav")  # audio folder without labels
    return root


def _args(**kw):
    return TranscriptionOptions(**{"valid_songs": 1, **kw})


def _by_reason(skipped):
    out = {}
    for s in skipped:
        out.setdefault(s["reason"], []).append(s)
    return out


def test_adapter_rows_splits_and_bad_input(raw):
    res = prepare_mirst500(raw, _args())
    rows = {r["id"]: r for r in res.rows}
    assert sorted(rows, key=int) == ["1", "2", "401", "402"]
    assert {k: r["split"] for k, r in rows.items()} == {"1": "train", "2": "valid", "401": "test", "402": "test"}
    assert Path(rows["1"]["path"]).name == "Vocal.wav" and rows["1"]["uses"] == "vocals"
    assert Path(rows["2"]["path"]).name == "mixture.wav" and rows["2"]["uses"] == "mixture"
    assert Path(rows["401"]["path"]).name == "vocals.wav" and rows["401"]["uses"] == "vocals"
    assert Path(rows["402"]["path"]).name == "Mixture.wav" and rows["402"]["uses"] == "mixture"
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows.values())
    # good notes kept as they are, bad ones dropped, the overlap fixed by cutting the earlier offset
    assert rows["1"]["notes"] == [[0.1, 0.4, 60], [0.5, 0.9, 62]]
    assert rows["2"]["notes"] == [[0.1, 0.4, 60], [0.7, 0.9, 64]]
    assert rows["401"]["notes"] == [[0.3, 0.6, 65], [0.6, 0.9, 67]]
    assert rows["402"]["notes"] == [[0.1, 0.4, 60], [0.4, 0.8, 62], [0.8, 1.0, 64]]

    rep = _by_reason(res.skipped)
    assert [s["where"] for s in rep["missing_audio"]] == ["song 3"]
    assert len(rep["no_labels"]) == 1 and "403" in rep["no_labels"][0]["message"]
    bad = {s["where"]: s["message"] for s in rep["bad_notes"]}
    assert set(bad) == {"song 2", "song 401"}
    assert "dropped 1 of 3" in bad["song 2"] and "offset <= onset" in bad["song 2"]
    assert "dropped 1 of 3" in bad["song 401"] and "MIDI 0-127" in bad["song 401"]
    assert [s["where"] for s in rep["overlapping_notes"]] == ["song 402"]
    assert "1 overlapping" in rep["overlapping_notes"][0]["message"]
    assert set(rep) == {"missing_audio", "no_labels", "bad_notes", "overlapping_notes"}


def test_adapter_valid_holdout_and_audio_choice(raw):
    # default 40 held-out songs is cut to leave one train song: the last train songs by number are valid
    res = prepare_mirst500(raw, _args(valid_songs=40))
    assert {r["id"]: r["split"] for r in res.rows if int(r["id"]) <= 400} == {"1": "train", "2": "valid"}
    res = prepare_mirst500(raw, _args(valid_songs=0))
    assert {r["split"] for r in res.rows if int(r["id"]) <= 400} == {"train"}

    mix = {r["id"]: r for r in prepare_mirst500(raw, _args(audio="mixture")).rows}
    assert Path(mix["1"]["path"]).name == "Mixture.wav" and mix["1"]["uses"] == "mixture"
    assert "401" not in mix  # vocals only
    voc = prepare_mirst500(raw, _args(audio="vocals"))
    assert sorted((r["id"] for r in voc.rows), key=int) == ["1", "401"]
    assert {s["where"] for s in voc.skipped if s["reason"] == "missing_audio"} == {"song 2", "song 3", "song 402"}


def test_adapter_train_test_subfolders_and_file_names(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "MIR-ST500_corrected.json").write_text(json.dumps({"1": GOOD, "2": GOOD, "401": GOOD, "402": GOOD}))
    _sine(root / "train" / "1" / "Instrumental.wav")   # a stem of another source, never the mixture
    _sine(root / "train" / "2" / "2.wav")                # the single audio file: the mixture
    _sine(root / "test" / "401" / "no_vocals.wav")
    _sine(root / "test" / "401" / "Lead_Vocals.flac")
    _sine(root / "test" / "402" / "a.wav")
    _sine(root / "test" / "402" / "b.wav")               # two unnamed files: which is the mixture?
    res = prepare_mirst500(root, _args(valid_songs=0))
    rows = {r["id"]: r for r in res.rows}
    assert sorted(rows, key=int) == ["2", "401"]
    assert Path(rows["2"]["path"]).name == "2.wav" and rows["2"]["uses"] == "mixture"
    assert Path(rows["401"]["path"]).name == "Lead_Vocals.flac" and rows["401"]["uses"] == "vocals"
    rep = _by_reason(res.skipped)
    assert [s["where"] for s in rep["missing_audio"]] == ["song 1"]
    assert [s["where"] for s in rep["ambiguous_audio"]] == ["song 402"]


def test_clean_notes_same_onset_and_malformed():
    notes, c = clean_notes([[1.0, 2.0, 60], [1.0, 1.5, 62], [2.0, 3.0, 64.0], ["x", 1, 2], [3.5, 4.0, -1],
                            [4.0, 5.0, float("nan")], [-0.5, 0.2, 60]])
    # sorted by (onset, offset): [1.0, 1.5] then [1.0, 2.0]; the first is cut to no length and dropped
    assert notes == [[1.0, 2.0, 60], [2.0, 3.0, 64]]
    assert c == {"malformed": 2, "bad_time": 1, "bad_pitch": 1, "overlaps": 1, "same_onset": 1}


def test_prepare_cli_writes_manifest_and_report(raw, tmp_path, capsys):
    w = tmp_path / "work"
    assert main(SPEC, ["prepare", "--raw", str(raw), "--workdir", str(w), "--valid-songs", "1"]) == 0
    with open(w / "manifest.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(rows, key=int) == ["1", "2", "401", "402"]
    assert json.loads(rows["402"]["notes"]) == [[0.1, 0.4, 60], [0.4, 0.8, 62], [0.8, 1.0, 64]]
    assert rows["2"]["uses"] == "mixture"
    report = json.loads((w / "prepare_report.json").read_text())
    assert report["items"] == 4
    assert {s["reason"] for s in report["skipped"]} == {"missing_audio", "no_labels", "bad_notes",
                                                        "overlapping_notes"}
    assert not (w / "demo.flag").exists()
    out = capsys.readouterr().out
    assert "song 3" in out and "song 402" in out


def test_malformed_labels_json_is_a_clear_error(raw, tmp_path, capsys):
    (raw / "MIR-ST500_corrected.json").write_text('{"1": [[0.1, 0.4, 60.0]')
    assert main(SPEC, ["prepare", "--raw", str(raw), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "MIR-ST500_corrected.json" in err
    (raw / "MIR-ST500_corrected.json").write_text("[1, 2]")
    assert main(SPEC, ["prepare", "--raw", str(raw), "--workdir", str(tmp_path / "w")]) == 2
    assert "expected an object" in capsys.readouterr().err
    assert not (tmp_path / "w" / "manifest.csv").exists()


# ----------------------------------------------------------------------------------------------
def read_midi(path: Path):
    """(notes [[on_s, off_s, midi]], velocities) read back with mido alone."""
    mf = mido.MidiFile(str(path))
    tempo, tick, start, notes, vel = 500000, 0, {}, [], []
    for msg in mf.tracks[0]:
        tick += msg.time
        if msg.type == "set_tempo":
            tempo = msg.tempo
        elif msg.type == "note_on" and msg.velocity > 0:
            start[msg.note] = tick
            vel.append(msg.velocity)
        elif msg.type in ("note_off", "note_on"):
            on = start.pop(msg.note)
            notes.append([mido.tick2second(on, mf.ticks_per_beat, tempo),
                          mido.tick2second(tick, mf.ticks_per_beat, tempo), msg.note])
    assert not start, "unterminated notes"
    return sorted(notes), vel


@pytest.mark.parametrize("bpm,tpb", [(120, 480), (93, 220)])
def test_write_midi_round_trip(tmp_path, bpm, tpb):
    rng = np.random.default_rng(0)
    t, notes = 0.013, []
    for _ in range(40):
        on = t + rng.uniform(0.0, 0.2)
        off = on + rng.uniform(0.03, 0.8)
        notes.append([on, off, int(rng.integers(36, 84))])
        t = off
    notes += [[t + 0.1, t + 0.35, 60], [t + 0.35, t + 0.6, 60]]  # legato repeat of one pitch
    path = write_midi(notes, tmp_path / "x.mid", tempo_bpm=bpm, ticks_per_beat=tpb, velocity=90)
    back, vel = read_midi(path)
    tick_s = mido.bpm2tempo(bpm) / 1e6 / tpb
    assert len(back) == len(notes) and set(vel) == {90}
    assert [m for _, _, m in back] == [m for _, _, m in notes]
    err = np.abs(np.array([b[:2] for b in back]) - np.array([n[:2] for n in notes]))
    assert err.max() <= tick_s
    assert write_midi([], tmp_path / "empty.mid").is_file() and read_midi(tmp_path / "empty.mid")[0] == []


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """prepare --demo, build (CREPE tiny), fit (crf, 10 epochs), evaluate: once for the module.

    Runs on one torch thread: on 2 busy cores two threads made CREPE extraction 1.7x and the CRF's
    Viterbi loop (tiny steps) ~15x slower (the whole module: 73 s vs 32 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("home")
    mp.setenv("SINGFRONT_HOME", str(home))
    w = tmp_path_factory.mktemp("work")
    rc = {}
    rc["prepare"] = main(SPEC, ["prepare", "--demo", "--workdir", str(w)])
    rc["build"] = main(SPEC, ["build", "--workdir", str(w), "--backbone", "crepe", "--no-progress"])
    rc["fit"] = main(SPEC, ["fit", "--workdir", str(w), "--backbone", "crepe", "--head", "crf", "--epochs", "10",
                            "--lr", "1e-2", "--no-progress"])
    rc["evaluate"] = main(SPEC, ["evaluate", "--workdir", str(w), "--backbone", "crepe", "--head", "crf"])
    yield w, rc, home
    mp.undo()
    torch.set_num_threads(threads)


def test_demo_end_to_end(demo_run):
    w, rc, home = demo_run
    assert rc == {"prepare": 0, "build": 0, "fit": 0, "evaluate": 0}
    assert (w / "demo.flag").is_file()
    assert str(home) in (w / "demo.flag").read_text()
    run = w / "runs" / "crepe-tiny-crf"
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["split"] == "test" and ev["n_songs"] == 4 == len(ev["per_song"])
    for k in ("COnPOff", "COnP", "COn"):
        assert 0.0 <= ev["mean"][k]["f1"] <= 1.0
    for song, sc in ev["per_song"].items():
        txt, mid = run / "notes" / f"{song}.txt", run / "midi" / f"{song}.mid"
        assert txt.is_file() and mid.is_file()
        intervals, hz = read_notes(txt)
        back, _ = read_midi(mid)
        assert len(back) == len(hz) == sc["n_est"]
        assert [m for _, _, m in back] == [int(round(v)) for v in hz_to_midi(hz)]
        assert np.allclose([b[:2] for b in back], intervals, atol=1.1 / 960)
    table = (w / "results.md").read_text()
    assert "crepe-tiny-crf" in table and "mean.COnPOff.f1" in table


def test_demo_predict_matches_evaluate(demo_run, tmp_path):
    w, _, home = demo_run
    manifest = json.loads((home / "demo" / "corpus" / "manifest.json").read_text())
    test = [r for r in manifest if r["split"] == "test"][:2]
    inp = tmp_path / "in"
    for r in test:
        (inp / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(home / "demo" / "corpus" / r["path"], inp / "sub" / f"{r['id']}.wav")
    out = tmp_path / "out"
    assert main(SPEC, ["predict", "--workdir", str(w), "--backbone", "crepe", "--input", str(inp), "--out", str(out),
                       "--no-progress"]) == 0
    assert (w / "predict_store.zarr").is_dir()
    for r in test:
        name = safe_name(f"sub/{r['id']}")  # one flat folder, one file name per song id (sub/x -> sub%2Fx)
        txt, mid = out / f"{name}.txt", out / f"{name}.mid"
        assert txt.is_file() and mid.is_file()
        # same audio, same clip settings, same backbone and head: the notes evaluate wrote
        a = read_notes(txt)
        b = read_notes(w / "runs" / "crepe-tiny-crf" / "notes" / f"{safe_name(r['id'])}.txt")
        assert np.allclose(a[0], b[0]) and np.allclose(a[1], b[1])
    assert main(SPEC, ["predict", "--workdir", str(w), "--backbone", "crepe", "--input", str(tmp_path / "nope")]) == 2


def test_validation_size_is_a_share_of_the_train_songs(capsys):
    from pipelines.transcription import DEFAULT_VALID_SONGS, parse_valid_songs, valid_song_count

    share = parse_valid_songs(DEFAULT_VALID_SONGS)
    assert share == pytest.approx(0.10)
    assert [valid_song_count(share, n) for n in (400, 72, 9)] == [40, 7, 1]
    assert capsys.readouterr().err == ""                       # none of these takes over a quarter
    assert [valid_song_count(share, n) for n in (2, 1, 0)] == [1, 0, 0]   # at least one, never all
    assert "1 of 2 train songs" in capsys.readouterr().err
    # a count of 40 out of 72 train songs: allowed, with a warning naming both numbers
    assert valid_song_count(parse_valid_songs("40"), 72) == 40
    err = capsys.readouterr().err
    assert "warning" in err and "40 of 72" in err
    assert valid_song_count(parse_valid_songs("30%"), 100) == 30 and "30 of 100" in capsys.readouterr().err
    for bad in ("-1", "100%", "x", "1.5"):
        with pytest.raises(ValueError, match="^valid_songs: "):
            parse_valid_songs(bad)


def test_default_prepare_takes_ten_percent_of_train_songs(raw):
    """The adapter with the CLI's default (no --valid-songs): 10 % of the 2 train songs -> 1 valid song."""
    from pipelines.command import options_from_args, parse_args

    opts = options_from_args(SPEC, parse_args(SPEC, ["prepare", "--workdir", "/nonexistent", "--raw", str(raw)]))
    assert opts.valid_songs == pytest.approx(0.10)
    res = prepare_mirst500(raw, opts)
    assert sorted(r["split"] for r in res.rows if int(r["id"]) <= 400) == ["train", "valid"]


def test_evaluate_draws_a_piano_roll_and_song_intervals(demo_run, capsys):
    """evaluate --piano-roll SONG draws that song's notes (PNG + SVG); an unknown song is refused by name; the
    song-level bootstrap interval of each F1 equals scipy's over the per-song scores."""
    from scipy.stats import bootstrap

    from heads import intervals

    w, _, _ = demo_run
    run = w / "runs" / "crepe-tiny-crf"
    ev = json.loads((run / "evaluation.json").read_text())
    song = sorted(ev["per_song"])[-1]
    for ext in ("png", "svg"):
        (run / f"piano_roll.{ext}").unlink(missing_ok=True)
    assert main(SPEC, ["evaluate", "--workdir", str(w), "--backbone", "crepe", "--head", "crf",
                       "--piano-roll", song]) == 0
    assert (run / "piano_roll.png").stat().st_size > 1000 and (run / "piano_roll.svg").stat().st_size > 1000
    assert main(SPEC, ["evaluate", "--workdir", str(w), "--backbone", "crepe", "--head", "crf",
                       "--piano-roll", "no-such-song"]) == 2
    assert "--piano-roll: 'no-such-song'" in capsys.readouterr().err
    ev = json.loads((run / "evaluation.json").read_text())
    for k in ("COnPOff", "COnP", "COn"):
        f1 = np.array([ev["per_song"][s][k]["f1"] for s in ev["per_song"]])
        ref = bootstrap((f1,), np.mean, n_resamples=intervals.N_BOOT, method="percentile",
                        rng=np.random.default_rng(intervals.SEED), vectorized=True).confidence_interval
        assert ev["ci95"][f"mean.{k}.f1"] == pytest.approx([ref.low, ref.high])
    assert "[" in next(l for l in (w / "results.md").read_text().splitlines() if l.startswith("| crepe-tiny-crf |"))

"""The maintenance commands (heads.score, heads.migrate, featurestore.export / ingest / demo) as typed
calls: a spec made in Python, one function, the same result as the command line; a bad value is refused
when the spec is made, naming the setting (and, on the command line, its flag)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore.options import SpecError



def _refused(cls, setting: str, **kw):
    with pytest.raises(SpecError) as e:
        cls(**kw)
    assert e.value.setting == setting, (kw, e.value)


def test_score_files_from_python_gives_what_the_command_prints(tmp_path, capsys):
    from heads.metrics import transcription_scores
    from heads.notes import read_notes
    from heads.score import ScoreError, ScoreSpec, main, score_files

    ref, est = tmp_path / "ref.txt", tmp_path / "est.txt"
    ref.write_text("0.10 0.50 220\n0.60 1.00 246.94\n1.20 1.50 261.63\n")
    est.write_text("0.11 0.48 220\n0.62 0.90 233.08\n")
    scores = score_files(ScoreSpec(ref=str(ref), est=str(est)))
    direct = transcription_scores(*read_notes(ref), *read_notes(est))
    assert scores == {k: direct[k] for k in ("COnPOff", "COnP", "COn")}
    assert scores["COn"]["recall"] == pytest.approx(2 / 3) and scores["COnP"]["precision"] == pytest.approx(0.5)
    assert main([str(ref), str(est)]) == 0
    assert json.loads(capsys.readouterr().out) == scores
    with pytest.raises(ScoreError, match="no such file: .*nope.txt"):
        score_files(ScoreSpec(ref=str(tmp_path / "nope.txt"), est=str(est)))
    _refused(ScoreSpec, "indent", ref=str(ref), est=str(est), indent=-1)
    _refused(ScoreSpec, "est", ref=str(ref))


def test_demo_corpus_from_python_and_the_command_are_the_same_files(tmp_path, capsys):
    from featurestore.demo import DemoCorpusSpec, main, make_demo_corpus, write_demo_corpus

    spec = DemoCorpusSpec(out_dir=str(tmp_path / "py"), n_singers=1, clips_per_singer=3, duration=1.0, seed=2)
    manifest = write_demo_corpus(spec)
    assert main([str(tmp_path / "cli"), "--n-singers", "1", "--clips-per-singer", "3", "--duration", "1.0",
                 "--seed", "2"]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "cli" / "manifest.json"
    records = json.loads(manifest.read_text())
    assert records == json.loads((tmp_path / "cli" / "manifest.json").read_text()) and len(records) == 3
    for r in records:
        assert (tmp_path / "py" / r["path"]).read_bytes() == (tmp_path / "cli" / r["path"]).read_bytes()
    for kw, setting in (({"n_singers": 0}, "n_singers"), ({"clips_per_singer": 2}, "clips_per_singer"),
                        ({"duration": 0.1}, "duration"), ({"sr": 0}, "sr"), ({"seed": "x"}, "seed")):
        _refused(DemoCorpusSpec, setting, out_dir=str(tmp_path / "bad"), **kw)
    _refused(DemoCorpusSpec, "out_dir")
    with pytest.raises(SpecError, match="duration: must be >= 0.35 s"):  # the library call validates the same way
        make_demo_corpus(tmp_path / "bad", duration_s=0.2)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "bad"), "--clips-per-singer", "2"])
    assert e.value.code == 2 and "--clips-per-singer: must be >= 3" in capsys.readouterr().err


def test_export_and_ingest_specs_refuse_bad_values_naming_the_setting(tmp_path, capsys):
    from featurestore.export import ExportSpec
    from featurestore.export import main as export_main
    from featurestore.ingest import IngestSpec
    from featurestore.ingest import main as ingest_main

    ok = {"store": "s.zarr", "out": str(tmp_path / "o.h5"), "backbone": "crepe"}
    assert ExportSpec(**ok, format="hdf5").format == "hdf5"
    _refused(ExportSpec, "format", **ok, format="csv")
    _refused(ExportSpec, "backbone", store="s.zarr", out="o.h5", format="npy")
    base = {"input": str(tmp_path / "in.h5"), "store": str(tmp_path / "s.zarr")}
    for kw, setting in (({"chunk_frames": 0}, "chunk_frames"), ({"unit_frames": 0}, "unit_frames"),
                        ({"dtype": "int8"}, "dtype"), ({"frame_rate": 0.0}, "frame_rate"), ({"hop": 0}, "hop"),
                        ({"pad": -1}, "pad")):
        _refused(IngestSpec, setting, **base, **kw)
    _refused(IngestSpec, "store", input="in.h5")
    (tmp_path / "in.h5").write_bytes(b"")
    assert ingest_main([base["input"], "--store", base["store"], "--chunk-frames", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --chunk-frames: must be >= 1, got 0")
    assert not Path(base["store"]).exists()
    assert export_main([str(tmp_path / "missing.zarr"), str(tmp_path / "o.h5"), "--backbone", "crepe",
                        "--format", "npy"]) == 2
    assert "missing.zarr" in capsys.readouterr().err and not (tmp_path / "o.h5").exists()


def test_migrate_runs_goes_on_after_a_failure_and_needs_the_trust_statement(tmp_path):
    import joblib
    import numpy as np

    from heads.clip_heads import LinearHead
    from heads.migrate import MigrateSpec, migrate_runs
    from heads.persist import load_head

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2, 4)).astype(np.float32), np.repeat([0, 1], 20)
    good, junk = tmp_path / "good", tmp_path / "junk"
    for d in (good, junk):
        d.mkdir()
    head = LinearHead(epochs=2).fit(X, y)
    joblib.dump(head, good / "head.joblib")
    (junk / "head.joblib").write_bytes(b"\x80\x04\x95")
    _refused(MigrateSpec, "trust_pickle", runs=(str(good),))
    _refused(MigrateSpec, "runs", trust_pickle=True)
    done = migrate_runs(MigrateSpec(runs=(str(junk), str(good)), trust_pickle=True))
    assert [m.failed for m in done] == [True, False]
    assert "cannot be read as a pickled head" in done[0].status and done[1].status == "converted"
    np.testing.assert_array_equal(load_head(good).predict_proba(X), head.predict_proba(X))

"""FinetuneSpec (heads.finetune's settings declared once) and finetune_run's run folder record:
a bad setting made in Python is refused naming the setting; --print-config fed back with --config
gives the same spec and finds the run already done; a finetune_args.json written before the spec
existed is still recognised."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore.build import build
from featurestore.clips import ClipSettings
from featurestore.demo import make_demo_corpus
from featurestore.options import SpecError, identity, to_dict
from heads import finetune as FT
from heads.finetune import FinetuneSpec
from heads.finetune_model import FineTuneError

QUIET = ["--num-workers", "0", "--no-progress", "--batch-size", "2"]


@pytest.mark.parametrize("settings,setting", [
    ({"mode": "lora"}, "mode"),                                  # crepe has no attention
    ({"backbone": "mert", "mode": "lora", "lora_rank": 0}, "lora_rank"),
    ({"backbone": "mert", "lora_targets": "q_proj,nope"}, "lora_targets"),
    ({"head": "crf", "task": "singer"}, "head"),
    ({"head": "linear", "task": "transcription"}, "head"),
    ({"context": 1.0}, "context"),                               # a clip head has no temporal context
    ({"head": "crf", "class_weight": "balanced"}, "class_weight"),
    ({"class_weight": "weird"}, "class_weight"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": "3"}, "epochs"),                                 # a string is not an int
    ({"epochs": 2, "stage1_epochs": 3}, "stage1_epochs"),
    ({"crop_seconds": -1.0}, "crop_seconds"),
    ({"eval_context_seconds": float("nan")}, "eval_context_seconds"),
    ({"head_lr": 0.0}, "head_lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"patience": 0}, "patience"),
    ({"holdout_fraction": 1.5}, "holdout_fraction"),
    ({"precision": "fp8"}, "precision"),
    ({"name": "a/b"}, "name"),
    ({"backbone": "logmel"}, "backbone"),
    ({"backbone": "no-such-model"}, "backbone"),
    ({"gradient_checkpointing": True}, "gradient_checkpointing"),  # crepe is no transformers model
    ({"dropout": 1.0}, "dropout"),
])
def test_a_bad_setting_is_refused_naming_it(settings, setting):
    with pytest.raises(SpecError) as e:
        FinetuneSpec(**settings)
    assert e.value.setting == setting and str(e.value).startswith(f"{setting}: ")


def test_defaults_resolve_from_other_settings_and_identity_leaves_out_the_machine():
    s = FinetuneSpec()
    assert (s.task, s.stage1_epochs, s.frontend_lr) == ("singer", 2, 5e-5)
    s = FinetuneSpec(backbone="mert", head="crf", mode="lora", epochs=4)
    assert (s.task, s.stage1_epochs, s.frontend_lr) == ("transcription", 0, 5e-4)
    assert FinetuneSpec(epochs=30).stage1_epochs == 6 and FinetuneSpec(epochs=30, stage1_epochs=0).stage1_epochs == 0
    same = FinetuneSpec(device="cuda", num_workers=8, no_progress=True, resume=True, overwrite=True, log_dir="tb")
    assert identity(same) == identity(FinetuneSpec())
    assert identity(FinetuneSpec(seed=1)) != identity(FinetuneSpec())
    with pytest.raises(Exception):                               # frozen
        s.epochs = 3


def test_the_command_line_names_the_flag(capsys):
    assert FT.main(["--backbone", "mert", "--mode", "lora", "--lora-rank", "0"]) == 2
    assert "error: --lora-rank: must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def crepe_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    corpus = make_demo_corpus(root / "corpus", n_singers=2, clips_per_singer=4, duration_s=2.0)
    path = root / "store.zarr"
    build(corpus, path, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None), num_workers=0, progress=False)
    return path


@pytest.fixture(scope="module")
def finished(crepe_store, tmp_path_factory):
    """A finished 1-epoch fine-tune of crepe-tiny (the command line), and its settings."""
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["--store", str(crepe_store), "--backbone", "crepe-tiny", "--epochs", "1", "--out", str(out), *QUIET]
    assert FT.main(argv) == 0
    return out, argv


def test_print_config_then_config_gives_the_same_spec_and_finds_the_run_done(finished, crepe_store, tmp_path,
                                                                            capsys):
    out, argv = finished
    spec = FT.spec_from_args(FT.parse_args(argv))
    capsys.readouterr()
    assert FT.main(argv + ["--print-config"]) == 0
    printed = capsys.readouterr().out
    cfg = tmp_path / "printed.yaml"
    cfg.write_text(printed)
    assert FT.spec_from_args(FT.parse_args(["--config", str(cfg)])) == spec
    assert FT.spec_from_args(FT.parse_args(["--config", str(out / "config.yaml")])) == spec
    # a flag beside --config wins over the file
    assert FT.spec_from_args(FT.parse_args(["--config", str(cfg), "--seed", "3"])).seed == 3
    # the run's own config.yaml finds the run already done: nothing trains, nothing is rewritten
    stamp = {f: (out / f).stat().st_mtime_ns for f in ("checkpoint.pt", "metrics.json", "finetune_args.json")}
    assert FT.main(["--config", str(out / "config.yaml"), "--store", str(crepe_store), "--out", str(out)]) == 0
    io = capsys.readouterr()
    assert "already fine-tuned with these settings" in io.err and "epoch 1/1" not in io.err and io.out == ""
    assert {f: (out / f).stat().st_mtime_ns for f in stamp} == stamp
    record = FT.finetune_run(crepe_store, spec, out)
    assert record.state == "already done" and record.train_seconds == 0.0 and record.run == out
    io = capsys.readouterr()  # a library call prints nothing: the commands say "already fine-tuned", once
    assert io.out == io.err == ""
    assert FT.main(["--config", str(out / "config.yaml"), "--store", str(crepe_store), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("already fine-tuned") == 1
    assert record.backbone == "crepe-tiny@sid-ft" and record.report == json.loads((out / "metrics.json").read_text())
    # a setting that changes the result is not "done": refused naming it
    with pytest.raises(FineTuneError, match=r"seed: 0 -> 3"):
        FT.finetune_run(crepe_store, FinetuneSpec(**{**identity(spec), "seed": 3}), out)


def test_a_record_written_before_the_spec_existed_is_still_done(finished, crepe_store):
    """finetune_args.json as heads.finetune wrote it before FinetuneSpec (every parsed option but the
    resume-free ones, paths resolved; the demo store recorded as null)."""
    out, _ = finished
    old = {"accumulate": 1, "allow_scoring_selection_split": False, "attention": None, "backbone": "crepe-tiny",
           "batch_size": 2, "class_weight": None, "context": 0.0, "crop_seconds": 10.0, "dropout": None,
           "epochs": 1, "eval_context_seconds": 5.0, "eval_window_seconds": 30.0, "frontend_lr": 5e-05,
           "gradient_checkpointing": False, "group": None, "head": "linear", "head_lr": 0.003,
           "holdout_fraction": 0.15, "layerdrop": 0.0, "local_files_only": False, "lora_alpha": 16.0,
           "lora_dropout": 0.0, "lora_rank": 8, "lora_targets": "q_proj,v_proj", "mask_time_prob": 0.0,
           "mode": "two-stage", "model_path": None, "name": None, "out": str(out.resolve()), "patience": None,
           "precision": "auto", "score_split": "auto", "seed": 0, "select_split": "auto", "stage1_epochs": 1,
           "stage1_features": "auto", "store": str(crepe_store.resolve()), "task": "singer",
           "trust_remote_code": False}
    marker = out / "finetune_args.json"
    written = json.loads(marker.read_text())
    assert set(written) == set(old)                           # today's record has the same keys
    spec = FinetuneSpec(backbone="crepe-tiny", epochs=1, batch_size=2, num_workers=0, no_progress=True)
    try:
        for variant in (old, {**old, "store": None}, {**old, "out": "/elsewhere/run"}):
            marker.write_text(json.dumps(variant, indent=2))
            assert FT.finetune_run(crepe_store, spec, out).state == "already done"
        marker.write_text(json.dumps({**old, "head_lr": 0.01}))
        with pytest.raises(FineTuneError, match=r"head_lr: 0\.01 -> 0\.003"):
            FT.finetune_run(crepe_store, spec, out)
    finally:
        marker.write_text(json.dumps(written, indent=2))


def test_reextract_run_returns_its_record_and_main_prints_it(finished, crepe_store, tmp_path, capsys):
    from featurestore import open_store
    from heads import reextract as RX

    out, _ = finished
    with pytest.raises(FileNotFoundError, match="no finished fine-tune"):
        RX.reextract_run(tmp_path)
    with pytest.raises(ValueError, match="name 'a/b'"):
        RX.reextract_run(out, name="a/b")
    assert RX.main(["--run", str(out), "--num-workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip()
    rec = RX.reextract_run(out, crepe_store, num_workers=0, progress=False)   # already there: resumes, nothing to do
    assert printed == RX.format_reextract(rec)
    st = open_store(crepe_store)
    assert rec.backbone == "crepe-tiny@sid-ft" and rec.backbone in st.backbones and rec.complete
    assert rec.units_done == rec.units
    assert (rec.layers, rec.dim) == (len(st.layer_ids(rec.backbone)), st.shape(rec.backbone)[-1])
    assert rec.frames == int(st.n_frames(rec.backbone).sum()) and rec.store == str(crepe_store)


def test_recorded_paths_are_resolved_but_store_urls_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = FT.resolved_settings({"store": "memory://songs.zarr", "out": "runs/./x/", "model_path": "~/m",
                                "backbone": "CREPE"})
    assert got["store"] == "memory://songs.zarr" and got["out"] == str(tmp_path / "runs" / "x")
    assert got["model_path"] == str(Path("~/m").expanduser().resolve()) and got["backbone"] == FT.resolve("crepe").name


def test_finetune_run_prints_nothing_and_says_what_it_did(crepe_store, tmp_path, capsys):
    spec = FinetuneSpec(backbone="crepe-tiny", epochs=2, stage1_epochs=1, seed=1, batch_size=2, num_workers=0,
                        no_progress=True)
    out = tmp_path / "quiet"

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    with pytest.raises(Killed):
        FT.finetune_run(crepe_store, spec, out, on_checkpoint=kill)
    resumed = FinetuneSpec(**{**to_dict(spec), "resume": True})
    rec = FT.finetune_run(crepe_store, resumed, out)
    io = capsys.readouterr()
    assert io.out == "" and "resuming" in io.err and "epoch 2/2" in io.err
    report = json.loads((out / "metrics.json").read_text())
    assert rec.state == "resumed" and rec.run == out and rec.backbone == report["backbone"] == "crepe-tiny@sid-ft"
    assert rec.report == report and rec.train_seconds == report["finetune"]["train_seconds"] > 0
    assert report["scored_split"] == "test" and report["selection_split"] == "valid"


def test_the_readme_python_example_runs(corpus_for_readme, tmp_path, monkeypatch, capsys):
    """The README's fine-tuning example from Python, run as written in a folder whose w/store.zarr
    is a small crepe-tiny store: no argument list, no subprocess."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(from heads\.finetune import FinetuneSpec.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    build(corpus_for_readme, tmp_path / "w" / "store.zarr", ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None),
          num_workers=0, progress=False)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    rec, new = scope["rec"], scope["new"]
    assert rec.state == "fitted" and rec.run == Path("runs/ft") and new.backbone == "crepe-tiny@sid-ft" and new.complete
    assert capsys.readouterr().out.startswith(f"fitted {rec.report['accuracy']} crepe-tiny@sid-ft")


@pytest.fixture
def corpus_for_readme(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("readme") / "corpus", n_singers=2, clips_per_singer=4,
                            duration_s=2.0)

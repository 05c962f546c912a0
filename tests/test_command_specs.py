"""The build and benchmark commands are thin layers over typed specs: ``--print-config`` fed back with
``--config`` gives an equal spec, a config key a command does not take exits 2 naming it, a refused
setting is named (as the setting in Python, as its flag on the command line), and the build runs from
a spec with no argument list."""
from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from featurestore.options import SpecError
from tests.conftest import noise_clips

#: command module -> (spec class name, options away from their defaults, one setting: its flag)
COMMANDS = {
    "featurestore.build": ("BuildSpec", ["--input", "in", "--store", "s.zarr", "--backbone", "logmel", "--backbone",
                                         "crepe-tiny", "--layers", "3,1", "--shard", "1/3", "--separate-vocals",
                                         "--trim-db", "-40", "--dtype", "int8", "--lock-timeout", "2", "--json"],
                           ("chunk_frames", "--chunk-frames", "128")),
    "benchmarks.speed": ("SpeedSpec", ["--backbone", "logmel", "--minutes", "0.5", "--epochs", "4",
                                       "--recompute-epochs", "1", "--quiet", "--device", "cpu"],
                         ("read_seconds", "--read-seconds", "0.5")),
    "benchmarks.memory": ("MemorySpec", ["--minutes", "0.25,1", "--model", "tiny", "--units", "0", "--json", "m.json"],
                          ("unit_frames", "--unit-frames", "256")),
    "benchmarks.extraction": ("ExtractionSpec", ["--clip-seconds", "2", "--n-singers", "2", "--window", "50"],
                              ("scan_seconds", "--scan-seconds", "0.25")),
    "benchmarks.heads_fit": ("HeadsFitSpec", ["--corpus-minutes", "0.4", "--epochs", "2", "--skip-clip-heads"],
                             ("context", "--context", "0.3")),
    "benchmarks.storage": ("StorageSpec", ["--layers", "4,0", "--duration-seconds", "2", "--lr", "1e-2", "--quiet"],
                           ("window_frames", "--window-frames", "20")),
}


def _printed_config(mod, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        mod.parse_args([*argv, "--print-config"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_print_config_fed_back_with_config_gives_the_same_spec(command, tmp_path, capsys):
    mod = importlib.import_module(command)
    cls_name, argv, (setting, flag, value) = COMMANDS[command]
    spec = mod.parse_args(argv)
    assert type(spec).__name__ == cls_name and spec != getattr(mod, cls_name)()  # the options were taken
    config = tmp_path / "run.yaml"
    config.write_text(_printed_config(mod, argv, capsys))
    again = mod.parse_args(["--config", str(config)])
    assert again == spec and dataclasses.asdict(again) == dataclasses.asdict(spec)
    # an option given beside the file wins over it; the rest still comes from the file
    over = mod.parse_args(["--config", str(config), flag, value])
    assert over == dataclasses.replace(spec, **{setting: type(getattr(spec, setting))(value)})


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_config_key_exits_2_naming_it(command, tmp_path, capsys):
    mod = importlib.import_module(command)
    config = tmp_path / "run.yaml"
    config.write_text("no-such-setting: 1\n")
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--config", str(config)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) no_such_setting" in err and str(config) in err


def test_refused_settings_are_named_in_python_and_as_flags_on_the_command_line(capsys):
    from benchmarks.memory import MemorySpec
    from benchmarks.speed import SpeedSpec, parse_args as speed_args
    from benchmarks.storage import StorageSpec
    from featurestore.build import BuildSpec, parse_args as build_args

    cases = [(lambda: BuildSpec(shard="3/2"), "shard"), (lambda: BuildSpec(chunk_frames=256, shard_frames=300),
                                                          "shard_frames"),
             (lambda: BuildSpec(backbone=("logmel", "crepe-tiny"), name="x"), "name"),
             (lambda: BuildSpec(layers="1,x"), "layers"), (lambda: BuildSpec(dtype="int8", frames="none"), "dtype"),
             (lambda: SpeedSpec(epochs=2, recompute_epochs=3), "recompute_epochs"),
             (lambda: MemorySpec(minutes="10,-1"), "minutes"), (lambda: StorageSpec(lr="0,1e-2"), "lr"),
             (lambda: StorageSpec(options=("float16", "bfloat16")), "options")]
    for make, setting in cases:
        with pytest.raises(SpecError) as e:
            make()
        assert e.value.setting == setting
    for parse, argv, flag in ((build_args, ["--shard", "3/2"], "--shard"),
                              (build_args, ["--shard-frames", "300"], "--shard-frames"),
                              (speed_args, ["--epochs", "2", "--recompute-epochs", "3"], "--recompute-epochs")):
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 2
        assert f"error: {flag}: " in capsys.readouterr().err


def test_specs_normalise_what_a_config_file_or_keyword_gives():
    """Lists (YAML) and "I/N" / "0,2" strings (command line) make the same typed spec."""
    from benchmarks.memory import MemorySpec
    from featurestore.build import BuildSpec

    a = BuildSpec(backbone=["logmel"], shard=[1, 2], layers=[3, 1, 3])
    b = BuildSpec(backbone="logmel", shard="1/2", layers="1,3")
    assert a == b and a.backbone == ("logmel",) and a.shard == (1, 2) and a.layers == (1, 3)
    assert MemorySpec(minutes=[1, 2]) == MemorySpec(minutes="1,2") and MemorySpec(minutes="1,2").minutes == (1.0, 2.0)


def test_backbones_on_the_command_line_replace_the_config_files(tmp_path):
    from featurestore.build import parse_args

    config = tmp_path / "b.yaml"
    config.write_text("backbone: [logmel, crepe-tiny]\nlayers: [0, 2]\n")
    assert parse_args(["--config", str(config)]).backbone == ("logmel", "crepe-tiny")
    spec = parse_args(["--config", str(config), "--backbone", "crepe"])
    assert spec.backbone == ("crepe",) and spec.layers == (0, 2)
    assert parse_args(["--backbone", "a", "--backbone", "b"]).backbone == ("a", "b")


def test_run_build_from_a_spec_matches_the_command_line(tmp_path, capsys):
    """The typed API builds a store with no argument list; ``--config`` of its spec on the command line
    finds that store complete (nothing extracted again) and reports the same frames."""
    from featurestore import open_store
    from featurestore.build import BuildSpec, main, run_build
    from featurestore.options import write_config

    noise_clips(tmp_path / "audio", 16000, [1.0, 2.5])
    spec = BuildSpec(input=str(tmp_path / "audio"), store=str(tmp_path / "s.zarr"), backbone=("logmel",),
                     segment_seconds=0.0, num_workers=0, no_progress=True, device="cpu", json=True)
    report = run_build(spec)
    s = report.backbones["logmel"]
    assert s["complete"] and s["layers"] == 1 and s["audio_seconds"] == pytest.approx(3.5)  # both files extracted
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 2 and store.n_frames("logmel").sum() == s["frames"] > 0
    clip = store.clips["id"][1]
    frames = store.frames(clip, "logmel").copy()

    config = write_config(spec, tmp_path / "build.yaml")
    assert main(["--config", str(config)]) == 0
    again = json.loads(capsys.readouterr().out)["backbones"]["logmel"]
    assert again["complete"] and again["frames"] == s["frames"] and again["units_done"] == s["units_done"]
    assert again["audio_seconds"] == 0  # nothing left to extract: the same store, the same settings
    assert (open_store(tmp_path / "s.zarr").frames(clip, "logmel") == frames).all()


def test_a_torchrun_build_refuses_a_shard_naming_it(monkeypatch, tmp_path):
    from featurestore.build import BuildSpec, BuildTarget, ClipSettings, run_build

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SpecError) as e:
        run_build(BuildSpec(shard="1/2", backbone=("logmel",)),
                  BuildTarget(tmp_path, tmp_path / "s.zarr", ClipSettings()))
    assert e.value.setting == "shard"

"""One typed run API under every command (issue 18): the README's Python example runs as written; the
pipelines and benchmarks reach heads and featurestore through typed functions (never another command's
``main``, never an argparse Namespace); ``--print-config`` fed back with ``--config`` is the same spec
and the same run folder, not refitted; a grid YAML drives the comparison; a run folder written by the
version before this API still evaluates."""
from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from featurestore.options import SpecError, identity

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "heads", "pipelines", "benchmarks")
#: Run folders written by the version before this API (commit 21103e8: ``pipelines.singer fit`` on the
#: demo corpus's log-mel store): fit_args.json, metrics.json and the head, no config.yaml.
OLD_RUNS = Path(__file__).parent / "data" / "runs_before_typed_api"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SINGFRONT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- the README's example ---------------------------------------------------------------------

def test_readme_python_example_runs_as_written(home, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using singfront from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "argv" not in code and "subprocess" not in code and "main(" not in code
    scope: dict = {}
    exec(compile(code, "README.md (Using singfront from Python)", "exec"), scope)
    out = capsys.readouterr().out
    scores = scope["scores"]
    assert set(scores) == {(b, h) for b in ("logmel", "crepe") for h in ("linear", "mlp")}
    # each printed score is the one in that run's evaluation.json, measured on test and chosen on valid
    for (backbone, head), value in scores.items():
        name = {"logmel": "logmel", "crepe": "crepe-tiny"}[backbone]
        ev = json.loads((home / "work" / "singer" / "runs" / f"{name}-{head}" / "evaluation.json").read_text())
        assert ev["song"]["accuracy"] == pytest.approx(value)
        assert f"{backbone} / {head}: song accuracy {value:.2f} (scored on test, chosen on valid)" in out
    assert (home / "work" / "singer" / "results.md").read_text().strip() in out


# ---- what calls what ---------------------------------------------------------------------------

def _modules():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        yield pkg, Path(mod.__file__)
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"{pkg}."):
            yield info.name, Path(importlib.import_module(info.name).__file__)


def _under_main_guard(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if __name__ == "__main__":`` blocks."""
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    lines.add(sub.lineno)
    return lines


#: The command-line layer's own names: a command's ``main`` and ``parse_args``, a sub-command's main
#: (``cmd_<name>`` of pipelines.command), and what turns parsed arguments into a spec (``*_from_args``,
#: featurestore.options.from_namespace).
CLI_LAYER = re.compile(r"^(main|parse_args|cmd_\w+|\w+_from_args|from_namespace)$")


def test_no_library_function_takes_an_argparse_namespace():
    """Only the command-line layer (:data:`CLI_LAYER`) may take parsed arguments; every other function
    takes typed values."""
    bad = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if CLI_LAYER.match(node.name):
                continue
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs:
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg == "args" or "Namespace" in note:
                    bad.append(f"{name}.{node.name}({arg.arg}{': ' + note if note else ''})")
    assert bad == []


def test_pipelines_and_benchmarks_never_call_another_commands_main():
    """Walk the imports of every pipelines / benchmarks module: ``main`` of another module is only ever
    imported to serve as this module's own entry point (called under ``if __name__ == "__main__"``), never
    called as an API; no argument list is parsed by another command's parser; no subprocess fits."""
    command_modules = {n for n, p in _modules() if re.search(r"^def main\(", p.read_text(), re.M)}
    assert {"heads.fit", "heads.finetune", "featurestore.build", "pipelines.command"} <= command_modules
    problems = []
    for name, path in _modules():
        if not name.startswith(("pipelines", "benchmarks")):
            continue
        tree = ast.parse(path.read_text())
        guarded = _under_main_guard(tree)
        imported_main, modules = set(), {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in command_modules:
                for alias in node.names:
                    if alias.name in ("main", "parse_args", "build_parser"):
                        imported_main.add(alias.asname or alias.name)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in command_modules:
                        modules[alias.asname or alias.name] = alias.name
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in command_modules:
                        modules[alias.asname or alias.name] = full
            if isinstance(node, ast.Import) and any(a.name == "subprocess" for a in node.names) \
                    and (name.startswith("pipelines") or name == "benchmarks.frontends"):
                problems.append(f"{name} imports subprocess")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or node.lineno in guarded:
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in imported_main:
                problems.append(f"{name}:{node.lineno} calls {f.id}() of another command")
            if isinstance(f, ast.Attribute) and f.attr in ("main", "parse_args") \
                    and isinstance(f.value, ast.Name) and f.value.id in modules and modules[f.value.id] != name:
                problems.append(f"{name}:{node.lineno} calls {modules[f.value.id]}.{f.attr}()")
    assert problems == []


# ---- config files: the same spec, the same run folder, no refit ----------------------------------

def test_print_config_fed_back_is_the_same_spec_and_run_folder_without_refit(home, capsys):
    from heads import fit
    from heads.runs import RunFolder

    argv = ["--backbone", "crepe", "--head", "logreg", "--C", "0.1,1", "--layers", "concat", "--seed", "2",
            "--no-progress"]
    assert fit.main(argv + ["--print-config"]) == 0
    printed = capsys.readouterr().out
    (home / "run.yaml").write_text(printed)
    spec, _ = fit.spec_from_args(fit.parse_args(argv))
    again, _ = fit.spec_from_args(fit.parse_args(["--config", str(home / "run.yaml")]))
    assert again == spec and again.seed == 2 and again.C == "0.1,1"
    assert fit.main(["--config", str(home / "run.yaml")]) == 0
    out = capsys.readouterr().out
    run = home / "runs" / "crepe-tiny-logreg-singer-layers-concat-C0.1_1-seed2"
    assert f"run folder: {run.relative_to(home)}" in out
    stamp = (run / "metrics.json").stat().st_mtime_ns
    # the run folder's own config.yaml: the same spec, the same folder, nothing fitted again
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["store"] == str((home / "home" / "demo" / "store.zarr").resolve())
    assert identity(RunFolder(run).spec()) == identity(spec)
    assert fit.main(["--config", str(run / "config.yaml")]) == 0
    assert "already fitted with these settings" in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    # a setting that changes the result is a new fit of the same folder name (--refit-free)
    assert fit.main(["--config", str(run / "config.yaml"), "--holdout-fraction", "0.2"]) == 0
    assert "already fitted" not in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns != stamp


def test_pipeline_fit_config_round_trip_and_refusals(home, capsys):
    from pipelines import singer
    from pipelines.command import main

    w = home / "w"
    assert main(singer.SPEC, ["prepare", "--workdir", str(w), "--demo"]) == 0
    assert main(singer.SPEC, ["build", "--workdir", str(w), "--backbone", "logmel", "--no-progress"]) == 0
    args = ["fit", "--workdir", str(w), "--backbone", "logmel", "--head", "logreg", "--no-progress"]
    capsys.readouterr()
    assert main(singer.SPEC, args + ["--print-config"]) == 0
    (home / "fit.yaml").write_text(capsys.readouterr().out)
    assert main(singer.SPEC, ["fit", "--workdir", str(w), "--config", str(home / "fit.yaml")]) == 0
    run = w / "runs" / "logmel-logreg"
    stamp = (run / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(singer.SPEC, ["fit", "--workdir", str(w), "--config", str(run / "config.yaml")]) == 0
    assert "already fitted" in capsys.readouterr().out and (run / "metrics.json").stat().st_mtime_ns == stamp
    # a config naming another store is refused by name, not silently ignored
    other = yaml.safe_load((run / "config.yaml").read_text()) | {"store": str(home / "elsewhere.zarr")}
    (home / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(singer.SPEC, ["fit", "--workdir", str(w), "--config", str(home / "other.yaml")]) == 2
    assert "--store" in capsys.readouterr().err
    # evaluate finds the run from its folder alone
    assert main(singer.SPEC, ["evaluate", "--workdir", str(w), "--run", str(run)]) == 0
    assert json.loads((run / "evaluation.json").read_text())["head"] == "logreg"


def test_a_spec_names_the_setting_it_refuses():
    from heads.fit_spec import FitSpec

    for kw, setting in (({"head": "logreg", "lr": "1e-3"}, "lr"), ({"head": "crf", "task": "singer"}, "head"),
                        ({"layers": "each", "head": "mlp"}, "layers"), ({"head": "linear", "context": 0.1}, "context"),
                        ({"head": "crf", "pool": "std"}, "pool"), ({"seed": -1}, "seed"),
                        ({"holdout_fraction": 1.5}, "holdout_fraction"), ({"task": "label:"}, "task")):
        with pytest.raises(SpecError) as e:
            FitSpec(**kw)
        assert e.value.setting == setting and not str(e.value).startswith("--")
    assert FitSpec(pool="mean") == FitSpec()  # the default pooling named is the same run


# ---- a comparison from a grid file --------------------------------------------------------------

def test_grid_yaml_drives_the_frontend_comparison(home, capsys):
    from benchmarks import frontends

    grid = {"workdir": str(home / "cmp"), "demo": True, "tasks": ["singer"], "backbones": ["logmel"],
            "heads": ["linear", "logreg"], "epochs": 2, "no_progress": True}
    (home / "grid.yaml").write_text(yaml.safe_dump(grid))
    assert frontends.main(["--config", str(home / "grid.yaml")]) == 0
    rows = [l for l in (home / "cmp" / "singer" / "comparison.md").read_text().splitlines()
            if l.startswith("| logmel |")]
    assert [r.split("|")[2].strip() for r in rows] == ["linear", "logreg"]
    assert "singer: 1 backbone(s) built, 2 run(s) fitted" in capsys.readouterr().out
    recorded = yaml.safe_load((home / "cmp" / "comparison.yaml").read_text())
    spec = frontends.ComparisonSpec(**recorded)
    assert spec == frontends.ComparisonSpec(**grid) and spec.head_list == ["linear", "logreg"]
    assert frontends.main(["--config", str(home / "cmp" / "comparison.yaml")]) == 0
    assert "0 run(s) fitted, 2 reused" in capsys.readouterr().out


# ---- run folders written before this API ----------------------------------------------------------

def test_a_run_folder_from_before_the_typed_api_still_evaluates(home, capsys):
    """The committed folders were written by ``pipelines.singer fit`` of commit 21103e8 (fit_args.json, no
    config.yaml). On the same demo store they evaluate, found by their folder alone and by the options
    that name them; their scores are the heads' own on the scored split, computed here."""
    from featurestore import open_store
    from heads.persist import load_head
    from heads.runs import RunFolder
    from heads.tasks import make_task
    from pipelines import singer
    from pipelines.command import main
    from pipelines.task_pipeline import TaskPipeline

    w = home / "w"
    pipe = TaskPipeline("singer", w)
    pipe.prepare(demo=True)
    pipe.build(["logmel"], progress=False)
    shutil.copytree(OLD_RUNS, w / "runs")
    old = RunFolder(w / "runs" / "logmel-linear-seed1")
    assert not (old.path / "config.yaml").exists() and (old.path / "fit_args.json").is_file()
    spec = old.spec()  # rebuilt from metrics.json
    assert (spec.backbone, spec.head, spec.seed, spec.epochs) == ("logmel", "linear", 1, 2)
    assert not old.is_done(spec)  # an old folder is never taken for a fit of a new spec
    assert pipe.run_folder(spec).path == old.path  # and its spec names its folder

    result = pipe.evaluate(old.path)
    assert main(singer.SPEC, ["evaluate", "--workdir", str(w), "--backbone", "logmel", "--head", "logreg"]) == 0
    store = open_store(w / "store.zarr")
    for name, rec in (("logmel-linear-seed1", result.result),
                      ("logmel-logreg", json.loads((w / "runs" / "logmel-logreg" / "evaluation.json").read_text()))):
        rd = w / "runs" / name
        head = load_head(rd / "head.json")
        plan = make_task("singer").replan(store, "logmel", json.loads((rd / "metrics.json").read_text())["protocol"])
        pred = np.asarray(head.predict(store.pooled("logmel", rows=plan.score).astype(np.float32))).astype(str)
        truth = store.labels("singer")[plan.score].astype(str)
        assert rec["segment"]["accuracy"] == pytest.approx(np.mean(pred == truth))
        assert rec["protocol"]["scored_split"] == "test"
    assert result.scored_split == "test" and result.chosen_on == "valid"
    table = (w / "results.md").read_text()
    assert "| logmel-linear-seed1 |" in table and "| logmel-logreg |" in table
    capsys.readouterr()


# ---- heads: hyperparameters from one declaration ---------------------------------------------------

def test_every_head_declares_every_hyperparameter_and_refuses_by_name():
    from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
    from heads.frame_heads import CRFHead, FrameClassifierHead
    from heads.params import undeclared, validate_params

    bad = {"lr": "0,x", "epochs": 0, "window": 0, "batch_size": 0, "patience": 0, "layer_norm": "yes",
           "layers": "some", "context": -0.1, "context_width": 0, "seed": -1, "hidden": 0, "dropout": 1.0,
           "validation_fraction": 1.0, "weight_decay": -1.0, "onset_pos_weight": 0.0, "midi_low": 128,
           "midi_high": -1, "selection": "f1", "features": "first", "C": "0.1,-1", "max_iter": 0, "n_estimators": [10, 0],
           "learning_rate": 0.0, "num_leaves": 1, "min_child_samples": -1, "class_weight": "balance",
           "progress": "no"}
    for cls in (LinearHead, MLPHead, LogRegHead, LGBMHead, FrameClassifierHead, CRFHead):
        assert undeclared(cls) == [], cls.__name__
        validate_params(cls())  # the defaults are allowed
        for name in cls._get_param_names():
            if name == "device":
                continue
            with pytest.raises(ValueError, match=f"^{name}"):
                validate_params(cls(**{name: bad[name]}))


def test_two_fits_into_one_run_folder_the_second_stops_naming_the_first(home, capsys):
    """One process fits into a run folder at a time: a second stops at once, naming the holder, and
    leaves the folder as it was; once the first is done, the fit runs."""
    from featurestore.locking import LockTimeout, StoreLock
    from heads import fit
    from heads.fit_spec import FitSpec

    out = home / "runs" / "busy"
    spec = FitSpec(backbone="crepe", head="logreg")
    with StoreLock(out, timeout=0).hold("another fit of this folder"):
        with pytest.raises(LockTimeout, match="another fit of this folder"):
            fit.fit_run(None, spec, out)
        assert fit.main(["--backbone", "crepe", "--head", "logreg", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "another fit of this folder" in err and f"{out} is busy" in err and "gave up after" not in err
        assert not (out / "metrics.json").exists()
    rec = fit.fit_run(None, spec, out)
    assert not rec.reused and (out / "metrics.json").is_file() and (out / "config.yaml").is_file()


def test_a_fit_killed_midway_is_not_taken_for_a_finished_one(home, monkeypatch):
    """config.yaml is cleared before a fit and written last: a refit killed in the middle leaves a folder
    whose old metrics.json is not reused as this spec's result; the next call fits again."""
    from heads import fit
    from heads.fit_spec import FitSpec

    spec, out = FitSpec(backbone="crepe", head="logreg"), home / "runs" / "r"
    first = fit.fit_run(None, spec, out)
    assert not first.reused and fit.fit_run(None, spec, out).reused
    real = fit.run_clip

    def killed(*a, **kw):
        raise KeyboardInterrupt  # the process stopped half-way through the refit

    monkeypatch.setattr(fit, "run_clip", killed)
    with pytest.raises(KeyboardInterrupt):
        fit.fit_run(None, spec, out, refit=True)
    assert (out / "metrics.json").is_file() and not (out / "config.yaml").exists()
    monkeypatch.setattr(fit, "run_clip", real)
    again = fit.fit_run(None, spec, out)
    assert not again.reused and (out / "config.yaml").is_file()


@pytest.mark.parametrize("text, setting", [
    ("epochs: ten\n", "epochs"), ("epochs: 2.5\n", "epochs"), ("epochs: true\n", "epochs"),
    ("epochs: [1, 2]\n", "epochs"), ("context: abc\n", "context"), ("no_progress: 'false'\n", "no_progress"),
    ("refit: 'no'\n", "refit"), ("", "holds no settings"), ("# only a comment\n", "holds no settings")])
def test_a_bad_config_value_is_refused_naming_the_file_and_setting(tmp_path, capsys, text, setting):
    """argparse leaves non-string defaults unconverted: before the check, ``epochs: true`` fitted 1 epoch,
    ``refit: 'no'`` refitted, ``epochs: [1, 2]`` raised a TypeError deep in the spec, and an empty file
    fitted the defaults."""
    from heads.fit import parse_args

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--config {path}: " in err and setting in err and "Traceback" not in err


def test_config_values_are_converted_as_their_options_are(tmp_path):
    from heads.fit import parse_args, spec_from_args

    path = tmp_path / "ok.yaml"
    path.write_text("epochs: 3.0\nstore: 5\nlayers: 2\nlr: [0.001, 0.01]\nno_progress: true\n")
    args = parse_args(["--config", str(path)])
    assert (args.epochs, args.store, args.layers, args.no_progress) == (3, "5", "2", True)
    assert type(args.epochs) is int
    spec, _ = spec_from_args(args)
    assert spec.epochs == 3 and spec.layers == "2"


def test_a_folder_or_binary_file_as_config_is_refused_by_name(tmp_path, capsys):
    from heads.fit import parse_args

    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    for path in (tmp_path, tmp_path / "bin.yaml"):
        with pytest.raises(SystemExit) as e:
            parse_args(["--config", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"--config {path}: " in err and "Traceback" not in err


@pytest.mark.parametrize("kw, setting", [
    ({"epochs": "ten"}, "epochs"), ({"epochs": [1]}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"epochs": True}, "epochs"),
    ({"epochs": 0}, "epochs"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"context": "abc"}, "context"),
    ({"holdout_fraction": "a"}, "holdout_fraction"), ({"backbone": None}, "backbone"), ({"backbone": " "}, "backbone"),
    ({"task": 5}, "task"), ({"no_progress": "no"}, "no_progress"), ({"device": 0}, "device")])
def test_fitspec_refuses_a_wrong_type_from_python_by_name(kw, setting):
    """Before: ValueError/TypeError from int()/float() naming no setting, or silent truncation
    (``epochs=2.5`` -> 2, ``seed=True`` -> 1), or a None backbone failing deep in the registry."""
    from heads.fit_spec import FitSpec

    with pytest.raises(SpecError) as e:
        FitSpec(**kw)
    assert e.value.setting == setting


def test_fitspec_still_takes_numbers_as_text():
    from heads.fit_spec import FitSpec

    spec = FitSpec(head="crf", epochs="3", seed=2.0, context="0.15", holdout_fraction="0.2")
    assert (spec.epochs, spec.seed, spec.context, spec.holdout_fraction) == (3, 2, 0.15, 0.2)


def _option_helps(parser) -> dict[str, str]:
    """{option: its help as printed} from a parser's --help text."""
    text = parser.format_help().split("options:", 1)[1]
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"  (-[-\w]+)", line)
        if m:
            current = m.group(1)
            out[current] = line[len(m.group(0)):]
        elif current:
            out[current] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in out.items()}


def test_every_pipeline_option_names_its_default_once():
    """technique's fit said "--class-weight ... not given: none (default: paper)"; the pipelines' finetune
    --resume pointed at an --out it does not have."""
    from heads.fit import build_parser as fit_parser
    from pipelines import singer, technique, transcription
    from pipelines.command import build_parser

    parsers = {"heads.fit": fit_parser()}
    for task in (singer, technique, transcription):
        for name, sub in build_parser(task.SPEC)[1].items():
            parsers[f"{task.SPEC.name} {name}"] = sub
    for where, parser in parsers.items():
        for opt, text in _option_helps(parser).items():
            assert not ("not given:" in text and "(default:" in text), (where, opt, text)
            if where.endswith("finetune"):
                assert "--out" not in text, (where, opt, text)
    assert "(default: paper)" in _option_helps(parsers["technique fit"])["--class-weight"]


def test_evaluate_run_that_is_a_file_or_missing_says_so(home, capsys):
    """``--run`` at a file or a missing path said "no fitted head in ...: run fit first"."""
    from pipelines import singer
    from pipelines.command import main

    w = home / "w"
    assert main(singer.SPEC, ["prepare", "--workdir", str(w), "--demo"]) == 0
    (home / "notes.txt").write_text("x")
    for run, says in ((home / "notes.txt", "is a file, not a run folder"), (home / "nope", "no run folder")):
        capsys.readouterr()
        assert main(singer.SPEC, ["evaluate", "--workdir", str(w), "--run", str(run)]) == 2
        assert says in capsys.readouterr().err
    assert not (w / "results.md").exists()


@pytest.mark.parametrize("line, setting", [("lr: [0.1, x]", "--lr"), ("lr: 0", "--lr"), ("epochs: 0", "--epochs")])
def test_a_grid_with_a_bad_fit_setting_is_refused_before_anything_runs(home, capsys, line, setting):
    """``lr: [0.1, x]`` in a grid used to build every store and fail every fit (exit 1)."""
    from benchmarks import frontends

    (home / "grid.yaml").write_text(f"workdir: cmp\ndemo: true\ntasks: [singer]\nbackbones: [logmel]\n{line}\n")
    with pytest.raises(SystemExit) as e:  # refused as a bad option is: status 2
        frontends.main(["--config", str(home / "grid.yaml")])
    assert e.value.code == 2 and setting in capsys.readouterr().err and not (home / "cmp").exists()


def test_a_grid_lr_list_is_the_fits_grid():
    from benchmarks.frontends import ComparisonSpec

    assert ComparisonSpec(workdir="c", lr=[0.01, 0.1]).lr == "0.01,0.1"
    with pytest.raises(SpecError) as e:
        ComparisonSpec(workdir="c", lr="1e-3,fast")
    assert e.value.setting == "lr"


def test_seeds_as_a_yaml_list_in_a_fit_config(tmp_path):
    """grid.yaml takes ``seeds: [0, 1, 2]``; heads.fit's config refused the same list."""
    from heads.fit import parse_args, spec_from_args
    from heads.tasks import parse_seeds

    path = tmp_path / "fit.yaml"
    path.write_text("head: logreg\nseeds: [0, 2]\n")
    spec, seeds = spec_from_args(parse_args(["--config", str(path)]))
    assert seeds == [0, 2] and spec.seed == 0
    assert parse_seeds((1, 3)) == parse_seeds("1,3") == [1, 3]
    for bad in ([0, 0], [0, 1.5], [True], [], [-1]):
        with pytest.raises(SpecError):
            parse_seeds(bad)


@pytest.mark.parametrize("line", ["seeds: 0,1", "refit: true"])
def test_a_finetune_config_with_fits_own_options_is_refused(tmp_path, capsys, line):
    """``pipelines.<task> finetune --config`` took fit's seeds and refit and dropped them unread."""
    from pipelines import singer
    from pipelines.command import parse_args

    (tmp_path / "ft.yaml").write_text(line + "\n")
    with pytest.raises(SystemExit) as e:
        parse_args(singer.SPEC, ["finetune", "--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "ft.yaml")])
    assert e.value.code == 2 and line.split(":")[0] in capsys.readouterr().err
    args = parse_args(singer.SPEC, ["fit", "--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "ft.yaml")])
    assert (args.seeds, args.refit) in (("0,1", False), (None, True))


def test_fit_in_an_unprepared_work_folder_says_prepare_first(home):
    """A fit in an empty work folder said "run build first", and build then said "run prepare first"."""
    from pipelines.task_pipeline import PipelineError, TaskPipeline

    pipe = TaskPipeline("singer", home / "w")
    with pytest.raises(PipelineError, match="run prepare, then build first"):
        pipe.fit(pipe.fit_spec(backbone="logmel"))
    pipe.prepare(demo=True)
    with pytest.raises(PipelineError, match="run build first"):
        pipe.fit(pipe.fit_spec(backbone="logmel"))
    assert not (home / "w" / "runs").exists()


def test_the_epoch_bar_counts_fast_epochs(capsys):
    """The lr bars of heads.fit showed ``0/3`` through every epoch (an iterated tqdm publishes its count
    only every 0.1 s)."""
    import torch

    from heads.training import train_module

    module = torch.nn.Linear(2, 1)
    x, y = torch.ones(4, 2), torch.zeros(4, 1)
    train_module(module, loss_fn=lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batches=lambda g: [(x, y)],
                 evaluate=lambda m: 0.0, lr=1e-2, epochs=3, patience=10, generator=torch.Generator(),
                 progress=True, desc="lr=0.01")
    err = capsys.readouterr().err
    assert "1/3" in err and "2/3" in err and "3/3" in err

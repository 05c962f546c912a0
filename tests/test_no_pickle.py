"""Nothing a user only points at runs code: planted pickle payloads in every loadable place (a head
file, a run folder, a fine-tune checkpoint, a PESTO --model-path) are refused or read without
running them (each payload would create a marker file; the tests check that it is absent). Heads are
saved as JSON + safetensors and load back to the same predictions; old pickled run folders load only
through the explicit migration (heads.migrate --trust-pickle)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
import os
import pickle

import joblib
import numpy as np
import pytest
import torch

from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.persist import HeadFileError, load_head


class Payload:
    """Unpickling this runs ``touch marker`` (what a planted file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(path, marker, via="pickle"):
    """Write a file that runs the payload when unpickled (as torch.load / joblib.load / pickle would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if via == "torch":
        torch.save({"state_dict": Payload(marker), "model_state": Payload(marker)}, path)
    elif via == "joblib":
        joblib.dump(Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The control: the planted file does run its code under a plain pickle load."""
    marker = tmp_path / "ran"
    pickle.loads(plant_pickle(tmp_path / "p.pkl", marker).read_bytes())
    assert marker.exists()


def clip_data(n=60, L=3, D=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["alto", "bass", "soprano", "tenor"])[rng.integers(0, 4, n)]
    X = rng.standard_normal((n, L, D)).astype(np.float32)
    return X, y


@pytest.mark.parametrize("make", [lambda: LinearHead(epochs=3), lambda: LinearHead(epochs=3, layers="each"),
                                  lambda: LinearHead(epochs=3, layers=[0, 2], class_weight={"alto": 2.0}),
                                  lambda: MLPHead(epochs=3, hidden=8), lambda: LogRegHead(features="concat"),
                                  lambda: LGBMHead(features=1, n_estimators=5)],
                         ids=["linear", "sweep", "linear-layers", "mlp", "logreg", "lgbm"])
def test_heads_save_as_json_and_safetensors_and_load_back_equal(make, tmp_path):
    X, y = clip_data()
    head = make().fit(X[:40], y[:40])
    head.save(tmp_path / "head.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.json", "head.safetensors"]
    doc = json.loads((tmp_path / "head.json").read_text())
    assert doc["format"] == "singfront.head" and doc["object"]["__object__"].endswith(type(head).__name__)
    with open(tmp_path / "head.safetensors", "rb") as f:  # safetensors: an 8-byte length, then a JSON header
        n = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(n))["__metadata__"]["format"] == "singfront.head"
    back = load_head(tmp_path / "head.json")
    assert type(back) is type(head) and back.get_params() == head.get_params()
    np.testing.assert_array_equal(back.classes_, head.classes_)
    np.testing.assert_array_equal(back.predict(X[40:]), head.predict(X[40:]))
    np.testing.assert_array_equal(back.predict_proba(X[40:]), head.predict_proba(X[40:]))
    np.testing.assert_array_equal(back.decision_function(X[40:]), head.decision_function(X[40:]))
    assert load_head(tmp_path).predict(X[:1]) == head.predict(X[:1])  # a run folder is accepted too


def test_lgbm_is_kept_as_lightgbm_text_model(tmp_path):
    X, y = clip_data()
    head = LGBMHead(features="mean", n_estimators=4).fit(X, y)
    head.save(tmp_path / "head.json")
    text = json.dumps(json.loads((tmp_path / "head.json").read_text()))
    assert "tree_sizes=" in text and "Tree=0" in text  # LightGBM's own model format


def test_a_planted_head_joblib_is_refused_and_names_the_migration(tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    plant_pickle(run / "head.joblib", marker, via="joblib")
    for target in (run / "head.joblib", run, run / "head.json"):
        with pytest.raises(HeadFileError, match=r"never loaded implicitly.*heads\.migrate .* --trust-pickle"):
            load_head(target)
    assert not marker.exists()


def test_a_planted_pickle_renamed_head_json_is_refused(tmp_path):
    marker = tmp_path / "ran"
    plant_pickle(tmp_path / "head.json", marker)
    with pytest.raises(HeadFileError, match="head.json: not a readable head file"):
        load_head(tmp_path / "head.json")
    assert not marker.exists()


def test_a_head_json_naming_another_class_is_refused(tmp_path):
    X, y = clip_data()
    LogRegHead().fit(X, y).save(tmp_path / "head.json")
    doc = json.loads((tmp_path / "head.json").read_text())
    doc["object"]["state"]["model_"]["__object__"] = "os.system"
    (tmp_path / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadFileError, match=r"head\.json: refusing to build a 'os.system'"):
        load_head(tmp_path / "head.json")
    doc["object"]["__object__"] = "subprocess.Popen"
    (tmp_path / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadFileError, match="not a head"):
        load_head(tmp_path / "head.json")


def test_weights_that_do_not_fit_the_head_are_refused(tmp_path):
    X, y = clip_data()
    LinearHead(epochs=2).fit(X, y).save(tmp_path / "head.json")
    LinearHead(epochs=2).fit(X[:, :2], y).save(tmp_path / "other.json")
    os.replace(tmp_path / "other.safetensors", tmp_path / "head.safetensors")
    with pytest.raises(HeadFileError, match="head.safetensors: the module weights do not fit"):
        load_head(tmp_path / "head.json")


def test_migration_converts_a_trusted_legacy_run_and_refuses_without_the_flag(tmp_path, capsys):
    from heads.migrate import main, migrate_run

    X, y = clip_data()
    head = LinearHead(epochs=3).fit(X, y)
    run = tmp_path / "run"
    run.mkdir()
    joblib.dump(head, run / "head.joblib")  # what earlier versions wrote
    with pytest.raises(PermissionError, match="can run code"):
        migrate_run(run, trust_pickle=False)
    assert main([str(run)]) == 2 and "--trust-pickle" in capsys.readouterr().err
    assert not (run / "head.json").exists()
    assert main([str(run), "--trust-pickle"]) == 0
    assert "converted (LinearHead)" in capsys.readouterr().out
    np.testing.assert_array_equal(load_head(run).predict_proba(X), head.predict_proba(X))
    assert (run / "head.joblib").exists()  # kept, never read again
    assert main([str(run), "--trust-pickle"]) == 0 and "already converted" in capsys.readouterr().out


def test_a_planted_run_folder_is_refused_by_evaluate_and_clustering(tmp_path, capsys):
    import pipelines.singer as S
    import pipelines.technique as T
    from pipelines.clustering import run_layer_weights
    from pipelines.command import main

    marker = tmp_path / "ran"
    run = tmp_path / "runs" / "crepe-tiny-linear"
    plant_pickle(run / "head.joblib", marker, via="joblib")
    for spec, cmd in ((T.SPEC, ["evaluate"]), (S.SPEC, ["evaluate"]),
                      (S.SPEC, ["predict", "--input", str(tmp_path), "--out", str(tmp_path / "p.csv")])):
        rc = main(spec, cmd + ["--workdir", str(tmp_path), "--backbone", "crepe"])
        err = capsys.readouterr().err
        assert rc == 2 and "heads.migrate" in err and "Traceback" not in err, err
    with pytest.raises(HeadFileError, match="heads.migrate"):
        run_layer_weights(run, 4)
    assert not marker.exists()


# ---- PESTO: only the wheel's own checkpoints are unpickled -----------------------------------

def _plain(v):
    """omegaconf containers -> plain dicts / lists (what a checkpoint must hold to load weights-only)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(v, (DictConfig, ListConfig)):
        return OmegaConf.to_container(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def test_a_planted_pesto_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    from featurestore.build import main
    from featurestore.frontends import load_frontend
    from tests.conftest import noise_clips

    marker = tmp_path / "ran"
    ckpt = plant_pickle(tmp_path / "evil.ckpt", marker, via="torch")
    with pytest.raises(ValueError, match=r"evil\.ckpt: refused, it cannot be read as plain tensors"):
        load_frontend("pesto", path=str(ckpt))
    noise_clips(tmp_path / "audio", 16000, [1.0])
    rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", "pesto",
               "--model-path", str(ckpt), "--num-workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_plain_user_pesto_checkpoint_loads_weights_only_and_equals_the_shipped_one(tmp_path):
    """The shipped mir-1k_g7 re-saved with plain containers: read with weights_only=True and built
    with pesto-pitch's classes, it gives the same layers as the shipped file through pesto.load_model."""
    import pesto

    from featurestore.frontends import load_frontend
    from featurestore.pesto_frontend import SHIPPED_SHA256

    shipped = Path(pesto.__file__).parent / "weights" / "mir-1k_g7.ckpt"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == SHIPPED_SHA256["mir-1k_g7"]
    ckpt = torch.load(shipped, map_location="cpu", weights_only=False)  # the wheel's own file, hash checked
    user = tmp_path / "mine.ckpt"
    torch.save({k: _plain(ckpt[k]) for k in ("hparams", "state_dict", "hcqt_params")}, user)
    torch.load(user, weights_only=True)  # the precondition: a plain file
    a, b = load_frontend("pesto"), load_frontend("pesto", path=str(user))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)) * 0.1
    with torch.inference_mode():
        ha = a.hidden_states(torch.nn.functional.pad(x, (a.pad, a.pad)), None)
        hb = b.hidden_states(torch.nn.functional.pad(x, (b.pad, b.pad)), None)
    torch.testing.assert_close(ha, hb, rtol=0, atol=0)
    assert b.source == str(user.resolve())


def test_a_planted_demucs_package_in_a_local_repo_is_refused(tmp_path):
    """demucs itself unpickles a local repo's .th files; load_separator reads them weights-only."""
    from featurestore.separation import SeparatorLoadError, load_separator

    marker = tmp_path / "ran"
    repo = tmp_path / "repo"
    plant_pickle(repo / "evil.th", marker, via="torch")
    (repo / "evilbag.yaml").write_text("models: ['evil']\n")
    for name in ("evil", "evilbag"):
        with pytest.raises(SeparatorLoadError, match=r"evil\.th: refused"):
            load_separator(name, repo=repo)
    assert not marker.exists()

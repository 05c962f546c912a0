"""Manifests as people save them (Excel's BOM, trailing commas, JSON ids of 0, broken files) and the
reader's bounds and aliases (issue 9, items 3 and 4 in part)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import build
from featurestore.clips import ClipSettings
from featurestore.manifest import read_inputs
from tests.conftest import noise_clips

SR = 16000


@pytest.fixture
def wavs(tmp_path):
    return noise_clips(tmp_path / "a", SR, [0.5, 0.5, 0.5])


def test_csv_with_utf8_bom_is_read(tmp_path, wavs):
    m = tmp_path / "m.csv"
    m.write_bytes(("path,split,singer\n" + "".join(f"{p},train,s{i}\n" for i, p in enumerate(wavs)))
                  .encode("utf-8-sig"))
    rows, skips = read_inputs(m)
    assert [r.labels for r in rows] == [{"singer": f"s{i}"} for i in range(3)] and not skips


def test_trailing_comma_header_is_dropped_when_its_column_is_empty(tmp_path, wavs):
    m = tmp_path / "m.csv"
    m.write_text("path,split,singer,\n" + "".join(f"{p},train,s{i},\n" for i, p in enumerate(wavs)))
    rows, skips = read_inputs(m)
    assert len(rows) == 3 and not skips and rows[0].labels == {"singer": "s0"}
    # and the build stores it (no label named '' reaches zarr)
    build(m, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    assert sorted(open_store(tmp_path / "s.zarr").clips["labels"]) == ["singer"]
    # a value under the unnamed column is that row's error, named by file and line
    m.write_text("path,split,singer,\n" f"{wavs[0]},train,s0,\n" f"{wavs[1]},train,s1,oops\n")
    rows, skips = read_inputs(m)
    assert len(rows) == 1 and skips[0].where == "m.csv line 3" and "unnamed" in skips[0].message


@pytest.mark.parametrize("header,needle", [("path,singer,singer", "appears twice"), ("path,a/b", "'a/b'"),
                                          ("file,singer", "'path' column")])
def test_bad_headers_name_the_file_line_and_column(tmp_path, wavs, header, needle):
    m = tmp_path / "m.csv"
    m.write_text(f"{header}\n{wavs[0]},x,y\n")
    with pytest.raises(ValueError, match="line 1") as e:
        read_inputs(m)
    assert str(m) in str(e.value) and needle in str(e.value)


def test_json_id_zero_is_an_id_and_broken_files_are_named(tmp_path, wavs):
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"path": str(wavs[0]), "id": 0}, {"path": str(wavs[1]), "id": 1}]))
    rows, _ = read_inputs(m)
    assert [r.id for r in rows] == ["0", "1"]
    m.write_text('[{"path": "a.wav"},\n {"path": }]')
    with pytest.raises(ValueError, match=r"m\.json line 2 column"):
        read_inputs(m)
    m.write_bytes(b'[{"path": "\xff\xfe.wav"}]')
    with pytest.raises(ValueError, match=r"m\.json: not UTF-8"):
        read_inputs(m)
    c = tmp_path / "m.csv"
    c.write_bytes(b"path,singer\n" + str(wavs[0]).encode() + b",caf\xe9\n")
    with pytest.raises(ValueError, match=r"m\.csv line \d+: not UTF-8"):
        read_inputs(c)


def test_reader_bounds_and_aliases(tmp_path, wavs):
    m = tmp_path / "m.csv"
    m.write_text("path\n" + "".join(f"{p}\n" for p in wavs))
    build(m, tmp_path / "s.zarr", ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=False)
    s = open_store(tmp_path / "s.zarr")
    n = int(s.n_frames("crepe-tiny")[1])
    whole = s.frames(1, "crepe-tiny")
    assert len(whole) == n
    np.testing.assert_array_equal(s.frames(1, "crepe-tiny", start=2, stop=5), whole[2:5])
    for start, stop in ((-3, None), (0, n + 1), (4, 2), (n + 1, None)):
        with pytest.raises(IndexError, match="outside clip"):
            s.frames(1, "crepe-tiny", start=start, stop=stop)
    # the alias heads.fit accepts works in the reader too, and reads the same frames
    assert s.backbone_name("crepe") == "crepe-tiny"
    np.testing.assert_array_equal(s.frames(1, "crepe"), whole)
    np.testing.assert_array_equal(s.pooled("crepe"), s.pooled("crepe-tiny"))
    assert s.frame_rate("crepe") == s.frame_rate("crepe-tiny")


def test_a_build_that_writes_nothing_leaves_no_store_folder(tmp_path, wavs):
    from featurestore.build import main

    bad = tmp_path / "bad.csv"
    bad.write_text("file,singer\nx.wav,a\n")
    assert main(["--input", str(bad), "--store", str(tmp_path / "s.zarr"), "--no-progress"]) != 0
    assert not (tmp_path / "s.zarr").exists()
    good = tmp_path / "m.csv"
    good.write_text("path\n" + "".join(f"{p}\n" for p in wavs))
    assert main(["--input", str(good), "--store", str(tmp_path / "t.zarr"), "--shard", "0/2", "--no-progress"]) != 0
    assert not (tmp_path / "t.zarr").exists()


def test_progress_bar_shows_rounded_seconds(tmp_path, wavs, capsys):
    m = tmp_path / "m.csv"
    m.write_text("path\n" + "".join(f"{p}\n" for p in wavs))
    build(m, tmp_path / "s.zarr", ["logmel"], clip_settings=ClipSettings(segment_s=None), num_workers=0,
          progress=True)
    err = capsys.readouterr().err
    assert "1.5/1.5 audio-s" in err and "000000" not in err

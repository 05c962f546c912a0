"""Bad input is reported and skipped; the clips around it are stored; --strict makes it an error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from featurestore import open_store
from featurestore.build import main
from tests.conftest import noise_clips, write_wav


@pytest.fixture
def messy_manifest(tmp_path):
    a = tmp_path / "audio"
    good = noise_clips(a, 16000, [1.5, 1.5, 1.5])
    (a / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    write_wav(a / "empty.wav", np.zeros(0, np.float32), 16000)
    write_wav(a / "silence.wav", np.zeros(16000, np.float32), 16000)
    nan = np.full(16000, 0.1, np.float32)
    nan[500] = np.nan
    write_wav(a / "nan.wav", nan, 16000)
    inf = np.full(16000, 0.1, np.float32)
    inf[10] = np.inf
    write_wav(a / "inf.wav", inf, 16000)
    write_wav(a / "short.wav", (0.1 * np.ones(160)).astype(np.float32), 16000)  # 10 ms
    rows = ["path,id,split,singer,start,end",
            f"{good[0]},g0,train,alice,,",
            "audio/corrupt.wav,corrupt,train,bob,,",
            f"{good[1]},g1,valid,bob,,",
            "audio/empty.wav,empty,train,bob,,",
            "audio/silence.wav,silence,train,bob,,",
            "audio/nan.wav,nan,train,bob,,",
            "audio/inf.wav,inf,train,bob,,",
            "audio/short.wav,short,train,bob,,",
            "audio/missing.wav,missing,train,bob,,",
            f"{good[2]},badtime,train,bob,abc,",
            f"{good[2]},toomany,train,bob,,,extra",
            ",nopath,train,bob,,",
            f"{good[2]},g2,test,carol,0.25,1.25"]
    m = tmp_path / "manifest.csv"
    m.write_text("\n".join(rows) + "\n")
    return m


EXPECTED = {"corrupt": "unreadable", "empty": "empty", "silence": "silent", "nan": "nonfinite",
            "inf": "nonfinite", "short": "too_short", "missing": "missing"}


def test_every_bad_input_is_reported_and_the_rest_stored(tmp_path, messy_manifest, capsys):
    store = tmp_path / "s.zarr"
    args = ["--input", str(messy_manifest), "--store", str(store), "--segment-seconds", "0", "--num-workers", "0",
            "--no-progress", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    by_where = {s["where"]: s for s in report["skipped"]}
    lines = {int(w.split("line ")[1]): s for w, s in by_where.items()}
    # manifest lines: 3 corrupt ... 9 missing, 11 bad time, 12 extra field, 13 no path
    for line, (rid, reason) in zip(range(3, 11), [("corrupt", "unreadable"), (None, None), ("empty", "empty"),
                                                  ("silence", "silent"), ("nan", "nonfinite"), ("inf", "nonfinite"),
                                                  ("short", "too_short"), ("missing", "missing")]):
        if rid is None:
            assert line not in lines
            continue
        assert lines[line]["reason"] == EXPECTED[rid], lines[line]
        assert lines[line]["message"]
    for line in (11, 12, 13):
        assert lines[line]["reason"] == "bad_row", lines[line]
    assert len(report["skipped"]) == 10

    s = open_store(store)
    assert list(s.clip_ids) == ["g0", "g1", "g2"]
    assert list(s.labels("singer")) == ["alice", "bob", "carol"]
    assert list(s.clips["split"]) == ["train", "valid", "test"]
    np.testing.assert_allclose([s.clips["start_s"][2], s.clips["end_s"][2]], [0.25, 1.25])
    assert s.backbones == ["crepe-tiny"]
    assert all(s.n_frames("crepe-tiny") > 0)
    # the report is kept in the store too
    assert sorted(x["where"] for x in s.skipped) == sorted(by_where)

    # --strict: same store, non-zero exit, nothing lost
    assert main(args + ["--strict"]) == 1
    s2 = open_store(store)
    np.testing.assert_array_equal(s2.frames("g1", "crepe-tiny"), s.frames("g1", "crepe-tiny"))


def test_input_errors_are_clear(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope"), "--store", str(tmp_path / "s.zarr"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.wav,1\n")
    assert main(["--input", str(bad), "--store", str(tmp_path / "s.zarr"), "--no-progress"]) == 2
    assert "'path' column" in capsys.readouterr().err
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.wav").write_bytes(b"nonsense")
    assert main(["--input", str(tmp_path / "only_bad"), "--store", str(tmp_path / "t.zarr"), "--no-progress",
                 "--num-workers", "0"]) == 2
    assert "no clip could be planned" in capsys.readouterr().err


def test_bad_layout_options_are_refused(tmp_path):
    from featurestore.build import parse_args

    for bad in (["--chunk-frames", "0"], ["--shard-frames", "300"], ["--batch-seconds", "0"]):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        assert e.value.code == 2

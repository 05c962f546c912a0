"""Bad input never stops a build: a file that disappears, or changes, while its backbone is being
extracted is reported like any other bad file (a line in the report and in store.skipped), its
clips are stored as NaN (which verify names), and every other clip, those of the same unit
included, is stored as a clean build stores it. Deterministic: the file is deleted (or rewritten)
by the decoder's own call, in-process (no worker processes)."""
from __future__ import annotations

import numpy as np
import pytest

import featurestore.audio as au
from featurestore import open_store
from featurestore.build import ExtractSettings, build, main
from featurestore.clips import ClipSettings
from featurestore.verify import verify
from tests.conftest import noise_clips

KW = dict(clip_settings=ClipSettings(segment_s=None), extract=ExtractSettings(target_unit_frames=4096),
          num_workers=0, progress=False)


@pytest.fixture
def corpus(tmp_path):
    paths = noise_clips(tmp_path / "audio", 16000, [1.0, 0.8, 1.2, 0.9])
    ref = tmp_path / "ref.zarr"
    build(tmp_path / "audio", ref, ["logmel"], **KW)
    return tmp_path, paths, ref


def _sabotage(monkeypatch, victim, action):
    """Make the decoder's call for ``victim`` first delete or rewrite it (once)."""
    real = au.load_audio_range
    fired = []

    def load(path, sr, lo, hi):
        if str(path) == str(victim) and not fired:
            fired.append(path)
            action(victim)
        return real(path, sr, lo, hi)

    monkeypatch.setattr(au, "load_audio_range", load)
    return fired


@pytest.mark.parametrize("action, reason", [
    (lambda p: p.unlink(), "vanished"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "changed"),
], ids=["deleted", "truncated"])
def test_a_file_going_bad_during_extraction_is_reported_and_its_neighbours_stored(corpus, monkeypatch, capsys,
                                                                                  action, reason):
    tmp, paths, ref = corpus
    victim = paths[2]
    fired = _sabotage(monkeypatch, victim, action)
    store = tmp / "s.zarr"
    rc = main(["--input", str(tmp / "audio"), "--store", str(store), "--backbone", "logmel", "--segment-seconds", "0",
               "--unit-frames", "4096", "--num-workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert fired and rc == 0 and "Traceback" not in captured.err
    assert f"[{reason}]" in captured.out and str(victim) in captured.out
    s, r = open_store(store), open_store(ref)
    assert s.backbones == ["logmel"] and s.group("logmel").attrs["clips_per_unit"] >= len(paths)  # one unit
    entry = [x for x in s.group("logmel").attrs["skipped"] if x["reason"] == reason]  # the backbone's report
    assert len(entry) == 1 and entry[0]["where"] == "clip02" and entry[0]["path"] == str(victim)
    for cid in r.clip_ids:
        if cid == "clip02":
            assert np.isnan(s.frames(cid, "logmel")).all()
        else:  # the neighbours, in the same unit, as a clean build stores them
            np.testing.assert_array_equal(s.frames(cid, "logmel"), r.frames(cid, "logmel"))
    report = verify(store)
    assert not report.ok and all("clip02" in p.clips for p in report.problems)

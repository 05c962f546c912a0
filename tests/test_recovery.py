"""--overwrite recovers any damaged store, damaged metadata files included (the root, the clip
table's and a backbone's zarr.json, an array's data_type, the offsets chunk), to a store equal to a
clean build; verify names the damaged file in each case, and --repair never crashes on one."""
from __future__ import annotations

import json
import shutil

import pytest

from featurestore.build import main as build_main
from featurestore.verify import main as verify_main, verify
from tests.conftest import noise_clips
from tests.test_concurrent_build import BACKBONE, assert_same_store


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recovery")
    noise_clips(tmp / "audio", 16000, [1.0, 1.0, 0.7])
    args = ["--input", str(tmp / "audio"), "--backbone", BACKBONE, "--segment-seconds", "0.5",
            "--min-segment-seconds", "0.2", "--unit-frames", "40", "--chunk-frames", "16", "--num-workers", "0",
            "--no-progress"]
    ref = tmp / "ref.zarr"
    assert build_main(args + ["--store", str(ref)]) == 0
    return ref, args


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def change_dtype(path):
    meta = json.loads(path.read_text())
    meta["data_type"] = "float32"
    path.write_text(json.dumps(meta))


BB = f"backbones/{BACKBONE}"
CASES = {  # name: (damage, the file a message must name)
    "root": (lambda s: truncate(s / "zarr.json"), "zarr.json"),
    "clips": (lambda s: truncate(s / "clips" / "zarr.json"), "clips/zarr.json"),
    "backbones-group": (lambda s: truncate(s / "backbones" / "zarr.json"), "backbones/zarr.json"),
    "backbone": (lambda s: truncate(s / BB / "zarr.json"), f"{BB}/zarr.json"),
    "offsets-chunk": (lambda s: truncate(s / BB / "offsets" / "c" / "0" / "0"), f"{BB}/offsets/c/0/0"),
    "frames-data-type": (lambda s: change_dtype(s / BB / "frames" / "zarr.json"), f"{BB}/frames/zarr.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_damaged_metadata_case_is_named_and_overwrite_recovers_a_clean_build(reference, tmp_path, case, capsys):
    ref, args = reference
    damage, file = CASES[case]
    store = tmp_path / "s.zarr"
    shutil.copytree(ref, store)
    damage(store)
    capsys.readouterr()
    assert verify_main([str(store)]) == 1
    out = capsys.readouterr().out
    assert file in out and "to mend:" in out, out
    assert verify_main([str(store), "--repair"]) == 1  # refused or applied, never a traceback
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and file in captured.out + captured.err
    assert build_main(args + ["--store", str(store), "--overwrite"]) == 0
    assert_same_store(ref, store)
    assert verify(store).ok


def test_a_damaged_root_is_named_and_needs_overwrite(reference, tmp_path, capsys):
    ref, args = reference
    store = tmp_path / "s.zarr"
    shutil.copytree(ref, store)
    truncate(store / "zarr.json")
    assert build_main(args + ["--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"{store / 'zarr.json'}: unreadable Zarr metadata" in err and "--overwrite" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["clips", "backbone", "offsets-chunk", "frames-data-type"])
def test_other_damage_is_re_planned_by_the_same_command(reference, tmp_path, case, capsys):
    """As for any damaged plan or clip table, the plain build (no --overwrite) re-plans what the
    damaged file described and says so, naming it."""
    ref, args = reference
    damage, file = CASES[case]
    store = tmp_path / "s.zarr"
    shutil.copytree(ref, store)
    damage(store)
    assert build_main(args + ["--store", str(store)]) == 0
    assert file in capsys.readouterr().err
    assert_same_store(ref, store)
    assert verify(store).ok

"""Cases a stranger met trying the README's commands with bad input: each error names what is
wrong, without quotes or traceback, and leaves nothing behind that was not asked for."""
from __future__ import annotations

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

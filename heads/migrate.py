"""Convert run folders of earlier versions (a pickled ``head.joblib``) to the safe head format.

``python -m heads.migrate RUN_DIR [RUN_DIR ...] --trust-pickle``

A pickle runs code when it is loaded, so this is the only place that unpickles a head, and only on
the folders named and only with ``--trust-pickle`` (a statement that you trust where these folders
came from). For each folder it loads ``head.joblib``, writes ``head.json`` + ``head.safetensors``
(:mod:`heads.persist`), checks that the new files load back to a head of the same class, and keeps
``head.joblib`` where it was (nothing reads it afterwards; delete it yourself). A folder that already
has ``head.json`` is left alone unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

from featurestore.cli import HelpFormatter, add_field
from featurestore.options import SpecError, add_options, from_namespace, option
from heads.persist import HEAD_FILE, LEGACY_FILE, load_head, save_head


@dataclass
class Migrated:
    run: Path
    status: str   # "converted" | "already converted" | error message
    head: str = ""
    failed: bool = False  # status is the error message


@dataclass(frozen=True)
class MigrateSpec:
    """The run folders to convert, and the caller's statement that their pickles are trusted."""

    runs: tuple[str, ...] = option((), "run folders (each holding head.joblib)", nargs="+")
    trust_pickle: bool = option(False, "required: you trust the origin of these folders (loading a pickle can run "
                                       "its code)")
    overwrite: bool = option(False, "convert again where head.json already exists")

    def __post_init__(self):
        runs = (self.runs,) if isinstance(self.runs, (str, Path)) else tuple(self.runs)
        object.__setattr__(self, "runs", tuple(str(r) for r in runs))
        if not self.runs:
            raise SpecError("runs", "give at least one run folder")
        if not self.trust_pickle:
            raise SpecError("trust_pickle", "loading head.joblib unpickles it, which can run code; re-run with "
                                            "--trust-pickle only for run folders whose origin you trust")


def migrate_run(run_dir, *, trust_pickle: bool, overwrite: bool = False) -> Migrated:
    """Convert ``run_dir/head.joblib`` to ``head.json`` + ``head.safetensors``. ``trust_pickle``
    must be True: it is the caller's statement that the pickle comes from a trusted source (False
    raises PermissionError and reads nothing)."""
    run = Path(run_dir)
    if not trust_pickle:
        raise PermissionError(f"{run / LEGACY_FILE}: unpickling can run code; pass --trust-pickle only for run "
                              "folders whose origin you trust")
    legacy = run / LEGACY_FILE
    if (run / HEAD_FILE).exists() and not overwrite:
        return Migrated(run, "already converted", type(load_head(run / HEAD_FILE)).__name__)
    if not legacy.is_file():
        raise FileNotFoundError(f"{legacy} is missing: nothing to migrate in {run}")
    import joblib

    try:
        head = joblib.load(legacy)  # the one deliberate unpickling: asked for, on a trusted file
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in any of pickle's ways (KeyError, ...)
        raise ValueError(f"{legacy}: cannot be read as a pickled head, damaged or not one "
                         f"({type(e).__name__}: {e})") from e
    save_head(head, run / HEAD_FILE)
    back = load_head(run / HEAD_FILE)
    if type(back) is not type(head):
        raise RuntimeError(f"{run / HEAD_FILE}: read back as a {type(back).__name__}, not a {type(head).__name__}")
    return Migrated(run, "converted", type(head).__name__)


#: what a head.joblib that cannot be converted raises (a damaged pickle fails in any of pickle's ways)
MIGRATE_ERRORS = (OSError, ValueError, TypeError, RuntimeError, EOFError, ImportError, AttributeError,
                  pickle.UnpicklingError)


def migrate_runs(spec: MigrateSpec) -> list[Migrated]:
    """:func:`migrate_run` on every folder of ``spec.runs``, in order; a folder that fails is recorded
    (``failed``, its error as ``status``) and the next one is still converted."""
    done = []
    for run in spec.runs:
        try:
            done.append(migrate_run(run, trust_pickle=spec.trust_pickle, overwrite=spec.overwrite))
        except MIGRATE_ERRORS as e:
            done.append(Migrated(Path(run), str(e), failed=True))
    return done


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m heads.migrate", formatter_class=HelpFormatter,
                                description="Convert run folders holding a pickled head.joblib (earlier versions) "
                                            "to head.json + head.safetensors, which load without running code.")
    add_field(p, MigrateSpec, "runs", positional=True)
    add_options(p, MigrateSpec, skip=("runs",))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = from_namespace(MigrateSpec, args)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    rc = 0
    for m in migrate_runs(spec):
        if m.failed:
            print(f"error: {m.run}: {m.status}", file=sys.stderr)
            rc = 2
        else:
            print(f"{m.run}: {m.status} ({m.head})")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' scratch folder (the one given, or a temporary one removed afterwards), and the
fresh process a measurement runs in."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def work_folder(path, prefix: str):
    """Yield ``path`` (created if missing), or a fresh temporary folder named ``prefix...`` when
    ``path`` is None, deleted on exit whatever happens."""
    if path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_child(module: str, argv: list[str]) -> dict:
    """Run ``python -m module *argv`` in a fresh process (this checkout first on the path) and return the
    JSON object of its last stdout line: a measurement whose peaks are its own. RuntimeError with the
    command and the end of its stderr when it fails."""
    cmd = [sys.executable, "-m", module, *[str(a) for a in argv]]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the measured process failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_outputs(text: str, result: dict, out: str | None, json_path: str | None) -> None:
    """Write a benchmark's markdown ``text`` to ``out`` and its ``result`` as JSON to ``json_path``
    (each when given; folders created)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")

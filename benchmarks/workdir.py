"""The benchmarks' scratch folder: the one given, or a temporary one removed afterwards."""
from __future__ import annotations

import contextlib
import shutil
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

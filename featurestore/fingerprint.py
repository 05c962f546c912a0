"""Fingerprints of a build's inputs: a changed input file is noticed, and named.

When a store's clip table is planned, one row per input row (manifest order, M rows) is kept in
the store, beside one digest of them all in the root attributes::

    inputs/                 group, every array [M] with dimension "row"
      path      str         the input file (absolute path)
      id        str         the row's id
      fields    str         sha256 (first 16 hex digits) of what the row says: id, split, labels,
                            start, end (to name rows whose fields were edited)
      size      int64       file size in bytes (-1: the file was missing)
      mtime_ns  int64       modification time, nanoseconds since 1970-01-01 UTC (-1: missing)
      sha256    str         sha256 of the file's bytes ("content" mode; "" in "stat" mode)
    zarr.json (root attrs)  input_fingerprint: sha256 over every row in the mode's terms;
                            input_fingerprint_mode: "stat" or "content"

Modes (``--fingerprint``):

- ``stat`` (default): a file counts as changed when its size or its modification time (ns)
  changed. Cheap (one ``stat`` per file). A file rewritten in place with other samples of the
  same size is noticed through its mtime; a copy that does not keep mtimes (``cp`` without
  ``-p``, a sync to another disk) counts as changed too.
- ``content``: size and sha256 of the bytes; mtimes are kept in the table but not compared.
  Reads every input file on every run of the build (resume included).

Why a table of arrays and not a JSON attribute: the root attributes are parsed each time a store
is opened, and {path: [size, mtime]} for 100k files is about 10 MB of JSON; as arrays the table is
compressed and read only when the digest differs, to name what changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from featurestore import layout
from featurestore.manifest import Row

MODES = ("stat", "content")
DEFAULT_MODE = "stat"
#: Root attribute keys: the digest (compared at every build) and its mode.
DIGEST_KEY, MODE_KEY = "input_fingerprint", "input_fingerprint_mode"

_DESCRIPTIONS = {
    "path": ("input file of the row (absolute path)", None),
    "id": ("id of the manifest row", None),
    "fields": ("first 16 hex digits of the sha256 of what the row says: id, split, labels, start, end", None),
    "size": ("file size when the clip table was planned; -1: the file was missing", "byte"),
    "mtime_ns": ("file modification time when the clip table was planned, nanoseconds since "
                 "1970-01-01 UTC; -1: the file was missing", "ns"),
    "sha256": ("sha256 of the file's bytes (fingerprint mode 'content'); '' in mode 'stat'", None),
}


@dataclass
class InputTable:
    """Per-row fingerprint of a build's inputs (M rows; see the module docstring for each column)."""

    mode: str
    path: list[str]
    id: list[str]
    fields: list[str]
    size: np.ndarray      # int64 [M], bytes
    mtime_ns: np.ndarray  # int64 [M], ns since the epoch
    sha256: list[str]
    digest: str

    def __len__(self) -> int:
        return len(self.path)


def _row_text(r: Row) -> str:
    return json.dumps([r.id, r.split, sorted(r.labels.items()), r.start_s, r.end_s])


def file_sha256(path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks (OSError if it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_sha256(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "missing"


def input_table(rows: list[Row], mode: str = DEFAULT_MODE, threads: int = 4) -> InputTable:
    """Fingerprint every row: ``stat`` each file, and in ``content`` mode hash its bytes (files named
    by several rows are hashed once; ``threads`` files at a time). Raises ValueError for an unknown
    mode."""
    if mode not in MODES:
        raise ValueError(f"fingerprint mode must be one of {', '.join(MODES)}, got {mode!r}")
    paths = [str(r.path) for r in rows]
    size = np.full(len(rows), -1, dtype=np.int64)
    mtime = np.full(len(rows), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
    sha = [""] * len(rows)
    if mode == "content":
        unique = sorted(set(paths))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
            by_path = dict(zip(unique, ex.map(_file_sha256, unique)))
        sha = [by_path[p] for p in paths]
    texts = [_row_text(r) for r in rows]
    h = hashlib.sha256(json.dumps(["featurestore-inputs/1", mode]).encode())
    for i, p in enumerate(paths):
        what = int(mtime[i]) if mode == "stat" else sha[i]
        h.update(json.dumps([p, texts[i], int(size[i]), what]).encode())
    return InputTable(mode, paths, [r.id for r in rows], [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts],
                      size, mtime, sha, h.hexdigest())


def legacy_digest(rows: list[Row]) -> str:
    """The digest stores planned before per-file fingerprints kept: sha256 of what the rows say and
    of each file's size (no mtime, no content), so that such stores still resume."""
    h = hashlib.sha256()
    for r in rows:
        try:
            size = r.path.stat().st_size
        except OSError:
            size = -1
        h.update(json.dumps([str(r.path), r.id, r.split, sorted(r.labels.items()), r.start_s, r.end_s, size]).encode())
    return h.hexdigest()


def is_legacy(root) -> bool:
    """A store planned before per-file fingerprints: a digest, no mode, no table."""
    return DIGEST_KEY in root.attrs and MODE_KEY not in root.attrs


def resolve_mode(root, requested: str | None) -> str:
    """The mode a build uses: the one asked for, else the store's, else ``stat``."""
    return requested or root.attrs.get(MODE_KEY) or DEFAULT_MODE


def comparable_digest(root, rows: list[Row], table: InputTable) -> str:
    """The digest to compare with the store's: the table's, or the sizes-only digest for a store
    planned before per-file fingerprints."""
    return legacy_digest(rows) if is_legacy(root) else table.digest


def write_input_table(root, table: InputTable) -> None:
    """Write ``inputs/`` (replacing an earlier one): every column [M] with dimension ``row``."""
    if layout.INPUTS in root:
        del root[layout.INPUTS]
    g = root.create_group(layout.INPUTS, attributes={
        "description": "fingerprint of each input row when the clip table was planned "
                       "(see featurestore.fingerprint)", "mode": table.mode, "digest": table.digest})
    n = len(table)
    chunk = max(1, min(n, 65536))
    columns = {"path": table.path, "id": table.id, "fields": table.fields, "size": table.size,
               "mtime_ns": table.mtime_ns, "sha256": table.sha256}
    for name, values in columns.items():
        text, units = _DESCRIPTIONS[name]
        attrs = {"description": text, **({"units": units} if units else {})}
        is_int = isinstance(values, np.ndarray)
        a = g.create_array(name, shape=(n,), dtype="int64" if is_int else str, chunks=(chunk,),
                           dimension_names=["row"], attributes=attrs)
        if n:
            a[:] = values if is_int else np.array(values, dtype=np.str_)


def read_input_table(root) -> InputTable | None:
    """The stored table, or None when the store has none."""
    if layout.INPUTS not in root:
        return None
    g = root[layout.INPUTS]
    text = {k: [str(v) for v in g[k][:].tolist()] for k in ("path", "id", "fields", "sha256")}
    return InputTable(str(g.attrs.get("mode", "")), text["path"], text["id"], text["fields"],
                      np.asarray(g["size"][:], dtype=np.int64), np.asarray(g["mtime_ns"][:], dtype=np.int64),
                      text["sha256"], str(g.attrs.get("digest", "")))


def _when(ns: int) -> str:
    t = datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{t}.{ns % 10**9:09d} UTC"


def _file_changes(old: InputTable, i: int, new: InputTable, j: int) -> str | None:
    """What changed in the file of old row i / new row j, or None."""
    p, (s0, s1) = new.path[j], (int(old.size[i]), int(new.size[j]))
    if s0 < 0 and s1 >= 0:
        return f"{p} (was missing, now {s1} bytes)"
    if s1 < 0:
        return f"{p} (now missing)" if s0 >= 0 else None
    if s0 != s1:
        return f"{p} (size {s0} -> {s1} bytes)"
    if new.mode == "content":
        a, b = old.sha256[i], new.sha256[j]
        return f"{p} (same size, content sha256 {a[:12]} -> {b[:12]})" if a != b else None
    m0, m1 = int(old.mtime_ns[i]), int(new.mtime_ns[j])
    return f"{p} (same size, modified: mtime {_when(m0)} -> {_when(m1)})" if m0 != m1 else None


def describe_change(root, table: InputTable, limit: int = 10) -> str:
    """Say, in one sentence, how the input of this build differs from the one the store was planned
    from: the files that changed (size, mtime or content), rows added, removed or edited (by id),
    at most ``limit`` of each kind named."""
    if is_legacy(root):
        return ("its input differs from the one it was planned from; it was planned by an "
                "older featurestore that kept a single hash of the rows' paths, ids, splits, labels, "
                "start/end and file sizes, so the changed files cannot be named")
    old = read_input_table(root)
    stored_mode = root.attrs.get(MODE_KEY)
    if old is None:
        return "its input differs from the one it was planned from (the store holds no input table to name the change)"
    if stored_mode != table.mode:
        return (f"it fingerprints its input in mode {stored_mode!r} and this run asked for --fingerprint "
                f"{table.mode}: leave --fingerprint out to use the store's mode")
    by_id = {k: i for i, k in enumerate(old.id)}
    new_ids = set(table.id)
    files, edited, moved, added = [], [], [], []
    for j, k in enumerate(table.id):
        i = by_id.get(k)
        if i is None:
            added.append(k)
        elif old.path[i] != table.path[j]:
            moved.append(f"{k} ({old.path[i]} -> {table.path[j]})")
        else:
            if old.fields[i] != table.fields[j]:
                edited.append(k)
            change = _file_changes(old, i, table, j)
            if change is not None and change not in files:
                files.append(change)
    removed = [k for k in old.id if k not in new_ids]
    parts = []
    for label, items in (("changed file(s)", files), ("row(s) whose path changed", moved), ("row(s) added", added),
                         ("row(s) removed", removed), ("row(s) whose split, labels, start or end changed", edited)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    if not parts:
        return "its input rows are the same but in another order"
    return "its input changed since it was planned: " + "; ".join(parts)

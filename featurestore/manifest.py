"""Inputs of a build: a folder of audio files, or a CSV / JSON manifest.

A manifest row names one audio file and what is known about it:

- ``path`` (required): absolute, or relative to the manifest's folder;
- ``id`` (optional): defaults to the path relative to the manifest folder, without suffix;
- ``split`` (optional): e.g. ``train`` / ``valid`` / ``test``;
- ``start`` / ``end`` (optional, seconds): only this region of the file is used;
- every other column is a label, kept as a string (lists/dicts in JSON manifests are kept as JSON text).

A row that does not parse is not fatal: it becomes a :class:`Skip` and the build goes on.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
RESERVED = ("path", "id", "split", "start", "end")


@dataclass
class Row:
    """One input file. ``start_s``/``end_s`` in seconds (None: whole file)."""

    path: Path
    id: str
    split: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None
    where: str = ""  # "manifest.csv row 12", for reports


@dataclass
class Skip:
    """Something the build did not store, and why (also written to the store)."""

    where: str
    reason: str
    message: str
    path: str = ""

    def as_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason, "message": self.message, "path": self.path}


def _label_text(v) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return "" if v is None else str(v)


def _parse_time(v, name: str) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    t = float(v)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{name}={v!r} is not a time in seconds >= 0")
    return t


def _row_from_record(rec: dict, base: Path, where: str) -> Row:
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object with a 'path', got {type(rec).__name__}")
    p = rec.get("path")
    if p is None or not str(p).strip():
        raise ValueError("no 'path'")
    path = Path(str(p).strip()).expanduser()
    if not path.is_absolute():
        path = base / path
    rid = str(rec.get("id") or "").strip() or _default_id(path, base)
    start, end = _parse_time(rec.get("start"), "start"), _parse_time(rec.get("end"), "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) <= start ({start})")
    labels = {k: _label_text(v) for k, v in rec.items() if k not in RESERVED and k is not None}
    return Row(path, rid, str(rec.get("split") or "").strip(), labels, start, end, where)


def _default_id(path: Path, base: Path) -> str:
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def read_inputs(input_path: str | Path) -> tuple[list[Row], list[Skip]]:
    """Rows and skipped rows of a folder (every audio file under it, sorted) or a .csv/.json manifest.

    Duplicate ids are skipped after the first. Raises FileNotFoundError / ValueError only when the
    input as a whole is unusable (missing, unknown format, not a list).
    """
    src = Path(input_path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    rows: list[Row] = []
    skips: list[Skip] = []
    if src.is_dir():
        for p in sorted(q for q in src.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES):
            rows.append(Row(p.resolve(), _default_id(p, src), where=str(p.relative_to(src))))
    elif src.suffix.lower() == ".csv":
        base = src.parent.resolve()
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{src}: a CSV manifest needs a header with a 'path' column")
            for i, rec in enumerate(reader, start=2):
                where = f"{src.name} line {i}"
                try:
                    if None in rec:
                        raise ValueError(f"{len(rec[None])} more field(s) than the header has")
                    rows.append(_row_from_record(rec, base, where))
                except ValueError as e:
                    skips.append(Skip(where, "bad_row", f"{where}: {e}", str(rec.get("path") or "")))
    elif src.suffix.lower() == ".json":
        base = src.parent.resolve()
        data = json.loads(src.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "clips" in data:
            data = data["clips"]
        if not isinstance(data, list):
            raise ValueError(f"{src}: a JSON manifest is a list of records (or {{'clips': [...]}})")
        for i, rec in enumerate(data):
            where = f"{src.name} record {i}"
            try:
                rows.append(_row_from_record(rec, base, where))
            except (ValueError, TypeError) as e:
                path = str(rec.get("path") or "") if isinstance(rec, dict) else ""
                skips.append(Skip(where, "bad_row", f"{where}: {e}", path))
    else:
        raise ValueError(f"input {src}: expected a folder, a .csv or a .json manifest")
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r.id in seen:
            skips.append(Skip(r.where, "duplicate_id", f"{r.where}: id {r.id!r} already used", str(r.path)))
            continue
        seen.add(r.id)
        unique.append(r)
    return unique, skips


def fingerprint(rows: list[Row]) -> str:
    """sha256 of what the rows say and of each file's size: a changed input invalidates a clip table."""
    h = hashlib.sha256()
    for r in rows:
        try:
            size = r.path.stat().st_size
        except OSError:
            size = -1
        h.update(json.dumps([str(r.path), r.id, r.split, sorted(r.labels.items()), r.start_s, r.end_s, size]).encode())
    return h.hexdigest()

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
    """A line of the build's report (also written to the store): something the build did not store,
    or stored only in part (reason ``truncated`` or ``end_past_end``), and why."""

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
    rid = "" if rec.get("id") is None else str(rec.get("id")).strip()  # an id of 0 is an id
    rid = rid or _default_id(path, base)
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
        rows, skips = _read_csv(src)
    elif src.suffix.lower() == ".json":
        base = src.parent.resolve()
        try:
            data = json.loads(src.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{src}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{src} line {e.lineno} column {e.colno}: not valid JSON: {e.msg}") from None
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


def check_header(names: list, src: Path) -> list[int]:
    """Column names of a CSV header -> positions of unnamed columns (to drop when they are empty in
    every row, e.g. a trailing comma). Raises ValueError naming the file, line 1 and the column for a
    missing ``path`` column, a repeated name, or a name that cannot be a label (``/``, or blank
    around text)."""
    if not names or "path" not in names:
        have = ", ".join(repr(n) for n in names or []) or "none"
        raise ValueError(f"{src} line 1: a CSV manifest needs a header with a 'path' column (columns: {have})")
    unnamed, seen = [], set()
    for k, name in enumerate(names, start=1):
        if not name.strip():
            unnamed.append(k - 1)
            continue
        if name != name.strip() or "/" in name or "\\" in name:
            raise ValueError(f"{src} line 1: column {k} is named {name!r}: a column name has no '/' or '\\' "
                             "and no leading or trailing spaces")
        if name in seen:
            raise ValueError(f"{src} line 1: column {name!r} appears twice")
        seen.add(name)
    return unnamed


def _read_csv(src: Path) -> tuple[list[Row], list[Skip]]:
    """Rows of a CSV manifest (a UTF-8 byte-order mark, as Excel writes, is accepted)."""
    base = src.parent.resolve()
    rows: list[Row] = []
    skips: list[Skip] = []
    line = 1
    try:
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            unnamed = check_header(header, src)
            named = [(k, n) for k, n in enumerate(header) if k not in unnamed]
            for values in reader:
                line = reader.line_num
                where = f"{src.name} line {line}"
                if not values:
                    continue  # an empty line
                try:
                    if len(values) > len(header):
                        raise ValueError(f"{len(values) - len(header)} more field(s) than the header has")
                    values = values + [""] * (len(header) - len(values))
                    filled = [k + 1 for k in unnamed if values[k].strip()]
                    if filled:
                        raise ValueError(f"a value in column(s) {filled}, which the header leaves unnamed")
                    rows.append(_row_from_record({n: values[k] for k, n in named}, base, where))
                except ValueError as e:
                    path = values[header.index("path")] if len(values) > header.index("path") else ""
                    skips.append(Skip(where, "bad_row", f"{where}: {e}", path))
    except UnicodeDecodeError as e:
        raise ValueError(f"{src} line {line + 1}: not UTF-8 text (byte {e.start} of a read block: {e.reason})") \
            from None
    except csv.Error as e:
        raise ValueError(f"{src} line {line + 1}: {e}") from None
    return rows, skips


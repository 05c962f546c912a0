"""Zarr metadata files of a store that cannot be read (truncated, not JSON, not Zarr format 3 node
metadata), found without opening the store through Zarr (which stops at the first one with a bare
JSON error naming no file).

:func:`damaged_metadata` walks the store's folders from the root: every ``zarr.json`` is parsed;
a group's sub-folders are walked, an array's are not (its chunks live there), and a chunk folder
``c`` (one without a ``zarr.json``) is never entered, so the walk costs one read per node, not one
per chunk. :attr:`DamagedFile.scope` says what the damage takes with it: the whole store (``root``,
or ``clips`` / ``inputs``: the clip table every backbone is laid out from), the ``backbones``
group's own file (attribute-free, rewritten as it was), or one backbone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from featurestore import layout
from featurestore.location import Location

NODE_FILE = "zarr.json"


@dataclass
class DamagedFile:
    """One unreadable metadata file: ``rel`` its path inside the store (``backbones/x/zarr.json``),
    ``path`` as shown to the user, ``error`` why it cannot be read."""

    rel: str
    path: str
    error: str

    @property
    def scope(self) -> tuple[str, str | None]:
        """("store", None) | ("backbones", None) | ("backbone", name)."""
        parts = self.rel.split("/")[:-1]  # the node's folder
        if parts[:1] == [layout.BACKBONES]:
            return ("backbones", None) if len(parts) == 1 else ("backbone", parts[1])
        return "store", None

    def text(self) -> str:
        return f"{self.path}: unreadable Zarr metadata ({self.error})"


def _node(raw: bytes) -> tuple[str | None, str | None]:
    """(node_type, None) for sound node metadata, (None, why) otherwise."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text: {e.reason}"
    except ValueError as e:
        return None, f"not valid JSON: {e}" + (" (empty file)" if not raw.strip() else "")
    if not isinstance(doc, dict) or doc.get("node_type") not in ("group", "array") or doc.get("zarr_format") != 3:
        return None, "not the metadata of a Zarr format 3 group or array"
    return doc["node_type"], None


def _listing(loc: Location, rel: str) -> tuple[list[str], bool]:
    """(sub-folder names, whether the folder holds a zarr.json) of folder ``rel`` of the store."""
    target = loc.join(rel) if rel else (loc.fs_path if loc.is_url else loc.path)
    if loc.is_url:
        try:
            entries = loc.fs.ls(target, detail=True)
        except FileNotFoundError:
            return [], False
        dirs = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        has = any(e["name"].rstrip("/").rsplit("/", 1)[-1] == NODE_FILE for e in entries
                  if e.get("type") != "directory")
        return dirs, has
    try:
        entries = list(target.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return [], False
    return [e.name for e in entries if e.is_dir()], any(e.name == NODE_FILE and e.is_file() for e in entries)


def _read(loc: Location, rel: str) -> bytes:
    target = loc.join(rel)
    if loc.is_url:
        with loc.fs.open(target, "rb") as f:
            return f.read()
    return target.read_bytes()


def damaged_metadata(where) -> list[DamagedFile]:
    """Every unreadable ``zarr.json`` of the store at ``where`` (a path, URL or Location), in walk
    order (the root first). Empty for a sound store, and for a place holding no store."""
    loc = where if isinstance(where, Location) else Location(where)
    out: list[DamagedFile] = []
    todo = [""]
    while todo:
        rel = todo.pop(0)
        dirs, has = _listing(loc, rel)
        kind = None
        if has:
            meta = f"{rel}/{NODE_FILE}" if rel else NODE_FILE
            try:
                kind, why = _node(_read(loc, meta))
            except OSError as e:
                why = f"cannot be read: {e}"
            if why is not None:
                out.append(DamagedFile(meta, loc.display(loc.join(meta)), why))
        if kind == "array":
            continue  # its sub-folders hold chunks
        for d in sorted(dirs):
            sub = f"{rel}/{d}" if rel else d
            if d == "c" and not _listing(loc, sub)[1]:
                continue  # a chunk folder of an array whose metadata is damaged
            todo.append(sub)
    return out


class DamagedStore(RuntimeError):
    """The store's root metadata is unreadable: only ``--overwrite`` (a build from scratch) recovers it."""


_EMPTY_GROUP = json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2).encode()


def _remove(loc: Location, rel: str) -> None:
    target = loc.join(rel)
    if loc.is_url:
        if loc.fs.exists(target):
            loc.fs.rm(target, recursive=True)
    else:
        import shutil

        shutil.rmtree(target, ignore_errors=True)


def _write(loc: Location, rel: str, data: bytes) -> None:
    target = loc.join(rel)
    if loc.is_url:
        with loc.fs.open(target, "wb") as f:
            f.write(data)
    else:
        target.write_bytes(data)


def clear_damaged(where, backbones, *, overwrite: bool, log=print) -> list[DamagedFile]:
    """Make a store whose metadata files are damaged buildable again; returns what was found.

    - the root ``zarr.json``: with ``overwrite`` the store is deleted (the build then makes it from
      scratch: equal to a clean build); without, :class:`DamagedStore` names the file;
    - a file of the clip table (``clips/``, ``inputs/``): both groups are deleted, so the build plans
      the clip table again (from the same input and settings it is the same table, and the
      backbones laid out on it are kept, as for any damaged clip table);
    - ``backbones/zarr.json``: written again (it holds no attributes);
    - a file of a backbone in ``backbones`` (the names being built): that backbone is deleted and
      extracted again; damage in another backbone is left (and said).

    The caller holds the store's lock. ``log`` receives one line per action."""
    loc = where if isinstance(where, Location) else Location(where)
    damaged = damaged_metadata(loc)
    if not damaged:
        return []
    if any(d.rel == NODE_FILE for d in damaged):
        root = next(d for d in damaged if d.rel == NODE_FILE)
        if not overwrite:
            raise DamagedStore(f"{root.text()}; the store's settings are lost with it: pass --overwrite to build the "
                               "store again from its input (every backbone in it is extracted again)")
        log(f"note: {root.text()}: --overwrite deletes the store and builds it again from its input")
        loc.remove()
        return damaged
    scopes = {d.scope for d in damaged}
    for d in damaged:
        log(f"note: {d.text()}")
    if ("store", None) in scopes:
        log("note: planning the clip table again (backbones laid out on the same table are kept)")
        for group in (layout.CLIPS, layout.INPUTS):
            _remove(loc, group)
    if ("backbones", None) in scopes:
        _write(loc, f"{layout.BACKBONES}/{NODE_FILE}", _EMPTY_GROUP)
    for scope, name in sorted(s for s in scopes if s[0] == "backbone"):
        if name in set(backbones):
            log(f"note: backbone {name!r} is deleted and extracted again")
            _remove(loc, f"{layout.BACKBONES}/{name}")
        else:
            log(f"note: backbone {name!r} is left as it is (not built by this command): build it with --backbone "
                f"{name} --overwrite to extract it again")
    return damaged

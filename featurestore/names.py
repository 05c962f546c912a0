"""Names that become paths: clip ids mapped to file names, backbone names checked.

- :func:`safe_name`: the one mapping from a clip id to a file (or HDF5 group) name, used by every
  writer of per-clip files (``featurestore.export``, the notes and MIDI files of evaluations and
  predictions). Percent-encoding, so one-to-one: ``x/y`` -> ``x%2Fy`` and ``x_y`` -> ``x_y`` never
  share a file.
- :func:`check_backbone_name`: a backbone name is one path component of the store
  (``backbones/<name>``): no ``/`` or ``\\``, no leading ``.``, not empty, no control characters.
"""
from __future__ import annotations

from urllib.parse import quote

#: the longest file name :func:`safe_name` makes (most file systems allow 255 bytes)
MAX_NAME = 240


def safe_name(clip_id: str) -> str:
    """A file / HDF5 group name for a clip id: UTF-8 percent-encoding of every character but
    letters, digits and ``_.-~`` (so ``song/a#0001`` -> ``song%2Fa%230001``), a leading ``.`` as
    ``%2E`` (no hidden files, no ``.``/``..``). One-to-one, so two ids never share a name. Raises
    ValueError naming the id when it is empty or its name would be longer than :data:`MAX_NAME`."""
    name = quote(str(clip_id), safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"clip id {clip_id!r}: its file name would be {len(name)} characters "
                         f"(1 to {MAX_NAME} allowed)")
    return name


def check_backbone_name(name: str, what: str = "backbone name") -> str:
    """``name`` when it can be a store group (one path component); ValueError naming ``what``
    otherwise (``/`` or ``\\`` inside, a leading ``.``, empty, control characters)."""
    why = None
    if not isinstance(name, str) or not name.strip():
        why = "it is empty"
    elif "/" in name or "\\" in name:
        why = "it contains '/' or '\\' (a backbone is one group of the store, not nested groups)"
    elif name.startswith("."):
        why = "it starts with '.'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "it contains control characters"
    if why:
        raise ValueError(f"{what} {name!r}: {why}")
    return name

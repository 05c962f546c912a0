"""Where a store lives: a local folder or an fsspec URL (``s3://bucket/songs.zarr``, ``gs://...``,
``memory://songs.zarr``, ``file:///shared/songs.zarr``).

Every module asks here instead of assuming a local path. A store argument containing ``://`` is a
URL and goes through fsspec (``file://`` included, so a shared file system can be used the way an
object store is); anything else is a local path handled exactly as before (OS locks, memory-mapped
chunk reads). Options for the file system (credentials, endpoints) come from fsspec's own
configuration (environment variables, ``~/.config/fsspec``).

>>> loc = Location("memory://demo/songs.zarr")
>>> loc.is_url, loc.join("clips", "zarr.json")      # (True, '/demo/songs.zarr/clips/zarr.json'): a path in loc.fs
"""
from __future__ import annotations

from pathlib import Path

import zarr


def is_url(x) -> bool:
    """True when ``x`` (str or Path) names an fsspec URL rather than a local path."""
    return not isinstance(x, Path) and "://" in str(x)


class Location:
    """A store's place. ``is_url``: reached through fsspec (``fs`` the file system, ``fs_path`` the
    store's path inside it); otherwise ``path`` is the local folder."""

    def __init__(self, where: str | Path | Location):
        if isinstance(where, Location):
            where = where.url if where.is_url else where.path
        self.is_url = is_url(where)
        if self.is_url:
            import fsspec

            self.url = str(where).rstrip("/")
            try:
                self.fs, self.fs_path = fsspec.core.url_to_fs(self.url)
            except (ValueError, ImportError) as e:  # unknown protocol, or its package is not installed
                raise ValueError(f"cannot open the store URL {self.url!r}: {e}") from None
            self.fs_path = self.fs_path.rstrip("/")
            self.path = None
        else:
            self.url, self.fs, self.fs_path = None, None, None
            self.path = Path(where)

    def __str__(self) -> str:
        return self.url if self.is_url else str(self.path)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    @property
    def name(self) -> str:
        """Last part of the store's path (``songs.zarr``)."""
        return self.fs_path.rsplit("/", 1)[-1] if self.is_url else self.path.name

    def sibling(self, name: str) -> Location:
        """The place ``name`` beside the store (same folder or URL prefix)."""
        if self.is_url:
            return Location(self.url.rsplit("/", 1)[0] + "/" + name)
        return Location(self.path.with_name(name))

    def join(self, *parts: str):
        """A file inside the store: a local Path, or (URL) the file's path inside ``fs``."""
        if self.is_url:
            return "/".join([self.fs_path, *(str(p).strip("/") for p in parts)])
        return self.path.joinpath(*parts)

    def display(self, target) -> str:
        """``target`` (from :meth:`join`) as the user should see it in messages."""
        return self.fs.unstrip_protocol(target) if self.is_url else str(target)

    def size(self, target) -> int:
        """Bytes in file ``target`` (from :meth:`join`); FileNotFoundError when it is absent."""
        if not self.is_url:
            return Path(target).stat().st_size
        info = self.fs.info(target)  # raises FileNotFoundError
        if info.get("type") == "directory":
            raise FileNotFoundError(target)
        return int(info["size"])

    def is_file(self, *parts: str) -> bool:
        target = self.join(*parts)
        if not self.is_url:
            return target.is_file()
        return self.fs.isfile(target)

    def exists(self, *parts: str) -> bool:
        """Whether anything (a file, folder or prefix) is at the store's place, or at ``parts`` inside it."""
        target = self.join(*parts)
        return self.fs.exists(target) if self.is_url else target.exists()

    def remove(self) -> None:
        """Delete the store and everything in it (missing: nothing happens)."""
        if self.is_url:
            if self.fs.exists(self.fs_path):
                self.fs.rm(self.fs_path, recursive=True)
        else:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)

    def zarr_store(self, read_only: bool = False):
        """What ``zarr.open_group`` takes: the local path, or an FsspecStore for the URL."""
        if not self.is_url:
            return str(self.path)
        from zarr.storage import FsspecStore

        # the local file system of fsspec does not make folders on write unless asked to
        opts = {"auto_mkdir": True} if "file" in _protocols(self.fs) else {}
        return FsspecStore.from_url(self.url, storage_options=opts or None, read_only=read_only)

    def open_group(self, mode: str = "r") -> zarr.Group:
        """The store's root group (Zarr format 3)."""
        return zarr.open_group(self.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)


def _protocols(fs) -> tuple:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def store_location(root: zarr.Group) -> Location:
    """Where an open root group lives (the inverse of :meth:`Location.open_group`)."""
    store = root.store
    fs = getattr(store, "fs", None)
    if fs is not None:  # FsspecStore (its fs may be an async wrapper of the user's file system)
        inner = getattr(fs, "sync_fs", fs)
        return Location(inner.unstrip_protocol(str(store.path).rstrip("/")))
    return Location(Path(store.root))

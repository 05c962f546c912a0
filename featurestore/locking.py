"""An exclusive lock on a store, taken by the build while it changes shared metadata.

What takes it: planning the clip table, planning a backbone (and the deletions of ``--overwrite``),
marking a backbone complete, and ``featurestore.verify --repair``. Unit writes never take it: each
unit owns its own chunks (:mod:`featurestore.layout`), so extraction stays lock-free. A build that
finds the store already planned takes no lock at all; one that has to plan re-checks the state
once it holds the lock (another process may have planned it meanwhile) and only then writes.

Two kinds, one interface (:class:`StoreLock`):

- ``flock``: an OS lock (``fcntl.flock``) on ``<store>.lock``, a file beside the store. The kernel
  drops it when its process dies, so it is never stale. The holder writes who it is into the file
  (for the waiting message) and deletes the file when it lets go; a process that locked a file that
  was deleted meanwhile notices (the path no longer names its file) and tries again.
- ``lease``: for file systems where OS locks do not work. ``<store>.lease`` holds JSON (host, pid,
  token, since, expires, what); it is created atomically (``os.link`` of a finished file, so nobody
  reads half of it), renewed every ``ttl / 3`` seconds by a thread while held, and taken over when
  its expiry has passed or its owner is a dead process on this host. Every change to an existing
  lease (renew, take-over, release) happens under a short-lived guard file created with
  ``O_EXCL``, so a take-over never removes a lease that was just renewed. Hosts sharing the store
  must agree on the clock to well within ``ttl`` (30 s by default).
- ``auto`` (default): ``flock``, or ``lease`` where the file system refuses ``flock``.

Neither kind follows a symbolic link: a lock, lease or guard path that is a link or not a regular
file is refused (:class:`LockPathRefused`, naming the path) and nothing is written through it; the
lock file itself is opened with ``O_NOFOLLOW``.

A store on an fsspec URL (:mod:`featurestore.location`) always uses the lease, kept beside the store
through fsspec: exclusive creation is fsspec's ``open(path, "xb")`` (object stores need conditional
writes for it; a file system without them is refused with a clear error), a renewal overwrites the
object. ``flock`` is refused for URLs.

All processes building one store must use the same kind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

KINDS = ("auto", "flock", "lease")

#: errno values meaning "this file system does not do flock" (as opposed to "someone holds it")
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockTimeout(RuntimeError):
    """Gave up waiting for another process's lock on a store (the message names the holder)."""


class LockLost(RuntimeError):
    """A lease expired while held (the process stalled for longer than the lease time)."""


class LockUnsupported(OSError):
    """The file system does not support OS file locks."""


class LockPathRefused(OSError):
    """The lock or lease path is a symbolic link or not a regular file: it is never followed or used.
    Printed as its message alone (no ``[Errno 40]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())


def _check_lock_file(path: Path) -> None:
    """Refuse a lock/lease path that exists as anything but a regular file (a symlink, a folder, a
    FIFO ...): a lock must never write through a link into another file (:class:`LockPathRefused`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        what = f"a symbolic link (to {os.readlink(path)})"
    elif not stat.S_ISREG(st.st_mode):
        what = "not a regular file"
    else:
        return
    raise LockPathRefused(errno.ELOOP, f"the lock file {path} is {what}; locks never follow links or use "
                                        "special files. Remove it (nothing is written through it) and run again")


def lock_path(store_path, kind: str) -> Path:
    """The lock file of a store: ``<store>.lock`` (flock) or ``<store>.lease`` (lease), beside it."""
    p = Path(store_path)
    return p.with_name(p.name + (".lease" if kind == "lease" else ".lock"))


def describe_holder(info: dict | None) -> str:
    """'host:pid since 2024-05-01 12:00:03 (planning the clip table)' from a lock file's JSON."""
    if not info:
        return "another process"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    what = f" ({info['what']})" if info.get("what") else ""
    return f"{info.get('host', '?')}:{info.get('pid', '?')} since {when}{what}"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but is not ours, or unreadable: assume alive
    return True


class _Flock:
    """``fcntl.flock`` on a lock file that the holder deletes when it lets go."""

    kind = "flock"

    def __init__(self, path: Path):
        import fcntl  # ImportError on systems without it (then 'auto' uses a lease)

        self.fcntl, self.path, self.fd = fcntl, path, None

    def try_acquire(self, info: dict) -> bool:
        fcntl = self.fcntl
        for _ in range(100):  # retries only when the file was replaced under us
            _check_lock_file(self.path)
            try:  # O_NOFOLLOW: a link planted between the check and the open is refused, not followed
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0),
                             0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    _check_lock_file(self.path)
                raise
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                _check_lock_file(self.path)
                raise LockPathRefused(errno.EINVAL, f"the lock file {self.path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as e:
                os.close(fd)
                if e.errno in _UNSUPPORTED:
                    raise LockUnsupported(e.errno, f"flock is not supported on {self.path.parent}: {e.strerror}")
                raise
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            mine = os.fstat(fd)
            if st is None or (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
                os.close(fd)  # the holder before us deleted this file after we opened it: lock the new one
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            self.fd = fd
            return True
        return False

    def holder(self) -> dict | None:
        return _read_json(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def check(self) -> None:
        pass  # an OS lock cannot be lost while its process lives

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still holding it: waiters that locked this inode will retry
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


class _LocalFiles:
    """The file operations a lease needs, on a local (or mounted) file system."""

    def sibling(self, path: Path, suffix: str) -> Path:
        return path.with_name(path.name + suffix)

    def create_new(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` at once, or raise FileExistsError when it exists (``os.link`` of a
        finished file, so nobody reads half of it)."""
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def touch_new(self, path: Path) -> None:
        _check_lock_file(path)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))

    def replace(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def read_json(self, path: Path) -> dict | None:
        _check_lock_file(path)
        return _read_json(path)

    def check(self, path: Path) -> None:
        _check_lock_file(path)

    def mtime(self, path: Path) -> float:
        return path.stat().st_mtime

    def remove(self, path: Path) -> None:
        path.unlink()

    def exists(self, path: Path) -> bool:
        return path.exists()


class _FsspecFiles:
    """The same operations through an fsspec file system (paths are strings inside ``fs``)."""

    def __init__(self, fs):
        self.fs = fs

    def sibling(self, path: str, suffix: str) -> str:
        return path + suffix

    def check(self, path: str) -> None:
        pass  # object stores have no links

    def create_new(self, path: str, data: bytes) -> None:
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except (NotImplementedError, ValueError) as e:
            raise LockUnsupported(errno.ENOSYS, f"{self.fs.unstrip_protocol(path)}: this file system cannot create a "
                                                f"file only if it is absent ({e}), so it cannot hold a lease") from None

    def touch_new(self, path: str) -> None:
        self.create_new(path, b"")

    def replace(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def read_json(self, path: str) -> dict | None:
        try:
            data = json.loads(self.fs.cat_file(path))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def mtime(self, path: str) -> float:
        try:
            return self.fs.modified(path).timestamp()
        except NotImplementedError:  # no modification time: treat it as made now (expires after ttl from the lease)
            self.fs.info(path)  # FileNotFoundError when absent
            return time.time()

    def remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)


class _Lease:
    """A lease file renewed by a thread; see the module docstring. ``files``: how its files are
    made (:class:`_LocalFiles` by default, :class:`_FsspecFiles` for a store on a URL)."""

    kind = "lease"

    def __init__(self, path, ttl: float, files=None):
        self.path, self.ttl = path, float(ttl)
        self.files = files or _LocalFiles()
        self.guard_path = self.files.sibling(path, ".guard")
        self.token: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: dict = {}

    @contextlib.contextmanager
    def _guard(self):
        """Exclusive right to change an existing lease file, for a moment."""
        deadline = time.monotonic() + max(10.0, self.ttl)
        while True:
            try:
                self.files.touch_new(self.guard_path)
                break
            except FileExistsError:
                try:  # a guard older than the lease time belongs to a process that died inside it
                    if time.time() - self.files.mtime(self.guard_path) > max(10.0, self.ttl):
                        self.files.remove(self.guard_path)
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise LockTimeout(f"the guard file {self.guard_path} stays in place; remove it if no build "
                                      "of this store is running") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.files.remove(self.guard_path)

    def _stale(self, cur: dict | None) -> bool:
        if cur is None:  # unreadable: stale once it is older than the lease time
            try:
                return time.time() - self.files.mtime(self.path) > self.ttl
            except FileNotFoundError:
                return False
        expires = cur.get("expires")
        if not isinstance(expires, (int, float)) or expires < time.time():
            return True
        return cur.get("host") == socket.gethostname() and not _pid_alive(cur.get("pid"))

    def try_acquire(self, info: dict) -> bool:
        self.files.check(self.path)
        self.files.check(self.guard_path)
        token = uuid.uuid4().hex
        data = {**info, "token": token, "expires": time.time() + self.ttl}
        try:
            self.files.create_new(self.path, json.dumps(data).encode())  # atomic: fails if a lease exists
        except FileExistsError:
            cur = self.files.read_json(self.path)
            if self._stale(cur):
                with self._guard():  # take it over only if it is still the stale one we saw
                    again = self.files.read_json(self.path)
                    same = (again or {}).get("token") == (cur or {}).get("token")
                    if same and self._stale(again):
                        with contextlib.suppress(FileNotFoundError):
                            self.files.remove(self.path)
                return self.try_acquire(info) if not self.files.exists(self.path) else False
            return False
        self.token, self._info, self.lost = token, data, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="featurestore-lease", daemon=True)
        self._thread.start()
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew()
            except OSError:
                pass  # a failed renewal is retried; the lease only runs out after ttl
            if self.lost:
                return

    def _renew(self) -> None:
        with self._guard():
            cur = self.files.read_json(self.path)
            if (cur or {}).get("token") != self.token:
                self.lost = True
                return
            self._info = {**self._info, "expires": time.time() + self.ttl}
            self.files.replace(self.path, json.dumps(self._info).encode())

    def holder(self) -> dict | None:
        return self.files.read_json(self.path)

    def exists(self) -> bool:
        return self.files.exists(self.path)

    def check(self) -> None:
        if self.lost:
            raise LockLost(f"the lease {self.path} was taken over while this process held it (it stalled for "
                           f"more than the lease time, {self.ttl:g} s); run the build again")

    def release(self) -> None:
        if self.token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._guard():
            if (self.files.read_json(self.path) or {}).get("token") == self.token:
                self.files.remove(self.path)
        self.token, self._thread = None, None


class StoreLock:
    """Exclusive, re-entrant lock on one store (see the module docstring).

    ``kind``: auto | flock | lease. ``timeout``: seconds to wait for another holder before raising
    :class:`LockTimeout` (None: wait as long as it takes). ``ttl``: lease time in seconds (lease
    kind). ``log``: where the waiting message goes (default: stderr).

    >>> lock = StoreLock("songs.zarr")
    >>> with lock.hold("planning the clip table"):
    ...     ...
    """

    def __init__(self, store_path, kind: str = "auto", timeout: float | None = None, *, poll: float = 0.1,
                 ttl: float = 30.0, log=None):
        if kind not in KINDS:
            raise ValueError(f"lock kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"the lock timeout must be >= 0 seconds, got {timeout}")
        from featurestore.location import Location

        self.location = Location(store_path)  # a local folder or an fsspec URL
        if self.location.is_url and kind == "flock":
            raise LockUnsupported(errno.EOPNOTSUPP, f"{self.location}: a store on a URL has no OS locks; "
                                                    "use the lease lock (--lock lease or auto)")
        self.store_path = self.location.url if self.location.is_url else self.location.path
        self.kind, self.timeout, self.poll, self.ttl = kind, timeout, poll, ttl
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._backend = None
        self._depth = 0
        self._mutex = threading.RLock()

    def check_paths(self) -> None:
        """Refuse now (:class:`LockPathRefused`) a local lock or lease file this lock would use that is
        a symbolic link or not a regular file, so a command can stop before it writes anything."""
        if self.location.is_url:
            return
        for kind in (("flock", "lease") if self.kind == "auto" else (self.kind,)):
            _check_lock_file(lock_path(self.store_path, kind))

    def _make_backend(self, kind: str):
        if self.location.is_url:  # <store>.lease beside the store, through fsspec
            loc = self.location
            return _Lease(loc.fs_path + ".lease", self.ttl, _FsspecFiles(loc.fs))
        path = lock_path(self.store_path, kind)
        return _Lease(path, self.ttl) if kind == "lease" else _Flock(path)

    def _acquire(self, what: str) -> None:
        if self.location.is_url:
            parent = self.location.fs_path.rsplit("/", 1)[0]
            if parent:
                self.location.fs.makedirs(parent, exist_ok=True)  # a folder on file systems that have them
        else:
            self.store_path.parent.mkdir(parents=True, exist_ok=True)
        kind = "lease" if self.location.is_url else "flock" if self.kind == "auto" else self.kind
        try:
            backend = self._make_backend(kind)
        except ImportError:
            if self.kind == "flock":
                raise LockUnsupported(errno.ENOSYS, "fcntl.flock is not available here; use the lease lock") from None
            backend = self._make_backend(kind := "lease")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
        start, announced = time.monotonic(), None
        while True:
            try:
                if backend.try_acquire(info):
                    break
            except LockUnsupported as e:
                if self.kind != "auto" or self.location.is_url:
                    raise
                self.log(f"note: {e}; using a lease file instead")
                backend = self._make_backend(kind := "lease")
                continue
            holder = backend.holder()
            acquired = False
            for _ in range(300):  # a holder writes who it is just after locking: give it up to 3 s (a loaded machine)
                if holder is not None or not backend.exists():
                    break
                time.sleep(0.01)
                if backend.try_acquire(info):  # or it let go meanwhile (its record already cleared): take it
                    acquired = True
                    break
                holder = backend.holder()
            if acquired:
                break
            waited = time.monotonic() - start
            if self.timeout is not None and waited >= self.timeout:
                # timeout 0 (a run folder: a second fit stops at once) never waited: say it is busy
                wait = "is busy: its lock is" if self.timeout == 0 else \
                    f"gave up after {waited:.0f} s waiting for the lock on it:"
                raise LockTimeout(
                    f"{self.store_path} {wait} held by {describe_holder(holder)} (lock file {backend.path}); "
                    f"run again once that process is done")
            key = (holder or {}).get("pid"), (holder or {}).get("host"), (holder or {}).get("what")
            if key != announced:
                announced = key
                hint = "" if self.timeout is not None else "; --lock-timeout SECONDS gives up instead"
                self.log(f"waiting for the lock on {self.store_path} held by {describe_holder(holder)}{hint}")
            time.sleep(self.poll)
        self._backend = backend

    @contextlib.contextmanager
    def hold(self, what: str):
        """Hold the lock for the ``with`` block; ``what`` is shown to processes that wait for it."""
        with self._mutex:
            if self._depth == 0:
                self._acquire(what)
            self._depth += 1
            try:
                yield self
                self._backend.check()
            finally:
                self._depth -= 1
                if self._depth == 0:
                    backend, self._backend = self._backend, None
                    backend.release()

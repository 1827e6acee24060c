"""Where a restored file lands: its temp file beside its real name, the check of its bytes
against the object's digest, and its mtime; shared by the paths of :mod:`syncd.restore`."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .beneath import NotBeneath, RootDir
from .download import CHUNK, Interrupted
from .store import META_MTIME, META_RCLONE_MTIME, RemoteObject, StoreError

TEMP_PREFIX = ".syncd-restore-"
TEMP_SUFFIX = ".tmp"
WRITE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def mtime_ns(obj: RemoteObject) -> int | None:
    """The file's mtime: syncd's nanoseconds, else rclone's decimal seconds, else LastModified."""
    meta = obj.meta or {}
    try:
        if META_MTIME in meta:
            return int(meta[META_MTIME])
        if META_RCLONE_MTIME in meta:
            return int(Decimal(meta[META_RCLONE_MTIME]) * 1_000_000_000)
    except (ValueError, InvalidOperation):
        pass
    return None if obj.modified is None else int(obj.modified * 1_000_000_000)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, NotBeneath):
        return f"not written: {exc.strerror} (a symlink in the target is never followed)"
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on the target filesystem"
        if exc.errno == errno.EDQUOT:
            return "disk quota exceeded on the target filesystem"
        return f"{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class TempFile:
    """A temp file ``name`` in ``dir_fd``, created with O_EXCL (never following a symlink):
    closed on leaving, and removed unless it was renamed into place (``placed``)."""

    def __init__(self, dir_fd: int, name: str):
        self.dir_fd = dir_fd
        self.name = name
        self.fd = -1
        self.placed = False

    def __enter__(self) -> TempFile:
        self.fd = os.open(self.name, WRITE_FLAGS, 0o666, dir_fd=self.dir_fd)
        return self

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)
        if not self.placed:
            try:
                os.unlink(self.name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass


@dataclass
class _Held:
    fd: int
    fresh: bool   # this run's mkdir created it (empty then)
    users: int    # files in flight in it, plus one while the sender is in it


class HeldDirs:
    """Directory fds shared by the small files in flight in them: a directory is opened once
    while files in it are in flight, and closed when the last is finished. The sender holds
    the directory it is sending into (:meth:`hold`, one thread); finishers :meth:`drop`."""

    def __init__(self, root: RootDir, made: set[str]):
        """``made``: the directories this run's mkdir created (shared with the workers)."""
        self._root = root
        self._made = made
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._current: str | None = None  # the directory the sender is in

    def hold(self, parent: str) -> tuple[int, bool]:
        """An fd of ``parent`` for one more file in flight, and whether this run created it."""
        if self._current != parent:
            self.release_current()
            self._use(parent)
            self._current = parent
        return self._use(parent)

    def release_current(self) -> None:
        """The sender is done with its directory (it moved on, or the listing ended)."""
        if self._current is not None:
            self.drop(self._current)
            self._current = None

    def drop(self, parent: str) -> None:
        """One use of ``parent`` is over."""
        with self._lock:
            held = self._held[parent]
            held.users -= 1
            if held.users:
                return
            del self._held[parent]
        os.close(held.fd)

    def _use(self, parent: str) -> tuple[int, bool]:
        with self._lock:
            held = self._held.get(parent)
            if held is not None:
                held.users += 1
                return held.fd, held.fresh
        # Only the sender opens, so nobody adds this directory meanwhile.
        fd = self._root.make_dirs(parent, self._made)
        held = _Held(fd, parent in self._made, 1)
        with self._lock:
            self._held[parent] = held
        return held.fd, held.fresh


def unverified(expected: tuple[str, str] | None, actual: str | None) -> str | None:
    """Why bytes whose digest is ``actual`` must not be put in place, or None."""
    if expected is None:
        return ("cannot verify: the object has no syncd-sha256 and a multipart ETag "
                "(written by another client); not written into place")
    if actual != expected[1]:
        return (f"checksum mismatch: {expected[0]} of the bytes is {actual}, the object says "
                f"{expected[1]} (altered in the bucket?); not written into place")
    return None


def lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def hash_fd(fd: int, algorithm: str, stop: threading.Event) -> str:
    digest = hashlib.new(algorithm)
    while piece := os.read(fd, CHUNK):
        if stop.is_set():
            raise Interrupted()
        digest.update(piece)
    return digest.hexdigest()

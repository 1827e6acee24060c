"""Transfers: carry out one planned change against the object store and say how it ended.

Runs in pool threads. Never touches the journal: it returns :class:`~syncd.journal.Outcome`
values that the scheduler records in batches, after the S3 operation succeeded.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat as statmod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from .config import FolderConfig
from .journal import Entry, Outcome, Pending
from .store import FOLDER, META_MTIME, META_SHA256, TRANSIENT, ObjectStore, StoreError

READ_CHUNK = 1024 * 1024
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0  # a long outage never drops a change; it is retried at least every 5 min


class FileChanged(Exception):
    """The file changed while it was read: the bytes are not one version of it."""


def backoff(attempts: int) -> float:
    """Exponential backoff with jitter (half to full of the capped exponential)."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempts, 16))) * random.uniform(0.5, 1.0))


@dataclass
class Task:
    """One unit of pool work. ``kind``: upload, copy or delete (a batch of up to 1000)."""

    kind: str
    items: list[Pending]
    cost: int = 0                       # bytes held against the in-flight budget
    copy_from: Entry | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return self.items[0].path


@dataclass
class Result:
    task: Task
    outcomes: list[Outcome]
    folder_error: StoreError | None = None
    bytes_sent: int = 0
    files: int = 0


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_ctime_ns)


class _VerifyingReader:
    """A non-seekable reader that hashes what it hands out and checks the file at EOF.

    Raising from read() makes the multipart upload abort, so a file changed during its
    upload is never published torn.
    """

    def __init__(self, f: BinaryIO, fd: int, before: os.stat_result, expect_sha: bytes):
        self._f, self._fd, self._before, self._expect = f, fd, before, expect_sha
        self._hash = hashlib.sha256()
        self._n = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        self._n += len(data)
        if not data or (n < 0):
            if (self._n != self._before.st_size or not _same_version(self._before, os.fstat(self._fd))
                    or self._hash.digest() != self._expect):
                raise FileChanged("file changed during upload")
        return data


class Transfers:
    """Executes tasks for one folder; thread-safe, stateless apart from the store."""

    def __init__(self, folder: FolderConfig, store: ObjectStore):
        self.folder = folder
        self.store = store
        self.root = Path(folder.path)
        self._log = structlog.get_logger("syncd.transfer").bind(folder=folder.name)
        self._lock = threading.Lock()
        self.ops = {"put": 0, "copy": 0, "delete": 0}

    def run(self, task: Task) -> Result:
        """Entry point for a pool thread: never raises."""
        log = self._log.bind(path=task.path, op=task.kind)
        try:
            if task.kind == "upload":
                return self._upload(task)
            if task.kind == "copy":
                return self._copy(task)
            if task.kind == "delete":
                return self._delete(task)
            raise ValueError(f"unknown task kind {task.kind}")
        except StoreError as exc:
            return self._failed(task, exc)
        except Exception as exc:  # a bug must not kill the pool thread or lose the change
            log.exception("transfer.crashed", error=str(exc))
            p = task.items[0]
            return Result(task, [Outcome("retry", i.path, i.gen, error=f"internal error: {exc}",
                                         delay=backoff(p.attempts)) for i in task.items])

    def _count(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.ops[op] += n

    # ------------------------------------------------------------------ upload

    def _upload(self, task: Task) -> Result:
        p = task.items[0]
        key = self.folder.key_for(p.path)
        abspath = self.root / p.path
        started = time.monotonic()
        try:
            fd = os.open(abspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            # Gone since it was planned: look again now (it becomes a delete or nothing).
            return Result(task, [Outcome("defer", p.path, p.gen)])
        except OSError as exc:
            return self._unreadable(task, exc)
        with os.fdopen(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            if not statmod.S_ISREG(before.st_mode):
                return Result(task, [Outcome("defer", p.path, p.gen)])
            try:
                if before.st_size <= self.folder.multipart_threshold:
                    data, digest = self._read_whole(f, fd, before)
                    meta = {META_MTIME: str(before.st_mtime_ns), META_SHA256: digest.hex()}
                    put = self.store.put(key, data, meta, digest)
                    self._count("put")
                else:
                    digest = self._hash_file(f, fd, before)
                    f.seek(0)
                    meta = {META_MTIME: str(before.st_mtime_ns), META_SHA256: digest.hex()}
                    reader = _VerifyingReader(f, fd, before, digest)
                    put = self.store.put_stream(key, reader, before.st_size, meta)  # type: ignore[arg-type]
                    self._count("put")
            except FileChanged:
                self._log.info("upload.file_changed", path=p.path)
                return Result(task, [Outcome("defer", p.path, p.gen, delay=self.folder.settle)])
            except OSError as exc:
                return self._unreadable(task, exc)
        entry = Entry(p.path, before.st_size, before.st_mtime_ns, before.st_ino, digest.hex(), put.etag)
        self._log.debug("upload.done", key=key, bytes=before.st_size,
                        ms=round((time.monotonic() - started) * 1000, 1))
        return Result(task, [Outcome("done", p.path, p.gen, entry=entry)], bytes_sent=put.bytes_sent, files=1)

    def _read_whole(self, f: BinaryIO, fd: int, before: os.stat_result) -> tuple[bytes, bytes]:
        # Read one byte past the expected size to notice a file that grew meanwhile.
        chunks, n = [], 0
        while n <= before.st_size:
            chunk = f.read(before.st_size + 1 - n)
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) != before.st_size or not _same_version(before, os.fstat(fd)):
            raise FileChanged("file changed while it was read")
        return data, hashlib.sha256(data).digest()

    def _hash_file(self, f: BinaryIO, fd: int, before: os.stat_result) -> bytes:
        h = hashlib.sha256()
        n = 0
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            n += len(chunk)
        if n != before.st_size or not _same_version(before, os.fstat(fd)):
            raise FileChanged("file changed while it was hashed")
        return h.digest()

    def _unreadable(self, task: Task, exc: OSError) -> Result:
        p = task.items[0]
        reason = (f"cannot read {self.root / p.path}: {exc.strerror}; fix its permissions "
                  f"(syncd runs as uid {os.getuid()})")
        self._log.error("upload.unreadable", path=p.path, error=reason)
        return Result(task, [Outcome("park", p.path, p.gen, error=reason)])

    # ------------------------------------------------------------------ copy (rename)

    def _copy(self, task: Task) -> Result:
        p = task.items[0]
        src = task.copy_from
        assert src is not None
        key = self.folder.key_for(p.path)
        try:
            st = os.lstat(self.root / p.path)
        except FileNotFoundError:
            return Result(task, [Outcome("defer", p.path, p.gen)])
        if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
            return self._upload(task)
        try:
            etag = self.store.copy(self.folder.key_for(src.path), key)
            self._count("copy")
        except StoreError as exc:
            if exc.scope != FOLDER and exc.code in ("NoSuchKey", "404", "NotFound"):
                return self._upload(task)  # the source object is gone: upload instead
            raise
        entry = Entry(p.path, st.st_size, st.st_mtime_ns, st.st_ino, src.sha256, etag)
        self._log.debug("copy.done", key=key, source=self.folder.key_for(src.path))
        return Result(task, [Outcome("done", p.path, p.gen, entry=entry)], files=1)

    # ------------------------------------------------------------------ delete (batched)

    def _delete(self, task: Task) -> Result:
        keys = {self.folder.key_for(p.path): p for p in task.items}
        errors = self.store.delete(list(keys))
        self._count("delete", len(keys) - len(errors))
        outcomes = []
        for key, p in keys.items():
            if key in errors:
                outcomes.append(Outcome("retry", p.path, p.gen, error=errors[key], delay=backoff(p.attempts)))
            else:
                outcomes.append(Outcome("done", p.path, p.gen, forget=True))
        self._log.debug("delete.done", keys=len(keys), errors=len(errors))
        return Result(task, outcomes, files=len(keys) - len(errors))

    # ------------------------------------------------------------------ failures

    def _failed(self, task: Task, exc: StoreError) -> Result:
        if exc.scope == FOLDER:
            # Not the change's fault: keep it pending; the scheduler halts the folder.
            return Result(task, [Outcome("defer", p.path, p.gen, delay=1.0) for p in task.items],
                          folder_error=exc)
        if exc.scope == TRANSIENT:
            return Result(task, [Outcome("retry", p.path, p.gen, error=str(exc), delay=backoff(p.attempts))
                                 for p in task.items])
        return Result(task, [Outcome("park", p.path, p.gen, error=str(exc)) for p in task.items])

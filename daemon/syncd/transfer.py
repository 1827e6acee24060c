"""Transfers: carry out one planned change against the object store and say how it ended.

Runs in pool threads; a small file's PUT ends on the store's own thread (nothing waits for
it). Never touches the journal: it delivers :class:`~syncd.journal.Outcome` values that the
scheduler records in batches, after the S3 operation succeeded.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat as statmod
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import structlog

from .bandwidth import Payload, Throttle
from .beneath import NotBeneath, folder_root
from .changes import Entry, Outcome, OutcomeKind, Pending
from .config import FolderConfig
from .headers import object_headers
from .multipart import FileChanged, Interrupted, MultipartUploader, Source, same_version
from .paths import key_problem
from .store import (
    FOLDER,
    KEY,
    TRANSIENT,
    UNREACHABLE,
    Changed,
    NotFound,
    ObjectStore,
    PutResult,
    StoreError,
    object_meta,
)
from .trash import stamp, trash_key
from .uploads import UploadLog

# A delete batch's copies into the trash run this many at a time, beside the folder's other
# workers: the store's HTTP pool holds workers + 4 connections.
TRASH_COPIES = 4
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0  # a long outage never drops a change; it is retried at least every 5 min


def backoff(attempts: int) -> float:
    """Exponential backoff with jitter (half to full of the capped exponential)."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempts, 16))) * random.uniform(0.5, 1.0))


class TaskKind(StrEnum):
    """What a pool task does."""

    UPLOAD = "upload"
    COPY = "copy"        # a rename: server-side copy from the old key
    DELETE = "delete"    # a batch of up to 1000 keys
    ABORT = "abort"      # discard a multipart upload nobody will finish


@dataclass
class Task:
    """One unit of pool work (see :class:`TaskKind`)."""

    kind: TaskKind
    items: list[Pending]
    cost: int = 0                       # bytes held against the in-flight budget
    copy_from: Entry | None = None
    upload_id: str | None = None        # abort: the multipart upload to discard
    # delete: trash: path -> (trash key, ETag of the object to keep there, if known), journaled
    trash: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    trashed: bool = False               # the copies into the trash are made (an upload falling back)
    single: bool = False                # upload: one PutObject (the thread only reads and sends it)
    touched: float = field(default_factory=time.monotonic)  # last sign of progress (watchdog)

    def touch(self) -> None:
        self.touched = time.monotonic()

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


class Transfers:
    """Executes tasks for one folder; thread-safe, stateless apart from the store."""

    def __init__(self, folder: FolderConfig, store: ObjectStore, uploads: UploadLog,
                 progress: Callable[[int], None] = lambda n: None):
        self.folder = folder
        self.store = store
        self.root = Path(folder.path)
        self.rootdir = folder_root(folder)  # every read resolves beneath it (syncd.beneath)
        self._log = structlog.get_logger("syncd.transfer").bind(folder=folder.name)
        self._lock = threading.Lock()
        self.ops = {"put": 0, "copy": 0, "delete": 0, "multipart": 0, "trash": 0}
        self.stopping = threading.Event()  # shutdown: large uploads stop between parts
        self.throttle = Throttle(folder.bandwidth) if folder.bandwidth else None
        self.multipart = MultipartUploader(folder, store, uploads, self.throttle, self.stopping, progress)
        self._trash_pool: ThreadPoolExecutor | None = None  # a delete batch's copies into the trash

    @property
    def owner(self) -> str:
        """The folder's owner id (syncd.owner), carried by every object written."""
        return self.multipart.owner

    @owner.setter
    def owner(self, owner: str) -> None:
        self.multipart.owner = owner

    def run(self, task: Task, deliver: Callable[[Result], None]) -> None:
        """Entry point for a pool thread: never raises. ``deliver`` gets the task's Result
        exactly once: before this returns, or later from the store's own thread (a small
        file's PUT is sent without a thread waiting for the answer)."""
        try:
            if task.kind == TaskKind.UPLOAD:
                result = self._upload(task, deliver)
            elif task.kind == TaskKind.COPY:
                result = self._copy(task, deliver)
            elif task.kind == TaskKind.DELETE:
                result = self._delete(task)
            elif task.kind == TaskKind.ABORT:
                result = self._abort(task)
            else:
                raise ValueError(f"unknown task kind {task.kind}")
        except StoreError as exc:
            result = self._failed(task, exc)
        except Exception as exc:  # a bug must not kill the pool thread or lose the change
            result = self._crashed(task, exc)
        if result is not None:
            deliver(result)

    @property
    def background_puts(self) -> bool:
        """A small upload only reads its file and starts the PUT (no thread waits for the answer)."""
        return self.store.background_puts and self.throttle is None

    def run_all(self, tasks: list[Task], deliver: Callable[[Result], None]) -> None:
        """:meth:`run` for each task in turn, on one pool thread (see Scheduler._start)."""
        for task in tasks:
            self.run(task, deliver)

    def _crashed(self, task: Task, exc: Exception) -> Result:
        self._log.exception("transfer.crashed", path=task.path, op=task.kind, error=str(exc))
        p = task.items[0]
        return Result(task, [Outcome(OutcomeKind.RETRY, i.path, i.gen, error=f"internal error: {exc}",
                                     delay=backoff(p.attempts)) for i in task.items])

    def _count(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.ops[op] += n

    # ------------------------------------------------------------------ upload

    def _upload(self, task: Task, deliver: Callable[[Result], None]) -> Result | None:
        """Upload the file; None when the store will deliver the Result itself."""
        p = task.items[0]
        key = self.folder.key_for(p.path)
        try:
            fd = self.rootdir.open_file(p.path)
        except (FileNotFoundError, NotADirectoryError, NotBeneath):
            # Gone since it was planned, or now behind a symlink: look again now (it
            # becomes a delete or nothing).
            return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen)])
        except OSError as exc:
            return self._unreadable(task, exc)
        with os.fdopen(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            if not statmod.S_ISREG(before.st_mode):
                return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen)])
            self._keep_overwritten(task)
            try:
                if before.st_size <= self.folder.multipart_threshold:
                    data, digest = self._read_whole(f, fd, before)
                elif task.single:
                    # Planned as one PUT, grown past the threshold since (still being written):
                    # planned again once settled, as a multipart upload on a thread of its own,
                    # not here, ahead of the small uploads that may share this thread.
                    return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen, delay=self.folder.settle)])
                else:
                    entry = self.multipart.upload(Source(p.path, key, f, fd, before), task.touch)
                    self._count("multipart")
                    self._log.debug("upload.done", path=p.path, key=key, bytes=before.st_size, parts=True)
                    # bytes were counted part by part through `progress`
                    return Result(task, [Outcome(OutcomeKind.DONE, p.path, p.gen, entry=entry)], files=1)
            except FileChanged:
                self._log.info("upload.file_changed", path=p.path)
                return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen, delay=self.folder.settle)])
            except Interrupted:
                return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen)])
            except OSError as exc:
                return self._unreadable(task, exc)

        def finished(answer: PutResult | StoreError) -> None:
            try:
                if isinstance(answer, StoreError):
                    deliver(self._failed(task, answer))
                    return
                self._count("put")
                entry = Entry(p.path, before.st_size, before.st_mtime_ns, before.st_ino, digest.hex(), answer.etag)
                self._log.debug("upload.done", path=p.path, key=key, bytes=before.st_size)
                deliver(Result(task, [Outcome(OutcomeKind.DONE, p.path, p.gen, entry=entry)],
                               bytes_sent=answer.bytes_sent, files=1))
            except Exception as exc:  # the change must come back to the scheduler, whatever happened
                deliver(self._crashed(task, exc))

        meta = object_meta(before.st_mtime_ns, self.owner, digest.hex())
        self.store.put(key, Payload(data, self.throttle), meta, digest, finished,
                       headers=object_headers(self.folder, p.path))
        return None

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
        if len(data) != before.st_size or not same_version(before, os.fstat(fd)):
            raise FileChanged("file changed while it was read")
        return data, hashlib.sha256(data).digest()

    def _unreadable(self, task: Task, exc: OSError) -> Result:
        p = task.items[0]
        reason = (f"cannot read {self.root / p.path}: {exc.strerror}; fix its permissions "
                  f"(syncd runs as uid {os.getuid()})")
        self._log.error("upload.unreadable", path=p.path, error=reason)
        return Result(task, [Outcome(OutcomeKind.PARK, p.path, p.gen, error=reason)])

    # ------------------------------------------------------------------ copy (rename)

    def _copy(self, task: Task, deliver: Callable[[Result], None]) -> Result | None:
        p = task.items[0]
        src = task.copy_from
        assert src is not None
        key = self.folder.key_for(p.path)
        try:
            st = self.rootdir.lstat(p.path)
        except (FileNotFoundError, NotADirectoryError, NotBeneath):
            return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen)])
        if not statmod.S_ISREG(st.st_mode):
            return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen)])
        if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
            return self._upload(task, deliver)
        self._keep_overwritten(task)
        try:
            # A copy keeps the source's headers; a rename to a name other headers apply to
            # (page.txt -> page.html) gets its own.
            headers = object_headers(self.folder, p.path)
            etag = self.store.copy(self.folder.key_for(src.path), key,
                                   headers=None if headers == object_headers(self.folder, src.path) else headers)
            self._count("copy")
        except NotFound:
            return self._upload(task, deliver)  # the source object is gone: upload instead
        entry = Entry(p.path, st.st_size, st.st_mtime_ns, st.st_ino, src.sha256, etag)
        self._log.debug("copy.done", key=key, source=self.folder.key_for(src.path))
        return Result(task, [Outcome(OutcomeKind.DONE, p.path, p.gen, entry=entry)], files=1)

    # ------------------------------------------------------------------ delete (batched)

    def _delete(self, task: Task) -> Result:
        kept = self._to_trash(task, task.items) if task.trash else {}
        keys = {self.folder.key_for(p.path): p for p in task.items if p.path not in kept}
        errors = self.store.delete(list(keys)) if keys else {}
        self._count("delete", len(keys) - len(errors))
        outcomes = []
        folder_error = None
        for p in task.items:
            if p.path in kept:  # not deleted: it could not be kept in the trash first
                failed = self._failed(Task(task.kind, [p]), kept[p.path])
                outcomes += failed.outcomes
                folder_error = folder_error or failed.folder_error
        for key, p in keys.items():
            if key in errors:
                outcomes.append(Outcome(OutcomeKind.RETRY, p.path, p.gen, error=errors[key], delay=backoff(p.attempts)))
            else:
                outcomes.append(Outcome(OutcomeKind.DONE, p.path, p.gen, forget=True))
        self._log.debug("delete.done", keys=len(keys), errors=len(errors), trash_failed=len(kept))
        return Result(task, outcomes, folder_error=folder_error, files=len(keys) - len(errors))

    # ------------------------------------------------------------------ trash (delete: trash)

    def _keep_overwritten(self, task: Task) -> None:
        """Before an upload or copy replaces the key: its old object into the trash."""
        if task.trash and not task.trashed:
            kept = self._to_trash(task, task.items)
            if kept:
                raise next(iter(kept.values()))
            task.trashed = True

    def _to_trash(self, task: Task, items: list[Pending]) -> dict[str, StoreError]:
        """Server-side copy each item's object to its journaled trash key; ``{path: error}``
        for those that could not be (their object must not be deleted or overwritten yet)."""
        todo = [(p.path, *task.trash[p.path]) for p in items if p.path in task.trash]
        if len(todo) == 1:
            return {path: exc for path, key, etag in todo if (exc := self._trash_one(path, key, etag))}
        if self._trash_pool is None:
            self._trash_pool = ThreadPoolExecutor(TRASH_COPIES, thread_name_prefix=f"trash-{self.folder.name}")
        answers = self._trash_pool.map(lambda t: self._trash_one(*t), todo)
        return {path: exc for (path, _k, _e), exc in zip(todo, answers, strict=True) if exc is not None}

    def _trash_one(self, path: str, dst: str, etag: str | None) -> StoreError | None:
        problem = key_problem(dst)
        if problem is not None:
            return StoreError(f"cannot keep {path!r} in the trash before deleting or replacing its object: "
                              f"{problem} (the trash key adds {len(dst) - len(self.folder.key_for(path))} "
                              "bytes); shorten the path, or set delete: mirror", scope=KEY, key=dst)
        src = self.folder.key_for(path)
        try:
            try:
                # If-Match: the version the journal knows. After a crash between an overwrite's
                # PUT and its record, the key holds the new content, which must not replace the
                # old one's trash entry.
                self.store.copy(src, dst, if_match=etag)
            except Changed:
                # Another version than the manifest's (written by that PUT, or behind syncd's
                # back): keep it too, as deleted now.
                self.store.copy(src, trash_key(self.folder.prefix, path, stamp(time.time())))
            self._count("trash")
        except NotFound:
            pass  # nothing is there to keep (deleted already, or by an earlier attempt)
        except StoreError as exc:
            return exc
        return None

    def _abort(self, task: Task) -> Result:
        """Discard the upload of a file that no longer needs it. The change itself is handled
        by its own decision, so a failure here only waits for the reconcile pass's sweep."""
        key = self.folder.key_for(task.path)
        try:
            if task.upload_id is not None:
                self.multipart.abort(task.path, key, task.upload_id)
            else:  # an unfinished write of unknown kind: any upload of this key is a stray of ours
                self.multipart.abort_strays(task.path, key, keep=None)
        except StoreError as exc:
            self._log.warning("multipart.abort_failed", path=task.path, error=str(exc),
                              hint="the next reconcile pass sweeps it")
        return Result(task, [])

    # ------------------------------------------------------------------ failures

    def _failed(self, task: Task, exc: StoreError) -> Result:
        if exc.scope == FOLDER or exc.code == UNREACHABLE:
            # Not the change's fault: keep it pending; the scheduler halts the folder.
            return Result(task, [Outcome(OutcomeKind.DEFER, p.path, p.gen, delay=1.0) for p in task.items],
                          folder_error=exc)
        if exc.scope == TRANSIENT:
            return Result(task, [Outcome(OutcomeKind.RETRY, p.path, p.gen, error=str(exc), delay=backoff(p.attempts))
                                 for p in task.items])
        return Result(task, [Outcome(OutcomeKind.PARK, p.path, p.gen, error=str(exc)) for p in task.items])

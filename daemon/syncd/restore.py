"""`syncd restore`: bring a folder's mirror (now, or as it was at a time) back into a directory.

No daemon and no journal needed: the bucket is the record. Each file is downloaded into a
temp name (``.syncd-restore-*.tmp``, created with O_EXCL in its target directory), its bytes
checked against the object's ``syncd-sha256`` (or an MD5 for objects other clients wrote),
given its mtime to the nanosecond from ``syncd-mtime-ns``, and only then renamed into place:
a crash or Ctrl-C leaves no partial file under a real name, and the next run removes the
temp files. Every directory is opened from its parent's fd with O_NOFOLLOW
(:meth:`syncd.beneath.RootDir.make_dirs`): a symlink planted in the target is never followed.

A local file already there is checked without a GET: same size, then its SHA-256 against the
object's (one HEAD). Equal content with another mtime only gets its mtime set; different
content is kept unless ``--force``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import secrets
import stat as statmod
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pathspec

from . import trash
from .beneath import RootDir, rename_noreplace
from .config import FolderConfig
from .download import FETCH_WHOLE_LIMIT, Downloader, Interrupted, Wanted, write_all
from .fetches import Fetches
from .landing import (
    READ_FLAGS,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    HeldDirs,
    TempFile,
    failure_reason,
    hash_fd,
    lstat,
    mtime_ns,
    unverified,
)
from .paths import IgnoreRules, reserved
from .scan import walk
from .snapshot import Source, current_items, items_at, name_problem
from .store import (
    TRANSIENT,
    ObjectStore,
    RemoteObject,
    StoreError,
    Whole,
    expected_digest,
    fetch_whole_now,
)
from .units import format_size

PLAN_STEP = 1000         # listed items handed to the workers at once (S3 lists 1000 keys a page)
BATCH = 16               # files of one directory handed to a worker at once (fewer if that idles workers)
ATTEMPTS = 4             # per file, for transient errors (5xx, throttling, a cut connection)
BACKOFF = 0.5            # seconds before the second attempt, doubling
FINISHERS = 2            # threads writing the small files whose GETs are in flight (syncd.fetches)
# Small-file GETs in flight per worker. A slot is held from the GET's send until its file is
# renamed into place, so `workers` slots left the server idle part of the time while answers
# waited to be written (docs/benchmarks/wave8/restore/); each slot holds at most one body of
# FETCH_WHOLE_LIMIT, so memory stays bounded by this times `workers`.
SMALL_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True, slots=True)
class Item:
    """One object to restore: where it goes (``rel``) and which version of which key."""

    rel: str
    key: str
    size: int
    etag: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A small file whose GET is in flight: where it goes (its directory held open)."""

    item: Item
    parent: str
    dir_fd: int
    fresh: bool


@dataclass
class Result:
    restored: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)      # correct already (0 GETs)
    kept: list[tuple[str, str]] = field(default_factory=list)     # differing local file, no --force
    failed: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): never written
    bytes: int = 0
    gets: int = 0
    heads: int = 0

    @property
    def ok(self) -> bool:
        return not (self.kept or self.failed or self.refused)


class Restorer:
    def __init__(self, folder: FolderConfig, store: ObjectStore, target: str, *, at: float | None = None,
                 patterns: tuple[str, ...] = (), force: bool = False, workers: int | None = None,
                 progress: bool = False, source: Source | None = None):
        """``source``: by default the current objects, or the versions with ``at``."""
        self.folder = folder
        self.store = store
        self.target = target
        self.at = at
        self.source = source or (Source.CURRENT if at is None else Source.VERSIONS)
        self.force = force
        self.select = pathspec.GitIgnoreSpec.from_lines(patterns) if patterns else None
        self.workers = max(1, workers or folder.workers)
        self.show_progress = progress
        self.result = Result()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Objects at least multipart_threshold large come as ranged GETs of part_size in parallel.
        self._downloads = Downloader(store, folder.multipart_threshold, folder.part_size, self._stop, self._count)
        self._total_files = 0
        self._total_bytes = 0
        self._started = time.monotonic()
        # Temp names: unguessable per run, then numbered (no random draw per file); O_EXCL all the same.
        self._temp_stem = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-"
        self._temp_numbers = itertools.count()
        # Directories this run's mkdir created (empty then); see _restore for what that spares.
        self._made: set[str] = set()
        self._held: HeldDirs | None = None  # directories of the small files in flight (run)
        self._futures: list[Future[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._root: RootDir | None = None
        self._parts_pool: ThreadPoolExecutor | None = None
        self._noreplace = True  # False once renameat2(RENAME_NOREPLACE) is found unsupported here

    # ------------------------------------------------------------------ the run

    def plan(self) -> list[Item]:
        return list(self._planned())

    def _planned(self) -> Iterator[Item]:
        """The items to restore, as the listing's pages come (refused keys noted on the way)."""
        prefix = self.folder.prefix
        if self.source == Source.CURRENT:
            listing = current_items(self.store, prefix)
        elif self.source == Source.VERSIONS:
            assert self.at is not None
            listing = items_at(self.store, prefix, self.at)
        else:
            now = (o for page in self.store.list(prefix) for o in page if not reserved(o.key[len(prefix):]))
            if self.source == Source.TRASH:
                assert self.at is not None
                listing = trash.items_at(self.store, prefix, self.at, now)
            else:
                listing = trash.deleted_items(self.store, prefix, now)
        for key, rel, size, etag, version in listing:
            if rel.endswith("/") and size == 0 and name_problem(rel[:-1] or ".") is None:
                continue  # a directory marker (consoles make them): empty directories are not mirrored
            if reserved(rel):
                continue  # syncd's bookkeeping (owner marker, trash), not mirror content
            problem = name_problem(rel)
            if problem is not None:
                self.result.refused.append((key, problem))
                continue
            if self.select is not None and not self.select.match_file(rel):
                continue
            yield Item(rel, key, size, etag, version)

    def run(self) -> Result:
        os.makedirs(self.target, exist_ok=True)
        root = RootDir(self.target)
        if root.open_error:
            raise OSError(errno.ENOTDIR, root.open_error)
        lock_fd = root.open_dir("")
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(errno.EBUSY, f"another syncd restore is writing into {self.target}") from None
            self._clean_temps(root)
            self._root = root
            ticker = threading.Thread(target=self._ticker, daemon=True) if self.show_progress else None
            if ticker is not None:
                ticker.start()
            parts_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="restore-part")
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="restore")
            self._pool = pool
            self._parts_pool = parts_pool
            # The many small files, on a store that answers on its own thread: their GETs
            # in flight from this thread, no worker waiting for each (syncd.fetches).
            fetches = (Fetches(self.store, SMALL_IN_FLIGHT_PER_WORKER * self.workers, FINISHERS, self._finish)
                       if self.store.background_fetch else None)
            held = self._held = HeldDirs(root, self._made)
            try:
                # Downloads start with the listing's first page, not after its last.
                planned = self._planned()
                while chunk := list(itertools.islice(planned, PLAN_STEP)):
                    with self._lock:
                        self._total_files += len(chunk)
                        self._total_bytes += sum(i.size for i in chunk)
                    if fetches is not None:
                        chunk = self._send(held, chunk, fetches)
                    futures = [pool.submit(self._batch, root, batch) for batch in self._batches(chunk)]
                    with self._lock:
                        self._futures += futures
                if fetches is not None:
                    held.release_current()
                    fetches.close()
                for f in self._futures:  # retries the finishers submitted are in the list too
                    f.result()
            except BaseException:
                self._stop.set()  # Ctrl-C: every worker removes its temp file and stops
                if fetches is not None:
                    fetches.close()  # waits for the GETs in flight: their directories are still open
                    held.release_current()
                pool.shutdown(wait=True, cancel_futures=True)
                parts_pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                pool.shutdown(wait=True)
                parts_pool.shutdown(wait=True)
                self._stop.set()
                if ticker is not None:
                    ticker.join()
                    sys.stderr.write("\r\x1b[K")
        finally:
            os.close(lock_fd)
            root.close()
        return self.result

    def _clean_temps(self, root: RootDir) -> None:
        """Remove temp files a killed run left (ours by name; the target is locked)."""
        for rel, _st in walk(root, IgnoreRules((), builtin=False)):
            parent, _, name = rel.rpartition("/")
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                fd = root.open_dir(parent)
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(fd)

    # ------------------------------------------------------------------ one file

    def _batches(self, items: list[Item]) -> list[list[Item]]:
        """The items in batches of one directory's files: a batch opens its directory once, and
        is one hand-off to a worker thread, for all its files (each costs CPU per small file).
        Batches stay small enough to keep every worker busy; a large file goes alone."""
        size = max(1, min(BATCH, len(items) // (4 * self.workers)))
        batches: list[list[Item]] = []
        open_batches: dict[str, list[Item]] = {}
        for item in items:
            if size == 1 or item.size > FETCH_WHOLE_LIMIT:
                batches.append([item])
                continue
            parent = item.rel.rpartition("/")[0]
            batch = open_batches.setdefault(parent, [])
            batch.append(item)
            if len(batch) == size:
                batches.append(batch)
                del open_batches[parent]
        batches.extend(open_batches.values())
        return batches

    def _send(self, held: HeldDirs, items: list[Item], fetches: Fetches[_InFlight]) -> list[Item]:
        """Send the GETs of the small files that have nothing at their name yet; the rest
        (large files, and files where something is there to check first) is returned for
        the workers."""
        rest: list[Item] = []
        for item in items:
            if self._stop.is_set():
                break
            if item.size > FETCH_WHOLE_LIMIT:
                rest.append(item)
                continue
            parent, _, name = item.rel.rpartition("/")
            try:
                dir_fd, fresh = held.hold(parent)
            except (OSError, StoreError) as exc:
                self._note("failed", item.rel, failure_reason(exc))
                continue
            if not fresh and lstat(name, dir_fd) is not None:
                held.drop(parent)
                rest.append(item)
                continue
            try:
                fetches.start(item.key, item.version, _InFlight(item, parent, dir_fd, fresh))
            except BaseException:
                held.drop(parent)
                raise
        return rest

    def _finish(self, job: _InFlight, answer: Whole | StoreError) -> None:
        """A small file's GET has answered (on a finisher thread): write it into place, or
        hand a transient failure to a worker, which retries it with backoff."""
        item = job.item
        try:
            if self._stop.is_set():
                return
            if isinstance(answer, StoreError):
                raise answer
            outcome, reason = self._write_whole(job.dir_fd, item.rel.rpartition("/")[2], item, answer,
                                                job.fresh and self._noreplace)
            self._note(outcome, item.rel, reason)
        except StoreError as exc:
            if exc.transient:
                assert self._pool is not None
                future = self._pool.submit(self._one_alone, item)
                with self._lock:
                    self._futures.append(future)
            else:
                self._note("failed", item.rel, failure_reason(exc))
        except OSError as exc:
            self._note("failed", item.rel, failure_reason(exc))
        finally:
            assert self._held is not None
            self._held.drop(job.parent)

    def _one_alone(self, item: Item) -> None:
        """A small file whose first GET failed transiently, again on a worker (it opens its directory)."""
        assert self._root is not None
        self._batch(self._root, [item])

    def _batch(self, root: RootDir, items: list[Item]) -> None:
        """Restore files of one directory, each on its own (a failure is that file's)."""
        if self._stop.is_set():
            return
        parent = items[0].rel.rpartition("/")[0]
        try:
            dir_fd = root.make_dirs(parent, self._made)
        except (OSError, StoreError) as exc:
            for item in items:
                self._note("failed", item.rel, failure_reason(exc))
            return
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._one(dir_fd, item, parent in self._made)
        finally:
            os.close(dir_fd)

    def _one(self, dir_fd: int, item: Item, fresh: bool) -> None:
        name = item.rel.rpartition("/")[2]
        try:
            for attempt in range(ATTEMPTS):
                try:
                    outcome, reason = self._restore(dir_fd, name, item, fresh and self._noreplace)
                except StoreError as exc:
                    # botocore already retried quickly; a longer pause rides out throttling.
                    if not exc.transient or attempt == ATTEMPTS - 1 or self._stop.wait(BACKOFF * 2 ** attempt):
                        raise
                    continue
                self._note(outcome, item.rel, reason)
                return
        except Interrupted:
            pass
        except (OSError, StoreError) as exc:
            self._note("failed", item.rel, failure_reason(exc))

    def _restore(self, dir_fd: int, name: str, item: Item, fresh: bool) -> tuple[str, str]:
        """``fresh``: this run's mkdir created the directory, so it was empty then, and only
        this run writes into it (each name once: a listing has each key once; another restore
        waits for the target's flock). The lstat for a local file is skipped there: nothing can
        be at ``name`` but what another program put since. That is caught anyway: the temp
        file is renamed with RENAME_NOREPLACE, which fails atomically if anything is there
        (then handled as a local file found), a stronger check than an lstat before the GET."""
        st = None if fresh else lstat(name, dir_fd)
        if st is not None:
            if statmod.S_ISDIR(st.st_mode):
                return "failed", "a directory is in the way"
            if statmod.S_ISREG(st.st_mode) and st.st_size == item.size:
                verdict = self._check_existing(dir_fd, name, item, st)
                if verdict is not None:
                    return verdict
            elif not self.force:
                what = "a symlink" if statmod.S_ISLNK(st.st_mode) else f"a local file of {st.st_size} bytes"
                return "kept", f"{what} is there (the object has {item.size} bytes); --force replaces it"
            if not self.force:
                return "kept", "a local file with other content is there; --force replaces it"
        if item.size <= FETCH_WHOLE_LIMIT:
            return self._write_whole(dir_fd, name, item, fetch_whole_now(self.store, item.key, item.version), fresh)
        assert self._parts_pool is not None
        with TempFile(dir_fd, self._temp_name()) as temp:
            info, actual = self._downloads.download(temp.fd, Wanted(item.key, item.size, item.version),
                                                    self._parts_pool)
            expected = expected_digest(info)
            if actual is None and expected is not None:
                os.lseek(temp.fd, 0, os.SEEK_SET)
                actual = hash_fd(temp.fd, expected[0], self._stop)
            problem = unverified(expected, actual)
            if problem is not None:
                return "failed", problem
            return self._place(temp, name, info, fresh)

    def _write_whole(self, dir_fd: int, name: str, item: Item, whole: Whole, fresh: bool) -> tuple[str, str]:
        """A small object fetched whole: checked in memory (a corrupt body never reaches the
        disk), then written to a temp file and put in place (``fresh``: see :meth:`_restore`)."""
        got = whole.size
        self._count(1, got)
        if got != item.size:
            raise StoreError(f"s3://{self.store.bucket}/{item.key}: the body ended at byte {got} of {item.size}",
                             scope=TRANSIENT, key=item.key)
        expected = expected_digest(whole.info)
        actual = None
        if expected is not None:
            digest = hashlib.new(expected[0])
            for piece in whole.pieces:
                digest.update(piece)
            actual = digest.hexdigest()
        problem = unverified(expected, actual)
        if problem is not None:
            return "failed", problem
        with TempFile(dir_fd, self._temp_name()) as temp:
            write_all(temp.fd, whole.pieces)
            return self._place(temp, name, whole.info, fresh)

    def _temp_name(self) -> str:
        return f"{self._temp_stem}{next(self._temp_numbers)}{TEMP_SUFFIX}"

    def _place(self, temp: TempFile, name: str, info: RemoteObject, fresh: bool) -> tuple[str, str]:
        """The verified temp file gets the object's mtime and is renamed to ``name``;
        ``fresh``: only if nothing is there (see :meth:`_restore`)."""
        dir_fd = temp.dir_fd
        mtime = mtime_ns(info)
        if mtime is not None:
            os.utime(temp.fd, ns=(mtime, mtime))
        if fresh:
            st = None
            try:
                temp.placed = rename_noreplace(temp.name, name, dir_fd)
            except FileExistsError:
                st = lstat(name, dir_fd)
            else:
                if not temp.placed:
                    self._noreplace = False  # this filesystem cannot: lstat first from now on
                    st = lstat(name, dir_fd)
            if not temp.placed and st is not None:
                if statmod.S_ISDIR(st.st_mode):
                    return "failed", "a directory is in the way"
                if not self.force:
                    return "kept", "a local file appeared there while restoring; --force replaces it"
        if not temp.placed:
            os.rename(temp.name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a symlink, never follows it
            temp.placed = True
        return "restored", ""

    def _check_existing(self, dir_fd: int, name: str, item: Item, st: os.stat_result) -> tuple[str, str] | None:
        """("already", "") if the local file is the object's content (its mtime set if it
        differs); None if it differs (the caller keeps or replaces it)."""
        head = self.store.head(item.key, item.version)
        with self._lock:
            self.result.heads += 1
        if head is None:
            return "failed", "deleted from the bucket since it was listed"
        expected = expected_digest(head)
        if expected is None:  # nothing to hash against: the object cannot be restored verified either
            return ("already", "") if st.st_mtime_ns == mtime_ns(head) else None
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        try:
            if hash_fd(fd, expected[0], self._stop) != expected[1]:
                return None
            mtime = mtime_ns(head)
            if mtime is not None and os.fstat(fd).st_mtime_ns != mtime:
                os.utime(name, ns=(mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(fd)
        return "already", ""

    # ------------------------------------------------------------------ reporting

    def _count(self, gets: int, received: int) -> None:
        with self._lock:
            self.result.gets += gets
            self.result.bytes += received

    def _note(self, outcome: str, rel: str, reason: str = "") -> None:
        with self._lock:
            if outcome == "restored":
                self.result.restored.append(rel)
            elif outcome == "already":
                self.result.already.append(rel)
            elif outcome == "kept":
                self.result.kept.append((rel, reason))
            else:
                self.result.failed.append((rel, reason))

    def progress_line(self) -> str:
        r = self.result
        with self._lock:
            done = len(r.restored) + len(r.already) + len(r.kept) + len(r.failed)
            got = r.bytes
        elapsed = max(time.monotonic() - self._started, 1e-3)
        rate = got / elapsed
        left = max(self._total_bytes - got, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
        return (f"restore: {done}/{self._total_files} files, {format_size(got)}/{format_size(self._total_bytes)}, "
                f"{format_size(int(rate))}/s, ETA {eta}")

    def _ticker(self) -> None:
        while not self._stop.wait(0.5):
            sys.stderr.write("\r\x1b[K" + self.progress_line())
            sys.stderr.flush()

"""A restore's download of an object larger than FETCH_WHOLE_LIMIT: its bytes into the temp
file, hashed on the way, so the caller can verify them before the rename without reading the
file back where avoidable.

Smaller objects come whole into memory (:meth:`syncd.store.ObjectStore.fetch_whole`, many in
flight: :mod:`syncd.fetches`). A large one comes from a store that fetches its parts in
parallel itself (:mod:`syncd.bigfetch`, S3 through the CRT); otherwise as ranged GETs of
``part_size`` on the parts pool, hashed behind them as they arrive (:class:`_Progress`).
The caller (:mod:`syncd.restore`) owns the temp file, its verification and its rename.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from . import bigfetch
from .store import TRANSIENT, ObjectStore, RemoteObject, StoreError, expected_digest

CHUNK = 1 << 20          # bytes read from a body at once: memory is one chunk per thread
HASH_STEP = 8 * CHUNK    # the hashing thread behind ranged parts wakes once this much more is written
# Objects up to this size come whole into memory (the store's fetch_whole; awscrt may hold a
# body whole before it hands it over anyway); larger ones through the store's parallel fetch
# (bigfetch) where it has one, else as ranged GETs streamed in CHUNK pieces.
FETCH_WHOLE_LIMIT = CHUNK
_IOV_MAX = 1024  # Linux's limit of buffers per writev (os.sysconf("SC_IOV_MAX"))


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop downloading, remove our temp file."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """The object to download: which version of which key, and its listed size."""

    key: str
    size: int
    version: str | None = None


class Downloader:
    """Downloads for one restore run; thread-safe (each call is one file's)."""

    def __init__(self, store: ObjectStore, threshold: int, part_size: int, stop: threading.Event,
                 count: Callable[[int, int], None]):
        """Objects at least ``threshold`` large come as ranged GETs of ``part_size`` in
        parallel; ``count(gets, bytes)`` hears the requests sent and the bytes received;
        ``stop`` set: the downloads raise :class:`Interrupted`."""
        self.store = store
        self.threshold = threshold
        self.part_size = part_size
        self._stop = stop
        self._count = count

    def download(self, fd: int, item: Wanted, parts: ThreadPoolExecutor) -> tuple[RemoteObject, str | None]:
        """The object's bytes into ``fd``: what the (first) GET said about it, and the digest
        of the bytes in the algorithm the object's metadata calls for (taken on the way; ranged
        parts are hashed behind them as they arrive)."""
        if self.store.parallel_fetch:
            _allocate(fd, item.size)
            self._count(-(-item.size // bigfetch.PART_SIZE), 0)  # one ranged GET per part
            return bigfetch.download(self.store, fd, item.key, item.version, item.size, self._piece)
        if item.size < self.threshold or item.size <= self.part_size:
            return self._fetch(fd, item, 0, None, hash_it=True)
        _allocate(fd, item.size)
        ranges = [(start, min(start + self.part_size, item.size) - 1) for start in range(0, item.size, self.part_size)]
        follow = _Progress([a for a, _ in ranges])
        futures = [parts.submit(self._fetch, fd, item, a, b, progress=follow.part(k))
                   for k, (a, b) in enumerate(ranges)]
        for f in futures:
            f.add_done_callback(follow.finished)
        try:
            actual = self._hash_behind(fd, ranges, follow)
        finally:
            follow.stop()
            wait(futures)  # every part has finished before fd may be closed (a number reused under a pwrite)
        for f in futures:
            failure = f.exception()
            if failure is not None:
                raise failure
        infos = [f.result()[0] for f in futures]
        if any(i.etag != infos[0].etag for i in infos):
            raise StoreError(f"s3://{self.store.bucket}/{item.key}: replaced during the download; run restore again",
                             scope=TRANSIENT, key=item.key)
        return infos[0], actual

    def _piece(self, length: int) -> None:
        """A large download's next piece has come (see :func:`syncd.bigfetch.download`)."""
        if self._stop.is_set():
            raise Interrupted()
        self._count(0, length)

    def _hash_behind(self, fd: int, ranges: list[tuple[int, int]], follow: _Progress) -> str | None:
        """The digest of the parts' bytes, taken while they download: this thread reads back
        (from the page cache, into one reused buffer) whatever the parts have written next to
        the bytes hashed so far, so the hash ends just after the last part rather than
        re-reading the whole file after it. None if a part failed or the object names no
        digest to check (the caller reports either)."""
        info = follow.first_info()
        expected = None if info is None else expected_digest(info)
        if expected is None:
            return None
        digest = hashlib.new(expected[0])
        buf = memoryview(bytearray(CHUNK))
        for k, (first, last) in enumerate(ranges):
            at = first
            while at <= last:
                upto = follow.wait_past(k, at, min(at + HASH_STEP, last + 1))
                if upto is None or self._stop.is_set():
                    return None
                while at < upto:
                    got = os.preadv(fd, [buf[:min(CHUNK, upto - at)]], at)
                    if got <= 0:
                        raise OSError(errno.EIO, f"read back {got} bytes at {at}")
                    digest.update(buf[:got])
                    at += got
        return digest.hexdigest()

    def _fetch(self, fd: int, item: Wanted, first: int, last: int | None, hash_it: bool = False,
               progress: Callable[[int, RemoteObject | None], None] | None = None) -> tuple[RemoteObject, str | None]:
        """Bytes ``first``..``last`` of the object into ``fd`` at their offset; ``progress``
        hears the GET's answer and then how far the written bytes reach."""
        body = self.store.get(item.key, item.version, first, last)
        self._count(1, 0)
        if progress is not None:
            progress(first, body.info)
        try:
            expected = expected_digest(body.info) if hash_it else None
            digest = hashlib.new(expected[0]) if expected is not None else None
            offset = first
            for piece in body.chunks(CHUNK):
                if self._stop.is_set():
                    raise Interrupted()
                if digest is not None:
                    digest.update(piece)
                view = memoryview(piece)
                while view:
                    written = os.pwrite(fd, view, offset)
                    offset += written
                    view = view[written:]
                if progress is not None:
                    progress(offset, None)
                self._count(0, len(piece))
            expected_end = item.size if last is None else last + 1
            if offset != expected_end:
                raise StoreError(f"s3://{self.store.bucket}/{item.key}: the body ended at byte {offset} of "
                                 f"{expected_end}", scope=TRANSIENT, key=item.key)
            return body.info, None if digest is None else digest.hexdigest()
        finally:
            body.close()


class _Progress:
    """How far each ranged part of one download has written, for the thread hashing behind them."""

    def __init__(self, starts: list[int]):
        self._cond = threading.Condition()
        self._reached = list(starts)   # per part: the offset its written bytes reach
        self._info: RemoteObject | None = None
        self._failed = False
        self._pending = len(starts)
        self._want = (-1, 0)           # (part, offset) the hashing thread waits for: wake it only then

    def part(self, k: int) -> Callable[[int, RemoteObject | None], None]:
        def advance(offset: int, info: RemoteObject | None) -> None:
            with self._cond:
                self._reached[k] = offset
                if info is not None and self._info is None:
                    self._info = info
                    self._cond.notify_all()
                elif self._want[0] == k and offset >= self._want[1]:
                    self._cond.notify_all()
        return advance

    def finished(self, future: Future[tuple[RemoteObject, str | None]]) -> None:
        with self._cond:
            self._pending -= 1
            if future.cancelled() or future.exception() is not None:
                self._failed = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def first_info(self) -> RemoteObject | None:
        """What the first part's GET said of the object (None: a part failed first)."""
        with self._cond:
            while self._info is None and not self._failed and self._pending:
                self._cond.wait()
            return None if self._failed else self._info

    def wait_past(self, k: int, offset: int, enough: int) -> int | None:
        """Once part ``k`` has written up to ``enough`` (or ended past ``offset``): how far
        it reaches (None: a part failed)."""
        with self._cond:
            self._want = (k, enough)
            while self._reached[k] < enough and not self._failed and self._pending:
                self._cond.wait()
            self._want = (-1, 0)
            return None if self._failed or self._reached[k] <= offset else self._reached[k]


def _allocate(fd: int, size: int) -> None:
    """Reserve the file's blocks: ENOSPC now, not after most of the download."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP and exc.errno != errno.EINVAL:
            raise


def write_all(fd: int, pieces: list[bytes]) -> None:
    """The pieces at the start of ``fd``, in as few calls as the kernel takes them."""
    views = [memoryview(p) for p in pieces if p]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]

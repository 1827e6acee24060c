"""A restore's large object: one download from a store that GETs its parts in parallel itself
(``ObjectStore.parallel_fetch``: S3 through the CRT), written at their offsets into the temp
file and hashed on another thread while the next parts arrive.

The store hands over the parts in order, each as its own bytes, so the writing thread takes
them from a short queue, writes each and hashes it (no reading back from the file), while
the download goes on; the queue's bound is the memory this adds, and a full queue holds the
download back. The caller owns the temp file (created O_EXCL under its directory's fd), verifies the
digest and renames it into place.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable

from .store import TRANSIENT, Changed, ObjectStore, RemoteObject, StoreError, expected_digest

PART_SIZE = 4 << 20  # bytes per ranged GET: with the store's few parts in flight, the memory it holds
WRITE_SLICE = 1 << 20  # bytes per pwrite: the kernel copies a slice this small into the page cache for less CPU
QUEUE = 2            # parts waiting for the writing thread (each is PART_SIZE bytes)
# Large downloads at once: the store's connections are shared by all of them, so more would
# only add queues (memory) without adding throughput.
AT_ONCE = 2
_running = threading.BoundedSemaphore(AT_ONCE)


class _Sink:
    """Writes pieces at their offsets and digests them, in order, on a thread of its own: the
    store's one event-loop thread, which hands the pieces over, then only receives (a
    pwrite's copy into the page cache on it held up the sockets). hashlib and os.pwrite let
    go of the GIL while they work."""

    def __init__(self, fd: int, algorithm: str | None):
        self._fd = fd
        self._digest = hashlib.new(algorithm) if algorithm is not None else None
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE)
        self._failure: OSError | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="restore-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # drained, not written: the download is being stopped
            try:
                view = memoryview(piece)
                while view:
                    written = os.pwrite(self._fd, view[:WRITE_SLICE], self.written)
                    self.written += written
                    view = view[written:]
            except OSError as exc:
                self._failure = exc
                continue
            if self._digest is not None:
                self._digest.update(piece)

    def add(self, piece: bytes) -> None:
        """Queue ``piece`` (waits while the queue is full); raises the write's OSError of an
        earlier piece, which stops the download."""
        if self._failure is not None:
            raise self._failure
        self._queue.put(piece)

    def finish(self) -> str | None:
        """The digest of every piece (None: no algorithm), once all are written; raises the
        OSError a write failed with."""
        self.close()
        if self._failure is not None:
            raise self._failure
        return self._digest.hexdigest() if self._digest is not None else None

    def close(self) -> None:
        """Stop the thread once it has written what is queued (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def download(store: ObjectStore, fd: int, key: str, version: str | None, size: int,
             on_piece: Callable[[int], None]) -> tuple[RemoteObject, str | None]:
    """The object's bytes into ``fd``: what the GET said about it, and the digest of the bytes
    in the algorithm its metadata names (None: it names none). ``on_piece`` hears each
    piece's length before it is written, and may raise to stop the download (Ctrl-C)."""
    sink: list[_Sink] = []

    def start(info: RemoteObject) -> Callable[[bytes], None]:
        expected = expected_digest(info)
        sink.append(_Sink(fd, expected[0] if expected is not None else None))
        return consume

    def consume(piece: bytes) -> None:
        on_piece(len(piece))
        sink[0].add(piece)  # written and hashed behind the download

    try:
        try:
            with _running:
                info = store.fetch(key, version, start, part_size=PART_SIZE)
        except Changed as exc:  # a part's If-Match failed: the object was replaced mid-download
            raise StoreError(f"s3://{store.bucket}/{key}: replaced during the download; run restore again",
                             scope=TRANSIENT, key=key) from exc
        digest = sink[0].finish() if sink else None
        written = sink[0].written if sink else 0
        if written != size:
            raise StoreError(f"s3://{store.bucket}/{key}: the body ended at byte {written} of {size}",
                             scope=TRANSIENT, key=key)
        return info, digest if expected_digest(info) is not None else None
    finally:
        if sink:
            sink[0].close()

"""A restore's large object: one download from a store that GETs its parts in parallel itself
(``ObjectStore.parallel_fetch``: S3 through the CRT), written at their offsets into the temp
file, and hashed on another thread while the next parts arrive.

The store hands over the parts in order, each as its own bytes, so the hashing thread takes
them from a short queue (no reading back from the file) and its hashing overlaps the
download; the queue's bound is the memory this adds, and a full queue holds the download
back. The caller owns the temp file (created O_EXCL under its directory's fd), verifies the
digest and renames it into place.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .store import TRANSIENT, Changed, ObjectStore, RemoteObject, StoreError, expected_digest

PART_SIZE = 4 << 20  # bytes per ranged GET: with the store's few parts in flight, the memory it holds
WRITE_SLICE = 1 << 20  # bytes per pwrite: the kernel copies a slice this small into the page cache for less CPU
QUEUE = 2            # parts waiting for the hashing thread (each is PART_SIZE bytes)
# Large downloads at once: the store's connections are shared by all of them, so more would
# only add hashing queues (memory) without adding throughput.
AT_ONCE = 2
_running = threading.BoundedSemaphore(AT_ONCE)


@dataclass
class _Hasher:
    """Digests pieces, in order, on its own thread (hashlib lets go of the GIL while it hashes)."""

    algorithm: str
    _queue: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(QUEUE))
    _digest: hashlib._Hash | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._digest = hashlib.new(self.algorithm)
        self._thread = threading.Thread(target=self._run, name="restore-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._digest is not None
        while (piece := self._queue.get()) is not None:
            self._digest.update(piece)

    def add(self, piece: bytes) -> None:
        self._queue.put(piece)

    def finish(self) -> str:
        """The digest of every piece added (waits for the thread)."""
        self.close()
        assert self._digest is not None
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the thread (idempotent; the pieces not yet hashed are dropped)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None


def download(store: ObjectStore, fd: int, key: str, version: str | None, size: int,
             on_piece: Callable[[int], None]) -> tuple[RemoteObject, str | None]:
    """The object's bytes into ``fd``: what the GET said about it, and the digest of the bytes
    in the algorithm its metadata names (None: it names none). ``on_piece`` hears each
    piece's length before it is written, and may raise to stop the download (Ctrl-C)."""
    hasher: list[_Hasher] = []
    offset = [0]

    def start(info: RemoteObject) -> Callable[[bytes], None]:
        expected = expected_digest(info)
        if expected is not None:
            hasher.append(_Hasher(expected[0]))
            hasher[0].start()
        return consume

    def consume(piece: bytes) -> None:
        on_piece(len(piece))
        if hasher:
            hasher[0].add(piece)  # hashed while it is written
        view = memoryview(piece)
        while view:
            written = os.pwrite(fd, view[:WRITE_SLICE], offset[0])
            offset[0] += written
            view = view[written:]

    try:
        try:
            with _running:
                info = store.fetch(key, version, start, part_size=PART_SIZE)
        except Changed as exc:  # a part's If-Match failed: the object was replaced mid-download
            raise StoreError(f"s3://{store.bucket}/{key}: replaced during the download; run restore again",
                             scope=TRANSIENT, key=key) from exc
        if offset[0] != size:
            raise StoreError(f"s3://{store.bucket}/{key}: the body ended at byte {offset[0]} of {size}",
                             scope=TRANSIENT, key=key)
        return info, hasher[0].finish() if hasher else None
    finally:
        if hasher:
            hasher[0].close()

"""Byte limits: the global budget of bytes held in flight (memory), the per-folder bandwidth
limit (``bandwidth: 20MiB/s``), and the request bodies they apply to.

A body is handed to the S3 client as a file-like object only when something must pace it
(a rate limit); otherwise the plain bytes are sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PACE_CHUNK = 64 * 1024  # a paced read hands out at most this much (finer = smoother sharing)


class Throttle:
    """A shared rate limit: each read reserves the next free slot on one timeline.

    Reservations are served in the order they are made, so concurrent workers get an equal
    share per chunk, and the long-run rate is exact (no burst credit accumulates while idle).
    """

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def pace(self, n: int) -> None:
        """Block until ``n`` more bytes may go out."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + n / self.rate
        if start > now:
            self._sleep(start - now)


class Payload:
    """The bytes of one request, optionally paced.

    Seekable so the client can rewind it for a retry; every re-read is paced again, since a
    re-sent byte uses the link as much as the first.
    """

    def __init__(self, data: bytes | bytearray, throttle: Throttle | None = None):
        self.data = data
        self._view = memoryview(data)
        self._pos = 0
        self._throttle = throttle

    @property
    def plain(self) -> bool:
        """Nothing watches this body: the client may take the bytes as they are."""
        return self._throttle is None

    def __len__(self) -> int:
        return len(self.data)

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self._pos + n)
        if self._throttle is not None and end > self._pos:
            end = min(end, self._pos + PACE_CHUNK)
            self._throttle.pace(end - self._pos)
        chunk = self._view[self._pos:end].tobytes()
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self.data)}[whence]
        self._pos = max(0, min(len(self.data), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class ByteBudget:
    """Global cap on bytes held by transfers in flight, shared by every folder."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            # Always admit one transfer when nothing is held, so a file larger than the
            # budget cannot starve.
            if self.used and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n

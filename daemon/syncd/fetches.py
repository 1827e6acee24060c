"""A restore's small files in flight: up to ``limit`` whole-object GETs at once, sent from
one thread, their answers finished (checked, written, renamed into place) by a few threads.

With one blocked worker thread per GET, every answer was a wake-up and a GIL hand-off to its
worker, and 32 workers contended for the GIL with the CRT's event-loop thread that delivers
the answers: CPU paid again for every small file, in the kernel mostly (futex and context
switches). Here no thread waits for an answer: the store hands each one over on its own thread
(:meth:`syncd.store.ObjectStore.fetch_whole`), into a queue that ``threads`` finishers drain
(two cores hash and write in parallel: hashlib and the file syscalls release the GIL).

Memory is bounded by the slots: a slot is taken before a GET is sent and given back only once
its file is finished, so at most ``limit`` bodies (each at most FETCH_WHOLE_LIMIT) are held.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from .store import ObjectStore, StoreError, Whole

log = structlog.get_logger("syncd.fetches")

Job = TypeVar("Job")


class Fetches(Generic[Job]):
    """GETs in flight and their finishers; :meth:`start` from one thread, :meth:`close` once."""

    def __init__(self, store: ObjectStore, limit: int, threads: int,
                 finish: Callable[[Job, Whole | StoreError], None]):
        """``finish(job, answer)`` runs on a finisher thread for every started fetch, exactly
        once; what it raises is a bug, re-raised by :meth:`close`."""
        self._store = store
        self._limit = max(1, limit)
        # The sender waits, once the slots are full, until this many are busy: one wake-up per
        # several answers rather than one per answer.
        self._low = self._limit - max(1, self._limit // 4)
        self._finish = finish
        self._cond = threading.Condition()
        self._busy = 0
        self._answers: queue.SimpleQueue[tuple[Job, Whole | StoreError] | None] = queue.SimpleQueue()  # None: stop
        self._bug: BaseException | None = None
        self._threads = [threading.Thread(target=self._finisher, name=f"restore-finish-{n}", daemon=True)
                         for n in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def start(self, key: str, version: str | None, job: Job) -> None:
        """Send the GET of ``key`` once a slot is free; its answer goes to ``finish`` with ``job``.
        Waiting for a slot can be interrupted (Ctrl-C): nothing was sent then."""
        with self._cond:
            if self._busy >= self._limit:
                while self._busy > self._low:
                    self._cond.wait()
            self._busy += 1
        try:
            self._store.fetch_whole(key, version, lambda answer: self._answers.put((job, answer)))
        except BaseException:
            with self._cond:  # never sent (a bug in the store): the slot is not taken
                self._busy -= 1
                self._cond.notify_all()
            raise

    def close(self) -> None:
        """Wait until every started fetch is finished, then stop the finishers. In-flight GETs
        end by themselves (a store's request has a deadline); after an interrupt ``finish`` is
        expected to drop what still comes."""
        with self._cond:
            while self._busy:
                self._cond.wait()
        for _ in self._threads:
            self._answers.put(None)
        for t in self._threads:
            t.join()
        if self._bug is not None:
            raise self._bug

    def _finisher(self) -> None:
        while True:
            got = self._answers.get()
            if got is None:
                return
            job, answer = got
            try:
                self._finish(job, answer)
            except BaseException as exc:  # finish handles every failure of a file: this is a bug
                log.exception("restore.finish_failed")
                self._bug = self._bug or exc
            finally:
                with self._cond:
                    self._busy -= 1
                    if self._busy <= self._low:
                        self._cond.notify_all()

"""The shared pools: a fixed number of threads serve every folder, each folder in its own lane.

One folder's burst must not starve another (issue 21): each folder submits into its own
:class:`Lane`, capped at the folder's ``workers`` threads, and a free thread takes the next
task from the lanes that have queued work in turn (round-robin). Threads are started when
work arrives and end after a while without any, so an idle daemon holds none of them, and
an idle thread waits on a condition: nothing ticks.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from .loops import LoopGroup

log = structlog.get_logger("syncd.pool")

T = TypeVar("T")
IDLE_EXIT = 10.0   # a thread without work for this long ends (the next burst starts it again)
# Probes (first contact, a halted folder looking again) wait on a store that may not answer:
# their own threads, so a dead endpoint's folders never hold the transfer threads.
PROBE_THREADS = 4
# Reconcile passes (walks, listings); a queued pass waits for one of these.
PASS_THREADS = 4
# The threads running every folder's scheduler turns (syncd.loops): the journal transactions
# of several bursting folders proceed side by side.
LOOP_THREADS = 4


class Lane:
    """One folder's queue in a :class:`Pool`: at most ``cap`` of its tasks run at once."""

    def __init__(self, pool: Pool, name: str, cap: int):
        self.pool = pool
        self.name = name
        self.cap = max(1, cap)
        self.queued: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self.running = 0
        self.closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a pool thread; it must not raise (what it raises is logged)."""
        self.pool._submit(self, fn, args)

    def call(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a pool thread; its result or exception in a Future."""
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever looks at the future
                future.set_exception(exc)

        self.submit(run)
        return future

    def close(self) -> int:
        """Drop what is queued (tasks running go on) and leave the pool; how many were dropped."""
        return self.pool._close(self)


class Pool:
    """Up to ``size`` threads shared by every lane (see the module docstring)."""

    def __init__(self, name: str, size: int, idle_exit: float = IDLE_EXIT):
        self.name = name
        self.size = max(1, size)
        self._idle_exit = idle_exit
        self._cond = threading.Condition()
        self._turns: deque[Lane] = deque()   # lanes with queued work, in the order they are served
        self._threads = 0
        self._idle = 0
        self._started = 0

    def lane(self, name: str, cap: int) -> Lane:
        return Lane(self, name, cap)

    def resize(self, size: int) -> None:
        """A reload changed the limit: extra threads end as they finish their task."""
        with self._cond:
            self.size = max(1, size)
            self._cond.notify_all()

    @property
    def threads(self) -> int:
        with self._cond:
            return self._threads

    def busy(self) -> int:
        """Tasks running now, over every lane."""
        with self._cond:
            return self._threads - self._idle

    # ------------------------------------------------------------------ internals

    def _servable(self, lane: Lane) -> bool:
        return bool(lane.queued) and lane.running < lane.cap and not lane.closed

    def _submit(self, lane: Lane, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._cond:
            if lane.closed:
                return
            lane.queued.append((fn, args))
            if lane not in self._turns and lane.running < lane.cap:
                self._turns.append(lane)
            if self._idle:
                self._cond.notify()
            elif self._threads < self.size:
                self._threads += 1
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()

    def _close(self, lane: Lane) -> int:
        with self._cond:
            lane.closed = True
            dropped = len(lane.queued)
            lane.queued.clear()
            if lane in self._turns:
                self._turns.remove(lane)
            return dropped

    def _next(self) -> tuple[Lane, Callable[..., Any], tuple[Any, ...]] | None:
        """The next task, round-robin over the lanes; None when the thread should end."""
        with self._cond:
            while True:
                if self._threads > self.size:
                    self._threads -= 1
                    return None
                while self._turns:
                    lane = self._turns.popleft()
                    if not self._servable(lane):
                        continue  # capped or emptied: it rejoins when a task of it ends
                    fn, args = lane.queued.popleft()
                    lane.running += 1
                    if self._servable(lane):
                        self._turns.append(lane)  # behind every other lane with work
                    return lane, fn, args
                self._idle += 1
                woken = self._cond.wait(self._idle_exit)
                self._idle -= 1
                if not woken and not self._turns:
                    self._threads -= 1
                    return None

    def _done(self, lane: Lane) -> None:
        with self._cond:
            lane.running -= 1
            if self._servable(lane) and lane not in self._turns:
                self._turns.append(lane)

    def _work(self) -> None:
        while (task := self._next()) is not None:
            lane, fn, args = task
            try:
                fn(*args)
            except Exception as exc:  # a task must not end the thread that serves every folder
                log.exception("pool.task_failed", pool=self.name, lane=lane.name, error=str(exc))
            finally:
                self._done(lane)


@dataclass
class Pools:
    """Everything the folders share: transfer threads, probe and pass threads, loop threads."""

    transfers: Pool
    probes: Pool
    passes: Pool
    loops: LoopGroup

    @classmethod
    def create(cls, transfer_threads: int) -> Pools:
        return cls(transfers=Pool("transfer", transfer_threads), probes=Pool("probe", PROBE_THREADS),
                   passes=Pool("pass", PASS_THREADS), loops=LoopGroup(LOOP_THREADS))

    def close(self) -> None:
        self.loops.stop()

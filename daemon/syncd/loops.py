"""The loops: a few threads run every folder's scheduler turns, each when it is woken or due.

A thread per folder, each waking every second to look at its journal, cost a hundred folders
a hundred threads and a steady share of a core while nothing changed (issue 21). Here a
folder's loop is a :class:`Loop`: :meth:`Loop.set` (a change observed, a transfer ended, a
control command) makes it runnable, and its turn returns when it wants the next one
(None: only when woken). The threads wait on one condition until the earliest of those.
A folder's turns never overlap, so its journal keeps one writer at a time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("syncd.loops")

STUCK = 15.0  # a turn running or overdue this long means the loop is stuck (systemd watchdog)


class Loop:
    """One folder's loop: woken like a ``threading.Event`` (:meth:`set`)."""

    def __init__(self, group: LoopGroup | None, name: str, turn: Callable[[], float | None]):
        self._group = group
        self.name = name
        self.turn = turn
        self.due: float | None = None      # monotonic time of the next turn; None: not scheduled
        self.running_since: float | None = None
        self.not_before = 0.0              # the next turn waits until then (gathering results)
        self.woken = False
        self.started = False               # turns run only once started (LoopGroup.start)
        self.closed = False
        self._event = threading.Event()    # for a caller that waits outside the group (shutdown)
        self._seq = 0

    def set(self) -> None:
        """Any thread: run a turn soon (at once, or at ``not_before``)."""
        self._event.set()
        if self._group is not None:
            self._group._wake(self)

    def wait(self, timeout: float | None) -> bool:
        """Outside the group (a stopped loop's drain): wait until :meth:`set` is called."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def stuck(self, now: float) -> bool:
        """A turn has run, or been overdue, for more than STUCK seconds."""
        running, due = self.running_since, self.due
        return (running is not None and now - running > STUCK) or (
            due is not None and running is None and now - due > STUCK)


class Waker(Protocol):
    """What a folder's parts wake its loop with (a Loop, or a threading.Event in tests)."""

    def set(self) -> None: ...


class LoopGroup:
    """The threads that run every registered :class:`Loop`'s turns."""

    def __init__(self, threads: int = 2):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Loop]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"loop-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def loop(self, name: str, turn: Callable[[], float | None]) -> Loop:
        """A new loop; its turns begin with :meth:`start`."""
        return Loop(self, name, turn)

    def start(self, lp: Loop) -> None:
        """Run the first turn of ``lp`` now."""
        with self._cond:
            lp.started = True
            self._schedule(lp, time.monotonic())

    def close(self, lp: Loop, timeout: float = 30.0) -> None:
        """No more turns for ``lp``; returns once a turn running now has ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            lp.closed = True
            while lp.running_since is not None and time.monotonic() < deadline:
                self._cond.wait(0.1)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)

    # ------------------------------------------------------------------ internals

    def _wake(self, lp: Loop) -> None:
        with self._cond:
            if lp.closed or not lp.started:
                return
            if lp.running_since is not None:
                lp.woken = True  # it turns again as soon as this turn ends
                return
            self._schedule(lp, max(time.monotonic(), lp.not_before))

    def _schedule(self, lp: Loop, at: float, notify: bool = True) -> None:
        """Under the lock: make ``lp`` due at ``at`` unless it is due earlier already.
        ``notify`` False: the calling thread looks at the heap next itself (a turn just ended)."""
        if lp.due is not None and lp.due <= at:
            return
        lp.due = at
        lp._seq = next(self._seq)
        heapq.heappush(self._heap, (at, lp._seq, lp))
        if notify:
            self._cond.notify()

    def _take(self) -> Loop | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].due is None or self._heap[0][1] != self._heap[0][2]._seq
                                      or self._heap[0][2].closed):
                    heapq.heappop(self._heap)  # superseded by a later schedule, or closed
                if self._heap and self._heap[0][0] <= now:
                    _, _, lp = heapq.heappop(self._heap)
                    lp.due = None
                    lp.running_since = now
                    lp.woken = False
                    if self._heap:
                        self._cond.notify()  # another thread watches what else is scheduled
                    return lp
                self._cond.wait(None if not self._heap else self._heap[0][0] - now)
            return None

    def _run(self) -> None:
        while (lp := self._take()) is not None:
            delay: float | None = 1.0
            try:
                delay = lp.turn()
            except Exception as exc:  # the turn handles its own errors; this is a bug: try again soon
                log.exception("loop.turn_failed", loop=lp.name, error=str(exc))
            with self._cond:
                lp.running_since = None
                now = time.monotonic()
                # This thread takes the next turn itself (it waits for the heap next): waking
                # another for it, or every idle one after each turn, cost each of them a
                # wake-up and a GIL hand-off per turn, hundreds of turns a second while busy.
                if lp.closed:
                    self._cond.notify_all()  # close() is waiting for this turn
                elif lp.woken:
                    self._schedule(lp, max(now, lp.not_before), notify=False)
                elif delay is not None:
                    self._schedule(lp, max(now + delay, lp.not_before), notify=False)

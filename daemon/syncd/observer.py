"""The watchdog observer of every folder, with one emitter thread for all of their watches.

watchdog's inotify observer shares one inotify descriptor (and its reading thread) between
watches, but gives each watch an emitter thread of its own, which waits for that watch's
events and pairs its moves: a hundred folders, a hundred threads (issue 21). Here each watch
keeps watchdog's own watch group (recursive watches, move tracking, overflow repair) and
emitter (event building and filtering); only the waiting is shared: every watch group puts
its events into a :class:`_Grouper` that notifies one condition, and one :class:`Pump`
thread hands them to their emitters. An unpaired IN_MOVED_FROM is held back for the same
half second watchdog holds it, waiting for its IN_MOVED_TO.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver, EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.inotify_move_event_grouper import (
    GroupedInotifyEvent,
    InotifyMoveEventGrouper,
    PathedInotifyEvent,
)

from .watches import directories

MOVE_DELAY = InotifyMoveEventGrouper.delay  # how long an IN_MOVED_FROM waits for its IN_MOVED_TO


class Pump:
    """The one thread that waits for every watch's events and hands them to its emitter."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._groupers: set[_Grouper] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="watch-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify()
        if self._thread.is_alive():
            self._thread.join(5)

    def add(self, grouper: _Grouper) -> None:
        with self.cond:
            self._groupers.add(grouper)

    def remove(self, grouper: _Grouper) -> None:
        with self.cond:
            self._groupers.discard(grouper)

    def _take(self) -> list[tuple[_Grouper, GroupedInotifyEvent]] | None:
        """Every event ready now, waiting (without a timeout when none is held) until one is."""
        with self.cond:
            while not self._stopped:
                now = time.monotonic()
                ready: list[tuple[_Grouper, GroupedInotifyEvent]] = []
                wake_at: float | None = None
                for grouper in self._groupers:
                    held_until = grouper.take_ready(now, ready)
                    if held_until is not None and (wake_at is None or held_until < wake_at):
                        wake_at = held_until
                if ready:
                    return ready
                self.cond.wait(None if wake_at is None else max(0.0, wake_at - now))
            return None

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            for grouper, event in batch:
                grouper.emit(event)


@dataclass(eq=False)
class _Grouper:
    """watchdog's move grouping for one watch group, queued on the pump's condition
    (the interface :class:`InotifyMoveEventGrouper` offers its watch group)."""

    pump: Pump
    emit: Callable[[GroupedInotifyEvent], None]
    _queue: deque[tuple[GroupedInotifyEvent, float]] = field(default_factory=deque)  # (event, held until)
    closed: bool = False

    def put_event(self, event: PathedInotifyEvent) -> None:
        held = time.monotonic() + MOVE_DELAY if event.ev.is_moved_from else 0.0
        with self.pump.cond:
            grouped: GroupedInotifyEvent = event
            if event.ev.is_moved_to:
                source = self._pop_moved_from(event.ev.cookie)
                if source is not None:
                    grouped = (source, event)
            self._queue.append((grouped, held))
            self.pump.cond.notify()

    def _pop_moved_from(self, cookie: int) -> PathedInotifyEvent | None:
        for i, (queued, _) in enumerate(self._queue):
            if isinstance(queued, PathedInotifyEvent) and queued.ev.is_moved_from and queued.ev.cookie == cookie:
                del self._queue[i]
                return queued
        return None

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        with self.pump.cond:
            for queued, _ in self._queue:
                if isinstance(queued, PathedInotifyEvent) and queued.ev.is_moved_from and queued.ev.cookie == cookie:
                    return queued
        return None

    def take_ready(self, now: float, out: list[tuple[_Grouper, GroupedInotifyEvent]]) -> float | None:
        """Under the pump's lock: move the events that may go into ``out``, in order; the
        time the first held one may go, if one is held."""
        while self._queue:
            event, held = self._queue[0]
            if held > now:
                return held
            self._queue.popleft()
            out.append((self, event))
        return None

    def discard_pending_events(self) -> None:
        with self.pump.cond:
            self._queue.clear()

    def read_event(self) -> GroupedInotifyEvent | None:
        return None  # nothing reads it: the pump hands events over

    def close(self) -> None:
        with self.pump.cond:
            self.closed = True
            self._queue.clear()
        self.pump.remove(self)


@dataclass
class _WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, its events grouped by a :class:`_Grouper` on the pump."""

    grouper: _Grouper | None = None

    def __post_init__(self) -> None:
        assert self.grouper is not None
        self._move_event_grouper = self.grouper  # type: ignore[assignment]  # (its interface, see _Grouper)
        super().__post_init__()  # activates the watches: events go to the grouper from now on

    def _add_all_callbacks(self, path: bytes) -> None:
        """The root's directories listed by find, not os.walk (see syncd.watches)."""
        found = None
        if path == self.path and self.is_recursive and not self.follow_symlink and os.path.isdir(path):
            found = directories(path)
        if found is None:
            super()._add_all_callbacks(path)
            return
        self._add_callback(path)
        for directory in found:
            self._add_callback(directory)


class SharedEmitter(InotifyEmitter):
    """watchdog's inotify emitter without a thread of its own (the pump feeds it)."""

    def __init__(self, event_queue: EventQueue, watch: ObservedWatch, *, pump: Pump, **kwargs: Any) -> None:
        super().__init__(event_queue, watch, **kwargs)
        self._pump = pump
        self._grouper: _Grouper | None = None

    def start(self) -> None:
        """Install the watches (raising OSError, as watchdog's emitter does, when the root
        cannot be watched), but start no thread."""
        self.on_thread_start()

    def on_thread_start(self) -> None:
        grouper = _Grouper(self._pump, self._emit)
        self._grouper = grouper
        self._pump.add(grouper)
        try:
            self._inotify = _WatchGroup(self._inotify_fd, os.fsencode(self.watch.path),
                                        is_recursive=self.watch.is_recursive,
                                        event_mask=self.get_event_mask_from_filter(),
                                        follow_symlink=self.watch.follow_symlink, grouper=grouper)
        except BaseException:
            self._pump.remove(grouper)
            raise

    def _emit(self, event: GroupedInotifyEvent) -> None:
        with self._lock:
            if self._inotify is None:
                return  # stopped meanwhile
            self.build_and_queue_event(event)

    def join(self, timeout: float | None = None) -> None:
        return  # no thread to join

    def is_alive(self) -> bool:
        return self._inotify is not None


class SharedObserver(BaseObserver):
    """An inotify observer whose watches share one descriptor and one emitter thread."""

    def __init__(self, *, timeout: float = DEFAULT_OBSERVER_TIMEOUT) -> None:
        self._inotify_fd = InotifyFD()
        self._inotify_fd.start()
        self._pump = Pump()
        super().__init__(SharedEmitter, timeout=timeout, inotify_fd=self._inotify_fd, pump=self._pump)

    def on_thread_start(self) -> None:
        self._pump.start()
        super().on_thread_start()

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._pump.stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()

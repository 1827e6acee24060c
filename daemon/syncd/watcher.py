"""The watcher: turns raw filesystem events into "this path may have changed" notes.

It never talks to S3 and never reads file contents. Debouncing (quiet period, maximum
delay) happens durably in the journal; this module only filters and pairs events.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

from .paths import IgnoreRules, relpath_of
from .watches import Observer  # watchdog's inotify observer, root walks by find

log = structlog.get_logger("syncd.watcher")

# The events that can change what the bucket must hold. watchdog turns this list into the
# inotify mask, so the kernel never queues the rest: without it every file syncd reads for an
# upload came back as IN_OPEN + IN_CLOSE_NOWRITE, and decoding those was a large share of the
# daemon's CPU in an initial sync. Directory modify events
# are left out too: the files inside get their own events.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]


class Sink(Protocol):
    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None: ...


class FolderEvents(FileSystemEventHandler):
    """Event handler for one folder: filters, pairs moves, and hands paths to the sink."""

    def __init__(self, name: str, root: str, ignore: IgnoreRules, sink: Sink):
        self.name = name
        self.root = root
        self.ignore = ignore
        self.sink = sink
        self._bad_names: set[str] = set()

    def _rel(self, path: bytes | str) -> str | None:
        rel = relpath_of(self.root, os.fsdecode(path))
        if rel is None:
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            # Not representable as an S3 key (and not storable as text): say so once.
            if rel not in self._bad_names and len(self._bad_names) < 10_000:
                self._bad_names.add(rel)
                log.error("path.invalid_name", folder=self.name, path=rel.encode("utf-8", "surrogateescape"),
                          error="file name is not valid UTF-8 and cannot become an S3 key; rename it")
            return None
        return None if self.ignore.ignored_with_parents(rel) else rel

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileSystemMovedEvent):
            src = self._rel(event.src_path)
            dst = self._rel(event.dest_path) if event.dest_path else None
            if isinstance(event, DirMovedEvent):
                # watchdog also emits a move for each file inside; the manifest expansion
                # covers files it may miss (and removes keys for the old location).
                if src is not None:
                    self.sink.submit(src, is_dir=True)
                return
            if dst is not None:
                self.sink.submit(dst, move_from=src)
            if src is not None:
                self.sink.submit(src)
            return
        if isinstance(event, DirDeletedEvent):
            rel = self._rel(event.src_path)
            if rel is not None:
                self.sink.submit(rel, is_dir=True)
            return
        if event.is_directory:
            return  # directory create/modify: the files inside get their own events
        rel = self._rel(event.src_path)
        if rel is not None:
            self.sink.submit(rel)


class _OverflowHook(logging.Handler):
    """watchdog rebuilds its watches after IN_Q_OVERFLOW but tells its caller nothing
    (watchdog issue 654): its log record is the only signal, so listen for it."""

    def __init__(self, callback: Callable[[], None]):
        super().__init__(logging.WARNING)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "events were lost" in record.getMessage():  # inotify_c: IN_Q_OVERFLOW read
            self.callback()


class Watcher:
    """One watchdog observer (one inotify instance) for every folder."""

    def __init__(self, on_overflow: Callable[[], None] | None = None) -> None:
        self._observer: BaseObserver = Observer()
        self._watches: dict[str, ObservedWatch] = {}
        self._hook: _OverflowHook | None = None
        if on_overflow is not None:
            self._hook = _OverflowHook(on_overflow)
            logging.getLogger("watchdog.observers").addHandler(self._hook)

    def start(self) -> None:
        self._observer.start()

    def add(self, name: str, root: str, ignore: IgnoreRules, sink: Sink) -> None:
        """Install recursive watches; returns once they are in place (READY depends on it)."""
        handler = FolderEvents(name, root, ignore, sink)
        self._watches[name] = self._observer.schedule(handler, root, recursive=True, event_filter=EVENTS)

    def remove(self, name: str) -> None:
        watch = self._watches.pop(name, None)
        if watch is not None:
            self._observer.unschedule(watch)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)
        if self._hook is not None:
            logging.getLogger("watchdog.observers").removeHandler(self._hook)

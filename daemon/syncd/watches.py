"""The recursive inotify watches of a folder root, listed by GNU find instead of os.walk.

watchdog puts one inotify watch on every directory below a root, finding them with
``os.walk``, which builds a Python object for every entry, file or not: with a million files
that walk was the largest part of a no-change restart, before READY. ``find -type d`` reads the
same directories in C. Only the walk of the whole root goes through find (at start-up and when
watchdog rebuilds its watches after a queue overflow); a directory created while watching is
still walked by watchdog itself, where a process launch would cost more than the walk.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup

from . import tree


def directories(root: bytes) -> list[bytes] | None:
    """Every directory below ``root`` (not through symlinks), parents before children; None
    if find cannot run. A directory find cannot read is left out, as os.walk leaves it out."""
    if not tree.available():
        return None
    try:
        out = subprocess.run(["find", "-P", root, "-mindepth", "1", "-type", "d", "-print0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except OSError:
        return None
    return [p for p in out.split(b"\0") if p]


class _WatchGroup(InotifyWatchGroup):
    def _add_all_callbacks(self, path: bytes) -> None:
        found = None
        if path == self.path and self.is_recursive and not self.follow_symlink and os.path.isdir(path):
            found = directories(path)
        if found is None:
            super()._add_all_callbacks(path)
            return
        self._add_callback(path)
        for directory in found:
            self._add_callback(directory)


class _Emitter(InotifyEmitter):
    def on_thread_start(self) -> None:
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )


class Observer(InotifyObserver):
    """watchdog's inotify observer, its roots' watches listed by find (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emitter_class = _Emitter

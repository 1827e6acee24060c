"""The recursive inotify watches of a folder root, listed by GNU find instead of os.walk.

watchdog puts one inotify watch on every directory below a root, finding them with
``os.walk``, which builds a Python object for every entry, file or not: with a million files
that walk was the largest part of a no-change restart, before READY. ``find -type d`` reads the
same directories in C. Only the walk of the whole root goes through find (at start-up and when
watchdog rebuilds its watches after a queue overflow); a directory created while watching is
still walked by watchdog itself, where a process launch would cost more than the walk
(:class:`syncd.observer` uses it for every watch group).
"""

from __future__ import annotations

import os
import subprocess

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

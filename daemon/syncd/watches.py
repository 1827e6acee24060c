"""The recursive inotify watches of a folder root: its directories, listed without reading
every directory.

watchdog puts one inotify watch on every directory below a root, finding them with
``os.walk``, which builds a Python object for every entry, file or not: with a million files
that walk was the largest part of a no-change restart, before READY. ``find -type d`` reads the
same directories in C, but still reads every entry of every directory. On filesystems whose
directories count their subdirectories in ``st_nlink`` (2 + subdirectories: ext2/3/4, XFS,
tmpfs, as GNU find's leaf optimisation also relies on), a directory whose ``st_nlink`` is 2
holds no directory and need not be read at all: in a tree of many files that is almost every
directory. Elsewhere (btrfs and overlayfs report 1, network filesystems what their server
says) find lists them. Only the walk of the whole root goes through here (at start-up and
when watchdog rebuilds its watches after a queue overflow); a directory created while
watching is still walked by watchdog itself (:class:`syncd.observer` uses this for every
watch group).
"""

from __future__ import annotations

import ctypes
import os
import stat as statmod
import subprocess

from . import tree

# statfs(2) f_type of the filesystems whose directories have st_nlink = 2 + subdirectories.
# ext4 with dir_nlink reports 1 past 65,000 subdirectories: only exactly 2 is trusted.
NLINK_COUNTS_SUBDIRS = frozenset({0xEF53, 0x58465342, 0x01021994})  # ext2/3/4, xfs, tmpfs
_STATFS_SIZE = 512  # larger than struct statfs on every architecture; f_type is its first word


def _load_statfs() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).statfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_statfs = _load_statfs()


def fs_type(path: bytes) -> int | None:
    """statfs(2)'s f_type of the filesystem holding ``path``, or None if unknown."""
    if _statfs is None:
        return None
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _statfs(path, buf) != 0:  # type: ignore[operator]
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def directories(root: bytes) -> list[bytes] | None:
    """Every directory below ``root`` (not through symlinks), parents before children; None
    if they cannot be listed here. A directory that cannot be read is listed, not entered."""
    if fs_type(root) in NLINK_COUNTS_SUBDIRS:
        return _by_nlink(root)
    return _by_find(root)


def _by_nlink(root: bytes) -> list[bytes]:
    """Directories are read only if their st_nlink says they hold one (see the module)."""
    try:
        device = os.lstat(root).st_dev
    except OSError:
        return []
    trusted = {device: True}
    found: list[bytes] = []
    todo = [root]
    while todo:
        parent = todo.pop()
        try:
            with os.scandir(parent) as it:
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone since it was listed
                    if not statmod.S_ISDIR(st.st_mode):
                        continue
                    found.append(entry.path)
                    if st.st_dev not in trusted:  # a mount point: its filesystem may count otherwise
                        trusted[st.st_dev] = fs_type(entry.path) in NLINK_COUNTS_SUBDIRS
                    if st.st_nlink != 2 or not trusted[st.st_dev]:
                        todo.append(entry.path)
        except OSError:
            continue  # unreadable: listed by its parent, not entered (as find does)
    return found


def _by_find(root: bytes) -> list[bytes] | None:
    if not tree.available():
        return None
    try:
        out = subprocess.run(["find", "-P", root, "-mindepth", "1", "-type", "d", "-print0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except OSError:
        return None
    return [p for p in out.split(b"\0") if p]

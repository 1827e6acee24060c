"""The local pass: find drift between the local tree and the manifest, and record it in the
journal as pending changes.

It catches changes made while the daemon was down or while the watcher was blind (an inotify
overflow). It is a streaming merge join: the walk visits paths in byte order (each
directory's entries sorted, with directories compared as ``name/``), the manifest is read in
the same order, so memory stays proportional to the tree's depth, not its size. Only
``lstat`` is used: no file is read.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from . import tree
from .beneath import LIST_FLAGS, RootDir
from .paths import IgnoreRules
from .spool import kept_path, refresh

if TYPE_CHECKING:  # annotations only: restore's and verify's walk need no journal or watchdog
    from .journal import Journal
    from .watcher import Sink

log = structlog.get_logger("syncd.scan")

SCAN_RULES = "scan_rules"  # journal meta: fingerprint of the ignore rules of the last complete walk
BLOCK_ROWS = 1024          # manifest rows compared at once with the listing (about 50 KB)

Listing = list[tuple[str, os.DirEntry[str], bool]]  # a directory's entries: (sort key, entry, is_dir)


@dataclass
class ScanReport:
    files: int = 0
    changed: int = 0
    missing: int = 0
    seconds: float = 0.0
    finished_at: float = 0.0
    rules: str = ""  # set by a complete Python walk: the ignore rules it applied (SCAN_RULES)
    spool_reused: bool = False  # the fast path read the manifest from the kept spool (syncd.spool)


def walk(root: str | RootDir, ignore: IgnoreRules,
         stop: threading.Event | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below ``root`` as (relative path, lstat) in byte order of the path.

    Each directory is opened from its parent's fd with O_NOFOLLOW, so a directory swapped
    for a symlink mid-walk is never entered (syncd.beneath)."""
    rootdir = root if isinstance(root, RootDir) else RootDir(root)
    device = rootdir.device if rootdir.one_file_system else None

    def listing(fd: int, rel_dir: str) -> Listing:
        entries = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    entries.append((e.name + "/" if is_dir else e.name, e, is_dir))
        except OSError as exc:
            log.warning("scan.unreadable_dir", path=rel_dir or ".", error=exc.strerror)
            return []
        # Names are unique within a directory, so tuples never compare past the name.
        entries.sort(reverse=True)  # popped from the end: ascending
        return entries

    def enter(parent: int, name: str, rel: str) -> int | None:
        try:
            fd = os.open(name, LIST_FLAGS, dir_fd=parent)
        except OSError as exc:  # ENOTDIR/ELOOP: swapped for a symlink since it was listed
            log.warning("scan.unreadable_dir", path=rel, error=exc.strerror)
            return None
        if device is not None and os.fstat(fd).st_dev != device:
            os.close(fd)  # a mount point (one_file_system): not entered
            return None
        return fd

    top = rootdir.open_dir("")
    stack: list[tuple[str, int, Listing]] = [("", top, listing(top, ""))]
    match = ignore.ignored
    try:
        while stack:
            if stop is not None and stop.is_set():
                return
            rel_dir, dir_fd, entries = stack[-1]
            prefix = rel_dir + "/" if rel_dir else ""
            while entries:  # this directory's entries, until a subdirectory takes over
                _, entry, is_dir = entries.pop()
                rel = prefix + entry.name
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # not representable as a key; the watcher reports such names
                if match(rel, is_dir):
                    continue
                if is_dir:
                    sub = enter(dir_fd, entry.name, rel)
                    if sub is None:
                        continue
                    stack.append((rel, sub, listing(sub, rel)))
                    break
                try:
                    st = entry.stat(follow_symlinks=False)  # fstatat on dir_fd
                except OSError:
                    continue
                if statmod.S_ISREG(st.st_mode) and (device is None or st.st_dev == device):
                    yield rel, st
            else:
                os.close(stack.pop()[1])
    finally:
        for _, fd, _ in stack:
            os.close(fd)


def listing_valid(journal: Journal, ignore: IgnoreRules) -> bool:
    """May a pass take the fast path (find's listing against the manifest)? GNU find and sort
    are installed, and the ignore rules are those of the last complete walk."""
    return tree.available() and journal.get_meta(SCAN_RULES) == ignore.fingerprint


def keep_manifest(journal: Journal, ignore: IgnoreRules, seconds: float) -> bool:
    """As a folder stops, once nothing writes its journal: the manifest printed into the kept
    spool for the next start's pass, if that pass takes the fast path (syncd.spool)."""
    return listing_valid(journal, ignore) and refresh(journal.path, BLOCK_ROWS, seconds)


class LocalScan:
    """Compares the local tree with the manifest and submits every difference."""

    def __init__(self, name: str, root: str | RootDir, ignore: IgnoreRules, journal: Journal, sink: Sink):
        self.name = name
        self.rootdir = root if isinstance(root, RootDir) else RootDir(root)
        self.root = self.rootdir.path
        self.ignore = ignore
        self.journal = journal
        self.sink = sink
        self._log = log.bind(folder=name)

    def run(self, stop: threading.Event) -> ScanReport:
        started = time.monotonic()
        report = ScanReport()
        if not self.rootdir.still_there():
            # The path leads elsewhere now (the guard holds the folder): a listing of it
            # would describe another directory.
            self._log.warning("scan.skipped", reason=f"folder root {self.root} was moved, replaced or unmounted")
            return report
        if listing_valid(self.journal, self.ignore):
            try:
                self._compare_listing(stop, report)
            except tree.TreeError as exc:
                self._log.warning("scan.listing_failed", error=str(exc), action="walking the tree in Python instead")
                report = ScanReport()
                self._compare_walk(stop, report)
        else:
            self._compare_walk(stop, report)
        if stop.is_set():
            return report
        report.seconds = time.monotonic() - started
        report.finished_at = time.time()
        self._log.info("scan.done", files=report.files, changed=report.changed, missing=report.missing,
                       ms=round(report.seconds * 1000), walk="python" if report.rules else "find",
                       manifest="kept" if report.spool_reused else "printed")
        return report

    def _compare_listing(self, stop: threading.Event, report: ScanReport) -> None:
        """GNU find's listing against the manifest in blocks (see syncd.tree): the fast path,
        valid while the ignore rules are those of the last complete walk."""
        diff = tree.TreeDiff(self.rootdir, self.ignore)
        blocks = self.journal.manifest_blocks(BLOCK_ROWS)
        diffs = diff.run(blocks, stop, kept_path(self.journal.path))
        try:
            self._submit_diffs(diffs, report)
        finally:
            diffs.close()   # reaps find and sort now, even when a submit raised
            blocks.close()  # releases its read snapshot now, not at garbage collection
        report.files = diff.files
        report.spool_reused = diff.spool_reused
        for line in diff.unreadable[:5]:
            self._log.warning("scan.unreadable_dir", error=line.decode(errors="replace"))

    def _submit_diffs(self, diffs: Iterator[tree.Diff], report: ScanReport) -> None:
        renames: bool | None = None
        for d in diffs:
            if d.kind == tree.MISSING:
                self._missing(d.path, report)
                continue
            report.changed += 1
            move_from = None
            if d.kind == tree.NEW:
                if renames is None:  # nothing can have been renamed from an empty manifest (a new folder)
                    renames = self.journal.manifest_count() > 0
                if renames:
                    try:
                        move_from = self._renamed_from(d.path, self.rootdir.lstat(d.path))
                    except OSError:
                        pass  # gone already: its own event or the planner deals with it
            self.sink.submit(d.path, move_from=move_from, settle=False)

    def _compare_walk(self, stop: threading.Event, report: ScanReport) -> None:
        """The Python walk merged with the manifest: exact under any ignore rules, and the
        walk that makes the rules' fingerprint valid for the fast path once journaled."""
        manifest = self.journal.iter_manifest()
        m = next(manifest, None)
        renames = m is not None  # nothing can have been renamed from an empty manifest (a new folder)
        for rel, st in walk(self.rootdir, self.ignore, stop):
            report.files += 1
            while m is not None and m[0] < rel:
                self._missing(m[0], report)
                m = next(manifest, None)
            if m is not None and m[0] == rel:
                if (m[1], m[2]) != (st.st_size, st.st_mtime_ns):
                    report.changed += 1
                    self.sink.submit(rel, settle=False)
                m = next(manifest, None)
            else:
                report.changed += 1
                self.sink.submit(rel, move_from=self._renamed_from(rel, st) if renames else None, settle=False)
        if stop.is_set():
            manifest.close()  # releases its read snapshot now, not at garbage collection
            return
        while m is not None:
            self._missing(m[0], report)
            m = next(manifest, None)
        report.rules = self.ignore.fingerprint

    def _missing(self, rel: str, report: ScanReport) -> None:
        report.missing += 1
        self.sink.submit(rel, settle=False)

    def _renamed_from(self, rel: str, st: os.stat_result) -> str | None:
        """A manifest path that is this very file under its old name (renamed while down)."""
        entry = self.journal.lookup_inode(st.st_ino, st.st_size, st.st_mtime_ns, rel)
        if entry is None:
            return None
        try:
            old = self.rootdir.lstat(entry)
            if old.st_ino == st.st_ino:
                return None  # a hard link: both names exist; the copy happens anyway
        except OSError:
            pass
        return entry



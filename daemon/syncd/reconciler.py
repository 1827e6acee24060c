"""The reconciler: find drift between the local tree and the manifest, record it as pending.

At startup it is how changes made while the daemon was down are caught. It is a streaming
merge join: the walk visits paths in byte order (each directory's entries sorted, with
directories compared as ``name/``), the manifest is read in the same order, so memory stays
proportional to the tree's depth, not its size. Only ``lstat`` is used: no file is read.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from .journal import Journal
from .paths import IgnoreRules
from .watcher import Sink

log = structlog.get_logger("syncd.reconciler")


@dataclass
class ScanReport:
    files: int = 0
    changed: int = 0
    missing: int = 0
    seconds: float = 0.0
    finished_at: float = 0.0


def walk(root: str, ignore: IgnoreRules, stop: threading.Event | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below ``root`` as (relative path, lstat) in byte order of the path."""
    stack: list[tuple[str, list[tuple[str, os.DirEntry[str], bool]]]] = []

    def listing(rel_dir: str) -> list[tuple[str, os.DirEntry[str], bool]]:
        try:
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                entries = []
                for e in it:
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    entries.append((e.name + "/" if is_dir else e.name, e, is_dir))
        except OSError as exc:
            log.warning("scan.unreadable_dir", path=rel_dir or ".", error=exc.strerror)
            return []
        entries.sort(key=lambda t: t[0], reverse=True)  # popped from the end: ascending
        return entries

    stack.append(("", listing("")))
    while stack:
        if stop is not None and stop.is_set():
            return
        rel_dir, entries = stack[-1]
        if not entries:
            stack.pop()
            continue
        _, entry, is_dir = entries.pop()
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            continue  # not representable as a key; the watcher reports such names
        if ignore.ignored(rel, is_dir):
            continue
        if is_dir:
            stack.append((rel, listing(rel)))
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if statmod.S_ISREG(st.st_mode):
            yield rel, st


class LocalScan:
    """Compares the local tree with the manifest and submits every difference."""

    def __init__(self, name: str, root: str, ignore: IgnoreRules, journal: Journal, sink: Sink):
        self.name = name
        self.root = root
        self.ignore = ignore
        self.journal = journal
        self.sink = sink
        self._log = log.bind(folder=name)

    def run(self, stop: threading.Event) -> ScanReport:
        started = time.monotonic()
        report = ScanReport()
        manifest = self.journal.iter_manifest()
        m = next(manifest, None)
        for rel, st in walk(self.root, self.ignore, stop):
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
                self.sink.submit(rel, move_from=self._renamed_from(rel, st), settle=False)
        if stop.is_set():
            manifest.close()  # releases its read snapshot now, not at garbage collection
            return report
        while m is not None:
            self._missing(m[0], report)
            m = next(manifest, None)
        report.seconds = time.monotonic() - started
        report.finished_at = time.time()
        self._log.info("scan.done", files=report.files, changed=report.changed, missing=report.missing,
                       ms=round(report.seconds * 1000))
        return report

    def _missing(self, rel: str, report: ScanReport) -> None:
        report.missing += 1
        self.sink.submit(rel, settle=False)

    def _renamed_from(self, rel: str, st: os.stat_result) -> str | None:
        """A manifest path that is this very file under its old name (renamed while down)."""
        entry = self.journal.lookup_inode(st.st_ino, st.st_size, st.st_mtime_ns, rel)
        if entry is None:
            return None
        try:
            old = os.lstat(os.path.join(self.root, entry))
            if old.st_ino == st.st_ino:
                return None  # a hard link: both names exist; the copy happens anyway
        except OSError:
            pass
        return entry

"""The reconciler's remote pass: find drift between the bucket and the manifest, and record
it in the journal as pending changes (the local pass is syncd.scan). Described on RemotePass.
"""

from __future__ import annotations

import os
import sqlite3
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Protocol

import structlog

from . import scan
from .adoption import (
    INLINE_READ_LIMIT,
    READ_FIRST_LIMIT,
    Proof,
    digest,
    etag_parts,
    etag_proof,
    meta_proof,
    own_mtime_matches,
    part_sizes,
)
from .beneath import folder_root
from .changes import Entry
from .config import FolderConfig
from .journal import Journal
from .listing import Prefetch, Spool
from .paths import IgnoreRules, reserved
from .store import META_MTIME, META_OWNER, META_SHA256, ObjectStore, RemoteObject, StoreError
from .trash import expired

log = structlog.get_logger("syncd.reconciler")

UNKNOWN_BATCH = 512   # unknown objects fetched from the join at once
READ_SLICE = 32       # ... and handed to a reader thread at once
READ_WORKERS = min(4, max(2, os.cpu_count() or 1))  # reading and hashing small files in parallel



class Verdict(StrEnum):
    """The remote pass's verdict on an object the manifest does not know."""

    ADOPT = "adopt"      # it holds the local file: recorded in the manifest, not uploaded
    ORPHAN = "orphan"    # this folder's own id, its file gone: recorded, then deleted
    OURS = "ours"        # a write intent: the planner checks it against the file
    FOREIGN = "foreign"  # not ours and no local file: left alone unless delete_foreign
    SKIP = "skip"        # the file differs (the scan uploads it) or the object is gone


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    path: str
    entry: Entry | None = None
    heads: int = 0
    read: int = 0  # bytes of the local file read to prove it (syncd.adoption)
    proof: Proof | None = None


@dataclass
class RemoteReport:
    objects: int = 0
    lists: int = 0
    heads: int = 0
    drift: int = 0           # objects missing or different from what syncd wrote
    adopted: int = 0         # objects recognised as unchanged files: moving in, journal rebuild
    files_read: int = 0      # local files read to prove an object holds them (syncd.adoption)
    bytes_read: int = 0      # ... and their bytes: the price of adopting instead of uploading
    adopted_by: dict[str, int] = field(default_factory=dict)  # adoptions per Proof
    orphans: int = 0         # objects of this folder's own id whose file is gone: deleted
    unconfirmed: int = 0     # objects of unrecorded writes (intents): checked by the planner
    foreign: int = 0         # keys under the prefix that syncd did not write
    foreign_examples: list[str] = field(default_factory=list)
    uploads_aborted: int = 0  # incomplete multipart uploads swept (abandoned or stale)
    trash_purged: int = 0    # trash entries older than trash_retain, deleted
    seconds: float = 0.0


Row = tuple[str, int, str, int, int]  # an unknown object: path, size, etag, intended, known foreign
_ASK = os.stat_result((0,) * 10)      # its local file not looked up yet
Unknown = tuple[Row, os.stat_result | None]  # ... with its local file's lstat, None if there is none


class _Walked:
    """The tree's regular files (syncd.scan.walk), looked up in ascending path order: a
    merge join with the listing, one directory read instead of one path resolved per file."""

    def __init__(self, files: Iterator[tuple[str, os.stat_result]]):
        self._files = files
        self._next = next(files, None)
        self._asked: str | None = None

    def stat(self, path: str) -> os.stat_result | None:
        if self._asked is not None and path < self._asked:
            return _ASK  # behind the walk (a listing out of order): looked up on its own
        self._asked = path
        # str order is code point order, the UTF-8 byte order of the walk and of SQLite.
        while self._next is not None and self._next[0] < path:
            self._next = next(self._files, None)
        return self._next[1] if self._next is not None and self._next[0] == path else None

    def close(self) -> None:
        close = getattr(self._files, "close", None)
        if close is not None:
            close()  # the walk's directory fds


class Adopter(Protocol):
    def submit(self, path: str, move_from: str | None = None, settle: bool = True,
               is_dir: bool = False) -> None: ...
    def submit_forget(self, path: str, mtime_ns: int, etag: str | None) -> None: ...
    def submit_adopt(self, entry: Entry) -> None: ...


class RemotePass:
    """Compares the bucket listing with the manifest; repairs drift, rebuilds a lost journal.

    The listing is spooled into a scratch SQLite table and joined with the manifest in SQL:
    memory stays flat however many objects there are, and no listing order is assumed (S3's
    key order, where it holds, lets each page's objects be decided while the next page is
    fetched: syncd.listing). In steady state it costs LIST requests only; HEAD is used just
    for objects the manifest does not know (to read syncd's metadata and adopt unchanged
    files instead of uploading them).
    """

    HEAD_WORKERS = 16

    def __init__(self, folder: FolderConfig, journal: Journal, store: ObjectStore, sink: Adopter,
                 scratch: Path, ignore: IgnoreRules, owners: frozenset[str],
                 clock: Callable[[], float] = time.time):
        """``clock``: the time trash entries' age is judged by (tests move it on)."""
        self.folder = folder
        self.clock = clock
        self.owners = owners  # ids whose objects are this folder's own (syncd.owner)
        self.journal = journal
        self.store = store
        self.sink = sink
        self.scratch = scratch
        self.root = str(folder.path)
        self.rootdir = folder_root(folder)
        self.ignore = ignore
        # SSE-KMS objects' ETags are not the MD5 of their content: only metadata proves them.
        self.etag_is_md5 = folder.sse != "aws:kms"
        self._log = log.bind(folder=folder.name)

    def run(self, stop: threading.Event, rebuild: bool,
            confirm: Callable[[], frozenset[str]] | None = None) -> RemoteReport:
        """``confirm``: the owner claim, called once the listing is under way and before any
        object is decided (reading needs no ownership; adopting does); it returns the
        folder's own ids, and raises to end the pass."""
        started = time.monotonic()
        report = RemoteReport()
        self.scratch.unlink(missing_ok=True)
        db = sqlite3.connect(f"file:{self.scratch}", uri=True)
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            # page: the listing page a row came in (syncd.listing.Spool: which rows are decided when)
            db.execute("CREATE TABLE remote(path TEXT PRIMARY KEY, size INTEGER, etag TEXT, page INTEGER) "
                       "WITHOUT ROWID")
            db.execute("CREATE TABLE purge(key TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("ATTACH DATABASE ? AS j", (f"file:{self.journal.path}?mode=ro",))
            self._listing(db, report, stop, walk=rebuild, confirm=confirm)
            if stop.is_set():
                return report
            self._drift(db, report, stop)
            self._purge(db, report, stop)
        finally:
            db.close()
            self.scratch.unlink(missing_ok=True)
        report.seconds = time.monotonic() - started
        self._log.info("reconcile.done", objects=report.objects, lists=report.lists, heads=report.heads,
                       drift=report.drift, adopted=report.adopted, files_read=report.files_read,
                       bytes_read=report.bytes_read, adopted_by=report.adopted_by, orphans=report.orphans,
                       unconfirmed=report.unconfirmed, foreign=report.foreign, trash_purged=report.trash_purged,
                       ms=round(report.seconds * 1000))
        if report.foreign:
            self._log.warning("reconcile.foreign_keys", count=report.foreign, examples=report.foreign_examples,
                              hint="keys under the prefix syncd did not write; set delete_foreign: true "
                                   "to remove them")
        return report

    def _listing(self, db: sqlite3.Connection, report: RemoteReport, stop: threading.Event, walk: bool,
                 confirm: Callable[[], frozenset[str]] | None = None) -> None:
        """Spool the listing and decide the objects the manifest does not know, page by page
        while the next pages are fetched (syncd.listing). With ``walk`` (a rebuild: every
        object is unknown) the local files are found by one walk of the tree merged with the
        objects in path order, not by resolving each object's path on its own."""
        local = None
        if walk:
            try:
                # Not stopped with the pass: a walk cut short would make files look missing
                # (the batch loop stops instead).
                local = _Walked(scan.walk(self.rootdir, self.ignore))
            except OSError:
                pass  # the root is not open (the guard holds the folder): each path is looked up
        foreign: list[tuple[str, str]] = []
        spool = Spool(db)
        try:
            with ThreadPoolExecutor(self.HEAD_WORKERS, thread_name_prefix="reconcile-head") as pool, \
                    ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="reconcile-read") as readers, \
                    Prefetch(self.store, self.folder.prefix, stop) as pages:
                if confirm is not None:
                    self.owners = confirm()
                decide = partial(self._decide, pool, readers, local, report, foreign, stop)
                for page in pages:
                    report.lists += 1
                    report.objects += self._spool_page(db, spool, page)
                    if stop.is_set():
                        return
                    if (query := spool.decidable()) is not None:
                        decide(db.execute(*query))
                db.commit()
                if not stop.is_set():
                    decide(db.execute(*spool.rest()))
        finally:
            if local is not None:
                local.close()
        if not stop.is_set():
            self.journal.replace_foreign(foreign)

    def _spool_page(self, db: sqlite3.Connection, spool: Spool, page: list[RemoteObject]) -> int:
        prefix = self.folder.prefix
        cut = len(prefix)
        cutoff = self.clock() - self.folder.trash_retain
        rows: list[tuple[str, int, str]] = []
        purge: list[tuple[str]] = []
        for o in page:
            rel = o.key[cut:]
            if not reserved(rel):
                rows.append((rel, o.size, o.etag))
            elif expired(prefix, o.key, cutoff):  # syncd's bookkeeping (owner marker, trash): not content
                purge.append((o.key,))
        spool.add(rows)
        if purge:
            db.executemany("INSERT OR IGNORE INTO purge VALUES (?)", purge)
        return len(rows)

    def _decide(self, pool: ThreadPoolExecutor, readers: ThreadPoolExecutor, local: _Walked | None,
                report: RemoteReport, foreign: list[tuple[str, str]], stop: threading.Event,
                rows: sqlite3.Cursor) -> None:
        """Classify and record the unknown objects of ``rows`` (syncd.listing.Spool's queries)."""
        while not stop.is_set():
            batch: list[Unknown] = [(r, local.stat(r[0]) if local is not None else _ASK)
                                    for r in rows.fetchmany(UNKNOWN_BATCH)]
            if not batch:
                break
            # What needs no request and only a small read is decided by the readers, a slice
            # of objects each (hashlib and reads release the GIL, so they share the cores;
            # one hand-off per file would cost more than a small file's read).
            slices = [batch[i:i + READ_SLICE] for i in range(0, len(batch), READ_SLICE)]
            found = [f for part in readers.map(self._classify_inline, slices) for f in part]
            rest = iter(pool.map(self._classify, [u for u, f in zip(batch, found, strict=True) if f is None]))
            for (row, _), f in zip(batch, found, strict=True):
                f = f or next(rest)
                assert f is not None
                self._record(f, report)
                if f.verdict == Verdict.FOREIGN:
                    foreign.append((row[0], row[2]))

    def _purge(self, db: sqlite3.Connection, report: RemoteReport, stop: threading.Event) -> None:
        """Delete trash entries older than trash_retain, 1000 per request (S3's limit for
        DeleteObjects). Idempotent: a crash midway leaves the rest to the next pass."""
        rows = db.execute("SELECT key FROM purge")
        while not stop.is_set() and (batch := [r[0] for r in rows.fetchmany(1000)]):
            try:
                errors = self.store.delete(batch)
            except StoreError as exc:
                self._log.warning("trash.purge_failed", error=str(exc), action="left for the next reconcile pass")
                return
            report.trash_purged += len(batch) - len(errors)
            if errors:
                self._log.warning("trash.purge_failed", keys=len(errors), example=next(iter(errors.items())),
                                  action="left for the next reconcile pass")

    def _drift(self, db: sqlite3.Connection, report: RemoteReport, stop: threading.Event) -> None:
        """Objects deleted or replaced behind syncd's back: forget them, so they are re-sent.

        The manifest is read after the listing, so a transfer confirmed while the listing ran
        looks missing or different from its listed version (CI saw a rename's copy done twice
        that way). Each candidate is therefore confirmed with a HEAD before it is forgotten:
        none in steady state, and when objects really are gone, one per object, far less than
        the uploads that follow."""
        rows = db.execute(
            "SELECT m.path, m.size, m.mtime_ns, m.etag FROM j.manifest m LEFT JOIN remote r ON r.path = m.path "
            "WHERE r.path IS NULL OR r.size != m.size OR (m.etag IS NOT NULL AND r.etag != m.etag)")
        with ThreadPoolExecutor(self.HEAD_WORKERS, thread_name_prefix="reconcile-drift") as pool:
            while not stop.is_set() and (batch := rows.fetchmany(UNKNOWN_BATCH)):
                for (path, _size, mtime_ns, etag), drifted in zip(batch, pool.map(self._drifted, batch), strict=True):
                    report.heads += 1
                    if drifted:
                        report.drift += 1
                        self.sink.submit_forget(path, mtime_ns, etag)

    def _drifted(self, row: tuple[str, int, int, str | None]) -> bool:
        """Whether the bucket still lacks what the manifest row says (False if it cannot tell:
        the next pass asks again)."""
        path, size, _mtime_ns, etag = row
        try:
            head = self.store.head(self.folder.prefix + path)
        except StoreError as exc:
            self._log.warning("reconcile.drift_unconfirmed", path=path, error=str(exc))
            return False
        return head is None or head.size != size or (etag is not None and head.etag != etag)

    def _classify_inline(self, unknowns: list[Unknown]) -> list[Finding | None]:
        return [self._classify(u, inline=True) for u in unknowns]

    def _local_file(self, path: str) -> os.stat_result | None:
        """The lstat of ``path`` if it is a regular file of the mirror (not ignored), else None."""
        try:
            st = self.rootdir.lstat(path)
        except OSError:
            return None
        # An ignored file is not part of the mirror: its object is adopted as an orphan, so
        # that the planner deletes it (delete: mirror) as a walk would, and no manifest row
        # describes an ignored file (the scan's fast path relies on that; see LocalScan).
        if not statmod.S_ISREG(st.st_mode) or self.ignore.ignored_with_parents(path):
            return None
        return st

    def _classify(self, unknown: Unknown, inline: bool = False) -> Finding | None:
        """The verdict on one unknown object; with ``inline``, None if it needs a request or
        a large read (the pool decides those)."""
        (path, size, etag, intended, known_foreign), st = unknown
        if intended:
            # We may have written it (the outcome was never recorded): the listing decides,
            # and the planner deletes it if its file is gone or uploads the file if it differs.
            return Finding(Verdict.OURS, path)
        if st is _ASK:
            st = self._local_file(path)
        if st is not None:
            if st.st_size != size:
                return Finding(Verdict.SKIP, path)  # a changed file: the local scan uploads it
            if inline and not (size <= INLINE_READ_LIMIT and self.etag_is_md5 and etag_parts(etag) == 0):
                return None
            return self._match(path, st, size, etag)
        if known_foreign:
            return Finding(Verdict.FOREIGN, path)  # seen in an earlier pass with this very ETag
        if inline:
            return None
        obj = self.store.head(self.folder.key_for(path))
        if obj is None:
            return Finding(Verdict.SKIP, path, heads=1)
        meta = obj.meta or {}
        if meta.get(META_OWNER) in self.owners:
            # Our own object whose file is gone (its write was never recorded, or the journal
            # was lost): adopt it so that the delete propagates.
            mtime = meta.get(META_MTIME, "0")
            return Finding(Verdict.ORPHAN, path, Entry(path, obj.size, int(mtime) if mtime.lstrip("-").isdigit()
                                                       else 0, None, meta.get(META_SHA256), etag), heads=1)
        return Finding(Verdict.FOREIGN, path, heads=1)

    def _match(self, path: str, st: os.stat_result, size: int, etag: str) -> Finding:
        """A local file of the object's size: adopt the object if it provably holds the file
        (syncd.adoption), else leave the upload to the local scan. Small files are read
        first (the listing's ETag usually decides, no HEAD); large ones are HEADed first
        (syncd's own metadata decides without reading)."""
        parts = etag_parts(etag) if self.etag_is_md5 else None
        heads = 0
        meta: Mapping[str, str] | None = None
        if parts is None or size > READ_FIRST_LIMIT:
            meta, heads = self._head_meta(path, size), 1
            if meta is None:
                return Finding(Verdict.SKIP, path, heads=heads)
            if own_mtime_matches(meta, st, size):
                return Finding(Verdict.ADOPT, path, Entry(path, size, st.st_mtime_ns, st.st_ino,
                                                          meta.get(META_SHA256), etag), heads=heads,
                               proof=Proof.SYNCD_META)
        candidates = part_sizes(size, parts, self.folder.part_size) if parts else []
        try:
            d = digest(self.rootdir, path, st, candidates)
        except OSError as exc:
            self._log.warning("adopt.unreadable", path=path, error=exc.strerror,
                              action="not adopted; the upload reports it")
            return Finding(Verdict.SKIP, path, heads=heads)
        if d is None:
            return Finding(Verdict.SKIP, path, heads=heads)  # changed while read: its event uploads it
        entry = Entry(path, size, st.st_mtime_ns, st.st_ino, d.sha256, etag)
        proof = etag_proof(etag, d) if parts is not None else None
        if proof is not None:
            return Finding(Verdict.ADOPT, path, entry, heads=heads, read=d.bytes_read, proof=proof)
        if parts == 0:
            # A plain PUT's ETag is the MD5 of its bytes: this content is not the object's,
            # whatever its metadata says.
            return Finding(Verdict.SKIP, path, heads=heads, read=d.bytes_read)
        if meta is None:
            meta, heads = self._head_meta(path, size), heads + 1
            if meta is None:
                return Finding(Verdict.SKIP, path, heads=heads, read=d.bytes_read)
        proof = Proof.SYNCD_META if own_mtime_matches(meta, st, size) else meta_proof(meta, d)
        if proof is not None:
            return Finding(Verdict.ADOPT, path, entry, heads=heads, read=d.bytes_read, proof=proof)
        return Finding(Verdict.SKIP, path, heads=heads, read=d.bytes_read)

    def _head_meta(self, path: str, size: int) -> Mapping[str, str] | None:
        """The object's metadata, or None if it is gone or no longer of this size."""
        obj = self.store.head(self.folder.key_for(path))
        if obj is None or obj.size != size:
            return None
        return obj.meta or {}

    def _record(self, f: Finding, report: RemoteReport) -> None:
        report.heads += f.heads
        report.bytes_read += f.read
        report.files_read += f.read > 0
        if f.verdict in (Verdict.ADOPT, Verdict.ORPHAN) and f.entry is not None:
            if f.verdict == Verdict.ADOPT:
                report.adopted += 1
                if f.proof is not None:
                    report.adopted_by[f.proof] = report.adopted_by.get(f.proof, 0) + 1
            self.sink.submit_adopt(f.entry)
            if f.verdict == Verdict.ORPHAN:
                report.orphans += 1
                self.sink.submit(f.path, settle=False)
        elif f.verdict == Verdict.OURS:
            report.unconfirmed += 1
            self.sink.submit(f.path, settle=False)
        elif f.verdict == Verdict.FOREIGN:
            report.foreign += 1
            if len(report.foreign_examples) < 5:
                report.foreign_examples.append(f.path)
            if self.folder.delete_foreign and self.folder.delete.propagates:
                self.sink.submit_adopt(Entry(f.path, 0, 0, None, None, None))
                self.sink.submit(f.path, settle=False)

"""The journal: a folder's durable state in SQLite (WAL).

Two tables carry the durability model:

* ``pending`` — one row per path that *may* have changed, upserted, so a hundred writes to
  one file are one row. A row is written before anything acts on the change and removed only
  in the same transaction that records the finished S3 operation in the manifest. ``gen`` is
  bumped by every upsert: a transfer that finishes removes the row only if no newer event
  arrived while it ran, so a file that changed during its upload is processed again.
* ``manifest`` — what the bucket holds for each path (size, mtime_ns, inode, sha256, ETag).
* ``intents`` — paths whose key syncd is writing or may have written (a PUT, a multipart
  upload, a copy) without the outcome being recorded yet. A row is committed before the
  request is sent and removed in the transaction that records the confirmed result in the
  manifest (or the key's deletion). After kill -9 or a lost answer, every key syncd may have
  written is therefore in the manifest or here, and the planner deletes the key of an
  intent whose file is gone, exactly as it deletes a manifest key (DESIGN.md, "No object
  outlives its file").
* ``trash`` — (``delete: trash``) the trash stamp chosen for a path whose object is being
  copied into the trash before a delete or an overwrite, committed before the copy and
  removed with the change's outcome: a retry after kill -9 reuses it, so one deletion makes
  one trash entry (see syncd.trash).
* ``foreign`` — keys under the prefix known not to be syncd's (by their ETag), so the
  remote pass need not HEAD them again.

Replaying after kill -9 is safe because every operation derived from a row is idempotent:
re-uploading the same bytes, re-copying, or deleting an absent key leaves the same bucket.

One writer per journal: the folder's scheduler (its turns never overlap). Other threads read
through their own connections (WAL readers never block the writer).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog

from .changes import Entry, IntentOp, Outcome, OutcomeKind, Pending
from .schema import (
    CLAIMED,
    FAILED,
    MANIFEST_GEN,
    READY,
    SAME_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_ENTRY,
    UPSERT,
    UPSERT_DIR,
)
from .spool import Blocks, remove_leftovers
from .sql import immediate
from .uploads import UploadLog
from .uploads import migrate as migrate_uploads

log = structlog.get_logger("syncd.journal")

_T = TypeVar("_T")
REBUILDING = "rebuilding"  # meta: a rebuild (adopting the bucket's objects) began and has not finished
CLOSED = "closed"    # meta: close() completed (the next open may skip the integrity check)
APPROXIMATE_AGE = 50  # an approximate count may be this many times as old as counting took


# An observed change for Journal.record: (path, move_from, due) or (path, move_from, due, quiet).
Change = tuple[str, str | None, float] | tuple[str, str | None, float, float | None]


class Journal:
    """SQLite-backed pending changes and manifest for one folder."""

    def __init__(self, db_path: Path, identity: str):
        self.path = db_path
        self.identity = identity
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.fresh_reason = "new" if not db_path.exists() else ""
        self._writes = 0  # write transactions ended so far: the counts below are cached until the next
        self._counted: dict[str, tuple[int, Any, float, float]] = {}  # what -> (writes, value, at, took)
        try:
            self._db = self._open(db_path)
            self._prepare()
        except sqlite3.DatabaseError as exc:
            # A truncated or garbage file: keep it for inspection, start empty; the startup
            # scan and reconciler rebuild state without re-uploading unchanged files.
            aside = db_path.with_name(f"{db_path.name}.corrupt-{int(time.time())}")
            log.error("journal.corrupt", db=str(db_path), moved_to=str(aside), error=str(exc))
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(db_path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self._db = self._open(db_path)
            self._prepare()
            self.fresh_reason = "corrupt"
        remove_leftovers(db_path)  # spools a killed scan left behind (no scan runs yet)
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self.uploads = UploadLog(db_path)

    @staticmethod
    def _open(db_path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives kill -9 (the WAL is in the OS page cache); after a power
        # loss the newest commits may be lost, which the startup scan repairs.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-8000")
        db.execute("PRAGMA temp_store=MEMORY")
        return db

    def _prepare(self) -> None:
        db = self._db
        with self.transaction():
            migrate_uploads(db)
        db.executescript(SCHEMA)
        if "quiet" not in {r[1] for r in db.execute("PRAGMA table_info(pending)")}:
            db.execute("ALTER TABLE pending ADD COLUMN quiet REAL")  # a journal of schema 5 or older
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        closed_whole = self._closed_whole(meta)
        if not closed_whole:
            # Reads every page: after a crash, not on every start of a large journal.
            row = db.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row}")
        # A journal without an identity was just created: lost, deleted or corrupt before.
        self.fresh = "identity" not in meta
        if self.fresh and not self.fresh_reason:
            self.fresh_reason = "lost"  # the file existed but held no state
        elif meta.get(REBUILDING) == "1":
            # The last run began a rebuild and never finished its listing (the endpoint was
            # down, say): without it, every file the bucket already holds would be uploaded again.
            self.fresh, self.fresh_reason = True, "rebuild unfinished"
        with self.transaction():
            if meta.get("identity") not in (None, self.identity):
                # Bucket, prefix or endpoint changed: the manifest describes another place.
                log.warning("journal.target_changed", old=meta.get("identity"), new=self.identity)
                db.execute("DELETE FROM manifest")
                db.execute("DELETE FROM parts")
                db.execute("DELETE FROM uploads")  # they belong to the old bucket
                db.execute("DELETE FROM intents")
                db.execute("DELETE FROM trash")
                db.execute("DELETE FROM foreign_keys")
                db.execute("DELETE FROM meta WHERE key='owner'")  # the old prefix's owner id
                self.fresh = True
                self.fresh_reason = "target changed"
            db.execute(f"DELETE FROM meta WHERE key='{CLOSED}'")  # until the next close() completes
            if self.fresh:  # until rebuilt() says the bucket's objects are adopted
                db.execute(f"INSERT OR REPLACE INTO meta VALUES ('{REBUILDING}', '1')")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (self.identity,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            if MANIFEST_GEN not in meta or not closed_whole:
                # A new start, from a random value: a kept manifest spool (syncd.spool) matches
                # only the journal that wrote it, and never after a crash or a power loss may
                # have lost commits its generation counted.
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MANIFEST_GEN, str(secrets.randbits(62))))
            # Claims do not survive a restart: whatever was in flight is simply redone.
            db.execute(f"UPDATE pending SET state={READY:d} WHERE state={CLAIMED:d}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with immediate(self._db) as db:
                yield db
        finally:
            self._writes += 1  # after COMMIT: a count read from now on sees this transaction

    def _closed_whole(self, meta: dict[str, str]) -> bool:
        """Did the last run close the journal (no crash since) and is the file as long as its
        header says (not truncated since)? Then its pages need no integrity check."""
        wal = Path(f"{self.path}-wal")
        if meta.get(CLOSED) != "1" or (wal.exists() and wal.stat().st_size > 0):
            return False  # (opening it created an empty WAL; a crash leaves frames in it)
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return bool(self.path.stat().st_size == page_count * page_size)

    def close(self) -> None:
        self.uploads.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        try:
            with self.transaction() as db:
                db.execute(f"INSERT OR REPLACE INTO meta VALUES ('{CLOSED}', '1')")
        except sqlite3.Error as exc:  # the next open checks the whole file instead
            log.warning("journal.close_not_recorded", db=str(self.path), error=str(exc))
        self._db.close()  # the last connection: SQLite checkpoints and removes the WAL

    # ------------------------------------------------------------------ writer side

    def record(self, changes: Iterable[Change], max_delay: float) -> int:
        """Durably note paths that may have changed: ``(path, move_from, due[, quiet])`` tuples
        (``quiet`` None or left out: the folder's ``settle``)."""
        now = time.time()
        rows = [(c[0], c[1], now, c[2], c[3] if len(c) > 3 else None, max_delay) for c in changes]
        if rows:
            with self.transaction() as db:
                db.executemany(UPSERT, rows)
        return len(rows)

    def record_dir(self, prefix: str, due: float, max_delay: float) -> None:
        """Note that every manifest path below directory ``prefix`` may have changed."""
        # '0' is the character after '/', so [prefix/, prefix0) is exactly the subtree.
        with self.transaction() as db:
            db.execute(UPSERT_DIR, (time.time(), due, prefix + "/", prefix + "0", max_delay))

    def forget(self, items: Iterable[tuple[str, int, str | None]]) -> None:
        """Drop manifest rows the bucket no longer matches: ``(path, mtime_ns, etag)``.

        Conditional on the row being unchanged since the reconciler read it, so a transfer
        that finished meanwhile is never forgotten."""
        with self.transaction() as db:
            db.executemany("DELETE FROM manifest WHERE path=? AND mtime_ns=? AND etag IS ?", list(items))

    def adopt(self, entries: Iterable[Entry]) -> None:
        """Record objects found in the bucket as ours (journal rebuild), unless a row exists."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO manifest VALUES (?,?,?,?,?,?)",
                           [(e.path, e.size, e.mtime_ns, e.inode, e.sha256, e.etag) for e in entries])

    def claim_due(self, now: float, limit: int) -> list[Pending]:
        """Mark up to ``limit`` due rows claimed and return them, oldest due first."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT path, move_from, gen, attempts, first_seen, quiet FROM pending "
                f"WHERE state={READY:d} AND due<=? ORDER BY due LIMIT ?", (now, limit)).fetchall()
            db.executemany(f"UPDATE pending SET state={CLAIMED:d} WHERE path=?", [(r[0],) for r in rows])
        return [Pending(*r) for r in rows]

    def apply(self, outcomes: Iterable[Outcome]) -> None:
        """Record finished work in one transaction: manifest first, then the pending row.

        Uploads and copies that ended well (most outcomes of a sync) are written a run at a
        time, one statement each for the run's rows, in the order given."""
        now = time.time()
        with self.transaction() as db:
            run: list[Outcome] = []
            seen: set[str] = set()
            for o in outcomes:
                if o.kind == OutcomeKind.DONE and o.entry is not None and not o.forget:
                    if o.path in seen:  # the same path twice: keep the order of its outcomes
                        self._apply_written(db, run, now)
                        run, seen = [], set()
                    run.append(o)
                    seen.add(o.path)
                    continue
                if run:
                    self._apply_written(db, run, now)
                    run, seen = [], set()
                self._apply_one(db, o, now)
            if run:
                self._apply_written(db, run, now)

    @staticmethod
    def _apply_written(db: sqlite3.Connection, run: list[Outcome], now: float) -> None:
        """:meth:`_apply_one` for DONE outcomes with an entry, of distinct paths."""
        db.executemany("INSERT OR REPLACE INTO manifest VALUES (?,?,?,?,?,?)",
                       [(e.path, e.size, e.mtime_ns, e.inode, e.sha256, e.etag)
                        for o in run if (e := o.entry) is not None])
        paths = [(o.path,) for o in run]
        db.executemany("DELETE FROM intents WHERE path=?", paths)
        db.executemany("DELETE FROM trash WHERE path=?", paths)
        cur = db.executemany("DELETE FROM pending WHERE path=? AND gen=?", [(o.path, o.gen) for o in run])
        if cur.rowcount != len(run):
            # Some changed again while we worked on them: their rows (a newer gen) are still
            # there; look again after they settle. (The rows deleted above match nothing.)
            db.executemany(f"UPDATE pending SET state={READY:d}, first_seen=?, move_from=NULL WHERE path=?",
                           [(now, o.path) for o in run])

    @staticmethod
    def _apply_one(db: sqlite3.Connection, o: Outcome, now: float) -> None:
        if o.kind == OutcomeKind.DONE:
            if o.entry is not None:
                e = o.entry
                db.execute("INSERT OR REPLACE INTO manifest VALUES (?,?,?,?,?,?)",
                           (e.path, e.size, e.mtime_ns, e.inode, e.sha256, e.etag))
            if o.forget:
                db.execute("DELETE FROM manifest WHERE path=?", (o.path,))
            if o.entry is not None or o.forget or o.settled:
                # The key's content is now known (recorded, or deleted): no longer "may have written".
                db.execute("DELETE FROM intents WHERE path=?", (o.path,))
            db.execute("DELETE FROM trash WHERE path=?", (o.path,))  # that trash entry is made
            cur = db.execute("DELETE FROM pending WHERE path=? AND gen=?", (o.path, o.gen))
            if cur.rowcount == 0:
                # Changed again while we worked on it: look again after it settles.
                db.execute(f"UPDATE pending SET state={READY:d}, first_seen=?, move_from=NULL WHERE path=?",
                           (now, o.path))
        elif o.kind == OutcomeKind.RETRY:
            db.execute(f"UPDATE pending SET state={READY:d}, attempts=attempts+1, error=?, "
                       "due=MAX(due, ?) WHERE path=?", (o.error, now + o.delay, o.path))
        elif o.kind == OutcomeKind.DEFER:
            db.execute(f"UPDATE pending SET state={READY:d}, due=MAX(due, ?) WHERE path=?",
                       (now + o.delay, o.path))
        elif o.kind == OutcomeKind.PARK:
            cur = db.execute(f"UPDATE pending SET state={FAILED:d}, error=? WHERE path=? AND gen=?",
                             (o.error, o.path, o.gen))
            if cur.rowcount == 0:
                db.execute(f"UPDATE pending SET state={READY:d} WHERE path=?", (o.path,))
        else:
            raise ValueError(f"unknown outcome kind {o.kind!r}")

    def intend(self, items: Iterable[tuple[str, IntentOp]]) -> None:
        """Durably note ``(path, op)``: a write to the path's key is about to be sent."""
        now = time.time()
        rows = [(path, op, now) for path, op in items]
        if rows:
            with self.transaction() as db:
                db.executemany("INSERT OR REPLACE INTO intents VALUES (?, ?, ?)", rows)

    def trash_stamps(self, items: Iterable[tuple[str, str | None]], stamp: str) -> dict[str, str]:
        """Durably choose the trash stamp of each ``(path, etag)`` about to be trashed: the one
        an earlier attempt at the same object chose (it may have been copied already), else
        ``stamp``. Returns ``{path: stamp}``."""
        rows = list(items)
        chosen: dict[str, str] = {}
        if not rows:
            return chosen
        with self.transaction() as db:
            for path, etag in rows:
                row = db.execute("SELECT stamp, etag FROM trash WHERE path=?", (path,)).fetchone()
                if row is not None and row[1] == etag:
                    chosen[path] = str(row[0])
                else:
                    db.execute("INSERT OR REPLACE INTO trash VALUES (?, ?, ?)", (path, stamp, etag))
                    chosen[path] = stamp
        return chosen

    def intent(self, path: str) -> str | None:
        """The op of the path's unresolved write intent, or None."""
        row = self._db.execute("SELECT op FROM intents WHERE path=?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def intent_count(self) -> int:
        with self.reader() as db:
            return int(db.execute("SELECT COUNT(*) FROM intents").fetchone()[0])

    def release_claims(self) -> None:
        """Put claimed rows back (pause, or shutdown with work still queued)."""
        with self.transaction() as db:
            db.execute(f"UPDATE pending SET state={READY:d} WHERE state={CLAIMED:d}")

    def retry_failed(self) -> int:
        """Requeue parked changes (``syncd retry``)."""
        with self.transaction() as db:
            return db.execute(f"UPDATE pending SET state={READY:d}, attempts=0, error=NULL, due=? "
                              f"WHERE state={FAILED:d}", (time.time(),)).rowcount

    def expedite_retries(self) -> int:
        """Make changes waiting out a retry backoff due now (the endpoint is back)."""
        with self.transaction() as db:
            return db.execute(f"UPDATE pending SET due=? WHERE state={READY:d} AND attempts>0 AND due>?",
                              (time.time(), time.time())).rowcount

    def next_due(self) -> float | None:
        row = self._db.execute(f"SELECT MIN(due) FROM pending WHERE state={READY:d}").fetchone()
        return None if row is None else row[0]

    def manifest_count(self) -> int:
        """Read side: the scheduler's probe calls this from a pool thread."""
        return self._count("manifest", lambda db: int(db.execute("SELECT COUNT(*) FROM manifest").fetchone()[0]))

    def has_mover(self, path: str) -> bool:
        """True if another pending row was renamed from ``path`` (its key is a copy source)."""
        return self._db.execute(f"SELECT 1 FROM pending WHERE move_from=? AND state!={FAILED:d} LIMIT 1",
                                (path,)).fetchone() is not None

    def entry(self, path: str) -> Entry | None:
        row = self._db.execute(SELECT_ENTRY + " WHERE path=?", (path,)).fetchone()
        return Entry(*row) if row else None

    def entry_by_inode(self, inode: int, size: int, mtime_ns: int, exclude: str) -> Entry | None:
        """A manifest entry that is the same file under another name (a rename or hard link)."""
        row = self._db.execute(SELECT_ENTRY + SAME_FILE, (inode, size, mtime_ns, exclude)).fetchone()
        return Entry(*row) if row else None

    # ------------------------------------------------------------------ reader side

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A shared read-only connection for status queries from other threads."""
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                               check_same_thread=False, timeout=30)
            yield self._reader

    @staticmethod
    def _by_state(db: sqlite3.Connection) -> tuple[int, int]:
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM pending GROUP BY state").fetchall())
        return by_state.get(READY, 0) + by_state.get(CLAIMED, 0), by_state.get(FAILED, 0)

    def _count(self, what: str, count: Callable[[sqlite3.Connection], _T], approximate: bool = False) -> _T:
        """``count`` over the reader, recomputed only once the journal was written since.

        Each count is a scan of a whole table or index; status, STATUS= (every few seconds),
        `syncd wait` and /metrics ask for them, and a folder with a million changes waiting
        behind an unreachable endpoint writes nothing for minutes. ``approximate``: during a
        large sync (written all the time) a figure up to APPROXIMATE_AGE times as old as its
        count took may serve, which bounds the counting's share of a core."""
        writes = self._writes  # read before counting: a write during the count means counting again
        with self.reader() as db:
            hit = self._counted.get(what)
            if hit is not None and (hit[0] == writes or (
                    approximate and time.monotonic() - hit[2] < hit[3] * APPROXIMATE_AGE)):
                return cast(_T, hit[1])
            started = time.monotonic()
            value = count(db)
            self._counted[what] = (writes, value, started, time.monotonic() - started)
            return value

    def open_and_failed(self, approximate: bool = False) -> tuple[int, int]:
        """(changes not yet done, parked changes): all `syncd wait` needs, polled often.
        ``approximate``: for a summary line, never for a decision (see :meth:`_count`)."""
        return self._count("by_state", self._by_state, approximate)

    def oldest_unsynced(self) -> float | None:
        """When the oldest change not yet synced (parked ones aside) was first seen (epoch s)."""
        with self.reader() as db:
            row = db.execute("SELECT MIN(first_seen) FROM pending WHERE state<2").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def settling_count(self, now: float) -> int:
        """Open changes not yet due (their file is settling), through the pending_due index."""
        with self.reader() as db:
            return int(db.execute("SELECT COUNT(*) FROM pending WHERE state=0 AND due>?", (now,)).fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Pending rows by state (``settling``: not yet due), plus the manifest size."""
        pending, failed = self.open_and_failed()
        settling = self.settling_count(time.time())
        return {"pending": pending, "settling": settling, "failed": failed, "manifest": self.manifest_count()}

    def lookup_inode(self, inode: int, size: int, mtime_ns: int, exclude: str) -> str | None:
        """Reader-side :meth:`entry_by_inode` for the scan thread: the other path's name."""
        with self.reader() as db:
            row = db.execute("SELECT path FROM manifest" + SAME_FILE, (inode, size, mtime_ns, exclude)).fetchone()
        return row[0] if row else None

    def has_pending(self, path: str) -> bool:
        with self.reader() as db:
            return db.execute("SELECT 1 FROM pending WHERE path=?", (path,)).fetchone() is not None

    def failures(self, limit: int = 5) -> list[tuple[str, str]]:
        with self.reader() as db:
            return db.execute(f"SELECT path, error FROM pending WHERE state={FAILED:d} ORDER BY path LIMIT ?",
                              (limit,)).fetchall()

    def get_meta(self, key: str) -> str | None:
        with self.reader() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def rebuilt(self) -> None:
        """From the remote pass's thread: the rebuild's listing and adoptions are journaled."""
        self.set_meta(REBUILDING, "0")

    def set_meta(self, key: str, value: str) -> None:
        """From any thread: its own short connection, as the writer's belongs to the scheduler."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            with immediate(db):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        finally:
            db.close()

    def replace_foreign(self, rows: Iterable[tuple[str, str]]) -> None:
        """From the remote pass's thread: the keys its pass found foreign, with their ETags."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            with immediate(db):
                db.execute("DELETE FROM foreign_keys")
                db.executemany("INSERT OR REPLACE INTO foreign_keys VALUES (?, ?)", rows)
        finally:
            db.close()

    def manifest_blocks(self, rows: int) -> Blocks:
        """The manifest in path order as (records, last path, row count) blocks of ``rows``
        rows, printed as MANIFEST_RECORD, all from one read snapshot (see syncd.tree)."""
        return Blocks(self.path, rows)

    def iter_manifest(self) -> Generator[tuple[str, int, int, int | None], None, None]:
        """All manifest rows sorted by path (byte order), streamed from a private snapshot.

        Byte order matches the order of a walk that sorts each directory's entries with
        directories suffixed by '/', and S3's listing order, so passes are merge joins.
        """
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        try:
            yield from db.execute("SELECT path, size, mtime_ns, inode FROM manifest ORDER BY path")
        finally:
            db.close()

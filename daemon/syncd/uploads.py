"""The journal's record of multipart uploads in progress, so they survive kill -9 and reboots.

Kept in the folder's journal database (tables ``uploads`` and ``parts``) but written from
pool threads through a connection of its own: a part is recorded the moment S3 confirms it,
which is what bounds the bytes re-sent after a crash to the parts that were in flight.
SQLite serialises this writer with the scheduler's (WAL; writes are one short transaction each).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .sql import immediate
from .store import Part

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads(
    path      TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    started   REAL NOT NULL,
    completed TEXT,                    -- the ETag, once CompleteMultipartUpload succeeded
    checksum  TEXT NOT NULL DEFAULT '' -- the folder's checksum mode when it began ('' before v3)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts(
    upload_id TEXT NOT NULL,
    number    INTEGER NOT NULL,
    etag      TEXT NOT NULL,
    checksum  TEXT NOT NULL,           -- base64, in the upload's algorithm ('' for md5 and off)
    size      INTEGER NOT NULL,
    PRIMARY KEY(upload_id, number)
) WITHOUT ROWID;
"""
_RECORD = "SELECT path, upload_id, size, mtime_ns, inode, part_size, started, completed, checksum FROM uploads"


def migrate(db: sqlite3.Connection) -> None:
    """Bring a schema-2 journal's tables to this schema (run before SCHEMA, in a transaction).

    Schema 3 records each upload's checksum mode: parts sent under one mode cannot be
    completed under another, so a changed ``checksum`` setting starts the upload over."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(uploads)")}
    if columns and "checksum" not in columns:
        db.execute("ALTER TABLE uploads ADD COLUMN checksum TEXT NOT NULL DEFAULT ''")
    columns = {row[1] for row in db.execute("PRAGMA table_info(parts)")}
    if "sha256" in columns:
        db.execute("ALTER TABLE parts RENAME COLUMN sha256 TO checksum")


@dataclass
class UploadRecord:
    path: str
    upload_id: str
    size: int
    mtime_ns: int
    inode: int
    part_size: int
    started: float
    completed: str | None
    checksum: str              # the folder's checksum mode when the upload began
    parts: list[Part] = field(default_factory=list)

    def same_file(self, size: int, mtime_ns: int, inode: int) -> bool:
        return (self.size, self.mtime_ns, self.inode) == (size, mtime_ns, inode)


class UploadLog:
    """Thread-safe access to the uploads in progress, with an in-memory index by path."""

    def __init__(self, db_path: Path):
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._ids: dict[str, str] = dict(self._db.execute("SELECT path, upload_id FROM uploads").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, immediate(self._db) as db:
            yield db

    def upload_id(self, path: str) -> str | None:
        """The upload in progress for ``path`` (from memory: the scheduler asks per change)."""
        with self._lock:
            return self._ids.get(path)

    def get(self, path: str) -> UploadRecord | None:
        with self._lock:
            row = self._db.execute(_RECORD + " WHERE path=?", (path,)).fetchone()
            if row is None:
                return None
            rec = UploadRecord(*row)
            rec.parts = [Part(*r) for r in self._db.execute(
                "SELECT number, etag, checksum, size FROM parts WHERE upload_id=? ORDER BY number", (rec.upload_id,))]
        return rec

    def records(self) -> list[UploadRecord]:
        with self._lock:
            rows = self._db.execute(_RECORD).fetchall()
        return [UploadRecord(*r) for r in rows]

    def begin(self, path: str, upload_id: str, size: int, mtime_ns: int, inode: int, part_size: int,
              checksum: str) -> None:
        """Durably note a new upload before its first part is sent."""
        with self._write() as db:
            self._delete(db, path)
            db.execute("INSERT INTO uploads VALUES (?,?,?,?,?,?,?,NULL,?)",
                       (path, upload_id, size, mtime_ns, inode, part_size, time.time(), checksum))
            self._ids[path] = upload_id

    def add_part(self, upload_id: str, part: Part) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?)",
                       (upload_id, part.number, part.etag, part.checksum, part.size))

    def completed(self, path: str, etag: str) -> None:
        with self._write() as db:
            db.execute("UPDATE uploads SET completed=? WHERE path=?", (etag, path))

    def remove(self, path: str, upload_id: str | None = None) -> None:
        """Forget the upload for ``path`` (only if it is still ``upload_id``, when given)."""
        with self._write() as db:
            if upload_id is None or self._ids.get(path) == upload_id:
                self._delete(db, path)

    def _delete(self, db: sqlite3.Connection, path: str) -> None:
        db.execute("DELETE FROM parts WHERE upload_id IN (SELECT upload_id FROM uploads WHERE path=?)", (path,))
        db.execute("DELETE FROM uploads WHERE path=?", (path,))
        self._ids.pop(path, None)

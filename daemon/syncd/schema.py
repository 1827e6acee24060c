"""The journal's tables (and their version), and the statements that write them.

Kept apart from :mod:`syncd.journal`, which owns the connection and the transactions: the
schema is read when the durability model is, and the statements carry the debounce rules.
"""

from __future__ import annotations

from enum import IntEnum

from .uploads import SCHEMA as UPLOADS_SCHEMA

SCHEMA_VERSION = 7  # 2: multipart uploads in progress (tables uploads, parts); 3: their checksum mode;
                    # 4: write intents and the foreign-key cache (tables intents, foreign); 5: trash stamps;
                    # 6: pending.quiet (a finished write's shorter quiet period);
                    # 7: the manifest's generation (meta manifest_gen, bumped by triggers)


class RowState(IntEnum):
    """A `pending` row's ``state`` column (formatted into the SQL below as ``{READY:d}``)."""

    READY = 0    # waiting to be due and claimed
    CLAIMED = 1  # taken by the scheduler: being worked on
    FAILED = 2   # parked: a permanent failure that needs the user (`syncd retry`)


READY, CLAIMED, FAILED = RowState.READY, RowState.CLAIMED, RowState.FAILED

MANIFEST_GEN = "manifest_gen"  # meta: the manifest's generation (see the triggers below)
BUMP_GEN = f"UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = '{MANIFEST_GEN}';"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending(
    path       TEXT PRIMARY KEY,
    move_from  TEXT,
    first_seen REAL NOT NULL,
    due        REAL NOT NULL,
    gen        INTEGER NOT NULL DEFAULT 1,
    state      INTEGER NOT NULL DEFAULT {READY:d},
    attempts   INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    quiet      REAL      -- seconds its file must be unmodified before upload; NULL: the folder's settle
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_due ON pending(state, due);
CREATE INDEX IF NOT EXISTS pending_move ON pending(move_from) WHERE move_from IS NOT NULL;
-- The lag (syncd.metrics): the oldest unsynced change in O(log n), per scrape and /healthz.
-- first_seen changes only on insert and when a change is re-seen mid-transfer, never per event.
CREATE INDEX IF NOT EXISTS pending_age ON pending(first_seen) WHERE state<2;
CREATE TABLE IF NOT EXISTS manifest(
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER,
    sha256   TEXT,
    etag     TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_inode ON manifest(inode);
-- Every write of a manifest row's printed columns bumps the generation, in its transaction, so
-- a kept manifest spool (syncd.spool) is read only while it is exactly what a print would be.
-- Triggers, not the journal's code: no write path can forget it.
CREATE TRIGGER IF NOT EXISTS manifest_gen_insert AFTER INSERT ON manifest
    BEGIN {BUMP_GEN} END;
CREATE TRIGGER IF NOT EXISTS manifest_gen_update AFTER UPDATE OF path, size, mtime_ns ON manifest
    BEGIN {BUMP_GEN} END;
CREATE TRIGGER IF NOT EXISTS manifest_gen_delete AFTER DELETE ON manifest
    BEGIN {BUMP_GEN} END;
CREATE TABLE IF NOT EXISTS intents(
    path  TEXT PRIMARY KEY,
    op    TEXT NOT NULL,      -- put, multipart or copy: what may have reached the key
    since REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trash(
    path  TEXT PRIMARY KEY,
    stamp TEXT NOT NULL,      -- syncd.trash.stamp: the trash key's deletion time
    etag  TEXT                -- of the object being trashed (the manifest's), NULL if unknown
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS foreign_keys(
    path TEXT PRIMARY KEY,
    etag TEXT NOT NULL
) WITHOUT ROWID;
""" + UPLOADS_SCHEMA

# A manifest row as ``find -printf syncd.tree.FIND_FORMAT`` prints the file it describes:
# path, size, and mtime as seconds with ten fractional digits, fields ended by \x01 and the
# record by \x00. Equal bytes mean equal size and mtime (the no-change restart's fast path).
# find prints whole seconds rounded down and then the nanoseconds (-0.5 s is -1.5000000000);
# SQLite's / and % round toward zero, hence the detour for times before 1970.
_NANOS = "((mtime_ns % 1000000000 + 1000000000) % 1000000000)"
# One printf per row, not a chain of concatenations: it is most of the time the journal
# spends printing the manifest.
MANIFEST_RECORD = ("printf('%s' || char(1) || '%d' || char(1) || '%d.%09d0', path, size, "
                   f"(mtime_ns - {_NANOS}) / 1000000000, {_NANOS}) || char(0)")
# SQLite (3.40) has no ORDER BY inside group_concat; it concatenates in the subquery's order.
# Were that ever not so, the blocks would only differ from the listing: slower, not wrong.
MANIFEST_BLOCK = (f"SELECT group_concat(rec, ''), max(path), count(*) FROM (SELECT path, {MANIFEST_RECORD} AS rec "
          "FROM manifest WHERE path > ? ORDER BY path LIMIT ?)")

# Debounce in SQL: each event sets `due` to its own (now+settle, or now+settle_closed for a
# finished write), but never past first_seen+max_delay, so a file appended to forever is still
# uploaded periodically. The latest event also decides the quiet period the planner checks.
ON_CONFLICT = f"""
ON CONFLICT(path) DO UPDATE SET
    move_from = COALESCE(excluded.move_from, pending.move_from),
    due = MIN(excluded.due, pending.first_seen + ?),
    quiet = excluded.quiet,
    gen = pending.gen + 1,
    state = CASE pending.state WHEN {CLAIMED:d} THEN {CLAIMED:d} ELSE {READY:d} END,
    attempts = CASE pending.state WHEN {FAILED:d} THEN 0 ELSE pending.attempts END,
    error = CASE pending.state WHEN {FAILED:d} THEN NULL ELSE pending.error END
"""
SELECT_ENTRY = "SELECT path, size, mtime_ns, inode, sha256, etag FROM manifest"
# The same file under another name (a rename or a hard link): same inode, size and mtime.
SAME_FILE = " WHERE inode=? AND size=? AND mtime_ns=? AND path!=? LIMIT 1"
UPSERT = "INSERT INTO pending(path, move_from, first_seen, due, quiet) VALUES (?, ?, ?, ?, ?)" + ON_CONFLICT
# Everything the manifest holds below a directory (a directory deleted or moved away).
UPSERT_DIR = ("INSERT INTO pending(path, move_from, first_seen, due, quiet) "
               "SELECT path, NULL, ?, ?, NULL FROM manifest WHERE path >= ? AND path < ? " + ON_CONFLICT)

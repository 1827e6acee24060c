"""The manifest's printed blocks on disk: spooled while find runs, and kept for the next scan.

Printing a large manifest takes about as long as a find of its tree, on one core: done
after the listing it is a second wait; done alongside it, it shares the cores with the
finds. The spool waits on disk, not in memory, so memory stays flat however large the
manifest is (the file is as large as the listing sort writes).

A complete spool is kept beside the journal, stamped with the manifest's generation (a
counter the journal's triggers bump on every manifest write, :mod:`syncd.schema`). The next
fast scan whose read snapshot is at that same generation reads the blocks from the file
instead of printing them again: a no-change restart costs the finds, not a second pass over
every manifest row. A spool of another generation, block size or record format, or one
whose bytes fail their CRC, is never read (a block that fails its CRC midway raises
:class:`SpoolError`, and the caller walks the tree instead).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from .schema import MANIFEST_BLOCK, MANIFEST_GEN

STOP_CHECK = 0.25  # how often a reader waiting for the printer looks at the stop flag (seconds)
SUFFIX = ".spool"  # the kept spool: the journal's name + this

_MAGIC = b"syncd-spool\x001"
_PREAMBLE = struct.Struct("<14s32sQQ")  # magic, format (sha256 of the block query), block rows, generation
_BLOCK = struct.Struct("<QQQI")          # len(records), len(last path), row count, crc32 of all before + body
_LENGTHS = struct.Struct("<QQQ")
_FORMAT = hashlib.sha256(MANIFEST_BLOCK.encode()).digest()  # a spool printed by another query is not read


class SpoolError(Exception):
    """The manifest could not be spooled, or a kept spool is damaged."""


class Blocks:
    """The manifest printed in blocks of ``rows`` rows (MANIFEST_RECORD), all from one read
    snapshot, which also gives the manifest's generation (Journal.manifest_blocks)."""

    def __init__(self, journal: Path, rows: int):
        self.rows = rows
        self._db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, check_same_thread=False, timeout=30,
                                   isolation_level=None)
        try:
            self._db.text_factory = bytes
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (MANIFEST_GEN,)).fetchone()
        except BaseException:
            self._db.close()
            raise
        self.gen: int | None = None if row is None else int(row[0])  # None: unknown, never kept

    def __iter__(self) -> Iterator[tuple[bytes, bytes, int]]:
        after = ""
        while True:
            blob, last, count = self._db.execute(MANIFEST_BLOCK, (after, self.rows)).fetchone()
            if not count:
                return
            yield blob, last, count
            after = last.decode("utf-8")

    def close(self) -> None:
        self._db.close()  # ends the snapshot; closing twice is harmless


def kept_path(journal: Path) -> Path:
    return journal.with_name(journal.name + SUFFIX)


def remove_leftovers(journal: Path) -> None:
    """Temporary spools a killed scan left beside the journal (called while no scan runs)."""
    for leftover in journal.parent.glob(f"{journal.name}{SUFFIX}.*.tmp"):
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass


class ManifestSpool:
    """The manifest's blocks, from the kept spool if it is of the snapshot's generation, or
    printed into a new one by a thread of their own while they are read back in order."""

    def __init__(self, blocks: Blocks, stop: threading.Event, keep: Path | None = None):
        self._stop = stop
        self._cond = threading.Condition()
        self._written = 0       # bytes of whole blocks in the file
        self._done = False
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self.reused = False     # the blocks come from the kept spool
        self._renamed = False   # printed whole and kept
        self._keep = keep
        preamble = _PREAMBLE.pack(_MAGIC, _FORMAT, blocks.rows, blocks.gen or 0)
        if keep is not None and blocks.gen is not None and (kept := _open_kept(keep, preamble)) is not None:
            blocks.close()      # its snapshot is not needed: the file holds what it would print
            self._fd, self._written, self._done, self.reused = kept, os.fstat(kept).st_size, True, True
            return
        try:
            if keep is not None and blocks.gen is not None:
                fd, name = tempfile.mkstemp(dir=keep.parent, prefix=keep.name + ".", suffix=".tmp")  # 0600
                self._tmp = Path(name)
            else:
                fd = os.dup((f := tempfile.TemporaryFile()).fileno())
                f.close()
        except OSError as exc:
            blocks.close()
            raise SpoolError(f"cannot make a temporary file for the manifest: {exc}") from exc
        self._fd = fd
        self._thread = threading.Thread(target=self._write, args=(blocks, preamble, keep), name="manifest-spool",
                                        daemon=True)
        self._thread.start()

    def _write(self, blocks: Blocks, preamble: bytes, keep: Path | None) -> None:
        offset = 0
        try:
            offset = _pwrite(self._fd, preamble, offset)
            with self._cond:
                self._written = offset
            complete = True
            for blob, last, count in blocks:
                if self._closing or self._stop.is_set():
                    complete = False
                    break
                body = blob + last
                crc = _crc(len(blob), len(last), count, body)
                offset = _pwrite(self._fd, _BLOCK.pack(len(blob), len(last), count, crc) + body, offset)
                with self._cond:
                    self._written = offset
                    self._cond.notify_all()
            if complete and self._tmp is not None and keep is not None:
                # The end mark: a kept spool without it (cut short) is never read.
                _pwrite(self._fd, _BLOCK.pack(0, 0, 0, 0), offset)
                os.replace(self._tmp, keep)
                self._tmp = None
                self._renamed = True
        except BaseException as exc:  # handed to the reader
            self._error = exc
        finally:
            blocks.close()  # releases its read snapshot now, in the thread that reads it
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[tuple[bytes, bytes, int]]:
        offset = _PREAMBLE.size
        while True:
            with self._cond:
                while self._written <= offset and not self._done:
                    self._cond.wait(STOP_CHECK)
                    if self._stop.is_set():
                        return
                written = self._written
            if written <= offset:  # done: every block is read
                if isinstance(self._error, OSError):
                    raise SpoolError(f"cannot spool the manifest to a temporary file: {self._error}")
                if self._error is not None:
                    raise self._error
                return
            blob_len, last_len, count, crc = _BLOCK.unpack(_read(self._fd, _BLOCK.size, offset))
            offset += _BLOCK.size
            if count == 0:
                return  # a kept spool's end mark
            if offset + blob_len + last_len > written:
                body = b""  # damaged lengths: not read (they could ask for any size)
            else:
                body = _read(self._fd, blob_len + last_len, offset)
            if not body or (self.reused and _crc(blob_len, last_len, count, body) != crc):
                if self.reused and self._keep is not None:
                    self._keep.unlink(missing_ok=True)  # printed anew by the next fast scan
                raise SpoolError(f"the manifest spool {self._keep or ''} is damaged (a block fails its CRC)")
            offset += blob_len + last_len
            yield body[:blob_len], body[blob_len:], count

    def kept(self) -> bool:
        """Waits for the printer: is the spool kept now (read from it, or printed whole)?"""
        if self._thread is not None:
            self._thread.join()
        return self.reused or self._renamed

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join()  # at most one block's query away
        os.close(self._fd)
        if self._tmp is not None:
            try:
                self._tmp.unlink()  # not complete: never kept
            except FileNotFoundError:
                pass


def refresh(journal: Path, rows: int, seconds: float) -> bool:
    """Print the manifest into the kept spool unless it is current; True if it is current
    now. Called as a folder stops, once nothing writes its journal: the next start's first
    pass then reads the manifest from the file. Gives up after ``seconds`` (the stop's
    deadline), keeping nothing."""
    if seconds <= 0:
        return False  # the stop's deadline has passed
    blocks = Blocks(journal, rows)
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    try:
        printed = ManifestSpool(blocks, stop, kept_path(journal))
        try:
            return printed.kept()
        finally:
            printed.close()
    finally:
        timer.cancel()
        blocks.close()


def _open_kept(keep: Path, preamble: bytes) -> int | None:
    """The kept spool's descriptor if it is of this generation, block size and format, and
    complete (its end mark is its last bytes)."""
    try:
        fd = os.open(keep, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if (size >= len(preamble) + _BLOCK.size and os.pread(fd, len(preamble), 0) == preamble
                and os.pread(fd, _BLOCK.size, size - _BLOCK.size) == _BLOCK.pack(0, 0, 0, 0)):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _crc(blob_len: int, last_len: int, count: int, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(_LENGTHS.pack(blob_len, last_len, count)))


def _pwrite(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]
    return offset


def _read(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        data = os.pread(fd, n, offset)
        if not data:
            raise SpoolError("the manifest spool ended early")
        parts.append(data)
        n -= len(data)
        offset += len(data)
    return b"".join(parts)

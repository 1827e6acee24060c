"""The local tree as GNU find sees it, compared with the manifest in blocks.

A no-change restart of a 100,000-file folder spent most of its time in Python: a scandir
and lstat walk costs a few times more per file than GNU find, which runs in
its own process (on the other core) while the journal reads the manifest. ``find`` prints
every regular file as ``path \\x01 size \\x01 mtime \\x00``, ``sort -z`` puts the records in
byte order, and the journal prints its manifest rows in exactly that form and order
(:data:`syncd.schema.MANIFEST_RECORD`). A block of manifest rows that equals the next bytes
of the listing needs no Python per file: every file in it is unchanged. Only a block that
differs is parsed and merged row by row. Memory is bounded: the pipe is read in small
pieces, the manifest is prefetched up to a fixed size, and sort spills to disk beyond its
own buffer.

Byte equality can only pass files whose size and mtime equal the manifest's; anything that
differs (an exotic timestamp, an ordering quirk of names holding \\x01) falls back to the
row-by-row merge, which submits every difference, so such cases cost time, never a change.
The comparison trusts that a file in the manifest is not ignored: the caller uses it only
while the ignore rules are those of the last full walk (see LocalScan).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import lru_cache

from .paths import IgnoreRules

FIND_FORMAT = r"%P\001%s\001%T@\000"  # must print what schema.MANIFEST_RECORD prints
READ_SIZE = 256 * 1024
SORT_BUFFER = "32M"        # sort's own memory; beyond it, it merges through temporary files
PREFETCH_BYTES = 8 << 20   # manifest blocks read while find runs (bounds memory, not correctness)
STOP_CHECK = 0.25          # how often a read waiting for sort looks at the stop flag (seconds)

NEW, CHANGED, MISSING = "new", "changed", "missing"


@dataclass(frozen=True, slots=True)
class Diff:
    kind: str      # NEW, CHANGED or MISSING
    path: str


class TreeError(Exception):
    """find or sort failed; the caller falls back to its own walk."""


@lru_cache(maxsize=1)
def available() -> bool:
    """GNU find and GNU sort are both installed (busybox has neither -printf nor this sort)."""
    for tool, mark in (("find", b"GNU findutils"), ("sort", b"GNU coreutils")):
        path = shutil.which(tool)
        if path is None:
            return False
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        if mark not in out:
            return False
    return True


def parse(record: bytes) -> tuple[bytes, int, int] | None:
    """(path, size, mtime_ns) of one record, or None if it is not one."""
    try:
        path, size, stamp = record.rsplit(b"\x01", 2)
        # Whole seconds rounded down, then the nanoseconds: -0.5 s is "-1.5000000000".
        seconds, _, fraction = stamp.partition(b".")
        return path, int(size), int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    except ValueError:
        return None


class _Listing:
    """find | sort -z, read as a byte stream of records."""

    def __init__(self, root: str, pruned: tuple[str, ...], stop: threading.Event, one_file_system: bool = False):
        env = {**os.environ, "LC_ALL": "C"}  # byte order, raw names
        self._stop = stop
        self.stopped = False
        # Ignored directories by plain name are not entered, as the walk does not enter them
        # (.git, node_modules): their files would only be listed to be thrown away.
        prune: list[str] = []
        for name in pruned:
            prune += ["-o", "-name", name] if prune else ["-name", name]
        skip = ["(", "-type", "d", "(", *prune, ")", "-prune", ")", "-o"] if prune else []
        # -P: no symlink is followed, not even a root swapped for one (config refuses a
        # symlinked root, so the folder's own path never is one). The listing only says which
        # paths to look at; what is read is resolved beneath the root's fd (syncd.beneath).
        # -xdev: one_file_system (rsync -x). -mindepth 1: the root is never pruned.
        xdev = ["-xdev"] if one_file_system else []
        try:
            self._find = subprocess.Popen(["find", "-P", root, *xdev, "-mindepth", "1", *skip, "-type", "f",
                                           "-printf", FIND_FORMAT],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise TreeError(f"cannot run find: {exc}") from exc
        assert self._find.stdout is not None and self._find.stderr is not None
        sort = ["sort", "-z", "-S", SORT_BUFFER]
        try:
            self._sort = subprocess.Popen(sort, stdin=self._find.stdout, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            self._find.kill()
            self._find.stdout.close()
            self._find.stderr.close()
            self._find.wait()
            raise TreeError(f"cannot run sort: {exc}") from exc
        self._find.stdout.close()  # sort holds the read end now
        assert self._sort.stdout is not None
        self._out = self._sort.stdout
        self._fd = self._out.fileno()  # read with os.read after select, so a stop is noticed
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._find_errors: list[bytes] = []
        self._drain = threading.Thread(target=self._read_find_errors, name="find-stderr", daemon=True)
        self._drain.start()

    def _read_find_errors(self) -> None:
        assert self._find.stderr is not None
        for line in self._find.stderr:  # unreadable directories: kept for one warning
            if len(self._find_errors) < 20:
                self._find_errors.append(line.rstrip())

    def _fill(self, n: int) -> bool:
        """At least ``n`` unread bytes buffered; False if the stream ends first (or stop is
        set: sort says nothing until find is done, which takes seconds on a large tree)."""
        while len(self._buf) - self._pos < n and not self._eof:
            while not select.select([self._fd], [], [], STOP_CHECK)[0]:
                if self._stop.is_set():
                    self.stopped = self._eof = True
                    return False
            data = os.read(self._fd, READ_SIZE)
            if not data:
                self._eof = True
                break
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        return len(self._buf) - self._pos >= n

    def skip_if_next(self, blob: bytes) -> bool:
        """Consume ``blob`` if the stream continues with exactly those bytes."""
        n = len(blob)
        if not self._fill(n) or self._buf[self._pos:self._pos + n] != blob:
            return False
        self._pos += n
        return True

    def peek(self) -> bytes | None:
        """The next record (without its terminator), not consumed; None at the end."""
        while True:
            end = self._buf.find(b"\0", self._pos)
            if end >= 0:
                return self._buf[self._pos:end]
            if self._eof:
                return None
            before = len(self._buf) - self._pos
            self._fill(before + 1)
            if len(self._buf) - self._pos == before:
                return None  # a final record without a terminator: not a record

    def drop(self) -> None:
        end = self._buf.find(b"\0", self._pos)
        self._pos = end + 1

    def close(self, completed: bool) -> list[bytes]:
        """Reap both processes; raises TreeError if a completed listing cannot be trusted.
        Returns find's complaints about unreadable directories (the walk skips those too)."""
        if not completed:
            for proc in (self._find, self._sort):
                if proc.poll() is None:
                    proc.kill()
        self._out.close()
        find_rc, sort_rc = self._find.wait(), self._sort.wait()
        self._drain.join()
        assert self._sort.stderr is not None and self._find.stderr is not None
        self._find.stderr.close()
        sort_err = self._sort.stderr.read().decode(errors="replace").strip()
        self._sort.stderr.close()
        if completed and sort_rc != 0:
            raise TreeError(f"sort exited {sort_rc}: {sort_err[-300:]}")
        # find exits 1 after an unreadable directory and lists the rest; worse is a failure.
        if completed and find_rc not in (0, 1):
            raise TreeError(f"find exited {find_rc}: {b' '.join(self._find_errors)[-300:]!r}")
        if completed and find_rc == 1 and not self._find_errors:
            raise TreeError("find exited 1 without saying why")
        return self._find_errors


class TreeDiff:
    """The differences between the tree under ``root`` and the manifest, in path order."""

    def __init__(self, root: str, ignore: IgnoreRules, one_file_system: bool = False):
        self.root = root
        self.ignore = ignore
        self.one_file_system = one_file_system
        self.files = 0  # regular files on disk that the mirror covers (not ignored)
        self.unreadable: list[bytes] = []
        self._dir = ""
        self._dir_ignored = False

    def run(self, blocks: Iterator[tuple[bytes, bytes, int]], stop: threading.Event) -> Generator[Diff, None, None]:
        """Yields every difference; the caller must exhaust it unless ``stop`` is set."""
        listing = _Listing(self.root, self.ignore.pruned_dirs, stop, self.one_file_system)
        completed = False
        try:
            prefetched = _Prefetch(blocks)
            for blob, last, count in prefetched:
                if stop.is_set():
                    return
                if listing.skip_if_next(blob):
                    self.files += count
                    continue
                yield from self._merge(listing, blob, last)
            while (record := listing.peek()) is not None:
                listing.drop()
                yield from self._on_disk_only(record)
            completed = not (stop.is_set() or listing.stopped)
        finally:
            errors = listing.close(completed)
        self.unreadable = errors

    def _merge(self, listing: _Listing, blob: bytes, last: bytes) -> Iterator[Diff]:
        """One block that differs: merge its rows with the records up to its last path."""
        rows = sorted(r for r in map(parse, blob.split(b"\0")[:-1]) if r is not None)
        i = 0
        while (record := listing.peek()) is not None:
            item = parse(record)
            if item is not None and item[0] > last:
                break
            listing.drop()
            if item is None or (rel := self._mirrored(item[0])) is None:
                continue
            path, size, mtime_ns = item
            while i < len(rows) and rows[i][0] < path:
                yield Diff(MISSING, rows[i][0].decode())
                i += 1
            if i < len(rows) and rows[i][0] == path:
                if (rows[i][1], rows[i][2]) != (size, mtime_ns):
                    yield Diff(CHANGED, rel)
                i += 1
            else:
                yield Diff(NEW, rel)
        if listing.stopped:
            return  # the rest of the listing was never read: these rows are not known missing
        for row in rows[i:]:
            yield Diff(MISSING, row[0].decode())

    def _on_disk_only(self, record: bytes) -> Iterator[Diff]:
        item = parse(record)
        if item is not None and (rel := self._mirrored(item[0])) is not None:
            yield Diff(NEW, rel)

    def _mirrored(self, raw: bytes) -> str | None:
        """The path as the mirror knows it, or None if the walk would skip it (a name that
        is not UTF-8 cannot be a key; ignored files and everything in ignored directories)."""
        try:
            rel = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        parent = rel.rpartition("/")[0]
        if parent != self._dir:  # records come sorted: one verdict per directory run
            self._dir, self._dir_ignored = parent, bool(parent) and self.ignore.dir_ignored(parent)
        if self._dir_ignored or self.ignore.ignored(rel):
            return None
        self.files += 1
        return rel


class _Prefetch:
    """Manifest blocks read ahead while find and sort run, up to PREFETCH_BYTES."""

    def __init__(self, blocks: Iterator[tuple[bytes, bytes, int]]):
        self._blocks = blocks
        self._ahead: list[tuple[bytes, bytes, int]] = []
        size = 0
        for block in blocks:
            self._ahead.append(block)
            size += len(block[0])
            if size >= PREFETCH_BYTES:
                break
        self._ahead.reverse()

    def __iter__(self) -> Iterator[tuple[bytes, bytes, int]]:
        while self._ahead:
            yield self._ahead.pop()
        yield from self._blocks


"""The local tree as GNU find sees it, compared with the manifest in blocks.

A no-change restart of a 100,000-file folder spent most of its time in Python: a scandir
and lstat walk costs a few times more per file than GNU find, which runs in
its own process (on the other core) while the journal reads the manifest. ``find`` prints
every regular file as ``path \\x01 size \\x01 mtime \\x00``, ``sort -z`` puts the records in
byte order (several finds at once, each over a run of the root's entries: see _Listing), and
the journal prints its manifest rows in exactly that form and order
(:data:`syncd.schema.MANIFEST_RECORD`). A block of manifest rows that equals the next bytes
of the listing needs no Python per file: every file in it is unchanged. Only a block that
differs is parsed and merged row by row. Memory is bounded: the pipe is read in small
pieces, the manifest is spooled to a file (and kept for the next scan: syncd.spool), and
sort spills to disk beyond its own buffer.

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
import tempfile
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .beneath import RootDir
from .paths import IgnoreRules
from .spool import Blocks, ManifestSpool, SpoolError

FIND_FORMAT = r"%p\001%s\001%T@\000"  # must print what schema.MANIFEST_RECORD prints (run in the root)
READ_SIZE = 256 * 1024
SORT_BUFFER = "32M"        # sort's own memory; beyond it, it merges through temporary files
PARTS = max(1, min(4, os.cpu_count() or 1))  # find | sort pipelines run at once
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


def _starts(rootfd: int, pruned: tuple[str, ...], device: int | None) -> list[bytes]:
    """The root's entries that find must list, in the listing's order: regular files and
    directories (not pruned; with ``device``, on that filesystem), each directory sorted as
    ``name/`` as the records below it are."""
    skip = {os.fsencode(name) for name in pruned}
    keys: list[tuple[bytes, bytes]] = []
    with os.scandir(rootfd) as it:
        for entry in it:
            name = os.fsencode(entry.name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if name in skip or (device is not None and entry.stat(follow_symlinks=False).st_dev != device):
                        continue  # pruned, or a mount point (-xdev)
                    keys.append((name + b"/", name))
                elif entry.is_file(follow_symlinks=False):
                    keys.append((name, name))
            except OSError:
                continue  # gone since it was listed
    keys.sort()
    return [name for _, name in keys]


def _runs(names: list[bytes], parts: int) -> list[list[bytes]]:
    """``names`` cut into at most ``parts`` runs of consecutive names."""
    n = min(parts, len(names))
    return [names[len(names) * i // n:len(names) * (i + 1) // n] for i in range(n)]


@lru_cache(maxsize=1)
def files0_from() -> bool:
    """find reads its starting points from a file (-files0-from, GNU findutils 4.9)."""
    try:
        out = subprocess.run(["find", "-files0-from", "/dev/null", "-prune"], capture_output=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


class _Pipe:
    """One ``find | sort -z``: the files below some of the root's entries, sorted."""

    def __init__(self, args: list[str], cwd: str, starts: list[bytes] | None, env: dict[str, str],
                 pass_fds: tuple[int, ...]):
        names = None
        if starts is not None:
            names = tempfile.TemporaryFile()
            names.write(b"".join(name + b"\0" for name in starts))
            names.seek(0)
        try:
            self.find = subprocess.Popen(args, stdin=names or subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd, pass_fds=pass_fds)
        except OSError as exc:
            raise TreeError(f"cannot run find: {exc}") from exc
        finally:
            if names is not None:
                names.close()  # find has its own descriptor of it
        assert self.find.stdout is not None and self.find.stderr is not None
        try:
            self.sort = subprocess.Popen(["sort", "-z", "-S", SORT_BUFFER], stdin=self.find.stdout,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            self.find.kill()
            self.find.stdout.close()
            self.find.stderr.close()
            self.find.wait()
            raise TreeError(f"cannot run sort: {exc}") from exc
        self.find.stdout.close()  # sort holds the read end now
        assert self.sort.stdout is not None
        self.errors: list[bytes] = []
        self._drain = threading.Thread(target=self._read_find_errors, name="find-stderr", daemon=True)
        self._drain.start()

    def _read_find_errors(self) -> None:
        assert self.find.stderr is not None
        for line in self.find.stderr:  # unreadable directories: kept for one warning
            if len(self.errors) < 20:
                self.errors.append(line.rstrip())

    def kill(self) -> None:
        for proc in (self.find, self.sort):
            if proc.poll() is None:
                proc.kill()

    def close(self, completed: bool) -> None:
        """Reap both processes; raises TreeError if a completed listing cannot be trusted."""
        assert self.sort.stdout is not None and self.sort.stderr is not None and self.find.stderr is not None
        if not completed:
            self.kill()
        self.sort.stdout.close()
        find_rc, sort_rc = self.find.wait(), self.sort.wait()
        self._drain.join()
        self.find.stderr.close()
        sort_err = self.sort.stderr.read().decode(errors="replace").strip()
        self.sort.stderr.close()
        if completed and sort_rc != 0:
            raise TreeError(f"sort exited {sort_rc}: {sort_err[-300:]}")
        # find exits 1 after an unreadable directory and lists the rest; worse is a failure.
        if completed and find_rc not in (0, 1):
            raise TreeError(f"find exited {find_rc}: {b' '.join(self.errors)[-300:]!r}")
        if completed and find_rc == 1 and not self.errors:
            raise TreeError("find exited 1 without saying why")


class _Listing:
    """The sorted records of the tree, read as one byte stream.

    The stat of every file is most of a no-change restart's time, and one find does them
    one after another: the root's entries are cut into ``parts`` runs of consecutive
    names, each listed by its own ``find | sort -z`` (all running at once), and their
    outputs, each sorted, follow each other in order (every record below an entry sorts
    before every record below the next one)."""

    def __init__(self, root: RootDir, pruned: tuple[str, ...], stop: threading.Event, parts: int = 1):
        env = {**os.environ, "LC_ALL": "C"}  # byte order, raw names
        self._stop = stop
        self.stopped = False
        # Ignored directories by plain name are not entered, as the walk does not enter them
        # (.git, node_modules): their files would only be listed to be thrown away.
        prune: list[str] = []
        for name in pruned:
            prune += ["-o", "-name", name] if prune else ["-name", name]
        skip = ["(", "-type", "d", "(", *prune, ")", "-prune", ")", "-o"] if prune else []
        # -P: no symlink is followed. -xdev: one_file_system (rsync -x).
        xdev = ["-xdev"] if root.one_file_system else []
        self._pipes: list[_Pipe] = []
        fd = root.open_dir("")
        try:
            if files0_from():
                # Starting points are the root's entries, named relative to the root held
                # open (find runs in it), so %p is the path relative to the root.
                runs = _runs(_starts(fd, pruned, root.device if root.one_file_system else None), parts)
                args = ["find", "-P", "-files0-from", "-", *xdev, *skip, "-type", "f", "-printf", FIND_FORMAT]
                for run in runs:
                    self._pipes.append(_Pipe(args, f"/proc/self/fd/{fd}", run, env, (fd,)))
            else:
                # -mindepth 1: the root is never pruned.
                args = ["find", "-P", root.path, *xdev, "-mindepth", "1", *skip, "-type", "f",
                        "-printf", FIND_FORMAT.replace("%p", "%P", 1)]
                self._pipes.append(_Pipe(args, "/", None, env, ()))
        except BaseException:
            for pipe in self._pipes:
                pipe.close(False)
            raise
        finally:
            os.close(fd)
        self._next = 0
        self._fd = -1
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._advance()

    def _advance(self) -> None:
        """Read from the next pipe (EOF after the last)."""
        if self._next >= len(self._pipes):
            self._eof = True
            return
        out = self._pipes[self._next].sort.stdout
        assert out is not None
        self._fd = out.fileno()  # read with os.read after select, so a stop is noticed
        self._next += 1

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
                self._advance()
                continue
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
        """Reap every process; raises TreeError if a completed listing cannot be trusted.
        Returns find's complaints about unreadable directories (the walk skips those too)."""
        if not completed:
            for pipe in self._pipes:
                pipe.kill()
        failure: TreeError | None = None
        for pipe in self._pipes:
            try:
                pipe.close(completed)
            except TreeError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return [line for pipe in self._pipes for line in pipe.errors]


class TreeDiff:
    """The differences between the tree under ``root`` and the manifest, in path order."""

    def __init__(self, root: RootDir, ignore: IgnoreRules, parts: int | None = None):
        self.root = root
        self.ignore = ignore
        self.parts = parts or PARTS
        self.files = 0  # regular files on disk that the mirror covers (not ignored)
        self.unreadable: list[bytes] = []
        self.spool_reused = False  # the manifest's blocks came from the kept spool
        self._dir = ""
        self._dir_ignored = False

    def run(self, blocks: Blocks, stop: threading.Event, keep: Path | None = None) -> Generator[Diff, None, None]:
        """Yields every difference; the caller must exhaust it unless ``stop`` is set.
        With ``keep``, the manifest's printed blocks are read from and kept in that file
        (syncd.spool)."""
        listing = _Listing(self.root, self.ignore.pruned_dirs, stop, self.parts)
        completed = False
        spool = None
        try:
            try:
                spool = ManifestSpool(blocks, stop, keep)
                self.spool_reused = spool.reused
                for blob, last, count in spool:
                    if stop.is_set():
                        return
                    if listing.skip_if_next(blob):
                        self.files += count
                        continue
                    yield from self._merge(listing, blob, last)
            except SpoolError as exc:
                raise TreeError(str(exc)) from exc
            if stop.is_set():
                return  # the spool ended early: the rest of the listing is not known new
            while (record := listing.peek()) is not None:
                listing.drop()
                yield from self._on_disk_only(record)
            completed = not (stop.is_set() or listing.stopped)
        finally:
            if spool is not None:
                spool.close()
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

"""The inbox: changes seen by the watcher and the scans, on their way into the journal.

Any thread may submit; only the scheduler's turns drain the inbox into the journal, in
large batches of one transaction each, so the journal keeps its single writer. It records
*what* changed and knows nothing about how a change is shipped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Any

from .changes import Entry
from .config import FolderConfig
from .journal import Journal
from .loops import Waker

INBOX_LIMIT = 200_000        # observed changes held in memory before the watcher blocks
INGEST_BATCH = 20_000        # changes journaled per transaction
FINISHED_LIMIT = 10_000      # paths whose last finished write is remembered (to tell a hot file)

# (kind, path, detail, due, quiet): p = path may have changed, d = directory subtree,
# f = forget manifest row then re-check, a = adopt an object, b = barrier; quiet: see Pending
Item = tuple[str, str, Any, float, float | None]


class Inbox:
    """Bounded hand-off from the observing threads to the scheduler's turns."""

    def __init__(self, folder: FolderConfig, journal: Journal, wake: Waker):
        self.folder = folder
        self.journal = journal
        self._wake = wake
        self._items: deque[Item] = deque()
        self._space = threading.Semaphore(INBOX_LIMIT)
        self._unsaved: list[Item] = []
        # path -> (monotonic time of its last finished write, the quiet period it got), oldest first
        self._finished: OrderedDict[str, tuple[float, float | None]] = OrderedDict()
        self._finished_lock = threading.Lock()
        self.last_submit = 0.0  # monotonic time of the latest observed change (deletion waves wait for a pause)

    def __len__(self) -> int:
        """Changes not yet durable: waiting, or taken for a journal write that has not succeeded."""
        return len(self._items) + len(self._unsaved)

    # ------------------------------------------------------------------ any thread

    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        """Note that ``path`` may have changed. Called by the watcher and the scans.

        Blocks when INBOX_LIMIT changes are waiting, which bounds memory; the kernel then
        queues events (and reports an overflow that triggers a rescan).
        """
        due = time.time() + (self.folder.settle if settle else 0.0)
        self.last_submit = time.monotonic()
        self._put(("d" if is_dir else "p", path, move_from, due, None))

    def finished(self, path: str, move_from: str | None = None) -> None:
        """Note that a write to ``path`` finished: it was closed after writing (IN_CLOSE_WRITE)
        or renamed into place (an atomic save). Called by the watcher.

        Unless the path was finished before within ``hot_window`` (a file rewritten again and
        again), it is due after ``settle_closed`` instead of ``settle``: long enough for the
        rename of an atomic save to overtake its temp file's upload. A hot file waits
        ``settle`` (and ``max_delay``) as any other change does.
        """
        folder = self.folder
        now = time.monotonic()
        with self._finished_lock:
            last = self._finished.pop(path, None)
            hot = last is not None and now - last[0] < folder.hot_window
            quiet = None if hot else min(folder.settle_closed, folder.settle)
            self._finished[path] = (now, quiet)
            horizon = now - folder.hot_window
            while self._finished and (len(self._finished) > FINISHED_LIMIT
                                      or next(iter(self._finished.values()))[0] < horizon):
                self._finished.popitem(last=False)
        self.last_submit = now
        self._put(("p", path, move_from, time.time() + (folder.settle if quiet is None else quiet), quiet))

    def attributes_changed(self, path: str) -> None:
        """The file's metadata changed (IN_ATTRIB: utime, chmod, touch). Right after a finished
        write it is part of that write (``tar x`` and ``cp -p`` set the mtime just after the
        close): due after the same quiet period. Otherwise it is a change like any other."""
        with self._finished_lock:
            last = self._finished.get(path)
        if last is None or time.monotonic() - last[0] >= self.folder.hot_window:
            self.submit(path)
            return
        quiet = last[1]
        self._put(("p", path, None, time.time() + (self.folder.settle if quiet is None else quiet), quiet))

    def submit_forget(self, path: str, mtime_ns: int, etag: str | None) -> None:
        """The bucket no longer holds what the manifest says (reconciler): forget, re-check."""
        self._put(("f", path, (mtime_ns, etag), time.time(), None))

    def submit_adopt(self, entry: Entry) -> None:
        """An object in the bucket is this file, unchanged (journal rebuild): no upload."""
        self._put(("a", entry.path, entry, 0.0, None))

    def barrier(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is in the journal."""
        done = threading.Event()
        self._put(("b", "", done, 0.0, None))
        return done.wait(timeout)

    def _put(self, item: Item) -> None:
        self._space.acquire()
        self._items.append(item)
        if len(self._items) == 1:
            # Only the first waiting item wakes the loop, which then takes all there are (and
            # wakes itself again if it left some). Waking it for each of a scan's thousands of
            # submissions made it journal them a few at a time, one transaction each.
            self._wake.set()

    # ------------------------------------------------------------------ scheduler turns

    def ingest(self) -> None:
        """Make up to INGEST_BATCH waiting changes durable. A failed write keeps them in
        memory, and the next call tries them again."""
        while self._items and len(self._unsaved) < INGEST_BATCH:
            self._unsaved.append(self._items.popleft())
            self._space.release()
        if not self._unsaved:
            return
        by_kind: dict[str, list[Item]] = {"f": [], "a": [], "p": [], "d": [], "b": []}
        for item in self._unsaved:
            by_kind[item[0]].append(item)
        if by_kind["f"]:
            self.journal.forget((path, mtime_ns, etag) for _, path, (mtime_ns, etag), _, _ in by_kind["f"])
        if by_kind["a"]:
            self.journal.adopt(entry for _, _, entry, _, _ in by_kind["a"])
        self.journal.record([(path, move_from, due, quiet) for _, path, move_from, due, quiet in by_kind["p"]]
                            + [(path, None, due) for _, path, _, due, _ in by_kind["f"]], self.folder.max_delay)
        for _, prefix, _, due, _ in by_kind["d"]:
            self.journal.record_dir(prefix, due, self.folder.max_delay)
        self._unsaved.clear()
        for _, _, done, _, _ in by_kind["b"]:
            done.set()
        if self._items:
            self._wake.set()

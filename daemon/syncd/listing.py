"""The bucket listing of a remote pass (syncd.reconciler): its pages fetched ahead by a
thread of their own and spooled into the pass's scratch table, with which objects can be
decided before the listing is complete."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator

from .store import ObjectStore, RemoteObject

# The objects of the listing the manifest does not know, with whether a write intent names
# them and whether an earlier pass found them foreign with this very ETag.
_UNKNOWN = ("SELECT r.path, r.size, r.etag, i.op IS NOT NULL, f.path IS NOT NULL FROM remote r "
            "LEFT JOIN j.manifest m ON m.path = r.path LEFT JOIN j.intents i ON i.path = r.path "
            "LEFT JOIN j.foreign_keys f ON f.path = r.path AND f.etag = r.etag WHERE m.path IS NULL")
Query = tuple[str, tuple[object, ...]]


class Spool:
    """The listing in the scratch table, and which of its objects can be decided already.

    S3 lists keys in ascending UTF-8 order, so once a page is in, so is every key up to its
    last one: those objects are decided while the next pages are fetched. The order is
    checked, not trusted (SeaweedFS lists directory by directory; other stores promise
    nothing): from the first page that goes back, the rest waits for the whole listing."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.pages = 0
        self.done: str | None = None       # every unknown object up to this path is handed out
        self.disordered: int | None = None  # the first page that went back
        self._high: str | None = None      # the highest path of the pages in order

    def add(self, rows: list[tuple[str, int, str]]) -> None:
        page = self.pages
        self.pages += 1
        self.db.executemany("INSERT OR REPLACE INTO remote VALUES (?,?,?,?)", [(*r, page) for r in rows])
        if self.disordered is None and rows:
            paths = [r[0] for r in rows]
            if self._high is not None and min(paths) <= self._high:
                self.disordered = page
            else:
                self._high = max(paths)

    def decidable(self) -> Query | None:
        """The unknown objects the listing so far is complete for, not handed out yet."""
        if self.disordered is not None or self._high is None or self._high == self.done:
            return None
        low, self.done = self.done, self._high
        if low is None:
            return _UNKNOWN + " AND r.path <= ? ORDER BY r.path", (self.done,)
        return _UNKNOWN + " AND r.path > ? AND r.path <= ? ORDER BY r.path", (low, self.done)

    def rest(self) -> Query:
        """The unknown objects not handed out yet, once the listing is complete."""
        if self.done is None:
            return _UNKNOWN + " ORDER BY r.path", ()
        late = self.disordered if self.disordered is not None else self.pages
        return _UNKNOWN + " AND (r.path > ? OR r.page >= ?) ORDER BY r.path", (self.done, late)


class Prefetch:
    """The listing's pages, fetched a few ahead by a thread of their own: the next LIST
    request is on its way while the objects of the last page are decided."""

    AHEAD = 2  # pages waiting (memory: a page is at most 1000 objects)

    def __init__(self, store: ObjectStore, prefix: str, stop: threading.Event):
        self._queue: queue.Queue[list[RemoteObject] | BaseException | None] = queue.Queue(self.AHEAD)
        self._halt = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(store, prefix), name="reconcile-list", daemon=True)

    def __enter__(self) -> Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._halt.set()  # the thread ends at its next page (a request under way is finished first)
        self._thread.join()

    def __iter__(self) -> Iterator[list[RemoteObject]]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self, store: ObjectStore, prefix: str) -> None:
        pages: Iterator[list[RemoteObject]] | None = None
        try:
            pages = store.list(prefix)  # inside: a store may raise before its first page, too
            for page in pages:
                if not self._put(page):
                    return
                if self._stop.is_set():
                    break
        except BaseException as exc:  # the pass's thread raises it
            self._put(exc)
            return
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()
        self._put(None)

    def _put(self, item: list[RemoteObject] | BaseException | None) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

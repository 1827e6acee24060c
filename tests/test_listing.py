"""A remote pass's listing (syncd.listing): which objects are decided while later pages are
still being fetched, and the pages fetched ahead by a thread of their own."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd.journal import Journal
from syncd.listing import Prefetch, Spool
from syncd.store import RemoteObject, Scope, StoreError

from tests.support.memstore import MemoryStore, StoredObject


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    journal = Journal(tmp_path / "j.sqlite3", "test")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE remote(path TEXT PRIMARY KEY, size INTEGER, etag TEXT, page INTEGER) WITHOUT ROWID")
    db.execute("ATTACH DATABASE ? AS j", (f"file:{journal.path}?mode=ro",))
    try:
        yield Spool(db)
    finally:
        db.close()
        journal.close()


def _decided(spool: Spool, pages: list[list[str]]) -> list[list[str]]:
    """The paths handed out after each page, then after the listing (the last list)."""
    out = []
    for page in pages:
        spool.add([(p, 1, "e") for p in page])
        query = spool.decidable()
        out.append([] if query is None else [r[0] for r in spool.db.execute(*query)])
    out.append([r[0] for r in spool.db.execute(*spool.rest())])
    return out


def test_pages_in_key_order_are_decided_as_each_arrives(spool: Spool) -> None:
    assert _decided(spool, [["b", "a"], ["c", "d/e"], ["e"]]) == [["a", "b"], ["c", "d/e"], ["e"], []]


def test_from_a_page_that_goes_back_the_rest_waits_for_the_whole_listing(spool: Spool) -> None:
    # SeaweedFS lists directory by directory: "a/x" before "a-b", although '-' < '/'.
    decided = _decided(spool, [["a/x", "a/y"], ["a-b", "z"], ["b"]])
    assert decided == [["a/x", "a/y"], [], [], ["a-b", "b", "z"]]


def test_a_key_listed_again_after_being_decided_is_decided_again(spool: Spool) -> None:
    assert _decided(spool, [["a", "b"], ["b", "c"]]) == [["a", "b"], [], ["b", "c"]]


def test_prefetched_pages_arrive_in_listing_order() -> None:
    store = MemoryStore(page_size=2, sorted_listing=True)
    for key in ("p/a", "p/b", "p/c", "p/d", "p/e"):
        store.objects[key] = StoredObject(key.encode(), "e", {}, {})
    with Prefetch(store, "p/", threading.Event()) as pages:
        assert [[o.key for o in page] for page in pages] == [["p/a", "p/b"], ["p/c", "p/d"], ["p/e"]]


def test_a_listing_error_is_raised_in_the_reading_thread() -> None:
    store = MemoryStore()
    store.fail("list")
    with Prefetch(store, "p/", threading.Event()) as pages, pytest.raises(StoreError):
        list(pages)


def test_a_store_refusing_the_listing_outright_is_raised_in_the_reading_thread() -> None:
    class Refusing:
        def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
            raise StoreError("no such bucket", scope=Scope.FOLDER)

    with Prefetch(Refusing(), "p/", threading.Event()) as pages, pytest.raises(StoreError):  # type: ignore[arg-type]
        list(pages)


def test_leaving_early_stops_the_fetching_thread() -> None:
    class Endless:
        def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
            while True:
                yield [RemoteObject(prefix + "k", 1, "e")]

    prefetch = Prefetch(Endless(), "p/", threading.Event())  # type: ignore[arg-type]
    with prefetch as pages:
        next(iter(pages))
    assert not prefetch._thread.is_alive()


"""The remote pass's drift check, in process against the memory store: an object missing from
the listing or different from it is re-sent only if a HEAD confirms the bucket lacks what the
manifest says (the manifest is read after the listing, so a transfer confirmed while the
listing ran must not look like drift)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from syncd.changes import Entry
from syncd.config import FolderConfig
from syncd.journal import Journal
from syncd.paths import IgnoreRules
from syncd.reconciler import RemotePass, RemoteReport
from syncd.store import RemoteObject

from tests.support.memstore import MemoryStore, StoredObject


@dataclass
class Sink:
    forgotten: set[str] = field(default_factory=set)

    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        pass

    def submit_forget(self, path: str, mtime_ns: int, etag: str | None) -> None:
        self.forgotten.add(path)

    def submit_adopt(self, entry: Entry) -> None:
        pass


def _store_and_journal(tmp_path: Path, names: list[str]) -> tuple[FolderConfig, MemoryStore, Journal]:
    root = tmp_path / "root"
    root.mkdir()
    store = MemoryStore(page_size=2)
    journal = Journal(tmp_path / "j.sqlite3", "test")
    entries = []
    for name in names:
        data = f"content of {name}".encode()
        (root / name).write_bytes(data)
        etag = hashlib.md5(data).hexdigest()
        store.objects["p/" + name] = StoredObject(data, etag, {}, {})
        entries.append(Entry(name, len(data), 1, None, None, etag))
    journal.adopt(entries)
    folder = FolderConfig(name="mem", source=tmp_path / "mem.yaml", path=root, bucket="memory", prefix="p/")
    return folder, store, journal


def _pass(tmp_path: Path, folder: FolderConfig, store: MemoryStore, journal: Journal) -> tuple[Sink, RemoteReport]:
    sink = Sink()
    try:
        report = RemotePass(folder, journal, store, sink, tmp_path / "scratch.sqlite3", IgnoreRules(()),
                            frozenset()).run(threading.Event(), False)
    finally:
        journal.close()
    return sink, report


def test_an_object_confirmed_while_the_listing_ran_is_not_drift(tmp_path):
    folder, store, journal = _store_and_journal(tmp_path, ["a.txt", "b.txt", "c.txt"])
    listed = store.list

    def listing_then_a_copy_confirmed(prefix: str) -> Iterator[list[RemoteObject]]:
        yield from listed(prefix)
        # After the last page: a rename's copy lands and is journaled, as the scheduler does.
        data = b"renamed while the listing ran"
        etag = hashlib.md5(data).hexdigest()
        store.objects["p/late.txt"] = StoredObject(data, etag, {}, {})
        journal.adopt([Entry("late.txt", len(data), 2, None, None, etag)])

    store.list = listing_then_a_copy_confirmed  # type: ignore[method-assign]
    sink, report = _pass(tmp_path, folder, store, journal)
    assert sink.forgotten == set() and report.drift == 0
    assert report.heads == 1  # the candidate, confirmed present


def test_an_object_deleted_behind_syncds_back_is_drift_confirmed_by_a_head(tmp_path):
    folder, store, journal = _store_and_journal(tmp_path, ["a.txt", "b.txt", "c.txt"])
    del store.objects["p/b.txt"]
    store.objects["p/c.txt"] = StoredObject(b"vandalised", hashlib.md5(b"vandalised").hexdigest(), {}, {})
    sink, report = _pass(tmp_path, folder, store, journal)
    assert sink.forgotten == {"b.txt", "c.txt"} and report.drift == 2
    assert store.calls["head"] == 2


def test_an_exact_bucket_costs_no_head(tmp_path):
    folder, store, journal = _store_and_journal(tmp_path, ["a.txt", "b.txt", "c.txt"])
    sink, report = _pass(tmp_path, folder, store, journal)
    assert (sink.forgotten, report.drift, store.calls["head"]) == (set(), 0, 0)

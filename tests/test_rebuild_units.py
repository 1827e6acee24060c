"""A journal rebuild's remote pass, in process against the memory store: the one walk of the
tree merged with the listing (a rebuild) reaches the verdicts that looking up each object's
path reaches (any other pass), with no HEAD where the listing's ETag decides."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from syncd.changes import Entry
from syncd.config import FolderConfig
from syncd.journal import Journal
from syncd.owner import OWNED_ELSEWHERE
from syncd.paths import IgnoreRules
from syncd.reconciler import RemotePass, RemoteReport
from syncd.store import FOLDER, META_OWNER, StoreError

from tests.support.memstore import MemoryStore, StoredObject

OWNER = "owner-1"
SAME = ["a.txt", "a/b.txt", "a-b.txt", "a0", "\u00e9t\u00e9.txt", "d/e/f.bin"]  # order: '-' < '.' < '/' < '0'


@dataclass
class Sink:
    adopted: set[str] = field(default_factory=set)
    submitted: set[str] = field(default_factory=set)

    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        self.submitted.add(path)

    def submit_forget(self, path: str, mtime_ns: int, etag: str | None) -> None:
        raise AssertionError("a fresh journal has nothing to forget")

    def submit_adopt(self, entry: Entry) -> None:
        self.adopted.add(entry.path)


def _put(store: MemoryStore, rel: str, data: bytes, meta: dict[str, str] | None = None) -> None:
    store.objects["p/" + rel] = StoredObject(data, hashlib.md5(data).hexdigest(), meta or {}, {})


def _write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


@pytest.fixture(params=[False, True], ids=["listed-in-no-order", "listed-in-key-order"])
def bucket_and_tree(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[FolderConfig, MemoryStore]:
    """Several pages, listed shuffled (the rest is decided after the listing) or in S3's key
    order (each page's objects decided while the next is fetched)."""
    root = tmp_path / "root"
    root.mkdir()
    store = MemoryStore(page_size=3, sorted_listing=request.param)
    for i, rel in enumerate(SAME):
        _write(root, rel, f"content {i}".encode() * (i + 1))
        _put(store, rel, f"content {i}".encode() * (i + 1))
    _write(root, "changed.txt", b"new text")
    _put(store, "changed.txt", b"old text")          # same size, other content
    _write(root, "grown.txt", b"longer than before")
    _put(store, "grown.txt", b"short")
    _write(root, "build/x.o", b"object code")
    _put(store, "build/x.o", b"object code")         # ignored: not part of the mirror
    _write(tmp_path / "outside", "f.txt", b"outside")
    os.symlink(tmp_path / "outside", root / "link")
    _put(store, "link/f.txt", b"outside")            # through a symlink: never read
    _put(store, "gone.txt", b"deleted while the journal was lost", {META_OWNER: OWNER})
    _write(root, "local-only.txt", b"not in the bucket yet")
    folder = FolderConfig(name="mem", source=tmp_path / "mem.yaml", path=root, bucket="memory", prefix="p/",
                          ignore=("build/",))
    return folder, store


def _pass(tmp_path: Path, folder: FolderConfig, store: MemoryStore, rebuild: bool) -> tuple[Sink, RemoteReport]:
    journal = Journal(tmp_path / f"j-{rebuild}.sqlite3", "test")
    sink = Sink()
    try:
        report = RemotePass(folder, journal, store, sink, tmp_path / "scratch.sqlite3", IgnoreRules(folder.ignore),
                            frozenset({OWNER})).run(threading.Event(), rebuild)
    finally:
        journal.close()
    return sink, report


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuild-walk", "lookup-per-object"])
def test_unchanged_files_are_adopted_by_etag_and_the_rest_left_to_the_scan(tmp_path, bucket_and_tree, rebuild):
    folder, store = bucket_and_tree
    sink, report = _pass(tmp_path, folder, store, rebuild)
    assert sink.adopted == set(SAME) | {"gone.txt"}  # gone.txt: our own orphan, adopted to be deleted
    assert sink.submitted == {"gone.txt"}
    assert (report.adopted, report.orphans, report.files_read) == (len(SAME), 1, len(SAME) + 1)  # + changed.txt
    assert report.foreign == 2  # the ignored object and the one behind the symlink
    assert report.heads == 3 and store.calls["head"] == 3  # only the objects without a local file


def test_the_owner_claim_runs_with_the_listing_under_way_and_its_ids_decide_orphans(tmp_path, bucket_and_tree):
    folder, store = bucket_and_tree
    journal = Journal(tmp_path / "j.sqlite3", "test")
    sink = Sink()
    listing = threading.Event()
    store.hook = lambda op, key: listing.set() if op == "list" else None
    claimed_while_listing: list[bool] = []

    def confirm() -> frozenset[str]:
        claimed_while_listing.append(listing.wait(10))
        assert sink.adopted == set()
        return frozenset({OWNER})  # the probe knew no owner yet: the claim recovered it

    try:
        report = RemotePass(folder, journal, store, sink, tmp_path / "scratch.sqlite3", IgnoreRules(folder.ignore),
                            frozenset()).run(threading.Event(), True, confirm)
    finally:
        journal.close()
    assert claimed_while_listing == [True]
    assert sink.adopted == set(SAME) | {"gone.txt"} and report.orphans == 1


def test_a_prefix_owned_elsewhere_ends_the_pass_before_anything_is_adopted(tmp_path, bucket_and_tree):
    folder, store = bucket_and_tree
    journal = Journal(tmp_path / "j.sqlite3", "test")
    sink = Sink()

    def confirm() -> frozenset[str]:
        raise StoreError("owned elsewhere", scope=FOLDER, code=OWNED_ELSEWHERE)

    try:
        with pytest.raises(StoreError, match="owned elsewhere"):
            RemotePass(folder, journal, store, sink, tmp_path / "scratch.sqlite3", IgnoreRules(folder.ignore),
                       frozenset({OWNER})).run(threading.Event(), True, confirm)
    finally:
        journal.close()
    assert sink.adopted == set() and sink.submitted == set()
    assert not (tmp_path / "scratch.sqlite3").exists()

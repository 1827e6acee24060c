"""Transfers, in process, against the in-memory store: how each store answer becomes the
change's outcome (done, retry, defer with a folder error, park), without a server."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd.changes import Entry, Pending
from syncd.config import FolderConfig
from syncd.journal import Journal
from syncd.store import FOLDER, KEY, META_OWNER, META_SHA256, TRANSIENT
from syncd.transfer import Result, Task, Transfers

from tests.support.memstore import MemoryStore


@pytest.fixture
def folder(tmp_path: Path) -> FolderConfig:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    return FolderConfig(name="mem", source=tmp_path / "mem.yaml", path=root, bucket="memory", prefix="p/")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def transfers(tmp_path: Path, folder: FolderConfig, store: MemoryStore) -> Iterator[Transfers]:
    journal = Journal(tmp_path / "j.sqlite3", "test")
    made = Transfers(folder, store, journal.uploads)
    made.owner = "owner-1"
    yield made
    journal.close()


def run(transfers: Transfers, task: Task) -> Result:
    results: list[Result] = []
    transfers.run(task, results.append)
    assert len(results) == 1  # the memory store answers before put returns
    return results[0]


def pending(path: str) -> Pending:
    return Pending(path, None, gen=1, attempts=0, first_seen=0.0)


def test_an_upload_is_done_with_the_objects_etag_and_metadata(transfers: Transfers, store: MemoryStore) -> None:
    result = run(transfers, Task("upload", [pending("a.txt")]))
    [outcome] = result.outcomes
    assert outcome.kind == "done" and outcome.entry is not None
    assert outcome.entry.etag == hashlib.md5(b"alpha").hexdigest()
    head = store.head("p/a.txt")
    assert head is not None and head.meta is not None
    assert head.meta[META_SHA256] == hashlib.sha256(b"alpha").hexdigest()
    assert head.meta[META_OWNER] == "owner-1"
    assert store.objects["p/a.txt"].headers.get("Content-Type") == "text/plain"


def test_a_file_planned_as_one_put_that_grew_past_the_threshold_is_planned_again(
        tmp_path: Path, folder: FolderConfig, store: MemoryStore) -> None:
    small = dataclasses.replace(folder, multipart_threshold=4)  # "alpha" (5 bytes) is past it now
    journal = Journal(tmp_path / "j2.sqlite3", "test")
    try:
        task = Task("upload", [pending("a.txt")], single=True)
        [outcome] = run(Transfers(small, store, journal.uploads), task).outcomes
    finally:
        journal.close()
    assert outcome.kind == "defer" and outcome.delay == small.settle  # not sent in parts on the shared thread
    assert store.objects == {} and list(store.list_uploads("")) == []


def test_a_transient_failure_is_retried_later(transfers: Transfers, store: MemoryStore) -> None:
    store.fail("put", TRANSIENT)
    [outcome] = run(transfers, Task("upload", [pending("a.txt")])).outcomes
    assert outcome.kind == "retry" and outcome.delay > 0


def test_a_lost_answer_is_retried_though_the_object_arrived(transfers: Transfers, store: MemoryStore) -> None:
    store.fail("put", lost=True)
    [outcome] = run(transfers, Task("upload", [pending("a.txt")])).outcomes
    assert outcome.kind == "retry"
    assert store.read("p/a.txt") == b"alpha"


def test_a_folder_failure_keeps_the_change_and_reports_the_folder(transfers: Transfers, store: MemoryStore) -> None:
    store.fail("put", FOLDER)
    result = run(transfers, Task("upload", [pending("a.txt")]))
    assert [o.kind for o in result.outcomes] == ["defer"]
    assert result.folder_error is not None and result.folder_error.scope == FOLDER


def test_a_key_failure_parks_the_change(transfers: Transfers, store: MemoryStore) -> None:
    store.fail("put", KEY)
    [outcome] = run(transfers, Task("upload", [pending("a.txt")])).outcomes
    assert outcome.kind == "park" and outcome.error


def test_a_rename_whose_source_object_is_gone_is_uploaded_instead(
        transfers: Transfers, store: MemoryStore, folder: FolderConfig) -> None:
    st = (folder.path / "a.txt").stat()
    gone = Entry("old.txt", st.st_size, st.st_mtime_ns, st.st_ino, hashlib.sha256(b"alpha").hexdigest(), "x")
    [outcome] = run(transfers, Task("copy", [pending("a.txt")], copy_from=gone)).outcomes
    assert outcome.kind == "done"
    assert store.read("p/a.txt") == b"alpha"
    assert store.calls["copy"] == 1 and store.calls["put"] == 1


def test_a_delete_error_for_one_key_retries_that_key_only(transfers: Transfers, store: MemoryStore) -> None:
    store.write("p/x", b"", if_absent=False)
    store.write("p/y", b"", if_absent=False)
    store.fail("delete", KEY, key="p/x", code="AccessDenied")
    outcomes = run(transfers, Task("delete", [pending("x"), pending("y")])).outcomes
    assert {o.path: o.kind for o in outcomes} == {"x": "retry", "y": "done"}
    assert store.read("p/x") == b"" and store.read("p/y") is None

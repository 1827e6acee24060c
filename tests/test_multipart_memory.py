"""The multipart uploader, in process, against the in-memory store: resumption from the
journaled parts and recognition of a lost Complete, without a server or a subprocess."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd.config import FolderConfig
from syncd.journal import Journal
from syncd.multipart import MultipartUploader, Source
from syncd.store import FOLDER, META_SHA256, StoreError

from tests.support.memstore import MemoryStore

MiB = 1024 * 1024
# Three parts: two of 5 MiB (S3's minimum) and a short last one.
BODY = os.urandom(5 * MiB) + os.urandom(5 * MiB) + b"tail" * 256


@pytest.fixture
def folder(tmp_path: Path) -> FolderConfig:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(BODY)
    return FolderConfig(name="mem", source=tmp_path / "mem.yaml", path=root, bucket="memory",
                        part_size=5 * MiB, multipart_threshold=5 * MiB, part_concurrency=1)


@pytest.fixture
def source(folder: FolderConfig) -> Iterator[Source]:
    with open(folder.path / "big.bin", "rb", buffering=0) as f:
        yield Source("big.bin", "big.bin", f, f.fileno(), os.fstat(f.fileno()))


def uploader(folder: FolderConfig, store: MemoryStore, journal: Journal) -> MultipartUploader:
    return MultipartUploader(folder, store, journal.uploads, None, threading.Event(), lambda n: None)


def fail_on_call(store: MemoryStore, op: str, number: int) -> None:
    """The ``number``-th call of ``op`` fails with a folder error (credentials revoked, say)."""
    seen = 0

    def hook(called: str, key: str | None) -> None:
        nonlocal seen
        if called == op:
            seen += 1
            if seen == number:
                raise StoreError("injected: access revoked", scope=FOLDER, code="AccessDenied", key=key)

    store.hook = hook


def test_an_interrupted_upload_resumes_from_its_journaled_parts(
        tmp_path: Path, folder: FolderConfig, source: Source) -> None:
    store = MemoryStore()
    journal = Journal(tmp_path / "j.sqlite3", "test")
    fail_on_call(store, "upload_part", 3)
    with pytest.raises(StoreError):
        uploader(folder, store, journal).upload(source, lambda: None)
    journal.close()  # as after kill -9: only what SQLite holds survives

    store.hook = None
    store.calls.clear()
    journal = Journal(tmp_path / "j.sqlite3", "test")
    entry = uploader(folder, store, journal).upload(source, lambda: None)

    assert store.calls["upload_part"] == 1  # only the part that never arrived
    assert store.calls["create_upload"] == 0
    assert store.read("big.bin") == BODY
    head = store.head("big.bin")
    assert head is not None and entry.etag == head.etag
    assert (head.meta or {})[META_SHA256] == hashlib.sha256(BODY).hexdigest() == entry.sha256
    assert journal.uploads.get("big.bin") is None
    assert list(store.list_uploads("")) == []
    journal.close()


def test_a_complete_whose_answer_was_lost_is_not_uploaded_again(
        tmp_path: Path, folder: FolderConfig, source: Source) -> None:
    store = MemoryStore()
    journal = Journal(tmp_path / "j.sqlite3", "test")
    store.fail("complete_upload", lost=True)
    with pytest.raises(StoreError) as err:
        uploader(folder, store, journal).upload(source, lambda: None)
    assert err.value.transient

    store.calls.clear()
    entry = uploader(folder, store, journal).upload(source, lambda: None)

    assert store.calls["upload_part"] == 0 and store.calls["complete_upload"] == 0
    assert store.read("big.bin") == BODY
    assert entry.sha256 == hashlib.sha256(BODY).hexdigest()
    journal.close()

"""`syncd restore` of a large object as ranged parts: its bytes are hashed behind the parts as
they arrive (no second pass over the file), and a wrong digest or a failed part leaves nothing
under the real name. And downloads start with the listing's first page. Against the
in-memory store (the ranged get() path)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd import restore
from syncd.config import FolderConfig
from syncd.restore import Restorer
from syncd.store import KEY, RemoteObject

from .support.daemon import await_condition
from .support.memstore import MemoryStore, StoredObject

KiB = 1024
SIZE = 3 * 1024 * KiB + 5   # above the whole-fetch limit: 13 ranged parts of 256 KiB, the last of 5 bytes
MTIME = 1_600_000_000_123_456_789


def _folder(target: Path) -> FolderConfig:
    return FolderConfig(name="t", source=Path("t"), path=target, bucket="memory", prefix="p/",
                        multipart_threshold=1024 * KiB, part_size=256 * KiB)


def _store(body: bytes, sha256: str | None = None) -> MemoryStore:
    store = MemoryStore()
    meta = {"syncd-sha256": sha256 or hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": str(MTIME)}
    store.objects["p/big.bin"] = StoredObject(body, "0" * 30 + "-13", meta, {})
    return store


def _temps(root: Path) -> list[Path]:
    return list(root.rglob(".syncd-restore-*"))


@pytest.fixture
def body() -> bytes:
    return random.Random(19).randbytes(SIZE)


def test_a_large_object_is_verified_as_its_parts_arrive_without_reading_the_file_back(tmp_path, body, monkeypatch):
    def no_second_pass(*_: object) -> str:
        raise AssertionError("the downloaded file was read back to hash it")

    monkeypatch.setattr(restore, "hash_fd", no_second_pass)
    store = _store(body)
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=4).run()  # type: ignore[arg-type]
    assert result.restored == ["big.bin"] and result.failed == []
    assert (tmp_path / "big.bin").read_bytes() == body
    assert (tmp_path / "big.bin").stat().st_mtime_ns == MTIME
    assert store.calls["get"] == 13 and not _temps(tmp_path)


def test_a_large_object_whose_bytes_differ_from_its_sha256_is_not_written(tmp_path, body):
    store = _store(body, sha256=hashlib.sha256(b"other").hexdigest())
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=4).run()  # type: ignore[arg-type]
    assert [path for path, _ in result.failed] == ["big.bin"] and "checksum mismatch" in result.failed[0][1]
    assert not (tmp_path / "big.bin").exists() and not _temps(tmp_path)


def test_a_failed_part_fails_the_file_and_leaves_no_temp_file(tmp_path, body):
    store = _store(body)
    store.fail("get", KEY, code="InternalError")
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=4).run()  # type: ignore[arg-type]
    assert [path for path, _ in result.failed] == ["big.bin"] and "InternalError" in result.failed[0][1]
    assert not (tmp_path / "big.bin").exists() and not _temps(tmp_path)


def test_downloads_start_before_the_listing_has_ended(tmp_path):
    store = MemoryStore(page_size=500)
    for i in range(1500):
        body = b"x%d" % i
        store.objects[f"p/d{i % 30}/f{i}"] = StoredObject(body, hashlib.md5(body).hexdigest(),
                                                          {"syncd-sha256": hashlib.sha256(body).hexdigest()}, {})
    listing = store.list

    def last_page_after_a_download(prefix: str) -> Iterator[list[RemoteObject]]:
        pages = list(listing(prefix))
        yield from pages[:-1]
        await_condition(lambda: store.calls["fetch"] > 0, 10, "a download before the listing's last page")
        yield pages[-1]

    store.list = last_page_after_a_download  # type: ignore[method-assign]
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=4).run()  # type: ignore[arg-type]
    assert len(result.restored) == 1500 and result.ok

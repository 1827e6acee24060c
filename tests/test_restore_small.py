"""`syncd restore` of small objects (one whole GET each): the store's body callback only hands
the pieces over, and the restorer hashes and writes them after the GET. With awscrt that
callback runs on the single event-loop thread every download shares. Against the in-memory store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from syncd.config import FolderConfig
from syncd.restore import Restorer
from syncd.store import RemoteObject

from .support.memstore import MemoryStore, StoredObject

MTIME = 1_600_000_000_123_456_789


def _store(bodies: dict[str, bytes], sha256: str | None = None) -> MemoryStore:
    store = MemoryStore()
    for rel, body in bodies.items():
        meta = {"syncd-sha256": sha256 or hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": str(MTIME)}
        store.objects["p/" + rel] = StoredObject(body, hashlib.md5(body).hexdigest(), meta, {})
    return store


def _folder(target: Path) -> FolderConfig:
    return FolderConfig(name="t", source=Path("t"), path=target, bucket="memory", prefix="p/")


def _temps(root: Path) -> list[Path]:
    return list(root.rglob(".syncd-restore-*"))


def test_a_small_objects_body_is_written_after_the_get_not_in_the_stores_callback(tmp_path):
    bodies = {f"d/f{i}": bytes([i]) * (100_000 + i) for i in range(3)}  # two 64 KiB pieces each
    store = _store(bodies)
    fetch = store.fetch
    on_disk_in_callback: list[tuple[int, bool]] = []  # (temp files, the file itself there?)

    def watching(key: str, version: str | None,
                 start: Callable[[RemoteObject], Callable[[bytes], None]]) -> RemoteObject:
        def started(info: RemoteObject) -> Callable[[bytes], None]:
            consume = start(info)

            def piece(data: bytes) -> None:
                consume(data)
                on_disk_in_callback.append((len(_temps(tmp_path)), (tmp_path / info.key[2:]).exists()))
            return piece
        return fetch(key, version, started)

    store.fetch = watching  # type: ignore[method-assign]
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=1).run()  # type: ignore[arg-type]
    assert sorted(result.restored) == sorted(bodies) and result.ok
    assert on_disk_in_callback and set(on_disk_in_callback) == {(0, False)}
    for rel, body in bodies.items():
        assert (tmp_path / rel).read_bytes() == body
        assert (tmp_path / rel).stat().st_mtime_ns == MTIME
    assert result.bytes == sum(len(b) for b in bodies.values()) and not _temps(tmp_path)


def test_a_small_object_whose_bytes_differ_from_its_sha256_is_not_written(tmp_path):
    store = _store({"a.txt": b"hello"}, sha256="0" * 64)
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=1).run()  # type: ignore[arg-type]
    assert result.restored == [] and [rel for rel, _ in result.failed] == ["a.txt"]
    assert "checksum mismatch" in result.failed[0][1]
    assert not (tmp_path / "a.txt").exists() and not _temps(tmp_path)

"""`syncd restore` into directories it created itself: no lstat per file there, and still no
local file replaced without --force (the rename is RENAME_NOREPLACE). Against the in-memory store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import syncd.restore
from syncd.beneath import rename_noreplace
from syncd.config import FolderConfig
from syncd.restore import Restorer
from syncd.store import RemoteObject

from .support.memstore import MemoryStore, StoredObject

BODIES = {f"d/f{i}": bytes([i]) * 1000 for i in range(3)}


def _store() -> MemoryStore:
    store = MemoryStore()
    for rel, body in BODIES.items():
        meta = {"syncd-sha256": hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": "1600000000123456789"}
        store.objects["p/" + rel] = StoredObject(body, hashlib.md5(body).hexdigest(), meta, {})
    return store


def _restorer(target: Path, store: MemoryStore, force: bool = False) -> Restorer:
    folder = FolderConfig(name="t", source=Path("t"), path=target, bucket="memory", prefix="p/")
    return Restorer(folder, store, str(target), workers=1, force=force)  # type: ignore[arg-type]


def _planting(store: MemoryStore, target: Path, rel: str) -> None:
    """Another program writes ``rel`` while its object is being fetched."""
    fetch = store.fetch

    def planting(key: str, version: str | None,
                 start: Callable[[RemoteObject], Callable[[bytes], None]]) -> RemoteObject:
        if key == "p/" + rel:
            (target / rel).write_bytes(b"theirs")
        return fetch(key, version, start)

    store.fetch = planting  # type: ignore[method-assign]


def _counting_lstats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    lstat = syncd.restore.lstat

    def counting(name: str, dir_fd: int) -> os.stat_result | None:
        calls.append(name)
        return lstat(name, dir_fd)

    monkeypatch.setattr(syncd.restore, "lstat", counting)
    return calls


def test_files_in_a_directory_the_restore_created_are_not_looked_up_first(tmp_path, monkeypatch):
    calls = _counting_lstats(monkeypatch)
    result = _restorer(tmp_path, _store()).run()
    assert sorted(result.restored) == sorted(BODIES) and result.ok and calls == []
    assert all((tmp_path / rel).read_bytes() == body for rel, body in BODIES.items())


def test_files_in_a_directory_that_was_there_are_looked_up_first(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    calls = _counting_lstats(monkeypatch)
    result = _restorer(tmp_path, _store()).run()
    assert result.ok and sorted(calls) == sorted(rel.rpartition("/")[2] for rel in BODIES)


def test_a_file_another_program_puts_into_a_directory_the_restore_created_is_kept(tmp_path):
    store = _store()
    _planting(store, tmp_path, "d/f1")
    result = _restorer(tmp_path, store).run()
    assert [rel for rel, _ in result.kept] == ["d/f1"] and "--force" in result.kept[0][1]
    assert (tmp_path / "d/f1").read_bytes() == b"theirs"
    assert sorted(result.restored) == ["d/f0", "d/f2"] and not list(tmp_path.rglob(".syncd-restore-*"))


def test_with_force_a_file_another_program_put_there_is_replaced(tmp_path):
    store = _store()
    _planting(store, tmp_path, "d/f1")
    result = _restorer(tmp_path, store, force=True).run()
    assert result.ok and (tmp_path / "d/f1").read_bytes() == BODIES["d/f1"]


def test_without_rename_noreplace_a_file_another_program_put_there_is_still_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(syncd.restore, "rename_noreplace", lambda src, dst, dir_fd: False)
    store = _store()
    _planting(store, tmp_path, "d/f0")
    result = _restorer(tmp_path, store).run()
    assert [rel for rel, _ in result.kept] == ["d/f0"] and (tmp_path / "d/f0").read_bytes() == b"theirs"
    assert sorted(result.restored) == ["d/f1", "d/f2"]


def test_rename_noreplace_refuses_to_replace_an_existing_name(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_noreplace("a", "b", fd)
        assert (tmp_path / "b").read_bytes() == b"b"
        assert rename_noreplace("a", "c", fd) and (tmp_path / "c").read_bytes() == b"a"
    finally:
        os.close(fd)

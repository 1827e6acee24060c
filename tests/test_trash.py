"""`delete: trash`: deleted and overwritten objects are first copied into `.syncd-trash/`,
crash-safely; the reconciler purges entries older than trash_retain; `restore --at` and
`--deleted` read them back. In process on the memory store (the store behaviour itself, on
SeaweedFS, is at the end of this file)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syncd.changes import Entry, Pending
from syncd.choices import DeleteMode
from syncd.config import FolderConfig
from syncd.journal import Journal
from syncd.paths import IgnoreRules
from syncd.reconciler import RemotePass
from syncd.store import KEY, META_MTIME, TRANSIENT
from syncd.transfer import Result, Task, Transfers
from syncd.trash import deleted_items, items_at, parse_key, stamp, trash_key

from .support.daemon import Syncd, await_condition, bucket_keys, local_tree
from .support.memstore import MemoryStore, StoredObject

DAY = 86400.0


@pytest.fixture
def folder(tmp_path: Path) -> FolderConfig:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"new alpha")
    return FolderConfig(name="mem", source=tmp_path / "mem.yaml", path=root, bucket="memory", prefix="p/",
                        delete=DeleteMode.TRASH, trash_retain=7 * DAY)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.write("p/a.txt", b"old alpha", if_absent=False)
    store.write("p/gone.txt", b"gone", if_absent=False)
    return store


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "j.sqlite3", "test")
    yield journal
    journal.close()


@pytest.fixture
def transfers(folder: FolderConfig, store: MemoryStore, journal: Journal) -> Transfers:
    made = Transfers(folder, store, journal.uploads)
    made.owner = "owner-1"
    return made


def _etag(store: MemoryStore, key: str) -> str:
    return store.objects[key].etag


def _task(kind: str, journal: Journal, store: MemoryStore, paths: list[str], when: float) -> Task:
    """A task as the scheduler makes it in trash mode: trash stamps journaled first."""
    etags = {p: _etag(store, "p/" + p) for p in paths}
    chosen = journal.trash_stamps(etags.items(), stamp(when))
    task = Task(kind, [Pending(p, None, gen=1, attempts=0, first_seen=0.0) for p in paths])  # type: ignore[arg-type]
    task.trash = {p: (trash_key("p/", p, chosen[p]), etags[p]) for p in paths}
    return task


def _run(transfers: Transfers, task: Task) -> Result:
    results: list[Result] = []
    transfers.run(task, results.append)
    assert len(results) == 1
    return results[0]


def _trash(store: MemoryStore) -> dict[str, bytes]:
    return {k: o.body for k, o in store.objects.items() if k.startswith("p/.syncd-trash/")}


def test_a_trash_key_names_the_path_and_its_deletion_time_and_parses_back() -> None:
    key = trash_key("p/", "dir/x@y.txt", stamp(1_700_000_000.25))
    assert key == "p/.syncd-trash/dir/x@y.txt@20231114T221320.250000Z"
    assert parse_key("p/", key) == ("dir/x@y.txt", 1_700_000_000.25)
    assert parse_key("p/", "p/.syncd-trash/no-stamp.txt") is None


def test_a_delete_copies_the_object_into_the_trash_before_deleting_it(transfers, journal, store) -> None:
    result = _run(transfers, _task("delete", journal, store, ["gone.txt"], 1000.0))
    assert [o.kind for o in result.outcomes] == ["done"]
    assert "p/gone.txt" not in store.objects
    assert _trash(store) == {"p/.syncd-trash/gone.txt@19700101T001640.000000Z": b"gone"}
    assert store.calls["put"] == 0  # a server-side copy: no file data sent again


def test_an_overwrite_copies_the_old_object_into_the_trash_before_the_put(transfers, journal, store) -> None:
    result = _run(transfers, _task("upload", journal, store, ["a.txt"], 1000.0))
    assert [o.kind for o in result.outcomes] == ["done"]
    assert store.read("p/a.txt") == b"new alpha"
    assert list(_trash(store).values()) == [b"old alpha"]


def test_an_object_whose_trash_copy_fails_is_neither_deleted_nor_overwritten(transfers, journal, store) -> None:
    store.fail("copy", TRANSIENT, times=2)
    [outcome] = _run(transfers, _task("delete", journal, store, ["gone.txt"], 1000.0)).outcomes
    assert outcome.kind == "retry" and store.read("p/gone.txt") == b"gone"
    [outcome] = _run(transfers, _task("upload", journal, store, ["a.txt"], 1000.0)).outcomes
    assert outcome.kind == "retry" and store.read("p/a.txt") == b"old alpha"
    assert _trash(store) == {}


def test_a_path_too_long_for_a_trash_key_is_parked_with_the_fix(transfers, journal, store, folder) -> None:
    long = "d/" * 300 + "f" * 400
    store.write("p/" + long, b"x", if_absent=False)
    [outcome] = _run(transfers, _task("delete", journal, store, [long], 1000.0)).outcomes
    assert outcome.kind == "park" and "trash" in (outcome.error or "") and "delete: mirror" in (outcome.error or "")
    assert store.read("p/" + long) == b"x"


def test_a_retry_after_a_crash_between_copy_and_delete_makes_no_second_trash_entry(
        transfers, journal, store) -> None:
    store.fail("delete", KEY, key="p/gone.txt")  # the copy is made, the delete does not happen
    [outcome] = _run(transfers, _task("delete", journal, store, ["gone.txt"], 1000.0)).outcomes
    assert outcome.kind == "retry" and store.read("p/gone.txt") == b"gone"
    # After kill -9 the scheduler journals the batch again, later: the stamp of the first try is reused.
    [outcome] = _run(transfers, _task("delete", journal, store, ["gone.txt"], 5000.0)).outcomes
    assert outcome.kind == "done"
    assert _trash(store) == {"p/.syncd-trash/gone.txt@19700101T001640.000000Z": b"gone"}


def test_an_overwrite_replayed_after_its_put_keeps_the_old_content_in_its_trash_entry(
        transfers, journal, store) -> None:
    old = _etag(store, "p/a.txt")
    first = _task("upload", journal, store, ["a.txt"], 1000.0)
    _run(transfers, first)  # copied and PUT, then kill -9 before the outcome was recorded
    replay = Task("upload", first.items)  # type: ignore[arg-type]
    replay.trash = {"a.txt": (first.trash["a.txt"][0], old)}  # the journal still names the old ETag
    assert [o.kind for o in _run(transfers, replay).outcomes] == ["done"]
    trash = _trash(store)
    assert trash[first.trash["a.txt"][0]] == b"old alpha"
    assert sorted(trash.values()) == [b"new alpha", b"old alpha"]  # what the key held: kept as well


def test_a_finished_change_ends_its_trash_stamp(journal) -> None:
    from syncd.changes import Outcome, OutcomeKind

    assert journal.trash_stamps([("x", "e1")], "S1") == {"x": "S1"}
    assert journal.trash_stamps([("x", "e1")], "S2") == {"x": "S1"}  # a retry: the same entry
    assert journal.trash_stamps([("x", "e2")], "S3") == {"x": "S3"}  # another object: a new entry
    journal.apply([Outcome(OutcomeKind.DONE, "x", 1, forget=True)])
    assert journal.trash_stamps([("x", "e2")], "S4") == {"x": "S4"}


# ---------------------------------------------------------------------- purge


class _Sink:
    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        pass

    def submit_forget(self, path: str, mtime_ns: int, etag: str | None) -> None:
        pass

    def submit_adopt(self, entry: Entry) -> None:
        pass


def test_the_reconciler_purges_trash_entries_older_than_trash_retain_in_batches(
        folder, journal, tmp_path) -> None:
    store = MemoryStore(page_size=300)
    now = 100 * DAY
    for i in range(2500):
        store.write(trash_key("p/", f"old{i}", stamp(now - 8 * DAY)), b"", if_absent=False)
    store.write(trash_key("p/", "recent", stamp(now - 6 * DAY)), b"", if_absent=False)
    store.write("p/.syncd-trash/not-an-entry", b"", if_absent=False)
    remote = RemotePass(folder, journal, store, _Sink(), tmp_path / "scratch", IgnoreRules(()), frozenset(),
                        clock=lambda: now)
    report = remote.run(threading.Event(), rebuild=False)
    assert report.trash_purged == 2500 and store.calls["delete"] == 3  # 1000 keys per request
    assert set(store.objects) == {trash_key("p/", "recent", stamp(now - 6 * DAY)), "p/.syncd-trash/not-an-entry"}
    assert report.objects == 0 and report.foreign == 0  # trash keys are not mirror content


# ---------------------------------------------------------------------- the tree at a time


def _at(store: MemoryStore, key: str, body: bytes, modified: float, mtime: float | None = None) -> None:
    meta = {} if mtime is None else {META_MTIME: str(int(mtime * 1e9))}
    store.objects[key] = StoredObject(body, hashlib.md5(body).hexdigest(), meta, {}, modified)


def _tree_at(store: MemoryStore, at: float) -> dict[str, bytes]:
    now = (o for page in store.list("p/") for o in page if not o.key.startswith("p/.syncd-trash/"))
    return {rel: store.objects[key].body for key, rel, _s, _e, _v in items_at(store, "p/", at, now)}


def test_the_tree_at_a_time_is_rebuilt_from_the_current_objects_and_the_trash() -> None:
    store = MemoryStore()
    _at(store, "p/same.txt", b"unchanged", modified=10)
    _at(store, "p/edited.txt", b"v3", modified=300)                                   # v1 -> v2 at 100 -> v3 at 200
    _at(store, trash_key("p/", "edited.txt", stamp(100)), b"v1", modified=100, mtime=5)
    _at(store, trash_key("p/", "edited.txt", stamp(200)), b"v2", modified=200, mtime=99)
    _at(store, trash_key("p/", "deleted.txt", stamp(150)), b"was", modified=150, mtime=5)
    _at(store, trash_key("p/", "brief.txt", stamp(180)), b"brief", modified=180, mtime=160)  # made after 120
    _at(store, "p/new.txt", b"new", modified=170)
    assert _tree_at(store, 120) == {"same.txt": b"unchanged", "edited.txt": b"v2", "deleted.txt": b"was"}
    assert _tree_at(store, 50) == {"same.txt": b"unchanged", "edited.txt": b"v1", "deleted.txt": b"was"}
    assert _tree_at(store, 400) == {"same.txt": b"unchanged", "edited.txt": b"v3", "new.txt": b"new"}
    assert _tree_at(store, 4) == {}  # before any of them existed


def test_deleted_files_come_back_as_they_were_last_deleted() -> None:
    store = MemoryStore()
    _at(store, "p/kept.txt", b"now", modified=300)
    _at(store, trash_key("p/", "kept.txt", stamp(100)), b"before", modified=100)
    _at(store, trash_key("p/", "gone.txt", stamp(100)), b"first", modified=100)
    _at(store, trash_key("p/", "gone.txt", stamp(200)), b"second", modified=200)
    now = (o for page in store.list("p/") for o in page if not o.key.startswith("p/.syncd-trash/"))
    assert {rel: store.objects[k].body for k, rel, *_ in deleted_items(store, "p/", now)} == {"gone.txt": b"second"}


# ---------------------------------------------------------------------- against SeaweedFS


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _restore(syncd: Syncd, target: Path, *extra: str) -> dict[str, Any]:
    r = syncd.cli("restore", "main", "--to", str(target), "--json", *extra, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def test_deleted_and_overwritten_files_come_back_from_the_trash_and_are_purged_after_trash_retain(
        syncd, tree, s3, bucket, tmp_path) -> None:
    for i in range(40):
        _write(tree / f"d{i % 4}" / f"f{i}.txt", f"first {i}".encode())
    syncd.add_folder("main", tree, bucket, prefix="m/", delete="trash", trash_retain="100ms")
    syncd.start()
    syncd.wait_idle()
    then = local_tree(tree)
    then_mtimes = _mtimes(tree)
    t1 = time.time()
    time.sleep(1.1)  # S3 timestamps have one-second resolution: later writes must be after T1
    files = sorted(tree.rglob("f*.txt"))
    for p in files[:8]:
        p.write_bytes(p.read_bytes() + b" modified")
    for p in files[8:16]:
        p.unlink()
    _write(tree / "new.txt", b"new")
    syncd.wait_idle()
    keys = bucket_keys(s3, bucket, "m/", bookkeeping=True)
    assert len([k for k in keys if k.startswith("m/.syncd-trash/")]) == 16
    assert syncd.folder_status("main")["objects"] == 33  # the trash is not mirror content
    assert syncd.cli("verify", "main").returncode == 0

    doc = _restore(syncd, tmp_path / "then", "--at", _iso(t1))
    assert local_tree(tmp_path / "then") == then and doc["restored"] == 40
    assert _mtimes(tmp_path / "then") == then_mtimes
    doc = _restore(syncd, tmp_path / "deleted", "--deleted")
    assert local_tree(tmp_path / "deleted") == {p.relative_to(tree).as_posix(): then[p.relative_to(tree).as_posix()]
                                                for p in files[8:16]}

    # Only a reconcile purges (none has run since the changes): the entries are older than 100ms now.
    r = syncd.cli("reconcile", "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert syncd.folder_status("main")["last_reconcile"]["trash_purged"] == 16
    assert not [k for k in bucket_keys(s3, bucket, "m/", bookkeeping=True) if k.startswith("m/.syncd-trash/")]


def test_a_kill_9_between_the_trash_copies_and_the_delete_loses_nothing_and_makes_no_second_entry(
        proxied_syncd, s3_proxy, tree, s3, bucket) -> None:
    for i in range(10):
        _write(tree / f"f{i}.txt", f"content {i}".encode())
    proxied_syncd.add_folder("main", tree, bucket, prefix="m/", delete="trash")
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.set_faults(1.0, ["503"], ops=["DeleteObjects"])  # the copies go through, the delete does not
    for i in range(5):
        (tree / f"f{i}.txt").unlink()

    def trash() -> list[str]:
        return [k for k in bucket_keys(s3, bucket, "m/", bookkeeping=True) if k.startswith("m/.syncd-trash/")]

    await_condition(lambda: len(trash()) == 5 and s3_proxy.injected(), 30, "the trash copies, a failed delete")
    proxied_syncd.kill9()
    s3_proxy.clear_faults()
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    assert len(trash()) == 5  # the retry copied to the journaled keys again, not to new ones
    for key in trash():
        rel = key.removeprefix("m/.syncd-trash/").rpartition("@")[0]
        i = int(rel[1:-4])
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == f"content {i}".encode()
    assert sorted(k.removeprefix("m/") for k in bucket_keys(s3, bucket, "m/")) == [f"f{i}.txt" for i in range(5, 10)]

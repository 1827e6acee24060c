"""The scheduler's loop turn, driven in-process with its clock as a parameter.

A memory store stands in for S3 here: these tests are about when the scheduler acts, not
about store behaviour (which the integration tests check against SeaweedFS).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from syncd import beneath
from syncd.bandwidth import ByteBudget, Payload
from syncd.config import FolderConfig
from syncd.health import FolderState
from syncd.journal import Journal
from syncd.scheduler import Scheduler
from syncd.store import PutResult, RemoteObject, StoreError
from syncd.transfer import Transfers
from syncd.uploads import UploadLog

from tests.support.daemon import await_condition


class MemoryStore:
    """Just enough of an ObjectStore for small files and the owner marker."""

    bucket = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def check(self) -> None:
        pass

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None], headers: Mapping[str, str] = {}) -> None:
        self.objects[key] = bytes(body.data)
        done(PutResult(hashlib.md5(body.data).hexdigest(), len(body.data)))

    def read(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def write(self, key: str, body: bytes, *, if_absent: bool) -> bool:
        if if_absent and key in self.objects:
            return False
        self.objects[key] = body
        return True

    def versioning(self) -> str:
        return ""  # never versioned (the probe asks once, for `syncd status`)

    def head(self, key: str) -> RemoteObject | None:
        data = self.objects.get(key)
        return None if data is None else RemoteObject(key, len(data), hashlib.md5(data).hexdigest(), {})

    def close(self) -> None:
        pass


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[Scheduler, MemoryStore, Path]]:
    root = tmp_path / "tree"
    root.mkdir()
    folder = FolderConfig(name="turns", source=tmp_path / "turns.yaml", path=root, bucket="memory", settle=0.0)
    journal = Journal(tmp_path / "turns.sqlite3", "memory|turns|")
    store = MemoryStore()

    def make(f: FolderConfig, uploads: UploadLog, progress: Callable[[int], None]) -> Transfers:
        return Transfers(f, store, uploads, progress)  # type: ignore[arg-type]

    s = Scheduler(folder, journal, ByteBudget(1 << 30), make)
    yield s, store, root
    s.stop(time.monotonic() + 5)
    journal.close()
    beneath.release(folder)


def _turn_until(s: Scheduler, now: float, done: Callable[[], Any], what: str) -> None:
    def turned() -> Any:
        s._turn(now)
        return done()
    await_condition(turned, 10, what)


def _connected(s: Scheduler) -> None:
    s.health.connect()
    _turn_until(s, time.time(), lambda: s.health.state(scanning=False) is FolderState.WATCHING, "the first contact")


def test_a_change_is_not_sent_before_its_due_time(scheduler):
    s, store, root = scheduler
    _connected(s)
    (root / "a.txt").write_bytes(b"hello")
    now = time.time()
    s.journal.record([("a.txt", None, now + 60)], max_delay=600)
    s._turn(now + 59)
    assert s.in_flight() == 0 and "a.txt" not in store.objects


def test_a_change_is_sent_once_the_turns_clock_reaches_its_due_time(scheduler):
    s, store, root = scheduler
    _connected(s)
    (root / "a.txt").write_bytes(b"hello")
    now = time.time()
    s.journal.record([("a.txt", None, now + 60)], max_delay=600)
    _turn_until(s, now + 61, lambda: s.journal.open_and_failed() == (0, 0) and s.in_flight() == 0,
                "the change to be sent and recorded")
    assert store.objects["a.txt"] == b"hello"
    assert s.journal.entry("a.txt") is not None


def test_nothing_is_sent_before_the_first_contact(scheduler):
    s, store, root = scheduler
    s.health.connect(hold=True)
    (root / "a.txt").write_bytes(b"hello")
    s.journal.record([("a.txt", None, 0.0)], max_delay=600)
    for _ in range(3):
        s._turn(time.time() + 60)
    assert s.in_flight() == 0 and "a.txt" not in store.objects
    assert s.health.state(scanning=False) is FolderState.STARTING

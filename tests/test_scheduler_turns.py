"""The scheduler's loop turn, driven in-process with its clock as a parameter.

The memory store (tests/support/memstore.py) stands in for S3 here: these tests are about when the scheduler acts, not
about store behaviour (which the integration tests check against SeaweedFS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from syncd import beneath
from syncd.bandwidth import ByteBudget
from syncd.config import FolderConfig
from syncd.health import FolderState
from syncd.journal import Journal
from syncd.scheduler import Scheduler
from syncd.store import FOLDER, TRANSIENT
from syncd.transfer import Transfers
from syncd.uploads import UploadLog

from tests.support.daemon import await_condition
from tests.support.memstore import MemoryStore


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[Scheduler, MemoryStore, Path]]:
    root = tmp_path / "tree"
    root.mkdir()
    folder = FolderConfig(name="turns", source=tmp_path / "turns.yaml", path=root, bucket="memory", settle=0.0)
    journal = Journal(tmp_path / "turns.sqlite3", "memory|turns|")
    store = MemoryStore(bucket="memory")

    def make(f: FolderConfig, uploads: UploadLog, progress: Callable[[int], None]) -> Transfers:
        return Transfers(f, store, uploads, progress)

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
    assert store.objects["a.txt"].body == b"hello"
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


def _probes_with_store_failing(tmp_path: Path, scope: str) -> int:
    """How many times the scheduler built its transfers (a store client) over three failed probes."""
    root = tmp_path / "tree"
    root.mkdir()
    folder = FolderConfig(name="down", source=tmp_path / "down.yaml", path=root, bucket="memory")
    journal = Journal(tmp_path / "down.sqlite3", "memory|down|")
    store = MemoryStore(bucket="memory")
    store.fail("check", scope, times=100)
    made: list[Transfers] = []

    def make(f: FolderConfig, uploads: UploadLog, progress: Callable[[int], None]) -> Transfers:
        made.append(Transfers(f, store, uploads, progress))
        return made[-1]

    s = Scheduler(folder, journal, ByteBudget(1 << 30), make)
    try:
        s.health.connect()
        for probe in range(1, 4):
            s.health.last_error = None
            s._turn(time.time() + 1000)  # the next probe is due: it starts
            # Turns at the real time: the failure is applied, the probe after it is not due yet.
            _turn_until(s, time.time(), lambda: s.health.last_error is not None, f"failed probe {probe}")
        return len(made)
    finally:
        s.stop(time.monotonic() + 5)
        journal.close()
        beneath.release(folder)


def test_a_stalled_folders_probes_reuse_one_store_client(tmp_path):
    # Building a client (botocore loads its models) was the largest cost of an unreachable endpoint.
    assert _probes_with_store_failing(tmp_path, TRANSIENT) == 1


def test_a_probe_after_a_credentials_error_builds_a_new_client(tmp_path):
    # The user may have fixed the credentials or the role: they are read afresh.
    assert _probes_with_store_failing(tmp_path, FOLDER) == 3

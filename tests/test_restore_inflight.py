"""A restore's small files with many GETs in flight from few threads (syncd.fetches): the
limit on what is in flight, the retry of a transient failure, and the CRT thread keeping its
Python thread state between callbacks (python/cpython gh-146219)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd import s3crt
from syncd.config import FolderConfig
from syncd.fetches import Fetches
from syncd.restore import Restorer
from syncd.s3store import S3Store
from syncd.store import KEY, TRANSIENT, StoreError, Whole, fetch_whole_by_fetch

from .support.memstore import MemoryStore, StoredObject

MTIME = 1_600_000_000_123_456_789
TIMEOUT = 30.0


class _Answering(MemoryStore):
    """The in-memory store, answering fetch_whole later, on a thread of its own (as awscrt
    does): ``fail_first`` keys get a transient error the first time."""

    def __init__(self, fail_first: set[str] = frozenset()):  # type: ignore[assignment]
        super().__init__()
        self.background_fetch = True
        self.fail_first = set(fail_first)
        self.fetched: list[str] = []

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        self.fetched.append(key)
        fail = key in self.fail_first
        self.fail_first.discard(key)

        def answer() -> None:
            if fail:
                done(StoreError("503 Slow Down", scope=TRANSIENT, key=key))
            else:
                fetch_whole_by_fetch(self, key, version, done)
        threading.Thread(target=answer).start()


def _store(store: MemoryStore, bodies: dict[str, bytes]) -> MemoryStore:
    for rel, body in bodies.items():
        meta = {"syncd-sha256": hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": str(MTIME)}
        store.objects["p/" + rel] = StoredObject(body, hashlib.md5(body).hexdigest(), meta, {})
    return store


def _folder(target: Path) -> FolderConfig:
    return FolderConfig(name="t", source=Path("t"), path=target, bucket="memory", prefix="p/")


def test_no_more_gets_are_in_flight_than_the_limit() -> None:
    """A GET's slot is given back only once its file is finished: what is held in memory is
    bounded by the limit, however slow the finishing."""
    pending: list[Callable[[Whole | StoreError], None]] = []
    cond = threading.Condition()
    in_flight = [0, 0]  # (now, most ever)

    class Held:
        def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
            with cond:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                pending.append(done)
                cond.notify_all()

    finished: list[str] = []

    def finish(job: str, answer: Whole | StoreError) -> None:
        with cond:
            in_flight[0] -= 1
            finished.append(job)

    fetches: Fetches[str] = Fetches(Held(), limit=4, threads=2, finish=finish)  # type: ignore[arg-type]
    sender = threading.Thread(target=lambda: [fetches.start(f"k{i}", None, f"k{i}") for i in range(20)])
    sender.start()
    for answered in range(20):  # one at a time, as finishing allows the next GET to be sent
        with cond:
            assert cond.wait_for(lambda n=answered: len(pending) > n, TIMEOUT)
            done = pending[answered]
        done(StoreError("gone", scope=KEY, key="k"))
    sender.join(TIMEOUT)
    fetches.close()
    assert sorted(finished) == sorted(f"k{i}" for i in range(20))
    assert in_flight[1] == 4


def test_every_small_file_comes_back_through_the_in_flight_path(tmp_path: Path) -> None:
    bodies = {f"d{i % 3}/f{i}": bytes([i]) * (500 + i) for i in range(30)}
    store = _store(_Answering(), bodies)
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=4).run()  # type: ignore[arg-type]
    assert result.ok and sorted(result.restored) == sorted(bodies)
    for rel, body in bodies.items():
        assert (tmp_path / rel).read_bytes() == body
        assert (tmp_path / rel).stat().st_mtime_ns == MTIME
    assert sorted(store.fetched) == sorted("p/" + rel for rel in bodies)
    assert not list(tmp_path.rglob(".syncd-restore-*"))


class _HeldAnswers(MemoryStore):
    """The in-memory store answering fetch_whole only when the test lets it, one at a time,
    and counting the GETs in flight (sent, not yet answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.background_fetch = True
        self.cond = threading.Condition()
        self.waiting: list[tuple[str, str | None, Callable[[Whole | StoreError], None]]] = []
        self.most = 0

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        with self.cond:
            self.waiting.append((key, version, done))
            self.most = max(self.most, len(self.waiting))
            self.cond.notify_all()

    def answer_when(self, in_flight: int, total: int, timeout: float) -> bool:
        """Answer every GET, one at a time, each only once ``in_flight`` are waiting (or every
        GET of ``total`` was sent); False if that count was not reached within ``timeout``."""
        answered = 0
        reached = True
        while answered < total:
            wanted = min(in_flight, total - answered)
            with self.cond:
                if not self.cond.wait_for(lambda n=wanted: len(self.waiting) >= n, timeout if reached else 0.05):
                    reached = False  # the rest is answered as it comes: the restore ends
                if not self.waiting:
                    continue
                key, version, done = self.waiting.pop(0)
            fetch_whole_by_fetch(self, key, version, done)
            answered += 1
        return reached


def test_a_restore_keeps_two_small_gets_in_flight_per_worker(tmp_path: Path) -> None:
    """A slot is held until its file is written: with only ``workers`` of them, the server
    waited while answers were being written (restore.SMALL_IN_FLIGHT_PER_WORKER)."""
    bodies = {f"d{i % 2}/f{i}": bytes([i]) * (100 + i) for i in range(24)}
    store = _store(_HeldAnswers(), bodies)
    restorer = Restorer(_folder(tmp_path), store, str(tmp_path), workers=3)  # type: ignore[arg-type]
    reached: list[bool] = []
    answering = threading.Thread(target=lambda: reached.append(store.answer_when(6, len(bodies), TIMEOUT)))
    answering.start()
    result = restorer.run()
    answering.join()
    assert result.ok and sorted(result.restored) == sorted(bodies)
    assert reached == [True] and store.most == 6


def test_a_transient_failure_in_flight_is_retried_and_the_file_restored(tmp_path: Path) -> None:
    bodies = {"a/one": b"first", "a/two": b"second", "b/three": b"third"}
    store = _store(_Answering(fail_first={"p/a/two"}), bodies)
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=2).run()  # type: ignore[arg-type]
    assert result.ok and sorted(result.restored) == sorted(bodies)
    assert (tmp_path / "a/two").read_bytes() == b"second"
    assert store.fetched.count("p/a/two") == 2


def test_a_file_that_is_gone_from_the_bucket_fails_alone(tmp_path: Path) -> None:
    bodies = {"a/one": b"first", "a/two": b"second"}
    store = _store(_Answering(), bodies)
    original = store.fetch_whole

    def vanish(key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        if key == "p/a/two":
            del store.objects[key]  # deleted between the listing and the GET
        original(key, version, done)

    store.fetch_whole = vanish  # type: ignore[method-assign]
    result = Restorer(_folder(tmp_path), store, str(tmp_path), workers=2).run()  # type: ignore[arg-type]
    assert result.restored == ["a/one"] and [rel for rel, _ in result.failed] == ["a/two"]
    assert not (tmp_path / "a/two").exists() and not list(tmp_path.rglob(".syncd-restore-*"))


def test_the_crt_thread_keeps_its_python_thread_state_between_requests(
        s3_server: Any, s3: Any, bucket: str, tmp_path: Path, monkeypatch: Any) -> None:
    """Without the pin, each callback's PyGILState_Release destroyed the thread state the
    Ensure had made, and the thread-local data with it: what one request's callback stored was
    gone in the next one's."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    store = S3Store(FolderConfig(name="t", source=tmp_path / "t.yaml", path=tmp_path, bucket=bucket,
                                 endpoint_url=s3_server.endpoint, region=s3_server.region))
    assert store.background_fetch
    local = threading.local()
    seen: list[tuple[int, bool]] = []
    answered = threading.Semaphore(0)

    def done(_answer: Whole | StoreError) -> None:
        seen.append((threading.get_ident(), getattr(local, "mark", False)))
        local.mark = True
        answered.release()

    for _ in range(3):
        store.fetch_whole("k", None, done)
        assert answered.acquire(timeout=TIMEOUT)
    assert len({ident for ident, _ in seen}) == 1  # one event-loop thread
    assert [mark for _, mark in seen] == [False, True, True]
    assert getattr(s3crt._pinned, "held", False) is False  # this (Python) thread was never pinned

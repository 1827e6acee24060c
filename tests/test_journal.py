"""The journal's durability rules, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from syncd.changes import Entry, Outcome, OutcomeKind
from syncd.journal import Journal
from syncd.schema import CLAIMED

from tests.support.daemon import await_condition


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.sqlite3", "test|bucket|")
    yield j
    j.close()


def _entry(path: str, size: int = 1) -> Entry:
    return Entry(path, size, 123, 7, "ab", "etag")


def test_many_events_for_one_path_are_one_pending_change(journal):
    now = time.time()
    journal.record([("a.txt", None, now)] * 100, max_delay=30)
    assert journal.counts()["pending"] == 1


def test_events_push_due_out_but_never_past_max_delay(journal):
    now = time.time()
    journal.record([("a", None, now + 0.5)], max_delay=2)
    journal.record([("a", None, now + 100)], max_delay=2)
    assert journal.next_due() == pytest.approx(now + 2, abs=0.5)


def test_a_change_during_its_transfer_keeps_the_row_for_another_pass(journal):
    journal.record([("a", None, 0)], max_delay=30)
    [claimed] = journal.claim_due(time.time(), 10)
    journal.record([("a", None, 0)], max_delay=30)         # written again meanwhile
    journal.apply([Outcome(OutcomeKind.DONE, "a", claimed.gen, entry=_entry("a"))])
    assert journal.entry("a") == _entry("a")               # the finished upload is recorded
    assert journal.counts()["pending"] == 1                 # and the newer change is still due


def test_of_uploads_recorded_together_only_the_one_changed_meanwhile_stays_due(journal):
    journal.record([(p, None, 0) for p in ("a", "b", "c")], max_delay=30)
    claimed = journal.claim_due(time.time(), 10)
    journal.record([("b", None, 0)], max_delay=30)         # written again during its upload
    journal.apply([Outcome(OutcomeKind.DONE, p.path, p.gen, entry=_entry(p.path)) for p in claimed])
    assert all(journal.entry(p) == _entry(p) for p in ("a", "b", "c"))
    assert [p.path for p in journal.claim_due(time.time(), 10)] == ["b"]  # ready again, alone


def test_finished_change_removes_the_row_and_records_the_manifest_atomically(journal):
    journal.record([("a", None, 0)], max_delay=30)
    [claimed] = journal.claim_due(time.time(), 10)
    journal.apply([Outcome(OutcomeKind.DONE, "a", claimed.gen, entry=_entry("a", 5))])
    assert journal.counts()["pending"] == 0
    assert journal.entry("a").size == 5


def test_claims_are_released_on_reopen_after_a_crash(tmp_path):
    j = Journal(tmp_path / "j.sqlite3", "id")
    j.record([("a", None, 0), ("b", None, 0)], max_delay=30)
    assert len(j.claim_due(time.time(), 10)) == 2
    j._db.close()  # simulated kill -9: no orderly close
    j2 = Journal(tmp_path / "j.sqlite3", "id")
    assert len(j2.claim_due(time.time(), 10)) == 2
    j2.close()


def test_parked_changes_are_failed_until_retried_or_touched_again(journal):
    journal.record([("a", None, 0), ("b", None, 0)], max_delay=30)
    claimed = {p.path: p for p in journal.claim_due(time.time(), 10)}
    journal.apply([Outcome(OutcomeKind.PARK, "a", claimed["a"].gen, error="nope"),
                   Outcome(OutcomeKind.PARK, "b", claimed["b"].gen, error="nope")])
    assert journal.counts()["failed"] == 2 and journal.failures() == [("a", "nope"), ("b", "nope")]
    journal.record([("a", None, 0)], max_delay=30)        # a new event gives it a fresh chance
    assert journal.counts()["failed"] == 1
    assert journal.retry_failed() == 1
    assert journal.counts() == {"pending": 2, "settling": 0, "failed": 0, "manifest": 0}


def test_directory_expansion_covers_exactly_the_subtree(journal):
    rows = [Outcome(OutcomeKind.DONE, p, 0, entry=_entry(p)) for p in ["d/a", "d/sub/b", "d-sibling", "d.txt", "dd/x"]]
    journal.apply(rows)
    journal.record_dir("d", 0, 30)
    claimed = sorted(p.path for p in journal.claim_due(time.time(), 100))
    assert claimed == ["d/a", "d/sub/b"]


def test_changed_target_clears_the_manifest(tmp_path):
    j = Journal(tmp_path / "j.sqlite3", "endpoint|bucket-a|")
    j.apply([Outcome(OutcomeKind.DONE, "x", 0, entry=_entry("x"))])
    j.close()
    j = Journal(tmp_path / "j.sqlite3", "endpoint|bucket-b|")
    assert j.entry("x") is None
    j.close()


def test_corrupt_database_is_moved_aside_not_deleted(tmp_path):
    db = tmp_path / "j.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    j = Journal(db, "id")
    aside = list(tmp_path.glob("j.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    j.record([("a", None, 0)], max_delay=30)
    assert j.counts()["pending"] == 1
    j.close()


def test_claimed_rows_stay_claimed_when_touched_again(journal):
    journal.record([("a", None, 0)], max_delay=30)
    journal.claim_due(time.time(), 10)
    journal.record([("a", None, 0)], max_delay=30)
    state = sqlite3.connect(journal.path).execute("SELECT state FROM pending WHERE path='a'").fetchone()[0]
    assert state == CLAIMED
    assert journal.claim_due(time.time(), 10) == []  # never handed out twice


def test_counts_are_not_recomputed_while_nothing_is_written(journal):
    # A million changes behind an unreachable endpoint: status and STATUS= must not scan them
    # every few seconds while nothing changes.
    journal.record([(f"f{i}", None, 0.0) for i in range(50)], max_delay=30)
    assert journal.counts()["pending"] == 50
    statements: list[str] = []
    assert journal._reader is not None
    journal._reader.set_trace_callback(statements.append)
    for _ in range(5):
        assert journal.open_and_failed() == (50, 0)
        assert journal.manifest_count() == 0
    assert statements == []


def test_counts_see_every_write_at_once(journal):
    assert journal.open_and_failed() == (0, 0)
    journal.record([("a.txt", None, 0.0)], max_delay=30)
    assert journal.open_and_failed() == (1, 0)
    (p,) = journal.claim_due(time.time(), 10)
    journal.apply([Outcome(OutcomeKind.DONE, p.path, p.gen, entry=_entry("a.txt"))])
    assert journal.open_and_failed() == (0, 0)
    assert journal.manifest_count() == 1


def test_an_approximate_count_lags_only_by_a_multiple_of_its_own_cost(journal):
    journal.record([("a.txt", None, 0.0)], max_delay=30)
    assert journal.open_and_failed(approximate=True) == (1, 0)
    journal.record([("b.txt", None, 0.0)], max_delay=30)
    assert journal.open_and_failed() == (2, 0)
    # Counting two rows takes well under a millisecond: the approximate figure catches up at once.
    await_condition(lambda: journal.open_and_failed(approximate=True) == (2, 0), 1.0,
                    "the approximate count to see the second change", interval=0.005)


def _statements_at_open(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> tuple[Journal, list[str]]:
    statements: list[str] = []
    opened = Journal._open

    def traced(path: Path) -> sqlite3.Connection:
        db = opened(path)
        db.set_trace_callback(statements.append)
        return db
    monkeypatch.setattr(Journal, "_open", staticmethod(traced))
    return Journal(db_path, "test|bucket|"), statements


def test_a_journal_closed_cleanly_is_not_integrity_checked_at_the_next_open(tmp_path, monkeypatch):
    # quick_check reads every page: seconds for a million-file manifest, at every start.
    Journal(tmp_path / "j.sqlite3", "test|bucket|").close()
    journal, statements = _statements_at_open(monkeypatch, tmp_path / "j.sqlite3")
    journal.close()
    assert not any("quick_check" in s for s in statements)


def test_a_journal_not_closed_is_integrity_checked_at_the_next_open(tmp_path, monkeypatch):
    first = Journal(tmp_path / "j.sqlite3", "test|bucket|")
    first.record([("a.txt", None, 0.0)], max_delay=30)
    first._db.close()  # as kill -9 leaves it: close() never ran
    journal, statements = _statements_at_open(monkeypatch, tmp_path / "j.sqlite3")
    journal.close()
    assert any("quick_check" in s for s in statements)


def test_a_journal_truncated_after_a_clean_close_is_moved_aside(tmp_path):
    db_path = tmp_path / "j.sqlite3"
    first = Journal(db_path, "test|bucket|")
    first.record([(f"dir/file-{i:05d}.txt", None, 0.0) for i in range(5000)], max_delay=30)
    first.close()
    with db_path.open("r+b") as f:
        f.truncate(db_path.stat().st_size // 2)
    journal = Journal(db_path, "test|bucket|")
    assert journal.fresh_reason == "corrupt"
    assert journal.counts()["pending"] == 0
    journal.close()


def test_a_journal_from_before_quiet_periods_opens_with_its_pending_rows_kept(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""
        CREATE TABLE pending(path TEXT PRIMARY KEY, move_from TEXT, first_seen REAL NOT NULL, due REAL NOT NULL,
                             gen INTEGER NOT NULL DEFAULT 1, state INTEGER NOT NULL DEFAULT 0,
                             attempts INTEGER NOT NULL DEFAULT 0, error TEXT) WITHOUT ROWID;
        INSERT INTO pending(path, first_seen, due) VALUES ('kept.txt', 0, 0);
    """)
    db.close()
    j = Journal(tmp_path / "old.db", "test")
    j.record([("new.txt", None, 0, 0.02)], max_delay=30)
    assert {(p.path, p.quiet) for p in j.claim_due(time.time(), 10)} == {("kept.txt", None), ("new.txt", 0.02)}


def test_a_rebuild_that_did_not_finish_is_done_again_at_the_next_open(tmp_path):
    # Started without a journal, stopped before the bucket could be listed (endpoint down):
    # the next start must still adopt the bucket's objects, not upload everything again.
    db_path = tmp_path / "j.sqlite3"
    first = Journal(db_path, "test|bucket|")
    assert first.fresh
    first.close()
    second = Journal(db_path, "test|bucket|")
    assert second.fresh and second.fresh_reason == "rebuild unfinished"
    second.rebuilt()
    second.close()
    third = Journal(db_path, "test|bucket|")
    assert not third.fresh
    third.close()

"""The fast path for finished writes: a file closed after writing (or renamed into place) that
is not hot is uploaded after `settle_closed`, not after the full `settle`.

The integration tests set `settle` far above their bounds, so only the fast path can meet
them; the bounds are generous (this is not the benchmark). The hot rule itself is pinned
in-process on the inbox, where the clock is not the machine's load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from syncd.config import FolderConfig
from syncd.inbox import Inbox
from syncd.journal import Journal

from .support.daemon import await_condition

SLOW_SETTLE = "10s"   # what a change that is not a finished write waits
WELL_BEFORE = 3.0     # seconds: the generous bound for a finished write to be visible


def _body(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _await_body(s3: Any, bucket: str, key: str, body: bytes, timeout: float) -> float:
    """Seconds until ``key`` holds ``body``; fails after ``timeout``."""
    t0 = time.monotonic()
    await_condition(lambda: _body(s3, bucket, key) == body, timeout, f"{key} to hold the written bytes", 0.02)
    return time.monotonic() - t0


def test_a_file_closed_after_writing_is_uploaded_well_before_settle(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket, settle=SLOW_SETTLE)
    syncd.start()
    syncd.wait_idle()  # ready and idle: the bound measures the fast path, not the start
    (tree / "report.txt").write_bytes(b"finished\n")
    _await_body(s3, bucket, "report.txt", b"finished\n", WELL_BEFORE)


def test_an_atomic_save_is_one_upload_and_its_temp_file_never_reaches_the_bucket(proxied_syncd, s3_proxy, tree,
                                                                                 s3, bucket):
    proxied_syncd.add_folder("main", tree, bucket, settle=SLOW_SETTLE)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.reset_counts()
    (tree / "doc.txt.tmp").write_bytes(b"saved")      # an editor's save: the temp file, closed...
    os.replace(tree / "doc.txt.tmp", tree / "doc.txt")  # ...then renamed over the target
    _await_body(s3, bucket, "doc.txt", b"saved", WELL_BEFORE)
    assert s3_proxy.counts().get("PutObject", 0) == 1
    assert not [r.path for r in s3_proxy.requests() if "doc.txt.tmp" in r.path]


def test_a_writer_pausing_with_the_file_open_is_not_published_before_it_closes(proxied_syncd, s3_proxy, tree, s3,
                                                                               bucket):
    proxied_syncd.add_folder("main", tree, bucket, settle=SLOW_SETTLE)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.reset_counts()
    with (tree / "export.csv").open("wb") as f:
        f.write(b"header\n")
        f.flush()
        time.sleep(0.5)  # the scenario: a pause far longer than settle_closed, the file still open
        f.write(b"row 1\n")
    _await_body(s3, bucket, "export.csv", b"header\nrow 1\n", WELL_BEFORE)
    assert s3_proxy.counts().get("PutObject", 0) == 1  # never the first half alone


def test_an_mtime_set_just_after_the_close_reaches_the_objects_metadata(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket, settle=SLOW_SETTLE)
    syncd.start()
    syncd.wait_idle()  # ready and idle: the bound measures the fast path, not the start
    (tree / "unpacked.txt").write_bytes(b"from an archive")
    _await_body(s3, bucket, "unpacked.txt", b"from an archive", WELL_BEFORE)
    archived = 1_500_000_000_123_456_789
    os.utime(tree / "unpacked.txt", ns=(archived, archived))  # as tar x and cp -p do, after the close

    def mtime_meta() -> str | None:
        return s3.head_object(Bucket=bucket, Key="unpacked.txt")["Metadata"].get("syncd-mtime-ns")
    await_condition(lambda: mtime_meta() == str(archived), WELL_BEFORE, "the object to carry the file's new mtime")


# ---------------------------------------------------------------------- the hot rule, in-process

def _inbox(tmp_path: Path, **settings: Any) -> tuple[Inbox, Journal]:
    import threading

    folder = FolderConfig(name="f", source=tmp_path / "f.yaml", path=tmp_path, bucket="b", **settings)
    journal = Journal(tmp_path / "journal.db", "test")
    return Inbox(folder, journal, threading.Event()), journal


def _due_in(journal: Journal) -> float:
    due = journal.next_due()
    assert due is not None
    return due - time.time()


def test_a_first_finished_write_is_due_after_settle_closed_with_that_quiet_period(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=60.0)
    inbox.finished("a.txt")
    inbox.ingest()
    assert _due_in(journal) <= 0.05
    [claimed] = journal.claim_due(time.time() + 0.05, 10)
    assert claimed.quiet == 0.05


def test_a_path_finished_again_within_hot_window_waits_settle_and_its_full_quiet_period(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=60.0)
    inbox.finished("a.txt")
    inbox.finished("a.txt")  # rewritten: hot
    inbox.ingest()
    assert _due_in(journal) > 9.0
    [claimed] = journal.claim_due(time.time() + 10.0, 10)
    assert claimed.quiet is None  # the folder's settle


def test_a_change_after_a_finished_write_pushes_it_back_to_settle(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=60.0)
    inbox.finished("a.txt")
    inbox.submit("a.txt")  # written again, still open
    inbox.ingest()
    assert _due_in(journal) > 9.0


def test_a_path_is_no_longer_hot_once_hot_window_has_passed(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=0.05)
    inbox.finished("a.txt")
    time.sleep(0.1)  # the scenario: longer than hot_window between the two saves
    inbox.finished("a.txt")
    inbox.ingest()
    assert _due_in(journal) <= 0.05


def test_settle_closed_never_exceeds_settle(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=0.0, settle_closed=0.05)
    inbox.finished("a.txt")
    inbox.ingest()
    assert _due_in(journal) <= 0.0


def test_metadata_changed_just_after_a_finished_write_keeps_its_short_quiet_period(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=60.0)
    inbox.finished("a.txt")
    inbox.attributes_changed("a.txt")  # tar x setting the mtime after the close: not a rewrite
    inbox.ingest()
    assert _due_in(journal) <= 0.05
    [claimed] = journal.claim_due(time.time() + 0.05, 10)
    assert claimed.quiet == 0.05


def test_metadata_changed_on_a_file_not_finished_lately_waits_settle(tmp_path):
    inbox, journal = _inbox(tmp_path, settle=10.0, settle_closed=0.05, hot_window=60.0)
    inbox.attributes_changed("old.txt")  # touch of a file nobody wrote lately
    inbox.ingest()
    assert _due_in(journal) > 9.0

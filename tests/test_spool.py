"""The kept manifest spool: a fast scan reads the manifest's printed blocks from the file the
last scan left, but only while the manifest is exactly what that file says."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from syncd import scan as scan_module
from syncd import spool, tree
from syncd.changes import Entry, Outcome, OutcomeKind
from syncd.journal import Journal
from syncd.paths import IgnoreRules
from syncd.scan import SCAN_RULES, LocalScan, ScanReport

from tests.test_scan import Recorder, manifest_of, synced_tree, write

pytestmark = pytest.mark.skipif(not tree.available(), reason="GNU find and sort are not installed")

NO_RULES = IgnoreRules(())


def fast_scan(root: Path, journal: Journal) -> tuple[set[str], ScanReport]:
    journal.set_meta(SCAN_RULES, NO_RULES.fingerprint)
    sink = Recorder()
    report = LocalScan("t", str(root), NO_RULES, journal, sink).run(threading.Event())
    return sink.paths, report


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", 16)  # many blocks in a small tree


def test_a_scan_keeps_its_spool_beside_the_journal_private_to_syncd(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    fast_scan(root, journal)
    kept = spool.kept_path(journal.path)
    assert kept.exists()
    assert kept.stat().st_mode & 0o777 == 0o600, "it names every file, as the journal does"
    assert list(tmp_path.glob("*.tmp")) == []


def test_the_next_scan_of_an_unchanged_manifest_reads_the_kept_spool(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    _, first = fast_scan(root, journal)
    paths, second = fast_scan(root, journal)
    assert (first.spool_reused, second.spool_reused) == (False, True)
    assert paths == set()
    assert second.files == 100


def test_a_file_changed_on_disk_is_found_with_the_kept_spool(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    fast_scan(root, journal)
    st = (root / "f42").lstat()
    os.utime(root / "f42", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    os.unlink(root / "f7")
    write(root, "new")
    paths, report = fast_scan(root, journal)
    assert report.spool_reused
    assert paths == {"f42", "f7", "new"}


def _upload(journal: Journal, root: Path, rel: str) -> None:
    st = (root / rel).lstat()
    entry = Entry(rel, st.st_size, st.st_mtime_ns, st.st_ino, None, None)
    journal.record([(rel, None, 0.0)], 60.0)
    journal.apply([Outcome(OutcomeKind.DONE, rel, 1, entry=entry)])


def _delete(journal: Journal, root: Path, rel: str) -> None:
    journal.record([(rel, None, 0.0)], 60.0)
    journal.apply([Outcome(OutcomeKind.DONE, rel, 1, forget=True)])


MANIFEST_WRITES = {
    "an upload of a new file": lambda j, root: (write(root, "fresh", b"abc"), _upload(j, root, "fresh")),
    "an upload of a changed file": lambda j, root: (write(root, "f3", b"longer"), _upload(j, root, "f3")),
    "a deletion": lambda j, root: (os.unlink(root / "f5"), _delete(j, root, "f5")),
    "a forgotten row": lambda j, root: j.forget([("f9", (root / "f9").lstat().st_mtime_ns, None)]),
    "an adoption": lambda j, root: (write(root, "adopted"),
                                    j.adopt([Entry("adopted", 1, (root / "adopted").lstat().st_mtime_ns, None, None,
                                                   None)])),
}


@pytest.mark.parametrize("change", list(MANIFEST_WRITES))
def test_every_manifest_write_makes_the_kept_spool_stale(tmp_path, change):
    root, journal = synced_tree(tmp_path, 100)
    fast_scan(root, journal)
    MANIFEST_WRITES[change](journal, root)
    paths, report = fast_scan(root, journal)
    assert not report.spool_reused
    assert change == "a forgotten row" or paths == set(), "the manifest matched the tree again"
    assert change != "a forgotten row" or paths == {"f9"}, "a file the manifest forgot is new again"


@pytest.mark.parametrize("statement", [
    "UPDATE manifest SET size = size + 1 WHERE path = 'f1'",
    "UPDATE manifest SET mtime_ns = mtime_ns + 1 WHERE path = 'f1'",
    "UPDATE manifest SET path = 'f1-renamed' WHERE path = 'f1'",
    "INSERT OR REPLACE INTO manifest VALUES ('f1', 9, 9, NULL, NULL, NULL)",
    "DELETE FROM manifest WHERE path = 'f1'",
])
def test_any_statement_that_changes_a_printed_column_bumps_the_generation(tmp_path, statement):
    _, journal = synced_tree(tmp_path, 3)
    before = journal.manifest_blocks(16)
    before.close()
    with journal.transaction() as db:
        db.execute(statement)
    after = journal.manifest_blocks(16)
    after.close()
    assert before.gen is not None and after.gen is not None and after.gen > before.gen


def test_a_change_to_an_unprinted_column_keeps_the_spool(tmp_path):
    root, journal = synced_tree(tmp_path, 20)
    fast_scan(root, journal)
    with journal.transaction() as db:
        db.execute("UPDATE manifest SET etag = 'x', sha256 = 'y' WHERE path = 'f1'")
    assert fast_scan(root, journal)[1].spool_reused


def test_a_journal_closed_and_opened_again_reads_the_kept_spool(tmp_path):
    root, journal = synced_tree(tmp_path, 50)
    fast_scan(root, journal)
    journal.close()
    reopened = Journal(journal.path, "test")
    paths, report = fast_scan(root, reopened)
    assert report.spool_reused and paths == set()


def test_a_journal_opened_after_a_crash_never_reads_the_kept_spool(tmp_path):
    root, journal = synced_tree(tmp_path, 50)
    fast_scan(root, journal)
    # No close(): the process died (its connections are simply dropped).
    crashed = Journal(journal.path, "test")
    _, report = fast_scan(root, crashed)
    assert not report.spool_reused, "a crash or power loss may have lost commits the generation counted"


def test_the_spool_of_another_journal_is_never_read(tmp_path):
    root, journal = synced_tree(tmp_path, 50)
    fast_scan(root, journal)
    journal.close()
    other = tmp_path / "other"
    other.mkdir()
    os.replace(spool.kept_path(journal.path), spool.kept_path(other / "j.sqlite3"))
    second = Journal(other / "j.sqlite3", "test")
    for i in range(50):
        write(other, f"root/f{i}")
    manifest_of(other / "root", second)
    _, report = fast_scan(other / "root", second)
    assert not report.spool_reused


def test_a_damaged_kept_spool_makes_the_scan_walk_and_is_printed_anew(tmp_path):
    root, journal = synced_tree(tmp_path, 200)
    fast_scan(root, journal)
    kept = spool.kept_path(journal.path)
    data = bytearray(kept.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x20  # one flipped bit in a block's records
    kept.write_bytes(bytes(data))
    st = (root / "f150").lstat()
    os.utime(root / "f150", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    paths, report = fast_scan(root, journal)
    assert report.rules != "", "the damaged spool should have sent the scan to the Python walk"
    assert paths == {"f150"}
    assert not kept.exists(), "a damaged spool is removed, so the next scan prints a new one"
    assert not fast_scan(root, journal)[1].spool_reused
    assert fast_scan(root, journal)[1].spool_reused


def test_a_spool_cut_short_is_never_read(tmp_path):
    root, journal = synced_tree(tmp_path, 200)
    fast_scan(root, journal)
    kept = spool.kept_path(journal.path)
    with kept.open("r+b") as f:
        f.truncate(kept.stat().st_size - 1)
    _, report = fast_scan(root, journal)
    assert not report.spool_reused


def test_a_stopped_scan_keeps_no_spool(tmp_path, monkeypatch):
    root, journal = synced_tree(tmp_path, 100)
    journal.set_meta(SCAN_RULES, NO_RULES.fingerprint)
    stop = threading.Event()

    class Stopping(spool.Blocks):
        def __iter__(self):  # the scan is stopped while the manifest is being printed
            for i, block in enumerate(super().__iter__()):
                if i == 2:
                    stop.set()
                yield block

    monkeypatch.setattr(spool, "Blocks", Stopping)
    monkeypatch.setattr("syncd.journal.Blocks", Stopping)
    LocalScan("t", str(root), NO_RULES, journal, Recorder()).run(stop)
    assert not spool.kept_path(journal.path).exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_opening_the_journal_removes_the_temporary_spools_a_killed_scan_left(tmp_path):
    _, journal = synced_tree(tmp_path, 5)
    journal.close()
    leftover = tmp_path / f"j.sqlite3{spool.SUFFIX}.abc123.tmp"
    leftover.write_bytes(b"half a spool")
    Journal(journal.path, "test")
    assert not leftover.exists()


def test_a_journal_of_schema_6_gets_the_generation_and_its_triggers(tmp_path):
    root, journal = synced_tree(tmp_path, 10)
    journal.close()
    db = sqlite3.connect(journal.path)
    for name in ("manifest_gen_insert", "manifest_gen_update", "manifest_gen_delete"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DELETE FROM meta WHERE key = 'manifest_gen'")
    db.commit()
    db.close()
    reopened = Journal(journal.path, "test")
    fast_scan(root, reopened)
    write(root, "new")
    _upload(reopened, root, "new")
    _, report = fast_scan(root, reopened)
    assert not report.spool_reused, "the triggers must be back: the upload bumped the generation"


def test_a_refresh_prints_a_stale_spool_anew_for_the_next_scan(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    fast_scan(root, journal)
    write(root, "f3", b"longer")
    _upload(journal, root, "f3")  # the kept spool is stale now
    assert spool.refresh(journal.path, scan_module.BLOCK_ROWS, 30.0)
    paths, report = fast_scan(root, journal)
    assert report.spool_reused and paths == set()


def test_a_refresh_of_a_current_spool_prints_nothing(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    fast_scan(root, journal)
    kept = spool.kept_path(journal.path)
    before = kept.stat().st_ino
    assert spool.refresh(journal.path, scan_module.BLOCK_ROWS, 30.0)
    assert kept.stat().st_ino == before


def test_a_refresh_out_of_time_keeps_nothing(tmp_path):
    root, journal = synced_tree(tmp_path, 100)
    assert not spool.refresh(journal.path, scan_module.BLOCK_ROWS, 0.0)
    assert not spool.kept_path(journal.path).exists()
    assert list(tmp_path.glob("*.tmp")) == []

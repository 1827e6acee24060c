"""Unit specifications for the pieces of the large-file path: part sizing, the bandwidth throttle,
request bodies and the journaled record of uploads in progress."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncd.bandwidth import PACE_CHUNK, Payload, Throttle
from syncd.journal import Journal
from syncd.multipart import MAX_OBJECT, MAX_PART, MAX_PARTS, MIN_PART, part_count, part_size_for
from syncd.store import Part, multipart_etag

MiB = 1024 * 1024
GiB = 1024 * MiB


@given(size=st.integers(0, MAX_OBJECT), configured=st.integers(MIN_PART, MAX_PART))
def test_part_size_always_respects_s3_limits(size: int, configured: int) -> None:
    part = part_size_for(size, configured)
    assert MIN_PART <= part <= MAX_PART
    assert part >= configured
    assert part_count(size, part) <= MAX_PARTS


def test_configured_part_size_is_kept_while_it_fits_in_10000_parts() -> None:
    assert part_size_for(GiB, 16 * MiB) == 16 * MiB
    assert part_count(GiB, 16 * MiB) == 64


def test_file_needing_more_than_10000_parts_gets_a_larger_part_size() -> None:
    size = 60 * GiB  # 12,288 parts of 5 MiB
    part = part_size_for(size, 5 * MiB)
    assert part == 7 * MiB  # rounded up to whole MiB
    assert part_count(size, part) == 8778


def test_object_over_5_tib_is_refused() -> None:
    assert part_count(MAX_OBJECT, part_size_for(MAX_OBJECT, 5 * MiB)) <= MAX_PARTS
    with pytest.raises(ValueError, match="5 TiB"):
        part_size_for(MAX_OBJECT + 1, 16 * MiB)


def test_multipart_etag_is_the_md5_of_the_part_etags() -> None:
    # Seen from SeaweedFS: 16 identical 64 MiB parts.
    parts = [Part(n, "4a395e1cd9b8aea6d82a235f68fd1163") for n in range(1, 17)]
    assert multipart_etag(parts) == "fa667fcc0f5e35261259f7ed10c625fd-16"


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_throttle_gives_callers_consecutive_slots_in_the_order_they_ask() -> None:
    t = FakeTime()
    throttle = Throttle(MiB, clock=t.clock, sleep=t.sleep)
    for _ in range(4):  # e.g. two workers alternating, 1 MiB each, all asking at once
        throttle.pace(MiB)
    assert t.sleeps == [1.0, 2.0, 3.0]  # the first goes at once; the rest wait their turn


def test_throttle_does_not_save_up_credit_while_idle() -> None:
    t = FakeTime()
    throttle = Throttle(MiB, clock=t.clock, sleep=t.sleep)
    throttle.pace(MiB)
    t.now += 60  # a minute of silence
    throttle.pace(MiB)
    throttle.pace(MiB)
    assert t.sleeps == [1.0]  # no burst beyond the rate after the pause


def test_paced_payload_reads_in_chunks_and_paces_every_reread() -> None:
    t = FakeTime()
    body = Payload(bytes(range(256)) * 1024, Throttle(PACE_CHUNK, clock=t.clock, sleep=t.sleep))
    assert not body.plain
    chunks = list(iter(lambda: body.read(1 << 20), b""))
    assert b"".join(chunks) == body.data and all(len(c) <= PACE_CHUNK for c in chunks)
    assert body.seek(0) == 0
    again = body.read()
    assert again == body.data[:PACE_CHUNK]  # a paced read hands out one chunk at a time
    assert t.sleeps == [1.0, 2.0, 3.0, 4.0]  # every chunk waited its turn but the very first


def test_unwatched_payload_is_plain() -> None:
    assert Payload(b"abc").plain


def test_upload_record_survives_reopening_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "j.sqlite3"
    journal = Journal(db, "id")
    journal.uploads.begin("a/big.bin", "u1", 100, 5, 7, 16 * MiB, "crc32c")
    journal.uploads.add_part("u1", Part(1, "e1", "c1", 16 * MiB))
    journal.uploads.add_part("u1", Part(2, "e2", "c2", 16 * MiB))
    journal.close()

    journal = Journal(db, "id")
    rec = journal.uploads.get("a/big.bin")
    assert rec is not None and rec.upload_id == "u1" and rec.same_file(100, 5, 7) and rec.checksum == "crc32c"
    assert [p.number for p in rec.parts] == [1, 2] and rec.parts[1].etag == "e2"
    assert journal.uploads.upload_id("a/big.bin") == "u1"


def test_removing_an_upload_only_if_it_is_still_the_current_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", "id")
    journal.uploads.begin("f", "old", 1, 1, 1, MIN_PART, "crc32c")
    journal.uploads.begin("f", "new", 2, 2, 2, MIN_PART, "crc32c")  # replaces the old record and its parts
    journal.uploads.remove("f", "old")
    assert journal.uploads.upload_id("f") == "new"
    journal.uploads.remove("f", "new")
    assert journal.uploads.get("f") is None


def test_a_journal_for_another_bucket_drops_the_uploads_of_the_old_one(tmp_path: Path) -> None:
    db = tmp_path / "j.sqlite3"
    journal = Journal(db, "endpoint|bucket-a|")
    journal.uploads.begin("f", "u", 1, 1, 1, MIN_PART, "crc32c")
    journal.close()
    assert Journal(db, "endpoint|bucket-b|").uploads.get("f") is None


def test_a_schema_2_journal_keeps_its_uploads_and_marks_their_checksum_mode_unknown(tmp_path: Path) -> None:
    db_path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(db_path)
    db.executescript("""
        CREATE TABLE uploads(path TEXT PRIMARY KEY, upload_id TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, part_size INTEGER NOT NULL,
            started REAL NOT NULL, completed TEXT) WITHOUT ROWID;
        CREATE TABLE parts(upload_id TEXT NOT NULL, number INTEGER NOT NULL, etag TEXT NOT NULL,
            sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY(upload_id, number)) WITHOUT ROWID;
        INSERT INTO uploads VALUES ('big.bin', 'u1', 100, 5, 7, 16777216, 0, NULL);
        INSERT INTO parts VALUES ('u1', 1, 'e1', 'c2hhMjU2', 16777216);
    """)
    db.close()

    journal = Journal(db_path, "id")
    rec = journal.uploads.get("big.bin")
    assert rec is not None and rec.upload_id == "u1" and rec.checksum == ""  # so it is started over
    assert rec.parts == [Part(1, "e1", "c2hhMjU2", 16 * MiB)]
    journal.uploads.begin("other.bin", "u2", 1, 1, 1, MIN_PART, "crc32c")
    journal.uploads.add_part("u2", Part(1, "e", "crc", MIN_PART))
    new = journal.uploads.get("other.bin")  # the migrated tables take new uploads
    assert new is not None and new.checksum == "crc32c" and new.parts == [Part(1, "e", "crc", MIN_PART)]

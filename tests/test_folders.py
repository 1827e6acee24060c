"""Many folders in one daemon: they share its threads fairly, and the threads do not grow with them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.daemon import await_condition, bucket_keys

BURST = 2000
LATENCY_BOUND = 5.0    # generous: the quiet folder's change normally lands in well under a second
THREAD_BOUND = 40      # whatever the number of folders (each had ~13 threads of its own)


def _in_bucket(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except s3.exceptions.ClientError:
        return False


def test_a_burst_in_one_folder_leaves_another_folders_change_visible_within_its_latency(syncd, tmp_path, s3,
                                                                                        bucket):
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    busy.mkdir()
    quiet.mkdir()
    syncd.add_folder("busy", busy, bucket, prefix="busy/", workers=4)
    syncd.add_folder("quiet", quiet, bucket, prefix="quiet/", workers=4)
    syncd.write_global(max_workers=4)  # the burst alone could fill every shared thread
    syncd.start()
    syncd.wait_idle()
    # The burst is journaled while the folder is paused, so that all of it is due at once.
    assert syncd.cli("pause", "busy").returncode == 0
    for i in range(BURST):
        (busy / f"f{i:04d}.txt").write_bytes(b"x" * 100)
    await_condition(lambda: syncd.folder_status("busy")["pending"] == BURST, 60, "the burst to be journaled")
    assert syncd.cli("resume", "busy").returncode == 0
    written = time.monotonic()
    (quiet / "one.txt").write_text("one change")
    await_condition(lambda: _in_bucket(s3, bucket, "quiet/one.txt"), LATENCY_BOUND,
                    "the quiet folder's change in the bucket while the burst is under way", interval=0.02)
    latency = time.monotonic() - written
    landed = len(bucket_keys(s3, bucket, "busy/"))
    assert landed < BURST, f"the burst was over before the change landed ({latency:.2f}s): no contention tested"
    # (The rest of the burst is left to the journal: the daemon stops with it pending.)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_daemons_threads_are_bounded_whatever_the_number_of_folders(syncd, tmp_path: Path, bucket):
    folders = 20
    for i in range(folders):
        root = tmp_path / f"folder{i:02d}"
        root.mkdir()
        for j in range(3):
            (root / f"file{j}.txt").write_text(f"{i}/{j}")
        syncd.add_folder(f"folder{i:02d}", root, bucket, prefix=f"folder{i:02d}/")
    syncd.start()
    syncd.wait_idle(120)
    assert syncd.proc is not None
    threads = _threads(syncd.proc.pid)
    assert threads <= THREAD_BOUND, f"{threads} threads for {folders} folders"

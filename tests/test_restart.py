"""Durability: changes made while the daemon is down, and kill -9 at random instants."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from syncd import tree as tree_listing
from syncd.control import request

from .support.daemon import assert_mirror, await_condition, bucket_keys, bucket_tree


def _populate(root: Path, n: int, rng: random.Random) -> list[Path]:
    files = []
    for i in range(n):
        path = root / f"dir-{i % 40:02}" / f"file-{i:05}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
        files.append(path)
    return files


def test_changes_made_while_stopped_converge_after_restart(syncd, tree, s3, bucket):
    rng = random.Random(6)
    files = _populate(tree, 60, rng)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    assert syncd.stop() == 0

    for path in files[:10]:
        path.write_bytes(rng.randbytes(500))            # modified
    for path in files[10:20]:
        path.unlink()                                    # deleted
    (tree / "new-dir" / "sub").mkdir(parents=True)
    (tree / "new-dir" / "sub" / "added.txt").write_text("added while down")
    files[20].rename(tree / "renamed-while-down.dat")   # renamed
    syncd.start()
    syncd.wait_idle()
    assert assert_mirror(s3, bucket, tree) == 51
    if tree_listing.available():  # the first run's walk made the rules known: this scan used find
        assert "event=scan.done" in syncd.log() and "walk=find" in syncd.log()


@pytest.mark.skipif(not tree_listing.available(), reason="GNU find and sort are not installed")
def test_a_restart_reads_the_manifest_from_the_spool_the_stop_kept_and_still_finds_every_change(
        syncd, tree, s3, bucket):
    rng = random.Random(8)
    files = _populate(tree, 60, rng)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    for path in files[:5]:  # uploaded after the startup scan: the stop prints the manifest anew
        path.write_bytes(rng.randbytes(300))
    syncd.wait_idle()
    assert syncd.stop() == 0
    files[30].write_bytes(rng.randbytes(700))  # changed while down
    files[31].unlink()                          # deleted while down
    syncd.start()
    syncd.wait_idle()
    assert "manifest=kept" in syncd.log(), "the second start should have read the spool the stop kept"
    assert assert_mirror(s3, bucket, tree) == 59


def test_deleting_files_while_stopped_with_delete_keep_leaves_objects(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("a")
    (tree / "b.txt").write_text("b")
    syncd.add_folder("main", tree, bucket, delete="keep")
    syncd.start()
    syncd.wait_idle()
    (tree / "a.txt").unlink()
    syncd.wait_idle()
    assert syncd.stop() == 0
    (tree / "b.txt").unlink()
    syncd.start()
    syncd.wait_idle()
    assert sorted(bucket_tree(s3, bucket)) == ["a.txt", "b.txt"]


def _uploaded(syncd: Any) -> int:
    """Files the running daemon has uploaded, asked on its socket (cheaper than a listing)."""
    return sum(f["files_done"] for f in request(syncd.socket, "status")["folders"])


@pytest.mark.slow
def test_kill9_at_random_instants_while_uploading_2000_files_loses_nothing(syncd, tree, s3, bucket):
    rng = random.Random(7)
    files = _populate(tree, 2000, rng)
    syncd.add_folder("main", tree, bucket, workers=16)
    killed_mid_upload = 0
    for round_ in range(5):
        if round_:  # fresh work for every round, made while the daemon is down
            for i in range(300):
                path = tree / f"batch-{round_}" / f"file-{i:03}.dat"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
        syncd.start()
        # The random instant is the point of this test: kill while work is in flight. It is
        # drawn as a share of the uploads still to do, not as a time, so a faster daemon
        # cannot finish before the kill.
        to_do = len(list(tree.rglob("*.dat"))) - len(bucket_keys(s3, bucket))
        target = int(to_do * rng.uniform(0.1, 0.5))
        await_condition(lambda n=target: _uploaded(syncd) >= n, 120, f"{target} uploads done", interval=0.005)
        for path in rng.sample(files, 30):               # changes in flight at the kill
            if path.exists():
                path.write_bytes(rng.randbytes(rng.randint(10, 4000)))
        victim = rng.choice(files)
        if victim.exists():
            victim.unlink()
        new = tree / f"round-{round_}" / "added.dat"
        new.parent.mkdir(exist_ok=True)
        new.write_bytes(rng.randbytes(3000))
        time.sleep(rng.uniform(0.0, 0.05))  # the changes just made are still in flight at the kill
        syncd.kill9()
        if len(bucket_keys(s3, bucket)) < len(list(tree.rglob("*.dat"))):
            killed_mid_upload += 1
    print(f"kills mid-upload: {killed_mid_upload} of 5")
    assert killed_mid_upload >= 3, "the kills should land while the upload is still running"
    syncd.start()
    syncd.wait_idle(300)
    assert assert_mirror(s3, bucket, tree) >= 2000


def test_sigterm_during_busy_sync_exits_0_and_restart_converges(syncd, tree, s3, bucket):
    rng = random.Random(8)
    _populate(tree, 800, rng)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    await_condition(lambda: len(bucket_keys(s3, bucket)) >= 50, 60, "the initial upload under way", interval=0.01)
    started = time.monotonic()
    assert syncd.stop(timeout=40) == 0
    assert len(bucket_keys(s3, bucket)) < 800, "the signal should come while the upload is still running"
    assert time.monotonic() - started < 30
    syncd.start()
    syncd.wait_idle(120)
    assert_mirror(s3, bucket, tree)
    assert os.path.exists(syncd.state_dir / "folders" / "main.sqlite3")

"""The reconciler: remote drift, lost journals, missed events, and guarded deletions."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd.bandwidth import ByteBudget
from syncd.config import load_config
from syncd.folder import FAILED_PASS_BACKOFF, FolderRuntime
from syncd.reconciler import RemotePass

from .support.daemon import Syncd, assert_mirror, await_condition, bucket_tree


def _populate(root: Path, n: int, size: int = 512) -> None:
    for i in range(n):
        path = root / f"d{i % 20:02}" / f"f{i:05}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{i}:".encode() + os.urandom(size))


def test_objects_deleted_or_overwritten_in_the_bucket_are_restored_by_the_next_pass(syncd, tree, s3, bucket):
    _populate(tree, 30)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    s3.delete_object(Bucket=bucket, Key="d01/f00001.txt")
    s3.put_object(Bucket=bucket, Key="d02/f00002.txt", Body=b"vandalised")
    r = syncd.cli("reconcile", "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert_mirror(s3, bucket, tree)
    last = syncd.folder_status("main")["last_reconcile"]
    assert last["drift"] == 2 and last["lists"] >= 1


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_lost_or_corrupt_journal_is_rebuilt_without_reuploading_unchanged_files(proxied_syncd, s3_proxy, tree, s3,
                                                                                 bucket, damage):
    _populate(tree, 2000, size=256)
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle(180)
    assert proxied_syncd.stop() == 0
    db = proxied_syncd.state_dir / "folders" / "main.sqlite3"
    if damage == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    else:
        with db.open("r+b") as f:  # wreck the header and the first pages
            f.write(os.urandom(8192))
    changed = [tree / "d03" / "f00003.txt", tree / "d04" / "f00004.txt"]
    for path in changed:
        path.write_bytes(b"changed while the journal was lost")
    s3_proxy.reset_counts()
    proxied_syncd.start()
    proxied_syncd.wait_idle(180)
    assert_mirror(s3, bucket, tree)
    counts = s3_proxy.counts()
    assert counts.get("PutObject", 0) == len(changed)
    assert counts.get("UploadPart", 0) == 0
    assert counts.get("HeadObject", 0) == 0  # the listing's ETag and the local MD5 decide
    last = proxied_syncd.folder_status("main")["last_reconcile"]
    assert last["adopted"] == 2000 - len(changed) and last["files_read"] == 2000 - len(changed)
    if damage == "corrupt":
        assert list(db.parent.glob("main.sqlite3.corrupt-*")), "the damaged journal is kept aside"
        assert "event=journal.rebuild" in proxied_syncd.log() and "reason=corrupt" in proxied_syncd.log()
    else:  # a deleted journal looks like a new one; either way the bucket is adopted first
        assert "event=journal.rebuild" in proxied_syncd.log()


def test_changes_missed_in_an_inotify_overflow_are_found_and_the_overflow_logged(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    await_condition(lambda: syncd.folder_status("main")["last_reconcile"] is not None, 30, "the startup passes")
    assert syncd.proc is not None
    os.kill(syncd.proc.pid, signal.SIGSTOP)  # the daemon cannot read events: the kernel queue fills
    try:
        a = os.open(tree / "noise-a.log", os.O_CREAT | os.O_WRONLY)
        b = os.open(tree / "noise-b.log", os.O_CREAT | os.O_WRONLY)
        for _ in range(10_000):  # 20,000 distinct IN_MODIFY events: past max_queued_events (16384)
            os.write(a, b".")
            os.write(b, b".")
        os.close(a)
        os.close(b)
        late = tree / "late"  # created after the overflow: the kernel drops these events
        late.mkdir()
        for i in range(50):
            (late / f"{i:02}.txt").write_text(f"only a rescan can find me {i}")
    finally:
        os.kill(syncd.proc.pid, signal.SIGCONT)
    # `wait` cannot see events still queued in the kernel: let the daemon reach the overflow first.
    await_condition(lambda: "watch.overflow" in syncd.log(), 60, "the overflow noticed")
    syncd.wait_idle(240)
    assert_mirror(s3, bucket, tree)
    log = syncd.log()
    assert "watch.overflow" in log and "watch.overflow_rescan" in log


def test_root_moved_away_or_replaced_by_an_empty_directory_deletes_nothing(proxied_syncd, s3_proxy, tree, s3,
                                                                            bucket):
    _populate(tree, 25)
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.reset_counts()
    away = tree.with_name("tree.away")

    tree.rename(away)  # the disk is gone
    status = await_condition(lambda: (f := proxied_syncd.folder_status("main"))["state"] == "held" and f, 30,
                             "the folder to report its missing root")
    assert "unavailable" in status["last_error"]
    r = proxied_syncd.cli("wait", "--timeout", "60")
    assert r.returncode == 5 and "unavailable" in r.stderr
    tree.mkdir()  # an empty mount point appears in its place
    status = await_condition(lambda: "replaced" in ((f := proxied_syncd.folder_status("main"))["last_error"] or "")
                             and f, 30, "the folder to report a replaced root")
    assert status["state"] == "held"

    tree.rmdir()
    away.rename(tree)  # the disk is back
    await_condition(lambda: proxied_syncd.folder_status("main")["state"] == "watching", 60, "recovery")
    (tree / "after-restore.txt").write_text("normal work again")
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    assert s3_proxy.counts().get("DeleteObjects", 0) == 0
    assert s3_proxy.counts().get("DeleteObject", 0) == 0


def test_emptied_root_deletes_nothing_until_confirmed(proxied_syncd, s3_proxy, tree, s3, bucket):
    _populate(tree, 25)
    proxied_syncd.add_folder("main", tree, bucket, max_delete="100%")
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.reset_counts()
    for child in tree.iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    status = await_condition(lambda: (f := proxied_syncd.folder_status("main"))["state"] == "held" and f, 30,
                             "the emptied root to be refused")
    assert "is empty" in status["last_error"]
    assert s3_proxy.counts().get("DeleteObjects", 0) == 0
    assert proxied_syncd.cli("resume", "main").returncode == 0  # "yes, I really emptied it"
    proxied_syncd.wait_idle()
    assert bucket_tree(s3, bucket) == {}


def test_deletion_wave_above_max_delete_is_held_until_resume(proxied_syncd, s3_proxy, tree, s3, bucket):
    _populate(tree, 40)
    proxied_syncd.add_folder("main", tree, bucket, max_delete=10)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.reset_counts()
    victims = sorted(tree.rglob("*.txt"))[:25]
    for path in victims:
        path.unlink()
    status = await_condition(lambda: (f := proxied_syncd.folder_status("main"))["state"] == "held" and f, 30,
                             "the deletion wave to hold the folder")
    assert "max_delete=10" in status["last_error"] and "syncd resume main" in status["last_error"]
    assert s3_proxy.counts().get("DeleteObjects", 0) == 0
    t0 = time.monotonic()
    r = proxied_syncd.cli("wait", "--timeout", "60")
    assert r.returncode == 5 and time.monotonic() - t0 < 10  # at once, not at the timeout
    assert "main is held" in r.stderr and "max_delete=10" in r.stderr
    assert proxied_syncd.cli("resume", "main").returncode == 0
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    assert proxied_syncd.folder_status("main")["state"] == "watching"


def test_reconcile_of_an_unchanged_folder_makes_only_list_requests_and_one_owner_check(proxied_syncd, s3_proxy,
                                                                                     tree, bucket):
    _populate(tree, 3000, size=64)
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle(180)
    s3_proxy.reset_counts()
    assert proxied_syncd.cli("reconcile", "--wait", "--timeout", "120").returncode == 0
    counts = s3_proxy.counts()
    assert set(counts) == {"ListObjectsV2", "ListMultipartUploads", "OwnerMarker"}, counts
    assert counts["ListObjectsV2"] == 4  # 3000 files + the owner marker, 1000 keys per page
    assert counts["OwnerMarker"] == 1  # the prefix is still this folder's (one GET of the marker)
    assert counts["ListMultipartUploads"] == 1  # the sweep for abandoned uploads
    assert "reconcile.done" in proxied_syncd.log() and "lists=4 heads=0" in proxied_syncd.log()


def test_foreign_keys_are_reported_and_kept_unless_the_folder_opts_in(syncd, tree, s3, bucket):
    (tree / "mine.txt").write_text("mine")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    s3.put_object(Bucket=bucket, Key="not-mine.bin", Body=b"someone else's")
    assert syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    status = syncd.folder_status("main")
    assert status["foreign"] == 1 and status["foreign_examples"] == ["not-mine.bin"]
    assert "not-mine.bin" in bucket_tree(s3, bucket)
    assert syncd.stop() == 0

    syncd.add_folder("main", tree, bucket, delete_foreign=True)
    syncd.start()
    syncd.wait_idle()
    assert syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    assert sorted(bucket_tree(s3, bucket)) == ["mine.txt"]


class _NoWatches:
    """A watcher whose kernel refuses more watches (fs.inotify.max_user_watches reached)."""

    def add(self, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def remove(self, name: str) -> None:
        pass


class _SilentWatches(_NoWatches):
    """A watcher that takes the watch and reports nothing (no change happens meanwhile)."""

    def add(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _unwatched_runtime(tmp_path, tree, s3_server, bucket, monkeypatch,
                       watcher: _NoWatches | None = None) -> Iterator[FolderRuntime]:
    """An in-process folder runtime whose watcher gets no inotify watches: it relies on rescans."""
    watcher = watcher or _NoWatches()
    daemon = Syncd(tmp_path / "conf", s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    daemon.add_folder("main", tree, bucket)
    for key, value in daemon.env().items():
        monkeypatch.setenv(key, value)
    folder = load_config(daemon.config).folders[0]
    runtime = FolderRuntime(folder, daemon.state_dir, ByteBudget(64 << 20))
    runtime.start(watcher)  # type: ignore[arg-type]
    try:
        yield runtime
    finally:
        runtime.stop_intake(watcher)  # type: ignore[arg-type]
        runtime.stop(time.monotonic() + 5)


def test_watch_limit_gives_the_sysctl_fix_and_falls_back_to_rescans(tmp_path, tree, s3_server, bucket, s3,
                                                                   monkeypatch):
    with _unwatched_runtime(tmp_path, tree, s3_server, bucket, monkeypatch) as runtime:
        assert runtime.watch_error is not None and "fs.inotify.max_user_watches" in runtime.watch_error
        await_condition(lambda: runtime.is_idle()[0], 30, "the startup pass")
        (tree / "seen-by-rescan.txt").write_text("no inotify event for this one")
        runtime.tick(time.monotonic() + 31)  # the fallback rescan is due
        await_condition(lambda: runtime.is_idle()[0] and runtime.snapshot()["objects"] == 1, 30,
                        "the fallback rescan to sync the file")
        assert_mirror(s3, bucket, tree)
        assert runtime.snapshot()["last_error"] == runtime.watch_error


def test_an_overflow_keeps_wait_busy_until_its_rescan_has_run(tmp_path, tree, s3_server, bucket, s3, monkeypatch):
    """The rescan an overflow owes starts at the folders' next timer tick: `wait` must not say
    idle in between (a file whose event the kernel dropped would be missing from the bucket)."""
    with _unwatched_runtime(tmp_path, tree, s3_server, bucket, monkeypatch) as runtime:
        await_condition(lambda: runtime.is_idle()[0], 30, "the startup pass")
        (tree / "event-lost.txt").write_text("the kernel dropped this file's events")
        runtime.on_overflow()
        assert runtime.is_idle()[0] is False
        runtime.tick(time.monotonic())  # the timer starts the owed rescan
        await_condition(lambda: runtime.is_idle()[0], 30, "the rescan and its upload")
        assert_mirror(s3, bucket, tree)


def test_a_startup_pass_that_raises_keeps_wait_busy_and_is_retried(tmp_path, tree, s3_server, bucket, s3,
                                                                   monkeypatch):
    """A bug (not a store error) ending the startup pass before its walk must not let `wait`
    say idle with the tree never scanned: the pass is owed, retried with backoff, and then
    the mirror is exact."""
    failures: list[str] = []
    run = RemotePass.run

    def fails_once(self: RemotePass, *args: object, **kwargs: object) -> object:
        if not failures:
            failures.append("raised")
            raise RuntimeError("injected: the pass hit a bug")
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RemotePass, "run", fails_once)
    with _unwatched_runtime(tmp_path, tree, s3_server, bucket, monkeypatch, _SilentWatches()) as runtime:
        await_condition(lambda: failures and not runtime.pass_running(), 30, "the startup pass to fail")
        assert runtime.is_idle()[0] is False
        assert "injected: the pass hit a bug" in runtime.snapshot()["last_error"]
        runtime.tick(time.monotonic() + FAILED_PASS_BACKOFF[0])  # the retry is due
        await_condition(lambda: runtime.is_idle()[0], 60, "the retried pass and its uploads")
        assert_mirror(s3, bucket, tree)

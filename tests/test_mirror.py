"""The mirror's basic contract against a real S3 server: what is on disk is in the bucket."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from .support.daemon import assert_mirror, await_condition, bucket_tree
from .support.fixtures import both_stores


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@both_stores
def test_nested_tree_with_unicode_and_deep_names_is_mirrored_exactly(syncd, tree, s3, bucket):
    _write(tree / "before start.txt", "present at start")
    syncd.add_folder("main", tree, bucket, prefix="m/")
    syncd.start()
    deep = tree.joinpath(*[f"level {i}" for i in range(25)])
    names = ["naïve café.txt", "日本語/ファイル.md", "spaces in name/and more spaces.txt", "emoji 🎉/x.bin",
             "a+b=c&d/%20 literal.txt", "UPPER/lower.TXT"]
    for n in names:
        _write(tree / n, f"content of {n}")
    _write(deep / "bottom.txt", "deep")
    _write(tree / "big.bin", os.urandom(3 * 1024 * 1024))
    syncd.wait_idle()
    assert assert_mirror(s3, bucket, tree, "m/") == len(names) + 3

    _write(tree / names[0], "modified")
    (tree / names[1]).unlink()
    _write(deep / "bottom.txt", "deeper")
    _write(tree / "new" / "file.txt", "new")
    syncd.wait_idle()
    assert assert_mirror(s3, bucket, tree, "m/") == len(names) + 3


def test_atomic_save_leaves_exactly_the_new_content_and_no_temp_key(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    _write(tree / "doc.txt", "version 1")
    syncd.wait_idle()
    for version in range(2, 6):  # an editor saving repeatedly: write temp, rename over target
        _write(tree / "doc.txt.tmp", f"version {version}")
        os.replace(tree / "doc.txt.tmp", tree / "doc.txt")
    syncd.wait_idle()
    assert bucket_tree(s3, bucket) == {"doc.txt": _sha("version 5")}


def _append_for(path: Path, seconds: float, interval: float, data: Callable[[int], bytes]) -> None:
    """Append ``data(i)`` every ``interval`` seconds for ``seconds``: the rhythm is the scenario."""
    end = time.monotonic() + seconds
    with path.open("ab") as f:
        i = 0
        while time.monotonic() < end:
            f.write(data(i))
            f.flush()
            i += 1
            time.sleep(interval)


def test_file_appended_for_three_seconds_is_uploaded_once_quiet_with_final_content(proxied_syncd, s3_proxy,
                                                                                    tree, s3, bucket):
    # settle 1 s: only a real pause of the writer (not a 300 ms scheduling hiccup) counts as quiet
    proxied_syncd.add_folder("main", tree, bucket, settle="1s")
    proxied_syncd.start()
    s3_proxy.reset_counts()
    _append_for(tree / "growing.log", 3, 0.1, lambda i: f"line {i}\n".encode())  # one append every 100 ms
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    assert s3_proxy.counts().get("PutObject", 0) == 1


def test_file_that_never_settles_is_still_uploaded_every_max_delay(proxied_syncd, s3_proxy, tree, s3, bucket):
    proxied_syncd.add_folder("main", tree, bucket, max_delay="1s")
    proxied_syncd.start()
    s3_proxy.reset_counts()
    _append_for(tree / "busy.log", 4.5, 0.05, lambda i: b"x" * 100)  # never quiet for `settle` (300 ms)
    uploads_while_busy = s3_proxy.counts().get("PutObject", 0)
    assert uploads_while_busy >= 2  # ~every max_delay, although the file never settled
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)


def test_file_rewritten_100_times_in_2s_is_uploaded_at_most_twice(proxied_syncd, s3_proxy, tree, s3, bucket):
    proxied_syncd.add_folder("main", tree, bucket, settle="1s")
    proxied_syncd.start()
    s3_proxy.reset_counts()
    for i in range(100):
        (tree / "hot.txt").write_text(f"rewrite number {i}\n" * (i + 1))
        time.sleep(0.02)  # the scenario: 100 rewrites spread over 2 s
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    assert 1 <= s3_proxy.counts().get("PutObject", 0) <= 2


def test_ignore_patterns_junk_fifos_and_symlinks_are_not_mirrored(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket, ignore=["*.log", "cache/", "!keep.log"])
    syncd.start()
    for name in ["keep.txt", "keep.log", "debug.log", "cache/blob", "sub/cache/blob", "x.swp", ".y.swp", "notes~",
                 ".#lockfile", "~$report.docx", ".DS_Store", "sub/Thumbs.db"]:
        _write(tree / name, name)
    os.mkfifo(tree / "pipe")
    os.symlink("/etc/hostname", tree / "link-out")
    os.symlink("keep.txt", tree / "link-in")
    syncd.wait_idle()
    assert sorted(bucket_tree(s3, bucket)) == ["keep.log", "keep.txt"]
    # The skip is logged by the watcher's event, which can still be in flight when wait returns.
    await_condition(lambda: all(s in syncd.log() for s in ("path.skipped", "path=pipe", "path=link-out")),
                    10, "the fifo and the outward symlink logged as skipped")


def test_wait_exits_1_on_timeout_0_when_idle_and_2_when_changes_failed(syncd, tree, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert syncd.cli("pause").returncode == 0
    _write(tree / "held.txt", "waiting for resume")
    r = syncd.cli("wait", "--timeout", "1.5")
    assert r.returncode == 1, r.stderr
    assert "not idle" in r.stderr
    assert syncd.cli("resume").returncode == 0
    assert syncd.cli("wait", "--timeout", "30").returncode == 0
    # A key longer than S3's 1024-byte limit can never be stored: parked, and `wait` says so.
    long_dir = tree.joinpath(*["d" * 200] * 6)
    _write(long_dir / "too-long.txt", "x")
    r = syncd.cli("wait", "--timeout", "30")
    assert r.returncode == 2, (r.returncode, r.stderr)
    failures = syncd.folder_status("main")["failures"]
    assert failures and "1024" in failures[0]["error"]


def test_status_reports_progress_counters(syncd, tree, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    for i in range(20):
        _write(tree / f"f{i}.txt", "x" * 100)
    syncd.wait_idle()
    folder = await_condition(lambda: (f := syncd.folder_status("main"))["files_done"] == 20 and f, 10,
                             "files_done to reach 20")
    assert folder["state"] == "watching"
    assert folder["pending"] == folder["in_flight"] == folder["failed"] == 0
    assert folder["bytes_done"] == 2000
    assert folder["objects"] == 20
    human = syncd.cli("status")
    assert human.returncode == 0 and "main: watching" in human.stdout


def test_file_above_multipart_threshold_arrives_intact_with_its_metadata(syncd, tree, s3, bucket):
    syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB")
    syncd.start()
    data = os.urandom(12 * 1024 * 1024 + 123)
    (tree / "big.bin").write_bytes(data)
    syncd.wait_idle(120)
    assert_mirror(s3, bucket, tree)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["Metadata"]["syncd-sha256"] == hashlib.sha256(data).hexdigest()
    assert head["Metadata"]["syncd-mtime-ns"] == str((tree / "big.bin").stat().st_mtime_ns)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: it really went multipart

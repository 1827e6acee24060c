"""The deletion guard against ordinary tools: routine work in a folder is not held, a
mistaken ``rm -rf`` of most of a large folder still is (README, "Deletions")."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .support.daemon import assert_mirror, await_condition, bucket_keys
from .support.fixtures import both_stores


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> None:
    env = {**os.environ, "HOME": str(repo.parent), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", *args], cwd=repo, env=env, input=stdin, check=True, capture_output=True)


def _repository_with_loose_objects(repo: Path, commits: int) -> None:
    """``commits`` small commits (3 objects each), every object loose, as after a day's work."""
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    stream = bytearray()
    for i in range(commits):
        msg, data = f"commit {i}\n".encode(), f"version {i}\n".encode()
        stream += b"commit refs/heads/main\n" + f"committer t <t@example.com> {1700000000 + i} +0000\n".encode()
        stream += b"data %d\n%s" % (len(msg), msg) + b"M 644 inline f%02d.txt\n" % (i % 20)
        stream += b"data %d\n%s\n" % (len(data), data)
    _git(repo, "fast-import", "--quiet", stdin=bytes(stream))  # one process instead of a commit each
    for pack in (repo / ".git" / "objects" / "pack").glob("*.pack"):
        blob = pack.read_bytes()
        for f in pack.parent.glob(pack.stem + ".*"):
            f.unlink()
        _git(repo, "unpack-objects", "-q", stdin=blob)  # loose again, as `git commit` leaves them
    _git(repo, "reset", "--hard", "-q")


def test_git_gc_in_a_watched_repository_is_not_held(syncd, tree, bucket, s3):
    repo = tree / "project"
    _repository_with_loose_objects(repo, 230)
    syncd.add_folder("main", tree, bucket)  # default max_delete: 50%
    syncd.start()
    syncd.wait_idle(120)
    before = len(bucket_keys(s3, bucket))
    assert before >= 700

    _git(repo, "gc", "-q")  # packs the loose objects and deletes them: most of the folder's files
    r = syncd.cli("wait", "--timeout", "120", timeout=150)
    assert r.returncode == 0, r.stderr
    assert syncd.folder_status("main")["state"] == "watching"
    after = assert_mirror(s3, bucket, tree)
    assert before - after > before / 2  # the wave was over 50 % of the folder


@both_stores
def test_renaming_a_large_directory_is_not_a_deletion_wave(syncd, tree, bucket, s3):
    (tree / "album").mkdir()
    for i in range(40):
        (tree / "album" / f"p{i:02}.jpg").write_bytes(os.urandom(200))
    syncd.add_folder("main", tree, bucket, max_delete=10)
    syncd.start()
    syncd.wait_idle()

    (tree / "album").rename(tree / "album-2024")  # 40 copies, then 40 deletions of the old keys
    r = syncd.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert assert_mirror(s3, bucket, tree) == 40


def test_rm_rf_of_most_of_a_large_folder_is_held_until_resume(syncd, tree, bucket, s3):
    for d in range(50):
        (tree / f"d{d:02}").mkdir()
        for i in range(100):
            (tree / f"d{d:02}" / f"f{i:03}.txt").write_bytes(b"%d/%d" % (d, i))
    syncd.add_folder("main", tree, bucket)  # default max_delete: 50%
    syncd.start()
    syncd.wait_idle(180)
    assert len(bucket_keys(s3, bucket)) == 5000

    for d in range(45):
        shutil.rmtree(tree / f"d{d:02}")  # 90 % of the files
    status = await_condition(lambda: (f := syncd.folder_status("main"))["state"] == "held" and f, 60,
                             "the deletion wave to hold the folder")
    assert "max_delete=50%" in status["last_error"] and "syncd resume main" in status["last_error"]
    t0 = time.monotonic()
    r = syncd.cli("wait", "--timeout", "60")
    assert r.returncode == 5 and time.monotonic() - t0 < 10 and "main is held" in r.stderr
    assert len(bucket_keys(s3, bucket)) == 5000  # nothing deleted remotely

    assert syncd.cli("resume", "main").returncode == 0
    syncd.wait_idle(120)
    assert assert_mirror(s3, bucket, tree) == 500
    assert syncd.folder_status("main")["state"] == "watching"

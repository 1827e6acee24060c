"""The folder's boundary holds: nothing outside the root ever reaches the bucket (issue 16).

Written as a local attacker acts: someone who may write inside a watched folder swaps a
directory for a symlink to a place only the daemon can read, at various depths and moments
(while the change settles, while it is in flight, while the daemon is stopped), or replaces
the root itself. Every check reads the objects' bytes: a unique marker that lives only
outside the folder must not appear in any of them.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from syncd import beneath, statedir
from syncd.beneath import NotBeneath, RootDir
from syncd.config import ConfigError, load_config
from syncd.paths import IgnoreRules
from syncd.scan import walk

from tests.support.daemon import assert_mirror, await_condition, bucket_keys

SECRET = f"SECRET-{uuid.uuid4().hex}"  # lives only outside the watched folder
MiB = 1024 * 1024
MODES = pytest.mark.parametrize("use_openat2", [
    pytest.param(True, marks=pytest.mark.skipif(not beneath.openat2_available(), reason="no openat2 here"),
                 id="openat2"),
    pytest.param(False, id="component-walk"),
])


def private_dir(tmp_path: Path, rest: str = "secret.txt", size: int = 0) -> Path:
    """A directory outside the folder holding ``rest`` with the secret marker in it."""
    private = tmp_path / "private"
    target = private / rest
    target.parent.mkdir(parents=True, exist_ok=True)
    body = (SECRET + "\n").encode()
    target.write_bytes(body * max(1, size // len(body)))
    return private


def assert_no_secret(s3: Any, bucket: str) -> None:
    """No object body holds a byte sequence that only exists outside the folder."""
    for key in bucket_keys(s3, bucket):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET.encode() not in body, f"{key} holds bytes from outside the folder"


def file_keys(s3: Any, bucket: str) -> list[str]:
    """The bucket's keys that mirror files (syncd's own markers under .syncd/ are not files)."""
    return sorted(k for k in bucket_keys(s3, bucket) if not k.startswith(".syncd/"))


def swap_for_symlink(tree: Path, victim: str, target: Path) -> None:
    """mv victim victim.moved && ln -s target victim"""
    (tree / victim).rename(tree / f"{victim}.moved")
    os.symlink(target, tree / victim)


def can_mount() -> bool:
    probe = Path(f"/tmp/syncd-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "none", str(probe)], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs CAP_SYS_ADMIN")


# ---------------------------------------------------------------------- the primitive (no daemon)

@MODES
def test_a_symlinked_parent_is_not_followed_by_open_or_lstat(tmp_path: Path, use_openat2: bool) -> None:
    root = tmp_path / "root"
    (root / "u").mkdir(parents=True)
    os.symlink(private_dir(tmp_path), root / "u" / "x")
    r = RootDir(str(root), use_openat2=use_openat2)
    with pytest.raises(NotBeneath):
        r.open_file("u/x/secret.txt")
    with pytest.raises(NotBeneath):
        r.lstat("u/x/secret.txt")
    with pytest.raises(NotBeneath):
        r.open_dir("u/x")


@MODES
def test_a_symlink_as_the_file_is_reported_by_lstat_but_never_opened(tmp_path: Path, use_openat2: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(private_dir(tmp_path) / "secret.txt", root / "link")
    r = RootDir(str(root), use_openat2=use_openat2)
    assert stat.S_ISLNK(r.lstat("link").st_mode)
    with pytest.raises(NotBeneath):
        r.open_file("link")


@MODES
def test_regular_files_beneath_the_root_open_and_stat_normally(tmp_path: Path, use_openat2: bool) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("inside")
    r = RootDir(str(root), use_openat2=use_openat2)
    fd = r.open_file("a/b/f.txt")
    try:
        assert os.read(fd, 100) == b"inside"
    finally:
        os.close(fd)
    assert r.lstat("a/b/f.txt").st_size == 6
    with pytest.raises(FileNotFoundError):
        r.open_file("a/b/missing")
    with pytest.raises(NotADirectoryError):
        r.lstat("a/b/f.txt/below-a-file")


@MODES
@pytest.mark.parametrize("rel", ["../outside", "a/../../outside", "/etc/passwd", "a//b", "./a", ""])
def test_paths_that_could_leave_the_root_are_refused(tmp_path: Path, use_openat2: bool, rel: str) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").write_text(SECRET)
    r = RootDir(str(root), use_openat2=use_openat2)
    with pytest.raises(NotBeneath):
        r.open_file(rel)


def test_a_fifo_swapped_in_does_not_hang_the_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe")
    fd = RootDir(str(root)).open_file("pipe")  # O_NONBLOCK: returns at once without a writer
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_the_root_held_open_is_read_even_after_its_path_is_swapped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "secret.txt").write_text("decoy")
    r = RootDir(str(root))
    assert r.still_there()
    root.rename(tmp_path / "root.moved")
    os.symlink(private_dir(tmp_path), root)
    assert not r.still_there()
    fd = r.open_file("secret.txt")
    try:
        assert os.read(fd, 100) == b"decoy"  # the directory it resolved, never the symlink's target
    finally:
        os.close(fd)
    assert not r.reopen() and r.open_error is not None  # a symlinked root is never opened


def test_the_walk_never_enters_a_directory_swapped_for_a_symlink_mid_walk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
        (root / d / "secret.txt").write_text("decoy")
    private = private_dir(tmp_path)
    seen = []
    for rel, _st in walk(str(root), IgnoreRules([], builtin=False)):
        seen.append(rel)
        if rel == "a/secret.txt":  # b/ is listed already, not yet entered
            swap_for_symlink(root, "b", private)
    assert seen == ["a/secret.txt"]


def test_a_folder_path_through_a_symlink_is_refused_by_the_config(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "via-link")
    (tmp_path / "folders.d").mkdir()
    (tmp_path / "syncd.yaml").write_text("state_dir: state\n")
    (tmp_path / "folders.d" / "f.yaml").write_text(f"path: {tmp_path / 'via-link'}\nbucket: bkt\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "syncd.yaml")
    assert "goes through a symlink" in str(info.value) and f"set path to {real}" in str(info.value)


def test_one_file_system_must_be_a_boolean(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "folders.d").mkdir()
    (tmp_path / "syncd.yaml").write_text("state_dir: state\n")
    (tmp_path / "folders.d" / "f.yaml").write_text(f"path: {tmp_path / 'tree'}\nbucket: bkt\none_file_system: 1\n")
    with pytest.raises(ConfigError, match="one_file_system.*expected true or false"):
        load_config(tmp_path / "syncd.yaml")
    (tmp_path / "folders.d" / "f.yaml").write_text(f"path: {tmp_path / 'tree'}\nbucket: bkt\n")
    assert load_config(tmp_path / "syncd.yaml").folders[0].one_file_system is False


@needs_mount
@pytest.mark.parametrize("use_openat2", [True, False])
def test_one_file_system_stops_at_mount_points(tmp_path: Path, use_openat2: bool) -> None:
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    (root / "top.txt").write_text("same filesystem")
    subprocess.run(["mount", "-t", "tmpfs", "none", str(root / "mnt")], check=True)
    try:
        (root / "mnt" / "other.txt").write_text("another filesystem")
        crossing = RootDir(str(root), use_openat2=use_openat2)
        assert sorted(rel for rel, _ in walk(crossing, IgnoreRules([]))) == ["mnt/other.txt", "top.txt"]
        os.close(crossing.open_file("mnt/other.txt"))
        staying = RootDir(str(root), one_file_system=True, use_openat2=use_openat2)
        assert [rel for rel, _ in walk(staying, IgnoreRules([]))] == ["top.txt"]
        with pytest.raises(NotBeneath) as info:
            staying.lstat("mnt/other.txt")
        assert info.value.errno == errno.EXDEV
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)


# ---------------------------------------------------------------------- swapped parents, daemon running

DEPTHS = [  # (file created, component swapped for a symlink)
    pytest.param("u/x/secret.txt", "u/x", id="the-issue"),
    pytest.param("x/secret.txt", "x", id="top-level"),
    pytest.param("a/b/c/d/secret.txt", "a/b", id="deep"),
]


@pytest.mark.parametrize(("path", "victim"), DEPTHS)
def test_a_parent_swapped_while_the_change_settles_leaks_nothing(syncd, tree, s3, bucket, tmp_path, path, victim):
    (tree / path).parent.mkdir(parents=True)
    (tree / path).with_name("old.txt").write_text("mirrored before")  # its object must go too
    syncd.add_folder("main", tree, bucket, settle="2s", settle_closed="2s")  # a finished write settles too
    syncd.start()
    syncd.wait_idle()
    rest = os.path.relpath(path, victim)
    private = private_dir(tmp_path, rest)
    (private / rest).with_name("old.txt").write_text(SECRET)
    (tree / path).write_text("decoy")            # a create event: pending, settling
    swap_for_symlink(tree, victim, private)      # ...and the parent is a symlink before it is due
    syncd.wait_idle()
    assert_no_secret(s3, bucket)
    assert_mirror(s3, bucket, tree)  # the decoy under its new name; nothing through the symlink
    assert skipped_logged(syncd, path)


def skipped_logged(daemon: Any, path: str) -> bool:
    return any("event=path.skipped" in line and f"path={path} " in line for line in daemon.log().splitlines())


def test_a_parent_swapped_while_a_small_upload_is_in_flight_leaks_nothing(proxied_syncd, s3_proxy, tree, s3,
                                                                          bucket, tmp_path):
    proxied_syncd.add_folder("main", tree, bucket, settle="100ms")
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    private = private_dir(tmp_path)
    s3_proxy.set_delay(2.0)  # every request waits: the PUT is in flight when the swap happens
    (tree / "u" / "x").mkdir(parents=True)
    (tree / "u" / "x" / "secret.txt").write_text("decoy")
    await_condition(lambda: proxied_syncd.folder_status("main")["in_flight"] >= 1, 30, "the upload in flight")
    swap_for_symlink(tree, "u/x", private)
    proxied_syncd.wait_idle(120)
    s3_proxy.set_delay(0)
    assert_no_secret(s3, bucket)
    assert_mirror(s3, bucket, tree)
    assert "u/x/secret.txt" not in file_keys(s3, bucket)  # its object went as a deleted file's would


def test_a_parent_swapped_between_the_parts_of_a_large_upload_leaks_nothing(proxied_syncd, s3_proxy, tree, s3,
                                                                            bucket, tmp_path):
    proxied_syncd.add_folder("main", tree, bucket, settle="100ms", multipart_threshold="5MiB",
                             part_size="5MiB", part_concurrency=1)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    private = private_dir(tmp_path, size=11 * MiB)  # the same size: a re-opened path would fit
    (tree / "u" / "x").mkdir(parents=True)
    s3_proxy.set_delay(0.5)
    s3_proxy.reset_counts()
    (tree / "u" / "x" / "secret.txt").write_bytes(b"d" * (11 * MiB))
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 1, 60, "the first part to be sent")
    swap_for_symlink(tree, "u/x", private)  # parts 2 and 3 are read after this
    proxied_syncd.wait_idle(180)
    s3_proxy.set_delay(0)
    assert_no_secret(s3, bucket)
    assert_mirror(s3, bucket, tree)


# ---------------------------------------------------------------------- swapped while the daemon is stopped

@pytest.mark.parametrize("journal", ["intact", "lost"])
def test_a_parent_swapped_while_the_daemon_is_stopped_leaks_nothing(syncd, tree, s3, bucket, tmp_path, journal):
    """Caught by the startup scan: GNU find's listing with an intact journal, the Python walk
    and the bucket adoption with a lost one."""
    syncd.add_folder("main", tree, bucket)
    (tree / "u" / "x").mkdir(parents=True)
    (tree / "u" / "x" / "secret.txt").write_text("decoy")
    (tree / "u" / "keep.txt").write_text("unrelated")
    syncd.start()
    syncd.wait_idle()
    assert syncd.stop() == 0
    swap_for_symlink(tree, "u/x", private_dir(tmp_path))
    if journal == "lost":
        for f in (syncd.state_dir / "folders").iterdir():
            f.unlink()
    syncd.start()
    syncd.wait_idle()
    assert_no_secret(s3, bucket)
    assert_mirror(s3, bucket, tree)


# ---------------------------------------------------------------------- the root itself

def test_a_root_replaced_by_a_symlink_is_never_read_through(syncd, tree, s3, bucket, tmp_path):
    (tree / "a.txt").write_text("inside")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    private = private_dir(tmp_path)
    away = tree.with_name("tree.away")
    tree.rename(away)
    os.symlink(private, tree)
    status = await_condition(lambda: (f := syncd.folder_status("main"))["state"] == "error" and f, 30,
                             "the folder to refuse its symlinked root")
    assert "symlink" in status["last_error"]
    (private / "more.txt").write_text(SECRET)
    assert syncd.cli("reconcile", "main").returncode == 0  # a scan asked for now reads nothing either
    assert syncd.cli("resume", "main").returncode == 0      # and a symlink is never accepted as the root
    await_condition(lambda: (f := syncd.folder_status("main"))["state"] == "error"
                    and "symlink" in (f["last_error"] or ""), 30, "the folder to stay in error")
    assert_no_secret(s3, bucket)
    assert file_keys(s3, bucket) == ["a.txt"]

    tree.unlink()
    away.rename(tree)
    await_condition(lambda: syncd.folder_status("main")["state"] == "watching", 60, "recovery")
    (tree / "b.txt").write_text("normal work again")
    syncd.wait_idle()
    assert_mirror(s3, bucket, tree)


def test_a_root_swapped_for_a_symlink_while_stopped_is_refused_at_start(syncd, tree, s3, bucket, tmp_path):
    (tree / "a.txt").write_text("inside")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    assert syncd.stop() == 0
    tree.rename(tree.with_name("tree.away"))
    os.symlink(private_dir(tmp_path), tree)
    syncd.start(wait_ready=False)
    assert syncd.proc is not None and syncd.proc.wait(30) == 78  # EX_CONFIG, naming the real path
    assert "goes through a symlink" in syncd.log()
    assert_no_secret(s3, bucket)
    assert file_keys(s3, bucket) == ["a.txt"]


@needs_mount
def test_a_filesystem_mounted_over_the_root_is_never_read(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("inside")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(tree)], check=True)
    try:
        (tree / "secret.txt").write_text(SECRET)
        # Like a root replaced by another directory: a guard hold, until the mount goes or
        # `syncd resume` accepts the new root (a symlinked root is an error instead).
        status = await_condition(lambda: (f := syncd.folder_status("main"))["state"] == "held" and f, 30,
                                 "the folder to refuse the mounted-over root")
        assert "replaced or unmounted" in status["last_error"]
        assert syncd.cli("reconcile", "main").returncode == 0
        assert_no_secret(s3, bucket)
    finally:
        subprocess.run(["umount", str(tree)], check=True)
    await_condition(lambda: syncd.folder_status("main")["state"] == "watching", 60, "recovery")
    syncd.wait_idle()
    assert_mirror(s3, bucket, tree)


@needs_mount
def test_one_file_system_leaves_mounts_inside_the_folder_out(syncd, tree, s3, bucket):
    (tree / "top.txt").write_text("same filesystem")
    (tree / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(tree / "mnt")], check=True)
    try:
        (tree / "mnt" / "other.txt").write_text("another filesystem")
        syncd.add_folder("main", tree, bucket, one_file_system=True)
        syncd.start()
        syncd.wait_idle()
        (tree / "mnt" / "later.txt").write_text("an event from across the mount")
        (tree / "later.txt").write_text("an event from this side")
        syncd.wait_idle()
        assert file_keys(s3, bucket) == ["later.txt", "top.txt"]
    finally:
        syncd.stop()
        subprocess.run(["umount", str(tree / "mnt")], check=True)


# ---------------------------------------------------------------------- state permissions

@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_state_dir_and_journals_are_private_whatever_the_umask(syncd, tree, bucket, umask):
    (tree / "a.txt").write_text("x")
    syncd.add_folder("main", tree, bucket)
    old = os.umask(umask)  # the daemon inherits the umask it is started with
    try:
        syncd.start()
    finally:
        os.umask(old)
    syncd.wait_idle()
    assert syncd.cli("reconcile", "main", "--wait", "--timeout", "60").returncode == 0
    assert stat.S_IMODE(syncd.state_dir.stat().st_mode) == 0o700
    folders = syncd.state_dir / "folders"
    assert stat.S_IMODE(folders.stat().st_mode) == 0o700
    journals = sorted(p.name for p in folders.iterdir())
    assert "main.sqlite3" in journals and "main.sqlite3-wal" in journals
    for p in folders.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p.name} is {oct(p.stat().st_mode)}"


def test_a_loose_state_dir_from_before_is_tightened(syncd, tree, bucket):
    folders = syncd.state_dir / "folders"
    folders.mkdir(parents=True)
    os.chmod(syncd.state_dir, 0o755)
    os.chmod(folders, 0o755)
    (folders / "main.sqlite3").touch()
    os.chmod(folders / "main.sqlite3", 0o644)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    assert stat.S_IMODE(syncd.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(folders.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folders.iterdir())


def test_a_shared_state_dir_is_left_alone_but_the_journals_directory_is_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    (shared / "someone-else.txt").write_text("not syncd's")
    folders = statedir.prepare(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # not ours to change
    assert stat.S_IMODE(folders.stat().st_mode) == 0o700

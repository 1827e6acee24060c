"""Exactness: whatever crashes and lost answers happen, no object outlives its file, and a
prefix has one owner (DESIGN.md, "No object outlives its file", "One owner per prefix")."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .support.daemon import Syncd, assert_mirror, await_condition, bucket_keys, bucket_tree
from .support.fixtures import both_stores

LARGE = 12 * 1024 * 1024  # three parts of 5 MiB with the settings below: multipart
MULTIPART = {"multipart_threshold": "8MiB", "part_size": "5MiB"}
NO_WAVE_GUARD = {"max_delete": 1_000_000}  # these workloads delete much of a small tree on purpose


class Workload(threading.Thread):
    """Creates, modifies, renames (files and directories) and deletes files at random,
    including two multipart-sized files, until stopped. Only this thread touches the tree."""

    def __init__(self, root: Path, seed: int):
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None
        self._n = 0

    def _files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file()]

    def _dirs(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_dir()]

    def _new_name(self, parent: Path, stem: str) -> Path:
        self._n += 1
        return parent / f"{stem}-{self._n}"

    def step(self) -> None:
        rng = self.rng
        files = self._files()
        small = [f for f in files if not f.name.startswith("large")]
        dirs = self._dirs()
        op = rng.choices(["create", "modify", "rename", "rename_dir", "delete", "delete_dir", "large"],
                         [30, 20, 15, 6, 15, 3, 3])[0]
        if op == "create" or not small:
            parent = rng.choice([self.root, *dirs]) if dirs and rng.random() < 0.7 else self.root
            if rng.random() < 0.2:
                parent = self._new_name(parent, "dir")
                parent.mkdir()
            self._new_name(parent, "file").with_suffix(".dat").write_bytes(rng.randbytes(rng.randint(1, 20_000)))
        elif op == "modify":
            rng.choice(small).write_bytes(rng.randbytes(rng.randint(1, 20_000)))
        elif op == "rename":
            src = rng.choice(small)
            target = rng.choice([self.root, *dirs])
            src.rename(self._new_name(target, "moved").with_suffix(".dat"))
        elif op == "rename_dir" and dirs:
            d = rng.choice(dirs)
            d.rename(self._new_name(d.parent, "dir"))
        elif op == "delete":
            rng.choice(small).unlink()
        elif op == "delete_dir" and dirs:
            shutil.rmtree(rng.choice(dirs))
        elif op == "large":
            large = [f for f in files if f.name.startswith("large")]
            if len(large) < 2:
                (self.root / f"large-{self._n}.bin").write_bytes(rng.randbytes(LARGE))
                self._n += 1
            elif rng.random() < 0.5:
                victim = rng.choice(large)
                victim.write_bytes(rng.randbytes(LARGE + rng.randint(0, 4096)))
            else:
                victim = rng.choice(large)
                victim.rename(self.root / f"large-{self._n}.bin")  # a multipart object copied server-side
                self._n += 1
        self.ops += 1

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
                self.stop_event.wait(self.rng.uniform(0.005, 0.04))
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)
        if self.error is not None:
            raise self.error


def _incomplete_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _left_behind(s3: Any, bucket: str, tree: Path) -> list[str]:
    """Keys whose file no longer exists (objects that outlived their file)."""
    local = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    return sorted(set(bucket_keys(s3, bucket)) - local)


# ---------------------------------------------------------------------- kill -9 at random instants

@pytest.mark.slow
@both_stores
def test_kill9_at_20_random_instants_of_a_mixed_workload_leaves_the_bucket_exact(syncd, tree, s3, bucket, backend):
    rng = random.Random(15)
    rounds = 20 if backend == "s3" else 6  # Azurite is far slower than SeaweedFS: a shorter loop
    syncd.add_folder("main", tree, bucket, **MULTIPART, **NO_WAVE_GUARD)
    for i in range(200):
        (tree / f"seed-{i % 10}").mkdir(exist_ok=True)
        (tree / f"seed-{i % 10}" / f"f{i}.dat").write_bytes(rng.randbytes(rng.randint(1, 20_000)))
    workload = Workload(tree, seed=16)
    workload.start()
    during_startup = 0
    for round_ in range(rounds):
        # Some kills land during start-up (before the socket answers, during the scans).
        early = round_ % 4 == 1
        syncd.start(wait_ready=not early)
        # The random instant is the point of this test: the daemon dies wherever it is.
        time.sleep(rng.uniform(0.05, 0.5) if early else rng.uniform(0.5, 4.0))
        syncd.kill9()
        during_startup += early
    workload.finish()
    started = time.monotonic()
    syncd.start()
    syncd.wait_idle(300)
    print(f"workload ops: {workload.ops}; kills: {rounds} ({during_startup} during start-up); "
          f"converged {time.monotonic() - started:.1f}s after the last restart")
    assert _left_behind(s3, bucket, tree) == []
    assert assert_mirror(s3, bucket, tree) > 0  # bytes compared, not only keys
    assert _incomplete_uploads(s3, bucket) == []
    # A full pass afterwards finds nothing to repair.
    assert syncd.cli("reconcile", "--wait", "--timeout", "120").returncode == 0
    remote = syncd.folder_status("main")["last_reconcile"]
    assert (remote["drift"], remote["orphans"], remote["foreign"]) == (0, 0, 0), remote
    assert_mirror(s3, bucket, tree)


# ---------------------------------------------------------------------- lost answers

def _mixed_changes(tree: Path, rng: random.Random, round_: int) -> None:
    """Deletes, file and directory renames, modifications and a multipart file."""
    files = sorted(p for p in tree.rglob("*.dat"))
    for p in files[::7]:
        p.unlink()
    for i, p in enumerate(files[1::9]):
        if p.exists():
            p.rename(p.with_name(f"renamed-{round_}-{i}.dat"))
    (tree / "d3").rename(tree / f"d3-moved-{round_}")
    shutil.rmtree(tree / "d5")
    for p in files[2::11]:
        if p.exists():
            p.write_bytes(rng.randbytes(rng.randint(1, 5000)))
    (tree / "large.bin").rename(tree / "large-renamed.bin")
    (tree / "large2.bin").write_bytes(rng.randbytes(LARGE))


def _populate(tree: Path, rng: random.Random) -> None:
    for i in range(400):
        d = tree / f"d{i % 8}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.dat").write_bytes(rng.randbytes(rng.randint(1, 5000)))
    (tree / "large.bin").write_bytes(rng.randbytes(LARGE))


def test_lost_answers_to_writes_and_deletes_leave_the_mirror_exact(proxied_syncd, s3_proxy, tree, s3, bucket):
    rng = random.Random(21)
    _populate(tree, rng)
    s3_proxy.stall_seconds = 1.0  # a lost answer: the connection closes after a second of silence
    writes = ["PutObject", "CopyObject", "DeleteObjects", "CompleteMultipartUpload"]
    proxied_syncd.add_folder("main", tree, bucket, **MULTIPART, **NO_WAVE_GUARD)
    proxied_syncd.start()
    proxied_syncd.wait_idle(300)
    # 2 % of answers lost, amid 4 % SlowDown, 2 % InternalError and 2 % connection resets (the
    # mix a user saw leave an object of a deleted file behind): one kind drawn per faulty request.
    s3_proxy.set_faults(0.10, ["lose-response"] * 2 + ["503"] * 4 + ["500"] * 2 + ["reset"] * 2, ops=writes, seed=22)
    started = time.monotonic()
    for round_ in range(3):
        _mixed_changes(tree, rng, round_)
        proxied_syncd.wait_idle(300)
        (tree / "d3").mkdir()  # the names the next round renames and deletes
        (tree / "d5").mkdir()
        for i in range(40):
            (tree / ("d3" if i % 2 else "d5") / f"again-{round_}-{i}.dat").write_bytes(rng.randbytes(100))
        (tree / "large-renamed.bin").rename(tree / "large.bin")
        proxied_syncd.wait_idle(300)
    # And a workload that deletes and renames files while their writes are still being retried.
    workload = Workload(tree, seed=23)
    workload.start()
    await_condition(lambda: workload.ops >= 400, 60, "400 workload operations")
    workload.finish()
    proxied_syncd.wait_idle(300)
    elapsed = time.monotonic() - started
    lost = sum(c["lose-response"] for c in s3_proxy.injected().values())
    print(f"answers lost: {lost} ({s3_proxy.injected()}); converged in {elapsed:.1f}s")
    assert lost >= 5, "answers must really have been lost"
    assert _left_behind(s3, bucket, tree) == []
    assert_mirror(s3, bucket, tree)
    assert _incomplete_uploads(s3, bucket) == []


@pytest.mark.parametrize("then", ["delete", "rename"])
def test_a_put_whose_answers_were_all_lost_leaves_no_object_once_its_file_is_gone(proxied_syncd, s3_proxy, tree, s3,
                                                                                  bucket, then):
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.stall_seconds = 0.2
    s3_proxy.set_faults(1.0, ["lose-response"], ops=["PutObject"])  # the server stores it; nobody hears
    (tree / "a.txt").write_text("written, but the answer never came")
    await_condition(lambda: "a.txt" in bucket_keys(s3, bucket), 30, "the object stored upstream")
    await_condition(lambda: "transfer.failed" in proxied_syncd.log(), 60, "the upload given up for now")
    if then == "delete":
        (tree / "a.txt").unlink()
    else:
        (tree / "a.txt").rename(tree / "b.txt")
    s3_proxy.clear_faults()
    proxied_syncd.wait_idle(120)
    assert _left_behind(s3, bucket, tree) == []
    assert_mirror(s3, bucket, tree)


# ---------------------------------------------------------------------- one owner per prefix

def _owner_marker(s3: Any, bucket: str, prefix: str = "") -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}.syncd/owner")["Body"].read())  # type: ignore[no-any-return]


def _second_daemon(tmp_path: Path, s3_server: Any, endpoint: str) -> Syncd:
    return Syncd(tmp_path / "second", endpoint, s3_server.access_key, s3_server.secret_key)


def test_every_object_carries_the_owner_id_of_the_marker(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("a")
    (tree / "big.bin").write_bytes(random.Random(1).randbytes(LARGE))
    syncd.add_folder("main", tree, bucket, **MULTIPART, **NO_WAVE_GUARD)
    syncd.start()
    syncd.wait_idle()
    owner = _owner_marker(s3, bucket)["owner"]
    assert syncd.folder_status("main")["owner"] == owner
    (tree / "a.txt").rename(tree / "b.txt")  # a server-side copy keeps it too
    syncd.wait_idle()
    for key in ("b.txt", "big.bin"):
        assert s3.head_object(Bucket=bucket, Key=key)["Metadata"]["syncd-owner"] == owner


def test_a_second_daemon_on_a_claimed_prefix_is_in_error_and_writes_nothing(syncd, tree, s3, bucket, tmp_path,
                                                                            s3_server, s3_proxy):
    (tree / "mine.txt").write_text("first daemon's file")
    syncd.add_folder("main", tree, bucket, prefix="p/")
    syncd.start()
    syncd.wait_idle()
    before = bucket_tree(s3, bucket, "p/")
    owner = _owner_marker(s3, bucket, "p/")["owner"]
    other_tree = tmp_path / "other"
    other_tree.mkdir()
    (other_tree / "theirs.txt").write_text("second daemon's file")
    second = _second_daemon(tmp_path, s3_server, s3_proxy.endpoint)  # a copied config on a cloned machine
    second.add_folder("main", other_tree, bucket, prefix="p/")
    try:
        second.start()
        status = await_condition(lambda: (s := second.folder_status("main"))["state"] == "error" and s, 30,
                                 "the second daemon's folder in error")
        assert owner[:12] in status["last_error"] and "syncd resume main --take-over" in status["last_error"]
        assert str(tree) in status["last_error"]  # where the owner runs
        r = second.cli("wait", "--timeout", "3")
        assert r.returncode != 0
        writes = {op: n for op, n in s3_proxy.counts().items()
                  if op in ("PutObject", "CopyObject", "DeleteObjects", "DeleteObject", "CreateMultipartUpload")}
        assert writes == {}
        assert bucket_tree(s3, bucket, "p/") == before
        assert _owner_marker(s3, bucket, "p/")["owner"] == owner
    finally:
        second.stop()


def test_take_over_claims_the_prefix_and_the_previous_owner_stops(syncd, tree, s3, bucket, tmp_path, s3_server):
    (tree / "mine.txt").write_text("first daemon's file")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    other_tree = tmp_path / "other"
    other_tree.mkdir()
    (other_tree / "theirs.txt").write_text("second daemon's file")
    second = _second_daemon(tmp_path, s3_server, s3_server.endpoint)
    second.add_folder("main", other_tree, bucket)
    try:
        second.start()
        await_condition(lambda: second.folder_status("main")["state"] == "error", 30, "the folder in error")
        r = second.cli("resume", "main", "--take-over")
        assert r.returncode == 0, r.stderr
        second.wait_idle(60)
        new_owner = _owner_marker(s3, bucket)["owner"]
        assert second.folder_status("main")["owner"] == new_owner
        # The prefix is now the second folder's mirror; the first daemon's objects were taken over with it.
        assert_mirror(s3, bucket, other_tree)
        # The first daemon notices at its next pass and stops writing.
        syncd.cli("reconcile")
        status = await_condition(lambda: (s := syncd.folder_status("main"))["state"] == "error" and s, 30,
                                 "the first daemon's folder in error")
        assert new_owner[:12] in status["last_error"]
        (tree / "late.txt").write_text("written after the take-over")
        await_condition(lambda: syncd.folder_status("main")["pending"] >= 1, 30, "the change journaled")
        assert "late.txt" not in bucket_keys(s3, bucket)  # journaled, and held: nothing is dispatched
    finally:
        second.stop()


@both_stores
def test_a_deleted_journal_recovers_the_owner_id_and_uploads_nothing(proxied_syncd, s3_proxy, tree, s3, bucket):
    for i in range(50):
        (tree / f"f{i}.txt").write_text(f"file {i}")
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    owner = _owner_marker(s3, bucket)["owner"]
    assert proxied_syncd.stop() == 0
    for db in (proxied_syncd.state_dir / "folders").glob("main.sqlite3*"):
        db.unlink()
    s3_proxy.reset_counts()
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    status = proxied_syncd.folder_status("main")
    assert status["state"] == "watching" and status["owner"] == owner
    counts = s3_proxy.counts()
    assert counts.get("PutObject", 0) == 0 and counts.get("CopyObject", 0) == 0, counts
    assert_mirror(s3, bucket, tree)


# ---------------------------------------------------------------------- own leftovers and foreign objects

def test_an_object_of_the_folders_own_id_whose_file_is_gone_is_deleted_by_the_remote_pass(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("a")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    owner = _owner_marker(s3, bucket)["owner"]
    # What a write whose outcome was never recorded leaves: our id, no manifest row, no file.
    s3.put_object(Bucket=bucket, Key="leftover.txt", Body=b"x",
                  Metadata={"syncd-mtime-ns": "1", "syncd-sha256": "00", "syncd-owner": owner})
    assert syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    assert syncd.folder_status("main")["last_reconcile"]["orphans"] == 1
    syncd.wait_idle()
    assert sorted(bucket_keys(s3, bucket)) == ["a.txt"]


def test_foreign_objects_survive_every_pass_and_a_journal_rebuild(proxied_syncd, s3_proxy, tree, s3, bucket):
    (tree / "mine.txt").write_text("mine")
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3.put_object(Bucket=bucket, Key="plain.bin", Body=b"another client")
    # Written by another syncd (another owner id) and by an old one (no id): not ours either.
    s3.put_object(Bucket=bucket, Key="other-owner.bin", Body=b"x",
                  Metadata={"syncd-mtime-ns": "1", "syncd-sha256": "00", "syncd-owner": "someone-else"})
    s3.put_object(Bucket=bucket, Key="dir/no-owner.bin", Body=b"y", Metadata={"syncd-mtime-ns": "1"})
    foreign = {"plain.bin", "other-owner.bin", "dir/no-owner.bin"}
    for _ in range(2):
        assert proxied_syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
        assert proxied_syncd.folder_status("main")["foreign"] == 3
    assert foreign <= set(bucket_keys(s3, bucket))
    # The second pass decided from the listing alone: the ETags were those it had seen.
    s3_proxy.reset_counts()
    assert proxied_syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    assert s3_proxy.counts().get("HeadObject", 0) == 0
    assert proxied_syncd.stop() == 0
    for db in (proxied_syncd.state_dir / "folders").glob("main.sqlite3*"):
        db.unlink()
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    assert proxied_syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    assert set(bucket_keys(s3, bucket)) == foreign | {"mine.txt"}


def test_a_local_dot_syncd_directory_is_reported_and_never_uploaded_over_the_marker(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("a")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    marker = s3.get_object(Bucket=bucket, Key=".syncd/owner")["Body"].read()
    (tree / ".syncd").mkdir()
    (tree / ".syncd" / "owner").write_text("a local file of that name")
    r = syncd.cli("wait", "--timeout", "30")
    assert r.returncode == 2, (r.returncode, r.stderr)
    failure = syncd.folder_status("main")["failures"][0]
    assert failure["path"] == ".syncd/owner" and "rename it" in failure["error"]
    assert s3.get_object(Bucket=bucket, Key=".syncd/owner")["Body"].read() == marker
    status = syncd.folder_status("main")
    assert status["foreign"] == 0

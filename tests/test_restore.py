"""`syncd restore`: the mirror back into a directory, verified, mtimes to the nanosecond,
never partial under a real name, never outside --to; and as it was at a time."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from syncd.config import FolderConfig
from syncd.restore import Restorer
from syncd.snapshot import name_problem
from syncd.store import RemoteObject, fetch_whole_by_fetch

from .support.daemon import Syncd, await_condition, local_tree

MiB = 1024 * 1024


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".syncd-restore-*")]


def _restore(syncd: Syncd, target: Path, *extra: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    r = syncd.cli("restore", "main", "--to", str(target), "--json", *extra, timeout=timeout)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def _sync(syncd: Syncd, tree: Path, bucket: str, **settings: Any) -> None:
    syncd.add_folder("main", tree, bucket, prefix="m/", **settings)
    syncd.start()
    syncd.wait_idle()
    assert syncd.stop() == 0


@pytest.fixture
def synced(proxied_syncd: Syncd, tree: Path, bucket: str) -> Syncd:
    """Small files, a multipart file, unicode names and deep paths, synced through the proxy."""
    rng = random.Random(19)
    for i in range(30):
        _write(tree / f"dir {i % 4}" / f"small-{i}.txt", rng.randbytes(rng.randrange(0, 5000)))
    for name in ("naïve café.txt", "日本語/ファイル.md", "emoji 🎉/x.bin", "a+b=c&d/%20 literal.txt"):
        _write(tree / name, name.encode() * 3)
    _write(tree.joinpath(*[f"level {i}" for i in range(20)]) / "bottom.txt", b"deep")
    _write(tree / "big.bin", rng.randbytes(12 * MiB))  # 3 parts of 5 MiB: multipart up, ranged GETs down
    os.utime(tree / "big.bin", ns=(1, 1_600_000_000_123_456_789))
    _sync(proxied_syncd, tree, bucket, multipart_threshold="8MiB", part_size="5MiB")
    return proxied_syncd


def test_restore_into_an_empty_dir_equals_the_tree_in_bytes_and_nanosecond_mtimes(synced, tree, tmp_path, s3_proxy):
    target = tmp_path / "restored"
    s3_proxy.reset_counts()
    code, doc = _restore(synced, target)
    assert code == 0, json.dumps(doc)
    assert local_tree(target) == local_tree(tree)
    assert _mtimes(target) == _mtimes(tree)
    assert doc["restored"] == 36 and doc["failed"] == [] and not _temps(target)
    assert s3_proxy.counts()["GetObject"] == 35 + 3  # the 12 MiB file as three ranged GETs


def test_a_second_restore_makes_no_get(synced, tree, tmp_path, s3_proxy):
    target = tmp_path / "restored"
    assert _restore(synced, target)[0] == 0
    s3_proxy.reset_counts()
    code, doc = _restore(synced, target)
    assert code == 0 and doc["already_correct"] == 36 and doc["restored"] == 0
    assert s3_proxy.counts().get("GetObject", 0) == 0


def test_a_local_file_with_other_content_is_kept_unless_force(synced, tree, tmp_path):
    target = tmp_path / "restored"
    _write(target / "dir 1" / "small-1.txt", b"mine")
    code, doc = _restore(synced, target)
    assert code == 1 and [k["path"] for k in doc["kept"]] == ["dir 1/small-1.txt"]
    assert (target / "dir 1" / "small-1.txt").read_bytes() == b"mine"
    code, doc = _restore(synced, target, "--force")
    assert code == 0
    assert local_tree(target) == local_tree(tree)


def test_path_patterns_restore_a_subset(synced, tree, tmp_path):
    target = tmp_path / "restored"
    code, doc = _restore(synced, target, "--path", "dir 2/", "--path", "*.md")
    assert code == 0
    assert sorted(local_tree(target)) == sorted(p for p in local_tree(tree) if p.startswith("dir 2/")
                                                or p.endswith(".md"))


def test_an_object_altered_behind_syncds_back_is_reported_and_not_written(synced, tmp_path, s3, bucket):
    key = "m/dir 3/small-3.txt"
    meta = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"tampered", Metadata=meta)  # the old syncd-sha256
    target = tmp_path / "restored"
    code, doc = _restore(synced, target)
    assert code == 1
    assert [f["path"] for f in doc["failed"]] == ["dir 3/small-3.txt"]
    assert "checksum mismatch" in doc["failed"][0]["reason"]
    assert not (target / "dir 3" / "small-3.txt").exists() and not _temps(target)


def test_throttling_and_server_errors_are_retried_and_the_restore_is_exact(synced, tree, tmp_path, s3_proxy):
    s3_proxy.set_faults(0.3, ["503", "500"], ops=["GetObject"], seed=19)
    code, doc = _restore(synced, tmp_path / "restored")
    s3_proxy.clear_faults()
    assert code == 0, json.dumps(doc)
    assert local_tree(tmp_path / "restored") == local_tree(tree)
    assert sum(s3_proxy.injected()["GetObject"].values()) > 0


def test_access_denied_is_reported_per_file_and_nothing_is_written(synced, tmp_path, s3_proxy):
    s3_proxy.set_faults(1.0, ["403"], ops=["GetObject"])
    code, doc = _restore(synced, tmp_path / "restored")
    s3_proxy.clear_faults()
    assert code == 1 and len(doc["failed"]) == 36
    assert all("AccessDenied" in f["reason"] for f in doc["failed"])
    assert not [p for p in (tmp_path / "restored").rglob("*") if p.is_file()]


def test_a_killed_restore_leaves_nothing_partial_and_a_rerun_is_exact(proxied_syncd, tree, bucket, tmp_path, s3_proxy):
    for i in range(300):
        _write(tree / f"d{i % 10}" / f"f{i}.bin", os.urandom(32 * 1024))
    _sync(proxied_syncd, tree, bucket)
    target = tmp_path / "restored"
    s3_proxy.set_delay(0.02)  # slow enough to be mid-restore when killed
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "restore", "main", "--to", str(target), "--workers", "4",
                             "-c", str(proxied_syncd.config)], env=proxied_syncd.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await_condition(lambda: target.exists() and sum(1 for _ in target.rglob("f*.bin")) >= 30, 60,
                    "restore to be under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    s3_proxy.set_delay(0)
    done = local_tree(target, skip=[p.relative_to(target).as_posix() for p in _temps(target)])
    original = local_tree(tree)
    assert len(done) < len(original)
    assert all(original[p] == h for p, h in done.items() if not p.rpartition("/")[2].startswith(".syncd-restore-"))
    code, doc = _restore(proxied_syncd, target)
    assert code == 0, doc
    assert local_tree(target) == original and not _temps(target)


def test_sigterm_stops_a_restore_with_exit_130_leaving_no_temp_file(proxied_syncd, tree, bucket, tmp_path, s3_proxy):
    for i in range(150):
        _write(tree / f"d{i % 5}" / f"f{i}.bin", os.urandom(32 * 1024))
    _sync(proxied_syncd, tree, bucket)
    target = tmp_path / "restored"
    s3_proxy.set_delay(0.02)
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "restore", "main", "--to", str(target), "--workers", "2",
                             "-c", str(proxied_syncd.config)], env=proxied_syncd.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await_condition(lambda: target.exists() and sum(1 for _ in target.rglob("f*.bin")) >= 10, 60,
                    "restore to be under way")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    s3_proxy.set_delay(0)
    original, done = local_tree(tree), local_tree(target)
    assert not _temps(target) and 10 <= len(done) < len(original)
    assert all(original[p] == h for p, h in done.items())


def test_hostile_keys_and_a_planted_symlink_write_nothing_outside_the_target(syncd, s3, bucket, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "restored"
    target.mkdir()
    (target / "a").symlink_to(outside)
    hostile = ["../escape", "/abs", "x//y", "./dot", "d/../../up"]
    for key in ["a/planted.txt", "fine.txt"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"payload")
    for key in hostile:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"payload")
        except ClientError:
            pass  # SeaweedFS refuses some such keys itself (InvalidRequest); S3 stores them all
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    r = syncd.cli("restore", f"s3://{bucket}/", "--to", str(target), "--json", "--endpoint-url", syncd.endpoint)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape").exists() and not Path("/abs").exists()
    assert {k["key"] for k in doc["refused"]} == {k for k in hostile if k in listed}
    assert [f["path"] for f in doc["failed"]] == ["a/planted.txt"] and "symlink" in doc["failed"][0]["reason"]
    assert (target / "fine.txt").read_bytes() == b"payload"
    assert (target / "a").is_symlink()


class _ListedAsIs:
    """A bucket that lists and serves keys exactly as written, as AWS S3 does (SeaweedFS
    refuses or normalises ``..`` and empty components, so the server cannot list them)."""

    bucket = "hostile"
    parallel_fetch = False
    background_fetch = False

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def _info(self, key: str) -> RemoteObject:
        body = self.objects[key]
        return RemoteObject(key, len(body), hashlib.md5(body).hexdigest(),
                            {"syncd-sha256": hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": "1"})

    def list(self, prefix: str) -> Any:
        yield [RemoteObject(k, len(v), hashlib.md5(v).hexdigest()) for k, v in self.objects.items()]

    def head(self, key: str, version: str | None = None) -> RemoteObject:
        return self._info(key)

    def get(self, key: str, version: str | None = None, first: int = 0, last: int | None = None) -> Any:
        info, body = self._info(key), self.objects[key]

        class Body:
            def __init__(self) -> None:
                self.info = info

            def chunks(self, size: int) -> Any:
                yield body[first:None if last is None else last + 1]

            def close(self) -> None:
                pass
        return Body()

    def fetch(self, key: str, version: str | None, start: Any) -> RemoteObject:
        info = self._info(key)
        start(info)(self.objects[key])
        return info

    def fetch_whole(self, key: str, version: str | None, done: Any) -> None:
        fetch_whole_by_fetch(self, key, version, done)  # type: ignore[arg-type]


def test_keys_listed_with_dot_dot_absolute_or_empty_components_are_refused_and_never_written(tmp_path):
    target = tmp_path / "deep" / "restored"
    hostile = ["../escape", "../../escape2", "/abs", "a//b", "./dot", "d/../../up"]
    store = _ListedAsIs({k: b"payload" for k in hostile + ["ok.txt"]})
    folder = FolderConfig(name="t", source=Path("t"), path=target, bucket="hostile")
    result = Restorer(folder, store, str(target), workers=2).run()  # type: ignore[arg-type]
    assert sorted(k for k, _ in result.refused) == sorted(hostile)
    assert result.restored == ["ok.txt"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "deep", "deep/restored", "deep/restored/ok.txt"]


@pytest.mark.parametrize("rel", ["../escape", "/abs", "a//b", "a/./b", "a/..", "x\0y", "n" * 256 + "/f"])
def test_keys_that_could_leave_the_target_or_no_filesystem_holds_are_refused(rel):
    assert name_problem(rel) is not None


def test_ordinary_keys_are_accepted():
    for rel in ("a/b/c.txt", "naïve café.txt", "..hidden", "a/...", "n" * 255):
        assert name_problem(rel) is None


# ---------------------------------------------------------------------- point in time

def _snapshot(root: Path) -> tuple[dict[str, str], dict[str, int]]:
    return local_tree(root), _mtimes(root)


def test_restore_at_a_time_gives_back_the_tree_as_it_was(syncd, tree, s3, bucket, tmp_path):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for i in range(120):
        _write(tree / f"d{i % 6}" / f"f{i}.txt", f"first {i}".encode())
    syncd.add_folder("main", tree, bucket, prefix="m/")
    syncd.start()
    syncd.wait_idle()
    await_condition(lambda: syncd.folder_status("main")["versioned"] is True, 10, "status to say versioned")
    then = _snapshot(tree)
    t1 = time.time()
    time.sleep(1.1)  # S3 timestamps have one-second resolution: later writes must be after T1
    files = sorted(tree.rglob("f*.txt"))
    for p in files[:50]:
        p.write_bytes(p.read_bytes() + b" modified")
    for p in files[50:100]:
        p.unlink()
    for i in range(20):
        _write(tree / "new" / f"n{i}.txt", f"new {i}".encode())
    syncd.wait_idle()
    assert syncd.stop() == 0
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t1)) + f".{int(t1 % 1 * 1e6):06d}Z"
    code, doc = _restore(syncd, tmp_path / "then", "--at", at)
    assert code == 0, doc
    assert _snapshot(tmp_path / "then") == then
    code, doc = _restore(syncd, tmp_path / "now")
    assert code == 0, doc
    assert _snapshot(tmp_path / "now") == _snapshot(tree)


def test_restore_at_on_an_unversioned_bucket_says_how_to_enable_versioning_or_the_trash(syncd, tree, bucket, tmp_path):
    _write(tree / "f.txt", b"x")
    syncd.add_folder("main", tree, bucket, prefix="m/")
    syncd.start()
    syncd.wait_idle()
    await_condition(lambda: syncd.folder_status("main")["versioned"] is False, 10, "status to say unversioned")
    assert "versioned no" in syncd.cli("status").stdout
    assert syncd.stop() == 0
    r = syncd.cli("restore", "main", "--to", str(tmp_path / "then"), "--at", "2026-01-01T00:00:00Z")
    assert r.returncode == 1
    assert "not versioned" in r.stderr and "put-bucket-versioning" in r.stderr
    assert "has no trash" in r.stderr and "delete: trash" in r.stderr
    r = syncd.cli("restore", "main", "--to", str(tmp_path / "then"), "--at", "2026-01-01T00:00:00Z", "--json")
    assert r.returncode == 1 and "not versioned" in json.loads(r.stdout)["error"]



"""`syncd verify`: one line per difference between the local tree and the bucket, exit 0/1/2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .support.daemon import Syncd


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def mirrored(syncd: Syncd, tree: Path, bucket: str) -> Syncd:
    """A synced folder "main" (prefix m/), the daemon stopped: verify needs none."""
    for i in range(8):
        _write(tree / f"dir {i % 3}" / f"file-{i}.txt", f"content {i}".encode())
    _write(tree / "ignored.tmp", b"never uploaded")
    syncd.add_folder("main", tree, bucket, prefix="m/", ignore=["*.tmp"])
    syncd.start()
    syncd.wait_idle()
    assert syncd.stop() == 0
    return syncd


def _verify(syncd: Syncd, *extra: str) -> tuple[int, dict[str, Any]]:
    r = syncd.cli("verify", "main", "--json", *extra)
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


def _marks(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["mark"], d["path"]) for d in doc["differences"]}


def test_an_exact_mirror_verifies_with_exit_0_and_no_lines(mirrored):
    r = mirrored.cli("verify", "main")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""
    code, doc = _verify(mirrored, "--full")
    assert code == 0 and doc["exact"] and doc["local_files"] == 8 and doc["objects"] == 8


def test_verify_names_a_missing_an_extra_and_a_replaced_object_with_exit_1(mirrored, tree, s3, bucket):
    s3.delete_object(Bucket=bucket, Key="m/dir 0/file-0.txt")
    s3.put_object(Bucket=bucket, Key="m/only-in-bucket.txt", Body=b"foreign")
    s3.put_object(Bucket=bucket, Key="m/dir 1/file-1.txt", Body=b"content X")  # same size, other bytes
    r = mirrored.cli("verify", "main")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert "+ dir 0/file-0.txt" in lines
    assert "- only-in-bucket.txt" in lines
    assert any(line.startswith("* dir 1/file-1.txt") for line in lines), lines
    assert len(lines) == 3, lines


def test_verify_without_a_journal_still_finds_a_replaced_object(mirrored, s3, bucket):
    for f in (mirrored.state_dir / "folders").glob("main.sqlite3*"):
        f.unlink()
    s3.put_object(Bucket=bucket, Key="m/dir 1/file-1.txt", Body=b"content X",
                  Metadata={"syncd-mtime-ns": "1"})
    code, doc = _verify(mirrored)
    assert code == 1 and not doc["journal"]
    assert _marks(doc) == {("*", "dir 1/file-1.txt")}


def test_a_local_file_altered_without_changing_size_and_mtime_is_found_only_by_full(mirrored, tree):
    path = tree / "dir 2" / "file-2.txt"
    st = path.stat()
    path.write_bytes(b"content Z")  # same length as "content 2"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, doc = _verify(mirrored)
    assert code == 0 and doc["exact"]
    code, doc = _verify(mirrored, "--full")
    assert code == 1
    assert _marks(doc) == {("*", "dir 2/file-2.txt")}


def test_ignored_files_and_bookkeeping_keys_are_not_differences(mirrored, s3, bucket):
    s3.put_object(Bucket=bucket, Key="m/other.tmp", Body=b"ignored in the bucket too")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="m/.syncd/")["Contents"]]
    assert keys, "the owner marker is under the prefix"
    code, doc = _verify(mirrored)
    assert code == 0, doc


def test_an_object_full_cannot_check_is_an_error_with_exit_2(mirrored, tree, s3, bucket):
    """A multipart object another client wrote carries neither syncd-sha256 nor an MD5 ETag."""
    _write(tree / "foreign.bin", b"written elsewhere")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="m/foreign.bin")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="m/foreign.bin", UploadId=upload, PartNumber=1, Body=b"written elsewhere")
    s3.complete_multipart_upload(Bucket=bucket, Key="m/foreign.bin", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    code, doc = _verify(mirrored, "--full")
    assert code == 2
    assert _marks(doc) == {("!", "foreign.bin")}

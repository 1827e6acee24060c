"""Moving in: a prefix another tool synced is taken over without uploading its files again.

Each peer (from PyPI, as the test extras install them) syncs a tree into SeaweedFS directly;
syncd then starts on that prefix through the counting proxy. Every multipart object here is
of the tool's own making, with its default part size unless said otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.bench.peers import Aws, Peer, Rclone, S5cmd, Target

from .support.daemon import assert_mirror, await_condition

MiB = 1 << 20
PREFIX = "site/"


def _peer(cls: type[Peer]) -> Peer:
    exe = cls.locate()
    if exe is None:
        pytest.fail(f"{cls.name} is not installed: pip install {cls.package} (it is in the test extras)")
    return cls(exe, "")


def _target(s3_server: Any, bucket: str, scratch: Path) -> Target:
    return Target(s3_server.endpoint, bucket, PREFIX, s3_server.access_key, s3_server.secret_key, 8, scratch)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}"


def _small_files(root: Path, n: int = 40) -> None:
    for i in range(n):
        path = root / f"dir{i % 4}" / f"file-{i:03}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(i * 37))  # file-000 is empty
    (root / "index.html").write_text("<h1>moved in</h1>")


def _big(root: Path, name: str, size: int) -> Path:
    path = root / name
    with path.open("wb") as f:
        f.write(os.urandom(size))
    return path


def _same_size_edit(path: Path) -> None:
    """Different content, same size and a later mtime: only the content says it differs."""
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def _take_over(proxied_syncd: Any, s3_proxy: Any, tree: Path, bucket: str) -> dict[str, Any]:
    s3_proxy.reset_counts()
    proxied_syncd.add_folder("main", tree, bucket, prefix=PREFIX)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    return await_condition(lambda: proxied_syncd.folder_status("main")["last_reconcile"], 60,  # type: ignore[no-any-return]
                           "the first reconcile pass")


def _assert_only_uploaded(s3_proxy: Any, changed: Path) -> None:
    counts, sent = s3_proxy.counts(), s3_proxy.body_bytes()
    assert counts.get("UploadPart", 0) == 0 and counts.get("CreateMultipartUpload", 0) == 0
    assert counts.get("PutObject", 0) == 1, counts  # the edited file, and nothing else
    # Chunk framing and signatures add a little to the file's bytes; another file would add far more.
    assert changed.stat().st_size <= sent.get("PutObject", 0) <= changed.stat().st_size + 4096, sent


def test_a_tree_synced_by_aws_s3_sync_is_taken_over_without_sending_file_data(proxied_syncd, s3_proxy, s3_server,
                                                                               tree, s3, bucket, tmp_path):
    _small_files(tree)
    _big(tree, "video.bin", 17 * MiB)  # aws-cli's default 8 MiB chunks: 3 parts, 8+8+1
    aws = _peer(Aws)
    target = _target(s3_server, bucket, tmp_path)
    _run(aws.command(tree, target), aws.env(target))
    assert s3.head_object(Bucket=bucket, Key=PREFIX + "video.bin")["ETag"].endswith('-3"')
    changed = tree / "dir1" / "file-009.txt"
    _same_size_edit(changed)

    last = _take_over(proxied_syncd, s3_proxy, tree, bucket)

    _assert_only_uploaded(s3_proxy, changed)
    assert_mirror(s3, bucket, tree, PREFIX)
    assert last["adopted"] == 41 and last["bytes_read"] >= 17 * MiB
    assert last["heads"] == 1  # video.bin: a large file is HEADed before it is read
    assert last["adopted_by"] == {"etag": 40, "multipart_etag": 1}
    assert "event=reconcile.done" in proxied_syncd.log() and "bytes_read=" in proxied_syncd.log()


def test_a_tree_synced_by_rclone_is_taken_over_by_etag_or_md5chksum(proxied_syncd, s3_proxy, s3_server, tree, s3,
                                                                     bucket, tmp_path):
    _small_files(tree)
    _big(tree, "default-chunks.bin", 11 * MiB)  # rclone's default 5 MiB chunks: 5+5+1
    odd = _big(tree, "odd-chunks.bin", 13 * MiB)
    rclone = _peer(Rclone)
    target = _target(s3_server, bucket, tmp_path)
    env = rclone.env(target)
    # Multipart above 5 MiB instead of rclone's 200 MiB default, to keep the test small.
    # 6 MiB chunks are no size syncd guesses: only rclone's md5chksum metadata proves this one.
    # (First: the sync below then finds it unchanged and leaves it.)
    _run([rclone.exe, "--config", os.devnull, "copyto", str(odd), f"bench:{bucket}/{PREFIX}odd-chunks.bin",
          "--s3-upload-cutoff", "5M", "--s3-chunk-size", "6M", "--s3-no-check-bucket"], env)
    _run([*rclone.command(tree, target), "--s3-upload-cutoff", "5M"], env)
    assert "md5chksum" in s3.head_object(Bucket=bucket, Key=PREFIX + "odd-chunks.bin")["Metadata"]
    changed = tree / "dir2" / "file-010.txt"
    _same_size_edit(changed)

    last = _take_over(proxied_syncd, s3_proxy, tree, bucket)

    _assert_only_uploaded(s3_proxy, changed)
    assert_mirror(s3, bucket, tree, PREFIX)
    assert last["adopted"] == 42
    assert last["heads"] == 2  # the two large files, HEADed before they are read
    assert last["adopted_by"] == {"etag": 40, "multipart_etag": 1, "md5chksum": 1}


def test_a_tree_synced_by_s5cmd_is_taken_over_without_sending_file_data(proxied_syncd, s3_proxy, s3_server, tree, s3,
                                                                         bucket, tmp_path):
    _small_files(tree)
    _big(tree, "archive.tar", 50 * MiB + 4096)  # s5cmd's default 50 MiB parts: 2 parts
    s5cmd = _peer(S5cmd)
    target = _target(s3_server, bucket, tmp_path)
    _run(s5cmd.command(tree, target), s5cmd.env(target))
    assert s3.head_object(Bucket=bucket, Key=PREFIX + "archive.tar")["ETag"].endswith('-2"')
    changed = tree / "dir3" / "file-011.txt"
    _same_size_edit(changed)

    last = _take_over(proxied_syncd, s3_proxy, tree, bucket)

    _assert_only_uploaded(s3_proxy, changed)
    assert_mirror(s3, bucket, tree, PREFIX)
    assert last["adopted"] == 41 and last["heads"] == 1
    assert last["adopted_by"] == {"etag": 40, "multipart_etag": 1}


def test_an_adopted_object_is_deleted_with_its_file(proxied_syncd, s3_proxy, s3_server, tree, s3, bucket, tmp_path):
    _small_files(tree, 5)
    rclone = _peer(Rclone)
    target = _target(s3_server, bucket, tmp_path)
    _run(rclone.command(tree, target), rclone.env(target))
    _take_over(proxied_syncd, s3_proxy, tree, bucket)

    (tree / "dir1" / "file-001.txt").unlink()
    proxied_syncd.wait_idle(60)

    assert_mirror(s3, bucket, tree, PREFIX)

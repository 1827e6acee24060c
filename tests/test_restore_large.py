"""`syncd restore` of a large object through the store's parallel fetch (S3: the CRT's ranged
GETs, handed over in order and hashed on another thread as they arrive), against the real
SeaweedFS: exact bytes and mtime, a wrong digest refused, and nothing under the real name
until it is verified, even when the restore is killed mid-download."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syncd import bigfetch, restore
from syncd.config import FolderConfig
from syncd.restore import Restorer
from syncd.s3store import S3Store

from .support.daemon import await_condition

SIZE = 2 * bigfetch.PART_SIZE + 5  # three ranged GETs, the last of 5 bytes
MTIME = 1_600_000_000_123_456_789
KEY = "p/big.bin"


@pytest.fixture(scope="module")
def body() -> bytes:
    return random.Random(19).randbytes(SIZE)


@pytest.fixture
def folder(request: pytest.FixtureRequest, tmp_path: Path, bucket: str, s3_proxy: Any,
           monkeypatch: pytest.MonkeyPatch) -> FolderConfig:
    server = request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    return FolderConfig(name="big", source=tmp_path / "syncd.yaml", path=tmp_path / "src", bucket=bucket,
                        prefix="p/", endpoint_url=s3_proxy.endpoint, region=server.region)


@pytest.fixture
def store(folder: FolderConfig) -> Iterator[S3Store]:
    store = S3Store(folder)
    assert store.parallel_fetch
    yield store
    store.close()


def _put(s3: Any, bucket: str, body: bytes, sha256: str | None = None) -> None:
    meta = {"syncd-sha256": sha256 or hashlib.sha256(body).hexdigest(), "syncd-mtime-ns": str(MTIME)}
    s3.put_object(Bucket=bucket, Key=KEY, Body=body, Metadata=meta)


def _temps(root: Path) -> list[Path]:
    return list(root.rglob(".syncd-restore-*"))


def test_a_large_object_comes_in_ranged_parts_hashed_as_they_arrive_and_lands_exact(
        folder, store, s3, bucket, body, s3_proxy, tmp_path, monkeypatch):
    def no_second_pass(*_: object) -> str:
        raise AssertionError("the downloaded file was read back to hash it")

    monkeypatch.setattr(restore, "hash_fd", no_second_pass)
    _put(s3, bucket, body)
    target = tmp_path / "restored"
    s3_proxy.reset_counts()
    result = Restorer(folder, store, str(target), workers=2).run()
    assert result.restored == ["big.bin"] and result.failed == []
    assert (target / "big.bin").read_bytes() == body
    assert (target / "big.bin").stat().st_mtime_ns == MTIME
    assert s3_proxy.counts()["GetObject"] == result.gets == 3 and not _temps(target)


def test_a_large_object_whose_bytes_do_not_match_its_sha256_is_refused_and_not_written(
        folder, store, s3, bucket, body, tmp_path):
    _put(s3, bucket, body, sha256=hashlib.sha256(b"other bytes").hexdigest())
    target = tmp_path / "restored"
    result = Restorer(folder, store, str(target), workers=2).run()
    assert [path for path, _ in result.failed] == ["big.bin"]
    assert "checksum mismatch" in result.failed[0][1]
    assert not (target / "big.bin").exists() and not _temps(target)


def test_a_large_restore_killed_mid_download_leaves_nothing_under_its_name_and_a_rerun_is_exact(
        folder, store, s3, bucket, body, s3_proxy, tmp_path, request):
    _put(s3, bucket, body)
    target = tmp_path / "restored"
    server = request.getfixturevalue("s3_server")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    s3_proxy.set_delay(1.0)  # each ranged GET waits: the kill comes while the parts are on their way
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "restore", f"s3://{bucket}/p/", "--to", str(target),
                             "--endpoint-url", s3_proxy.endpoint, "--region", server.region],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The temp file is created (and its blocks reserved) before the first GET is sent.
        await_condition(lambda: bool(target.exists() and _temps(target)), 60, "the download to be under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        s3_proxy.set_delay(0)
    assert not (target / "big.bin").exists()
    result = Restorer(folder, store, str(target), workers=2).run()
    assert result.restored == ["big.bin"]
    assert (target / "big.bin").read_bytes() == body and not _temps(target)


def test_a_write_that_fails_mid_download_stops_it_with_that_error(store: S3Store, s3: Any, bucket: str,
                                                                  body: bytes, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The parts are written on a thread of their own: its failure (here ENOSPC at the second
    # part) must reach the caller, not vanish with the thread.
    _put(s3, bucket, body)
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if offset >= bigfetch.PART_SIZE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    fd = os.open(tmp_path / "big.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(OSError) as err:
            bigfetch.download(store, fd, KEY, None, SIZE, lambda _n: None)
    finally:
        os.close(fd)
    assert err.value.errno == errno.ENOSPC
    assert not [t for t in threading.enumerate() if t.name == "restore-write"]

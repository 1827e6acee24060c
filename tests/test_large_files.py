"""Large files: multipart uploads that resume after kill -9, never publish a torn object, survive
faults and outages, respect a bandwidth limit and leave no incomplete upload behind."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .support.daemon import assert_mirror, await_condition
from .support.fixtures import both_stores

MiB = 1024 * 1024
GiB = 1024 * MiB


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256_object(s3: Any, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MiB):
        h.update(chunk)
    return h.hexdigest()


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    """Incompressible content; every 1 MiB block differs, so a misplaced part changes the hash."""
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "little") + seed.to_bytes(8, "little") + block[16:])
        f.write(block[: size % MiB])
    return path


def incomplete_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def one_gib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 1 GiB file shared by the tests of this module (hard-linked into each tree)."""
    path = write_random(tmp_path_factory.mktemp("big") / "one-gib.bin", GiB)
    return path, sha256_file(path)


def test_one_gib_file_arrives_intact_in_the_expected_number_of_parts(syncd, tree, s3, bucket, one_gib):
    source, digest = one_gib
    syncd.add_folder("main", tree, bucket)  # defaults: 64 MiB threshold, 16 MiB parts
    syncd.start()
    os.link(source, tree / "video.bin")
    syncd.wait_idle(300)
    head = s3.head_object(Bucket=bucket, Key="video.bin")
    assert head["ContentLength"] == GiB
    assert head["ETag"].strip('"').endswith("-64")  # 1 GiB / 16 MiB
    assert head["Metadata"]["syncd-sha256"] == digest
    assert head["Metadata"]["syncd-mtime-ns"] == str((tree / "video.bin").stat().st_mtime_ns)
    assert sha256_object(s3, bucket, "video.bin") == digest
    assert incomplete_uploads(s3, bucket) == []



def test_uploading_one_gib_keeps_the_daemon_under_150_mib_of_memory(syncd, tree, s3, bucket, one_gib):
    """Memory is bounded by the parts in flight ((part_concurrency + 1) x part_size), not by
    the file; no layer may copy each part (botocore's CRT signer did: 160 MiB at its peak)."""
    import psutil

    source, digest = one_gib
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert syncd.proc is not None
    daemon = psutil.Process(syncd.proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, daemon.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        os.link(source, tree / "disk.img")
        syncd.wait_idle(300)
    finally:
        done.set()
        sampler.join()
    assert s3.head_object(Bucket=bucket, Key="disk.img")["Metadata"]["syncd-sha256"] == digest
    print(f"peak RSS {peak / MiB:.1f} MiB")
    assert peak <= 150 * MiB, f"peak RSS {peak / MiB:.1f} MiB"

def test_kill9_mid_upload_resumes_and_resends_at_most_two_parts(proxied_syncd, s3_proxy, tree, s3, bucket, one_gib):
    source, digest = one_gib
    part = 16 * MiB
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    os.link(source, tree / "backup.img")
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 20, 120, "20 of 64 parts sent")
    proxied_syncd.kill9()
    before = s3_proxy.streamed_bytes().get("UploadPart", 0)
    assert s3_proxy.counts().get("CompleteMultipartUpload", 0) == 0, "the upload finished before the kill"
    s3_proxy.reset_counts()

    proxied_syncd.start()
    proxied_syncd.wait_idle(300)
    after = s3_proxy.streamed_bytes().get("UploadPart", 0)
    resent = before + after - GiB
    print(f"sent before the kill {before / MiB:.1f} MiB, after {after / MiB:.1f} MiB, re-sent {resent / MiB:.1f} MiB")
    assert 0 <= resent <= 2 * part, f"re-sent {resent / MiB:.1f} MiB"
    counts = s3_proxy.counts()
    assert counts.get("CreateMultipartUpload", 0) == 0  # resumed, not started over
    assert counts.get("ListParts", 0) == 1
    assert "multipart.resumed" in proxied_syncd.log()
    assert sha256_object(s3, bucket, "backup.img") == digest
    assert incomplete_uploads(s3, bucket) == []


def test_file_changed_while_daemon_was_down_aborts_the_old_upload_and_starts_over(
        proxied_syncd, s3_proxy, tree, s3, bucket):
    path = write_random(tree / "data.bin", 60 * MiB, seed=1)
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="10MiB/s")
    proxied_syncd.start()
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 3, 60, "3 parts sent")
    proxied_syncd.kill9()
    old = [u["UploadId"] for u in incomplete_uploads(s3, bucket)]
    assert len(old) == 1
    with path.open("ab") as f:
        f.write(b"appended while the daemon was down")

    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    assert sha256_object(s3, bucket, "data.bin") == sha256_file(path)
    assert s3_proxy.counts().get("AbortMultipartUpload", 0) >= 1
    assert incomplete_uploads(s3, bucket) == []


def test_file_modified_during_its_upload_never_publishes_a_torn_object(proxied_syncd, s3_proxy, tree, s3, bucket):
    path = write_random(tree / "db.dump", 30 * MiB, seed=2)
    first = sha256_file(path)
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="6MiB/s", settle="200ms")
    seen: set[str] = set()
    stop = threading.Event()

    def watch_bucket() -> None:
        """Hash every version of the object that ever becomes visible."""
        etag = None
        while not stop.is_set():
            try:
                head = s3.head_object(Bucket=bucket, Key="db.dump")
            except s3.exceptions.ClientError:
                head = None
            if head is not None and head["ETag"] != etag:
                etag = head["ETag"]
                seen.add(sha256_object(s3, bucket, "db.dump"))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch_bucket)
    watcher.start()
    try:
        proxied_syncd.start()
        await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 2, 60, "2 parts sent")
        with path.open("r+b") as f:  # same size, new bytes in the middle of the file
            f.seek(20 * MiB)
            f.write(os.urandom(MiB))
        final = sha256_file(path)
        proxied_syncd.wait_idle(120)
        await_condition(lambda: final in seen, 30, "the final version seen in the bucket")
    finally:
        stop.set()
        watcher.join()
    assert sha256_object(s3, bucket, "db.dump") == final
    assert seen <= {first, final}, "a torn object was visible"
    assert s3_proxy.counts().get("AbortMultipartUpload", 0) >= 1  # the change really hit mid-upload
    assert "upload.file_changed" in proxied_syncd.log()
    assert incomplete_uploads(s3, bucket) == []


def test_ten_percent_faults_of_every_kind_still_converge_to_an_exact_mirror(proxied_syncd, s3_proxy, tree, s3,
                                                                             bucket):
    for i in range(500):
        (tree / f"small-{i // 50}" / f"f{i:03}.txt").parent.mkdir(exist_ok=True)
        (tree / f"small-{i // 50}" / f"f{i:03}.txt").write_bytes(os.urandom(512 + i))
    for i in range(3):
        write_random(tree / f"large-{i}.bin", 23 * MiB + i, seed=i)
    s3_proxy.stall_seconds = 3.0
    s3_proxy.set_faults(0.4, ["503", "500", "reset", "stall"], seed=5)  # 10 % of requests each
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="8MiB", part_size="5MiB",
                             request_timeout="2s")
    proxied_syncd.start()
    proxied_syncd.wait_idle(600)
    s3_proxy.clear_faults()
    assert_mirror(s3, bucket, tree)
    injected = s3_proxy.injected()
    for kind in ("503", "500", "stall"):
        assert sum(c[kind] for c in injected.values()) >= 10, (kind, injected)
    assert sum(c["reset-request"] + c["reset-response"] for c in injected.values()) >= 10
    assert sum(injected.get("UploadPart", {}).values()) >= 3  # the large files were hit too
    assert incomplete_uploads(s3, bucket) == []


def test_unreachable_endpoint_stalls_the_folder_with_its_reason_then_syncs(proxied_syncd, s3_proxy, tree, s3,
                                                                          bucket):
    (tree / "before.txt").write_text("synced before the outage")
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             request_timeout="2s")
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    s3_proxy.refuse()
    for i in range(20):
        (tree / f"during-{i}.txt").write_text(f"written during the outage {i}")
    write_random(tree / "during.bin", 12 * MiB, seed=3)

    def stalled() -> dict[str, Any] | None:
        status = proxied_syncd.folder_status("main")
        return status if status["state"] == "stalled" else None

    status = await_condition(stalled, 60, "state: stalled")
    assert "unreachable" in status["last_error"]
    assert status["pending"] == 21  # journaled while the endpoint is away
    s3_proxy.refuse(False)
    proxied_syncd.wait_idle(120)
    assert_mirror(s3, bucket, tree)
    assert proxied_syncd.folder_status("main")["state"] == "watching"
    assert incomplete_uploads(s3, bucket) == []


def test_bandwidth_limit_holds_within_15_percent_over_20_seconds(proxied_syncd, s3_proxy, tree, s3, bucket):
    rate = 2 * MiB
    write_random(tree / "paced.bin", 40 * MiB, seed=4)
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="2MiB/s")
    proxied_syncd.start()
    proxied_syncd.wait_idle(60)
    times = {op: t for t, op, _ in s3_proxy.timeline() if op in ("CreateMultipartUpload", "CompleteMultipartUpload")}
    elapsed = times["CompleteMultipartUpload"] - times["CreateMultipartUpload"]
    measured = 40 * MiB / elapsed
    print(f"bandwidth 2 MiB/s: measured {measured / MiB:.3f} MiB/s over {elapsed:.2f} s")
    assert abs(measured - rate) <= 0.15 * rate, f"{measured / MiB:.2f} MiB/s over {elapsed:.1f} s"
    assert sha256_object(s3, bucket, "paced.bin") == sha256_file(tree / "paced.bin")


def test_file_larger_than_5_tib_is_parked_with_a_clear_reason(syncd, tree, bucket):
    huge = tree / "huge.raw"
    with huge.open("wb") as f:
        f.truncate(5 * 1024 * GiB + 1)  # sparse: costs no disk
    (tree / "small.txt").write_text("still synced")
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    r = syncd.cli("wait", "--timeout", "60", timeout=90)
    assert r.returncode == 2, r.stderr  # idle, with a permanent failure
    failure = syncd.folder_status("main")["failures"][0]
    assert failure["path"] == "huge.raw" and "5 TiB" in failure["error"]


@both_stores
def test_sigterm_stops_a_large_upload_between_parts_and_the_restart_resumes_it(proxied_syncd, s3_proxy, tree, s3,
                                                                               bucket):
    path = write_random(tree / "archive.tar", 60 * MiB, seed=5)
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="10MiB/s")
    proxied_syncd.start()
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 3, 60, "3 parts sent")
    started = time.monotonic()
    assert proxied_syncd.stop() == 0
    assert time.monotonic() - started < 10  # a part boundary, not the whole file
    assert s3_proxy.counts().get("CompleteMultipartUpload", 0) == 0
    s3_proxy.reset_counts()

    proxied_syncd.start()
    proxied_syncd.wait_idle(60)
    assert s3_proxy.counts().get("CreateMultipartUpload", 0) == 0  # resumed
    assert sha256_object(s3, bucket, "archive.tar") == sha256_file(path)
    assert incomplete_uploads(s3, bucket) == []


@pytest.mark.parametrize("backend", ["azure"], indirect=True)  # S3: the 1 GiB kill -9 test above
def test_kill9_mid_large_upload_resumes_from_its_confirmed_parts(proxied_syncd, s3_proxy, tree, s3, bucket):
    path = write_random(tree / "archive.tar", 60 * MiB, seed=6)
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="10MiB/s")
    proxied_syncd.start()
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 4, 60, "4 of 12 parts sent")
    proxied_syncd.kill9()
    assert s3_proxy.counts().get("CompleteMultipartUpload", 0) == 0, "the upload finished before the kill"
    sent_before = s3_proxy.counts().get("UploadPart", 0)
    s3_proxy.reset_counts()

    proxied_syncd.start()
    proxied_syncd.wait_idle(60)
    # Resumed, not started over (an Azure upload id is made locally: no request to count).
    assert s3_proxy.counts().get("UploadPart", 0) <= 12 - sent_before + 2  # at most two parts sent again
    assert "multipart.resumed" in proxied_syncd.log()
    assert sha256_object(s3, bucket, "archive.tar") == sha256_file(path)
    assert incomplete_uploads(s3, bucket) == []


def test_file_deleted_while_the_daemon_was_down_has_its_upload_aborted(proxied_syncd, s3_proxy, tree, s3, bucket):
    path = write_random(tree / "gone.bin", 30 * MiB, seed=6)
    (tree / "kept.txt").write_text("kept")
    proxied_syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB",
                             bandwidth="5MiB/s")
    proxied_syncd.start()
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 2, 60, "2 parts sent")
    proxied_syncd.kill9()
    assert len(incomplete_uploads(s3, bucket)) == 1
    path.unlink()

    proxied_syncd.start()
    proxied_syncd.wait_idle(60)
    await_condition(lambda: incomplete_uploads(s3, bucket) == [], 30, "the abandoned upload aborted")
    assert_mirror(s3, bucket, tree)


def test_stale_unknown_uploads_under_the_prefix_are_swept_and_others_kept(syncd, tree, s3, bucket):
    (tree / "a.txt").write_text("a")
    syncd.add_folder("main", tree, bucket, prefix="mirror/", stale_upload_age="1h")
    syncd.start()
    syncd.wait_idle()
    stale = s3.create_multipart_upload(Bucket=bucket, Key="mirror/left-by-a-crash.bin")["UploadId"]
    outside = s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours.bin")["UploadId"]

    assert syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0
    assert {u["UploadId"] for u in incomplete_uploads(s3, bucket)} == {stale, outside}  # younger than 1h

    syncd.add_folder("main", tree, bucket, prefix="mirror/", stale_upload_age="1s")
    assert syncd.cli("reload").returncode == 0  # its restart pass may already sweep it...
    await_condition(lambda: syncd.cli("reconcile", "--wait", "--timeout", "60").returncode == 0  # ...or a later one
                    and {u["UploadId"] for u in incomplete_uploads(s3, bucket)} == {outside}, 60,
                    "the stale upload under the prefix swept")
    assert f"event=multipart.stale_aborted folder=main key=mirror/left-by-a-crash.bin upload_id={stale}" in syncd.log()


def test_a_second_upload_of_the_same_key_is_aborted_once_the_file_is_published(syncd, tree, s3, bucket):
    """A CreateMultipartUpload whose response was lost (and retried) leaves an upload nobody
    journaled, far younger than the stale-upload age: the upload that publishes the key
    aborts it, and leaves other keys' uploads alone."""
    syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB")
    syncd.start()
    syncd.wait_idle()
    stray = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    other = s3.create_multipart_upload(Bucket=bucket, Key="other.bin")["UploadId"]
    write_random(tree / "big.bin", 11 * MiB, seed=5)
    syncd.wait_idle(60)
    assert_mirror(s3, bucket, tree)
    assert [u["UploadId"] for u in incomplete_uploads(s3, bucket)] == [other]
    assert f"event=multipart.stray_aborted folder=main path=big.bin upload_id={stray}" in syncd.log()


@pytest.mark.parametrize("checksum", ["crc32c", "sha256", "md5", "off"])
def test_every_checksum_mode_uploads_small_and_multipart_files_intact(syncd, tree, s3, bucket, checksum):
    write_random(tree / "large.bin", 12 * MiB + 7, seed=7)
    (tree / "small.txt").write_text("small")
    syncd.add_folder("main", tree, bucket, multipart_threshold="5MiB", part_size="5MiB", checksum=checksum)
    syncd.start()
    syncd.wait_idle(60)
    assert_mirror(s3, bucket, tree)
    head = s3.head_object(Bucket=bucket, Key="large.bin")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"]["syncd-sha256"] == sha256_file(tree / "large.bin")


def test_changing_the_checksum_setting_during_an_unfinished_upload_starts_it_over(
        proxied_syncd, s3_proxy, tree, s3, bucket):
    path = write_random(tree / "data.bin", 60 * MiB, seed=3)
    folder = dict(multipart_threshold="5MiB", part_size="5MiB", bandwidth="10MiB/s")
    proxied_syncd.add_folder("main", tree, bucket, checksum="sha256", **folder)
    proxied_syncd.start()
    await_condition(lambda: s3_proxy.counts().get("UploadPart", 0) >= 3, 60, "3 parts sent")
    proxied_syncd.kill9()
    assert len(incomplete_uploads(s3, bucket)) == 1

    proxied_syncd.add_folder("main", tree, bucket, checksum="crc32c", **folder)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    assert "reason=\"checksum setting changed since the upload began\"" in proxied_syncd.log()
    assert sha256_object(s3, bucket, "data.bin") == sha256_file(path)
    assert incomplete_uploads(s3, bucket) == []

"""Renames and directory moves become server-side copies: no file data is sent again."""

from __future__ import annotations

import os

from .support.daemon import assert_mirror
from .support.fixtures import both_stores


def test_renaming_a_file_and_a_500_file_directory_copies_server_side(proxied_syncd, s3_proxy, tree, s3, bucket):
    album = tree / "album"
    album.mkdir()
    for i in range(500):
        (album / f"photo-{i:03}.jpg").write_bytes(os.urandom(2048))
    (tree / "report.pdf").write_bytes(os.urandom(300_000))
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    assert_mirror(s3, bucket, tree)

    s3_proxy.reset_counts()
    (tree / "report.pdf").rename(tree / "report-final.pdf")
    (tree / "archive").mkdir()
    album.rename(tree / "archive" / "album-2025")
    proxied_syncd.wait_idle(120)

    assert_mirror(s3, bucket, tree)
    counts = s3_proxy.counts()
    sent = s3_proxy.body_bytes()
    assert counts.get("CopyObject", 0) == 501
    assert counts.get("PutObject", 0) == 0 and counts.get("UploadPart", 0) == 0
    # Only DeleteObjects carries a body (the key list): no file data crossed the wire.
    assert sum(n for op, n in sent.items() if op != "DeleteObjects") == 0
    assert 1 <= counts.get("DeleteObjects", 0) <= 3


@both_stores
def test_rename_while_stopped_is_a_copy_after_restart(proxied_syncd, s3_proxy, tree, s3, bucket):
    (tree / "a.bin").write_bytes(os.urandom(100_000))
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    assert proxied_syncd.stop() == 0
    (tree / "a.bin").rename(tree / "b.bin")
    s3_proxy.reset_counts()
    proxied_syncd.start()
    proxied_syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    assert s3_proxy.counts().get("CopyObject", 0) == 1
    assert s3_proxy.counts().get("PutObject", 0) == 0

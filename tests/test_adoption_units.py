"""The adoption rules' arithmetic: candidate part sizes and the ETags computed from a file."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from syncd.adoption import Proof, digest, etag_parts, etag_proof, meta_proof, part_sizes
from syncd.beneath import RootDir
from syncd.store import Part, multipart_etag

MiB = 1 << 20
GiB = 1 << 30


def _parts_of(data: bytes, part: int) -> str:
    chunks = [data[i:i + part] for i in range(0, len(data), part)]
    return multipart_etag([Part(n + 1, hashlib.md5(c).hexdigest()) for n, c in enumerate(chunks)])


def test_etag_parts_tells_single_part_multipart_and_other_etags_apart():
    assert etag_parts("d41d8cd98f00b204e9800998ecf8427e") == 0
    assert etag_parts("0123456789abcdef0123456789ABCDEF-12") == 12
    assert etag_parts("not-an-md5") is None


def test_the_peers_default_part_sizes_are_candidates_when_they_fit_the_part_count():
    assert 8 * MiB in part_sizes(17 * MiB, 3, 16 * MiB)     # aws-cli
    assert 5 * MiB in part_sizes(11 * MiB, 3, 16 * MiB)     # rclone
    assert 50 * MiB in part_sizes(51 * MiB, 2, 16 * MiB)    # s5cmd
    assert 16 * MiB in part_sizes(40 * MiB, 3, 16 * MiB)    # syncd's own part_size
    assert all(-(-17 * MiB // p) == 3 for p in part_sizes(17 * MiB, 3, 16 * MiB))


def test_part_sizes_follow_each_tools_adjustment_past_10000_parts():
    size = 100 * GiB
    assert 16 * MiB in part_sizes(size, -(-size // (16 * MiB)), 16 * MiB)  # aws-cli doubles 8 MiB
    assert 11 * MiB in part_sizes(size, -(-size // (11 * MiB)), 64 * MiB)  # rclone: whole MiB above size/10000
    big = 1024 * GiB
    assert big // 10_000 + 1 in part_sizes(big, 10_000, 128 * MiB)          # s5cmd (s3manager): size/10000+1


def test_a_part_size_derived_from_the_part_count_is_a_candidate():
    assert 7 * MiB in part_sizes(20 * MiB, 3, 16 * MiB)  # ceil(20/3) MiB, rounded up to whole MiB


def test_digest_reproduces_single_and_multipart_etags_of_the_file(tmp_path: Path):
    data = os.urandom(11 * MiB + 17)
    (tmp_path / "f.bin").write_bytes(data)
    root = RootDir(str(tmp_path))
    d = digest(root, "f.bin", root.lstat("f.bin"), [5 * MiB, 8 * MiB])
    assert d is not None and d.bytes_read == len(data)
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert etag_proof(hashlib.md5(data).hexdigest(), d) is Proof.ETAG
    assert etag_proof(_parts_of(data, 5 * MiB), d) is Proof.MULTIPART_ETAG
    assert etag_proof(_parts_of(data, 8 * MiB), d) is Proof.MULTIPART_ETAG
    assert etag_proof(_parts_of(data, 6 * MiB), d) is None


def test_digest_refuses_a_file_that_is_not_the_version_listed(tmp_path: Path):
    (tmp_path / "f.bin").write_bytes(b"before")
    root = RootDir(str(tmp_path))
    st = root.lstat("f.bin")
    (tmp_path / "f.bin").write_bytes(b"after, longer")
    assert digest(root, "f.bin", st, []) is None


def test_rclone_md5chksum_and_syncd_sha256_metadata_prove_content(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"hello")
    root = RootDir(str(tmp_path))
    d = digest(root, "f", root.lstat("f"), [])
    assert d is not None
    md5 = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    assert meta_proof({"md5chksum": md5}, d) is Proof.RCLONE_MD5
    assert meta_proof({"syncd-sha256": hashlib.sha256(b"hello").hexdigest()}, d) is Proof.SYNCD_META
    assert meta_proof({"md5chksum": base64.b64encode(b"x" * 16).decode()}, d) is None
    assert meta_proof({"md5chksum": "%%%"}, d) is None

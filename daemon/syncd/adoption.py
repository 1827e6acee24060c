"""Adoption: is an object already in the bucket this local file, whoever wrote it?

People move in from ``aws s3 sync``, ``rclone sync`` or ``s5cmd sync`` (DESIGN.md, "Moving in
is free"), and a lost journal is rebuilt the same way. An object counts as a file's when the
sizes match and one of these holds:

* a single-part ETag equals the file's MD5 (S3 and SeaweedFS give a plain PUT the MD5 of its
  bytes as ETag, unless the object is encrypted with SSE-KMS or SSE-C);
* a multipart ETag (``<md5 of the parts' MD5s>-N``) equals the one computed from the file for
  a part size the common tools use (:func:`part_sizes`);
* rclone's ``md5chksum`` metadata (base64 MD5, written on its multipart uploads) equals the
  file's MD5;
* syncd's own ``syncd-mtime-ns`` (with the size) or ``syncd-sha256`` metadata says so.

Proof costs a local read, which is far cheaper than an upload; a HEAD is spent only where the
listing cannot decide, or first where it is cheaper than reading a large file. rclone's
``mtime`` metadata is not proof of content (another client may have written the key since)
and is not used to skip the read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .beneath import RootDir
from .multipart import MAX_PARTS, part_size_for, same_version
from .store import META_MTIME, META_SHA256
from .validators import MiB

# Part sizes of the tools people move in from, with the adjustment each makes when a file
# would need more than S3's 10,000 parts:
AWS_CLI_CHUNK = 8 * MiB   # aws-cli `multipart_chunksize` default (awscli transferconfig DEFAULTS);
#                           s3transfer's ChunksizeAdjuster doubles it until the parts fit
RCLONE_CHUNK = 5 * MiB    # rclone `--s3-chunk-size` default (5Mi); raised for >10,000 parts
S5CMD_PART = 50 * MiB     # s5cmd `--part-size` default (50, in MiB); aws-sdk-go's s3manager then
#                           uses size/10000+1 bytes when the parts would not fit
MAX_CANDIDATES = 8        # each candidate part size is one more MD5 pass over the file's bytes

# rclone stores the MD5 of a multipart upload here (its ETag is no MD5 of the content).
META_RCLONE_MD5 = "md5chksum"
# Larger files are HEADed before they are read: the object's own metadata (syncd's) may
# decide without reading, and one round trip is cheap next to reading a large file.
READ_FIRST_LIMIT = 8 * MiB
# Files up to this size with a plain ETag are read on the pass's own thread: no request can
# be needed, and the pool's hand-off would cost more than the read.
INLINE_READ_LIMIT = 64 * 1024
READ_CHUNK = 1 * MiB      # per reading thread: memory stays bounded by the pool size

_ETAG = re.compile(r"^([0-9a-f]{32})(?:-([0-9]+))?$")


def etag_parts(etag: str) -> int | None:
    """0 for a single-part MD5 ETag, N for a multipart ``<hex>-N`` one, None for neither."""
    m = _ETAG.match(etag.lower())
    if m is None:
        return None
    return 0 if m.group(2) is None else int(m.group(2))


def _up(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit``."""
    return -(-n // unit) * unit


def _fits(size: int, part: int, parts: int) -> bool:
    return part > 0 and -(-size // part) == parts


def part_sizes(size: int, parts: int, own_part_size: int) -> list[int]:
    """Candidate part sizes for an object of ``size`` bytes uploaded in ``parts`` parts:
    syncd's own, the peers' defaults (as each adjusts them), and sizes derived from N."""
    found: list[int] = []

    def add(part: int) -> None:
        if _fits(size, part, parts) and part not in found and len(found) < MAX_CANDIDATES:
            found.append(part)

    try:
        add(part_size_for(size, own_part_size))
    except ValueError:
        pass
    aws = AWS_CLI_CHUNK
    while -(-size // aws) > MAX_PARTS:
        aws *= 2
    add(aws)
    add(max(RCLONE_CHUNK, _up(-(-size // MAX_PARTS), MiB)))
    add(S5CMD_PART if size // S5CMD_PART < MAX_PARTS else size // MAX_PARTS + 1)
    derived = -(-size // parts)
    add(_up(derived, MiB))        # whole MiB: what most tools round to
    add(derived)                  # exact: size / N rounded up
    add(_up(derived, 1_000_000))  # whole MB
    return found


class _PartHasher:
    """The multipart ETag of a stream for one part size, fed chunk by chunk."""

    def __init__(self, part: int):
        self.part = part
        self.left = part
        self.current = hashlib.md5()
        self.digests: list[bytes] = []

    def update(self, data: memoryview) -> None:
        while data:
            take = min(self.left, len(data))
            self.current.update(data[:take])
            self.left -= take
            data = data[take:]
            if self.left == 0:
                self.digests.append(self.current.digest())
                self.current, self.left = hashlib.md5(), self.part

    def etag(self) -> str:
        digests = self.digests + ([self.current.digest()] if self.left != self.part else [])
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@dataclass(frozen=True, slots=True)
class Digest:
    md5: str                 # hex
    sha256: str              # hex: what syncd records (the manifest's content hash)
    multipart: frozenset[str]  # the multipart ETags of the candidate part sizes
    bytes_read: int


def digest(rootdir: RootDir, rel: str, expected: os.stat_result, part_candidates: list[int]) -> Digest | None:
    """Read ``rel`` once through the folder's root fd, hashing MD5, SHA-256 and every
    candidate part size; None if it is not the version ``expected`` (changed meanwhile: the
    scan or the watcher uploads it). OSError if it cannot be read.

    Called once per file of a rebuild or a take-over, so it keeps to open, read, fstat and
    close. One fstat, after the read, is enough: a file replaced since ``expected`` was
    taken has another inode, and one written to meanwhile another mtime or ctime."""
    fd = rootdir.open_file(rel)
    try:
        size = expected.st_size
        md5, sha = hashlib.md5(), hashlib.sha256()
        parts = [_PartHasher(p) for p in part_candidates]
        buf = bytearray(min(READ_CHUNK, size + 1))  # +1: notices a file that grew
        view = memoryview(buf)
        total = 0
        while total <= size and (n := os.readv(fd, (buf,))):
            chunk = view[:n]
            md5.update(chunk)
            sha.update(chunk)
            for p in parts:
                p.update(chunk)
            total += n
        if total != size or not same_version(os.fstat(fd), expected):
            return None
    finally:
        os.close(fd)
    return Digest(md5.hexdigest(), sha.hexdigest(), frozenset(p.etag() for p in parts), total)


class Proof(StrEnum):
    """What showed that an object holds a file (`syncd status`: last_reconcile.adopted_by)."""

    ETAG = "etag"                      # single-part ETag = the file's MD5
    MULTIPART_ETAG = "multipart_etag"  # multipart ETag = the file's, for a candidate part size
    RCLONE_MD5 = "md5chksum"           # rclone's MD5 metadata
    SYNCD_META = "syncd_metadata"      # syncd's own metadata: size and mtime, or sha256


def etag_proof(etag: str, d: Digest) -> Proof | None:
    """The listing's ETag proves the content (callers rule out SSE-KMS/SSE-C first)."""
    parts = etag_parts(etag)
    if parts == 0 and etag.lower() == d.md5:
        return Proof.ETAG
    if parts and etag.lower() in d.multipart:
        return Proof.MULTIPART_ETAG
    return None


def meta_proof(meta: Mapping[str, str], d: Digest) -> Proof | None:
    """syncd's ``syncd-sha256`` or rclone's ``md5chksum`` metadata proves the content."""
    if meta.get(META_SHA256) == d.sha256:
        return Proof.SYNCD_META
    rclone_md5 = meta.get(META_RCLONE_MD5)
    if rclone_md5:
        try:
            if base64.b64decode(rclone_md5, validate=True).hex() == d.md5:
                return Proof.RCLONE_MD5
        except (binascii.Error, ValueError):
            pass
    return None


def own_mtime_matches(meta: Mapping[str, str], st: os.stat_result, size: int) -> bool:
    """syncd wrote this object from a file of this size and mtime (how syncd trusts its own
    objects everywhere: the local scan compares size and mtime too)."""
    mtime = meta.get(META_MTIME)
    return mtime is not None and mtime.lstrip("-").isdigit() and (st.st_size, st.st_mtime_ns) == (size, int(mtime))

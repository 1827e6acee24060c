"""The object-store seam: what the pipeline needs from S3, and nothing about how.

Only :mod:`syncd.s3store` imports an S3 client library. The scheduler and transfers speak
this protocol, which keeps them testable and lets the data path change on evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

# User metadata written on every object so a lost journal can be rebuilt from the bucket
# without re-uploading unchanged files (DESIGN.md, "Semantics").
META_MTIME = "syncd-mtime-ns"
META_SHA256 = "syncd-sha256"

# Error scopes: how far a failure reaches.
TRANSIENT = "transient"  # try this change again later (5xx, throttling, network)
FOLDER = "folder"        # the whole folder cannot work (credentials, bucket missing)
KEY = "key"              # this change cannot succeed as it is (invalid key, too large)


class StoreError(Exception):
    """An object-store failure, classified so callers know whether to retry, park or halt."""

    def __init__(self, message: str, *, scope: str, code: str = "", key: str | None = None):
        super().__init__(message)
        self.scope = scope
        self.code = code
        self.key = key

    @property
    def transient(self) -> bool:
        return self.scope == TRANSIENT


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str
    size: int
    etag: str
    meta: Mapping[str, str] | None = None  # only from head(); listings do not carry metadata


@dataclass(frozen=True, slots=True)
class PutResult:
    etag: str
    bytes_sent: int


class ObjectStore(Protocol):
    """What syncd needs from a bucket. Every method is idempotent."""

    bucket: str

    def check(self) -> None:
        """Raise StoreError(scope=FOLDER) unless the bucket is reachable with these credentials."""

    def put(self, key: str, data: bytes, meta: Mapping[str, str], sha256: bytes) -> PutResult:
        """Store ``data`` at ``key`` in one request; ``sha256`` is the digest of ``data``."""

    def put_stream(self, key: str, stream: BinaryIO, size: int, meta: Mapping[str, str]) -> PutResult:
        """Store ``size`` bytes read from ``stream`` (large files; multipart as needed)."""

    def copy(self, src_key: str, dst_key: str) -> str:
        """Server-side copy keeping the source's metadata; returns the new ETag."""

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Delete up to 1000 keys in one request; returns ``{key: error}`` for failures."""

    def head(self, key: str) -> RemoteObject | None:
        """The object's size, ETag and metadata, or None if absent."""

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        """Every object under ``prefix``, one page (one LIST request) at a time.

        No order is assumed: S3 lists in UTF-8 byte order, but SeaweedFS walks its directory
        tree (``a/-/x`` before ``a/- x``)."""

    def close(self) -> None:
        """Release connections."""

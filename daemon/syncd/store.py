"""The object-store seam: what the pipeline needs from S3, and nothing about how.

Only :mod:`syncd.s3store` imports an S3 client library. The scheduler and transfers speak
this protocol, which keeps them testable and lets the data path change on evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from .bandwidth import Payload

# User metadata written on every object so a lost journal can be rebuilt from the bucket
# without re-uploading unchanged files (docs/architecture.md, "The store seam").
META_MTIME = "syncd-mtime-ns"
META_SHA256 = "syncd-sha256"



# Error scopes: how far a failure reaches.
TRANSIENT = "transient"  # try this change again later (5xx, throttling, network)
FOLDER = "folder"        # the whole folder cannot work (credentials, bucket missing)
KEY = "key"              # this change cannot succeed as it is (invalid key, too large)

UNREACHABLE = "Unreachable"  # error code: no connection could be made at all (folder is stalled)


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


@dataclass(frozen=True, slots=True)
class Part:
    """One finished part of a multipart upload, as CompleteMultipartUpload needs it."""

    number: int
    etag: str
    checksum: str = ""  # base64 checksum of the part in the folder's algorithm ("" with md5 or off)
    size: int = 0


@dataclass(frozen=True, slots=True)
class Upload:
    """An incomplete multipart upload found in the bucket."""

    key: str
    upload_id: str
    initiated: float  # unix time


def multipart_etag(parts: list[Part]) -> str:
    """The ETag S3 gives a completed multipart object: MD5 of the parts' binary ETags, "-N".

    Lets a Complete whose response was lost be recognised by a HEAD afterwards."""
    joined = b"".join(bytes.fromhex(p.etag) for p in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


class ObjectStore(Protocol):
    """What syncd needs from a bucket. Every method is idempotent."""

    bucket: str

    def check(self) -> None:
        """Raise StoreError(scope=FOLDER) unless the bucket is reachable with these credentials."""

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None]) -> None:
        """Store ``body`` at ``key`` in one request; ``sha256`` is the digest of its bytes.

        Asynchronous: ``done`` gets the result or the StoreError exactly once, maybe before
        this returns, maybe later on a thread of the store's own. The many small files are
        sent this way so that no thread sits waiting for each answer."""

    def create_upload(self, key: str, meta: Mapping[str, str]) -> str:
        """Start a multipart upload; returns its upload id."""

    def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> Part:
        """Send one part with its checksum (the server checks it)."""

    def complete_upload(self, key: str, upload_id: str, parts: list[Part]) -> str:
        """Publish the object from ``parts``; returns its ETag. NoSuchUpload raises StoreError."""

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Discard an upload and its parts; an upload that no longer exists is not an error."""

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        """The parts the server holds for an upload, or None if the upload does not exist."""

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Incomplete multipart uploads under ``prefix``."""

    def set_meta(self, key: str, meta: Mapping[str, str], size: int) -> str:
        """Replace an object's user metadata in place (server-side copy); returns the new ETag."""

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

"""How syncd's values become the parameters of boto3's S3 calls and the headers of the
requests the CRT sends, and how their answers become syncd's values. Part of the S3 store."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from awscrt.checksums import crc32c

from .bandwidth import Payload
from .choices import Checksum
from .store import RemoteObject


def etag_of(resp: Mapping[str, Any]) -> str:
    return str(resp.get("ETag", "")).strip('"')


# boto3 parameter -> HTTP header, for the requests the CRT sends.
CRT_HEADERS = {"ChecksumSHA256": "x-amz-checksum-sha256", "ChecksumCRC32C": "x-amz-checksum-crc32c",
            "ContentMD5": "Content-MD5", "StorageClass": "x-amz-storage-class",
            "ServerSideEncryption": "x-amz-server-side-encryption",
            "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
# Object header -> boto3 parameter (the headers a `headers:` rule may set).
HEADER_PARAMS = {"Cache-Control": "CacheControl", "Content-Type": "ContentType",
                  "Content-Disposition": "ContentDisposition", "Content-Encoding": "ContentEncoding",
                  "Content-Language": "ContentLanguage", "Expires": "Expires"}


def header_args(headers: Mapping[str, str]) -> dict[str, Any]:
    """boto3 parameters for object headers (validated in config.py); Expires goes as a date."""
    out: dict[str, Any] = {}
    for name, value in headers.items():
        out[HEADER_PARAMS[name]] = parsedate_to_datetime(value) if name == "Expires" else value
    return out


# checksum mode -> (the algorithm named at CreateMultipartUpload, the per-request parameter).
FLEXIBLE = {Checksum.SHA256: ("SHA256", "ChecksumSHA256"), Checksum.CRC32C: ("CRC32C", "ChecksumCRC32C")}


def body_arg(payload: Payload) -> Any:
    """Plain bytes go out in one sendall; a watched body is read (and paced) in chunks."""
    return payload.data if payload.plain else payload


def answered(key: str, resp: Mapping[str, Any]) -> RemoteObject:
    """The RemoteObject of a HEAD or GET answer (a ranged GET: the whole object's size)."""
    size = int(resp["ContentLength"])
    content_range = str(resp.get("ContentRange") or "")
    if "/" in content_range and not content_range.endswith("/*"):
        size = int(content_range.rsplit("/", 1)[1])
    modified = resp.get("LastModified")
    return RemoteObject(key=key, size=size, etag=etag_of(resp), meta=dict(resp.get("Metadata", {})),
                        modified=modified.timestamp() if modified is not None else None)


def checksum_args(mode: Checksum, payload: Payload, sha256: bytes | None = None) -> dict[str, str]:
    """Per-request integrity check, per the folder's ``checksum`` setting: the server
    recomputes it and rejects a body damaged on the way (BadDigest). ``sha256`` is the
    body's digest when the caller already has it."""
    if mode == Checksum.SHA256:
        digest = sha256 if sha256 is not None else hashlib.sha256(payload.data).digest()
        return {"ChecksumSHA256": base64.b64encode(digest).decode()}
    if mode == Checksum.CRC32C:
        # awscrt's CRC32C uses the CPU's crc32 instructions: far cheaper than SHA-256
        # on both ends (docs/behaviour.md, "Large files").
        return {"ChecksumCRC32C": base64.b64encode(crc32c(payload.data).to_bytes(4, "big")).decode()}
    if mode == Checksum.MD5:
        return {"ContentMD5": base64.b64encode(hashlib.md5(payload.data).digest()).decode()}
    return {}

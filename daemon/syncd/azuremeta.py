"""syncd's metadata, ETags and block ids in Azure's terms (see syncd.azurestore for why).

Metadata names must be C# identifiers, so ``syncd-mtime-ns`` is stored as ``syncd_mtime_ns``;
rclone's ``mtime`` in the RFC 3339 form of rclone's azureblob backend. A blob's ETag as the
pipeline sees it is S3's: the Content-MD5 in hex, or the multipart form kept in ``syncd_etag``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azure.storage.blob import ContentSettings

from .store import META_RCLONE_MTIME, RemoteObject

META_ETAG = "syncd_etag"     # the S3-form ETag of a committed block list (see syncd.azurestore)
_MULTIPART = re.compile(r"^[0-9a-f]{32}-[0-9]+$")
_BLOCK = re.compile(r"^[0-9a-f]{16}\d{5}$")  # a block id's upload id and part number

# Object header -> ContentSettings field. Blob HTTP headers have no Expires.
_SETTINGS = {"Content-Type": "content_type", "Cache-Control": "cache_control",
             "Content-Disposition": "content_disposition", "Content-Encoding": "content_encoding",
             "Content-Language": "content_language"}


# ---------------------------------------------------------------------- metadata names

def to_azure(meta: Mapping[str, str]) -> dict[str, str]:
    """syncd's metadata as Azure stores it (names that are C# identifiers)."""
    out: dict[str, str] = {}
    for name, value in meta.items():
        if name.startswith("syncd-"):
            name = name.replace("-", "_")
        elif name == META_RCLONE_MTIME:
            value = _rfc3339(value)
        out[name] = value
    return out


def from_azure(meta: Mapping[str, str]) -> dict[str, str]:
    """The inverse of :func:`to_azure`, without syncd's internal ``syncd_etag``."""
    out: dict[str, str] = {}
    for name, value in meta.items():
        if name.lower() == META_ETAG:
            continue
        if name.lower().startswith("syncd_"):
            name = name.lower().replace("_", "-")
        elif name.lower() == META_RCLONE_MTIME:
            name, value = META_RCLONE_MTIME, _seconds(value)
        out[name] = value
    return out


def _rfc3339(seconds: str) -> str:
    """``1700000000.123456789`` as rclone's azureblob ``mtime`` (RFC 3339, nanoseconds, UTC)."""
    whole, _, frac = seconds.partition(".")
    try:
        moment = datetime.fromtimestamp(int(whole), UTC)
    except (ValueError, OverflowError):
        return seconds
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{(frac or '0').ljust(9, '0')[:9]}Z"


def _seconds(stamp: str) -> str:
    """rclone's RFC 3339 ``mtime`` back in the S3 form; anything else unchanged."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", stamp)
    if m is None:
        return stamp
    whole = int(datetime.fromisoformat(m.group(1) + "+00:00").timestamp())
    return f"{whole}.{(m.group(2) or '0').ljust(9, '0')}"


def settings(headers: Mapping[str, str], md5: bytes | bytearray | None = None) -> ContentSettings:
    fields: dict[str, Any] = {_SETTINGS[k]: v for k, v in headers.items() if k in _SETTINGS}
    return ContentSettings(content_md5=bytearray(md5) if md5 else None, **fields)


def etag_of(props: Any) -> str:
    """The ETag the pipeline sees (see the module docstring)."""
    meta = props.metadata or {}
    stored = meta.get(META_ETAG, "")
    if _MULTIPART.match(stored):
        return str(stored)
    md5 = props.content_settings.content_md5 if props.content_settings is not None else None
    if md5:
        return bytes(md5).hex()
    return str(props.etag or "").strip('"')


def object_of(key: str, props: Any, with_meta: bool) -> RemoteObject:
    modified = props.last_modified.timestamp() if props.last_modified is not None else None
    return RemoteObject(key, int(props.size or 0), etag_of(props), from_azure(props.metadata or {}) if with_meta
                        else None, modified)


def block_id(upload_id: str, number: int, md5_hex: str) -> str:
    """Upload id, part number and the part's raw MD5: 37 bytes, 52 characters of base64 (Azure
    takes at most 64 bytes before encoding; Azurite at most 64 characters after)."""
    return base64.b64encode(f"{upload_id}{number:05d}".encode() + bytes.fromhex(md5_hex)).decode()


def parse_block(block_id: str) -> tuple[str, int, str] | None:
    try:
        raw = base64.b64decode(block_id)
        head = raw[:21].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if len(raw) != 37 or not _BLOCK.match(head):
        return None
    return head[:16], int(head[16:]), raw[21:].hex()

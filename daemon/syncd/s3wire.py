"""S3's REST answers as the CRT path reads them (botocore parses its own): the failure of a
request, what a GET's headers say of the object, and ListObjectsV2 pages."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus

from .store import RemoteObject

# CrtFailure.transport of a listing page answered with 200 but no usable page (a body cut
# short, an error document): the CRT saw a success and did not retry it.
BAD_LISTING = "BadListing"


@dataclass
class CrtFailure(Exception):
    """A CRT request that failed: the server's answer (status, code, message) or, with no
    answer, the CRT error's name (connection refused, timed out, ...)."""

    status: int | None
    code: str
    message: str
    transport: str = ""
    timed_out: bool = False

    def __str__(self) -> str:
        return self.message or self.code or self.transport


def object_info(key: str, headers: list[tuple[str, str]]) -> RemoteObject:
    """What a GET's headers say of the object: size, ETag, user metadata, LastModified."""
    meta: dict[str, str] = {}
    size, etag, modified = 0, "", None
    for name, value in headers:
        low = name.lower()
        if low.startswith("x-amz-meta-"):
            meta[low[len("x-amz-meta-"):]] = value
        elif low == "content-length":
            size = int(value)
        elif low == "etag":
            etag = value.strip('"')
        elif low == "last-modified":
            modified = parsedate_to_datetime(value).timestamp()
    return RemoteObject(key=key, size=size, etag=etag, meta=meta, modified=modified)


def xml_text(text: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return match.group(1).strip() if match else ""


def query_value(value: str) -> str:
    """A query parameter value, encoded as SigV4's canonical request has it."""
    return quote(value, safe="-_.~")


def listing_page(body: bytes) -> tuple[list[RemoteObject], str | None]:
    """A ListObjectsV2 answer: its objects and the next continuation token, None if it is the
    last page; CrtFailure if it is no such answer. Asked with ``encoding-type=url``, as botocore
    asks: keys with characters XML 1.0 cannot carry come through URL-encoded."""
    try:
        return _parse_listing(body)
    except (ET.ParseError, ValueError) as exc:
        raise CrtFailure(None, "", f"an unreadable listing page: {exc}", transport=BAD_LISTING) from exc


def _parse_listing(body: bytes) -> tuple[list[RemoteObject], str | None]:
    root = ET.fromstring(body)
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    name = root.tag[len(ns):]
    if name == "Error":  # S3 may send an error with status 200: a failure like a 500 (botocore's view too)
        code = root.findtext(ns + "Code") or "InternalError"
        raise CrtFailure(500, code, root.findtext(ns + "Message") or code, transport=BAD_LISTING)
    if name != "ListBucketResult":
        raise CrtFailure(None, "", f"not a listing page but <{name}>", transport=BAD_LISTING)
    key_tag, size_tag, etag_tag, modified_tag = ns + "Key", ns + "Size", ns + "ETag", ns + "LastModified"
    # Decoded only if the answer says it is encoded (as botocore does): a store that ignores
    # encoding-type sends the keys as they are.
    encoded = (root.findtext(ns + "EncodingType") or "").strip().lower() == "url"
    found: list[RemoteObject] = []
    for item in root.iter(ns + "Contents"):
        stamp = item.findtext(modified_tag)
        key = item.findtext(key_tag) or ""
        if encoded and ("%" in key or "+" in key):  # most keys need no decoding (unquote_plus is Python)
            key = unquote_plus(key)
        found.append(RemoteObject(key=key,
                                  size=int(item.findtext(size_tag) or 0),
                                  etag=(item.findtext(etag_tag) or "").strip('"'),
                                  modified=datetime.fromisoformat(stamp).timestamp() if stamp else None))
    truncated = (root.findtext(ns + "IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(ns + "NextContinuationToken")
    if truncated and not token:
        raise CrtFailure(None, "", "a truncated listing page without a continuation token", transport=BAD_LISTING)
    return found, token if truncated else None

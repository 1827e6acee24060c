"""Validators of single configuration values: each takes what YAML gave and returns the value
a frozen config dataclass holds, or raises ValueError saying what was expected (config.py adds
the file and the key). Split from config.py, which owns the files, the key tables and the
dataclasses.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .units import parse_duration, parse_rate, parse_size

Parser = Callable[[Any], Any]

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3 limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html)
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
# In percent form, a deletion wave this small is never held: routine tools delete hundreds
# of files at once (`git gc` prunes every loose object it packed, `make clean`, cache
# cleanups), while the mistakes the guard is for either empty or replace the root (caught by
# the root checks, whatever the size) or delete thousands (an `rm -rf` of most of a large tree).

# Object headers a `headers:` rule may set (canonical spelling; names match case-insensitively).
# Only these: the rest are either S3's own (ETag, x-amz-*) or not stored by S3 at all.
HEADER_NAMES = ("Cache-Control", "Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language",
                "Expires")
MIN_ROLE_DURATION = 900      # STS AssumeRole: DurationSeconds is 900 s to 12 h (the role's maximum)
MAX_ROLE_DURATION = 43200


@dataclass(frozen=True)
class HeaderRule:
    """One `headers:` entry: objects whose path (relative to the folder root) matches
    ``pattern`` (gitignore syntax) get ``headers``; the first matching rule wins."""

    pattern: str
    headers: tuple[tuple[str, str], ...]


def parse_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def parse_opt(parser: Parser) -> Parser:
    def parse(value: Any) -> Any:
        return None if value is None else parser(value)
    return parse


def parse_choice(*choices: str, kind: Callable[[str], Any] = str) -> Parser:
    """One of ``choices``, as ``kind`` (a StrEnum of them, say)."""
    def parse(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return kind(value)
    return parse


def parse_int_range(lo: int, hi: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value
    return parse


def parse_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def parse_bucket(value: Any) -> str:
    # AWS allows 3-63 of [a-z0-9.-]; S3-compatible stores and legacy buckets are laxer.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", value):
        raise ValueError(f"expected a bucket name (3+ characters of letters, digits, '.', '-', '_'), got {value!r}")
    return str(value)


def parse_prefix(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"expected a key prefix such as 'photos/', got {value!r}")
    prefix = value.lstrip("/")
    # "photos" almost always means "photos/": keys are prefix + relative path.
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def parse_part_size(value: Any) -> int:
    size = parse_size(value)
    if not S3_MIN_PART <= size <= S3_MAX_PART:
        raise ValueError("expected a part size from 5MiB to 5GiB (S3's multipart limits)")
    return size


def parse_positive_rate(value: Any) -> int:
    rate = parse_rate(value)
    if rate <= 0:
        raise ValueError("expected a rate greater than zero such as 20MiB/s (omit the key for no limit)")
    return rate


def parse_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("expected a duration greater than zero")
    return seconds


def parse_group(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise ValueError(f"no such group {value!r} on this system") from None
    raise ValueError(f"expected a group name or number, got {value!r}")


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def parse_max_delete(value: Any) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+%?|[0-9]+\.[0-9]+%", text):
        raise ValueError(f"expected a count such as 1000 or a percentage such as 25%, got {value!r}")
    if text.endswith("%") and float(text[:-1]) > 100:
        raise ValueError("a percentage cannot exceed 100%")
    return text


def parse_endpoint(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8333, got {value!r}")
    return value.rstrip("/")


def parse_listen(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9108`` for IPv6): an address to bind, not a URL."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = _is_ip(host, 6)
    else:
        valid_host = _is_ip(host, 4) or bool(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", host))
    if not valid_host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9108 (IPv6: [::1]:9108), got {value!r}")
    return host, int(port)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def parse_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise ValueError(f"expected an http(s) URL such as https://hc-ping.com/UUID, got {value!r}")
    return value


def _matching(pattern: str, expected: str) -> Callable[[Any], str]:
    """A parser of strings that match ``pattern`` whole; ``expected`` says what in the error."""
    compiled = re.compile(pattern)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value
    return parse


parse_role_arn = _matching(r"arn:[a-z-]+:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}",
                           "a role ARN such as arn:aws:iam::123456789012:role/Uploader")
# STS: RoleSessionName is 2-64 of [\w+=,.@-]
parse_role_session_name = _matching(r"[\w+=,.@-]{2,64}", "2 to 64 letters, digits or any of + = , . @ - _")
# STS: ExternalId is 2-1224 of [\w+=,.@:/-]
parse_role_external_id = _matching(r"[\w+=,.@:/-]{2,1224}",
                                   "2 to 1224 letters, digits or any of + = , . @ : / - _")


def parse_role_duration(value: Any) -> int:
    seconds = parse_duration(value)
    if not MIN_ROLE_DURATION <= seconds <= MAX_ROLE_DURATION:
        raise ValueError(f"expected a session duration from 15m to 12h (STS AssumeRole's limits), got {value!r}")
    return int(seconds)


def _header_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"header {name!r}: expected a non-empty string, got {value!r}")
    if not all(" " <= c <= "~" for c in value):
        raise ValueError(f"header {name!r}: only printable ASCII is allowed in a header value, got {value!r}")
    if name == "Expires":
        try:
            parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise ValueError(f"header 'Expires': expected an HTTP date such as 'Wed, 21 Oct 2026 07:28:00 GMT', "
                             f"got {value!r}") from None
    return value


def parse_headers(value: Any) -> tuple[HeaderRule, ...]:
    """``[{pattern: GLOB, Header-Name: value, ...}, ...]``; an unknown header name is an error."""
    if not isinstance(value, list):
        raise ValueError("expected a list of rules such as [{pattern: '*.html', Cache-Control: 'max-age=60'}]")
    canonical = {n.lower(): n for n in HEADER_NAMES}
    rules = []
    for number, entry in enumerate(value, 1):
        where = f"rule {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping such as {{pattern: '*.html', Cache-Control: 'max-age=60'}}, "
                             f"got {entry!r}")
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"{where}: 'pattern' is required: a gitignore-style pattern such as '*.html' "
                             "or 'assets/**'")
        if pattern.startswith("!"):
            raise ValueError(f"{where}: pattern {pattern!r}: a negated pattern cannot select objects; "
                             "put a more specific rule first instead (the first match wins)")
        where = f"rule {number} (pattern {pattern!r})"
        headers = []
        for name, header_value in entry.items():
            if name == "pattern":
                continue
            known = canonical.get(str(name).lower())
            if known is None:
                close = difflib.get_close_matches(str(name).lower(), list(canonical), n=1, cutoff=0.6)
                hint = f"did you mean '{canonical[close[0]]}'?" if close else f"allowed: {', '.join(HEADER_NAMES)}"
                raise ValueError(f"{where}: unknown header {name!r} ({hint})")
            try:
                headers.append((known, _header_value(known, header_value)))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if not headers:
            raise ValueError(f"{where}: no header to set; allowed: {', '.join(HEADER_NAMES)}")
        rules.append(HeaderRule(pattern, tuple(headers)))
    return tuple(rules)


# Keys that only the S3 store reads: set with `store: azure`, they would be silently ignored.
S3_ONLY_KEYS = ("profile", "role_arn", "role_external_id", "sts_endpoint_url", "storage_class", "sse",
                "sse_kms_key_id", "region")


def azure_problems(values: dict[str, Any], own: set[str]) -> list[tuple[str, str]]:
    """``(key, problem)`` for a folder with ``store: azure``: names Azure refuses, settings it has
    no counterpart for. ``own``: the keys the folder file sets (a global default meant for S3
    folders is not this folder's mistake)."""
    out: list[tuple[str, str]] = []
    bucket = values.get("bucket")
    # Azure: 3-63 characters of lower-case letters, digits and single hyphens, starting and
    # ending with a letter or digit.
    if isinstance(bucket, str) and not re.fullmatch(r"(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*", bucket):
        out.append(("bucket", f"{bucket!r} is not an Azure container name (3-63 lower-case letters, digits and "
                              "single hyphens, starting and ending with a letter or digit)"))
    for key in S3_ONLY_KEYS:
        if key in own and values.get(key) is not None:
            out.append((key, "applies to store: s3 only; Azure takes its credentials from the environment "
                             "(AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, "
                             "or DefaultAzureCredential)"))
    for rule in values.get("headers") or ():
        if any(name == "Expires" for name, _ in rule.headers):
            out.append(("headers", f"pattern {rule.pattern!r}: Azure blobs have no Expires header; use "
                                   "Cache-Control instead"))
    return out

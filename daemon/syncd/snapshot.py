"""Which objects make up the tree a restore writes, and under which names: the objects now,
the versions current at a time, or (syncd.trash) the trash; and the keys refused because
their names could lead outside the target or cannot be held by a filesystem."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum

from .store import ObjectStore, Version

NAME_MAX = 255           # bytes per path component on Linux filesystems
PATH_MAX = 4096


class Source(StrEnum):
    """Where a restore's items come from."""

    CURRENT = "current"      # the objects now
    VERSIONS = "versions"    # --at on a versioned bucket: ListObjectVersions
    TRASH = "trash"          # --at from the current objects and the trash (syncd.trash.items_at)
    DELETED = "deleted"      # --deleted: trash entries of paths with no current object


def name_problem(rel: str) -> str | None:
    """Why a key's relative path must not be written beneath the target (issue 19, item 5)."""
    if "\0" in rel:
        return "the key contains a NUL byte, which no file name can hold"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "the key has an empty, '.' or '..' component (or is absolute): it could lead outside the target"
    if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        return f"a component of the key is longer than {NAME_MAX} bytes, which the filesystem cannot hold"
    if len(rel.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        return f"the path is longer than {PATH_MAX} bytes, which the filesystem cannot hold"
    return None


def parse_time(text: str) -> float:
    """ISO 8601 (``2026-12-01T10:00:00Z``, ``2026-12-01 10:00+01:00``); a time without a
    zone is local time. Raises ValueError with the expected form."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at {text!r}: expected an ISO 8601 time such as 2026-12-01T10:00:00Z") from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


def current_items(store: ObjectStore, prefix: str) -> Iterator[tuple[str, str, int, str, str | None]]:
    for page in store.list(prefix):
        for obj in page:
            yield obj.key, obj.key[len(prefix):], obj.size, obj.etag, None


def items_at(store: ObjectStore, prefix: str, at: float) -> Iterator[tuple[str, str, int, str, str | None]]:
    """The version current at ``at`` of each key (the newest not after it); a key whose
    newest entry by then is a delete marker, or that did not exist yet, is left out."""
    newest: dict[str, Version] = {}
    for page in store.list_versions(prefix):
        for v in page:
            if v.modified > at:
                continue
            best = newest.get(v.key)
            # Same second: S3 lists a key's versions newest first; keep the first seen.
            if best is None or v.modified > best.modified:
                newest[v.key] = v
    for key, v in newest.items():
        if not v.deleted:
            yield key, key[len(prefix):], v.size, v.etag, v.version_id

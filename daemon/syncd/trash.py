"""The trash (``delete: trash``): where a deleted or overwritten object is kept for a while.

Before syncd deletes or overwrites one of its objects, it server-side copies it (metadata
and all, no file data sent) to ``<prefix>.syncd-trash/<path>@<stamp>``, the stamp being when
syncd set out to delete or overwrite it (UTC, ``20261201T101500.123456Z``: fixed width, so
keys sort by time). The stamp is chosen and journaled before the copy (Journal.trash_stamps):
a retry after kill -9 copies to the same key again, never to a second one.

The reconciler purges entries older than ``trash_retain`` (:func:`expired`), and
``syncd restore --at``/``--deleted`` read them back (:func:`items_at`, :func:`deleted_items`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from .store import META_MTIME, ObjectStore, RemoteObject

TRASH = ".syncd-trash/"        # under the folder's prefix; paths.RESERVED_NAMES keeps it out of the mirror
_STAMP = "%Y%m%dT%H%M%S.%fZ"
STAMP_LEN = 23
HEAD_WORKERS = 16  # restore --at: the HEADs of the paths changed since TIME, in parallel


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime(_STAMP)


def parse_stamp(text: str) -> float | None:
    if len(text) != STAMP_LEN:
        return None
    try:
        return datetime.strptime(text, _STAMP).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def trash_key(prefix: str, rel: str, when: str) -> str:
    """The trash key of path ``rel`` deleted or overwritten at stamp ``when``."""
    return f"{prefix}{TRASH}{rel}@{when}"


def parse_key(prefix: str, key: str) -> tuple[str, float] | None:
    """(path, deletion time) of a trash key, or None if ``key`` is not one."""
    inside = key[len(prefix):] if key.startswith(prefix) else None
    if inside is None or not inside.startswith(TRASH):
        return None
    rel, at, text = inside[len(TRASH):].rpartition("@")
    when = parse_stamp(text)
    if not at or not rel or when is None:
        return None
    return rel, when


def expired(prefix: str, key: str, cutoff: float) -> bool:
    """A trash entry deleted before ``cutoff`` (now minus ``trash_retain``): to be purged."""
    parsed = parse_key(prefix, key)
    return parsed is not None and parsed[1] < cutoff


@dataclass(frozen=True, slots=True)
class Entry:
    """One trash entry: path ``rel`` as it was until ``deleted``, kept at ``key``."""

    rel: str
    deleted: float
    key: str
    size: int
    etag: str


def entries(store: ObjectStore, prefix: str) -> dict[str, list[Entry]]:
    """The trash by path, each path's entries oldest deletion first."""
    found: dict[str, list[Entry]] = {}
    for page in store.list(prefix + TRASH):
        for obj in page:
            parsed = parse_key(prefix, obj.key)
            if parsed is not None:
                found.setdefault(parsed[0], []).append(Entry(parsed[0], parsed[1], obj.key, obj.size, obj.etag))
    for versions in found.values():
        versions.sort(key=lambda e: e.deleted)
    return found


def _written_by(store: ObjectStore, entry: Entry, at: float) -> bool:
    """Did the trashed content exist at ``at``? Its file's mtime (kept in the copy's
    metadata) says so; without one (another client wrote it) it is taken to have."""
    head: RemoteObject | None = store.head(entry.key)
    if head is None:
        return False  # purged since it was listed
    mtime = (head.meta or {}).get(META_MTIME, "")
    return not mtime.lstrip("-").isdigit() or int(mtime) <= at * 1e9


Item = tuple[str, str, int, str, str | None]  # key, path, size, ETag, version (as restore lists them)


def items_at(store: ObjectStore, prefix: str, at: float, current: Iterator[RemoteObject]) -> Iterator[Item]:
    """The tree at ``at`` from the current objects and the trash (docs/restore.md).

    A path's versions are its trash entries in deletion order, then its current object. The
    version current at ``at`` is the first one that still existed after ``at`` (a trash entry
    deleted after it, else the current object); it is restored if it existed at ``at`` too:
    a current object not modified after ``at``, a trash entry whose file's mtime is not after
    it. Costs one HEAD per path changed since ``at`` (the listing carries no metadata)."""
    trash = entries(store, prefix)
    now: dict[str, RemoteObject] = {o.key[len(prefix):]: o for o in current}
    later: list[Entry] = []
    for rel in sorted(set(trash) | set(now)):
        entry = next((e for e in trash.get(rel, ()) if e.deleted > at), None)
        if entry is not None:
            later.append(entry)
            continue
        obj = now.get(rel)
        if obj is not None and (obj.modified is None or obj.modified <= at):
            yield obj.key, rel, obj.size, obj.etag, None
    with ThreadPoolExecutor(HEAD_WORKERS, thread_name_prefix="trash-head") as pool:
        for entry, existed in zip(later, pool.map(lambda e: _written_by(store, e, at), later), strict=True):
            if existed:
                yield entry.key, entry.rel, entry.size, entry.etag, None


def deleted_items(store: ObjectStore, prefix: str, current: Iterator[RemoteObject]) -> Iterator[Item]:
    """Each path in the trash that has no current object, as it was when last deleted."""
    now = {o.key[len(prefix):] for o in current}
    for rel, versions in sorted(entries(store, prefix).items()):
        if rel not in now:
            last = versions[-1]
            yield last.key, rel, last.size, last.etag, None


def has_entries(store: ObjectStore, prefix: str) -> bool:
    return any(page for page in store.list(prefix + TRASH))

"""The vocabulary of changes the journal records and the pipeline passes around: a claimed
change, what the bucket holds for a path, and how a change ended. Split from journal.py so
that the planner, the transfers and the tests need not import the journal to speak of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Pending:
    """A claimed change: "this path may differ from the bucket"."""

    path: str
    move_from: str | None
    gen: int
    attempts: int
    first_seen: float
    quiet: float | None = None  # how long its file must have been unmodified; None: the folder's settle


@dataclass(frozen=True, slots=True)
class Entry:
    """What the bucket holds for one path, as last written by syncd."""

    path: str
    size: int
    mtime_ns: int
    inode: int | None
    sha256: str | None
    etag: str | None


class IntentOp(StrEnum):
    """What may have reached a key whose write intent is unresolved (table ``intents``)."""

    PUT = "put"
    MULTIPART = "multipart"
    COPY = "copy"


class OutcomeKind(StrEnum):
    """How a claimed change ended (see :class:`Outcome`)."""

    DONE = "done"
    RETRY = "retry"
    DEFER = "defer"
    PARK = "park"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one claimed change ended; applied in a batch by :meth:`Journal.apply`.

    kind: ``done`` (row finished; ``entry`` upserted or ``forget`` removes the manifest row),
    ``retry`` (transient error: back off ``delay``), ``defer`` (not ready: look again after
    ``delay`` without counting an attempt), ``park`` (permanent error, needs the user).
    A ``done`` with ``entry`` or ``forget`` (or ``settled``) also ends the path's write intent.
    """

    kind: OutcomeKind
    path: str
    gen: int
    entry: Entry | None = None
    forget: bool = False
    error: str | None = None
    delay: float = 0.0
    settled: bool = False  # the key needs nothing more (delete: keep): drop its write intent

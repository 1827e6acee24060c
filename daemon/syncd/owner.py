"""Ownership: one folder, and one daemon, per bucket prefix.

A folder claims its prefix with a marker object, ``<prefix>.syncd/owner``, created with
``If-None-Match: *`` so that of two daemons racing for a prefix exactly one wins. The marker
holds the folder's owner id, and every object syncd writes carries that id in its metadata
(``syncd-owner``). A second daemon configured for a claimed prefix (a cloned machine, a
copied config) finds another id there and puts its folder in ``error`` instead of fighting
over the keys; ``syncd resume FOLDER --take-over`` claims the prefix deliberately.

A lost journal gets its id back from the marker, but only when the marker names this host and
this folder path: a fresh journal elsewhere is the copied-config case, not a lost one.
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from .config import FolderConfig
from .journal import Journal
from .store import FOLDER, ObjectStore, StoreError

MARKER = ".syncd/owner"
OWNER_META = "owner"           # journal meta: this folder's owner id
ALIASES_META = "owner_aliases"  # journal meta: ids taken over from (their objects are ours too)
OWNED_ELSEWHERE = "OwnedElsewhere"  # StoreError code of a prefix claimed by another owner

log = structlog.get_logger("syncd.owner")


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Claim:
    """What the marker says: who owns the prefix, and where that owner runs."""

    owner: str
    host: str
    machine: str
    folder: str
    path: str
    claimed_at: str

    def to_json(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "machine_id": self.machine,
                           "folder": self.folder, "path": self.path, "claimed_at": self.claimed_at},
                          indent=1).encode()

    @classmethod
    def parse(cls, body: bytes) -> Claim | None:
        try:
            d = json.loads(body)
            return cls(str(d["owner"]), str(d.get("host", "")), str(d.get("machine_id", "")),
                       str(d.get("folder", "")), str(d.get("path", "")), str(d.get("claimed_at", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return (f"owner {self.owner[:12]}, folder {self.folder!r} at {self.path} on host {self.host or '?'}"
                f", claimed {self.claimed_at or '?'}")


class Ownership:
    """Claims and checks a folder's prefix. Called from the scheduler's probe (pool thread)
    and the remote pass: only the journal's meta table is written, through its own connection."""

    def __init__(self, folder: FolderConfig, journal: Journal):
        self.folder = folder
        self.journal = journal
        self.key = folder.key_for(MARKER)
        self.owner: str | None = journal.get_meta(OWNER_META)
        aliases = journal.get_meta(ALIASES_META)
        self.aliases: frozenset[str] = frozenset(aliases.split(",")) if aliases else frozenset()

    def own_ids(self) -> frozenset[str]:
        """Ids whose objects are this folder's own: its id and those it took over from."""
        return self.aliases | ({self.owner} if self.owner else set())

    def _claim(self, owner: str) -> Claim:
        return Claim(owner, socket.gethostname(), _machine_id(), self.folder.name, str(self.folder.path),
                     datetime.now(UTC).isoformat(timespec="seconds"))

    def _same_place(self, claim: Claim) -> bool:
        """The marker was written by this very folder on this host (a lost journal)."""
        return (claim.host, claim.machine, claim.path) == (socket.gethostname(), _machine_id(),
                                                           str(self.folder.path))

    def _remember(self, owner: str) -> None:
        if owner != self.owner:
            self.journal.set_meta(OWNER_META, owner)
            self.owner = owner

    def claim(self, store: ObjectStore, take_over: bool = False) -> str:
        """Make sure this folder owns its prefix; returns its owner id.

        Raises StoreError(scope=FOLDER, code=OWNED_ELSEWHERE) when another owner holds it."""
        for _ in range(3):  # a marker deleted or written between our read and our write: look again
            body = store.read(self.key)
            found = None if body is None else Claim.parse(body)
            if body is not None and found is None and not take_over:
                raise StoreError(f"s3://{store.bucket}/{self.key} is not a syncd owner marker; move it away or "
                                 f"run 'syncd resume {self.folder.name} --take-over' to replace it",
                                 scope=FOLDER, code=OWNED_ELSEWHERE, key=self.key)
            if found is not None and found.owner == self.owner:
                return found.owner
            if found is not None and not take_over:
                if self.owner is None and self._same_place(found):
                    log.info("owner.recovered", folder=self.folder.name, owner=found.owner,
                             reason="journal was lost; the marker names this host and folder path")
                    self._remember(found.owner)
                    return found.owner
                raise StoreError(
                    f"prefix s3://{store.bucket}/{self.folder.prefix} belongs to another syncd ({found.describe()}); "
                    f"this folder writes and deletes nothing. If that daemon is gone for good or this one should "
                    f"own the prefix, run 'syncd resume {self.folder.name} --take-over'; otherwise give this "
                    f"folder another prefix", scope=FOLDER, code=OWNED_ELSEWHERE, key=self.key)
            owner = self.owner or uuid.uuid4().hex
            if found is not None:  # take-over: the previous owner's objects become ours
                store.write(self.key, self._claim(owner).to_json(), if_absent=False)
                self.aliases = self.aliases | {found.owner}
                self.journal.set_meta(ALIASES_META, ",".join(sorted(self.aliases)))
                log.warning("owner.taken_over", folder=self.folder.name, owner=owner, previous=found.describe())
                self._remember(owner)
                return owner
            if store.write(self.key, self._claim(owner).to_json(), if_absent=True):
                log.info("owner.claimed", folder=self.folder.name, owner=owner, key=self.key)
                self._remember(owner)
                return owner
        raise StoreError(f"s3://{store.bucket}/{self.key}: the owner marker keeps changing; another daemon is "
                         "claiming this prefix at the same time", scope=FOLDER, code=OWNED_ELSEWHERE, key=self.key)

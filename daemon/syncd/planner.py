"""The planner: what does one claimed change need, given the file as it is now?

Its answer is an upload, a server-side copy (a rename: same inode, size and mtime as an
object already in the bucket), a delete, or an immediate outcome (nothing to do, not settled
yet, or a name S3 cannot hold). It reads the journal but never writes it.
"""

from __future__ import annotations

import os
import stat as statmod

import structlog

from .beneath import NotBeneath, folder_root
from .changes import Outcome, OutcomeKind, Pending
from .choices import DeleteMode
from .config import FolderConfig
from .journal import Journal
from .multipart import part_size_for
from .paths import IgnoreRules, key_problem, reserved
from .transfer import Task, TaskKind

SKIPPED_LOG_LIMIT = 10_000  # paths remembered so a skipped symlink is logged once, not per event


class Planner:
    def __init__(self, folder: FolderConfig, journal: Journal):
        self.folder = folder
        self.journal = journal
        self.root = folder_root(folder)
        self.ignore = IgnoreRules(folder.ignore)
        self._log = structlog.get_logger("syncd.planner").bind(folder=folder.name)
        self._skipped_logged: set[str] = set()

    def plan(self, p: Pending, now: float, copy_sources: set[str]) -> Outcome | Task:
        """``copy_sources``: keys in-flight copies read from (they must not be deleted yet)."""
        rel = p.path
        problem = key_problem(self.folder.key_for(rel))
        if problem is not None:
            return Outcome(OutcomeKind.PARK, rel, p.gen, error=f"{self.folder.key_for(rel)!r}: {problem}")
        if reserved(rel):
            return Outcome(OutcomeKind.PARK, rel, p.gen, error=(
                f"{os.path.join(self.folder.path, rel)}: '{rel.partition('/')[0]}' at the top of the folder "
                "collides with syncd's own bookkeeping keys under the prefix (the owner marker, the trash); it is not "
                "uploaded: rename it, or ignore it with an 'ignore' pattern"))
        try:
            st: os.stat_result | None = self.root.lstat(rel)
        except NotBeneath as exc:
            st = None  # for the mirror the file is gone: its object goes as a deleted file's would
            self._note_skipped(rel, None, exc.strerror)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            return Outcome(OutcomeKind.PARK, rel, p.gen, error=f"cannot stat {rel}: {exc.strerror}")
        if st is not None and statmod.S_ISREG(st.st_mode) and not self.ignore.ignored_with_parents(rel):
            return self._plan_file(p, st, now)
        if st is not None and not statmod.S_ISDIR(st.st_mode) and not statmod.S_ISREG(st.st_mode):
            self._note_skipped(rel, st)
        # Absent from the mirror's point of view: remove the key if we put one there, or may
        # have (a write whose answer was lost, or that a crash interrupted: its intent).
        if self.journal.entry(rel) is None and self.journal.intent(rel) is None:
            return Outcome(OutcomeKind.DONE, rel, p.gen)
        if self.folder.delete == DeleteMode.KEEP:
            return Outcome(OutcomeKind.DONE, rel, p.gen, settled=True)
        if rel in copy_sources or self.journal.has_mover(rel):
            # A renamed file still needs this key as its copy source: delete it afterwards.
            return Outcome(OutcomeKind.DEFER, rel, p.gen, delay=max(self.folder.settle, 0.2))
        return Task(TaskKind.DELETE, [p])

    def _plan_file(self, p: Pending, st: os.stat_result, now: float) -> Outcome | Task:
        rel = p.path
        age = now - st.st_mtime_ns / 1e9
        quiet = self.folder.settle if p.quiet is None else p.quiet  # shorter for a finished write
        if 0 <= age < quiet and now < p.first_seen + self.folder.max_delay:
            # Written moments ago (its events may still be on the way): let it settle.
            return Outcome(OutcomeKind.DEFER, rel, p.gen, delay=quiet - age)
        entry = self.journal.entry(rel)
        if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns) \
                and self.journal.intent(rel) is None:
            # (With an intent the key may hold another version, written after this entry's.)
            return Outcome(OutcomeKind.DONE, rel, p.gen)
        source = None
        if p.move_from:
            candidate = self.journal.entry(p.move_from)
            if candidate is not None and (candidate.size, candidate.mtime_ns) == (st.st_size, st.st_mtime_ns):
                source = candidate
        if source is None:
            source = self.journal.entry_by_inode(st.st_ino, st.st_size, st.st_mtime_ns, rel)
        if source is not None:
            return Task(TaskKind.COPY, [p], copy_from=source)
        if st.st_size <= self.folder.multipart_threshold:
            return Task(TaskKind.UPLOAD, [p], cost=st.st_size, single=True)
        # A multipart upload holds one part being read plus the parts in flight.
        try:
            part = part_size_for(st.st_size, self.folder.part_size)
        except ValueError:
            part = self.folder.part_size  # too large for S3: the transfer parks it with the reason
        return Task(TaskKind.UPLOAD, [p], cost=min(st.st_size, (self.folder.part_concurrency + 1) * part))

    def _note_skipped(self, rel: str, st: os.stat_result | None, why: str | None = None) -> None:
        if rel in self._skipped_logged or len(self._skipped_logged) > SKIPPED_LOG_LIMIT:
            return
        self._skipped_logged.add(rel)
        if st is None:  # NotBeneath: a parent directory is a symlink (or another filesystem)
            self._log.warning("path.skipped", path=rel, reason=f"{why}; nothing is read through it and its "
                              "object, if any, goes as a deleted file's would")
            return
        kind = "symlink" if statmod.S_ISLNK(st.st_mode) else "special file"
        self._log.info("path.skipped", path=rel, reason=f"{kind}: not followed or mirrored")

"""The deletion guard: when may remote deletions go ahead?

An unmounted disk, a vanished or replaced root directory, and an emptied folder all look like
"everything was deleted" to a mirror (Maestral issues 295/452: a stale view deleted a user's
files). The guard refuses deletions in those cases, and counts deletion waves so that one
larger than ``max_delete`` waits for a human (``syncd resume``). A rename keeps its content
under the new key (a server-side copy), so a wave counts deletions net of the copies made in
it: moving a large directory is not a deletion wave.

A root replaced by a symlink, another directory or a mount is also a root problem: every read
goes through the directory fd held by :class:`~syncd.beneath.RootDir`, so nothing is read
through the replacement. The folder is ``held`` until the old root is back or ``syncd resume``
accepts the new one (which reopens the fd); a root swapped for a symlink is an ``error`` that
resume does not accept (:class:`RootIssue` says which).
"""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass

from .beneath import folder_root
from .config import FolderConfig
from .journal import Journal
from .schema import READY
from .store import FOLDER, StoreError

LOOKAHEAD = 20_000  # open changes a deletion wave's check looks at (one lstat each), at most


@dataclass(frozen=True, slots=True)
class RootIssue:
    """Why the root cannot be trusted. ``holds``: a guard hold, over when the root is back or
    `syncd resume` accepts it; False for a root swapped for a symlink, an error that resume
    never accepts (syncd never reads through a symlinked root)."""

    reason: str
    holds: bool = True


class RootProblem(StoreError):
    """The folder root cannot be trusted (missing, replaced, emptied, a symlink)."""

    def __init__(self, issue: RootIssue):
        super().__init__(issue.reason, scope=FOLDER, code="RootProblem")
        self.holds = issue.holds


class DeleteGuard:
    """Root identity, emptiness and deletion-wave bookkeeping for one folder."""

    def __init__(self, folder: FolderConfig, journal: Journal):
        self.folder = folder
        self.journal = journal
        self.root = str(folder.path)
        self.rootdir = folder_root(folder)
        self.empty_confirmed = False   # `syncd resume` after "root is empty"
        self.wave_confirmed = False    # `syncd resume` after a max_delete pause
        self.wave_deletes = 0
        self.wave_moves = 0            # server-side copies (renames) in the same wave

    def root_problem(self, check_empty: bool = False) -> RootIssue | None:
        """Why the root cannot be trusted right now, or None. ``check_empty`` costs a
        directory read and a manifest count: it is done before deleting, not every second."""
        try:
            st = os.lstat(self.root)
        except OSError as exc:
            return RootIssue(f"folder root {self.root} is unavailable ({exc.strerror}): no remote deletions until "
                             "it is back")
        if statmod.S_ISLNK(st.st_mode):
            return RootIssue(f"folder root {self.root} was replaced by a symlink: nothing is read through it and "
                             "no remote deletions; put the directory back (syncd never follows a symlinked root)",
                             holds=False)
        if not statmod.S_ISDIR(st.st_mode):
            return RootIssue(f"folder root {self.root} is not a directory: no remote deletions until it is fixed")
        if self.rootdir.identity is None and not self.rootdir.reopen():
            return RootIssue(f"{self.rootdir.open_error}: no remote deletions until it is fixed")
        if (st.st_dev, st.st_ino) != self.rootdir.identity:
            return RootIssue(f"folder root {self.root} was replaced or unmounted (another directory or device is "
                             f"there now): no remote deletions; restore it, or run 'syncd resume {self.folder.name}' "
                             "to accept the new one")
        if not check_empty:
            return None
        fd = self.rootdir.open_dir("")  # the directory that is read, not whatever the path names
        try:
            with os.scandir(fd) as it:
                empty = next(it, None) is None
        finally:
            os.close(fd)
        if not empty:
            self.empty_confirmed = False  # refilled: guard the next emptying again
        elif not self.empty_confirmed and (objects := self.journal.manifest_count()) > 0:
            return RootIssue(f"folder root {self.root} is empty but {objects} objects are mirrored (unmounted "
                             f"disk?): no remote deletions; run 'syncd resume {self.folder.name}' if the folder "
                             "really was emptied")
        return None

    def wave_problem(self, deleting: int) -> str | None:
        """Why ``deleting`` more deletions must wait for confirmation, or None."""
        if self.wave_confirmed:
            return None
        limit = self.folder.delete_limit(self.journal.manifest_count())
        wave = self.wave_deletes + deleting - self.wave_moves
        if wave <= limit and not self.judged:
            # An `rm -rf` is journaled faster than its first batch is due: judge the whole
            # wave before that batch goes, or up to `limit` objects would go first.
            wave += self._deletions_ahead(limit - wave + 1)
        if wave <= limit:
            return None
        return (f"deletion wave of {wave}+ objects exceeds max_delete={self.folder.max_delete} (limit {limit}): "
                f"held; run 'syncd resume {self.folder.name}' to delete them")

    def _deletions_ahead(self, enough: int) -> int:
        """Unclaimed changes of mirrored files that are gone from disk and not renamed away:
        the rest of the wave. Stops counting at ``enough``; looks at most LOOKAHEAD rows."""
        with self.journal.reader() as db:
            rows = db.execute(
                f"SELECT p.path FROM pending p JOIN manifest m ON m.path = p.path WHERE p.state = {READY:d} "
                "AND NOT EXISTS (SELECT 1 FROM pending q WHERE q.move_from = p.path) LIMIT ?",
                (LOOKAHEAD,)).fetchall()
        gone = 0
        for (path,) in rows:
            if not os.path.lexists(os.path.join(self.root, path)):
                gone += 1
                if gone >= enough:
                    break
        return gone

    def counted(self, n: int) -> None:
        self.wave_deletes += n

    def moved(self) -> None:
        """A server-side copy (a rename's new key) finished: one later deletion is not a loss."""
        self.wave_moves += 1

    def wave_over(self) -> None:
        """The folder went idle: the next wave is counted (and guarded) afresh."""
        self.wave_deletes = self.wave_moves = 0
        self.wave_confirmed = False

    @property
    def judged(self) -> bool:
        """This wave already had a batch checked and sent (or confirmed by `syncd resume`)."""
        return bool(self.wave_deletes or self.wave_confirmed)

    @property
    def in_wave(self) -> bool:
        return bool(self.wave_deletes or self.wave_moves or self.wave_confirmed)

    def confirm_wave(self) -> None:
        self.wave_confirmed = True

    def confirm_root(self) -> None:
        """``syncd resume`` after a root problem: accept the root as it is now."""
        self.empty_confirmed = True
        if not self.rootdir.still_there():
            self.rootdir.reopen()  # the new root: reads go through it from now on

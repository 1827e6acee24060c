"""The state directory: private to syncd's user, whatever umask it was started with.

The journals name every watched path (and the listing scratch database every key), so they
are for syncd's user alone: the directory 0700, each database 0600. The unit sets
``UMask=0077``; run by hand with umask 022 or 000 they would otherwise be 0755 and 0644.
"""

from __future__ import annotations

import os
import stat as statmod
from pathlib import Path

import structlog

log = structlog.get_logger("syncd.statedir")

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077            # what the unit's UMask= says, for a daemon started by hand
FOLDERS = "folders"      # state_dir/folders: one journal (and its -wal, -shm) per folder
_OWN = {FOLDERS}         # a state_dir holding only these entries is syncd's alone


def prepare(state_dir: Path) -> Path:
    """Create (or tighten) the state directory and its ``folders`` directory; returns the latter."""
    try:
        state_dir.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        _tighten_state_dir(state_dir)
    folders = state_dir / FOLDERS
    folders.mkdir(mode=DIR_MODE, exist_ok=True)
    _chmod(folders, DIR_MODE)  # mkdir's mode is masked by the umask, and it may predate this version
    return folders


def restrict_umask() -> None:
    """Everything created from now on (journals, their -wal and -shm, the listing scratch
    database, sort's spill files) is born private. Set after the control socket is bound:
    its directory keeps the caller's umask so that a ``socket_group`` can reach it."""
    os.umask(UMASK)


def secure_journal(db_path: Path) -> None:
    """A journal from an earlier version (or a hand run with a loose umask) becomes 0600,
    with its WAL and shared-memory files; SQLite gives new -wal/-shm files the database's mode."""
    for suffix in ("", "-wal", "-shm"):
        _chmod(Path(f"{db_path}{suffix}"), FILE_MODE)


def _tighten_state_dir(state_dir: Path) -> None:
    st = os.stat(state_dir)
    if statmod.S_IMODE(st.st_mode) & 0o077 == 0:
        return
    # Only a directory that is syncd's alone is changed: state_dir may have been pointed at
    # a shared directory (/var/lib), whose mode is not ours to touch.
    if st.st_uid == os.geteuid() and set(os.listdir(state_dir)) <= _OWN:
        _chmod(state_dir, DIR_MODE)
        return
    log.warning("state_dir.shared", path=str(state_dir), mode=oct(statmod.S_IMODE(st.st_mode)),
                hint=f"other users can list it; its {FOLDERS}/ directory is 0700 so the journals stay private")


def _chmod(path: Path, mode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not statmod.S_ISLNK(st.st_mode) and statmod.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)

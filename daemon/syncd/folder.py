"""One watched folder at runtime: its journal, scheduler, watches and reconcile passes,
started and stopped as a unit so a reload can add or remove a folder without touching
the others."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from . import beneath, statedir
from .bandwidth import ByteBudget
from .config import FolderConfig
from .health import FolderState as FolderState  # re-exported: its home was here
from .journal import Journal
from .owner import OWNED_ELSEWHERE
from .paths import IgnoreRules
from .pool import Pools
from .reconciler import RemotePass, RemoteReport
from .scan import SCAN_RULES, LocalScan, ScanReport, keep_manifest
from .scheduler import Scheduler
from .store import ObjectStore, StoreError, open_store
from .transfer import Transfers
from .uploads import UploadLog
from .watcher import Watcher

FALLBACK_SCAN_EVERY = 30.0             # without inotify watches, look this often
OVERFLOW_BACKOFF = (5.0, 300.0)        # rescans after inotify overflows: min, max spacing
REMOTE_RETRY = 60.0                    # a failed remote pass is tried again this soon
FAILED_PASS_BACKOFF = (5.0, 300.0)     # a pass that raised `syncd wait` waits for: min, max retry spacing
# How often the timer looks at an idle folder's root (an lstat; a busy turn looks every
# second, scheduler.ROOT_CHECK_EVERY): with a hundred folders, a look every second was the
# idle daemon's largest cost (issue 21). Deletions do not wait for it: each is guarded.
IDLE_ROOT_CHECK_EVERY = 3.0
REBUILD_FIRST_PATIENCE = 10.0          # a rebuild adopts before the walk if the store answers this soon


class Pass(StrEnum):
    """What a reconcile pass covers. Each walks the local tree first."""

    LOCAL = "local"          # the local tree only (root back, inotify overflow, no watches)
    FULL = "full"            # then the bucket (startup, periodic)
    REQUESTED = "requested"  # a full pass `syncd wait` waits for (`syncd reconcile`)
    REBUILD = "rebuild"      # a full pass adopting the bucket's objects into a lost journal

    @property
    def remote(self) -> bool:
        return self is not Pass.LOCAL

    @property
    def blocking_remote(self) -> bool:
        """`syncd wait` waits for the remote part too, not only the walk."""
        return self in (Pass.REQUESTED, Pass.REBUILD)


def make_store(folder: FolderConfig) -> ObjectStore:
    """The store a folder's transfers and passes use, per its ``store`` setting: the one place
    a store is built. S3 folders with the same endpoint, credentials and client settings
    share one client (see syncd.s3clients)."""
    # Opened here, in the probe's pool thread: the SDK takes a while to import and the
    # startup scan should not wait for it.
    return open_store(folder, warm=True)


def make_transfers(folder: FolderConfig, uploads: UploadLog, progress: Callable[[int], None]) -> Transfers:
    return Transfers(folder, make_store(folder), uploads, progress)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class FolderRuntime:
    def __init__(self, folder: FolderConfig, state_dir: Path, budget: ByteBudget, pools: Pools | None = None):
        """``pools``: the daemon's shared threads (None: the scheduler makes its own, for tests)."""
        self.folder = folder
        self._log = structlog.get_logger("syncd.folder").bind(folder=folder.name)
        identity = f"{folder.endpoint_url or 'aws'}|{folder.bucket}|{folder.prefix}"
        db_path = state_dir / statedir.FOLDERS / f"{folder.name}.sqlite3"
        statedir.secure_journal(db_path)
        self.journal = Journal(db_path, identity)
        self._scratch = state_dir / statedir.FOLDERS / f"{folder.name}.listing.sqlite3"
        self.scheduler = Scheduler(folder, self.journal, budget, make_transfers, pools)
        self._pass_lane = self.scheduler.pools.passes.lane(folder.name, 1)
        self.scheduler.on_usable = self._resume_remote
        self.health = self.scheduler.health
        self.ignore = IgnoreRules(folder.ignore)
        self._watcher: Watcher | None = None
        self._stop = threading.Event()
        self._pass_active = False         # a pass is queued or running on the shared pass threads
        self._pass_done = threading.Event()
        self._pass_done.set()
        self._pass_lock = threading.Lock()
        # A pass's remote part waits for a usable store without holding a pass thread: the
        # service's timer (tick) starts it once the scheduler's probe has got one.
        self._remote_wanted: Pass | None = None
        self._remote_at = 0.0
        self._blocking = False            # the running pass must finish before `wait` says idle
        self.last_scan: ScanReport | None = None
        self.last_reconcile: RemoteReport | None = None
        self.last_reconcile_at: float | None = None
        self.last_reconcile_error: str | None = None
        self.watch_error: str | None = None
        # CLOCK_BOOTTIME just before the startup scan began reading the tree: `syncd wait`
        # needs no event grace for writes older than that (the scan saw them).
        self.first_scan_at: float | None = None
        self._next_reconcile = time.monotonic() + folder.reconcile_interval
        self._next_fallback = 0.0
        self._overflow_pending = False
        self._overflow_backoff = OVERFLOW_BACKOFF[0]
        self._next_overflow_scan = 0.0
        self._last_overflow = 0.0
        # A pass `syncd wait` waits for that raised (not a store error: those are retried by
        # the pass itself) is owed: retried from tick with backoff, and wait stays busy.
        self._owed_pass: Pass | None = None
        self._owed_at = 0.0
        self._next_root_check = 0.0
        self._owed_backoff = FAILED_PASS_BACKOFF[0]

    # ------------------------------------------------------------------ lifecycle

    def start(self, watcher: Watcher) -> None:
        """Watches first (so nothing is missed), then the scheduler, then the startup passes."""
        self._watcher = watcher
        self._watch()
        rebuild = self.journal.fresh
        if rebuild:
            # A new folder may point at a prefix that already holds its files (a reinstall, a
            # deleted state dir): adopting them first saves re-uploading everything.
            reason = self.journal.fresh_reason
            (self._log.info if reason == "new" else self._log.warning)(
                "journal.rebuild", reason=reason,
                action="adopting unchanged files already in the bucket (listing + metadata) before uploading")
            self.scheduler.set_rebuilding(True)
        # With an intact journal nothing needs the store before the startup scan is done; its
        # first contact (client creation, HeadBucket) would only compete with the scan.
        self.health.connect(hold=not rebuild)
        self.scheduler.start()
        self._start_pass(Pass.REBUILD if rebuild else Pass.FULL)

    def _watch(self) -> None:
        assert self._watcher is not None
        try:
            self._watcher.add(self.folder.name, str(self.folder.path), self.ignore, self.scheduler.inbox)
            self.watch_error = None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self.watch_error = (f"cannot watch {self.folder.path}: the inotify watch limit is reached; raise it "
                                    "with 'sysctl fs.inotify.max_user_watches=1048576' (and in /etc/sysctl.d/). "
                                    f"Until then the folder is rescanned every {FALLBACK_SCAN_EVERY:.0f}s")
            else:
                self.watch_error = (f"cannot watch {self.folder.path}: {exc.strerror}; rescanning every "
                                    f"{FALLBACK_SCAN_EVERY:.0f}s instead")
            self._watcher.remove(self.folder.name)
            self._log.error("watch.failed", error=self.watch_error)

    def stop_intake(self, watcher: Watcher) -> None:
        watcher.remove(self.folder.name)
        self._stop.set()
        self.health.up.set()  # a rebuild waiting for the store to adopt first sees the stop at once
        if self._pass_lane.close():  # a pass still queued behind other folders' passes: dropped
            with self._pass_lock:
                self._pass_active = False
            self._pass_done.set()
        self._pass_done.wait(10)

    def stop(self, deadline: float) -> None:
        self.scheduler.stop(deadline)
        try:
            keep_manifest(self.journal, self.ignore, max(0.0, deadline - time.monotonic()))
        except (OSError, sqlite3.Error) as exc:  # only an optimisation is lost
            self._log.warning("scan.spool_not_kept", error=str(exc))
        self.journal.close()
        beneath.release(self.folder)

    # ------------------------------------------------------------------ passes

    def reconcile(self) -> bool:
        """On demand: a full pass (local tree and bucket); False if one is already running."""
        return self._start_pass(Pass.REQUESTED)

    def pass_running(self) -> bool:
        """A pass is queued, running, or its remote part waits for the store."""
        return self._pass_active or self._remote_wanted is not None

    def _start_pass(self, kind: Pass, local: bool = True, owed: bool = False) -> bool:
        """``owed``: this is the retry of a failed pass (cleared here, under the lock, so that
        wait sees either the owed pass or the running one)."""
        with self._pass_lock:
            if self._pass_active or (local and self._remote_wanted is not None):
                return False
            if owed:
                self._owed_pass = None
            self._remote_wanted = None
            self._blocking = True
            self._pass_active = True
            self._pass_done.clear()
        self._pass_lane.submit(self._run_pass, kind, local)
        return True

    def _run_pass(self, kind: Pass, local: bool) -> None:
        walked = not local
        try:
            adopted = False
            if kind is Pass.REBUILD and local and not self._stop.is_set() and self._store_usable_soon():
                # Adopt first, if the store answers: the walk then journals only the files
                # the bucket does not hold, instead of every file for the planner to dismiss
                # one by one. If it does not, the walk goes first (its findings journaled
                # while the store is away), and the rebuild follows once it is back.
                adopted = self._remote(kind, retry=False)
            if local and not self._stop.is_set():
                try:
                    self._local()
                finally:
                    self.health.release()
                walked = True
            self._blocking = kind.blocking_remote
            if kind.remote and not adopted and not self._stop.is_set():
                self._remote(kind)
            self._owed_backoff = FAILED_PASS_BACKOFF[0]
        except Exception as exc:  # never let a pass kill the daemon; it runs again later
            self._pass_failed(kind, exc, owed=not walked or kind.blocking_remote)
        finally:
            with self._pass_lock:
                self._pass_active = False
                if self._remote_wanted is None:
                    self._blocking = False
            self._pass_done.set()
        if not self._stop.is_set():
            self._resume_remote()  # the store may have become usable while this pass ended

    def _pass_failed(self, kind: Pass, exc: Exception, owed: bool) -> None:
        """A pass raised. If `syncd wait` was owed it (its walk did not finish, or wait waits for
        its remote part), it is retried with backoff and wait stays busy until it succeeds:
        otherwise a failed startup pass left files unscanned while wait said idle."""
        retry_in = None
        if owed and not self._stop.is_set():
            retry_in = self._owed_backoff
            with self._pass_lock:
                self._owed_pass, self._owed_at = kind, time.monotonic() + retry_in
            self._owed_backoff = min(FAILED_PASS_BACKOFF[1], self._owed_backoff * 2)
        self.last_reconcile_error = f"{kind} pass failed: {exc}"
        self._log.exception("reconcile.failed", pass_kind=str(kind), error=str(exc), retry_in_s=retry_in)

    def _local(self) -> None:
        if self.first_scan_at is None:
            self.first_scan_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        scan = LocalScan(self.folder.name, beneath.folder_root(self.folder), self.ignore, self.journal,
                         self.scheduler.inbox)
        report = scan.run(self._stop)
        if not self._stop.is_set():
            # What it found is journaled before we call it done, and before a walk's rules
            # may let the next scans take the fast path.
            if self.scheduler.inbox.barrier(timeout=60) and report.rules:
                try:
                    self.journal.set_meta(SCAN_RULES, report.rules)
                except sqlite3.Error as exc:  # only an optimisation is lost: the next scan walks again
                    self._log.warning("scan.rules_not_recorded", error=str(exc))
            self.last_scan = report

    def _defer_remote(self, kind: Pass, delay: float) -> None:
        """The remote part runs later, from :meth:`tick` (no thread waits for it)."""
        with self._pass_lock:
            self._remote_wanted = kind
            self._remote_at = time.monotonic() + delay

    def _resume_remote(self, now: float | None = None) -> None:
        """Start a deferred remote part if the store is usable now (the timer, or the
        scheduler's loop as soon as its probe succeeds)."""
        wanted = self._remote_wanted
        if (wanted is not None and (now if now is not None else time.monotonic()) >= self._remote_at
                and self.health.halt is None and self.scheduler.transfers is not None):
            self._start_pass(wanted, local=False)

    def _remote(self, kind: Pass, retry: bool = True) -> bool:
        """One remote pass, once the scheduler's probe has a working store; True once it is
        over (done, or the prefix is another's). A rebuild is retried (``retry``) until it
        succeeds: until then the scheduler holds every transfer, or it would re-upload what
        the bucket already holds."""
        rebuild = kind is Pass.REBUILD
        if not self._stop.is_set():
            transfers = self.scheduler.transfers
            if self.health.halt is not None or transfers is None:
                if retry:
                    self._defer_remote(kind, 0.0)
                return False
            store = transfers.store

            def confirm() -> frozenset[str]:
                """The prefix may have been taken over since the probe claimed it: claimed
                again while the listing's first page is on its way; the folder's own ids."""
                try:
                    self.scheduler.ownership.claim(store)
                except StoreError as exc:
                    if exc.code == OWNED_ELSEWHERE:
                        raise
                    # Not answered: the probe's claim stands (the next pass asks again).
                return self.scheduler.ownership.own_ids()

            try:
                remote = RemotePass(self.folder, self.journal, store, self.scheduler.inbox, self._scratch,
                                    self.ignore, self.scheduler.ownership.own_ids())
                report = remote.run(self._stop, rebuild, confirm)
            except StoreError as exc:
                if exc.code == OWNED_ELSEWHERE:
                    self.health.report(exc)
                    return True  # over: the folder is in error until `resume --take-over`
                self.last_reconcile_error = str(exc)
                self._next_reconcile = time.monotonic() + REMOTE_RETRY
                self._log.warning("reconcile.remote_failed", error=str(exc))
                if rebuild and retry:
                    self._defer_remote(kind, REMOTE_RETRY / 6)
                return False
            if self._stop.is_set():
                return False
            self.scheduler.inbox.barrier(timeout=60)
            if rebuild:
                # The adoptions are journaled: uploads may start. The sweep below need not
                # hold them (it never aborts an upload this folder has journaled).
                try:
                    self.journal.rebuilt()
                except sqlite3.Error as exc:  # the next start adopts again: a listing, no upload
                    self._log.warning("journal.rebuild_not_recorded", error=str(exc))
                self.scheduler.set_rebuilding(False)
            report.uploads_aborted = self._sweep_uploads(transfers)
            self.last_reconcile, self.last_reconcile_at, self.last_reconcile_error = report, time.time(), None
            self._next_reconcile = time.monotonic() + self.folder.reconcile_interval
            return True
        return False

    def _sweep_uploads(self, transfers: Transfers) -> int:
        """Abort multipart uploads nobody will finish (see MultipartUploader.sweep)."""
        try:
            return transfers.multipart.sweep(self.journal.has_pending)
        except StoreError as exc:
            self._log.warning("multipart.sweep_failed", error=str(exc))
            return 0

    def _store_usable_soon(self) -> bool:
        """Wait (at most REBUILD_FIRST_PATIENCE, and no longer than the first probe's answer)
        for the scheduler's probe to find a working store."""
        give_up = time.monotonic() + REBUILD_FIRST_PATIENCE
        while not self._stop.is_set() and time.monotonic() < give_up:
            halt = self.health.halt
            if halt is None and self.scheduler.transfers is not None:
                return True
            if halt is not None and halt.state is not FolderState.STARTING:
                return False  # the first answer was a failure: the walk goes first
            self.health.up.wait(0.05)
        return False

    def on_overflow(self) -> None:
        """The kernel dropped events (inotify queue overflow): rescan, with backoff."""
        now = time.monotonic()
        if now - self._last_overflow > 600:
            self._overflow_backoff = OVERFLOW_BACKOFF[0]  # calm for a while: start over
        self._last_overflow = now
        self._overflow_pending = True

    def tick(self, now: float) -> None:
        """Called by the service's timer (one thread for every folder): start whatever pass is
        due, and look at the root (a root unmounted sends no event)."""
        if now >= self._next_root_check:
            self._next_root_check = now + IDLE_ROOT_CHECK_EVERY
            self.scheduler.check_root()
        self._resume_remote(now)
        if self.health.root_recovered.is_set():
            self.health.root_recovered.clear()
            self._log.info("folder.root_restored")
            if self._watcher is not None:
                self._watcher.remove(self.folder.name)
                self._watch()
            self._start_pass(Pass.LOCAL)
        owed = self._owed_pass
        if owed is not None and now >= self._owed_at and self._start_pass(owed, owed=True):
            self._log.info("reconcile.retrying", pass_kind=str(owed))
        if self._overflow_pending and now >= self._next_overflow_scan:
            if self._start_pass(Pass.LOCAL):
                self._overflow_pending = False
                self._log.warning("watch.overflow_rescan", next_allowed_in_s=self._overflow_backoff)
                self._next_overflow_scan = now + self._overflow_backoff
                self._overflow_backoff = min(OVERFLOW_BACKOFF[1], self._overflow_backoff * 2)
        if self.watch_error is not None and now >= self._next_fallback:
            if self._start_pass(Pass.LOCAL):
                self._next_fallback = now + FALLBACK_SCAN_EVERY
        if now >= self._next_reconcile:
            if self._start_pass(Pass.FULL):
                self._next_reconcile = now + self.folder.reconcile_interval

    # ------------------------------------------------------------------ status

    def is_idle(self) -> tuple[bool, int]:
        """(nothing pending, settling, being scanned or in flight; number of parked failures,
        counted only when idle). `syncd wait` asks every few ms: while transfers run or a
        pass it waits for is busy, the answer needs no count over the pending table."""
        if self.scheduler.in_flight() or (self._blocking and self.pass_running()):
            return False, 0
        if self._overflow_pending or self._owed_pass is not None:
            # Events were lost and the rescan is owed, or a pass wait waits for failed and is
            # retried (the timer starts either): until it has run, nothing says the bucket is
            # the folder.
            return False, 0
        # The inbox before the journal: a change journaled between the two reads is then seen
        # in the journal; read the other way round it could be missed by both.
        inbox_empty = len(self.scheduler.inbox) == 0
        pending, failed = self.journal.open_and_failed()
        idle = (not (self._blocking and self.pass_running()) and inbox_empty
                and pending == 0 and self.scheduler.in_flight() == 0)
        return idle, failed

    def held(self) -> str | None:
        """Why a guard holds the folder, or None: `syncd wait` cannot end while it lasts."""
        return self.health.held()

    def state(self) -> FolderState:
        """The folder's state, as its health holds it (see syncd.health)."""
        return self.health.state(scanning=self.pass_running())

    def snapshot(self) -> dict[str, Any]:
        s = self.scheduler
        counts = self.journal.counts()
        files_rate, bytes_rate = s.rate()
        backlog = counts["pending"] + len(s.inbox)
        scan, remote = self.last_scan, self.last_reconcile
        state, health = self.state(), self.health
        if state in (FolderState.HELD, FolderState.ERROR, FolderState.STALLED):
            last_error = health.why(state)
        else:
            last_error = health.wave_held or self.watch_error or health.last_error or self.last_reconcile_error
        return {
            "name": self.folder.name,
            "path": str(self.folder.path),
            "bucket": self.folder.bucket,
            "prefix": self.folder.prefix,
            "state": state,
            "pending": backlog,
            "settling": counts["settling"],
            "in_flight": s.in_flight(),
            "failed": counts["failed"],
            "failures": [{"path": p, "error": e} for p, e in self.journal.failures(5)],
            "files_done": s.done.files,
            "bytes_done": s.done.bytes,
            "rate_files_per_s": round(files_rate, 2),
            "rate_bytes_per_s": round(bytes_rate),
            "eta_s": round(backlog / files_rate, 1) if files_rate > 0 and backlog else None,
            "objects": counts["manifest"],
            "versioned": s.versioned,
            "owner": s.ownership.owner,
            "last_scan": None if scan is None else {
                "at": _iso(scan.finished_at), "seconds": round(scan.seconds, 3), "files": scan.files,
                "changed": scan.changed, "missing": scan.missing},
            "last_reconcile": None if remote is None or self.last_reconcile_at is None else {
                "at": _iso(self.last_reconcile_at), **{k: v for k, v in asdict(remote).items()
                                                        if k != "foreign_examples"},
                "seconds": round(remote.seconds, 3)},
            "foreign": 0 if remote is None else remote.foreign,
            "foreign_examples": [] if remote is None else remote.foreign_examples,
            "last_error": last_error,
            "requests": s.ops(),
        }

    def healthy(self, now: float) -> bool:
        """The loop is not stuck and no transfer is stuck past its timeout (watchdog)."""
        return not self.scheduler.stuck(now) and self.scheduler.oldest_inflight_age(now) < (
            self.folder.request_timeout * 4 + 60)

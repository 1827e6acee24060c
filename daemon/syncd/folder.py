"""One watched folder at runtime: its journal, scheduler, watches and scans, started and
stopped as a unit so a reload can add or remove a folder without touching the others."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from .config import FolderConfig
from .journal import Journal
from .paths import IgnoreRules
from .reconciler import LocalScan, ScanReport
from .s3store import S3Store
from .scheduler import ByteBudget, Scheduler
from .transfer import Transfers
from .watcher import Watcher


def make_transfers(folder: FolderConfig) -> Transfers:
    return Transfers(folder, S3Store(folder))


class FolderRuntime:
    def __init__(self, folder: FolderConfig, state_dir: Path, budget: ByteBudget):
        self.folder = folder
        self._log = structlog.get_logger("syncd.folder").bind(folder=folder.name)
        identity = f"{folder.endpoint_url or 'aws'}|{folder.bucket}|{folder.prefix}"
        self.journal = Journal(state_dir / "folders" / f"{folder.name}.sqlite3", identity)
        self.scheduler = Scheduler(folder, self.journal, budget, make_transfers)
        self.ignore = IgnoreRules(folder.ignore)
        self._scan_stop = threading.Event()
        self._scan_thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()
        self.last_scan: ScanReport | None = None
        self.watch_error: str | None = None

    def start(self, watcher: Watcher) -> None:
        """Watches first (so nothing is missed), then the scheduler, then the catch-up scan."""
        try:
            watcher.add(self.folder.name, str(self.folder.path), self.ignore, self.scheduler)
        except OSError as exc:
            self.watch_error = (f"cannot watch {self.folder.path}: {exc.strerror}; if the inotify watch limit "
                                "is reached, raise it: sysctl fs.inotify.max_user_watches=1048576")
            self._log.error("watch.failed", error=self.watch_error)
        self.scheduler.start_probe()
        self.scheduler.start()
        self.scan()

    def scan(self) -> bool:
        """Start a scan unless one is running; returns True if one was started."""
        with self._scan_lock:
            if self._scan_thread is not None and self._scan_thread.is_alive():
                return False
            self._scan_thread = threading.Thread(target=self._run_scan, name=f"scan-{self.folder.name}",
                                                 daemon=True)
            self._scan_thread.start()
            return True

    def _run_scan(self) -> None:
        scan = LocalScan(self.folder.name, str(self.folder.path), self.ignore, self.journal, self.scheduler)
        try:
            report = scan.run(self._scan_stop)
        except Exception as exc:  # e.g. the root vanished mid-walk
            self._log.error("scan.failed", error=str(exc))
            return
        if not self._scan_stop.is_set():
            self.last_scan = report

    @property
    def scanning(self) -> bool:
        return self._scan_thread is not None and self._scan_thread.is_alive()

    def stop_intake(self, watcher: Watcher) -> None:
        watcher.remove(self.folder.name)
        self._scan_stop.set()
        if self._scan_thread is not None:
            self._scan_thread.join(10)

    def stop(self, deadline: float) -> None:
        self.scheduler.stop(deadline)
        self.journal.close()

    # ------------------------------------------------------------------ status

    def is_idle(self) -> tuple[bool, int]:
        """(nothing pending, settling, scanning or in flight; number of parked failures)."""
        counts = self.journal.counts()
        idle = (not self.scanning and self.scheduler.inbox_size() == 0 and counts["pending"] == 0
                and self.scheduler.in_flight() == 0)
        return idle, counts["failed"]

    def state(self) -> str:
        s = self.scheduler
        if s.halt is not None:
            return "starting" if s.halt == "connecting to the object store" else "error"
        if s.paused:
            return "paused"
        if self.scanning:
            return "scanning"
        return "watching"

    def snapshot(self) -> dict[str, Any]:
        s = self.scheduler
        counts = self.journal.counts()
        files_rate, bytes_rate = s.rate()
        backlog = counts["pending"] + s.inbox_size()
        scan = self.last_scan
        return {
            "name": self.folder.name,
            "path": str(self.folder.path),
            "bucket": self.folder.bucket,
            "prefix": self.folder.prefix,
            "state": self.state(),
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
            "last_scan": None if scan is None else {
                "at": datetime.fromtimestamp(scan.finished_at, UTC).isoformat(timespec="seconds"),
                "seconds": round(scan.seconds, 3), "files": scan.files, "changed": scan.changed,
                "missing": scan.missing},
            "last_error": s.halt if s.halt and self.state() == "error" else (self.watch_error or s.last_error),
            "requests": s.ops(),
        }

    def healthy(self, now: float) -> bool:
        """The loop ticked recently and no transfer is stuck past its timeout (watchdog)."""
        return now - self.scheduler.last_tick < 15 and self.scheduler.oldest_inflight_age(now) < (
            self.folder.request_timeout * 4 + 60)


"""The heartbeat (``heartbeat: {url, interval}``): an HTTP GET to a dead-man's-switch service
(healthchecks.io and the like) at each interval, sent only while every folder is provably in
sync (syncd.metrics.not_in_sync). A missing ping is the alarm, so a skipped one is never
sent "just in case"; why it was skipped goes in the log, at most every LOG_EVERY seconds.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from . import __version__
from .config import HeartbeatConfig
from .metrics import not_in_sync

if TYPE_CHECKING:
    from .folder import FolderRuntime

log = structlog.get_logger("syncd.heartbeat")

LOG_EVERY = 30.0      # a skipped or failed ping is logged at most this often
PING_TIMEOUT = 10.0   # a ping never takes longer than this (nor than the interval)


class Heartbeat:
    def __init__(self, config: HeartbeatConfig, runtimes: Callable[[], list[FolderRuntime]],
                 ready: threading.Event):
        assert config.url is not None
        self.url = config.url
        self.interval = config.interval
        self._runtimes = runtimes
        self._ready = ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged = -1e9
        self._skipping = False   # the last ping was not sent: "resumed" is logged when one is
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="heartbeat", daemon=True)
        self._thread.start()
        log.info("heartbeat.started", url=self.url, interval_s=self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PING_TIMEOUT + 1)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reason = self.why_not()
            except Exception as exc:  # e.g. a journal closed by a reload under our feet: try next time
                reason = f"could not check the folders: {exc}"
            if reason is None:
                self._ping()
            else:
                self._note("heartbeat.skipped", reason)

    def why_not(self) -> str | None:
        """Why no ping is due now, or None."""
        if not self._ready.is_set():
            return "the daemon is starting"
        reasons = [r for r in map(not_in_sync, self._runtimes()) if r is not None]
        return "; ".join(reasons) or None

    def _ping(self) -> None:
        request = urllib.request.Request(self.url, headers={"User-Agent": f"syncd/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=min(PING_TIMEOUT, self.interval)) as response:
                response.read(1024)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._note("heartbeat.failed", f"{self.url}: {getattr(exc, 'reason', exc)}")
            return
        self.sent += 1
        if self._skipping:
            log.info("heartbeat.resumed", url=self.url)
            self._skipping = False

    def _note(self, event: str, reason: str) -> None:
        """Logged at once when pings stop, then at most every LOG_EVERY seconds."""
        now = time.monotonic()
        if not self._skipping or now - self._last_logged >= LOG_EVERY:
            self._last_logged = now
            log.warning(event, reason=reason)
        self._skipping = True

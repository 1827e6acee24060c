"""The service: wiring, signals, sd_notify and the ordered shutdown.

Signal handlers only set flags; the main thread acts on them. Shutdown runs in a fixed
order: watches -> scans -> schedulers (drain the pools until a deadline) -> journals.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from dataclasses import replace
from types import FrameType
from typing import Any

import sdnotify
import structlog

from . import __version__, statedir
from .bandwidth import ByteBudget
from .config import Config, ConfigError, load_config
from .control import ControlError, ControlServer
from .exitcodes import ExitCode
from .folder import FolderRuntime
from .health import FolderState
from .heartbeat import Heartbeat
from .metrics import ListenError, MetricsServer, folder_health, lag
from .pool import Pools
from .units import format_size
from .watcher import Watcher

log = structlog.get_logger("syncd.service")

# `syncd wait` looks at the folders only this long after the command ran, so that events of
# writes made just before it have crossed inotify and watchdog (which holds an unpaired
# IN_MOVED_FROM for 0.5 s while it looks for its IN_MOVED_TO).
EVENT_GRACE = 0.6
WAIT_POLL = 0.02  # `syncd wait` looks this often (a count query on the journal: cheap)
# STATUS= is refreshed this often, and more slowly with many folders: a status line reads two
# counts from every folder's journal.
STATUS_EVERY, STATUS_EVERY_PER_FOLDER = 2.0, 0.05
TICK_EVERY = 1.0  # the folders' timer: passes due, deferred remote parts, the root check
STARTUP_MAX = 10.0  # start-up (see _end_startup) is over when every folder's store answered, or after this


class Daemon:
    def __init__(self, config: Config, gc_thresholds: tuple[int, ...] | None = None):
        """``gc_thresholds``: the collector's thresholds to restore once the daemon is up
        (`syncd run` collects rarely while it starts); None: leave the collector alone."""
        self.config = config
        self._gc_thresholds = gc_thresholds
        self.folders: dict[str, FolderRuntime] = {}
        self.budget = ByteBudget(config.max_inflight_bytes)
        # One set of threads for every folder (syncd.pool): transfers, probes, passes, loops.
        self.pools = Pools.create(config.transfer_threads())
        self.watcher = Watcher(on_overflow=self._on_overflow)
        self.control = ControlServer(config.socket, self, config.socket_group)
        self.notifier = sdnotify.SystemdNotifier()
        self.started = time.monotonic()
        # Set by the signal handlers, which must take no lock: one the main thread holds when the
        # signal comes would never be released. The handlers' wake-up fd ends the main loop's wait.
        self._stopping = False
        self._reload_asked = False
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals = 0
        self._ready = threading.Event()  # folders registered: `wait` must not see an empty set as idle
        self._lock = threading.Lock()  # folder set changes (reload) vs. control reads
        self.overflows = 0
        self.metrics: MetricsServer | None = None
        self.heartbeat: Heartbeat | None = None
        self._under_systemd = bool(os.environ.get("NOTIFY_SOCKET"))  # else STATUS= goes nowhere
        usec = os.environ.get("WATCHDOG_USEC")
        self._watchdog_every = int(usec) / 2e6 if usec and usec.isdigit() else None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        statedir.prepare(self.config.state_dir)
        self._install_signals()
        self.control.start()  # fails early if another daemon owns the socket
        try:
            self._observe(self.config)
        except ListenError as exc:
            self.control.stop()
            raise ControlError(str(exc), code=ExitCode.CONFIG) from None
        statedir.restrict_umask()
        self.watcher.start()
        for folder in self.config.folders:
            self._add_folder(folder)
        self._ready.set()
        self._notify("READY=1", self._status_line())
        log.info("daemon.ready", folders=len(self.folders), socket=str(self.config.socket), version=__version__)
        next_status = next_ping = next_tick = 0.0
        never = float("inf")
        while not self._stopping:
            now = time.monotonic()
            # Asleep until the next thing due (a folder tick, STATUS=, the watchdog) or a signal:
            # a fixed poll woke an idle daemon for nothing (issue 21).
            due = min(next_tick, next_status if self._under_systemd else never,
                      next_ping if self._watchdog_every else never)
            self._sleep(due - now)
            if self._reload_asked:
                self._reload_asked = False
                self.reload()
            now = time.monotonic()
            if self._gc_thresholds is not None:
                self._end_startup(now)
            if now >= next_tick:
                for runtime in list(self.folders.values()):
                    runtime.tick(now)
                next_tick = now + TICK_EVERY
            if self._under_systemd and now >= next_status:
                self._notify(self._status_line())
                next_status = now + max(STATUS_EVERY, STATUS_EVERY_PER_FOLDER * len(self.folders))
            if self._watchdog_every and now >= next_ping and self._healthy(now):
                self._notify("WATCHDOG=1")
                next_ping = now + self._watchdog_every
        self.shutdown()
        signal.set_wakeup_fd(-1)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        return 0

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until a signal comes (its byte on the wake-up fd)."""
        if seconds > 0 and not self._stopping and not self._reload_asked:
            select.select([self._wakeup_r], [], [], seconds)
        try:
            while os.read(self._wakeup_r, 64):
                pass
        except BlockingIOError:
            pass

    def _end_startup(self, now: float) -> None:
        """Once every folder's first contact with its store is answered (its SDK loaded, its
        client built), what start-up built stays for the daemon's life: it is frozen out of
        every later collection (with the few cycles start-up left as garbage, a one-time
        amount: a full collection here to find them would cost more than they hold), and the
        collector runs at its usual thresholds again."""
        assert self._gc_thresholds is not None
        first_contact = all(r.health.halt is None or r.health.halt.state is not FolderState.STARTING
                            for r in list(self.folders.values()))
        if not first_contact and now - self.started < STARTUP_MAX:
            return
        gc.freeze()
        gc.set_threshold(*self._gc_thresholds)
        self._gc_thresholds = None

    def _add_folder(self, folder: Any) -> None:
        runtime = FolderRuntime(folder, self.config.state_dir, self.budget, self.pools)
        with self._lock:
            self.folders[folder.name] = runtime
        runtime.start(self.watcher)

    def _remove_folder(self, name: str, deadline: float) -> None:
        with self._lock:
            runtime = self.folders.pop(name)
        runtime.stop_intake(self.watcher)
        runtime.stop(deadline)

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout
        self._notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int((self.config.shutdown_timeout + 10) * 1e6)}")
        log.info("daemon.stopping")
        self._unobserve()
        for runtime in self.folders.values():
            runtime.stop_intake(self.watcher)
        self.watcher.stop()
        for runtime in self.folders.values():
            runtime.stop(deadline)
        self.pools.close()
        self.control.stop()
        log.info("daemon.stopped")

    def _install_signals(self) -> None:
        def on_term(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                os._exit(1)  # second signal: leave now; the journal replays what was in flight
            self._stopping = True

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload_asked = True

        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def reload(self) -> dict[str, Any]:
        """Re-read the config; add, remove and restart changed folders, leave the rest alone."""
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload.invalid", error=str(exc))
            self._notify("READY=1")
            raise ControlError(f"new configuration rejected, still running the old one:\n{exc}",
                               code=ExitCode.CONFIG) from None
        try:
            self._reobserve(new)
        except ListenError as exc:
            log.error("reload.invalid", error=str(exc))
            self._notify("READY=1")
            raise ControlError(f"new configuration rejected, still running the old one:\n{exc}",
                               code=ExitCode.CONFIG) from None
        old = {f.name: f for f in self.config.folders}
        fresh = {f.name: f for f in new.folders}
        removed = [n for n in old if n not in fresh or fresh[n] != old[n]]
        added = [n for n in fresh if n not in old or fresh[n] != old[n]]
        deadline = time.monotonic() + self.config.shutdown_timeout
        for name in removed:
            self._remove_folder(name, deadline)
        self.config = replace(self.config, folders=new.folders, log=new.log, metrics=new.metrics,
                              heartbeat=new.heartbeat, max_workers=new.max_workers)
        self.pools.transfers.resize(self.config.transfer_threads())
        for name in added:
            self._add_folder(fresh[name])
        log.info("reload.done", added=[n for n in added if n not in old], removed=[n for n in removed
                                                                              if n not in fresh],
                 changed=[n for n in added if n in old])
        self._notify("READY=1", self._status_line())
        return {"added": added, "removed": removed}

    # ------------------------------------------------------------------ metrics and heartbeat

    def _observe(self, config: Config) -> None:
        """Start /metrics (binding now: ListenError) and the heartbeat, as configured."""
        if config.metrics.listen is not None:
            server = MetricsServer(config.metrics.listen, config.source, lambda: self._select(None), self._ready,
                                   lambda: self.overflows)
            server.start()
            self.metrics = server
        if config.heartbeat.url is not None:
            self.heartbeat = Heartbeat(config.heartbeat, lambda: self._select(None), self._ready)
            self.heartbeat.start()

    def _unobserve(self, metrics: bool = True, heartbeat: bool = True) -> None:
        if heartbeat and self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if metrics and self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _reobserve(self, new: Config) -> None:
        """A reload: restart what changed. A new address that cannot be bound keeps the old
        server (ListenError: the reload is rejected)."""
        old = self.config
        if new.metrics != old.metrics:
            self._unobserve(heartbeat=False)
            try:
                self._observe(replace(new, heartbeat=replace(new.heartbeat, url=None)))
            except ListenError:
                self._observe(replace(old, heartbeat=replace(old.heartbeat, url=None)))
                raise
        if new.heartbeat != old.heartbeat:
            self._unobserve(metrics=False)
            self._observe(replace(new, metrics=replace(new.metrics, listen=None)))

    # ------------------------------------------------------------------ health and status

    def _on_overflow(self) -> None:
        """watchdog thread: one inotify instance serves every folder, so all may have lost events."""
        log.warning("watch.overflow", error="inotify queue overflowed: events were lost; rescanning")
        self.overflows += 1
        for runtime in list(self.folders.values()):
            runtime.on_overflow()

    def _healthy(self, now: float) -> bool:
        return all(r.healthy(now) for r in list(self.folders.values()))

    def _notify(self, *lines: str) -> None:
        self.notifier.notify("\n".join(lines))

    def _status_line(self) -> str:
        parts = []
        pending = failed = in_flight = 0
        for r in list(self.folders.values()):
            # Not counts(): it counts the whole manifest. Approximate: during a large sync an
            # exact count every STATUS_EVERY would take a good share of a core.
            open_changes, parked = r.journal.open_and_failed(approximate=True)
            pending += open_changes
            failed += parked
            in_flight += r.scheduler.in_flight()
            if (problem := folder_health(r).problem) is not None:  # as /healthz says it
                parts.append(f"{r.folder.name}:{problem}")
        rate = sum(r.scheduler.rate()[1] for r in list(self.folders.values()))
        text = (f"{len(self.folders)} folders, {pending} pending, {in_flight} in flight, {failed} failed, "
                f"{format_size(rate)}/s")
        return "STATUS=" + text + (f" ({', '.join(parts)})" if parts else "")

    def _select(self, name: str | None) -> list[FolderRuntime]:
        with self._lock:
            if name is None:
                return list(self.folders.values())
            if name not in self.folders:
                raise ControlError(f"no folder named {name!r}; folders: {', '.join(sorted(self.folders)) or 'none'}")
            return [self.folders[name]]

    # ------------------------------------------------------------------ control commands

    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        folder = request.get("folder")
        if cmd == "status":
            return {"version": 1, "daemon": {"pid": os.getpid(), "version": __version__,
                                             "uptime_s": round(time.monotonic() - self.started, 1)},
                    "folders": [{**r.snapshot(), "lag_s": round(lag(r), 1)} for r in self._select(folder)]}
        if cmd == "wait":
            asked_at = request.get("asked_at")
            return self._wait(folder, float(request.get("timeout") or 0) or None,
                              float(asked_at) if isinstance(asked_at, (int, float)) else None)
        if cmd in ("pause", "resume"):
            targets = self._select(folder)
            for r in targets:
                r.health.set_paused(cmd == "pause")
                if cmd == "resume" and request.get("take_over"):
                    r.health.take_over()
            log.info(f"folder.{cmd}d", folders=[r.folder.name for r in targets])
            return {"folders": [r.folder.name for r in targets]}
        if cmd == "retry":
            return {"requeued": sum(r.scheduler.retry_failed() for r in self._select(folder))}
        if cmd == "reconcile":
            targets = self._select(folder)
            started = [r.folder.name for r in targets if r.reconcile()]
            if request.get("wait"):
                timeout = float(request.get("timeout") or 0) or None
                deadline = None if timeout is None else time.monotonic() + timeout
                while any(r.pass_running() for r in targets):
                    if deadline is not None and time.monotonic() >= deadline:
                        return {"idle": False, "busy": [r.folder.name for r in targets if r.pass_running()],
                                "started": started}
                    time.sleep(0.05)
                remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
                return {**self._wait(folder, remaining), "started": started}
            return {"started": started}
        if cmd == "reload":
            return self.reload()
        raise ControlError(f"unknown command {cmd!r}")

    def _grace(self, asked_at: float | None, targets: list[FolderRuntime]) -> float:
        """How long `wait` must let events of the writes it covers reach the journal.

        The writes it covers finished before the command ran (``asked_at``), and an event is
        in the kernel's queue when its write returns: it has reached the journal by
        ``asked_at + EVENT_GRACE``. Only what is left of that window is waited for, not a
        whole grace from the request's arrival (the client's start-up alone is ~0.1 s)."""
        if asked_at is None:
            return EVENT_GRACE
        if all(r.first_scan_at is None or asked_at < r.first_scan_at for r in targets):
            # Asked before the startup scans began reading the trees (which happens after
            # the watches are set up): they see every write it covers, and `wait` waits
            # for them, so no event of such a write matters.
            return 0.0
        left = asked_at + EVENT_GRACE - time.clock_gettime(time.CLOCK_BOOTTIME)
        return min(EVENT_GRACE, max(0.0, left))  # a time from the future gets the whole grace

    def _wait(self, name: str | None, timeout: float | None, asked_at: float | None = None) -> dict[str, Any]:
        """``asked_at``: when the client ran `syncd wait` (CLOCK_BOOTTIME), if it says."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        if not self._ready.wait(timeout):
            return {"idle": False, "busy": ["(daemon starting)"]}
        grace = self._grace(asked_at, self._select(name))
        log.debug("wait.asked", folder=name, grace_s=round(grace, 3))
        while True:
            now = time.monotonic()
            targets = self._select(name)
            held = [{"folder": r.folder.name, "reason": reason} for r in targets if (reason := r.held())]
            if held:  # it cannot become idle without `syncd resume`: say so now, not at the timeout
                return {"idle": False, "held": held}
            if now - start >= grace:
                states = [r.is_idle() for r in targets]
                if all(idle for idle, _ in states):
                    return {"idle": True, "failed": sum(f for _, f in states)}
            if deadline is not None and now >= deadline:
                busy = [r.folder.name for r in targets if not r.is_idle()[0]]
                return {"idle": False, "busy": busy}
            time.sleep(WAIT_POLL)

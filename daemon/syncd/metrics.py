"""Metrics and health: Prometheus ``/metrics`` and ``/healthz`` (``metrics.listen``), and the
one definition of a folder's lag, health and "provably in sync" that the endpoint, STATUS=,
`syncd status` and the heartbeat share.

Nearly everything is read from live state at scrape time (a custom collector): the
scheduler's counters, the store's request counts, the folder's state and last reconcile,
and the journal's ``pending`` table through its indexes. Only what no live state keeps is
recorded as it happens, in :class:`FolderStats` (fed by the scheduler, one call per
finished transfer). The manifest is never counted per scrape: its size is recounted at most
every MANIFEST_RECOUNT seconds.

prometheus_client and http.server are imported only when the server starts: the scheduler
imports this module, and the daemon without ``metrics:`` should not pay for them.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from . import __version__, servers
from .transfer import Result

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from prometheus_client.metrics_core import Metric

    from .folder import FolderRuntime

log = structlog.get_logger("syncd.metrics")

# Change -> visible: from the first event of a change to the store confirming it (seconds).
# From the default settle (0.5 s) up to an outage of an hour.
VISIBLE_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
MANIFEST_RECOUNT = 60.0   # the manifest's size is a COUNT over every row: at most this often
WATCHES_RECOUNT = 30.0    # inotify watches are read from /proc/self/fdinfo: at most this often
IN_SYNC_MARGIN = 5.0      # "provably in sync": nothing pending longer than settle + this


class ErrorScope(StrEnum):
    """How far a failure reached (the ``scope`` label of syncd_errors_total)."""

    TRANSIENT = "transient"  # one change, retried with backoff (5xx, throttling, network)
    KEY = "key"              # one change, parked until `syncd retry` (permanent)
    FOLDER = "folder"        # the whole folder stopped (endpoint unreachable, credentials, bucket)


# States in which a folder is doing its job: a reconcile pass runs beside the watches.
WORKING = frozenset({"watching", "scanning"})


class FolderStats:
    """What a folder's finished transfers tell that no live state keeps: retries, errors by
    scope, and the change -> visible histogram. Written by the scheduler thread, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.errors: Counter[ErrorScope] = Counter()
        self.buckets = [0] * len(VISIBLE_BUCKETS)   # not cumulative: one per upper bound
        self.visible_count = 0
        self.visible_sum = 0.0

    def observe(self, results: list[Result]) -> None:
        """A loop turn's finished transfers (Scheduler._collect): confirmed changes and failures."""
        now = time.time()
        with self._lock:
            for result in results:
                items = result.task.items
                by_path: dict[str, float] | None = None  # a batch's first_seen by path, when needed
                if result.folder_error is not None:
                    self.errors[ErrorScope.FOLDER] += 1
                for o in result.outcomes:
                    if o.kind == "retry":
                        self.retries += 1
                        self.errors[ErrorScope.TRANSIENT] += 1
                    elif o.kind == "park":
                        self.errors[ErrorScope.KEY] += 1
                    elif o.kind == "done" and (o.entry is not None or o.forget):
                        if len(items) == 1:
                            first_seen = items[0].first_seen if items[0].path == o.path else None
                        else:
                            by_path = by_path or {p.path: p.first_seen for p in items}
                            first_seen = by_path.get(o.path)
                        if first_seen is None:
                            continue
                        seconds = max(0.0, now - first_seen)
                        self.visible_count += 1
                        self.visible_sum += seconds
                        i = bisect.bisect_left(VISIBLE_BUCKETS, seconds)  # the first bound >= seconds
                        if i < len(VISIBLE_BUCKETS):
                            self.buckets[i] += 1

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets (``le`` as text, +Inf last) and the sum, as Prometheus wants them."""
        with self._lock:
            out, running = [], 0
            for bound, n in zip(VISIBLE_BUCKETS, self.buckets, strict=True):
                running += n
                out.append((repr(bound), float(running)))
            out.append(("+Inf", float(self.visible_count)))
            return out, self.visible_sum


# --------------------------------------------------------------------------- lag and health

def lag(runtime: FolderRuntime, now: float | None = None) -> float:
    """Seconds since the oldest change not yet in the bucket was first seen; 0 when none.
    Parked changes are not counted here (they wait for a human: syncd_parked_changes)."""
    oldest = runtime.journal.oldest_unsynced()
    return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)


@dataclass(frozen=True)
class FolderHealth:
    folder: str
    state: str
    lag_s: float
    max_lag_s: float
    problem: str | None     # short: what STATUS= shows ("stalled", "lag 412s over max_lag 300s")
    reason: str | None      # the whole story (the folder's error, or the lag)

    @property
    def healthy(self) -> bool:
        return self.problem is None


def _state_reason(runtime: FolderRuntime, state: str) -> str:
    health = runtime.scheduler.health
    if state == "held":
        return health.held() or "held by a guard"
    if state in ("error", "stalled"):
        return (health.halt.reason if health.halt is not None else None) or state
    if state == "paused":
        return "paused by `syncd pause`"
    if state == "starting":
        return "connecting to the object store"
    return state


def folder_health(runtime: FolderRuntime, now: float | None = None) -> FolderHealth:
    """Healthy: watching (a reconcile pass may run beside it) with a lag under ``max_lag``."""
    state = str(runtime.state())
    seconds = lag(runtime, now)
    limit = runtime.folder.max_lag
    problem = reason = None
    if state not in WORKING:
        problem, reason = state, _state_reason(runtime, state)
    elif seconds > limit:
        problem = f"lag {seconds:.0f}s over max_lag {limit:.0f}s"
        reason = (f"the oldest unsynced change was seen {seconds:.0f}s ago (max_lag {limit:.0f}s): "
                  "the folder is not keeping up")
    return FolderHealth(runtime.folder.name, state, round(seconds, 3), limit, problem, reason)


def health_report(runtimes: list[FolderRuntime], ready: bool) -> tuple[bool, dict[str, Any]]:
    """(healthy, the /healthz body): healthy when every folder is."""
    if not ready:
        return False, {"healthy": False, "reason": "the daemon is starting", "folders": []}
    folders = []
    for r in runtimes:
        try:
            folders.append(folder_health(r))
        except sqlite3.Error:  # removed by a reload while we looked: not part of the answer
            continue
    healthy = all(h.healthy for h in folders)
    body: dict[str, Any] = {"healthy": healthy, "folders": [
        {"folder": h.folder, "state": h.state, "healthy": h.healthy, "lag_s": h.lag_s, "max_lag_s": h.max_lag_s,
         **({"problem": h.problem, "reason": h.reason} if h.problem else {})} for h in folders]}
    if not healthy:
        body["reason"] = "; ".join(f"{h.folder}: {h.reason}" for h in folders if not h.healthy)
    return healthy, body


def not_in_sync(runtime: FolderRuntime, now: float | None = None) -> str | None:
    """Why the folder is not *provably* in sync (the heartbeat's condition), or None: it is
    watching, nothing is parked or pending longer than ``settle`` + a margin, and the last
    reconcile pass completed and found no drift."""
    now = time.time() if now is None else now
    name = runtime.folder.name
    state = str(runtime.state())
    if state not in WORKING:
        return f"{name}: {state}: {_state_reason(runtime, state)}"
    seconds = lag(runtime, now)
    if seconds > runtime.folder.settle + IN_SYNC_MARGIN:
        return f"{name}: a change has been pending for {seconds:.0f}s"
    _, parked = runtime.journal.open_and_failed()
    if parked:
        return f"{name}: {parked} change(s) failed permanently (see `syncd status`; `syncd retry`)"
    if runtime.last_reconcile_error is not None:
        return f"{name}: the last reconcile pass failed: {runtime.last_reconcile_error}"
    report = runtime.last_reconcile
    if report is None:
        return f"{name}: no reconcile pass has completed yet"
    if report.drift or report.orphans:
        return (f"{name}: the last reconcile pass found {report.drift + report.orphans} object(s) out of sync "
                "(repaired since; `syncd reconcile` proves it)")
    return None


# --------------------------------------------------------------------------- the collector

def inotify_watches() -> int:
    """Watches of every inotify instance of this process, as the kernel counts them."""
    total = 0
    fds = Path("/proc/self/fd")
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds / fd) != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
                total += sum(1 for line in f if line.startswith(b"inotify wd:"))
        except OSError:  # closed meanwhile
            continue
    return total


class Collector:
    """Builds every syncd_* family from live state at scrape time (prometheus_client's
    custom-collector protocol: ``collect()``)."""

    def __init__(self, runtimes: Callable[[], list[FolderRuntime]], overflows: Callable[[], int]):
        self._runtimes = runtimes
        self._overflows = overflows
        self._lock = threading.Lock()
        self._manifest: dict[int, tuple[float, int]] = {}   # id(journal) -> (counted at, rows)
        self._watches = (-1e9, 0)

    def _manifest_rows(self, runtime: FolderRuntime, now: float) -> int:
        key = id(runtime.journal)
        with self._lock:
            at, rows = self._manifest.get(key, (-1e9, 0))
        if now - at >= MANIFEST_RECOUNT:
            rows = runtime.journal.manifest_count()
            with self._lock:
                self._manifest[key] = (now, rows)
        return rows

    def _inotify_watches(self, now: float) -> int:
        at, n = self._watches
        if now - at >= WATCHES_RECOUNT:
            n = inotify_watches()
            self._watches = (now, n)
        return n

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("folder",)) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=list(labels))

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("folder",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        uploads = counter("syncd_uploads", "Files uploaded (single PUT or multipart), confirmed by the store.")
        copies = counter("syncd_copies", "Server-side copies made for renames and moves.")
        deletes = counter("syncd_deletes", "Objects deleted because their file is gone.")
        sent = counter("syncd_sent_bytes", "Bytes of file content sent to the store.")
        requests = counter("syncd_s3_requests", "HTTP requests to the store, every attempt, by operation and "
                           "outcome.", ("folder", "operation", "outcome"))
        retries = counter("syncd_retries", "Changes put back for another attempt after a transient error.")
        errors = counter("syncd_errors", "Failures by scope: transient (retried), key (parked), folder "
                         "(the folder stopped).", ("folder", "scope"))
        pending = gauge("syncd_pending_changes", "Changes not yet in the bucket (settling ones included, "
                        "parked ones not).")
        settling = gauge("syncd_settling_changes", "Pending changes still waiting for their file to settle.")
        in_flight = gauge("syncd_in_flight_transfers", "Transfers running now.")
        parked = gauge("syncd_parked_changes", "Changes that failed permanently and wait for `syncd retry`.")
        lag_g = gauge("syncd_lag_seconds", "Age of the oldest change not yet in the bucket (0: in sync).")
        max_lag = gauge("syncd_max_lag_seconds", "The folder's max_lag: /healthz fails above it.")
        healthy = gauge("syncd_healthy", "1 while the folder passes /healthz, else 0.")
        state_g = gauge("syncd_folder_state", "1 for the folder's current state, 0 for the others.",
                        ("folder", "state"))
        rec_at = gauge("syncd_last_reconcile_timestamp_seconds", "When the last reconcile pass completed "
                       "(Unix time).")
        rec_took = gauge("syncd_last_reconcile_duration_seconds", "How long the last reconcile pass took.")
        rec_drift = gauge("syncd_last_reconcile_drift_objects", "Objects the last reconcile pass found missing "
                          "or different, or left over from deleted files.")
        rec_foreign = gauge("syncd_last_reconcile_foreign_objects", "Keys under the prefix that syncd did not "
                            "write, as the last reconcile pass counted them.")
        journal_bytes = gauge("syncd_journal_size_bytes", "Size of the folder's journal (SQLite file and WAL).")
        objects = gauge("syncd_manifest_objects", f"Objects the journal records in the bucket (recounted at most "
                        f"every {MANIFEST_RECOUNT:.0f}s).")
        visible = HistogramMetricFamily("syncd_change_visible_seconds", "From the first event of a change to "
                                        "the store confirming it.", labels=["folder"])
        from .folder import FolderState  # here: folder imports the scheduler, which imports us

        now_mono, now = time.monotonic(), time.time()
        for r in self._runtimes():
            name = r.folder.name
            try:
                s = r.scheduler
                ops = s.ops()
                open_, failed = r.journal.open_and_failed()
                counts_settling = r.journal.settling_count(now)
                health = folder_health(r, now)
                rows = self._manifest_rows(r, now_mono)
            except sqlite3.Error:  # removed by a reload while we looked: left out of this scrape
                continue
            labels = [name]
            uploads.add_metric(labels, ops.get("put", 0) + ops.get("multipart", 0))
            copies.add_metric(labels, ops.get("copy", 0))
            deletes.add_metric(labels, ops.get("delete", 0))
            sent.add_metric(labels, s.done.bytes)
            store = s.transfers.store if s.transfers is not None else None
            counts = getattr(store, "requests", None)
            if counts is not None:
                for (operation, outcome), n in sorted(counts.snapshot().items()):
                    requests.add_metric([name, operation, str(outcome)], n)
            stats = s.stats
            retries.add_metric(labels, stats.retries)
            for scope in ErrorScope:
                errors.add_metric([name, str(scope)], stats.errors[scope])
            pending.add_metric(labels, open_ + len(s.inbox))
            settling.add_metric(labels, counts_settling)
            in_flight.add_metric(labels, s.in_flight())
            parked.add_metric(labels, failed)
            lag_g.add_metric(labels, health.lag_s)
            max_lag.add_metric(labels, health.max_lag_s)
            healthy.add_metric(labels, 1.0 if health.healthy else 0.0)
            for state in FolderState:
                state_g.add_metric([name, str(state)], 1.0 if state == health.state else 0.0)
            report, at = r.last_reconcile, r.last_reconcile_at
            if report is not None and at is not None:
                rec_at.add_metric(labels, at)
                rec_took.add_metric(labels, report.seconds)
                rec_drift.add_metric(labels, report.drift + report.orphans)
                rec_foreign.add_metric(labels, report.foreign)
            journal_bytes.add_metric(labels, _file_bytes(r.journal.path))
            objects.add_metric(labels, rows)
            buckets, total = stats.histogram()
            visible.add_metric(labels, buckets, total)
        yield from (uploads, copies, deletes, sent, requests, retries, errors, pending, settling, in_flight,
                    parked, lag_g, max_lag, healthy, state_g, rec_at, rec_took, rec_drift, rec_foreign,
                    journal_bytes, objects, visible)
        watches = GaugeMetricFamily("syncd_inotify_watches", f"inotify watches held by the daemon (all folders; "
                                    f"read at most every {WATCHES_RECOUNT:.0f}s).")
        watches.add_metric([], self._inotify_watches(now_mono))
        yield watches
        overflows = CounterMetricFamily("syncd_inotify_overflows", "inotify queue overflows (events lost; "
                                        "each one causes a rescan).")
        overflows.add_metric([], self._overflows())
        yield overflows
        info = GaugeMetricFamily("syncd_build_info", "The running syncd's version (always 1).", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info


def _file_bytes(db: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{db}{suffix}").st_size
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- the server

class ListenError(Exception):
    """``metrics.listen`` cannot be bound: the daemon refuses to start (or a reload keeps
    the old server)."""


class MetricsServer:
    """Serves /metrics and /healthz from its own thread (a thread per request), so a slow
    store or a slow scraper never blocks the daemon, and a slow scrape not the next one."""

    def __init__(self, listen: tuple[str, int], source: Path, runtimes: Callable[[], list[FolderRuntime]],
                 ready: threading.Event, overflows: Callable[[], int]):
        self.listen = listen
        self._source = source
        self._runtimes = runtimes
        self._ready = ready
        self._overflows = overflows
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (raising ListenError naming the key), then serve from a thread."""
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CollectorRegistry, ProcessCollector
        from prometheus_client.exposition import choose_encoder

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(self._runtimes, self._overflows))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        runtimes, ready = self._runtimes, self._ready

        class Handler(BaseHTTPRequestHandler):
            server_version = f"syncd/{__version__}"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                        self._send(200, content_type, encoder(registry))
                    elif path == "/healthz":
                        ok, body = health_report(runtimes(), ready.is_set())
                        self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
                    else:
                        self._send(404, "text/plain; charset=utf-8", b"syncd serves /metrics and /healthz\n")
                except Exception as exc:  # a bug in a scrape must not take the server down
                    log.exception("metrics.scrape_failed", path=path, error=str(exc))
                    self._send(500, "text/plain; charset=utf-8", f"internal error: {exc}\n".encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                log.debug("metrics.request", request=format % args)

        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True       # a stuck scraper does not hold the shutdown
            request_queue_size = 64

        try:
            self._server = Server((host, port), Handler)
        except OSError as exc:
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            hint = {errno.EADDRINUSE: "another process listens there: choose another port or stop it",
                    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
                    errno.EACCES: "ports below 1024 need privileges: choose a port above 1023"}.get(
                        exc.errno or 0, "fix the address")
            raise ListenError(f"{self._source}: key 'metrics.listen': cannot listen on {where}: "
                              f"{exc.strerror or exc}; {hint}") from None
        self._thread = threading.Thread(target=self.run, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics.listening", address=f"{host}:{port}", paths=["/metrics", "/healthz"])

    def _knock(self) -> None:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        socket.create_connection((str(host), int(port)), timeout=1.0).close()

    def run(self) -> None:
        assert self._server is not None
        servers.serve(self._server)

    def stop(self) -> None:
        if self._server is not None:
            servers.shut_down(self._server, self._knock)  # returns once its loop has ended
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

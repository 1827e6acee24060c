"""The scheduler: the one loop per folder that writes its journal and feeds its pool lane.

Its turns run on the daemon's shared loop threads (syncd.loops), only when something woke it
or something it waits for is due: an idle folder costs nothing. Each loop turn it (1) makes
newly observed changes durable (its :class:`~syncd.inbox.Inbox`), (2) records finished
transfers, (3) claims due changes, decides what each one needs (upload, server-side copy,
delete, or nothing) and hands them to its lane of the shared transfer pool
(syncd.pool). Work in flight is bounded by the folder's ``workers`` and by a global byte budget;
deletes are batched up to 1000 per request.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import structlog

from .bandwidth import ByteBudget
from .changes import IntentOp, Outcome, OutcomeKind, Pending
from .choices import DeleteMode
from .config import FolderConfig
from .guard import DeleteGuard, RootProblem
from .health import FolderHealth
from .inbox import Inbox
from .journal import Journal
from .metrics import FolderStats
from .owner import Ownership
from .planner import Planner
from .pool import Pools
from .store import ObjectStore, StoreError
from .transfer import Result, Task, TaskKind, Transfers
from .trash import stamp, trash_key
from .uploads import UploadLog

DELETE_BATCH = 1000          # S3 DeleteObjects accepts at most 1000 keys per request
DELETE_LULL = 0.25           # a partial delete batch waits this long for more keys to join it...
DELETE_MAX_WAIT = 2.0        # ...but never longer than this
WAVE_QUIET, WAVE_QUIET_MAX = 0.5, 10.0   # a wave's first batch waits for a pause in events
TURN_GATHER = 0.005          # while transfers run, a loop turn waits this long for more to end
SINGLE_BATCH = 8             # small uploads a turn starts go to a pool thread this many at a time
LOG_EVERY = 30.0             # a repeating failure is logged at most this often
ROOT_CHECK_EVERY = 1.0       # a busy turn looks at the root this often (idle: check_root, from outside)
PROBE_WAIT_MAX = 30.0        # a halted folder's loop looks at its probe backoff at least this often
DUE_WAIT_MAX = 30.0          # due times are wall-clock: a clock stepped back delays a change at most this
# The task kinds that write a key: journaled as intents first.
WRITE_OPS = {TaskKind.UPLOAD: IntentOp.PUT, TaskKind.COPY: IntentOp.COPY}


@dataclass
class Counters:
    files: int = 0
    bytes: int = 0


class Scheduler:
    """Owns one folder's journal writes, planning and pool."""

    def __init__(self, folder: FolderConfig, journal: Journal, budget: ByteBudget,
                 make_transfers: Callable[[FolderConfig, UploadLog, Callable[[int], None]], Transfers],
                 pools: Pools | None = None):
        """``pools``: the daemon's shared threads; None: a set of its own (tests)."""
        self.folder = folder
        self.journal = journal
        self.budget = budget
        self.planner = Planner(folder, journal)
        self._make_transfers = make_transfers
        self._transfers: Transfers | None = None
        # What a failed probe built, for the next probe: a new client loads botocore's models
        # again, the largest cost of a folder whose endpoint is down.
        self._spare: Transfers | None = None
        self._log = structlog.get_logger("syncd.scheduler").bind(folder=folder.name)
        self._own_pools = pools is None
        self.pools = pools if pools is not None else Pools.create(folder.workers)
        self._lane = self.pools.transfers.lane(folder.name, folder.workers)  # its fair share, capped
        self._probe_lane = self.pools.probes.lane(folder.name, 1)

        self._stop = threading.Event()
        self._wake = self.pools.loops.loop(f"scheduler-{folder.name}", self._step)
        self._failing_since: float | None = None
        self.on_usable: Callable[[], None] | None = None  # the probe found a working store

        self.inbox = Inbox(folder, journal, self._wake)  # what the watcher and the scans saw
        self._results: deque[Result] = deque()
        self._progress: deque[int] = deque()   # bytes of large files sent so far (pool threads)
        self._outcomes: list[Outcome] = []
        self._ready: deque[Task] = deque()
        self._deletes: list[Pending] = []
        self._inflight: dict[int, Task] = {}
        self._copy_sources: set[str] = set()
        self._delete_since = self._delete_grew = 0.0

        self.guard = DeleteGuard(folder, journal)
        self.health = FolderHealth(self.guard, self._log, self._wake)  # may it dispatch, and why not
        self._probes: deque[Future[Transfers]] = deque()
        self._last_logged: dict[str, float] = {}
        self.done = Counters()
        self.stats = FolderStats()   # syncd.metrics: retries, errors by scope, change -> visible
        self._rate: deque[tuple[float, int, int]] = deque()
        self.last_tick = time.monotonic()
        self.rebuilding = False                    # journal rebuild running: transfers wait for it
        self._root_checked = 0.0
        self.ownership = Ownership(folder, journal)
        self.versioned: bool | None = None  # the bucket's versioning (status), asked once by the probe
        self._drain_deadline = 0.0                 # set by stop(): in-flight transfers get until then

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.pools.loops.start(self._wake)

    def stop(self, deadline: float) -> None:
        """Stop claiming; let in-flight transfers finish until ``deadline`` (monotonic)."""
        self._drain_deadline = deadline
        if self._transfers is not None:
            self._transfers.stopping.set()  # large uploads stop between parts and resume later
        self._stop.set()
        # The loop's turns end here (a turn running now finishes first); the drain runs on
        # this thread, so the journal still has one writer.
        self.pools.loops.close(self._wake, max(0.0, deadline - time.monotonic()) + 5)
        self._drain()
        self._lane.close()
        self._probe_lane.close()
        self._release_spare()
        if self._transfers is not None:
            self._transfers.store.close()
        if self._own_pools:
            self.pools.close()

    def _step(self) -> float | None:
        """One turn on a loop thread; returns when the next is wanted (None: when woken)."""
        if self._stop.is_set():
            return None
        try:
            self._turn(time.time())
            if self._failing_since is not None:
                self._log.info("scheduler.recovered", after_s=round(time.monotonic() - self._failing_since, 1))
                self._failing_since = None
                self.health.last_error = None
            timeout = self._next_timeout()
        except Exception as exc:  # e.g. disk full: keep everything in memory and retry
            self._failing_since = self._failing_since or time.monotonic()
            self.health.last_error = f"journal: {exc}"
            self._log_limited("scheduler.failed", error=str(exc))
            timeout = min(5.0, 0.2 + time.monotonic() - self._failing_since)
        self.last_tick = time.monotonic()
        # Transfers end one by one; gathering them for a moment lets one journal transaction
        # record several and one claim refill several slots.
        self._wake.not_before = self.last_tick + TURN_GATHER if self._inflight else 0.0
        return timeout

    def stuck(self, now: float) -> bool:
        """Its loop has not turned although it should have (systemd watchdog)."""
        return self._wake.stuck(now)

    def check_root(self) -> None:
        """Any thread (the service's timer): a root moved away or unmounted sends no event
        for the files below it, so it is looked at from outside; the turn then acts on it."""
        if self.health.halt is None and self.guard.root_problem() is not None:
            self._root_checked = 0.0
            self._wake.set()

    def _drain(self) -> None:
        """Shutdown: wait for in-flight transfers (until the deadline) and record them."""
        deadline = self._drain_deadline
        while self._inflight and time.monotonic() < deadline:
            self._wake.wait(0.1)
            self._safe(self._collect)
        self._safe(self.inbox.ingest)
        self._safe(self._collect)
        if self._inflight:
            self._log.warning("shutdown.abandoned", in_flight=len(self._inflight))
        self._safe(self.journal.release_claims)

    @property
    def transfers(self) -> Transfers | None:
        return self._transfers

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            self._log.error("shutdown.journal_failed", error=str(exc))

    # ------------------------------------------------------------------ the loop turn

    def _turn(self, now: float) -> None:
        """One loop turn; ``now`` is wall-clock time (what the journal's due times are in)."""
        health = self.health
        self.inbox.ingest()
        self._collect()
        self._probe_results()
        health.apply_reports()
        if health.halt is None and time.monotonic() - self._root_checked >= ROOT_CHECK_EVERY:
            # A root moved away or unmounted sends no event for the files below it.
            self._root_checked = time.monotonic()
            issue = self.guard.root_problem()
            if issue is not None:
                health.fail_root(issue)
        if self.guard.in_wave and not (self._inflight or self._ready or self._deletes) \
                and self.journal.next_due() is None:
            self.guard.wave_over()
        if health.halt is not None or self._transfers is None:
            if health.probe_due(now):
                self._probe_lane.call(self._probe).add_done_callback(self._on_probe)
            return
        if not health.paused and not self.rebuilding:
            self._dispatch(now)

    def _collect(self) -> None:
        while self._progress:
            n = self._progress.popleft()
            self.done.bytes += n
            self._rate.append((time.monotonic(), 0, n))
        results: list[Result] = []
        while self._results:
            results.append(self._results.popleft())
        cost = files = sent = 0
        for r in results:
            self._inflight.pop(id(r.task), None)
            cost += r.task.cost
            if r.task.copy_from is not None:
                self._copy_sources.discard(r.task.copy_from.path)
                if any(o.kind == OutcomeKind.DONE for o in r.outcomes):
                    self.guard.moved()
            self._outcomes.extend(r.outcomes)
            files += r.files
            sent += r.bytes_sent
            if r.folder_error is not None:
                self.health.fail(str(r.folder_error), stalled=r.folder_error.transient)
            for o in r.outcomes:
                if o.kind in (OutcomeKind.RETRY, OutcomeKind.PARK) and o.error:
                    self.health.last_error = o.error
                    self._log_limited("transfer.failed", path=o.path, error=o.error, outcome=o.kind)
        if results:
            self.budget.release(cost)
            self.stats.observe(results)
        if files or sent:
            self.done.files += files
            self.done.bytes += sent
            self._rate.append((time.monotonic(), files, sent))
        if self._outcomes:
            self.journal.apply(self._outcomes)
            self._outcomes = []

    def _dispatch(self, now: float) -> None:
        assert self._transfers is not None
        free = self.folder.workers - len(self._inflight)
        exhausted = False  # nothing more is due right now
        starting: list[Task] = []
        while free > 0:
            if not self._ready and not exhausted:
                claimed = self.journal.claim_due(now, max(2 * free, 32))
                exhausted = len(claimed) < max(2 * free, 32)
                for p in claimed:
                    self._plan(p, now)
                if len(self._deletes) >= DELETE_BATCH and self._wave_observed():
                    self._flush_deletes()
                    free -= 1
                    continue
            if not self._ready:
                break
            task = self._ready[0]
            if not self.budget.try_acquire(task.cost):
                break
            self._ready.popleft()
            starting.append(task)
            free -= 1
        self._start(starting)
        if self._deletes and free > 0 and self._wave_observed() and (
                len(self._deletes) >= DELETE_BATCH or (exhausted and self._deletes_ripe())):
            self._flush_deletes()

    def _deletes_ripe(self) -> bool:
        """Deletes arrive in waves (a directory move frees its keys as the copies finish):
        flush a partial batch only after a lull, so one request carries many keys."""
        now = time.monotonic()
        return now - self._delete_grew >= DELETE_LULL or now - self._delete_since >= DELETE_MAX_WAIT

    def _start(self, tasks: list[Task]) -> None:
        """Journal the write intents of ``tasks`` in one transaction, then send them: after a
        crash or a lost answer, every key that may have been written is known (see Journal)."""
        try:
            writes = [t for t in tasks if t.kind in WRITE_OPS]
            self._journal_trash(writes, overwrites=True)
            self.journal.intend((t.path, WRITE_OPS[t.kind]) for t in writes)
        except Exception:
            # Nothing was sent: the tasks wait at the front, and the loop's error handling
            # retries (e.g. the disk is full).
            for t in tasks:
                self.budget.release(t.cost)
            self._ready.extendleft(reversed(tasks))
            raise
        # A small upload's thread only reads the file and starts its PUT (the answer comes on
        # the store's thread), so several share one pool task: each hand-off to a thread costs
        # a wake-up and a GIL transfer, paid per file during a sync of many small files. One
        # that first copies the old object into the trash waits for that copy: it goes alone.
        assert self._transfers is not None
        batch = self._transfers.background_puts
        singles: list[Task] = []
        for t in tasks:
            if batch and t.kind == TaskKind.UPLOAD and t.single and not t.trash:
                singles.append(t)
            else:
                self._submit(t)
        for i in range(0, len(singles), SINGLE_BATCH):
            self._submit_all(singles[i:i + SINGLE_BATCH])

    def _wave_observed(self) -> bool:
        """The first batch of a deletion wave waits until events pause (an `rm -rf` still
        running), so the guard judges the wave whole, not only its first thousand keys."""
        if self.guard.judged:
            return True
        now = time.monotonic()
        return now - self.inbox.last_submit >= WAVE_QUIET or now - self._delete_since >= WAVE_QUIET_MAX

    def _submit(self, task: Task) -> None:
        assert self._transfers is not None
        self._inflight[id(task)] = task
        self._lane.submit(self._transfers.run, task, self._deliver)

    def _submit_all(self, tasks: list[Task]) -> None:
        """Tasks that each end quickly (a small upload only starts its PUT), run one after
        another on one pool thread."""
        assert self._transfers is not None
        for task in tasks:
            self._inflight[id(task)] = task
        if len(tasks) == 1:
            self._lane.submit(self._transfers.run, tasks[0], self._deliver)
        else:
            self._lane.submit(self._transfers.run_all, tasks, self._deliver)

    def _deliver(self, result: Result) -> None:
        """A transfer ended (pool thread, or the store's thread for a small PUT)."""
        self._results.append(result)
        self._wake.set()

    def _flush_deletes(self) -> None:
        batch, self._deletes = self._deletes[:DELETE_BATCH], self._deletes[DELETE_BATCH:]
        issue = self.guard.root_problem(check_empty=True)
        if issue is not None:
            self.health.fail_root(issue)
            self._hold_deletes(batch)
            return
        problem = self.guard.wave_problem(len(batch) + len(self._deletes))
        if problem is not None:
            self.health.hold_wave(problem)
            self._hold_deletes(batch)
            return
        task = Task(TaskKind.DELETE, batch)
        try:
            self._journal_trash([task], overwrites=False)
        except Exception:
            self._deletes = batch + self._deletes  # nothing was sent; the loop retries
            raise
        self.guard.counted(len(batch))
        self._submit(task)

    def _journal_trash(self, tasks: list[Task], overwrites: bool) -> None:
        """``delete: trash``: choose and journal the trash key of every object these tasks
        delete or (``overwrites``) replace, before they are sent (see syncd.trash)."""
        if self.folder.delete != DeleteMode.TRASH:
            return
        wanted: list[tuple[Task, str, str | None]] = []
        for t in tasks:
            for p in t.items:
                entry = self.journal.entry(p.path)
                if entry is not None:
                    wanted.append((t, p.path, entry.etag))
                elif not overwrites and self.journal.intent(p.path) is not None:
                    wanted.append((t, p.path, None))  # an unconfirmed write: whatever it left
        chosen = self.journal.trash_stamps(((path, etag) for _t, path, etag in wanted), stamp(time.time()))
        for t, path, etag in wanted:
            t.trash[path] = (trash_key(self.folder.prefix, path, chosen[path]), etag)

    def _hold_deletes(self, batch: list[Pending]) -> None:
        """Keep these deletions pending while the folder is held (until a human or the root says so)."""
        self._outcomes.extend(Outcome(OutcomeKind.DEFER, p.path, p.gen, delay=1.0) for p in batch + self._deletes)
        self._deletes = []

    def _plan(self, p: Pending, now: float) -> None:
        """Route the planner's decision: an outcome now, a transfer, or a batched delete."""
        decision = self.planner.plan(p, now, self._copy_sources)
        if not (isinstance(decision, Task) and decision.kind == TaskKind.UPLOAD):
            upload_id = self.journal.uploads.upload_id(p.path)
            if upload_id is not None or (isinstance(decision, Task) and self.journal.intent(p.path) == IntentOp.PUT):
                # A large upload was under way for a file that is gone or no longer needs it
                # (None: a crash may have come before its upload id was journaled).
                self._ready.append(Task(TaskKind.ABORT, [p], upload_id=upload_id))
        if isinstance(decision, Outcome):
            self._outcomes.append(decision)
        elif decision.kind == TaskKind.DELETE:
            if not self._deletes:
                self._delete_since = time.monotonic()
            self._delete_grew = time.monotonic()
            self._deletes.append(p)
        else:
            if decision.copy_from is not None:
                self._copy_sources.add(decision.copy_from.path)
            self._ready.append(decision)

    # ------------------------------------------------------------------ probes

    def _probe(self) -> Transfers:
        """Pool thread: can the folder work again (root present, store reachable)?"""
        halt = self.health.halt
        issue = self.guard.root_problem(check_empty=halt is not None and halt.root)
        if issue is not None:
            raise RootProblem(issue)
        transfers = self._transfers or self._spare or self._make_transfers(
            self.folder, self.journal.uploads, self._progressed)
        self._spare = transfers
        transfers.store.check()
        take_over = self.health.taking_over
        transfers.owner = self.ownership.claim(transfers.store, take_over=take_over)
        if take_over:
            self.health.taking_over = False
        return transfers

    def _release_spare(self) -> None:
        """Drop a failed probe's store, releasing its client: a shared client is cached until
        its last user closes it, and a new one reads the credentials afresh."""
        spare, self._spare = self._spare, None
        if spare is not None and spare is not self._transfers:
            spare.store.close()

    def _ask_versioning(self, store: ObjectStore) -> None:
        """Pool thread: is the bucket versioned (GetBucketVersioning says Enabled)? Left None
        if it cannot be asked: only `syncd status` shows it, never the folder's work."""
        try:
            self.versioned = store.versioning() == "Enabled"
        except StoreError:
            pass

    def _progressed(self, n: int) -> None:
        """A pool thread sent ``n`` more bytes of a large file (status shows the rate)."""
        self._progress.append(n)
        self._wake.set()

    def _on_probe(self, future: Future[Transfers]) -> None:
        self._probes.append(future)
        self._wake.set()

    def _probe_results(self) -> None:
        """Scheduler thread: apply what the probe found."""
        while self._probes:
            future = self._probes.popleft()
            exc = future.exception()
            if exc is not None:
                if not (isinstance(exc, StoreError) and exc.transient):
                    # Credentials or settings the user may fix: the next probe reads them afresh.
                    self._release_spare()
                self.health.probe_failed(exc)
                continue
            self._transfers, self._spare = future.result(), None
            if self.versioned is None:
                # Beside the first uploads, not before them: only `syncd status` shows it.
                self._probe_lane.submit(self._ask_versioning, self._transfers.store)
            usable = self.health.probe_ok()
            if self.on_usable is not None:
                self.on_usable()
            if usable:
                # Changes that failed while the endpoint was away are tried again now,
                # not after whatever backoff they had reached.
                self._log.info("folder.expedited", changes=self.journal.expedite_retries())

    # ------------------------------------------------------------------ helpers

    def _next_timeout(self) -> float | None:
        """When the next turn is needed; None: only when something wakes the loop (a change
        observed, a transfer ended, a control command, the root check from outside)."""
        if self.inbox or self._results or self._probes or self._outcomes or self._progress:
            return 0.0  # (outcomes of this turn's planning are journaled by the next)
        health = self.health
        if health.halt is not None or self._transfers is None:
            if health.paused or health.probing:
                return None  # resume wakes it; so does the probe's end
            # The next probe, as the backoff says (wall clock, like the health's times).
            return max(0.0, min(PROBE_WAIT_MAX, health.probe_at - time.time()))
        if health.paused or self.rebuilding:
            return None  # resume and the end of a rebuild wake it
        if len(self._inflight) >= self.folder.workers:
            # Every worker is busy: nothing can start before one finishes, and a finishing
            # transfer wakes the loop. (Looking at due changes here spun the loop at 100 % CPU
            # during every large sync, taking a core from the workers and the server.)
            return None
        if self._ready or self._deletes:
            return 0.05  # budget-blocked, or a delete batch filling up: look again shortly
        nxt = self.journal.next_due()
        if nxt is None:
            return None
        return max(0.0, min(DUE_WAIT_MAX, nxt - time.time()))

    def _log_limited(self, event: str, **kw: Any) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(event, -1e9) >= LOG_EVERY:
            self._last_logged[event] = now
            self._log.warning(event, **kw)

    # ------------------------------------------------------------------ control

    def set_rebuilding(self, rebuilding: bool) -> None:
        self.rebuilding = rebuilding
        self._wake.set()

    def retry_failed(self) -> int:
        n = self.journal.retry_failed()
        self._wake.set()
        return n

    def oldest_inflight_age(self, now: float) -> float:
        """Seconds since the least recent sign of progress of a transfer in flight (0 when
        none), for the watchdog: a large upload counts each finished part as progress."""
        tasks = list(self._inflight.values())
        return max((now - t.touched for t in tasks), default=0.0)

    def in_flight(self) -> int:
        return len(self._inflight)

    def rate(self, window: float = 10.0) -> tuple[float, float]:
        """(files/s, bytes/s) over the last ``window`` seconds."""
        cutoff = time.monotonic() - window
        while self._rate and self._rate[0][0] < cutoff:
            self._rate.popleft()
        samples = list(self._rate)
        return (sum(s[1] for s in samples) / window, sum(s[2] for s in samples) / window)

    def ops(self) -> dict[str, int]:
        return dict(self._transfers.ops) if self._transfers is not None else {}

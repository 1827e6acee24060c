"""A folder's health: may its scheduler dispatch, and if not, why?

The one state machine behind a folder's `syncd status` state. Its transitions (first contact,
probe succeeded or failed with backoff, folder error or stall, root guard and its recovery,
a deletion wave held, pause and resume, a deliberate take-over) are all here, and
`syncd status`, STATUS=, `/healthz` and `syncd wait` (exit 5, held) all read
:meth:`FolderHealth.state` instead of re-deriving it. The scheduler acts on it: it probes the
store while :attr:`FolderHealth.halt` is set, and dispatches only while it is not, nor paused.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .guard import DeleteGuard, RootIssue, RootProblem
from .loops import Waker
from .store import StoreError

PROBE_MIN, PROBE_MAX = 2.0, 30.0   # spacing of the probes of a halted folder: first, at most
LOG_EVERY = 30.0                   # a probe failing the same way is logged at most this often


class FolderState(StrEnum):
    """A folder's state as `syncd status` shows it (DESIGN.md, command table)."""

    STARTING = "starting"    # first contact with the store
    SCANNING = "scanning"    # a reconcile pass is running
    WATCHING = "watching"
    PAUSED = "paused"        # `syncd pause`
    HELD = "held"            # a guard: deletion wave over max_delete, root missing/replaced/emptied
    ERROR = "error"          # the folder cannot work until its configuration or the store is fixed
    STALLED = "stalled"      # the endpoint cannot be reached; resumes by itself


@dataclass(frozen=True, slots=True)
class Halt:
    """Why nothing is dispatched. One value, replaced whole, so a reader on another thread
    never sees half a transition."""

    reason: str
    state: FolderState       # STARTING (before the first contact), ERROR or STALLED
    root: bool = False       # a root problem: no deletions; rescanned once the root is back
    holds: bool = True       # with ``root``: a guard hold (`held`); False: an error resume never accepts


CONNECTING = Halt("connecting to the object store", FolderState.STARTING)


class FolderHealth:
    """One folder's health. Transitions run in its scheduler's turns, except those named
    "any thread"; reads may come from any thread."""

    def __init__(self, guard: DeleteGuard, log: Any, wake: Waker):
        self.guard = guard
        self._log = log
        self._wake = wake
        self.halt: Halt | None = None
        self.up = threading.Event()        # set while not halted: a remote pass waits on it
        self.paused = False                # `syncd pause`, or a held deletion wave
        self.wave_held: str | None = None  # why a deletion wave waits for `syncd resume`
        self.last_error: str | None = None
        self.root_recovered = threading.Event()  # the folder service re-watches and rescans
        self.taking_over = False           # `syncd resume --take-over`: the next probe claims the prefix
        self._reported: deque[StoreError] = deque()  # folder errors found by other threads
        self._probe_at = 0.0
        self._probe_delay = PROBE_MIN
        self._probing = False
        self._first_probe = True
        self._still_failing_logged = -1e9

    # ------------------------------------------------------------------ reading

    def held(self) -> str | None:
        """Why a guard holds the folder (a deletion wave over max_delete; a missing, replaced
        or emptied root) until the root is back or `syncd resume` confirms, or None."""
        if self.wave_held is not None:
            return self.wave_held
        halt = self.halt
        return halt.reason if halt is not None and halt.root and halt.holds else None

    def state(self, scanning: bool) -> FolderState:
        """The folder's state; ``scanning``: a reconcile pass is running."""
        if self.held() is not None:
            return FolderState.HELD  # needs the root back or `syncd resume`, whatever else is going on
        halt = self.halt
        if halt is not None and halt.state is not FolderState.STARTING:
            return halt.state
        if self.paused:
            return FolderState.PAUSED  # what the user asked for, even before the first contact
        if halt is not None:
            return FolderState.STARTING
        return FolderState.SCANNING if scanning else FolderState.WATCHING

    def why(self, state: FolderState) -> str | None:
        """The reason behind ``state`` when it is held, error or stalled."""
        if state is FolderState.HELD:
            return self.held()
        halt = self.halt
        return halt.reason if halt is not None and state in (FolderState.ERROR, FolderState.STALLED) else None

    @property
    def probe_at(self) -> float:
        """When the next probe may start (wall clock; inf while the first contact is held)."""
        return self._probe_at

    @property
    def probing(self) -> bool:
        """A probe is running (its end wakes the scheduler)."""
        return self._probing

    @property
    def stopped(self) -> bool:
        """Nothing is dispatched: halted or paused."""
        return self.halt is not None or self.paused

    # ------------------------------------------------------------------ first contact and probes

    def connect(self, hold: bool = False) -> None:
        """First contact with the store happens in a probe; ``hold`` postpones it until
        :meth:`release`."""
        self.halt = CONNECTING
        self.up.clear()
        self._probe_at = float("inf") if hold else 0.0

    def release(self) -> None:
        """Any thread: the held first contact may happen now."""
        if self._probe_at == float("inf"):
            self._probe_at = 0.0
            self._wake.set()

    def probe_due(self, now: float) -> bool:
        """Whether a probe should start now (it then counts as running)."""
        if self._probing or now < self._probe_at:
            return False
        self._probing = True
        return True

    def probe_ok(self) -> bool:
        """A probe found the folder able to work. Returns whether the endpoint had been
        unreachable (changes waiting out a retry backoff may go now)."""
        self._probing = False
        halt = self.halt
        if halt is not None:
            if halt.root:
                self.root_recovered.set()
            self._log.info("folder.ready" if self._first_probe else "folder.recovered")
        self._first_probe = False
        self.halt = None
        self.up.set()
        self.last_error = None
        return halt is not None and halt.state is FolderState.STALLED

    def probe_failed(self, exc: BaseException) -> None:
        """A probe failed: halted (again), the next probe after a longer backoff."""
        self._probing = False
        message = str(exc) if isinstance(exc, StoreError) else f"internal error: {exc!r}"
        halt = self.halt
        # A root problem also holds at startup: watched and rescanned once it is back.
        root = isinstance(exc, RootProblem)
        holds = exc.holds if isinstance(exc, RootProblem) else True
        if not root and halt is not None and halt.root:
            # The root passed the probe's check: that hold is over, the store is the problem now.
            self.root_recovered.set()
        if self._first_probe or halt is None or halt.reason != message:
            self._log.error("folder.error", error=message)
        elif time.monotonic() - self._still_failing_logged >= LOG_EVERY:
            self._still_failing_logged = time.monotonic()
            self._log.warning("folder.still_failing", error=message)
        self._first_probe = False
        stalled = isinstance(exc, StoreError) and exc.transient
        self.halt = Halt(message, FolderState.STALLED if stalled else FolderState.ERROR, root, holds)
        self.up.clear()
        self.last_error = message
        self._probe_delay = min(PROBE_MAX, self._probe_delay * 2)
        self._probe_at = time.time() + self._probe_delay

    # ------------------------------------------------------------------ halts and holds

    def fail(self, reason: str, stalled: bool = False) -> None:
        """Stop dispatching until a probe succeeds. ``stalled``: the endpoint cannot be
        reached (nothing is wrong with the folder itself; it resumes on its own). A root
        problem already halting the folder stays (it lasts while the halt does)."""
        halt = self.halt
        if halt is not None and halt.root:
            self._halt(Halt(reason, FolderState.ERROR, True, halt.holds), stalled)
        else:
            self._halt(Halt(reason, FolderState.STALLED if stalled else FolderState.ERROR), stalled)

    def fail_root(self, issue: RootIssue) -> None:
        """The root cannot be trusted: no deletions, and a hold (or an error, for a root
        swapped for a symlink) until the root is back or `syncd resume` accepts it."""
        self._halt(Halt(issue.reason, FolderState.ERROR, True, issue.holds), False)

    def _halt(self, new: Halt, stalled: bool) -> None:
        if self.halt is None:
            self._log.error("folder.stalled" if stalled else "folder.error", error=new.reason)
            self._probe_delay = PROBE_MIN
        self.halt = new
        self.up.clear()
        self.last_error = new.reason
        self._probe_at = time.time() + self._probe_delay

    def report(self, exc: StoreError) -> None:
        """Any thread: the folder cannot work (e.g. the remote pass found the prefix taken
        over); the scheduler halts it at its next turn (:meth:`apply_reports`)."""
        self._reported.append(exc)
        self._wake.set()

    def apply_reports(self) -> None:
        while self._reported:
            self.fail(str(self._reported.popleft()))

    def hold_wave(self, reason: str) -> None:
        """A deletion wave over max_delete: paused until `syncd resume` confirms it."""
        if self.wave_held is None:
            self._log.error("folder.delete_wave_held", error=reason)
        self.paused = True
        self.wave_held = reason
        self.last_error = reason

    # ------------------------------------------------------------------ control (any thread)

    def set_paused(self, paused: bool) -> None:
        """``syncd pause`` / ``syncd resume``. Resuming also confirms what a guard paused for:
        the current deletion wave, an emptied root, or a root that was replaced."""
        self.paused = paused
        if not paused:
            if self.wave_held is not None:
                self._log.info("folder.delete_wave_confirmed", wave=self.guard.wave_deletes)
                self.guard.confirm_wave()
                self.wave_held = None
                self.last_error = None
            halt = self.halt
            if halt is not None and halt.root and halt.holds:
                self.guard.confirm_root()
                self._probe_at = 0.0
        self._wake.set()

    def take_over(self) -> None:
        """``syncd resume FOLDER --take-over``: the next probe, at once, claims the prefix even
        though another owner holds it."""
        self.taking_over = True
        self._probe_at = 0.0
        self._wake.set()

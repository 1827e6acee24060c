"""A folder's health state machine (syncd.health), driven in-process: no store, no daemon."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import structlog
from syncd.guard import RootIssue, RootProblem
from syncd.health import PROBE_MAX, PROBE_MIN, FolderHealth, FolderState
from syncd.store import FOLDER, TRANSIENT, StoreError


class FakeGuard:
    """What FolderHealth asks of the deletion guard: confirmations on `syncd resume`."""

    def __init__(self) -> None:
        self.wave_deletes = 0
        self.wave_confirmed = self.root_confirmed = False

    def confirm_wave(self) -> None:
        self.wave_confirmed = True

    def confirm_root(self) -> None:
        self.root_confirmed = True


@pytest.fixture
def guard() -> FakeGuard:
    return FakeGuard()


@pytest.fixture
def health(guard: Any) -> FolderHealth:
    return FolderHealth(guard, structlog.get_logger("test"), threading.Event())


def _unreachable() -> StoreError:
    return StoreError("endpoint unreachable", scope=TRANSIENT, code="Unreachable")


def _denied() -> StoreError:
    return StoreError("bucket 'b': access denied", scope=FOLDER, code="AccessDenied")


def test_a_folder_is_starting_until_its_first_probe_succeeds(health):
    health.connect()
    assert health.state(scanning=False) is FolderState.STARTING
    assert health.probe_due(time.time())
    health.probe_ok()
    assert health.state(scanning=False) is FolderState.WATCHING
    assert health.state(scanning=True) is FolderState.SCANNING


def test_a_held_first_contact_waits_for_release(health):
    health.connect(hold=True)
    assert not health.probe_due(time.time() + 1e6)
    health.release()
    assert health.probe_due(time.time())


def test_a_pause_before_the_first_contact_shows_paused(health):
    health.connect()
    health.set_paused(True)
    assert health.state(scanning=False) is FolderState.PAUSED


def test_an_unreachable_endpoint_stalls_and_a_permanent_failure_is_an_error(health):
    health.connect()
    health.probe_due(time.time())
    health.probe_failed(_unreachable())
    assert health.state(scanning=False) is FolderState.STALLED
    health.probe_due(time.time() + 60)
    health.probe_failed(_denied())
    assert health.state(scanning=False) is FolderState.ERROR
    assert health.why(FolderState.ERROR) == str(_denied()) == health.last_error


def test_an_error_outranks_a_pause(health):
    health.set_paused(True)
    health.fail(str(_denied()))
    assert health.state(scanning=False) is FolderState.ERROR


def test_failed_probes_back_off_doubling_up_to_a_cap(health):
    health.connect()
    assert health.probe_due(time.time())
    delay = PROBE_MIN
    for _ in range(6):
        health.probe_failed(_unreachable())
        delay = min(PROBE_MAX, delay * 2)
        assert not health.probe_due(time.time() + delay - 0.5)
        assert health.probe_due(time.time() + delay + 0.5)
    assert delay == PROBE_MAX


def test_one_probe_runs_at_a_time(health):
    health.connect()
    assert health.probe_due(time.time())
    assert not health.probe_due(time.time() + 1e6)


def test_the_endpoint_coming_back_says_retries_may_go_now(health):
    health.connect()
    health.probe_due(time.time())
    health.probe_failed(_unreachable())
    health.probe_due(time.time() + 60)
    assert health.probe_ok() is True
    assert health.last_error is None


def test_a_root_problem_holds_the_folder_whatever_else_is_going_on(health):
    health.fail_root(RootIssue("folder root /x is unavailable"))
    health.set_paused(True)
    assert health.state(scanning=True) is FolderState.HELD
    assert health.held() == "folder root /x is unavailable"


def test_a_root_hold_ends_when_a_probe_passes_the_root_check(health):
    health.fail_root(RootIssue("folder root /x is unavailable"))
    health.probe_due(time.time() + 60)
    health.probe_failed(_unreachable())  # the root is back; the store is the problem now
    assert health.root_recovered.is_set()
    assert health.held() is None
    assert health.state(scanning=False) is FolderState.STALLED


def test_a_root_problem_found_by_the_probe_is_a_hold(health):
    health.connect()
    health.probe_due(time.time())
    health.probe_failed(RootProblem(RootIssue("folder root /x is unavailable")))
    assert health.state(scanning=False) is FolderState.HELD


def test_resume_accepts_the_root_and_probes_at_once(health, guard):
    health.fail_root(RootIssue("folder root /x was replaced"))
    health.set_paused(False)
    assert guard.root_confirmed
    assert health.probe_due(time.time())


def test_a_root_swapped_for_a_symlink_is_an_error_that_resume_does_not_accept(health, guard):
    health.fail_root(RootIssue("folder root /x was replaced by a symlink", holds=False))
    assert health.state(scanning=False) is FolderState.ERROR
    assert health.held() is None
    health.set_paused(False)
    assert not guard.root_confirmed
    assert health.state(scanning=False) is FolderState.ERROR


def test_a_held_deletion_wave_pauses_until_resume_confirms_it(health, guard):
    health.hold_wave("deletion wave of 100+ objects exceeds max_delete=10")
    assert health.state(scanning=False) is FolderState.HELD and health.paused
    health.set_paused(False)
    assert guard.wave_confirmed
    assert health.state(scanning=False) is FolderState.WATCHING
    assert health.last_error is None


def test_an_error_reported_by_another_thread_halts_at_the_schedulers_turn(health):
    health.report(_denied())
    assert health.state(scanning=False) is FolderState.WATCHING
    health.apply_reports()
    assert health.state(scanning=False) is FolderState.ERROR


def test_take_over_probes_at_once_and_claims_the_prefix(health):
    health.fail(str(_denied()))
    health.take_over()
    assert health.taking_over
    assert health.probe_due(time.time())

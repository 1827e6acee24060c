"""`syncd run` collects garbage rarely while it starts, and normally once it is up (syncd.service,
Daemon._end_startup): start-up builds objects that live as long as the daemon, and collecting
them again and again only delayed the first upload."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from syncd.cli import STARTUP_GC_YOUNG
from syncd.health import CONNECTING, FolderState, Halt
from syncd.service import STARTUP_MAX, Daemon

USUAL = (700, 10, 10)


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(STARTUP_GC_YOUNG, *USUAL[1:])
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _daemon(*halts: Halt | None, started: float | None = None) -> Any:
    """Just what _end_startup reads of a Daemon: its folders' health and its start time."""
    folders = {f"f{i}": SimpleNamespace(health=SimpleNamespace(halt=h)) for i, h in enumerate(halts)}
    return SimpleNamespace(_gc_thresholds=USUAL, folders=folders,
                           started=time.monotonic() if started is None else started)


def _end_startup(daemon: Any) -> None:
    Daemon._end_startup(daemon, time.monotonic())


def test_the_collector_stays_lenient_while_a_folder_still_waits_for_its_first_contact(collector):
    daemon = _daemon(None, CONNECTING)
    _end_startup(daemon)
    assert gc.get_threshold()[0] == STARTUP_GC_YOUNG and gc.get_freeze_count() == 0
    assert daemon._gc_thresholds == USUAL


def test_every_first_contact_answered_restores_the_thresholds_and_freezes_what_startup_built(collector):
    daemon = _daemon(None, Halt("endpoint refused", FolderState.STALLED))  # an answer, if a failure
    _end_startup(daemon)
    assert gc.get_threshold() == USUAL
    assert gc.get_freeze_count() > 0
    assert daemon._gc_thresholds is None


def test_a_store_that_never_answers_ends_startup_after_its_longest_wait(collector):
    daemon = _daemon(CONNECTING, started=time.monotonic() - STARTUP_MAX - 1)
    _end_startup(daemon)
    assert gc.get_threshold() == USUAL and daemon._gc_thresholds is None

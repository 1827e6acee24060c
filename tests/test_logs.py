"""Logging: library warnings (Python `warnings`) reach the structured log once per distinct
message, never as raw text on stderr (DESIGN.md, "Operations")."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

import pytest
import structlog
from syncd import logs

from .support.daemon import await_condition

RAW_WARNING = re.compile(r"\w+Warning: ")  # how warnings.showwarning prints: "file:12: RuntimeWarning: text"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What logs.setup, as the daemon calls it, writes to stderr; undone afterwards
    (structlog and logging are global)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with warnings.catch_warnings():  # restores warnings.showwarning and the filters
        warnings.simplefilter("always")
        logs.setup("info", "logfmt")
        yield stderr
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def test_a_library_warning_is_one_structured_line_per_distinct_message(logged):
    for watch in ("a", "b", "c"):  # watchdog names a different watch each time: still one message
        warnings.warn(f"Callback with id '{watch}' already exists for watch {watch!r}. It will be Overwritten.",
                      RuntimeWarning, stacklevel=1)
    warnings.warn("something else entirely", DeprecationWarning, stacklevel=1)
    lines = logged.getvalue().splitlines()
    events = [line for line in lines if "event=python.warning" in line]
    assert len(events) == 2, lines
    assert "level=warning" in events[0] and "category=RuntimeWarning" in events[0]
    assert "Callback with id 'a' already exists" in events[0] and "source=" in events[0]
    assert "category=DeprecationWarning" in events[1]
    assert not [line for line in lines if RAW_WARNING.search(line)]


# Loaded by `syncd run` through PYTHONPATH: once logging is set up, a library thread warns
# three times (two messages differing only in their ids, as watchdog's do).
_WARNING_THREAD = """
import sys, threading, time, warnings
if "run" in sys.argv:
    def _warn():
        original = warnings.showwarning
        while warnings.showwarning is original:
            time.sleep(0.01)
        for wd in (1, 2):
            warnings.warn(f"Callback with id '{wd}' already exists for watch <Watch: wd={wd}>. "
                          "It will be Overwritten.", RuntimeWarning)
        warnings.warn("a second kind of warning", UserWarning)
    threading.Thread(target=_warn, daemon=True, name="library").start()
"""


def test_a_warning_in_a_running_daemon_is_a_structured_line_not_raw_stderr(syncd, tree, bucket, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_WARNING_THREAD)
    syncd.add_folder("main", tree, bucket)
    syncd.start(PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    lines = await_condition(lambda: [line for line in syncd.log().splitlines() if "event=python.warning" in line]
                            if "a second kind" in syncd.log() else None, 30, "the warnings in the log")
    callbacks = [line for line in lines if "Callback with id" in line]
    assert len(callbacks) == 1 and "category=RuntimeWarning" in callbacks[0] and "source=" in callbacks[0]
    assert len([line for line in lines if "category=UserWarning" in line]) == 1
    assert not [line for line in syncd.log().splitlines() if RAW_WARNING.search(line)]

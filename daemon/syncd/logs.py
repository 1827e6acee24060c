"""Logging: structlog configured once, one event per line with key=value context.

Under systemd (``JOURNAL_STREAM`` names our stderr) each line starts with a ``<N>`` syslog
priority prefix, which journald turns into the entry's priority, so
``journalctl -p warning -u syncd`` works. On a terminal: plain readable lines, no colours.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Presigned URLs and SigV4 headers must never reach a log line.
_SECRETS = re.compile(r"(X-Amz-Signature=|X-Amz-Credential=|Signature=|Credential=|aws_secret_access_key=?)"
                      r"[^\s&,\"']+", re.IGNORECASE)


# What makes two warnings "the same message": the text with its variable parts (quoted
# names, numbers) blanked. watchdog's "Callback with id '…' already exists for watch …"
# names a different watch each time and would otherwise repeat once per directory.
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|0x[0-9a-fA-F]+|\d+")
MAX_WARNINGS = 1000  # distinct warnings remembered; beyond that new ones are dropped (said once)


class _WarningsToLog:
    """Replaces :func:`warnings.showwarning`: each distinct warning becomes one structured
    ``python.warning`` event instead of raw multi-line text on stderr."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._dropping = False
        self._lock = threading.Lock()  # libraries warn from their own threads (watchdog's observer)

    def __call__(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
        text = str(message)
        key = (category.__name__, _VARIABLE.sub("…", text))
        with self._lock:
            if key in self._seen or (self._dropping and len(self._seen) >= MAX_WARNINGS):
                return
            first_dropped = len(self._seen) >= MAX_WARNINGS
            if first_dropped:
                self._dropping = True
            else:
                self._seen.add(key)
        log = structlog.get_logger("syncd.warnings")
        if first_dropped:
            log.warning("python.warnings_dropped", limit=MAX_WARNINGS,
                        error="too many distinct library warnings: further new ones are not logged")
        else:
            log.warning("python.warning", category=category.__name__, message=text, source=f"{filename}:{lineno}")


def journald_attached() -> bool:
    """True when stderr is the journal stream systemd gave us (not merely inherited)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or ""
    secret = secret if len(secret) >= 8 else ""  # a tiny test key would redact ordinary words
    for key, value in list(event.items()):
        if isinstance(value, str):
            value = _SECRETS.sub(lambda m: m.group(1) + "REDACTED", value)
            if secret and secret in value:
                value = value.replace(secret, "REDACTED")
            event[key] = value
    return event


class _JournaldPrefix:
    """Prefix the rendered line with its syslog priority for journald."""

    def __init__(self, renderer: Any):
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        prio = _PRIORITY.get(str(event.get("level", name)), 6)
        return f"<{prio}>{self.renderer(logger, name, event)}"


def setup(level: str = "info", fmt: str = "auto") -> str:
    """Configure structlog and the stdlib root logger; returns the format chosen."""
    if fmt == "auto":
        fmt = "journald" if journald_attached() else ("console" if sys.stderr.isatty() else "logfmt")
    renderer: Any
    shared: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if fmt == "json":
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "journald":  # journald stamps entries itself
        renderer = _JournaldPrefix(structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True))
    elif fmt == "console":
        shared.append(structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False))
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    else:
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        renderer = structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"],
                                                       drop_missing=True)
    shared += [structlog.processors.format_exc_info, _redact]

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # Libraries stay quiet: botocore at debug level would print signed request headers, the
    # Azure SDK logs every request and response at info.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "watchdog", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library warnings (Python `warnings`) go through the log too, once per distinct message.
    # Which warnings are shown is still up to the filters (-W, PYTHONWARNINGS).
    warnings.showwarning = _WarningsToLog()
    return fmt

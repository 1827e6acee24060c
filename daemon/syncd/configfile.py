"""Where the global config file is, how its paths resolve, and the control socket's path:
the part of reading the config that client commands need (`syncd wait` starts while the
daemon starts, on the same cores) without importing the validators of :mod:`syncd.config`.
Together with it, the only module that reads YAML."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(os.environ.get("SYNCD_CONFIG", "/etc/syncd/syncd.yaml"))
DEFAULT_SOCKET = Path("/run/syncd/syncd.sock")


def resolve(base: Path, value: str) -> Path:
    """A path setting: ``~`` expanded, relative ones taken from ``base`` (the file's directory)."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def socket_path(path: Path | str | None = None) -> Path:
    """Only the control socket's path, for client commands: they must work even while the
    folder files are being edited and do not validate."""
    source = (Path(path) if path is not None else DEFAULT_CONFIG).absolute()
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    value = raw.get("socket") if isinstance(raw, dict) else None
    return resolve(source.parent, value) if isinstance(value, str) and value else DEFAULT_SOCKET

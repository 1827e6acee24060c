"""Human-friendly durations and sizes (``500ms``, ``2s``, ``1h``, ``64MiB``, ``20MiB/s``).

Config values and log lines both use these, so parsing and formatting live together.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``1.5``, ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 500ms, 2s, 5m or 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        if m and m.group(2) == "":
            return float(m.group(1))
    raise ValueError(f"expected a duration like 500ms, 2s, 5m or 1h, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"64MiB"``, ``"5MB"``; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 8MiB or 1GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"expected a size like 8MiB or 1GB, got {value!r}")


def parse_rate(value: object) -> int:
    """Bytes per second from ``"20MiB/s"`` or a plain size; raises ValueError."""
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"expected a rate like 20MiB/s, got {value!r}") from None


def format_size(n: float) -> str:
    """Short binary-unit rendering for status output."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Compact rendering such as ``3.2s``, ``4m05s`` or ``2h10m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"

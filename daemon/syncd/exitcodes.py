"""The command line's exit codes: one vocabulary for the CLI, the control socket's error
replies and the daemon. Imports nothing, so the light client commands stay light."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1          # a failed command; `wait`: not idle within --timeout
    FAILED_CHANGES = 2   # `wait`: idle, but some changes failed permanently
    NO_DAEMON = 3        # no daemon answered (within `wait`'s timeout)
    REJECTED = 4         # the daemon refused the request (e.g. unknown folder)
    HELD = 5             # `wait`: a folder is held by a guard until `syncd resume`
    PERMISSION = 13      # the socket's permissions or peer check refused us
    USAGE = 64           # EX_USAGE: bad command line
    CONFIG = 78          # EX_CONFIG: invalid configuration

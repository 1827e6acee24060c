"""The command line's exit codes: one vocabulary for the CLI, the control socket's error
replies and the daemon. Imports nothing, so the light client commands stay light."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1          # a failed command; `wait`: not idle within --timeout
    DIFFERENCES = 1      # `verify`: the bucket differs from the tree; `restore`: some files failed (listed)
    FAILED_CHANGES = 2   # `wait`: idle, but some changes failed permanently
    ERRORS = 2           # `verify`: some paths could not be compared (`!` lines)
    NO_DAEMON = 3        # no daemon answered (within `wait`'s timeout)
    REJECTED = 4         # the daemon refused the request (e.g. unknown folder)
    HELD = 5             # `wait`: a folder is held by a guard until `syncd resume`
    PERMISSION = 13      # the socket's permissions or peer check refused us
    INTERRUPTED = 130    # `restore`: Ctrl-C or SIGTERM (nothing partial left under a real name)
    USAGE = 64           # EX_USAGE: bad command line
    CONFIG = 78          # EX_CONFIG: invalid configuration

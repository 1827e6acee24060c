"""syncd: keep S3 prefixes an exact, live mirror of local folders."""

import time

__version__ = "0.1.0"

# When this interpreter first imported syncd (CLOCK_BOOTTIME): for `syncd wait`, a moment no
# earlier than the command was run (see Daemon._wait). Not /proc's starttime: that is the
# fork's, and a script's `exec syncd wait` can come long after it.
STARTED_AT = time.clock_gettime(time.CLOCK_BOOTTIME)

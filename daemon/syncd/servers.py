"""Stopping a socketserver server that sleeps until a request comes.

``serve_forever`` looks for a shutdown request every ``poll_interval``: the control socket's
0.2 s and the metrics endpoint's 0.5 s woke an idle daemon seven times a second for nothing
else (issue 21). They now wait for requests alone, and :func:`shut_down` wakes the loop with
a connection of its own once the request to stop is made.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable

SLEEP = 3600.0  # serve_forever's poll_interval: only a connection wakes the loop earlier


def serve(server: socketserver.BaseServer) -> None:
    server.serve_forever(poll_interval=SLEEP)


def shut_down(server: socketserver.BaseServer, connect: Callable[[], None]) -> None:
    """End :func:`serve` (running on another thread): ask it to stop, then ``connect`` to the
    server until its loop has noticed. A connection made before the request to stop is
    served as an empty request (closed without a word); the next one finds the loop ending."""
    stopper = threading.Thread(target=server.shutdown, name="server-stop", daemon=True)
    stopper.start()
    while stopper.is_alive():
        try:
            connect()
        except OSError:
            pass  # nothing listens any more: the loop has ended
        stopper.join(0.05)

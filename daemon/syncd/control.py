"""The control socket: a local Unix socket speaking one JSON object per line.

Server side: runs in its own threads and only reads counters and the journal through
read-only connections, so a slow or dead S3 endpoint never delays an answer. Client side:
what every ``syncd`` subcommand but ``run`` uses.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat as statmod
import struct
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from . import servers
from .exitcodes import ExitCode


def _log() -> Any:
    """The server's logger. Imported on first use: the client commands (`syncd status`,
    `syncd wait`) share this module and should not pay for importing structlog."""
    import structlog

    return structlog.get_logger("syncd.control")


MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """A request the daemon refused; ``code`` becomes the CLI's exit code."""

    def __init__(self, message: str, code: int = ExitCode.REJECTED):
        super().__init__(message)
        self.code = code


class Handler(Protocol):
    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]: ...


def peer_credentials(sock: socket.socket) -> tuple[int, int, set[int]]:
    """(pid, uid, groups) of the connecting process, from the kernel (SO_PEERCRED), never
    from the request. Groups are the primary gid plus supplementary groups from /proc."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except OSError:
        pass  # the peer already exited: its primary gid is all we know
    return pid, uid, groups


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = 30  # a peer that connects and sends nothing does not hold a thread for ever

    def handle(self) -> None:
        pid, uid, groups = peer_credentials(self.request)
        group = self.server.allowed_group
        try:
            # Read the request before any answer, even a refusal: closing with the client's
            # request unread could reset the connection before the client reads the reason.
            line = self.rfile.readline(MAX_REQUEST)
        except OSError:
            return
        if not line:
            return  # connected and closed without a request (the server's own knock: see servers)
        if uid not in self.server.allowed_uids and (group is None or group not in groups):
            _log().warning("control.refused", uid=uid, pid=pid)
            self._reply({"ok": False, "error": f"uid {uid} may not control this daemon", "code": ExitCode.PERMISSION})
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("expected an object with a 'cmd' string")
        except ValueError as exc:
            self._reply({"ok": False, "error": f"bad request: {exc}", "code": ExitCode.REJECTED})
            return
        try:
            reply = {"ok": True, **self.server.handler.handle_command(request)}
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc), "code": exc.code}
        except Exception as exc:
            _log().exception("control.failed", cmd=request.get("cmd"), error=str(exc))
            reply = {"ok": False, "error": f"internal error: {exc}", "code": ExitCode.FAILURE}
        self._reply(reply)

    def _reply(self, reply: dict[str, Any]) -> None:
        try:
            self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")
        except OSError:
            pass  # the client went away (e.g. ctrl-C during `syncd wait`)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, handler: Handler, allowed_uids: set[int], allowed_group: int | None):
        self.handler = handler
        self.allowed_uids = allowed_uids
        self.allowed_group = allowed_group
        super().__init__(path, _RequestHandler, bind_and_activate=False)


def _claim_socket_path(path: Path) -> None:
    """Make ``path`` free for our socket without ever removing something that is not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not statmod.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to remove it. "
                           "Remove it yourself or set 'socket' to another path", code=ExitCode.FAILURE)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        if st.st_uid != os.getuid():
            raise ControlError(f"{path} is a stale socket owned by uid {st.st_uid}; refusing to remove it",
                               code=ExitCode.FAILURE) from None
        os.unlink(path)  # stale socket of ours: the previous daemon died
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise ControlError(f"another syncd is already listening on {path}", code=ExitCode.FAILURE)


class ControlServer:
    """Serves requests on a Unix socket created 0600 (0660 with a ``group``)."""

    def __init__(self, path: Path, handler: Handler, group: int | None = None):
        self.path = path
        self.handler = handler
        self.group = group
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        _claim_socket_path(self.path)
        server = _Server(str(self.path), self.handler, {os.getuid(), 0}, self.group)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            server.server_bind()
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
            os.chmod(self.path, 0o660)
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=servers.serve, args=(server,), name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        servers.shut_down(self._server, self._knock)
        self._server.server_close()
        try:
            if statmod.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._server = None


    def _knock(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(self.path))


CONNECT_POLL = 0.1  # how often a client waiting for the daemon tries its socket again


class DaemonGone(ControlError):
    """The daemon closed the connection without answering: it died or is restarting."""

    def __init__(self, message: str):
        super().__init__(message, code=ExitCode.FAILURE)


def connect(path: Path, within: float = 0.0, io_timeout: float | None = 10.0) -> socket.socket:
    """A socket connected to the daemon. ``within``: keep trying this many seconds while no
    daemon listens (one still starting, or restarting after a crash left its socket file
    behind); then raise ControlError with code 3."""
    deadline = time.monotonic() + within
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(io_timeout)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" within {within:.0f}s" if within > 0 else ""
                raise ControlError(f"syncd is not running (no daemon listening on {path}{waited}); start it with "
                                   "'syncd run' or 'systemctl start syncd'", code=ExitCode.NO_DAEMON) from None
            time.sleep(min(CONNECT_POLL, left))
        except PermissionError:
            sock.close()
            raise ControlError(f"permission denied on {path}: run as the daemon's user or root",
                               code=ExitCode.PERMISSION) from None


def exchange(sock: socket.socket, cmd: str, **args: Any) -> dict[str, Any]:
    """Send one command on a connected socket (closed afterwards) and return the reply."""
    io_timeout = sock.gettimeout()
    try:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    except TimeoutError:
        raise ControlError(f"syncd did not answer within {io_timeout or 0:.0f}s", code=ExitCode.FAILURE) from None
    except (ConnectionResetError, BrokenPipeError):
        line = b""
    finally:
        sock.close()
    if not line:
        raise DaemonGone("syncd closed the connection without an answer")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")), code=int(reply.get("code", ExitCode.FAILURE)))
    return reply


def request(path: Path, cmd: str, io_timeout: float | None = 10.0, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon; raises ControlError (code 3 when no daemon runs)."""
    return exchange(connect(path, io_timeout=io_timeout), cmd, **args)

"""The control socket and the metrics endpoint sleep until a request comes (no poll while
idle, issue 21), and still stop at once."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

from syncd.control import ControlServer
from syncd.metrics import MetricsServer

STOP_WITHIN = 10.0  # generous; without the knock a stop would wait servers.SLEEP (an hour)


class _Echo:
    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"echo": request["cmd"]}


def _stopped_within(stop: Any) -> bool:
    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    thread.join(STOP_WITHIN)
    return not thread.is_alive()


def test_the_control_server_answers_and_then_stops_at_once(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "control.sock", _Echo())
    server.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(tmp_path / "control.sock"))
        sock.sendall(b'{"cmd": "ping"}\n')
        assert json.loads(sock.makefile().readline()) == {"ok": True, "echo": "ping"}
    assert _stopped_within(server.stop)
    assert not (tmp_path / "control.sock").exists()


def test_a_connection_closed_without_a_request_gets_no_answer(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "control.sock", _Echo())
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(tmp_path / "control.sock"))
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""
    finally:
        server.stop()


def test_the_metrics_server_stops_at_once(tmp_path: Path) -> None:
    server = MetricsServer(("127.0.0.1", 0), tmp_path / "syncd.yaml", list, threading.Event(), lambda: 0)
    server.start()
    assert server._server is not None
    port = server._server.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
    assert _stopped_within(server.stop)

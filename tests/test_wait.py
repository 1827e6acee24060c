"""`syncd wait` keeps its word (DESIGN.md, command table): it waits for a daemon that is
starting or restarting, and gives up with exit 3 only when none answered in time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from syncd import cli

from .support.daemon import assert_mirror


def _write(root: Path, n: int, tag: str) -> None:
    for i in range(n):
        (root / f"{tag}-{i:03}.txt").write_text(f"{tag} {i}")


def test_wait_started_with_the_daemon_waits_for_its_socket_and_returns_once_synced(syncd, tree, bucket, s3):
    _write(tree, 50, "before-start")
    syncd.add_folder("main", tree, bucket)
    syncd.start(wait_ready=False)  # `syncd run & syncd wait`: the socket is not up yet
    r = syncd.cli("wait", "--timeout", "60", timeout=90)
    assert r.returncode == 0, r.stderr
    assert assert_mirror(s3, bucket, tree) == 50


def test_wait_after_a_crash_waits_through_the_stale_socket_for_the_restarted_daemon(syncd, tree, bucket, s3):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    syncd.kill9()
    assert syncd.socket.is_socket()  # left behind: connecting to it is refused
    _write(tree, 20, "while-down")
    waiter = subprocess.Popen([sys.executable, "-m", "syncd", "wait", "--timeout", "60", "-c", str(syncd.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=syncd.env())
    time.sleep(1.0)  # systemd's RestartSec: the wait meets the stale socket before the new daemon
    syncd.start(wait_ready=False)
    _out, err = waiter.communicate(timeout=90)
    assert waiter.returncode == 0, err
    assert assert_mirror(s3, bucket, tree) == 20


def test_wait_without_a_daemon_exits_3_after_its_timeout(syncd):
    t0 = time.monotonic()
    r = syncd.cli("wait", "--timeout", "2")
    elapsed = time.monotonic() - t0
    assert r.returncode == 3 and "not running" in r.stderr and "within 2s" in r.stderr
    assert 2 <= elapsed < 10


def test_wait_without_timeout_waits_a_bounded_time_for_a_daemon(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "CONNECT_WAIT", 0.5)
    t0 = time.monotonic()
    assert cli.main(["wait", "--socket", str(tmp_path / "no-daemon.sock")]) == 3
    assert 0.5 <= time.monotonic() - t0 < 5
    assert "not running" in capsys.readouterr().err


def test_wait_finds_the_socket_named_in_the_config_without_loading_the_config_parser_or_logging(tmp_path):
    # `syncd wait` is started while `syncd run` starts and shares its CPU: it reads only the
    # socket's path: not the validating parser (its validators, every folder file), nor logging.
    config = tmp_path / "syncd.yaml"
    config.write_text("socket: sub/ctl.sock\nnot_a_key: the client does not validate\n")
    probe = ("import sys; from syncd import cli; code = cli.main(['wait', '-c', sys.argv[1], '--timeout', '0']); "
             "print(code, 'syncd.config' in sys.modules, 'syncd.validators' in sys.modules, 'logging' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["3", "False", "False", "False"], r.stderr
    assert str(tmp_path / "sub" / "ctl.sock") in r.stderr

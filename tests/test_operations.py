"""Operating syncd as a service: sd_notify, watchdog, control socket, journald logs, reload."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .support.daemon import Syncd, assert_mirror, await_condition

REPO = Path(__file__).resolve().parent.parent


class NotifyListener:
    """A stand-in for systemd's NOTIFY_SOCKET: records every datagram with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str = "") -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith(prefix)]

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_ready_after_watches_status_updates_reload_and_stopping(syncd, tree, bucket, s3, notify):
    syncd.add_folder("main", tree, bucket)
    syncd.start(wait_ready=False, NOTIFY_SOCKET=str(notify.path))
    await_condition(lambda: "READY=1" in notify.lines(), 30, "READY=1")
    (tree / "right-after-ready.txt").write_text("must be seen")  # watches must already be in place
    syncd.wait_idle()
    assert_mirror(s3, bucket, tree)
    idle_line = "1 folders, 0 pending, 0 in flight, 0 failed"
    await_condition(lambda: any(idle_line in s for s in notify.lines("STATUS=")), 10,
                    "a STATUS= line reporting the idle folder")

    assert syncd.cli("reload").returncode == 0
    seq = notify.lines()
    assert "RELOADING=1" in seq and seq.index("RELOADING=1") < len(seq) - 1 - seq[::-1].index("READY=1")
    assert syncd.stop() == 0
    assert "STOPPING=1" in notify.lines()


def test_watchdog_pings_stop_while_the_scheduler_is_wedged(syncd, tree, bucket, notify):
    syncd.add_folder("main", tree, bucket)
    syncd.start(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000")
    await_condition(lambda: len(notify.times("WATCHDOG=1")) >= 3, 15, "regular WATCHDOG=1 pings")
    # Wedge the scheduler for real: hold the journal's write lock so its loop blocks in SQLite.
    db = sqlite3.connect(syncd.state_dir / "folders" / "main.sqlite3", timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    (tree / "x.txt").write_text("the scheduler must try to write the journal")
    wedged_at = time.monotonic()
    try:
        await_condition(lambda: time.monotonic() - max(notify.times("WATCHDOG=1")) > 4, 30,
                        "WATCHDOG=1 pings to stop")
    finally:
        db.rollback()
        db.close()
    gap_start = max(notify.times("WATCHDOG=1"))
    assert gap_start >= wedged_at  # pings continued until the loop actually stalled
    await_condition(lambda: max(notify.times("WATCHDOG=1")) > gap_start, 30, "pings to resume")
    syncd.wait_idle()


def test_every_control_command_works(syncd, tree, bucket, s3):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert syncd.cli("pause", "main").stdout.strip() == "paused: main"
    assert syncd.folder_status("main")["state"] == "paused"
    (tree / "a.txt").write_text("a")
    assert syncd.cli("wait", "--timeout", "1").returncode == 1
    assert syncd.cli("resume").stdout.strip() == "resumed: main"
    assert syncd.cli("wait", "--timeout", "30").returncode == 0
    r = syncd.cli("reconcile", "main", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert syncd.folder_status("main")["last_scan"]["files"] == 1
    assert syncd.cli("retry").stdout.strip() == "requeued 0 change(s)"
    reply = json.loads(syncd.cli("status", "--json").stdout)
    assert reply["version"] == 1 and reply["folders"][0]["name"] == "main"
    assert syncd.cli("reload").returncode == 0
    assert_mirror(s3, bucket, tree)


@pytest.mark.parametrize("command", ["pause", "resume", "retry", "reconcile", "status", "wait"])
def test_unknown_folder_gives_exit_4_for_every_command(syncd, tree, bucket, command):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    r = syncd.cli(command, "nope")
    assert r.returncode == 4 and "no folder named 'nope'" in r.stderr


def test_retry_requeues_parked_changes(syncd, tree, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    too_long = tree.joinpath(*["d" * 200] * 6, "x.txt")   # > 1024-byte key: parked, never uploadable
    too_long.parent.mkdir(parents=True)
    too_long.write_text("x")
    assert syncd.cli("wait", "--timeout", "30").returncode == 2
    assert syncd.folder_status("main")["failed"] == 1
    assert syncd.cli("retry").stdout.strip() == "requeued 1 change(s)"
    assert syncd.cli("wait", "--timeout", "30").returncode == 2   # tried again, parked again
    assert syncd.folder_status("main")["failed"] == 1


def _open_path_to(home: Path) -> None:
    """Let uid 65534 reach files in ``home``, so that only the socket itself can stop it."""
    for p in [home, *home.parents]:
        if p == Path("/tmp") or p == p.parent:
            break
        p.chmod(0o755)


def _status_as_nobody(sock: Path) -> tuple[int, str]:
    """`syncd status` from a forked child running as uid/gid 65534 (needs root, which CI has).

    Forked rather than exec'd: the interpreter may live where that uid cannot read it."""
    from syncd.control import ControlError, request

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, ask, report through the pipe, leave
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                request(sock, "status")
                result = [0, "answered"]
            except ControlError as exc:
                result = [exc.code, str(exc)]
            except Exception as exc:
                result = [-1, repr(exc)]
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    code, message = json.loads(data)
    return code, message


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_user_cannot_use_the_socket(syncd, tree, bucket, tmp_path):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert stat.S_IMODE(os.stat(syncd.socket).st_mode) == 0o600
    _open_path_to(syncd.home)
    code, message = _status_as_nobody(syncd.socket)
    assert code == 13 and "permission denied" in message
    # Even with the file mode opened up, the daemon checks the peer's uid (SO_PEERCRED).
    os.chmod(syncd.socket, 0o666)
    code, message = _status_as_nobody(syncd.socket)
    assert code == 13 and "may not control" in message, message
    assert "control.refused" in syncd.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_socket_group_members_may_use_the_socket(syncd, tree, bucket):
    syncd.write_global(socket_group=65534)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    st = os.stat(syncd.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534
    _open_path_to(syncd.home)
    code, message = _status_as_nobody(syncd.socket)  # uid 65534, gid 65534: a group member
    assert code == 0, message


def test_a_stalled_endpoint_never_delays_the_control_socket(proxied_syncd, s3_proxy, tree, bucket):
    proxied_syncd.write_global(shutdown_timeout="3s")  # hung uploads are abandoned at stop
    proxied_syncd.add_folder("main", tree, bucket, request_timeout="30s")
    proxied_syncd.start()
    s3_proxy.stall_seconds = 60
    s3_proxy.set_faults(1.0, ["stall"], ops=["PutObject"])
    for i in range(40):
        (tree / f"f{i}.txt").write_text("x")
    await_condition(lambda: proxied_syncd.folder_status("main")["in_flight"] > 0, 30, "uploads hanging on S3")
    started = time.monotonic()
    for _ in range(5):
        assert proxied_syncd.cli("status").returncode == 0
        assert proxied_syncd.cli("wait", "--timeout", "0.1").returncode == 1
    assert (time.monotonic() - started) / 5 < 2.0  # each answer is immediate, not behind S3 timeouts
    s3_proxy.clear_faults()


def test_a_put_the_server_never_answers_is_given_up_after_request_timeout_and_sent_again(
        proxied_syncd, s3_proxy, tree, s3, bucket):
    proxied_syncd.add_folder("main", tree, bucket, request_timeout="2s")
    proxied_syncd.start()
    s3_proxy.stall_seconds = 300  # far beyond the test's waits: only giving up can end it
    s3_proxy.set_faults(1.0, ["stall"], ops=["PutObject"])
    (tree / "small.txt").write_text("hello")
    await_condition(lambda: s3_proxy.injected().get("PutObject", {}).get("stall", 0) >= 1, 30,
                    "a swallowed PutObject")
    s3_proxy.clear_faults()
    proxied_syncd.wait_idle(30)
    assert_mirror(s3, bucket, tree)
    assert "RequestTimeout" in proxied_syncd.log()


def test_journald_priorities_and_no_secret_in_s3_error_lines(syncd, tree, tmp_path, s3_server):
    syncd.add_folder("main", tree, "no-such-bucket-for-journald")
    syncd.write_global(log={"level": "info", "format": "auto"})
    log_file = tmp_path / "stderr.log"
    log_file.touch()
    st = os.stat(log_file)
    syncd.log_path = log_file
    env = syncd.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    with log_file.open("ab") as out:
        syncd.proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "-c", str(syncd.config)],
                                      stdout=out, stderr=out, env=env, start_new_session=True)
    # folder.error (error) first; the next failed probe logs folder.still_failing (warning)
    await_condition(lambda: "folder.still_failing" in log_file.read_text(), 30, "the repeated failure warning")
    syncd.stop()
    lines = log_file.read_text().splitlines()
    assert any(re.match(r"^<6>event=daemon\.ready ", line) for line in lines)
    assert any(re.match(r"^<3>event=folder\.error .*no-such-bucket-for-journald", line) for line in lines)
    assert any(re.match(r"^<4>event=folder\.still_failing ", line) for line in lines)
    assert all(re.match(r"^<[0-7]>event=", line) for line in lines), lines
    assert s3_server.secret_key not in log_file.read_text()


def test_reload_adds_and_removes_folders_and_rejects_a_bad_config(syncd, tmp_path, s3, bucket):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    syncd.add_folder("a", a, bucket, prefix="a/")
    syncd.start()
    (a / "one.txt").write_text("1")
    syncd.wait_idle()

    # add folder b
    syncd.add_folder("b", b, bucket, prefix="b/")
    (b / "two.txt").write_text("2")
    assert syncd.cli("reload").returncode == 0
    syncd.wait_idle()
    assert_mirror(s3, bucket, b, prefix="b/")

    # remove folder a: it stops syncing, its journal stays for later
    (syncd.home / "folders.d" / "a.yaml").unlink()
    os.kill(syncd.proc.pid, 1)  # SIGHUP does the same as `syncd reload`
    await_condition(lambda: [f["name"] for f in syncd.status()["folders"]] == ["b"], 30, "folder a to go away")
    assert (syncd.state_dir / "folders" / "a.sqlite3").exists()

    # an invalid file is rejected and everything keeps running as before
    (syncd.home / "folders.d" / "c.yaml").write_text("path: /nonexistent\nbukcet: x\n")
    r = syncd.cli("reload")
    assert r.returncode == 78 and "bukcet" in r.stderr and "still running the old one" in r.stderr
    (b / "three.txt").write_text("3")
    syncd.wait_idle()
    assert_mirror(s3, bucket, b, prefix="b/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs Debian's systemd package")
def test_user_unit_verifies(tmp_path):
    unit = tmp_path / "syncd.service"
    syncd_bin = Path(sys.executable).with_name("syncd")
    unit.write_text((REPO / "systemd" / "syncd-user.service").read_text().replace("%h/.local/bin/syncd",
                                                                                   str(syncd_bin)))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs Debian's systemd package")
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "syncd.service"
    syncd_bin = Path(sys.executable).with_name("syncd")
    text = (REPO / "systemd" / "syncd.service").read_text().replace("/usr/local/bin/syncd", str(syncd_bin))
    unit.write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for syncd.service: ([0-9.]+)", security.stdout)
    assert m, security.stdout[-2000:]
    assert float(m.group(1)) <= 2.5
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=", "StateDirectory=",
                      "RuntimeDirectory=", "ConfigurationDirectory=", "User=syncd", "ProtectHome=read-only"):
        assert directive in text


def test_second_sigterm_exits_at_once_and_nothing_is_lost(syncd, tree, bucket, s3):
    for i in range(400):
        (tree / f"f{i}.bin").write_bytes(os.urandom(20_000))
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert syncd.proc is not None
    syncd.proc.send_signal(15)
    syncd.proc.send_signal(15)
    assert syncd.proc.wait(10) in (0, 1)
    syncd.start()
    syncd.wait_idle(120)
    assert_mirror(s3, bucket, tree)


def test_daemon_refuses_to_start_while_another_owns_the_socket(syncd, tree, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    second = Syncd(syncd.home, syncd.endpoint, syncd.access_key, syncd.secret_key)
    r = second.cli("run", timeout=30)
    assert r.returncode == 1 and "already listening" in r.stderr
    assert syncd.cli("status").returncode == 0


def test_wait_asked_before_the_watches_exist_returns_with_the_startup_scans_findings_synced(syncd, tree, bucket, s3):
    """Such a wait skips the event grace (every earlier write is older than the startup scan);
    what was written before it must still be in the bucket when it returns."""
    from syncd.control import ControlError, request

    for i in range(30):
        (tree / f"written-before-{i}.txt").write_text(f"file {i}")
    syncd.add_folder("main", tree, bucket)
    asked_at = time.clock_gettime(time.CLOCK_BOOTTIME)  # the user runs `syncd wait` now...
    syncd.start(wait_ready=False)                        # ...as the daemon starts

    def ask() -> dict | None:
        try:
            return request(syncd.socket, "wait", io_timeout=60, timeout=30, asked_at=asked_at)
        except ControlError as exc:
            if exc.code == 3:
                return None  # not listening yet
            raise

    reply = await_condition(ask, 30, "the daemon to answer wait", interval=0.01)
    assert reply["idle"] is True
    assert assert_mirror(s3, bucket, tree) == 30


def test_wait_counts_the_event_grace_from_when_the_command_ran(syncd, tree, bucket):
    """The grace covers events of writes made before the command; a request that arrives
    after that window has passed does not wait it out again."""
    from syncd.control import request
    from syncd.service import EVENT_GRACE

    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle(60)

    def timed_wait(**asked: float) -> float:
        t0 = time.monotonic()
        reply = request(syncd.socket, "wait", io_timeout=60, timeout=30, **asked)
        assert reply["idle"] is True
        return time.monotonic() - t0

    assert timed_wait() >= EVENT_GRACE  # no time given: a whole grace from the arrival
    assert timed_wait(asked_at=time.clock_gettime(time.CLOCK_BOOTTIME)) >= EVENT_GRACE * 0.9
    assert timed_wait(asked_at=time.clock_gettime(time.CLOCK_BOOTTIME) - 5) < EVENT_GRACE

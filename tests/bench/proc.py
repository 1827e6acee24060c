"""Running external commands for the benchmark: timed, bounded, and never left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timed:
    """One finished command: wall-clock seconds from launch to exit, exit code and output."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def problem(self) -> str:
        """A one-line reason for a failure, for the report."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        return f"exit {self.returncode}: {' | '.join(tail)[:300]}"


def run_timed(
    cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Timed:
    """Run ``cmd`` to completion and time it, process launch included.

    The command gets its own process group, so a timeout or a Ctrl-C of the harness kills
    everything it spawned (aws runs worker threads, s5cmd's wrapper spawns the Go binary).
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return Timed(time.monotonic() - started, -9, out, err, timed_out=True)
    except BaseException:
        kill_group(proc)
        proc.communicate()
        raise
    return Timed(time.monotonic() - started, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` while it is unreaped (so the pgid is still ours)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

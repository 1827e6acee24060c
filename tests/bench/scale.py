"""The `scale` scenario: a million tiny files (`--quick`: 20,000), stalled and synced.

1. **Stalled**: the tree behind an endpoint that refuses connections (a closed loopback
   port): the time until every file is journaled, the daemon's peak RSS, then its CPU over a
   quiet window while it waits for the endpoint.
2. **First sync** of the tree by syncd into its own bucket.
3. **Synced**: syncd restarted over the synced tree, timed until `syncd wait` exits 0 (the
   no-change restart), then, once the startup passes are over, its CPU over a quiet window
   and its peak RSS.
4. **First sync** by the peers that can do it at that size (rclone, s5cmd), each into its
   own bucket: last, as they take the longest.

The tree is made by ``workers tree`` (raw os.open/os.write, about a minute per million
files); its layout is computed, not walked, so the bucket can be verified.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .core import REPO, SYNCD, Bench, Dataset, Sample, SyncdRunner, quiet_window, scenario

MiB = 1024 * 1024
IDLE_CPU_TARGET = 0.5      # % of one CPU
RSS_TARGET_MIB = 150.0
RESTART_TARGET_S = 3.0     # no-change restart of a million files to `syncd wait`
PEERS = ("rclone", "s5cmd")  # aws s3 sync takes hours at this size


def tree_layout(root: Path, files: int, dirs: int) -> Dataset:
    """What ``workers tree ROOT files dirs`` writes (see workers.make_tree)."""
    return Dataset(root, {f"d{i % dirs:05d}/f{i:07d}": len(b"syncd-scale %d\n" % i) * (1 + i % 3)
                          for i in range(files)})


def make_tree(root: Path, files: int, dirs: int) -> Dataset:
    subprocess.run([sys.executable, "-m", "tests.bench.workers", "tree", str(root), str(files), str(dirs)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return tree_layout(root, files, dirs)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _await(runner: SyncdRunner, done: Callable[[dict[str, object]], bool], timeout: float) -> bool:
    """Poll the daemon's status (the control request `syncd status` sends) until ``done``."""
    from syncd.control import ControlError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if done(runner.control("status")["folders"][0]):
                return True
        except (ControlError, OSError, KeyError, IndexError):
            pass  # not listening yet, or no folder started yet
        time.sleep(0.5)
    return False


@scenario("scale", "a million tiny files: stalled behind a dead endpoint, first sync vs peers, synced and idle")
def scale(bench: Bench) -> None:
    files = bench.size(1_000_000, 20_000)
    dirs = max(1, files // 100)
    window = float(bench.size(60, 20))
    ds = make_tree(bench.scratch("scale-data"), files, dirs)
    label = f"{files:,} files in {dirs:,} dirs"
    sample = partial(Sample, "scale", tool=SYNCD)
    for rep in range(bench.reps):
        _stalled(bench, ds, label, window, rep, sample)
    bucket = bench.new_bucket("scale-syncd")
    runner = bench.syncd_runner(ds.root, bucket)
    first = bench.measure("scale", f"first sync ({label})", 0, runner, ds, bucket)
    # syncd's synced figures (the goals) come before the peers' first syncs, which take the
    # longest at this size: a run cut short still has them.
    if first.ok:
        for rep in range(bench.reps):
            _synced(bench, runner, label, window, rep, sample, len(ds.files))
    for tool in PEERS:
        if tool in bench.peers:
            peer_bucket = bench.new_bucket(f"scale-{tool}")
            bench.measure("scale", f"first sync ({label})", 0, bench.runner(tool, ds.root, peer_bucket), ds,
                          peer_bucket)


def _stalled(bench: Bench, ds: Dataset, label: str, window: float, rep: int, sample: Callable[..., Sample]) -> None:
    files = len(ds.files)
    runner = bench.syncd_runner(ds.root, f"scale-dead-{rep}", endpoint=f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    runner.daemon.start(wait_ready=False)
    peak = 0
    # last_scan is set once what the startup scan found is in the journal; "stalled" once a
    # probe of the store has failed (the client is built).
    journaled = _await(runner, lambda f: f["last_scan"] is not None and f["pending"] == files
                       and f["state"] == "stalled",
                       bench.timeout_for(files))
    seconds = time.monotonic() - started
    what = f"stalled, {label} pending behind a closed port"
    if not journaled:
        runner.stop()
        bench.add(sample(metric=f"journaled, {what}", unit="s", rep=rep, value=None, ok=False,
                         detail="not every file was journaled in time"))
        return
    peak = runner.rss() or 0
    assert runner.pid is not None
    cpu, window_peak, _ = quiet_window(runner.pid, window)
    problem = runner.stop()
    ok, detail = problem is None, problem or ""
    bench.add(sample(metric=f"journaled, {what}", unit="s", rep=rep, value=seconds, ok=ok, detail=detail))
    bench.add(sample(metric=f"CPU, {what}, {window:.0f} s", unit="% CPU", rep=rep, value=cpu, ok=ok,
                     detail=detail, target=IDLE_CPU_TARGET))
    bench.add(sample(metric=f"RSS, {what}", unit="MiB", rep=rep, value=max(peak, window_peak) / MiB, ok=ok,
                     detail=detail, target=RSS_TARGET_MIB))


def _synced(bench: Bench, runner: SyncdRunner, label: str, window: float, rep: int,
            sample: Callable[..., Sample], files: int) -> None:
    started = runner.start(timeout=bench.timeout_for(files))
    if started.error is not None or runner.pid is None:
        runner.stop()
        bench.add(sample(metric=f"no-change restart -> syncd wait ({label})", unit="s", rep=rep, value=None,
                         ok=False, detail=started.error or "no daemon"))
        return
    bench.add(sample(metric=f"no-change restart -> syncd wait ({label})", unit="s", rep=rep,
                     value=started.seconds, ok=True, extra=dict(started.info), target=RESTART_TARGET_S))
    # The startup's remote pass (the bucket's listing) runs after `wait` returned: the quiet
    # window starts once it is over.
    _await(runner, lambda f: f["state"] == "watching" and f["last_reconcile"] is not None, bench.timeout_for(files))
    cpu, peak, _ = quiet_window(runner.pid, window)
    problem = runner.stop()
    ok, detail = problem is None, problem or ""
    what = f"watching {label}, synced, {window:.0f} s"
    bench.add(sample(metric=f"CPU, {what}", unit="% CPU", rep=rep, value=cpu, ok=ok, detail=detail,
                     target=IDLE_CPU_TARGET))
    bench.add(sample(metric=f"RSS, {what}", unit="MiB", rep=rep, value=peak / MiB, ok=ok, detail=detail,
                     target=RSS_TARGET_MIB))

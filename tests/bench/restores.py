"""Restore scenarios (issue 19): the bucket back into an empty directory, syncd restore
against `rclone copy` and `s5cmd cp`; each run's result is checked file by file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .core import SYNCD, Bench, Dataset, Sample, make_dataset, scenario
from .peers import Target, aws_env
from .proc import kill_group
from .scenarios import RSS_TARGET_MIB, GiB, KiB, MiB, make_large_file

RESTORE_PEERS = ("rclone", "s5cmd")


def restore_command(tool: str, bench: Bench, target: Target, dest: Path) -> tuple[list[str], dict[str, str]]:
    """The command restoring ``target``'s prefix into ``dest`` with ``tool`` (a row label:
    syncd at its defaults or at the shared concurrency, a peer at that concurrency or at one
    of its best settings), and its environment."""
    c = str(target.concurrency)
    if tool in (SYNCD, bench.syncd_equal):
        workers = ["--workers", c] if tool == bench.syncd_equal else []
        return ([sys.executable, "-m", "syncd", "restore", f"s3://{target.bucket}/{target.prefix}", "--to", str(dest),
                 "--endpoint-url", target.endpoint, "--region", "us-east-1", *workers], aws_env(target))
    best = bench.best.get(tool)
    name = best.peer if best is not None else tool
    peer = bench.peers[name]
    level = c if best is None else best.level  # None: the peer's own default
    if name == "rclone":
        # rclone's docs for many small files: more transfers; --fast-list only saves requests
        tuning = ["--transfers", str(level), "--checkers", str(level), *(["--fast-list"] if best is None else [])]
        return ([peer.exe, "--config", os.devnull, "copy", f"bench:{target.bucket}/{target.prefix}", str(dest),
                 *tuning, "--s3-no-check-bucket"], peer.env(target))
    workers = [] if level is None else ["--numworkers", str(level)]
    return ([peer.exe, "--endpoint-url", target.endpoint, *workers, "--log", "error", "cp",
             f"s3://{target.bucket}/{target.prefix}*", f"{dest}/"], peer.env(target))


def restore_tools(bench: Bench, peers: Sequence[str]) -> list[str]:
    """The speed rows (:attr:`Bench.contenders`) of syncd and of ``peers``."""
    def peer_of(row: str) -> str:
        best = bench.best.get(row)
        return best.peer if best is not None else row

    return [row for row in bench.contenders if row in (SYNCD, bench.syncd_equal) or peer_of(row) in peers]


def timed_with_rss(cmd: Sequence[str], env: dict[str, str], timeout: float) -> tuple[float, str | None, float]:
    """(seconds, problem or None, peak RSS MiB of the process) of one run, launch included."""
    import psutil

    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        try:
            p = psutil.Process(proc.pid)
            while not done.wait(0.05):
                peak[0] = max(peak[0], p.memory_info().rss)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        return time.monotonic() - started, f"timed out after {timeout:.0f}s", peak[0] / MiB
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    problem = None if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[-300:]}"
    return seconds, problem, peak[0] / MiB


def check_restored(dest: Path, dataset: Dataset) -> str | None:
    """None if ``dest`` holds exactly the dataset's files with their bytes."""
    # The peers copy syncd's bookkeeping keys (the owner marker) too: not part of the tree.
    found = {rel for p in dest.rglob("*") if p.is_file()
             if not (rel := p.relative_to(dest).as_posix()).startswith((".syncd/", ".syncd-trash/"))}
    if found != set(dataset.files):
        expected = set(dataset.files)
        return f"restored tree differs: {len(expected - found)} missing, {len(found - expected)} extra"
    for rel in dataset.files:
        if (dest / rel).read_bytes() != (dataset.root / rel).read_bytes():
            return f"content of {rel} differs"
    return None


def _seed(bench: Bench, ds: Dataset, label: str) -> str:
    """A bucket holding ``ds`` as syncd mirrors it (so objects carry syncd's metadata)."""
    bucket = bench.new_bucket(label)
    result = bench.syncd_runner(ds.root, bucket).run(bench.timeout_for(len(ds.files)))
    if result.error is not None:
        raise RuntimeError(f"seeding {bucket} failed: {result.error}")
    return bucket


def _restores(bench: Bench, name: str, metric: str, ds: Dataset, bucket: str, tools: list[str]) -> None:
    """Every tool's restores of ``bucket``, rotating the order.

    A tree of many files is removed only after the last run, not between runs: on ext4
    without a journal (this bench machine's root filesystem), allocating an inode skips,
    one by one, every inode freed in the last 30 seconds (``recently_deleted`` in
    fs/ext4/ialloc.c), so a restore of 5,000 files started right after 5,000 files were
    deleted paid for that scan in kernel CPU, depending on whether its directories landed
    in the block groups just freed (the scenario's first run followed no such deletion)."""
    target = bench.target(bucket)
    leftovers: list[Path] = []
    try:
        for rep in range(bench.reps):
            for tool in bench.order(rep, tools):
                dest = bench.scratch(f"{name}-{tool}-{rep}")
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir(parents=True)
                cmd, env = restore_command(tool, bench, target, dest)
                os.sync()
                seconds, problem, rss = timed_with_rss(cmd, env, bench.timeout_for(len(ds.files)))
                problem = problem or check_restored(dest, ds)
                sample = bench.add(Sample(name, metric, "s", tool, rep, seconds, problem is None, problem or "",
                                          {"peak RSS MiB": rss, "MB/s": ds.total_bytes / 1e6 / seconds}))
                if tool == SYNCD and sample.ok and rss > RSS_TARGET_MIB:
                    sample.detail = f"peak RSS {rss:.0f} MiB over the {RSS_TARGET_MIB:.0f} MiB goal"
                if len(ds.files) > 1:
                    leftovers.append(dest)
                else:
                    shutil.rmtree(dest, ignore_errors=True)  # one large file: no inodes to skip, and space back
    finally:
        for dest in leftovers:
            shutil.rmtree(dest, ignore_errors=True)


@scenario("restore", "restore into an empty directory: 5,000 files of 1–64 KiB (syncd at its defaults; rclone copy "
                     "and s5cmd cp at the shared concurrency and at their best settings) and one 1 GiB file "
                     "(syncd, s5cmd cp)")
def restore(bench: Bench) -> None:
    files = bench.size(5_000, 1_000)
    ds = make_dataset(bench.scratch("restore-data"), files=files, dirs=max(1, files // 50), min_size=1 * KiB,
                      max_size=64 * KiB, seed=19)
    tools = restore_tools(bench, RESTORE_PEERS)
    _restores(bench, "restore", f"time to restored ({files:,} files, {ds.total_bytes / MiB:.0f} MiB)", ds,
              _seed(bench, ds, "restore-small"), tools)
    size = bench.size(GiB, 256 * MiB)
    big = make_large_file(bench.scratch("restore-large-data"), size)
    tools = restore_tools(bench, ("s5cmd",))
    _restores(bench, "restore", f"time to restored (one {size / GiB:g} GiB file)", big,
              _seed(bench, big, "restore-large"), tools)

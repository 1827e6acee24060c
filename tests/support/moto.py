"""A real STS endpoint for role-assumption tests: moto's server mode (``moto_server``) on a free
loopback port, with IAM checks on, so AssumeRole is signed, checked and can be denied.

Set up before the checks are switched on: one IAM user (the daemon's source credentials) whose
policy allows ``sts:AssumeRole`` on :data:`ALLOWED_ROLE` only. Any other role is AccessDenied.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from .seaweed import _die_with_parent

ACCOUNT = "123456789012"   # moto's default account
ALLOWED_ROLE = f"arn:aws:iam::{ACCOUNT}:role/Uploader"
DENIED_ROLE = f"arn:aws:iam::{ACCOUNT}:role/SomeoneElses"
USER = "syncd-source"


@dataclass
class MotoSTS:
    endpoint: str
    access_key: str          # the IAM user's: the daemon's source credentials
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def assumed_keys(self, role_arn: str = ALLOWED_ROLE) -> set[str]:
        """Access key ids moto issued so far for ``role_arn`` (from moto's model data)."""
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return {r["access_key_id"] for r in data.get("sts", {}).get("AssumedRole", []) if r["role_arn"] == role_arn}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_server() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else "moto_server"


def start_moto(workdir: Path, timeout: float = 60) -> MotoSTS:
    """Start ``moto_server``, create the source user and its policy, then enforce IAM."""
    port = _free_port()
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([_moto_server(), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent())  # no orphan if the test run dies
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(endpoint, process, log_path, timeout)
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1",
                                             aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="assume-uploader", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ALLOWED_ROLE}]}))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        # From now on every request is authenticated and authorised against IAM.
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()
    except BaseException:
        process.kill()
        process.wait()
        raise
    return MotoSTS(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process, log_path)


def _wait_ready(endpoint: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)  # no readiness notification to wait on
    raise TimeoutError(f"moto_server not ready at {endpoint}:\n{log_path.read_text(errors='replace')}")

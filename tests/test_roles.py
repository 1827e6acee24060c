"""Role assumption: S3 requests are signed with credentials from STS AssumeRole (moto's server
mode as the STS, IAM checks on), refreshed before they expire, and a role that cannot be
assumed is a folder error naming it while other folders keep syncing.

SeaweedFS here runs without identities (it accepts any key): which key signed each request is
read at the proxy, from the Authorization header, and checked against the keys moto issued.
"""

from __future__ import annotations

import hashlib
import os
import queue
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from syncd.bandwidth import Payload
from syncd.config import FolderConfig
from syncd.s3store import S3Store
from syncd.store import FOLDER, TRANSIENT, UNREACHABLE, PutResult, StoreError, object_meta

from .support.daemon import Syncd, assert_mirror, await_condition
from .support.moto import ALLOWED_ROLE, DENIED_ROLE, MotoSTS
from .support.s3proxy import S3Proxy
from .support.seaweed import SeaweedServer, pick_free_ports

MiB = 1024 * 1024
_buckets = iter(range(1, 10_000))


@pytest.fixture
def open_proxy(open_s3_server: SeaweedServer) -> Iterator[S3Proxy]:
    with S3Proxy(open_s3_server.endpoint) as proxy:
        yield proxy


@pytest.fixture
def open_bucket(open_s3_server: SeaweedServer) -> str:
    name = f"roles-{next(_buckets):04d}"
    open_s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def role_syncd(tmp_path: Path, open_proxy: S3Proxy, sts_server: MotoSTS,
               request: pytest.FixtureRequest) -> Iterator[Syncd]:
    """A daemon whose source credentials are the moto IAM user's, talking to S3 via the proxy."""
    daemon = Syncd(tmp_path / "syncd", open_proxy.endpoint, sts_server.access_key, sts_server.secret_key)
    yield daemon
    failed = getattr(request.node, "rep_call", None)
    daemon.stop()
    if failed is not None and failed.failed:
        print(f"--- syncd log ({daemon.log_path}) ---\n{daemon.log()[-8000:]}")


def test_requests_to_s3_are_signed_with_the_assumed_role_key(role_syncd: Syncd, open_proxy, sts_server, tree,
                                                             open_s3_server, open_bucket):
    (tree / "small.txt").write_bytes(os.urandom(1000))
    (tree / "large.bin").write_bytes(os.urandom(6 * MiB))
    role_syncd.add_folder("main", tree, open_bucket, role_arn=ALLOWED_ROLE, role_duration="15m",
                          multipart_threshold="5MiB", part_size="5MiB")
    # The standard variable, not sts_endpoint_url: botocore's own endpoint resolution finds moto.
    role_syncd.start(AWS_ENDPOINT_URL_STS=sts_server.endpoint)
    role_syncd.wait_idle(120)
    assert_mirror(open_s3_server.client(), open_bucket, tree)

    used = open_proxy.access_keys()
    assert used and sts_server.access_key not in used and "" not in used
    assert set(used) <= sts_server.assumed_keys(ALLOWED_ROLE)
    # A 15-minute session is not refreshed before every request (botocore's default windows would).
    assert len(used) == 1, used


def test_a_denied_role_is_a_folder_error_naming_the_role_while_others_sync(role_syncd: Syncd, sts_server, tmp_path,
                                                                           open_s3_server, open_bucket):
    denied, allowed = tmp_path / "denied", tmp_path / "allowed"
    denied.mkdir()
    allowed.mkdir()
    (denied / "a.txt").write_text("a")
    (allowed / "b.txt").write_text("b")
    file = role_syncd.add_folder("denied", denied, open_bucket, prefix="denied/", role_arn=DENIED_ROLE,
                                 sts_endpoint_url=sts_server.endpoint)
    role_syncd.add_folder("allowed", allowed, open_bucket, prefix="allowed/", role_arn=ALLOWED_ROLE,
                          sts_endpoint_url=sts_server.endpoint)
    role_syncd.start()

    status = await_condition(lambda: (s := role_syncd.folder_status("denied"))["state"] == "error" and s, 60,
                             "the denied folder to be in error")
    assert DENIED_ROLE in status["last_error"] and "AccessDenied" in status["last_error"]
    assert str(file) in status["last_error"]  # where to fix it
    await_condition(lambda: role_syncd.folder_status("allowed")["objects"] == 1, 60, "the other folder to sync")
    assert_mirror(open_s3_server.client(), open_bucket, allowed, prefix="allowed/")


# ---------------------------------------------------------------------- the store itself

class FakeClock:
    """The time the credentials are judged by: real time plus a jump the test sets."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@pytest.fixture
def source_credentials(monkeypatch: pytest.MonkeyPatch, sts_server: MotoSTS) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sts_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sts_server.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def role_folder(tree: Path, bucket: str, endpoint: str, sts: str, **settings: Any) -> FolderConfig:
    return FolderConfig(name="roles", source=tree / "roles.yaml", path=tree, bucket=bucket, endpoint_url=endpoint,
                        region="us-east-1", role_arn=ALLOWED_ROLE, role_duration=900, sts_endpoint_url=sts, **settings)


def put(store: S3Store, key: str, data: bytes) -> PutResult:
    answers: queue.Queue[PutResult | StoreError] = queue.Queue()
    digest = hashlib.sha256(data)
    store.put(key, Payload(data), object_meta(0, "test-owner", digest.hexdigest()), digest.digest(), answers.put)
    answer = answers.get(timeout=30)
    if isinstance(answer, StoreError):
        raise answer
    return answer


def last_key(proxy: S3Proxy) -> str:
    return proxy.requests()[-1].access_key


@pytest.mark.usefixtures("source_credentials")
def test_credentials_are_refreshed_before_they_expire(open_proxy, sts_server, tree, open_bucket):
    # A 15-minute session: refreshed from 5 minutes before its end (advisory: other requests
    # carry on with the old keys), and every request waits for new keys from 2.5 minutes before.
    clock = FakeClock()
    store = S3Store(role_folder(tree, open_bucket, open_proxy.endpoint, sts_server.endpoint), clock=clock)
    try:
        put(store, "one", b"1")                     # the CRT's PutObject
        first = last_key(open_proxy)
        store.head("one")                           # boto3: the same credentials, no STS call
        assert last_key(open_proxy) == first

        clock.ahead = timedelta(seconds=601)        # inside the advisory window
        put(store, "two", b"2")
        second = last_key(open_proxy)
        assert second != first

        clock.ahead = timedelta(0)                  # fresh credentials are kept
        assert store.head("two") is not None
        assert last_key(open_proxy) == second

        clock.ahead = timedelta(seconds=751)        # inside the mandatory window
        put(store, "three", b"3")
        third = last_key(open_proxy)
        assert third not in (first, second)
        assert {first, second, third} <= sts_server.assumed_keys(ALLOWED_ROLE)
        assert sts_server.access_key not in open_proxy.access_keys()
    finally:
        store.close()


@pytest.mark.usefixtures("source_credentials")
def test_an_sts_outage_when_credentials_run_out_is_transient_and_recovers(open_proxy, sts_server, tree, open_bucket):
    clock = FakeClock()
    with S3Proxy(sts_server.endpoint) as sts_proxy:
        store = S3Store(role_folder(tree, open_bucket, open_proxy.endpoint, sts_proxy.endpoint), clock=clock)
        try:
            put(store, "before", b"1")
            first = last_key(open_proxy)
            sts_proxy.refuse()
            clock.ahead = timedelta(seconds=751)    # the keys must be replaced now, and STS is away
            with pytest.raises(StoreError) as outage:
                put(store, "during", b"2")
            assert outage.value.scope == TRANSIENT and outage.value.code == UNREACHABLE
            assert ALLOWED_ROLE in str(outage.value)
            sts_proxy.refuse(False)
            put(store, "after", b"3")               # no restart needed
            assert last_key(open_proxy) != first
        finally:
            store.close()


@pytest.mark.usefixtures("source_credentials")
def test_a_denied_role_is_a_folder_scope_error_naming_the_role(open_proxy, sts_server, tree, open_bucket):
    folder = role_folder(tree, open_bucket, open_proxy.endpoint, sts_server.endpoint)
    with pytest.raises(StoreError) as denied:
        S3Store(FolderConfig(**{**folder.__dict__, "role_arn": DENIED_ROLE}))
    assert denied.value.scope == FOLDER
    assert DENIED_ROLE in str(denied.value) and "sts:AssumeRole" in str(denied.value)
    assert open_proxy.requests() == []  # nothing reached S3


@pytest.mark.usefixtures("source_credentials")
def test_an_unreachable_sts_is_transient_naming_the_role(open_proxy, tree, open_bucket):
    closed = f"http://127.0.0.1:{pick_free_ports(1)[0]}"  # nothing listens there
    with pytest.raises(StoreError) as unreachable:
        S3Store(role_folder(tree, open_bucket, open_proxy.endpoint, closed))
    assert unreachable.value.scope == TRANSIENT and unreachable.value.code == UNREACHABLE
    assert ALLOWED_ROLE in str(unreachable.value) and "STS endpoint unreachable" in str(unreachable.value)


# ---------------------------------------------------------------------- config

def test_role_settings_are_validated(syncd: Syncd, tree, bucket):
    file = syncd.add_folder("main", tree, bucket, role_arn="Uploader", role_duration="10m",
                            role_session_name="x", role_external_id="a b")
    r = syncd.cli("check-config")
    out = r.stderr + r.stdout
    assert r.returncode == 78
    assert f"{file}: key 'role_arn'" in out and "arn:aws:iam::123456789012:role/Uploader" in out
    assert f"{file}: key 'role_duration'" in out and "15m to 12h" in out
    assert f"{file}: key 'role_session_name'" in out
    assert f"{file}: key 'role_external_id'" in out

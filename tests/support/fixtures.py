"""pytest fixtures for running syncd itself (registered from conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon import Syncd
from .moto import MotoSTS, start_moto
from .seaweed import SeaweedServer, start_seaweed

STORES = ["s3", "azure"]
# A test of the main scenarios runs against both stores with @both_stores: then ``bucket`` is a
# container, ``s3`` answers the test's few boto3 calls from it, ``syncd`` writes `store: azure`
# and ``s3_proxy`` names Blob requests as the S3 requests syncd makes them for (conftest.py).
both_stores = pytest.mark.parametrize("backend", STORES, indirect=True)


def _daemon(home: Path, endpoint: str, server: Any, request: pytest.FixtureRequest) -> Iterator[Syncd]:
    if request.getfixturevalue("backend") == "azure":
        daemon = Syncd(home, endpoint, "", "", store="azure", extra_env=server.env())
    else:
        daemon = Syncd(home, endpoint, server.access_key, server.secret_key)
    yield daemon
    failed = getattr(request.node, "rep_call", None)
    daemon.stop()
    if failed is not None and failed.failed:
        print(f"--- syncd log ({daemon.log_path}) ---\n{daemon.log()[-8000:]}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The local folder to mirror."""
    root = tmp_path / "tree"
    root.mkdir()
    return root


def _server(backend: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("azure_server" if backend == "azure" else "s3_server")


@pytest.fixture
def syncd(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Syncd]:
    """A daemon talking straight to SeaweedFS, or Azurite (started by the test)."""
    server = _server(backend, request)
    yield from _daemon(tmp_path / "syncd", server.endpoint, server, request)


@pytest.fixture
def proxied_syncd(tmp_path: Path, backend: str, s3_proxy: Any, request: pytest.FixtureRequest) -> Iterator[Syncd]:
    """A daemon whose store traffic goes through the counting/fault proxy."""
    server = _server(backend, request)
    endpoint = f"{s3_proxy.endpoint}/{server.account}" if backend == "azure" else s3_proxy.endpoint
    yield from _daemon(tmp_path / "syncd", endpoint, server, request)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report so fixtures can print the daemon log on failure."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def sts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoSTS]:
    """moto's server mode as a real STS endpoint (IAM checks on), once per session."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def open_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A second SeaweedFS without identities: it accepts keys issued by STS, which the session's
    server (with its fixed identities) would reject. Tests check the keys at the proxy."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed-open"), open_access=True)
    try:
        yield server
    finally:
        server.stop(grace=1.0)

"""pytest fixtures for running syncd itself (registered from conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon import Syncd
from .moto import MotoSTS, start_moto
from .seaweed import SeaweedServer, start_seaweed


def _daemon(home: Path, endpoint: str, server: Any, request: pytest.FixtureRequest) -> Iterator[Syncd]:
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


@pytest.fixture
def syncd(tmp_path: Path, s3_server: Any, request: pytest.FixtureRequest) -> Iterator[Syncd]:
    """A daemon talking straight to SeaweedFS (started by the test)."""
    yield from _daemon(tmp_path / "syncd", s3_server.endpoint, s3_server, request)


@pytest.fixture
def proxied_syncd(tmp_path: Path, s3_server: Any, s3_proxy: Any, request: pytest.FixtureRequest) -> Iterator[Syncd]:
    """A daemon whose S3 traffic goes through the counting/fault proxy."""
    yield from _daemon(tmp_path / "syncd", s3_proxy.endpoint, s3_server, request)


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

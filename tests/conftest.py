"""Shared fixtures: one SeaweedFS S3 server per test session, clients, buckets and the proxy."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.azurite import AzuriteServer, start_azurite
from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import SeaweedServer, start_seaweed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# syncd's own fixtures (daemon, tree, ...) live in their own module.
pytest_plugins = ["tests.support.fixtures"]

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server for the whole session; each test isolates itself with its own bucket."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop(grace=1.0)  # the data dir is thrown away: no need to wait for a clean exit


@pytest.fixture
def s3(s3_server: SeaweedServer) -> S3Client:
    return s3_server.client()


@pytest.fixture
def bucket(s3: S3Client) -> str:
    """A fresh, empty bucket; never cleaned up (the server's data dir is thrown away)."""
    name = f"bucket-{next(_bucket_numbers):04d}"  # the server is per session, so a counter is unique
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_proxy(s3_server: SeaweedServer) -> Iterator[S3Proxy]:
    with S3Proxy(s3_server.endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """A real Azure Blob endpoint (Azurite) for the whole session; tests isolate by container."""
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop(grace=1.0)


@pytest.fixture
def container(azure_server: AzuriteServer) -> str:
    """A fresh, empty container; never cleaned up (the server's workspace is thrown away)."""
    name = f"container-{next(_bucket_numbers):04d}"
    azure_server.create_container(name)
    return name

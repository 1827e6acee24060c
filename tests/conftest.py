"""Shared fixtures: one SeaweedFS S3 server per test session, clients, buckets and the proxy."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.azurite import AzuriteServer, BlobClient, classify_as_s3, start_azurite
from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import SeaweedServer, start_seaweed

if TYPE_CHECKING:
    pass

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
def backend(request: pytest.FixtureRequest) -> str:
    """The store the test's daemon mirrors into: "s3" unless the test is @both_stores
    (tests/support/fixtures.py)."""
    return str(getattr(request, "param", "s3"))


@pytest.fixture
def s3(backend: str, request: pytest.FixtureRequest) -> Any:
    if backend == "azure":
        return BlobClient(request.getfixturevalue("azure_server"))
    return request.getfixturevalue("s3_server").client()


@pytest.fixture
def bucket(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket (or container); never cleaned up (the server's data is thrown away)."""
    name = f"bucket-{next(_bucket_numbers):04d}"  # the server is per session, so a counter is unique
    if backend == "azure":
        request.getfixturevalue("azure_server").create_container(name)
    else:
        request.getfixturevalue("s3_server").client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_proxy(backend: str, request: pytest.FixtureRequest) -> Iterator[S3Proxy]:
    if backend == "azure":
        server = request.getfixturevalue("azure_server")
        with S3Proxy(server.endpoint.rsplit("/", 1)[0], classifier=classify_as_s3) as proxy:
            yield proxy
        return
    with S3Proxy(request.getfixturevalue("s3_server").endpoint) as proxy:
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

"""Start and stop a throwaway Azurite blob server (``azurite-blob``) for the Azure store's tests.

Azurite is Microsoft's Blob Storage emulator, from npm. scripts/venv.sh installs it into
build/node; a test run without it (pytest called directly on a fresh checkout) installs it the
same way on first use. It listens on a free loopback port with a fresh workspace directory and
knows one account, the emulator's well-known development account.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .seaweed import _die_with_parent, pick_free_ports

ROOT = Path(__file__).resolve().parents[2]
NODE_PREFIX = ROOT / "build" / "node"
AZURITE_PACKAGE = "azurite@3"
# The emulator's fixed development account (documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class AzuriteServer:
    """A running ``azurite-blob``; ``endpoint`` is the account's blob endpoint."""

    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    account: str = ACCOUNT
    account_key: str = ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.account_key};"
                f"BlobEndpoint={self.endpoint};")

    def env(self) -> dict[str, str]:
        """The environment a daemon needs to reach this server (the Azure credential chain)."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def find_azurite() -> str:
    """The ``azurite-blob`` binary: build/node's, then PATH's, else installed into build/node."""
    local = NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("azurite-blob not found and npm is not installed: install Node.js and npm, "
                           "then run scripts/venv.sh (it runs `npm install --prefix build/node azurite`)")
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_PREFIX),
                    AZURITE_PACKAGE], check=True, timeout=600)
    return str(local)


def start_azurite(workdir: Path, timeout: float = 60) -> AzuriteServer:
    binary = find_azurite()
    port = pick_free_ports(1)[0]
    log_path = workdir / "azurite.log"
    with log_path.open("wb") as log:
        # --skipApiVersionCheck: the SDK may speak a newer API version than this Azurite knows.
        # --inMemoryPersistence: nothing outlives the session, and its disk store is slower.
        process = subprocess.Popen(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
             "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent())  # no orphan if the test run dies
    server = AzuriteServer(f"http://127.0.0.1:{port}/{ACCOUNT}", process, workdir, log_path)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop(grace=1.0)
        raise
    return server


def _wait_ready(server: AzuriteServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"azurite-blob exited with {server.process.returncode}:\n"
                               f"{server.log_path.read_text(errors='replace')}")
        try:
            urllib.request.urlopen(f"{server.endpoint}?comp=list", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (403: the request is unsigned) means it is listening
        except OSError:
            time.sleep(0.05)  # no readiness notification to wait on
    raise TimeoutError(f"azurite-blob not ready at {server.endpoint}:\n{server.log_path.read_text(errors='replace')}")


# ---------------------------------------------------------------------- the boto3 calls tests make

# A Blob Storage request under the name of the S3 operation syncd uses it for, so that the
# integration tests count requests the same way on both stores (tests/support/s3proxy.py).
S3_NAMES = {"PutBlob": "PutObject", "PutBlock": "UploadPart", "PutBlockList": "CompleteMultipartUpload",
            "GetBlockList": "ListParts", "GetBlob": "GetObject", "GetBlobProperties": "HeadObject",
            "CopyBlob": "CopyObject", "BlobBatch": "DeleteObjects", "ListBlobs": "ListObjectsV2",
            "GetContainerProperties": "HeadBucket", "CreateContainer": "CreateBucket",
            # syncd deletes blobs in batches: a lone Delete Blob is how an abort drops blocks.
            "DeleteBlob": "AbortMultipartUpload"}


def classify_as_s3(method: str, target: str, headers: dict[str, str]) -> str:
    from .s3proxy import classify_azure

    op = classify_azure(method, target, headers)
    return S3_NAMES.get(op, op)


class _Body:
    def __init__(self, data: bytes):
        self._data = data

    def read(self) -> bytes:
        return self._data

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for start in range(0, len(self._data), size):
            yield self._data[start:start + size]


class _Pages:
    def __init__(self, container: Any):
        self._container = container

    def paginate(self, Bucket: str, Prefix: str = "") -> Iterator[dict[str, Any]]:  # noqa: N803 - boto3's names
        client = self._container(Bucket)
        for page in client.list_blobs(name_starts_with=Prefix or None).by_page():
            yield {"Contents": [{"Key": b.name, "Size": b.size} for b in page]}


class BlobClient:
    """The few boto3 S3 client calls the integration tests make, answered by an Azure container
    (the ``s3`` fixture of a test parametrised over both stores). Uploads are syncd's own
    notion on Azure (uncommitted blocks): they are listed the way AzureBlobStore lists them."""

    def __init__(self, server: AzuriteServer):
        from azure.storage.blob import BlobServiceClient

        self._server = server
        self._service = BlobServiceClient.from_connection_string(server.connection_string)

    def _container(self, name: str) -> Any:
        return self._service.get_container_client(name)

    def get_paginator(self, name: str) -> _Pages:
        assert name == "list_objects_v2", name
        return _Pages(self._container)

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        from syncd.azuremeta import from_azure

        stream = self._container(Bucket).download_blob(Key)
        return {"Body": _Body(stream.readall()), "Metadata": from_azure(stream.properties.metadata or {}),
                "ContentLength": stream.properties.size}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        from syncd.azuremeta import from_azure

        props = self._container(Bucket).get_blob_client(Key).get_blob_properties()
        return {"ContentLength": props.size, "Metadata": from_azure(props.metadata or {}),
                "ContentType": props.content_settings.content_type}

    def list_multipart_uploads(self, Bucket: str) -> dict[str, Any]:  # noqa: N803
        from pathlib import Path

        from syncd.azurestore import AzureBlobStore
        from syncd.config import FolderConfig

        folder = FolderConfig(name="probe", source=Path("<tests>"), path=Path("/"), bucket=Bucket,
                              endpoint_url=self._server.endpoint)
        store = AzureBlobStore(folder, environ=self._server.env())
        try:
            return {"Uploads": [{"Key": u.key, "UploadId": u.upload_id} for u in store.list_uploads("")]}
        finally:
            store.close()

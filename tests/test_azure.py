"""What only the Azure store has: metadata names Azure accepts, rclone's azureblob mtime, and
Azure credentials that fail one folder while the others keep working. The scenarios both
stores share run on both (@both_stores in the scenario files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from syncd.azuremeta import from_azure, to_azure
from syncd.store import object_meta

from .support.azurite import AzuriteServer
from .support.daemon import Syncd, assert_mirror, await_condition

BAD_KEY = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nd3Jvbmc="


def test_syncd_metadata_is_stored_under_csharp_identifiers_and_read_back_unchanged() -> None:
    meta = object_meta(1_700_000_000_123_456_789, "owner-1", "ab" * 32)
    stored = to_azure(meta)
    assert set(stored) == {"syncd_mtime_ns", "syncd_owner", "syncd_sha256", "mtime"}
    assert all(name.isidentifier() for name in stored)
    assert stored["mtime"] == "2023-11-14T22:13:20.123456789Z"  # rclone's azureblob form
    assert from_azure(stored) == meta


def _azure_folder(syncd: Syncd, name: str, path: Path, container: str, server: AzuriteServer) -> None:
    syncd.add_folder(name, path, container, store="azure", endpoint_url=server.endpoint)


def _two_stores(syncd: Syncd, tmp_path: Path, bucket: str, container: str, server: AzuriteServer) -> tuple[Path, Path]:
    on_s3, on_azure = tmp_path / "on-s3", tmp_path / "on-azure"
    on_s3.mkdir()
    on_azure.mkdir()
    syncd.add_folder("s3side", on_s3, bucket)
    _azure_folder(syncd, "azureside", on_azure, container, server)
    return on_s3, on_azure


def test_check_config_reports_bad_azure_credentials_naming_the_container(syncd, tmp_path, bucket, container,
                                                                         azure_server):
    on_s3, _ = _two_stores(syncd, tmp_path, bucket, container, azure_server)
    bad = azure_server.connection_string.replace(azure_server.account_key, BAD_KEY)
    r = syncd.cli("check-config", AZURE_STORAGE_CONNECTION_STRING=bad)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "folder 'azureside'" in r.stderr and repr(container) in r.stderr and "credentials" in r.stderr
    assert f"s3side: {on_s3} -> s3://{bucket}/: reachable" in r.stdout
    assert BAD_KEY not in r.stdout + r.stderr


def test_bad_azure_credentials_put_that_folder_in_error_while_an_s3_folder_syncs(syncd, tmp_path, s3, bucket,
                                                                                container, azure_server):
    on_s3, on_azure = _two_stores(syncd, tmp_path, bucket, container, azure_server)
    (on_s3 / "a.txt").write_text("a")
    (on_azure / "b.txt").write_text("b")
    bad = azure_server.connection_string.replace(azure_server.account_key, BAD_KEY)
    syncd.start(AZURE_STORAGE_CONNECTION_STRING=bad)
    status = await_condition(lambda: (f := syncd.folder_status("azureside"))["state"] == "error" and f, 30,
                             "the Azure folder with bad credentials to report an error")
    assert repr(container) in status["last_error"] and "credentials" in status["last_error"]
    # Its change is kept, not dropped: the startup walk journals it once the first probe has
    # failed (a new folder first waits for the store, to adopt what the bucket holds).
    await_condition(lambda: syncd.folder_status("azureside")["pending"] == 1, 30, "the change to be journaled")
    assert syncd.cli("wait", "s3side", "--timeout", "30").returncode == 0
    assert_mirror(s3, bucket, on_s3)
    assert BAD_KEY not in syncd.log()


def test_a_blob_carries_its_content_md5_type_and_syncd_metadata(syncd, tmp_path, container, azure_server):
    from azure.storage.blob import BlobServiceClient

    root = tmp_path / "tree"
    root.mkdir()
    (root / "page.html").write_text("<p>hello</p>")
    _azure_folder(syncd, "main", root, container, azure_server)
    syncd.start(**azure_server.env())
    syncd.wait_idle()
    with BlobServiceClient.from_connection_string(azure_server.connection_string) as service:
        props = service.get_blob_client(container, "page.html").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(b"<p>hello</p>").digest()
    assert props.content_settings.content_type == "text/html"
    assert props.metadata["syncd_sha256"] == hashlib.sha256(b"<p>hello</p>").hexdigest()
    assert props.metadata["syncd_mtime_ns"] == str((root / "page.html").stat().st_mtime_ns)
    assert set(props.metadata) == {"syncd_mtime_ns", "syncd_sha256", "syncd_owner", "mtime"}

"""Credentials for the Azure store, from the Azure chain only (never from the YAML): the
connection string, the account name and key, or azure-identity's DefaultAzureCredential."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.storage.blob import BlobServiceClient

from .config import FolderConfig
from .store import FOLDER, StoreError

ENV_CONNECTION = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_KEY = "AZURE_STORAGE_KEY"


def _connection_fields(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def service_client(folder: FolderConfig, environ: Mapping[str, str], **options: Any) -> BlobServiceClient:
    """The account's client, credentials from the Azure chain only (never from the YAML):
    AZURE_STORAGE_CONNECTION_STRING, else AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY, else
    DefaultAzureCredential. ``endpoint_url`` (when set) is the blob endpoint in every case."""
    connection = environ.get(ENV_CONNECTION)
    account = environ.get(ENV_ACCOUNT)
    endpoint = folder.endpoint_url
    if connection:
        fields = _connection_fields(connection)
        if endpoint is None:
            return BlobServiceClient.from_connection_string(connection, **options)
        credential: Any = fields.get("SharedAccessSignature")
        if credential is None and "AccountKey" in fields:
            credential = {"account_name": fields.get("AccountName", ""), "account_key": fields["AccountKey"]}
        return BlobServiceClient(endpoint, credential=credential, **options)
    if endpoint is None and account:
        endpoint = f"https://{account}.blob.core.windows.net"
    if endpoint is None:
        raise StoreError(f"container {folder.bucket!r}: no Azure account: set 'endpoint_url' in {folder.source} "
                         f"(https://ACCOUNT.blob.core.windows.net), or {ENV_ACCOUNT} or {ENV_CONNECTION}",
                         scope=FOLDER, code="NoEndpoint")
    if account and environ.get(ENV_KEY):
        return BlobServiceClient(endpoint, credential={"account_name": account, "account_key": environ[ENV_KEY]},
                                 **options)
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(endpoint, credential=DefaultAzureCredential(), **options)

"""Azure Blob Storage's errors mapped to :class:`syncd.store.StoreError` scopes: Azure's error
codes stop here (and in the other azure modules), so the pipeline never matches them."""

from __future__ import annotations

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from .store import FOLDER, KEY, TRANSIENT, UNREACHABLE, NotFound, StoreError


def error_code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)  # set by the storage SDK from x-ms-error-code
    if not code and exc.response is not None:
        code = getattr(exc.response, "headers", {}).get("x-ms-error-code")
    return str(getattr(code, "value", code) or "")


def blob_missing(exc: HttpResponseError) -> bool:
    """The blob is absent (a 404 that is not the container's)."""
    return exc.status_code == 404 and error_code(exc) != "ContainerNotFound"


_FOLDER_CODES = {
    "ContainerNotFound": "the container does not exist: create it or fix 'bucket'",
    "AuthenticationFailed": "the request's signature was refused: fix the account key or the credentials",
    "AuthorizationFailure": "the credentials are not allowed this request: fix the credentials or their roles",
    "AuthorizationPermissionMismatch": "the identity lacks a data role (Storage Blob Data Contributor)",
    "InvalidAuthenticationInfo": "the credentials are malformed: fix them",
    "AccountIsDisabled": "the storage account is disabled",
    "InsufficientAccountPermissions": "the account key lacks the needed permissions",
}
# ConditionNotMet: the blob changed between two requests of one operation (set_meta): plan it again.
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "Md5Mismatch", "Crc64Mismatch",
                    "ConditionNotMet"}


def classify(exc: Exception, key: str | None, container: str) -> StoreError:
    """Turn an Azure SDK exception into a StoreError with a scope and a fix."""
    if isinstance(exc, StoreError):
        return exc
    where = f"azure://{container}/{key}" if key else f"container {container!r}"
    if isinstance(exc, HttpResponseError) and exc.status_code:
        code = error_code(exc)
        status = int(exc.status_code)
        if code in _FOLDER_CODES:
            return StoreError(f"{where}: {code}: {_FOLDER_CODES[code]}", scope=FOLDER, code=code, key=key)
        if status in (401, 403):
            return StoreError(f"{where}: {code or status}: access refused: fix the credentials",
                              scope=FOLDER, code=code or str(status), key=key)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return StoreError(f"{where}: {code or status}: {exc.reason}", scope=TRANSIENT, code=code, key=key)
        kind = NotFound if code == "BlobNotFound" or status == 404 else StoreError
        return kind(f"{where}: {code or status}: {exc.reason}", scope=KEY, code=code, key=key)
    if isinstance(exc, ClientAuthenticationError):  # no token could be had (DefaultAzureCredential)
        return StoreError(f"{where}: no usable Azure credentials ({exc.message}); set "
                          "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or "
                          "configure azure-identity's DefaultAzureCredential",
                          scope=FOLDER, code="NoCredentials", key=key)
    if isinstance(exc, ServiceRequestError):  # nothing was sent: refused, unresolvable, unreachable
        return StoreError(f"{where}: endpoint unreachable: {exc.message}", scope=TRANSIENT, code=UNREACHABLE,
                          key=key)
    if isinstance(exc, ServiceResponseError):
        return StoreError(f"{where}: connection failed: {exc.message}", scope=TRANSIENT, code="ConnectionError",
                          key=key)
    if isinstance(exc, AzureError):
        return StoreError(f"{where}: {exc.message}", scope=TRANSIENT, code=type(exc).__name__, key=key)
    raise exc

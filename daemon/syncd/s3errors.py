"""S3's errors mapped to :class:`syncd.store.StoreError` scopes: S3's error codes stop here
(and in the other s3 modules), so the pipeline never matches them. Imported by s3store after
its botocore opt-outs are set.
"""

from __future__ import annotations

import botocore.exceptions as bexc

from .s3wire import CrtFailure
from .store import FOLDER, KEY, TRANSIENT, UNREACHABLE, Changed, NotFound, StoreError, UploadGone


def error_code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# HEAD answers a bare 404; GET and copy say NoSuchKey; a versioned GET or HEAD says NoSuchVersion
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound", "NoSuchVersion")
UPLOAD_GONE_CODES = ("NoSuchUpload", "404")
# A conditional write (If-None-Match: *) that lost: 412, an object exists; 409
# ConditionalRequestConflict, a concurrent conditional write to the same key is in progress (S3
# asks to retry; the other one wins).
LOST_RACE_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})

# CRT errors meaning no connection could be made at all.
_UNREACHABLE = {"AWS_IO_SOCKET_CONNECTION_REFUSED", "AWS_IO_SOCKET_TIMEOUT", "AWS_IO_SOCKET_NO_ROUTE_TO_HOST",
                "AWS_IO_SOCKET_NETWORK_DOWN", "AWS_IO_DNS_INVALID_NAME", "AWS_IO_DNS_QUERY_FAILED",
                "AWS_IO_DNS_NO_ADDRESS_FOR_HOST", "AWS_IO_DNS_HOST_REMOVED_FROM_CACHE"}

def crt_code(exc: CrtFailure) -> str:
    """The error code of a CRT request the server answered: the body's, else the bare status
    (a HEAD's answer has no body), as botocore reports it."""
    return exc.code or str(exc.status)


def crt_error(exc: CrtFailure, key: str, bucket: str) -> StoreError:
    if exc.status:
        response = {"Error": {"Code": crt_code(exc), "Message": exc.message},
                    "ResponseMetadata": {"HTTPStatusCode": exc.status}}
        return classify(bexc.ClientError(response, "PutObject"), key, bucket)  # type: ignore[arg-type]
    where = f"s3://{bucket}/{key}"
    if exc.transport in _UNREACHABLE:
        return StoreError(f"{where}: endpoint unreachable: {exc.transport}: {exc}", scope=TRANSIENT,
                          code=UNREACHABLE, key=key)
    code = "RequestTimeout" if exc.timed_out else "ConnectionError"
    return StoreError(f"{where}: {code}: {exc.transport or exc}", scope=TRANSIENT, code=code, key=key)


# The CRT retries these answers itself and then fails with a name, not the status.
_CRT_STATUS = {"AWS_ERROR_S3_SLOW_DOWN": 503, "AWS_ERROR_S3_INTERNAL_ERROR": 500}


def crt_status(exc: CrtFailure) -> int | None:
    """The HTTP status a failed CRT PUT ended with (syncd_s3_requests_total), None: no answer."""
    return exc.status or _CRT_STATUS.get(exc.transport)

def bucket_unusable(code: str, bucket: str, endpoint: str, source: str) -> StoreError | None:
    """The error of a HeadBucket refused with ``code`` if it is one the user must fix in the
    folder's config file ``source``, else None."""
    if code in ("404", "NoSuchBucket"):
        return StoreError(f"bucket {bucket!r} does not exist at {endpoint}: create it or fix 'bucket' in {source}",
                          scope=FOLDER, code="NoSuchBucket")
    if code in ("403", "AccessDenied"):
        return StoreError(f"bucket {bucket!r}: access denied: check the credentials and the bucket policy",
                          scope=FOLDER, code="AccessDenied")
    return None


# Codes meaning "nothing in this folder can work until a human fixes something".
_FOLDER_CODES = {
    "NoSuchBucket": "the bucket does not exist: create it or fix 'bucket'",
    "InvalidAccessKeyId": "the access key is not known to the server: fix the credentials",
    "SignatureDoesNotMatch": "the secret key does not match the access key: fix the credentials",
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: fix the credentials",
    "TokenRefreshRequired": "the session token must be refreshed",
    "AllAccessDisabled": "all access to this bucket has been disabled",
    "AccountProblem": "the account has a problem; see the provider's console",
    "RequestTimeTooSkewed": "this machine's clock is too far off: fix time synchronisation",
    "PermanentRedirect": "the bucket is in another region: set 'region'",
    "AuthorizationHeaderMalformed": "wrong region for this bucket: set 'region'",
}
# Codes worth retrying: throttling and server-side trouble (S3 asks clients to back off on 503).
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed", "BadDigest", "OperationAborted",
                    "IncompleteBody"}


def classify(exc: Exception, key: str | None = None, bucket: str = "") -> StoreError:
    """Turn a boto3/botocore exception into a StoreError with a scope and a fix."""
    if isinstance(exc, StoreError):  # already classified (assuming the role failed: see s3role)
        return exc
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = err.get("Message") or code
        if code in _FOLDER_CODES:
            return StoreError(f"{where}: {code}: {_FOLDER_CODES[code]}", scope=FOLDER, code=code, key=key)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return StoreError(f"{where}: {code or status}: {message}", scope=TRANSIENT, code=code, key=key)
        if code == "AccessDenied":
            return StoreError(f"{where}: AccessDenied: the credentials are not allowed this request; "
                              "check the bucket policy and the IAM permissions", scope=KEY, code=code, key=key)
        # Typed, so that no caller matches S3's codes (a second store maps its own).
        kind = (NotFound if code in NOT_FOUND_CODES else UploadGone if code == "NoSuchUpload"
                else Changed if code in ("PreconditionFailed", "412") else StoreError)
        return kind(f"{where}: {code or status}: {message}", scope=KEY, code=code, key=key)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.ProfileNotFound,
                        bexc.CredentialRetrievalError)):
        return StoreError(f"{where}: no usable credentials ({exc}); configure the AWS credential chain "
                          "(environment, ~/.aws/credentials or 'profile')", scope=FOLDER, code="NoCredentials")
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
        # Nothing answers at all: the whole folder is stalled, not this one change.
        return StoreError(f"{where}: endpoint unreachable: {exc}", scope=TRANSIENT, code=UNREACHABLE, key=key)
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError, bexc.ReadTimeoutError)):
        return StoreError(f"{where}: connection failed: {exc}", scope=TRANSIENT, code="ConnectionError", key=key)
    if isinstance(exc, bexc.BotoCoreError):
        return StoreError(f"{where}: {exc}", scope=TRANSIENT, code=type(exc).__name__, key=key)
    raise exc

"""The S3 implementation of :class:`syncd.store.ObjectStore` (the only module importing boto3)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from .config import FolderConfig
from .store import FOLDER, KEY, TRANSIENT, PutResult, RemoteObject, StoreError

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
            return StoreError(f"{where}: AccessDenied: the credentials may not write here; "
                              "check the bucket policy and the IAM permissions", scope=KEY, code=code, key=key)
        return StoreError(f"{where}: {code or status}: {message}", scope=KEY, code=code, key=key)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.ProfileNotFound,
                        bexc.CredentialRetrievalError)):
        return StoreError(f"{where}: no usable credentials ({exc}); configure the AWS credential chain "
                          "(environment, ~/.aws/credentials or 'profile')", scope=FOLDER, code="NoCredentials")
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectionError, bexc.HTTPClientError,
                        bexc.ReadTimeoutError, bexc.ConnectTimeoutError)):
        return StoreError(f"{where}: endpoint unreachable: {exc}", scope=TRANSIENT, code="Unreachable", key=key)
    if isinstance(exc, bexc.BotoCoreError):
        return StoreError(f"{where}: {exc}", scope=TRANSIENT, code=type(exc).__name__, key=key)
    raise exc


class S3Store:
    """An S3 bucket via boto3; one client per folder, shared by its worker threads."""

    def __init__(self, folder: FolderConfig):
        self.bucket = folder.bucket
        self._folder = folder
        addressing = folder.addressing_style
        if addressing == "auto" and folder.endpoint_url:
            addressing = "path"  # S3-compatible servers on an IP or localhost need path style
        boto_config = BotoConfig(
            region_name=folder.region,
            connect_timeout=10,
            read_timeout=folder.request_timeout,
            max_pool_connections=folder.workers + 4,
            tcp_keepalive=True,
            # Few quick client-side retries for blips; the journal's own backoff (capped at
            # minutes, never dropping a change) handles outages, so botocore's retry quota
            # draining during a long outage does not matter.
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": addressing},  # type: ignore[arg-type]
            # We send our own integrity checks (config 'checksum'); some S3-compatible
            # stores reject the CRC headers newer boto3 sends by default (boto3 issue 4392).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            session = boto3.session.Session(profile_name=folder.profile, region_name=folder.region)
            self._client: Any = session.client("s3", endpoint_url=folder.endpoint_url, config=boto_config)
        except Exception as exc:  # profile missing and the like
            raise classify(exc, bucket=folder.bucket) from exc
        self._extra: dict[str, str] = {}
        if folder.storage_class:
            self._extra["StorageClass"] = folder.storage_class
        if folder.sse:
            self._extra["ServerSideEncryption"] = folder.sse
        if folder.sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = folder.sse_kms_key_id
        self._transfer = TransferConfig(multipart_threshold=folder.multipart_threshold,
                                        multipart_chunksize=folder.part_size, max_concurrency=4,
                                        use_threads=True)

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"bucket {self.bucket!r} does not exist at "
                                 f"{self._folder.endpoint_url or 'AWS'}: create it or fix 'bucket' in "
                                 f"{self._folder.source}", scope=FOLDER, code="NoSuchBucket") from exc
            if code in ("403", "AccessDenied"):
                raise StoreError(f"bucket {self.bucket!r}: access denied: check the credentials and the "
                                 "bucket policy", scope=FOLDER, code="AccessDenied") from exc
            raise classify(exc, bucket=self.bucket) from exc
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def put(self, key: str, data: bytes, meta: Mapping[str, str], sha256: bytes) -> PutResult:
        args: dict[str, Any] = dict(Bucket=self.bucket, Key=key, Body=data, Metadata=dict(meta), **self._extra)
        if self._folder.checksum == "sha256":
            args["ChecksumSHA256"] = base64.b64encode(sha256).decode()
        elif self._folder.checksum == "md5":
            args["ContentMD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            resp = self._client.put_object(**args)
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return PutResult(etag=str(resp.get("ETag", "")).strip('"'), bytes_sent=len(data))

    def put_stream(self, key: str, stream: BinaryIO, size: int, meta: Mapping[str, str]) -> PutResult:
        extra = dict(self._extra, Metadata=dict(meta))
        try:
            self._client.upload_fileobj(stream, self.bucket, key, ExtraArgs=extra, Config=self._transfer)
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return PutResult(etag=str(head.get("ETag", "")).strip('"'), bytes_sent=size)

    def copy(self, src_key: str, dst_key: str) -> str:
        try:
            resp = self._client.copy_object(Bucket=self.bucket, Key=dst_key, MetadataDirective="COPY",
                                            CopySource={"Bucket": self.bucket, "Key": src_key}, **self._extra)
        except Exception as exc:
            raise classify(exc, dst_key, self.bucket) from exc
        return str(resp.get("CopyObjectResult", {}).get("ETag", "")).strip('"')

    def delete(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        if len(keys) > 1000:
            raise ValueError("DeleteObjects takes at most 1000 keys")  # S3 API limit
        try:
            resp = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc
        return {e.get("Key", ""): f"{e.get('Code')}: {e.get('Message')}" for e in resp.get("Errors", [])}

    def head(self, key: str) -> RemoteObject | None:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except bexc.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return RemoteObject(key=key, size=int(resp["ContentLength"]), etag=str(resp.get("ETag", "")).strip('"'),
                            meta=dict(resp.get("Metadata", {})))

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield [RemoteObject(key=o["Key"], size=int(o["Size"]), etag=str(o.get("ETag", "")).strip('"'))
                       for o in page.get("Contents", [])]
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def close(self) -> None:
        self._client.close()

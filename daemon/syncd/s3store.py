"""The S3 implementation of :class:`syncd.store.ObjectStore` (the only module importing boto3)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

# botocore's CRT signer (used whenever awscrt is installed, as it is for our data path)
# hands the signer every body wrapped in a BytesIO, which copies a bytearray: one 16 MiB copy
# per part, 1 GiB of copying per GiB sent, and heap churn that raised the peak RSS of a large
# upload by a third. Its pure-Python signer leaves the body alone. BOTO_DISABLE_CRT is
# botocore's own opt-out; it is read once, when botocore is first imported (by this module).
os.environ.setdefault("BOTO_DISABLE_CRT", "true")

import botocore.exceptions as bexc  # noqa: E402 - after the opt-out above

from . import s3clients
from .bandwidth import Payload
from .choices import AddressingStyle
from .config import FolderConfig
from .s3crt import CLIENT_RETRIES, CrtPutter
from .s3errors import (
    LOST_RACE_CODES,
    NOT_FOUND_CODES,
    UPLOAD_GONE_CODES,
    bucket_unusable,
    classify,
    crt_code,
    crt_error,
    crt_status,
    error_code,
)
from .s3params import CRT_HEADERS, FLEXIBLE, answered, body_arg, checksum_args, etag_of, header_args
from .s3wire import BAD_LISTING, CrtFailure
from .store import (
    NO_HEADERS,
    Part,
    PutResult,
    RemoteObject,
    RequestCounts,
    StoreError,
    StreamBody,
    Upload,
    Version,
    Whole,
    fetch_by_get,
    fetch_whole_by_fetch,
)

S3_MAX_COPY = 5 * 1024**3  # CopyObject's single-request limit


class S3Store:
    """An S3 bucket via boto3 (and awscrt for small PUTs); the clients are shared by every
    folder with the same endpoint, credentials and settings (syncd.s3clients)."""

    def __init__(self, folder: FolderConfig, clock: Callable[[], datetime] | None = None,
                 connections: int | None = None, warm: bool = False):
        """``clock``: the time assumed-role credentials are judged by (tests fake it).
        ``connections``: the HTTP pool size, by default the folder's workers and a few more
        (a restore sizes it to its own threads: a full pool discards and reopens connections).
        ``warm``: the caller will need botocore (multipart, deletes, the upload sweep) soon:
        build its client now, on a thread of its own (:meth:`Shared.prewarm`), while the
        caller's first requests go through the CRT and wait on the network."""
        self.bucket = folder.bucket
        self._folder = folder
        # (algorithm, parameter) of a flexible checksum, or None (md5 and off have none).
        self._flexible = FLEXIBLE.get(folder.checksum)
        # This endpoint's and setting's clients, shared with other folders.
        self._shared: s3clients.Shared | None = s3clients.acquire(folder, clock, connections)
        self._credentials = self._shared.credentials
        self.requests = RequestCounts()  # syncd.metrics: every attempt, by operation and outcome
        self._client: Any = s3clients.Counted(self._shared, self.requests)
        addressing = s3clients.addressing_of(folder)
        # boto3 picks virtual-hosted style for AWS; a dotted bucket name cannot match the TLS
        # wildcard certificate, so boto3 (and we) fall back to path style for it.
        path_style = addressing == AddressingStyle.PATH or (addressing == AddressingStyle.AUTO and "." in self.bucket)
        crt = self._shared.crt
        self._crt = None if crt is None else CrtPutter(crt, folder.bucket, path_style)
        self.background_puts = self._crt is not None  # (a paced body goes through boto3: see put)
        self.parallel_fetch = self._crt is not None
        self.background_fetch = self._crt is not None
        self._extra: dict[str, str] = {}
        if folder.storage_class:
            self._extra["StorageClass"] = folder.storage_class
        if folder.sse:
            self._extra["ServerSideEncryption"] = folder.sse
        if folder.sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = folder.sse_kms_key_id
        if warm and crt is not None:
            self._shared.prewarm()

    def check(self) -> None:
        if self._crt is not None:
            self._check_by_crt()
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            raise self._unusable(error_code(exc)) or classify(exc, bucket=self.bucket) from exc
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def _check_by_crt(self) -> None:
        """HeadBucket through the CRT: the daemon's first request then waits neither for the
        botocore client (its S3 model and endpoint rules) nor for botocore's first-call work
        (the daemon's store is opened ``warm``; ``syncd check-config`` needs no botocore client)."""
        if (failure := self._refresh_credentials("")) is not None:
            raise failure
        assert self._crt is not None
        try:
            self._crt.head_bucket()
        except CrtFailure as exc:
            self.requests.add("HeadBucket", crt_status(exc))
            unusable = self._unusable(crt_code(exc)) if exc.status else None
            raise unusable or crt_error(exc, "", self.bucket) from exc
        self.requests.add("HeadBucket", 200)

    def _unusable(self, code: str) -> StoreError | None:
        return bucket_unusable(code, self.bucket, self._folder.endpoint_url or "AWS", str(self._folder.source))

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None], headers: Mapping[str, str] = NO_HEADERS) -> None:
        if self._crt is not None and body.plain:
            if (failure := self._refresh_credentials(key)) is not None:
                done(failure)
                return
            http = {f"x-amz-meta-{k}": v for k, v in meta.items()}
            http.update(headers)
            checksum = checksum_args(self._folder.checksum, body, sha256)
            http.update((CRT_HEADERS[k], v) for k, v in {**self._extra, **checksum}.items())
            size = len(body)

            def finished(answer: str | CrtFailure) -> None:
                self.requests.add("PutObject", crt_status(answer) if isinstance(answer, CrtFailure) else 200)
                done(crt_error(answer, key, self.bucket) if isinstance(answer, CrtFailure)
                     else PutResult(etag=answer, bytes_sent=size))

            self._crt.put(key, body.data, http, finished)
            return
        # boto3 path (a paced or watched body, or no CRT): answered before returning.
        args: dict[str, Any] = dict(Bucket=self.bucket, Key=key, Body=body_arg(body), Metadata=dict(meta),
                                    **self._extra, **checksum_args(self._folder.checksum, body, sha256),
                                    **header_args(headers))
        if not body.plain:
            args["ContentLength"] = len(body)
        try:
            resp = self._client.put_object(**args)
        except Exception as exc:
            done(classify(exc, key, self.bucket))
            return
        done(PutResult(etag=etag_of(resp), bytes_sent=len(body)))

    # ------------------------------------------------------------------ multipart

    def create_upload(self, key: str, meta: Mapping[str, str], headers: Mapping[str, str] = NO_HEADERS) -> str:
        args: dict[str, Any] = dict(Bucket=self.bucket, Key=key, Metadata=dict(meta), **self._extra,
                                    **header_args(headers))
        if self._flexible is not None:
            args["ChecksumAlgorithm"] = self._flexible[0]  # then every part must carry one of this algorithm
        try:
            return str(self._client.create_multipart_upload(**args)["UploadId"])
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> Part:
        checksum = checksum_args(self._folder.checksum, body)
        args: dict[str, Any] = dict(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                    Body=body_arg(body), ContentLength=len(body), **checksum)
        try:
            resp = self._client.upload_part(**args)
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return Part(number, etag_of(resp), self._part_checksum(checksum), len(body))

    def _part_checksum(self, fields: Mapping[str, Any]) -> str:
        """The part's flexible checksum, as CompleteMultipartUpload must repeat it."""
        return str(fields.get(self._flexible[1], "")) if self._flexible is not None else ""

    def complete_upload(self, key: str, upload_id: str, parts: list[Part], meta: Mapping[str, str] | None = None,
                        headers: Mapping[str, str] = NO_HEADERS) -> str:
        # meta and headers: S3 fixed them at CreateMultipartUpload.
        listed = []
        for p in sorted(parts, key=lambda p: p.number):
            item: dict[str, Any] = {"PartNumber": p.number, "ETag": f'"{p.etag}"'}
            if p.checksum and self._flexible is not None:
                item[self._flexible[1]] = p.checksum
            listed.append(item)
        try:
            resp = self._client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                          MultipartUpload={"Parts": listed})
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return etag_of(resp)

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bexc.ClientError as exc:
            if error_code(exc) not in UPLOAD_GONE_CODES:
                raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        parts: list[Part] = []
        try:
            pages = self._client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key,
                                                                     UploadId=upload_id)
            for page in pages:
                parts.extend(Part(int(p["PartNumber"]), etag_of(p),
                                  self._part_checksum(p), int(p.get("Size", 0)))
                             for p in page.get("Parts", []))
        except bexc.ClientError as exc:
            if error_code(exc) in UPLOAD_GONE_CODES:
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return parts

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        try:
            for page in self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=prefix):
                for u in page.get("Uploads", []):
                    yield Upload(str(u["Key"]), str(u["UploadId"]), u["Initiated"].timestamp())
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def set_meta(self, key: str, meta: Mapping[str, str], size: int, headers: Mapping[str, str] = NO_HEADERS) -> str:
        # REPLACE replaces the object's headers as well as its metadata: send them again.
        extra = dict(self._extra, Metadata=dict(meta), MetadataDirective="REPLACE", **header_args(headers))
        try:
            if size <= S3_MAX_COPY:
                resp = self._client.copy_object(Bucket=self.bucket, Key=key, **extra,
                                                CopySource={"Bucket": self.bucket, "Key": key})
                return etag_of(resp.get("CopyObjectResult", {}))
            # CopyObject stops at 5 GiB; larger objects are copied part by part (UploadPartCopy),
            # by boto3's managed copy (imported here: see s3clients).
            from boto3.s3.inject import copy as managed_copy
            from boto3.s3.transfer import TransferConfig

            managed_copy(self._client, {"Bucket": self.bucket, "Key": key}, self.bucket, key, ExtraArgs=extra,
                         Config=TransferConfig(multipart_threshold=S3_MAX_COPY,
                                               multipart_chunksize=max(size // 9000, 512 * 1024 * 1024),
                                               max_concurrency=4))
            return etag_of(self._client.head_object(Bucket=self.bucket, Key=key))
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def copy(self, src_key: str, dst_key: str, headers: Mapping[str, str] | None = None,
             if_match: str | None = None) -> str:
        try:
            args: dict[str, Any] = dict(MetadataDirective="COPY")
            if if_match is not None:
                args["CopySourceIfMatch"] = f'"{if_match}"'  # the ETag header form, quotes included
            if headers is not None:
                # Other headers than the source's: REPLACE, which needs the metadata sent again.
                source = self._client.head_object(Bucket=self.bucket, Key=src_key)
                args.update(MetadataDirective="REPLACE", Metadata=dict(source.get("Metadata", {})),
                            **header_args(headers))
            resp = self._client.copy_object(Bucket=self.bucket, Key=dst_key, **args,
                                            CopySource={"Bucket": self.bucket, "Key": src_key}, **self._extra)
        except Exception as exc:
            raise classify(exc, dst_key, self.bucket) from exc
        return etag_of(resp.get("CopyObjectResult", {}))

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

    def read(self, key: str) -> bytes | None:
        if self._crt is not None:
            if (failure := self._refresh_credentials(key)) is not None:
                raise failure
            try:
                body = self._crt.read(key)
            except CrtFailure as exc:
                self.requests.add("GetObject", crt_status(exc))
                if exc.status and crt_code(exc) in NOT_FOUND_CODES:  # not NoSuchBucket: as botocore's path
                    return None
                raise crt_error(exc, key, self.bucket) from exc
            self.requests.add("GetObject", 200)
            return body
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            return bytes(resp["Body"].read())
        except bexc.ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def write(self, key: str, body: bytes, *, if_absent: bool) -> bool:
        if self._crt is not None:
            return self._write_by_crt(key, body, if_absent)
        args: dict[str, Any] = dict(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                    **self._extra)
        if if_absent:
            args["IfNoneMatch"] = "*"
        try:
            self._client.put_object(**args)
        except bexc.ClientError as exc:
            if if_absent and error_code(exc) in LOST_RACE_CODES:
                return False
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return True

    def _write_by_crt(self, key: str, body: bytes, if_absent: bool) -> bool:
        """:meth:`write` through the CRT (the owner claim, before botocore's client is built)."""
        if (failure := self._refresh_credentials(key)) is not None:
            raise failure
        assert self._crt is not None
        http = {"Content-Type": "application/json", **{CRT_HEADERS[k]: v for k, v in self._extra.items()}}
        if if_absent:
            http["If-None-Match"] = "*"
        try:
            self._crt.write(key, body, http)
        except CrtFailure as exc:
            self.requests.add("PutObject", crt_status(exc))
            if if_absent and exc.status and crt_code(exc) in LOST_RACE_CODES:
                return False
            raise crt_error(exc, key, self.bucket) from exc
        self.requests.add("PutObject", 200)
        return True

    def head(self, key: str, version: str | None = None) -> RemoteObject | None:
        args = {"VersionId": version} if version else {}
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key, **args)
        except bexc.ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return answered(key, resp)

    def get(self, key: str, version: str | None = None, first: int = 0, last: int | None = None) -> StreamBody:
        args: dict[str, Any] = {"VersionId": version} if version else {}
        if first or last is not None:
            args["Range"] = f"bytes={first}-{'' if last is None else last}"
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, **args)
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return StreamBody(answered(key, resp), resp["Body"], self.bucket, classify)

    def fetch(self, key: str, version: str | None,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        if self._crt is None:
            return fetch_by_get(self, key, version, start)
        try:
            if self._credentials is not None:
                self._credentials.get_frozen_credentials()  # a refresh here, not on the CRT's loop
            info = self._crt.fetch(key, version, start, part_size)
        except CrtFailure as exc:
            self.requests.add("GetObject", crt_status(exc))
            raise crt_error(exc, key, self.bucket) from exc
        except StoreError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) or type(exc).__module__.startswith("syncd"):
                raise  # the consumer's own (no space, interrupted)
            raise classify(exc, key, self.bucket) from exc
        self.requests.add("GetObject", 200)
        return info

    def _refresh_credentials(self, key: str) -> StoreError | None:
        """Before a CRT request that answers on the CRT's event loop: a refresh of assumed-role
        credentials (an STS call) runs here, on the caller's thread, and its failure is
        classified; None when the credentials are good."""
        try:
            if self._credentials is not None:
                self._credentials.get_frozen_credentials()
        except Exception as exc:
            return classify(exc, key, self.bucket)
        return None

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        if self._crt is None:
            fetch_whole_by_fetch(self, key, version, done)
            return
        if (failure := self._refresh_credentials(key)) is not None:
            done(failure)
            return

        def finished(answer: tuple[RemoteObject, list[bytes]] | CrtFailure) -> None:
            if isinstance(answer, CrtFailure):
                self.requests.add("GetObject", crt_status(answer))
                done(crt_error(answer, key, self.bucket))
            else:
                self.requests.add("GetObject", 200)
                done(Whole(*answer))

        self._crt.fetch_whole(key, version, finished)

    def versioning(self) -> str:
        try:
            return str(self._client.get_bucket_versioning(Bucket=self.bucket).get("Status", ""))
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def list_versions(self, prefix: str) -> Iterator[list[Version]]:
        paginator = self._client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                batch = [Version(str(v["Key"]), str(v.get("VersionId") or "null"), v["LastModified"].timestamp(),
                                 False, int(v.get("Size", 0)), etag_of(v)) for v in page.get("Versions", [])]
                batch += [Version(str(m["Key"]), str(m.get("VersionId") or "null"), m["LastModified"].timestamp(),
                                  True) for m in page.get("DeleteMarkers", [])]
                yield batch
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def _crt_list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        """:meth:`list` through the CRT: botocore parses a page in Python, object by object,
        several times the CPU of ElementTree's C parse (syncd.s3crt)."""
        assert self._crt is not None
        token: str | None = None
        bad = 0
        while True:
            try:
                if self._credentials is not None:
                    self._credentials.get_frozen_credentials()  # a refresh here, not on the CRT's loop
                page, token = self._crt.list_page(prefix, token)
            except CrtFailure as exc:
                self.requests.add("ListObjectsV2", crt_status(exc))
                if exc.transport == BAD_LISTING and bad < CLIENT_RETRIES:
                    bad += 1  # asked again, as botocore retries such an answer like a 500
                    continue
                raise crt_error(exc, prefix, self.bucket) from exc
            except Exception as exc:  # the credentials' refresh
                raise classify(exc, prefix, self.bucket) from exc
            self.requests.add("ListObjectsV2", 200)
            yield page
            if token is None:
                return

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        if self._crt is not None:
            yield from self._crt_list(prefix)
            return
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield [RemoteObject(key=o["Key"], size=int(o["Size"]), etag=etag_of(o),
                                    modified=o["LastModified"].timestamp() if "LastModified" in o else None)
                       for o in page.get("Contents", [])]
        except Exception as exc:
            raise classify(exc, bucket=self.bucket) from exc

    def close(self) -> None:
        """Release the shared client (closed with its last user)."""
        if self._shared is not None:
            s3clients.release(self._shared)
            self._shared = None

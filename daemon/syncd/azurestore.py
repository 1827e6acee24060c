"""The Azure Blob Storage implementation of :class:`syncd.store.ObjectStore`; with azureerrors,
azureauth and azuremeta, the only modules importing the Azure SDK. ``bucket`` is the container,
``endpoint_url`` the account's blob endpoint.

How S3's shape maps onto block blobs (docs/configuration.md, "Azure Blob Storage"):

- Put Blob carries Content-MD5, so a small object's ETag is its MD5 in hex, as on S3.
- An upload is a set of uncommitted blocks (Azure has no upload object): the upload id is
  made here (creation time in hex, then random) and every block id carries it with the part
  number and the part's MD5, so Get Block List answers what ListParts does. Put Block List
  publishes the blob, with its metadata and headers; a retried one is harmless.
- A committed block list keeps S3's multipart ETag in ``syncd_etag`` metadata, so a lost Put
  Block List answer and a lost journal are recognised as on S3.
- Metadata names must be C# identifiers: ``syncd-mtime-ns`` is stored as ``syncd_mtime_ns``;
  rclone's ``mtime`` in the RFC 3339 form of rclone's azureblob backend.
- Aborting drops the blocks of a blob not yet published (an empty Put Block List with
  If-None-Match: *, then Delete Blob); a published blob keeps stray blocks until its next
  commit or Azure's clean-up after a week: no request drops only them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import requests
import requests.adapters
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobBlock, LinearRetry

from .azureauth import service_client
from .azureerrors import blob_missing, classify, error_code
from .azuremeta import META_ETAG, block_id, etag_of, object_of, parse_block, settings, to_azure
from .bandwidth import Payload
from .config import FolderConfig
from .store import (
    FOLDER,
    KEY,
    NO_HEADERS,
    TRANSIENT,
    Changed,
    NotFound,
    Part,
    PutResult,
    RemoteObject,
    RequestCounts,
    StoreError,
    StreamBody,
    Upload,
    UploadGone,
    Version,
    Whole,
    fetch_by_get,
    fetch_whole_by_fetch,
    multipart_etag,
)

MAX_BATCH = 256              # Azure: a Blob Batch request holds at most 256 subrequests
MAX_NAME = 1024              # Azure: a blob name is at most 1024 characters (Azurite does not check)
MIN_PART = 5 * 1024 * 1024   # the protocol's (S3's) minimum part: the pipeline sizes parts for it
PAGE_SIZE = 1000             # the protocol's page (S3's); Azure allows up to 5000
COPY_POLL_MAX = 2.0          # seconds between polls of a pending Copy Blob



# ---------------------------------------------------------------------- request bodies

def _paced(body: Payload) -> bytes | bytearray:
    """The body's bytes, read through its pacing once when it is paced (a bandwidth limit):
    the SDK would read a stream more than once (its length, its retries)."""
    if body.plain:
        return body.data
    body.seek(0)
    pieces = []
    while piece := body.read(1024 * 1024):  # a paced read returns at most one pacing chunk
        pieces.append(piece)
    return b"".join(pieces)


def _content_md5(digest: bytes) -> dict[str, str]:
    return {"Content-MD5": base64.b64encode(digest).decode()}


# ---------------------------------------------------------------------- the store

class AzureBlobStore:
    """A container via azure-storage-blob; one client per folder, shared by its worker threads."""

    def __init__(self, folder: FolderConfig, *, retry_total: int = 2, environ: Mapping[str, str] | None = None,
                 connections: int | None = None):
        """``environ``: where the credentials are read (the process environment; tests pass their own).
        ``connections``: the HTTP pool size, by default the folder's workers and a few more."""
        self.bucket = folder.bucket
        self.background_puts = False  # the SDK's upload_blob waits for the answer
        self.parallel_fetch = False     # fetch is one streaming GET (a restore ranges large blobs)
        self.background_fetch = False   # the SDK's download waits for the answer
        self._folder = folder
        self.requests = RequestCounts()  # syncd.metrics: one count per HTTP attempt
        # Few quick client-side retries for blips; the journal's own backoff handles outages.
        retry = LinearRetry(backoff=1, random_jitter_range=1, retry_total=retry_total)
        # A connection per worker: requests' default pool keeps 10 and drops the rest.
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections or folder.workers + 4)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            self._service = service_client(folder, os.environ if environ is None else environ, retry_policy=retry,
                                           connection_timeout=10, read_timeout=folder.request_timeout,
                                           raw_response_hook=self._answered, max_single_put_size=64 * 1024**2,
                                           transport=RequestsTransport(session=session, session_owner=True))
        except StoreError:
            raise
        except Exception as exc:  # a malformed connection string and the like
            raise StoreError(f"container {folder.bucket!r}: cannot set up the Azure client: {exc}", scope=FOLDER,
                             code="BadCredentials") from exc
        self._container = self._service.get_container_client(folder.bucket)

    def _answered(self, response: Any) -> None:
        http = response.http_response
        request = response.http_request
        comp = re.search(r"[?&]comp=([a-z]+)", request.url)
        self.requests.add(f"{request.method}{'-' + comp.group(1) if comp else ''}", http.status_code)

    def _blob(self, key: str) -> Any:
        if not key or len(key) > MAX_NAME:
            raise StoreError(f"azure://{self.bucket}/{key[:80]}: InvalidBlobName: a blob name is 1 to {MAX_NAME} "
                             "characters", scope=KEY, code="InvalidBlobName", key=key)
        return self._container.get_blob_client(key)

    def check(self) -> None:
        try:
            self._container.get_container_properties()
        except HttpResponseError as exc:
            if error_code(exc) == "ContainerNotFound" or exc.status_code == 404:
                raise StoreError(f"container {self.bucket!r} does not exist at {self._container.primary_endpoint}: "
                                 f"create it or fix 'bucket' in {self._folder.source}", scope=FOLDER,
                                 code="ContainerNotFound") from exc
            raise classify(exc, None, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, None, self.bucket) from exc

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None], headers: Mapping[str, str] = NO_HEADERS) -> None:
        try:
            blob = self._blob(key)
            data = _paced(body)
            md5 = hashlib.md5(data).digest()
            # Content-MD5 both ways: the service checks the body against it (the request's own
            # header, not the SDK's validate_content, which would read a paced body twice), and
            # keeps it as the blob's MD5.
            blob.upload_blob(data, length=len(body), overwrite=True, metadata=to_azure(meta),
                             content_settings=settings(headers, md5), headers=_content_md5(md5))
        except Exception as exc:
            done(classify(exc, key, self.bucket))
            return
        done(PutResult(etag=md5.hex(), bytes_sent=len(body)))

    # ------------------------------------------------------------------ multipart (blocks)

    def create_upload(self, key: str, meta: Mapping[str, str], headers: Mapping[str, str] = NO_HEADERS) -> str:
        self._blob(key)  # a name Azure refuses fails here, as S3's CreateMultipartUpload would
        return f"{int(time.time()):08x}{secrets.token_hex(4)}"  # no request: blocks need no upload object

    def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> Part:
        digest = hashlib.md5(body.data).digest()
        md5 = digest.hex()
        try:
            # The block's Content-MD5: the service checks the body against it.
            self._blob(key).stage_block(block_id(upload_id, number, md5), _paced(body), length=len(body),
                                        headers=_content_md5(digest))
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return Part(number, md5, "", len(body))

    def complete_upload(self, key: str, upload_id: str, parts: list[Part], meta: Mapping[str, str] | None = None,
                        headers: Mapping[str, str] = NO_HEADERS) -> str:
        ordered = sorted(parts, key=lambda p: p.number)
        for p in ordered[:-1]:
            if p.size and p.size < MIN_PART:
                raise StoreError(f"azure://{self.bucket}/{key}: EntityTooSmall: part {p.number} is under 5 MiB",
                                 scope=KEY, code="EntityTooSmall", key=key)
        etag = multipart_etag(ordered)
        stored = to_azure(meta or {})
        stored[META_ETAG] = etag
        try:
            self._blob(key).commit_block_list([BlobBlock(block_id(upload_id, p.number, p.etag)) for p in ordered],
                                              metadata=stored, content_settings=settings(headers))
        except HttpResponseError as exc:
            if error_code(exc) == "InvalidBlockList":
                if self.list_parts(key, upload_id) is None:
                    raise UploadGone(f"azure://{self.bucket}/{key}: upload {upload_id!r} has no blocks (aborted, "
                                     "completed or never begun)", scope=KEY, code="NoSuchUpload", key=key) from exc
                raise StoreError(f"azure://{self.bucket}/{key}: InvalidBlockList: a part was not uploaded with "
                                 "that MD5", scope=KEY, code="InvalidPart", key=key) from exc
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return etag

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            blob = self._blob(key)
            if not self._uncommitted(blob, upload_id):
                return
            # Put Blob discards a blob's uncommitted blocks. Only where no blob is published
            # (If-None-Match: *, so a commit meanwhile is never overwritten); the empty blob
            # goes again at once, on its own ETag.
            made = blob.commit_block_list([], headers={"If-None-Match": "*"})
            blob.delete_blob(etag=made["etag"], match_condition=MatchConditions.IfNotModified)
        except ResourceExistsError:
            pass  # a published blob: its uncommitted blocks go at its next commit, or in a week
        except HttpResponseError as exc:
            if exc.status_code not in (404, 409, 412):
                raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def _uncommitted(self, blob: Any, upload_id: str | None) -> dict[str, dict[int, Part]]:
        """Uncommitted blocks of syncd's form, by upload id (only ``upload_id``'s, if given)."""
        try:
            _, uncommitted = blob.get_block_list("uncommitted")
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return {}
            raise
        found: dict[str, dict[int, Part]] = {}
        for block in uncommitted:
            parsed = parse_block(block.id)
            if parsed is not None and (upload_id is None or parsed[0] == upload_id):
                found.setdefault(parsed[0], {})[parsed[1]] = Part(parsed[1], parsed[2], "", int(block.size))
        return found

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        try:
            held = self._uncommitted(self._blob(key), upload_id).get(upload_id)
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return None if held is None else [held[n] for n in sorted(held)]

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Uploads of blobs that hold only uncommitted blocks, and of the blob named ``prefix``
        itself (how a stray of one key is looked for). Blocks staged on a blob that exists
        under another name are not listed: Azure lists no such thing (they expire in a week)."""
        try:
            # A blob of uncommitted blocks only is listed empty and without an MD5 (an empty
            # file syncd put has one); Azure marks it no other way.
            names = {b.name for b in self._container.list_blobs(name_starts_with=prefix or None,
                                                                include=["uncommittedblobs"])
                     if not b.size and not (b.content_settings and b.content_settings.content_md5)}
            if prefix and len(prefix) <= MAX_NAME:
                names.add(prefix)
            found: list[Upload] = []
            for name in sorted(names):
                for upload_id in self._uncommitted(self._container.get_blob_client(name), None):
                    found.append(Upload(name, upload_id, float(int(upload_id[:8], 16))))
        except Exception as exc:
            raise classify(exc, None, self.bucket) from exc
        yield from found

    # ------------------------------------------------------------------ metadata, copy, delete

    def set_meta(self, key: str, meta: Mapping[str, str], size: int, headers: Mapping[str, str] = NO_HEADERS) -> str:
        """Set Blob Properties and Set Blob Metadata in place (no copy): the blob's MD5 and
        ``syncd_etag`` are kept, since both requests replace all they set."""
        try:
            blob = self._blob(key)
            props = blob.get_blob_properties()
            stored = to_azure(meta)
            if META_ETAG in (props.metadata or {}):
                stored[META_ETAG] = props.metadata[META_ETAG]
            # Each only if the blob is still the one read (412 otherwise: TRANSIENT, planned again).
            changed = blob.set_http_headers(settings(headers, props.content_settings.content_md5), etag=props.etag,
                                            match_condition=MatchConditions.IfNotModified)
            blob.set_blob_metadata(stored, etag=changed["etag"], match_condition=MatchConditions.IfNotModified)
            return etag_of(blob.get_blob_properties())
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def copy(self, src_key: str, dst_key: str, headers: Mapping[str, str] | None = None,
             if_match: str | None = None) -> str:
        """Copy Blob within the account: done at once for most blobs, polled while pending.
        ``if_match`` is syncd's ETag (the MD5, see the module docstring), so it is checked
        against the properties, and the copy is then bound to the service's ETag read with them."""
        try:
            source = self._blob(src_key)
            dest = self._blob(dst_key)
            props = source.get_blob_properties()
            if if_match is not None and etag_of(props) != if_match:
                raise Changed(f"azure://{self.bucket}/{src_key}: ConditionNotMet: the ETag is not {if_match}",
                              scope=KEY, code="ConditionNotMet", key=src_key)
            answer = dest.start_copy_from_url(source.url, source_etag=props.etag,
                                              source_match_condition=MatchConditions.IfNotModified)
            status = answer.get("copy_status")
            wait = 0.05
            deadline = time.monotonic() + max(600.0, self._folder.request_timeout * 10)
            while status == "pending":
                if time.monotonic() > deadline:
                    raise StoreError(f"azure://{self.bucket}/{dst_key}: copy still pending; it is retried",
                                     scope=TRANSIENT, code="CopyPending", key=dst_key)
                time.sleep(wait)
                wait = min(COPY_POLL_MAX, wait * 2)
                status = dest.get_blob_properties().copy.status
            if status != "success":
                raise StoreError(f"azure://{self.bucket}/{dst_key}: copy from {src_key} ended {status}",
                                 scope=TRANSIENT, code="CopyFailed", key=dst_key)
            if headers is not None:
                dest.set_http_headers(settings(headers, props.content_settings.content_md5))
        except Exception as exc:
            raise classify(exc, dst_key, self.bucket) from exc
        return etag_of(props)

    def delete(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        if len(keys) > 1000:
            raise ValueError("delete takes at most 1000 keys")  # the protocol's (S3's) limit
        errors: dict[str, str] = {}
        try:
            for start in range(0, len(keys), MAX_BATCH):
                chunk = keys[start:start + MAX_BATCH]
                answers = self._container.delete_blobs(*chunk, raise_on_any_failure=False)
                for key, answer in zip(chunk, answers, strict=True):
                    status = int(answer.status_code)
                    if status >= 300 and status != 404:  # an absent blob is deleted, as on S3
                        errors[key] = f"{status}: {answer.headers.get('x-ms-error-code', answer.reason)}"
        except Exception as exc:
            raise classify(exc, None, self.bucket) from exc
        return errors

    # ------------------------------------------------------------------ bookkeeping objects, reads

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self._blob(key).download_blob().readall())
        except HttpResponseError as exc:
            if blob_missing(exc):
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc

    def write(self, key: str, body: bytes, *, if_absent: bool) -> bool:
        try:
            # overwrite=False sends If-None-Match: *.
            self._blob(key).upload_blob(body, overwrite=not if_absent,
                                        content_settings=settings({"Content-Type": "application/json"},
                                                                   hashlib.md5(body).digest()))
        except ResourceExistsError:
            if if_absent:
                return False
            raise
        except HttpResponseError as exc:
            if if_absent and exc.status_code in (409, 412):
                return False
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return True

    def head(self, key: str, version: str | None = None) -> RemoteObject | None:
        try:
            props = self._blob(key).get_blob_properties(version_id=version)
        except HttpResponseError as exc:
            if blob_missing(exc):
                return None
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        return object_of(key, props, True)

    def get(self, key: str, version: str | None = None, first: int = 0, last: int | None = None) -> StreamBody:
        try:
            length = None if last is None else last - first + 1
            offset = first if first or length is not None else None
            stream = self._blob(key).download_blob(offset=offset, length=length, version_id=version)
        except HttpResponseError as exc:
            if blob_missing(exc):
                raise NotFound(f"azure://{self.bucket}/{key}: BlobNotFound: gone since it was listed", scope=KEY,
                               code="NoSuchKey", key=key) from exc
            raise classify(exc, key, self.bucket) from exc
        except Exception as exc:
            raise classify(exc, key, self.bucket) from exc
        props = stream.properties
        info = object_of(key, props, True)
        total = str(getattr(props, "content_range", "") or "")
        if "/" in total and not total.endswith("/*"):
            info = RemoteObject(key, int(total.rsplit("/", 1)[1]), info.etag, info.meta, info.modified)
        return StreamBody(info, stream, self.bucket, classify, closing=False)

    def fetch(self, key: str, version: str | None,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        return fetch_by_get(self, key, version, start)

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        fetch_whole_by_fetch(self, key, version, done)

    def versioning(self) -> str:
        """Blob versioning is an account setting Azure's data plane does not report: syncd
        treats every container as unversioned (restore --at needs S3 or `delete: trash`)."""
        return ""

    def list_versions(self, prefix: str) -> Iterator[list[Version]]:
        raise StoreError(f"container {self.bucket!r}: listing versions is not supported on Azure", scope=KEY,
                         code="NotImplemented")

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        try:
            pages = self._container.list_blobs(name_starts_with=prefix or None, include=["metadata"],
                                               results_per_page=PAGE_SIZE).by_page()
            empty = True
            for page in pages:
                batch = [object_of(b.name, b, False) for b in page]
                empty = False
                yield batch
            if empty:
                yield []
        except Exception as exc:
            raise classify(exc, None, self.bucket) from exc

    def close(self) -> None:
        self._service.close()

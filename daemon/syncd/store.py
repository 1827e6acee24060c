"""The object-store seam: what the pipeline needs from a bucket, and nothing about how.

Only :mod:`syncd.s3store` imports an S3 client library, only :mod:`syncd.azurestore` the Azure
SDK. The scheduler and transfers speak this protocol, which keeps them testable and lets the
data path (and the service) change on evidence.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .bandwidth import Payload

if TYPE_CHECKING:
    from .config import FolderConfig

# User metadata written on every object so a lost journal can be rebuilt from the bucket
# without re-uploading unchanged files (docs/architecture.md, "The store seam").
META_MTIME = "syncd-mtime-ns"
META_SHA256 = "syncd-sha256"
# The owner id of the folder that wrote the object (see syncd.owner): only objects carrying a
# folder's own id are ever treated as that folder's leftovers.
META_OWNER = "syncd-owner"
# rclone's modification time (x-amz-meta-mtime), so rclone, Cyberduck and the like show the
# file's real mtime: seconds since the epoch with 9 decimals, as rclone's S3 backend writes it.
META_RCLONE_MTIME = "mtime"
META_RCLONE_MD5 = "md5chksum"  # rclone's base64 MD5 of the whole file, on its multipart uploads
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def rclone_mtime(mtime_ns: int) -> str:
    """``mtime_ns`` as rclone's ``mtime`` metadata (``1700000000.123456789``), exact to 1 ns."""
    sign = "-" if mtime_ns < 0 else ""
    seconds, nanos = divmod(abs(mtime_ns), 1_000_000_000)
    return f"{sign}{seconds}.{nanos:09d}"


def object_meta(mtime_ns: int, owner: str, sha256_hex: str | None = None) -> dict[str, str]:
    """The user metadata syncd writes on an object (the hash once it is known)."""
    meta = {META_MTIME: str(mtime_ns), META_RCLONE_MTIME: rclone_mtime(mtime_ns), META_OWNER: owner}
    if sha256_hex is not None:
        meta[META_SHA256] = sha256_hex
    return meta


class Scope(StrEnum):
    """How far a store failure reaches."""

    TRANSIENT = "transient"  # try this change again later (5xx, throttling, network)
    FOLDER = "folder"        # the whole folder cannot work (credentials, bucket missing)
    KEY = "key"              # this change cannot succeed as it is (invalid key, too large)


TRANSIENT, FOLDER, KEY = Scope.TRANSIENT, Scope.FOLDER, Scope.KEY

UNREACHABLE = "Unreachable"  # error code: no connection could be made at all (folder is stalled)


class RequestOutcome(StrEnum):
    """How one HTTP request to the store ended (the ``outcome`` label of syncd_s3_requests_total)."""

    OK = "ok"                        # 1xx-3xx
    CLIENT_ERROR = "client_error"    # 4xx (a 404 of a HEAD is an answer too)
    SERVER_ERROR = "server_error"    # 5xx, throttling included
    NETWORK_ERROR = "network_error"  # no HTTP answer: refused, reset, timed out


class RequestCounts:
    """Requests sent to the store by (operation, outcome), every attempt counted (client-side
    retries included); written by any thread, read by a metrics scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, RequestOutcome]] = Counter()

    def add(self, operation: str, status: int | None) -> None:
        """``status``: the HTTP status, or None when no answer came."""
        if status is None or status <= 0:
            outcome = RequestOutcome.NETWORK_ERROR
        elif status < 400:
            outcome = RequestOutcome.OK
        elif status < 500:
            outcome = RequestOutcome.CLIENT_ERROR
        else:
            outcome = RequestOutcome.SERVER_ERROR
        with self._lock:
            self._counts[(operation, outcome)] += 1

    def snapshot(self) -> dict[tuple[str, RequestOutcome], int]:
        with self._lock:
            return dict(self._counts)


class StoreError(Exception):
    """An object-store failure, classified so callers know whether to retry, park or halt."""

    def __init__(self, message: str, *, scope: Scope, code: str = "", key: str | None = None):
        super().__init__(message)
        self.scope = scope
        self.code = code
        self.key = key

    @property
    def transient(self) -> bool:
        return self.scope == TRANSIENT


class NotFound(StoreError):
    """The key (a copy's source, say) does not exist. The store maps its own codes for that
    (S3: NoSuchKey, 404) to this, so callers never match them."""


class Changed(StoreError):
    """A conditional request's precondition failed: the object is not the version the caller
    named (S3: PreconditionFailed, 412)."""


class UploadGone(StoreError):
    """The multipart upload does not exist (any more): aborted, completed, or never created
    (S3: NoSuchUpload)."""


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str
    size: int
    etag: str
    meta: Mapping[str, str] | None = None  # only from head(); listings do not carry metadata
    modified: float | None = None          # LastModified (unix time), where the answer has it


def expected_digest(obj: RemoteObject) -> tuple[str, str] | None:
    """(algorithm, hex digest) the object's content must have: its ``syncd-sha256``, else
    rclone's ``md5chksum``, else a single-part ETag (the MD5 of the bytes); None if unknown
    (a multipart ETag is an MD5 of the parts' MD5s, not of the content). Here, not in
    syncd.verify, so that restore's downloads need not import the verifier."""
    meta = obj.meta or {}
    if meta.get(META_SHA256):
        return "sha256", meta[META_SHA256].lower()
    if meta.get(META_RCLONE_MD5):
        try:
            return "md5", base64.b64decode(meta[META_RCLONE_MD5]).hex()
        except (ValueError, binascii.Error):
            pass
    etag = obj.etag.lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return "md5", etag
    return None


@dataclass(frozen=True, slots=True)
class PutResult:
    etag: str
    bytes_sent: int


@dataclass(frozen=True, slots=True)
class Part:
    """One finished part of a multipart upload, as CompleteMultipartUpload needs it."""

    number: int
    etag: str
    checksum: str = ""  # base64 checksum of the part in the folder's algorithm ("" with md5 or off)
    size: int = 0


@dataclass(frozen=True, slots=True)
class Upload:
    """An incomplete multipart upload found in the bucket."""

    key: str
    upload_id: str
    initiated: float  # unix time


@dataclass(frozen=True, slots=True)
class Version:
    """One entry of ListObjectVersions: an object version or a delete marker."""

    key: str
    version_id: str
    modified: float        # unix time
    deleted: bool          # a delete marker
    size: int = 0
    etag: str = ""


class Fetched(Protocol):
    """An object's body being read (GetObject): its size, ETag and metadata, then its bytes."""

    info: RemoteObject

    def chunks(self, size: int) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes; memory stays at one piece."""

    def close(self) -> None:
        """Release the connection (also when the body was not read to the end)."""


class StreamBody:
    """A :class:`Fetched` over an SDK's body stream: read in pieces, the SDK's errors turned
    into StoreErrors by the store's ``classify`` (key, bucket or container)."""

    def __init__(self, info: RemoteObject, stream: Any, where: str,
                 classify: Callable[[Exception, str | None, str], StoreError], closing: bool = True) -> None:
        """``closing``: the stream holds a connection until closed (Azure's downloader does not)."""
        self.info = info
        self._stream = stream
        self._where = where
        self._classify = classify
        self._closing = closing

    def chunks(self, size: int) -> Iterator[bytes]:
        try:
            while piece := self._stream.read(size):
                yield bytes(piece)
        except Exception as exc:
            raise self._classify(exc, self.info.key, self._where) from exc

    def close(self) -> None:
        if self._closing:
            self._stream.close()


@dataclass(frozen=True, slots=True)
class Whole:
    """A whole small object in memory: what the GET said of it, and its body's pieces."""

    info: RemoteObject
    pieces: list[bytes]

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces)


def fetch_whole_by_fetch(store: ObjectStore, key: str, version: str | None,
                         done: Callable[[Whole | StoreError], None]) -> None:
    """:meth:`ObjectStore.fetch_whole` through :meth:`ObjectStore.fetch`, answered before it
    returns, for a store whose requests are answered on the calling thread."""
    pieces: list[bytes] = []
    try:
        info = store.fetch(key, version, lambda _info: pieces.append)
    except StoreError as exc:
        done(exc)
        return
    done(Whole(info, pieces))


def fetch_whole_now(store: ObjectStore, key: str, version: str | None) -> Whole:
    """:meth:`ObjectStore.fetch_whole`, waiting for the answer; raises its StoreError."""
    answer: list[Whole | StoreError] = []
    answered = threading.Event()

    def done(got: Whole | StoreError) -> None:
        answer.append(got)
        answered.set()

    store.fetch_whole(key, version, done)
    answered.wait()  # bounded: a store's request has a deadline (the CRT's reaper cancels it)
    if isinstance(answer[0], StoreError):
        raise answer[0]
    return answer[0]


def fetch_by_get(store: ObjectStore, key: str, version: str | None,
                 start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
    """:meth:`ObjectStore.fetch` through :meth:`ObjectStore.get`, for a store without a faster way."""
    body = store.get(key, version)
    try:
        consume = start(body.info)
        for piece in body.chunks(1 << 20):
            consume(piece)
    finally:
        body.close()
    return body.info


def multipart_etag(parts: list[Part]) -> str:
    """The ETag S3 gives a completed multipart object: MD5 of the parts' binary ETags, "-N".

    Lets a Complete whose response was lost be recognised by a HEAD afterwards."""
    joined = b"".join(bytes.fromhex(p.etag) for p in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


class ObjectStore(Protocol):
    """What syncd needs from a bucket. Every method is idempotent."""

    bucket: str
    # True: put() returns once its request is sent (the answer comes on the store's own
    # thread), so one pool thread can start several small uploads in turn.
    background_puts: bool
    # True: fetch() with a part_size GETs a large object's parts in parallel itself (bounded
    # memory, pieces in order); False: it is one streaming GET, and a restore ranges it.
    parallel_fetch: bool
    # True: fetch_whole() returns once its request is sent (the answer comes on the store's
    # own thread), so a restore keeps many small GETs in flight from a few threads.
    background_fetch: bool

    def check(self) -> None:
        """Raise StoreError(scope=FOLDER) unless the bucket is reachable with these credentials."""

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None], headers: Mapping[str, str] = NO_HEADERS) -> None:
        """Store ``body`` at ``key`` in one request; ``sha256`` is the digest of its bytes.
        ``headers``: object headers such as Content-Type (see :mod:`syncd.headers`).

        Asynchronous: ``done`` gets the result or the StoreError exactly once, maybe before
        this returns, maybe later on a thread of the store's own. The many small files are
        sent this way so that no thread sits waiting for each answer."""

    def create_upload(self, key: str, meta: Mapping[str, str], headers: Mapping[str, str] = NO_HEADERS) -> str:
        """Start a multipart upload (the object's metadata and headers are fixed here); returns its id."""

    def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> Part:
        """Send one part with its checksum (the server checks it)."""

    def complete_upload(self, key: str, upload_id: str, parts: list[Part], meta: Mapping[str, str] | None = None,
                        headers: Mapping[str, str] = NO_HEADERS) -> str:
        """Publish the object from ``parts``; returns its ETag; raises UploadGone if the upload does not exist.
        ``meta`` and ``headers`` are those given to create_upload: S3 fixed them there, Azure
        (which has no upload object to keep them in) sets them now."""

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Discard an upload and its parts; an upload that no longer exists is not an error."""

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        """The parts the server holds for an upload, or None if the upload does not exist."""

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Incomplete multipart uploads under ``prefix``."""

    def set_meta(self, key: str, meta: Mapping[str, str], size: int, headers: Mapping[str, str] = NO_HEADERS) -> str:
        """Replace an object's user metadata in place (server-side copy); returns the new ETag.
        S3 replaces the headers too (MetadataDirective REPLACE): ``headers`` are sent again."""

    def copy(self, src_key: str, dst_key: str, headers: Mapping[str, str] | None = None,
             if_match: str | None = None) -> str:
        """Server-side copy keeping the source's metadata; returns the new ETag. With
        ``headers``, the copy gets those headers instead of the source's (a rename to a name
        that other headers apply to). With ``if_match``, only if the source's ETag is that
        (else Changed)."""

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Delete up to 1000 keys in one request; returns ``{key: error}`` for failures."""

    def read(self, key: str) -> bytes | None:
        """A small object's bytes (syncd's own bookkeeping keys), or None if absent."""

    def write(self, key: str, body: bytes, *, if_absent: bool) -> bool:
        """Store a small bookkeeping object. With ``if_absent`` it is created only if no
        object is at ``key`` (``If-None-Match: *``); returns False when one already was."""

    def head(self, key: str, version: str | None = None) -> RemoteObject | None:
        """The object's (or that version's) size, ETag and metadata, or None if absent."""

    def get(self, key: str, version: str | None = None, first: int = 0, last: int | None = None) -> Fetched:
        """Start reading the object (that version; bytes ``first``..``last`` inclusive with a
        range). NotFound if it is gone."""

    def fetch(self, key: str, version: str | None,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        """Read a whole (small) object, waiting for it: ``start`` gets what the answer says of
        the object and returns the consumer of the body's pieces, called in order. What either
        raises is raised here. The fast path of a restore's many small files (one request, no
        thread per piece); StoreError as for :meth:`get`. With ``part_size``, a large object:
        a store with ``parallel_fetch`` GETs it in ranged parts of that size, a few at a time
        (pieces still in order, at most a part each); others ignore it."""

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        """GET a whole small object into memory (a restore's many small files). Asynchronous
        like :meth:`put`: ``done`` gets the Whole or the StoreError (as :meth:`get` raises
        it) exactly once, maybe before this returns, maybe later on a thread of the store's
        own, where it must return quickly (it delays the store's other answers)."""

    def versioning(self) -> str:
        """The bucket's versioning status: "Enabled", "Suspended" or "" (never enabled)."""

    def list_versions(self, prefix: str) -> Iterator[list[Version]]:
        """Every version and delete marker under ``prefix``, one page at a time."""

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        """Every object under ``prefix``, one page (one LIST request) at a time.

        No order is assumed: S3 lists in UTF-8 byte order, but SeaweedFS walks its directory
        tree (``a/-/x`` before ``a/- x``). Nor is a listing split into key ranges listed in
        parallel: SeaweedFS's StartAfter skips the whole subtree of a name it gives
        (``StartAfter=p/d1`` leaves out ``p/d1/x``), so range boundaries would lose keys."""

    def close(self) -> None:
        """Release connections."""


def open_store(folder: FolderConfig, connections: int | None = None, warm: bool = False) -> ObjectStore:
    """The folder's store, per its ``store`` setting. The SDK is imported here, on first use:
    boto3 and the Azure SDK each take a while to import, and a folder needs only one.
    ``connections``: the HTTP pool size, by default the folder's workers and a few more.
    ``warm``: the store will sync, not just answer a probe (S3: see S3Store)."""
    from .choices import StoreKind

    if folder.store == StoreKind.AZURE:
        from .azurestore import AzureBlobStore

        return AzureBlobStore(folder, connections=connections)
    from .s3store import S3Store

    return S3Store(folder, connections=connections, warm=warm)

"""PutObject, GetObject and ListObjectsV2 through awscrt's native S3 client: the data path
for the many small files (uploads, and restores), and the bucket listing.

botocore spends most of a small PutObject's time in Python (parameter validation, endpoint
rules, event hooks, signing, parsing), under the GIL, so its CPU per request caps how many small
files one process can send. awscrt signs and sends in C (the effect: docs/benchmarks/README.md).
A listing page is the same story in bulk: botocore builds its answer by walking the output
shape in Python, element by element, several times the cost of ElementTree's C parser that
:func:`syncd.s3wire.listing_page` uses. Everything else (multipart, copy, delete, head) stays on boto3:
those requests are few or large. Part of the S3 store implementation: only it imports client
libraries.
"""

from __future__ import annotations

import ctypes
import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import structlog
from awscrt.auth import (
    AwsCredentials,
    AwsCredentialsProvider,
    AwsSignatureType,
    AwsSignedBodyHeaderType,
    AwsSignedBodyValue,
    AwsSigningAlgorithm,
    AwsSigningConfig,
)
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
from awscrt.s3 import S3Client, S3Request, S3RequestTlsMode, S3RequestType, S3ResponseError, S3RetryConfig

from .s3wire import CrtFailure, listing_page, object_info, query_value, xml_text
from .store import NO_HEADERS, RemoteObject

log = structlog.get_logger("syncd.s3crt")

CLIENT_RETRIES = 2   # like botocore's standard mode (3 attempts); the journal retries after that
EVENT_LOOP_THREADS = 1
REAP_EVERY = 0.5         # how often overdue requests are looked for (seconds)
# Connections of the client for large GETs, shared by all of them: with the part size, what
# bounds the CRT's buffers (it holds each part whole until it is handed over in order).
LARGE_CONNECTIONS = 4
LARGE_MEMORY_LIMIT = 256 << 20  # the CRT's floor for memory_limit; its buffers stay far below with the above


# Per thread: whether keep_thread_state has pinned that thread's Python thread state.
_pinned = threading.local()


def keep_thread_state() -> None:
    """Keep the calling thread's Python thread state for the thread's lifetime.

    awscrt enters Python on the CRT's own threads (threads Python did not start) through
    PyGILState_Ensure. When the thread has no thread state, Ensure creates one and the
    matching Release destroys it, so each of the five or six callbacks of every request (signing,
    headers, body, progress, finish, shutdown) allocated a thread state and mapped a 16 KiB
    frame stack, then unmapped it: a munmap with a TLB shoot-down on every core, per
    callback. One Ensure left outstanding keeps the state; the callbacks' own
    Ensure/Release pairs then only count. This is the pattern CPython documents for repeated
    calls from one foreign thread (python/cpython gh-146219). Called with the GIL held, from a
    callback; once per thread."""
    if not getattr(_pinned, "held", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _pinned.held = True


class CrtPutter:
    """PutObject into one bucket, and a restore's whole-object GETs from it, through a
    (shared) :class:`CrtClient`; thread-safe."""

    def __init__(self, client: CrtClient, bucket: str, path_style: bool):
        self._client = client
        self._host = client.netloc if path_style else f"{bucket}.{client.netloc}"
        self._base = f"/{quote(bucket)}/" if path_style else "/"

    def put(self, key: str, data: bytes | bytearray, headers: Mapping[str, str],
            done: Callable[[str | CrtFailure], None]) -> None:
        """See :meth:`CrtClient.put`."""
        self._client.put(self._host, self._base + quote(key, safe="/~"), key, data, headers, done)

    def head_bucket(self) -> None:
        """HeadBucket: returns if the bucket is there and these credentials may use it, else
        raises CrtFailure (a HEAD's answer has no body: the status tells)."""
        self._client.call("HeadBucket", self._host, self._base, "", method="HEAD")

    def read(self, key: str) -> bytes:
        """GetObject of a small object, waiting for it: its body, or CrtFailure."""
        return self._client.call("GetObject", self._host, self._object_path(key, None), key)

    def write(self, key: str, data: bytes, headers: Mapping[str, str]) -> None:
        """PutObject, waiting for it: returns, or raises CrtFailure."""
        self._client.call("PutObject", self._host, self._object_path(key, None), key, "PUT", data, headers)

    def fetch(self, key: str, version: str | None,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        """See :meth:`CrtClient.fetch`."""
        return self._client.fetch(self._host, self._object_path(key, version), key, start, part_size)

    def fetch_whole(self, key: str, version: str | None,
                    done: Callable[[tuple[RemoteObject, list[bytes]] | CrtFailure], None]) -> None:
        """See :meth:`CrtClient.fetch_whole`."""
        self._client.fetch_whole(self._host, self._object_path(key, version), key, done)

    def _object_path(self, key: str, version: str | None) -> str:
        return self._base + quote(key, safe="/~") + ("" if version is None else f"?versionId={quote(version)}")

    def list_page(self, prefix: str, token: str | None) -> tuple[list[RemoteObject], str | None]:
        """One ListObjectsV2 page under ``prefix`` (after ``token``, the previous page's
        continuation token): its objects and the next token, None on the last page."""
        query = f"?list-type=2&encoding-type=url&prefix={query_value(prefix)}"
        if token is not None:
            query += f"&continuation-token={query_value(token)}"
        return listing_page(self._client.call("ListObjectsV2", self._host, self._base + query, prefix))


class CrtClient:
    """Signs and sends PutObject (and a restore's GetObject) requests on the CRT's own event loop; thread-safe, shared
    by every folder with the same endpoint, credentials and settings (one event-loop
    thread and one connection pool for all of them)."""

    def __init__(self, endpoint_url: str, region: str,
                 credentials: Callable[[], tuple[str, str, str | None]], timeout: float, sign_body: bool):
        url = urlsplit(endpoint_url)
        self.netloc = url.netloc
        self._timeout = timeout
        self._credentials = credentials
        self._lock = threading.Lock()
        self._inflight: dict[int, _InFlight] = {}
        self._next_token = 0
        self._reaper: threading.Thread | None = None
        loop = EventLoopGroup(EVENT_LOOP_THREADS)
        bootstrap = ClientBootstrap(loop, DefaultHostResolver(loop))
        provider = AwsCredentialsProvider.new_delegate(self._crt_credentials)
        signing = AwsSigningConfig(
            algorithm=AwsSigningAlgorithm.V4, signature_type=AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=provider, region=region, service="s3",
            use_double_uri_encode=False, should_normalize_uri_path=False,  # S3's SigV4 rules
            # The body is protected by the signed checksum header, as on the boto3 path.
            signed_body_value=None if sign_body else AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            signed_body_header_type=AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
        self._settings: dict[str, Any] = dict(
            bootstrap=bootstrap, region=region, signing_config=signing,
            tls_mode=S3RequestTlsMode.ENABLED if url.scheme == "https" else S3RequestTlsMode.DISABLED,
            connect_timeout_ms=10_000, retry_config=S3RetryConfig(max_retries=CLIENT_RETRIES))
        self._client = S3Client(**self._settings)
        self._large: dict[int, S3Client] = {}  # by part size: see _large_client
        self._signing = signing
        self._signed_as: tuple[tuple[str, str, str | None], AwsSigningConfig] | None = None

    def _crt_credentials(self) -> AwsCredentials:
        """The client's own provider, which awscrt requires. Every request carries its own
        signing config (:meth:`_signing_now`), so this is only a fallback that requests do
        not reach. A static provider here would ask an assumed role for keys while the
        client is built."""
        keep_thread_state()  # a callback on the CRT's thread: see keep_thread_state
        access_key, secret_key, token = self._credentials()
        return AwsCredentials(access_key, secret_key, token)

    def _signing_now(self) -> AwsSigningConfig:
        """The signing config of a request sent now: the current credentials as a static
        provider, made again only when they change (assumed-role credentials are refreshed by
        ``credentials``, on the sending thread). With the client's delegate provider alone,
        the CRT called into Python for every request to sign it: a GIL hand-off on its
        event-loop thread per small file."""
        current = self._credentials()
        with self._lock:
            if self._signed_as is None or self._signed_as[0] != current:
                access_key, secret_key, token = current
                provider = AwsCredentialsProvider.new_static(access_key, secret_key, token)
                self._signed_as = (current, self._signing.replace(credentials_provider=provider))
            return self._signed_as[1]

    def put(self, host: str, path: str, key: str, data: bytes | bytearray, headers: Mapping[str, str],
            done: Callable[[str | CrtFailure], None]) -> None:
        """Start one PutObject and return at once; ``done`` gets the ETag or a CrtFailure,
        exactly once, on the CRT's event-loop thread (or on this one if it cannot start).

        No thread waits for the answer: with one blocked worker per request, every answer
        meant a wake-up and a GIL hand-off to that worker, CPU paid again for every small file."""
        head = HttpHeaders([("Host", host), ("Content-Length", str(len(data))), *headers.items()])
        request = HttpRequest("PUT", path, head, io.BytesIO(data))
        etag = [""]

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: object) -> None:
            for name, value in headers:
                if name.lower() == "etag":
                    etag[0] = value.strip('"')

        self._send("PutObject", key, request, on_headers, None,
                   lambda failure: done(etag[0] if failure is None else failure))

    def get(self, host: str, path: str, key: str, on_headers: Callable[[list[tuple[str, str]]], None],
            on_body: Callable[[bytes], None], done: Callable[[CrtFailure | None], None], part_size: int = 0) -> None:
        """Start one GetObject of the whole object: ``on_headers`` gets the answer's headers
        (a 200), then ``on_body`` each piece of the body in order, then ``done`` None or the
        failure, all on the CRT's event-loop thread. Botocore's CPU per GET (parsing, event
        hooks, signing) caps how many small files a restore fetches per second, as for PUTs.

        With ``part_size``, a large object: the CRT's GetObject meta-request fetches it as
        ranged GETs of that size, LARGE_CONNECTIONS at a time, each part with If-Match on the
        first part's ETag (an object replaced meanwhile fails the request rather than mixing
        two objects' bytes), and hands over the parts in order, each whole. Parts are received
        in C; the CRT holds a bounded number of them (its requests in flight are a small
        multiple of its connections, and its one event-loop thread does not read while
        ``on_body`` runs). The deadline then counts from the last piece, not from the start."""
        request = HttpRequest("GET", path, HttpHeaders([("Host", host)]))
        expected = [0]
        token: list[int] = []

        def headers_seen(status_code: int, headers: list[tuple[str, str]], **_: object) -> None:
            if status_code < 300:
                on_headers(headers)

        def body_seen(chunk: bytes, offset: int = 0, **_: object) -> None:
            if part_size:
                # The meta-request delivers parts in order; hashing behind them relies on it.
                if offset != expected[0]:
                    raise CrtFailure(None, "", f"a part came at byte {offset}, expected {expected[0]}",
                                     transport="OutOfOrder")
                expected[0] += len(chunk)
                if token:
                    self._extend(token[0])
            on_body(chunk)

        token.append(self._send("GetObject", key, request, headers_seen, body_seen, done, part_size))

    def fetch(self, host: str, path: str, key: str,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        """GET the whole object, waiting for it: ``start`` gets what the headers say of it and
        returns what consumes the body's pieces (``part_size``: see :meth:`get`). Raises
        CrtFailure, or what those raised (the request is abandoned then). Returns only once
        the CRT is done with the request, so nothing is called after it returns."""
        info: list[RemoteObject] = []
        consume: list[Callable[[bytes], None]] = []
        raised: list[BaseException] = []
        failed: list[CrtFailure] = []
        finished = threading.Event()

        def on_headers(headers: list[tuple[str, str]]) -> None:
            try:
                info.append(object_info(key, headers))
                consume.append(start(info[0]))
            except BaseException as exc:
                raised.append(exc)
                raise  # the CRT ends the request

        def on_body(chunk: bytes) -> None:
            try:
                consume[0](chunk)
            except BaseException as exc:
                raised.append(exc)
                raise

        def done(failure: CrtFailure | None) -> None:
            if failure is not None:
                failed.append(failure)
            finished.set()

        self.get(host, path, key, on_headers, on_body, done, part_size)
        finished.wait()  # bounded: the reaper cancels a request past its timeout
        if raised:
            raise raised[0]
        if failed:
            raise failed[0]
        if not info:
            raise CrtFailure(None, "", "the answer had no headers", transport="NoHeaders")
        return info[0]

    def fetch_whole(self, host: str, path: str, key: str,
                    done: Callable[[tuple[RemoteObject, list[bytes]] | CrtFailure], None]) -> None:
        """Start one GetObject of a whole small object and return at once: ``done`` gets
        what the headers say of it and the body's pieces, or the CrtFailure, on the CRT's
        event-loop thread. No thread waits for the answer (see :meth:`put`): a restore keeps
        many of these in flight from a few threads."""
        headers: list[tuple[str, str]] = []
        pieces: list[bytes] = []

        def finished(failure: CrtFailure | None) -> None:
            if failure is None and not headers:
                failure = CrtFailure(None, "", "the answer had no headers", transport="NoHeaders")
            done(failure if failure is not None else (object_info(key, headers), pieces))

        self.get(host, path, key, headers.extend, pieces.append, finished)

    def call(self, operation: str, host: str, path: str, key: str, method: str = "GET", data: bytes = b"",
             headers: Mapping[str, str] = NO_HEADERS) -> bytes:
        """Send ``method`` ``path`` (with ``data`` and ``headers``, if any) and wait for the whole
        (small) answer: its body, or CrtFailure."""
        body: list[bytes] = []
        failed: list[CrtFailure] = []
        finished = threading.Event()

        def done(failure: CrtFailure | None) -> None:
            if failure is not None:
                failed.append(failure)
            finished.set()

        fields = [("Host", host), *headers.items()]
        if method == "PUT":
            fields.append(("Content-Length", str(len(data))))
        request = HttpRequest(method, path, HttpHeaders(fields), io.BytesIO(data) if method == "PUT" else None)
        self._send(operation, key, request, lambda **_: None, lambda chunk, **_: body.append(chunk), done)
        finished.wait()  # bounded: the reaper cancels a request past its timeout
        if failed:
            raise failed[0]
        return b"".join(body)

    def _send(self, operation: str, key: str, request: HttpRequest,
              on_headers: Callable[..., None], on_body: Callable[..., None] | None,
              done: Callable[[CrtFailure | None], None], part_size: int = 0) -> int:
        """Start the request; returns its token (see :meth:`_extend`). ``part_size``: a GET
        of a large object (see :meth:`get`)."""
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._inflight[token] = _InFlight(time.monotonic() + self._timeout)

        def on_done(error: BaseException | None = None, **_: object) -> None:
            keep_thread_state()
            with self._lock:
                entry = self._inflight.pop(token, None)
            timed_out = entry is not None and entry.timed_out
            try:
                done(None if error is None else self._failure(error, timed_out))
            except Exception:  # an exception must not reach the CRT's event loop
                log.exception("crt.callback_failed", key=key)

        try:
            signing = self._signing_now()
            if part_size:
                s3_request = self._large_client(part_size).make_request(
                    type=S3RequestType.GET_OBJECT, request=request, signing_config=signing, on_headers=on_headers,
                    on_body=on_body, on_done=on_done)
            else:
                s3_request = self._client.make_request(type=S3RequestType.DEFAULT, operation_name=operation,
                                                       request=request, signing_config=signing,
                                                       on_headers=on_headers, on_body=on_body, on_done=on_done)
        except Exception as exc:
            with self._lock:
                self._inflight.pop(token, None)
            done(CrtFailure(None, "", str(exc), transport=type(exc).__name__))
            return token
        with self._lock:
            entry = self._inflight.get(token)
            if entry is not None:
                entry.request = s3_request
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name="crt-timeouts", daemon=True)
                    self._reaper.start()
        return token

    def _large_client(self, part_size: int) -> S3Client:
        """The S3 client of large GETs (made on first use; same event loop, signing and
        retries). Its own because the CRT's buffer pool is sized by the client's part size
        (a request's smaller parts would each take a chunk of the client's), and the
        connection cap and the memory limit are the client's too."""
        with self._lock:
            client = self._large.get(part_size)
            if client is None:
                client = S3Client(**self._settings, part_size=part_size, memory_limit=LARGE_MEMORY_LIMIT,
                                  max_active_connections_override=LARGE_CONNECTIONS)
                self._large[part_size] = client
            return client

    def _extend(self, token: int) -> None:
        """A large GET made progress: its deadline counts from now (a whole-object deadline
        would cut a large download on a slow link)."""
        with self._lock:
            entry = self._inflight.get(token)
            if entry is not None and not entry.timed_out:
                entry.deadline = time.monotonic() + self._timeout

    def _failure(self, error: BaseException, timed_out: bool) -> CrtFailure:
        if isinstance(error, CrtFailure):
            return error
        if timed_out:
            return CrtFailure(None, "RequestTimeout", f"no answer within {self._timeout:g}s", timed_out=True)
        if isinstance(error, S3ResponseError):
            text = (error.body or b"").decode("utf-8", "replace")
            code = xml_text(text, "Code")
            return CrtFailure(int(error.status_code or 0), code, xml_text(text, "Message") or code)
        if isinstance(error, AwsCrtError):
            return CrtFailure(None, "", error.message, transport=error.name)
        return CrtFailure(None, "", str(error), transport=type(error).__name__)

    def _reap(self) -> None:
        """Cancel requests past their deadline: the CRT has no read timeout, and a server that
        never answers must not hold a slot of the folder's in-flight limit. Runs only while
        requests are in flight, so an idle daemon has no timer thread waking up."""
        while True:
            time.sleep(REAP_EVERY)
            now = time.monotonic()
            with self._lock:
                if not self._inflight:
                    self._reaper = None
                    return
                overdue = [e for e in self._inflight.values()
                           if e.deadline <= now and e.request is not None and not e.timed_out]
                for e in overdue:
                    e.timed_out = True
            for e in overdue:
                assert e.request is not None
                e.request.cancel()  # the CRT then calls on_done with an error


@dataclass
class _InFlight:
    deadline: float
    request: S3Request | None = None
    timed_out: bool = False

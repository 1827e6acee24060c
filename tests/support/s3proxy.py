"""An HTTP/1.1 reverse proxy in front of an S3 server that counts requests and injects faults.

Tests put it between the daemon (or boto3) and SeaweedFS to assert how many requests of each S3
operation were made, and to simulate throttling, server errors, dropped connections, hung
requests and an unreachable endpoint.

Requests and responses are forwarded byte for byte (SigV4 signs the Host header and the body
framing); the only exception is that the proxy answers ``Expect: 100-continue`` itself, so
boto3 sends the body at once instead of waiting a second for the upstream's interim response.
Bodies are streamed, never buffered whole. One thread serves each client connection and holds
at most one upstream connection, so client keep-alive maps onto upstream keep-alive.
"""

from __future__ import annotations

import io
import itertools
import random
import re
import select
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from types import TracebackType
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

FAULT_KINDS = frozenset({"503", "500", "403", "reset", "reset-request", "reset-response", "stall", "lose-response"})
OPERATIONS = frozenset(
    """
    PutObject CopyObject UploadPart UploadPartCopy CreateMultipartUpload CompleteMultipartUpload
    AbortMultipartUpload ListParts ListMultipartUploads DeleteObjects DeleteObject GetObject
    HeadObject HeadBucket ListObjectsV2 ListObjects ListBuckets CreateBucket DeleteBucket Other
    OwnerMarker
    """.split()
)
# Azure Blob Storage's operations, for a proxy in front of Azurite (classify_azure).
AZURE_OPERATIONS = frozenset(
    """
    PutBlob PutBlock PutBlockList GetBlockList GetBlob GetBlobProperties SetBlobProperties
    SetBlobMetadata CopyBlob DeleteBlob BlobBatch ListBlobs GetContainerProperties CreateContainer
    """.split()
)
# syncd's owner marker (``<prefix>.syncd/owner``): its reads and writes are bookkeeping, counted
# apart so that tests can count the requests made for the mirrored files exactly.
MARKER_SUFFIX = ".syncd/owner"
CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
MAX_HEADERS = 200
DEFAULT_STALL_SECONDS = 30.0
MAX_SEEN = 100_000  # requests whose heads are kept for requests() (oldest dropped first)
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")

# Query parameters that only shape a listing; anything else on a bucket GET is a sub-resource
# (?location, ?versioning, ...) and counts as Other.
LIST_PARAMS = frozenset(
    """
    prefix delimiter marker max-keys encoding-type list-type continuation-token start-after
    fetch-owner x-id
    """.split()
)
# Query parameters that do not change which operation an object request is.
OBJECT_PARAMS = frozenset({"versionId", "partNumber", "x-id"}) | {
    f"response-{h}"
    for h in ("content-type", "content-language", "expires", "cache-control", "content-disposition", "content-encoding")
}
ERRORS = {
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation name (one of OPERATIONS) of a path-style request (``/bucket[/key]``)."""
    split = urlsplit(target)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    bucket, _, key = split.path.lstrip("/").partition("/")
    method = method.upper()
    if not bucket:
        return "ListBuckets" if method == "GET" and not query else "Other"
    if not key:
        return _classify_bucket(method, query)
    if unquote(key) == MARKER_SUFFIX or unquote(key).endswith("/" + MARKER_SUFFIX):
        return "OwnerMarker"
    return _classify_object(method, query, "x-amz-copy-source" in headers)


def classify_azure(method: str, target: str, headers: dict[str, str]) -> str:
    """The Blob Storage operation name (one of AZURE_OPERATIONS, or Other, or OwnerMarker) of a
    path-style request (``/account/container[/blob]``, as Azurite is addressed)."""
    split = urlsplit(target)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    _account, _, rest = split.path.lstrip("/").partition("/")
    container, _, blob = rest.partition("/")
    method = method.upper()
    comp = query.get("comp", "")
    if not container:
        return "Other"
    if not blob:
        if comp == "list":
            return "ListBlobs"
        if comp == "batch":
            return "BlobBatch"
        if query.get("restype") == "container" and not comp:
            return {"PUT": "CreateContainer", "GET": "GetContainerProperties",
                    "HEAD": "GetContainerProperties"}.get(method, "Other")
        return "Other"
    if unquote(blob) == MARKER_SUFFIX or unquote(blob).endswith("/" + MARKER_SUFFIX):
        return "OwnerMarker"
    if method == "PUT":
        if comp:
            return {"block": "PutBlock", "blocklist": "PutBlockList", "metadata": "SetBlobMetadata",
                    "properties": "SetBlobProperties"}.get(comp, "Other")
        return "CopyBlob" if "x-ms-copy-source" in headers else "PutBlob"
    if method == "GET":
        return "GetBlockList" if comp == "blocklist" else "GetBlob" if not comp else "Other"
    return {"HEAD": "GetBlobProperties", "DELETE": "DeleteBlob"}.get(method, "Other") if not comp else "Other"


def _classify_bucket(method: str, query: dict[str, str]) -> str:
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        if query.keys() <= LIST_PARAMS:
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        return "Other"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if query:
        return "Other"
    return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, "Other")


def _classify_object(method: str, query: dict[str, str], copy: bool) -> str:
    if "uploadId" in query:
        if method == "PUT" and "partNumber" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload", "GET": "ListParts"}.get(
            method, "Other"
        )
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "Other"
    if not query.keys() <= OBJECT_PARAMS:
        return "Other"
    if method == "PUT":
        return "CopyObject" if copy else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, "Other")


@dataclass(frozen=True)
class SeenRequest:
    """A request's head as the proxy received it (header names lower-case)."""

    op: str
    method: str
    path: str
    headers: dict[str, str]

    @property
    def access_key(self) -> str:
        match = _CREDENTIAL.search(self.headers.get("authorization", ""))
        return match.group(1) if match else ""


class _Closed(Exception):
    """The client connection must be closed (peer went away or a fault ended it)."""


@dataclass
class _Message:
    """A parsed HTTP head; ``raw`` is forwarded untouched."""

    raw: bytes
    start: list[str]  # [method, target, version] or [version, status, reason]
    headers: dict[str, str]

    @property
    def version(self) -> str:
        return self.start[0] if self.start[0].startswith("HTTP/") else self.start[-1]

    @classmethod
    def read(cls, rfile: io.BufferedReader) -> _Message | None:
        """Read one head; None on a clean EOF before its first byte."""
        lines: list[bytes] = []
        while True:
            line = rfile.readline(MAX_LINE)
            if not line:
                if lines:
                    raise _Closed("EOF inside a message head")
                return None
            if not line.endswith(b"\n") or len(lines) > MAX_HEADERS:
                raise _Closed("malformed message head")
            if not lines and line in (b"\r\n", b"\n"):
                continue  # RFC 9112 2.2: tolerate empty lines before a request line
            lines.append(line)
            if line in (b"\r\n", b"\n"):
                break
        text = [line.decode("latin-1").rstrip("\r\n") for line in lines[:-1]]
        headers: dict[str, str] = {}
        for field_line in text[1:]:
            name, _, value = field_line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = text[0].split(" ", 2)
        if len(start) < 2 or (start[0].startswith("HTTP/") and not start[1].isdigit()):
            raise _Closed("malformed start line")
        return cls(b"".join(lines), start, headers)

    def has_token(self, header: str, token: str) -> bool:
        return token in (t.strip().lower() for t in self.headers.get(header, "").split(","))

    def framing(self, method: str) -> tuple[str, int]:
        """How the body after this head ends (RFC 9112 6.3): ("none" | "length" | "chunked" | "close", n).

        ``method`` is the request's method, for both a request and its response.
        """
        is_request = not self.start[0].startswith("HTTP/")
        if not is_request:
            status = int(self.start[1])
            if method == "HEAD" or status in (204, 304) or status < 200:
                return "none", 0
        if "transfer-encoding" in self.headers:
            if self.has_token("transfer-encoding", "chunked"):
                return "chunked", 0
            if is_request:
                raise _Closed("request body of unknown length")
            return "close", 0
        if "content-length" in self.headers:
            try:
                return "length", int(self.headers["content-length"])
            except ValueError:
                raise _Closed("bad Content-Length") from None
        return ("none", 0) if is_request else ("close", 0)

    def keep_alive(self) -> bool:
        if self.has_token("connection", "close"):
            return False
        return self.version != "HTTP/1.0" or self.has_token("connection", "keep-alive")


def _body_pieces(rfile: io.BufferedReader, kind: str, length: int = 0) -> Iterator[bytes]:
    """Yield the raw bytes of a body, framing included, as they arrive."""
    if kind == "none":
        return
    if kind == "length":
        remaining = length
        while remaining:
            data = rfile.read1(min(remaining, CHUNK))
            if not data:
                raise _Closed("EOF inside a body")
            remaining -= len(data)
            yield data
    elif kind == "chunked":
        while True:
            line = rfile.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                raise _Closed("bad chunk size line")
            yield line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Closed("bad chunk size") from None
            if size == 0:
                break
            yield from _body_pieces(rfile, "length", size + 2)  # data + CRLF
        while True:  # trailer section up to the empty line
            line = rfile.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                raise _Closed("bad trailer line")
            yield line
            if line in (b"\r\n", b"\n"):
                break
    else:
        while data := rfile.read1(CHUNK):
            yield data


def _abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed server or middlebox would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _error_response(kind: str, method: str, path: str) -> bytes:
    status, reason, code, message = ERRORS[kind]
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{escape(path)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Server: s3proxy\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


class _Upstream:
    """One keep-alive connection to the upstream server, reopened when the server dropped it."""

    def __init__(self, proxy: S3Proxy) -> None:
        self._proxy = proxy
        self.sock: socket.socket | None = None
        self.rfile: io.BufferedReader | None = None

    def ensure(self) -> tuple[socket.socket, io.BufferedReader]:
        # An idle keep-alive connection is readable only if the server closed it (or misbehaved).
        if self.sock is not None and select.select([self.sock], [], [], 0)[0]:
            self.close()
        if self.sock is None or self.rfile is None:
            self.sock = socket.create_connection(self._proxy.upstream_address, timeout=self._proxy.upstream_timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.rfile = self.sock.makefile("rb")
            self._proxy._track(self.sock)
        return self.sock, self.rfile

    def close(self) -> None:
        if self.sock is not None:
            self._proxy._untrack(self.sock)
            self.sock.close()
        if self.rfile is not None:
            self.rfile.close()
        self.sock = self.rfile = None


class S3Proxy:
    """Counting, fault-injecting reverse proxy; ``endpoint`` is what the client should use."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 120.0,
                 classifier: Callable[[str, str, dict[str, str]], str] = classify) -> None:
        """``classifier``: names a request's operation (``classify_azure`` in front of Azurite)."""
        self._classify = classifier
        split = urlsplit(upstream)
        if split.scheme != "http" or split.hostname is None or split.port is None:
            raise ValueError(f"upstream must look like http://host:port, got {upstream!r}")
        self.upstream_address = (split.hostname, split.port)
        self.upstream_timeout = upstream_timeout
        self.port = 0
        self.stall_seconds = DEFAULT_STALL_SECONDS
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reserve: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._delay = 0.0
        self._fault_rate = 0.0
        self._fault_kinds: list[str] = []
        self._fault_ops: frozenset[str] | None = None
        self._rng = random.Random()
        self.reset_counts()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Proxy:
        # A bound, never-listening socket holds the port while refuse() has closed the listener,
        # so nobody else can take it and refuse(False) comes back on the same port.
        self._reserve = self._new_socket()
        self._reserve.bind(("127.0.0.1", 0))
        self.port = self._reserve.getsockname()[1]
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._unlisten()
        self._drop_connections()
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def refuse(self, refusing: bool = True) -> None:
        """Refuse new connections (ECONNREFUSED) and drop open ones; ``refuse(False)`` serves again."""
        with self._lock:
            listening = self._listener is not None
        if refusing and listening:
            self._unlisten()
            self._drop_connections()
        elif not refusing and not listening and not self._stopped.is_set():
            self._listen()

    # -- knobs -------------------------------------------------------------------------------

    def set_faults(
        self, rate: float, kinds: Iterable[str], ops: Iterable[str] | None = None, seed: int | None = None
    ) -> None:
        """Fail a ``rate`` fraction of requests (of ``ops`` only, if given) with one of ``kinds``.

        Kinds: "503" (SlowDown) and "500" (InternalError) without forwarding; "reset-request"
        (RST part-way through the request body, so upstream never completes it); "reset-response"
        (forward, then RST part-way through the response: the operation happened but the client
        cannot tell); "reset" (either, at random); "stall" (swallow the request and answer
        nothing; the connection is closed after ``stall_seconds``); "lose-response" (forward,
        then drop the whole answer: the operation happened, and the client hears nothing until
        the connection is closed after ``stall_seconds``); "403" (AccessDenied, not forwarded).
        """
        kinds = list(kinds)
        op_set = None if ops is None else frozenset(ops)
        unknown = (op_set or set()) - OPERATIONS - AZURE_OPERATIONS
        if not kinds or set(kinds) - FAULT_KINDS or unknown or not 0 <= rate <= 1:
            raise ValueError(f"bad fault spec: rate={rate}, kinds={kinds}, ops={op_set}")
        with self._lock:
            self._fault_rate = rate
            self._fault_kinds = kinds
            self._fault_ops = op_set
            self._rng = random.Random(seed)

    def clear_faults(self) -> None:
        with self._lock:
            self._fault_rate = 0.0

    def set_delay(self, seconds: float) -> None:
        """Add fixed latency before each request is forwarded (simulates a distant endpoint)."""
        with self._lock:
            self._delay = seconds

    # -- statistics --------------------------------------------------------------------------

    def reset_counts(self) -> None:
        with self._lock:
            self._counts: Counter[str] = Counter()
            self._bytes: Counter[str] = Counter()
            self._statuses: dict[str, Counter[int]] = {}
            self._injected: dict[str, Counter[str]] = {}
            self._streamed: Counter[str] = Counter()
            self._timeline: list[tuple[float, str, int]] = []
            self._seen: list[SeenRequest] = []

    def counts(self) -> dict[str, int]:
        """Requests per operation that got a response status from upstream."""
        with self._lock:
            return dict(self._counts)

    def body_bytes(self) -> dict[str, int]:
        """Request body bytes per operation as sent on the wire (chunk framing included)."""
        with self._lock:
            return dict(self._bytes)

    def streamed_bytes(self) -> dict[str, int]:
        """Request body bytes per operation forwarded so far, counted as they pass, including
        requests cut off part-way (a client killed mid-upload) that ``body_bytes`` never sees."""
        with self._lock:
            return dict(self._streamed)

    def timeline(self) -> list[tuple[float, str, int]]:
        """(time.monotonic() when the response status arrived, operation, status) per request."""
        with self._lock:
            return list(self._timeline)

    def requests(self, op: str | None = None) -> list[SeenRequest]:
        """Every request received (faulted ones too), in arrival order; only ``op``'s if given."""
        with self._lock:
            return [r for r in self._seen if op is None or r.op == op]

    def access_keys(self) -> Counter[str]:
        """Requests per access key id they were signed with (SigV4 ``Credential=``); "" unsigned."""
        return Counter(r.access_key for r in self.requests())

    def statuses(self) -> dict[str, Counter[int]]:
        """Upstream response status codes per operation."""
        with self._lock:
            return {op: Counter(c) for op, c in self._statuses.items()}

    def injected(self) -> dict[str, Counter[str]]:
        """Faults injected per operation, by kind.

        Only "reset-response" requests reached upstream, so only those are also in ``counts()``.
        """
        with self._lock:
            return {op: Counter(c) for op, c in self._injected.items()}

    def _record(self, op: str, status: int, body: int) -> None:
        with self._lock:
            self._counts[op] += 1
            self._bytes[op] += body
            self._timeline.append((time.monotonic(), op, status))
            self._statuses.setdefault(op, Counter())[status] += 1

    def _note(self, request: SeenRequest) -> None:
        with self._lock:
            self._seen.append(request)
            if len(self._seen) > MAX_SEEN:
                del self._seen[: MAX_SEEN // 10]

    def _pick_fault(self, op: str) -> str | None:
        with self._lock:
            if self._fault_rate <= 0 or (self._fault_ops is not None and op not in self._fault_ops):
                return None
            if self._rng.random() >= self._fault_rate:
                return None
            kind = self._rng.choice(self._fault_kinds)
            if kind == "reset":
                kind = self._rng.choice(["reset-request", "reset-response"])
            self._injected.setdefault(op, Counter())[kind] += 1
            return kind

    # -- sockets -----------------------------------------------------------------------------

    @staticmethod
    def _new_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock

    def _listen(self) -> None:
        listener = self._new_socket()
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        thread = threading.Thread(target=self._accept_loop, args=(listener,), name="s3proxy-accept", daemon=True)
        with self._lock:
            self._listener = listener
            self._accept_thread = thread
        thread.start()

    def _unlisten(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            thread, self._accept_thread = self._accept_thread, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
            except OSError:
                pass
            listener.close()
        if thread is not None:
            thread.join(5)

    def _drop_connections(self) -> None:
        """Shut down every open client and upstream socket; their threads then clean up."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(client,), name="s3proxy-conn", daemon=True)
            with self._lock:
                # Checked under the lock so refuse()/stop() cannot miss a just-accepted socket.
                current = self._listener is listener
                if current:
                    self._sockets.add(client)
                    self._threads.add(thread)
            if not current:
                client.close()
                return
            thread.start()

    # -- request handling --------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        rfile = client.makefile("rb")
        upstream = _Upstream(self)
        aborted = False
        try:
            while not self._stopped.is_set():
                if not self._handle(client, rfile, upstream):
                    break
        except _Closed:
            pass
        except _Aborted:
            aborted = True
        except OSError:
            pass
        finally:
            upstream.close()
            rfile.close()
            self._untrack(client)
            if aborted:
                _abort(client)
            else:
                client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handle(self, client: socket.socket, rfile: io.BufferedReader, upstream: _Upstream) -> bool:
        """Serve one request; return whether the client connection may be reused."""
        head = _Message.read(rfile)
        if head is None:
            return False
        if len(head.start) != 3:
            raise _Closed("malformed request line")
        method, target, _ = head.start
        if head.has_token("expect", "100-continue"):
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        op = self._classify(method, target, head.headers)
        self._note(SeenRequest(op, method, urlsplit(target).path, head.headers))
        body = _body_pieces(rfile, *head.framing(method))
        with self._lock:
            delay = self._delay
        if delay and self._stopped.wait(delay):
            return False
        fault = self._pick_fault(op)
        if fault in ERRORS or fault == "stall":
            for _ in body:  # drain, so the connection stays in sync for the next request
                pass
            if fault == "stall":
                self._stopped.wait(self.stall_seconds)
                return False
            client.sendall(_error_response(fault, method, urlsplit(target).path))
            return head.keep_alive()
        if fault == "reset-request":
            # Upstream gets at most a truncated request, so the operation never takes effect.
            for piece in body:
                upstream.ensure()[0].sendall(head.raw + piece[: len(piece) // 2])
                break
            upstream.close()
            raise _Aborted
        up, up_rfile = upstream.ensure()
        sent, body_complete = self._send_request(up, head, self._streaming(op, body))
        response = self._read_final_head(up_rfile)
        if response is None:
            upstream.close()
            raise _Closed("upstream closed without a response")
        self._record(op, int(response.start[1]), sent)
        kind, length = response.framing(method)
        pieces = _body_pieces(up_rfile, kind, length)
        if fault == "reset-response":
            # The operation took effect upstream, but the client cannot know: cut the body
            # half-way through its first piece, or the head if there is no body.
            first = next(pieces, b"")
            client.sendall(response.raw + first[: len(first) // 2] if first else response.raw[: len(response.raw) // 2])
            upstream.close()
            raise _Aborted
        if fault == "lose-response":
            # The operation took effect upstream, and its answer never arrives: the client
            # waits, then sees the connection close (or times out first).
            for _ in pieces:
                pass
            upstream.close()
            self._stopped.wait(self.stall_seconds)
            return False
        client.sendall(response.raw)
        for piece in pieces:
            client.sendall(piece)
        reusable = response.keep_alive() and kind != "close"
        if not (reusable and body_complete):
            upstream.close()
        # An unread rest of the client's body would be parsed as its next request.
        return reusable and body_complete and head.keep_alive()

    def _streaming(self, op: str, body: Iterator[bytes]) -> Iterator[bytes]:
        for piece in body:
            with self._lock:
                self._streamed[op] += len(piece)
            yield piece

    @staticmethod
    def _send_request(up: socket.socket, head: _Message, body: Iterator[bytes]) -> tuple[int, bool]:
        """Forward head and body; return (body bytes sent, whether the whole body was read).

        Only upstream send errors are caught here; a client error while reading the body ends
        the connection.
        """
        sent = -len(head.raw)
        for piece in itertools.chain([head.raw], body):
            try:
                up.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return max(sent, 0), False  # upstream answered early and hung up; relay its answer
            sent += len(piece)
        return sent, True

    @staticmethod
    def _read_final_head(rfile: io.BufferedReader) -> _Message | None:
        """Read the response head, skipping interim 1xx (we already sent 100 Continue ourselves)."""
        while True:
            try:
                response = _Message.read(rfile)
            except OSError:
                return None
            if response is None or not response.start[1].startswith("1"):
                return response


class _Aborted(Exception):
    """The client connection must be reset (RST), not closed."""

"""PutObject through awscrt's native S3 client: the data path for the many small files.

botocore spends most of a small PutObject's time in Python (parameter validation, endpoint
rules, event hooks, signing, parsing), under the GIL, so its CPU per request caps how many small
files one process can send. awscrt signs and sends in C (the effect: docs/benchmarks/README.md).
Everything else (multipart, copy, delete, list, head) stays on boto3: those requests are few or
large. Part of the S3 store implementation: only it imports client libraries.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

log = structlog.get_logger("syncd.s3crt")

CLIENT_RETRIES = 2   # like botocore's standard mode (3 attempts); the journal retries after that
EVENT_LOOP_THREADS = 1
REAP_EVERY = 0.5         # how often overdue requests are looked for (seconds)


@dataclass
class CrtFailure(Exception):
    """A PutObject that failed: the server's answer (status, code, message) or, with no
    answer, the CRT error's name (connection refused, timed out, ...)."""

    status: int | None
    code: str
    message: str
    transport: str = ""
    timed_out: bool = False

    def __str__(self) -> str:
        return self.message or self.code or self.transport


class CrtPutter:
    """PutObject into one bucket through a (shared) :class:`CrtClient`; thread-safe."""

    def __init__(self, client: CrtClient, bucket: str, path_style: bool):
        self._client = client
        self._host = client.netloc if path_style else f"{bucket}.{client.netloc}"
        self._base = f"/{quote(bucket)}/" if path_style else "/"

    def put(self, key: str, data: bytes | bytearray, headers: Mapping[str, str],
            done: Callable[[str | CrtFailure], None]) -> None:
        """See :meth:`CrtClient.put`."""
        self._client.put(self._host, self._base + quote(key, safe="/~"), key, data, headers, done)


class CrtClient:
    """Signs and sends PutObject requests on the CRT's own event loop; thread-safe, shared
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
        self._client = S3Client(
            bootstrap=bootstrap, region=region, signing_config=signing,
            tls_mode=S3RequestTlsMode.ENABLED if url.scheme == "https" else S3RequestTlsMode.DISABLED,
            connect_timeout_ms=10_000, retry_config=S3RetryConfig(max_retries=CLIENT_RETRIES))

    def _crt_credentials(self) -> AwsCredentials:
        access_key, secret_key, token = self._credentials()
        return AwsCredentials(access_key, secret_key, token)

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

        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._inflight[token] = _InFlight(time.monotonic() + self._timeout)

        def on_done(error: BaseException | None = None, **_: object) -> None:
            with self._lock:
                entry = self._inflight.pop(token, None)
            timed_out = entry is not None and entry.timed_out
            try:
                done(etag[0] if error is None else self._failure(error, timed_out))
            except Exception:  # an exception must not reach the CRT's event loop
                log.exception("crt.callback_failed", key=key)

        try:
            s3_request = self._client.make_request(type=S3RequestType.DEFAULT, operation_name="PutObject",
                                                   request=request, on_headers=on_headers, on_done=on_done)
        except Exception as exc:
            with self._lock:
                self._inflight.pop(token, None)
            done(CrtFailure(None, "", str(exc), transport=type(exc).__name__))
            return
        with self._lock:
            entry = self._inflight.get(token)
            if entry is not None:
                entry.request = s3_request
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name="crt-timeouts", daemon=True)
                    self._reaper.start()

    def _failure(self, error: BaseException, timed_out: bool) -> CrtFailure:
        if timed_out:
            return CrtFailure(None, "RequestTimeout", f"no answer within {self._timeout:g}s", timed_out=True)
        if isinstance(error, S3ResponseError):
            text = (error.body or b"").decode("utf-8", "replace")
            code = _xml(text, "Code")
            return CrtFailure(int(error.status_code or 0), code, _xml(text, "Message") or code)
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


def _xml(text: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return match.group(1).strip() if match else ""

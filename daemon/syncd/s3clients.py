"""The S3 clients, shared: folders with the same endpoint, credentials and client settings use
one botocore client and one CRT client (part of the S3 store implementation).

A botocore session loads the S3 service model anew and every client holds its own connection
pool, and a CRT client its own event-loop thread: a hundred folders on one endpoint paid
that a hundred times (issue 21). botocore clients and awscrt's S3 client are thread-safe, so a
client is built once per distinct setting (:func:`acquire`) and released by its last user.
Requests are still counted per folder: each call carries its store's counter to the event
hook (:class:`Counted`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from datetime import datetime
from functools import partial
from typing import Any

# See s3store: botocore's CRT signer copies every body; BOTO_DISABLE_CRT is read once, when
# botocore is first imported.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")

import botocore.handlers  # noqa: E402 - after the opt-out above
import botocore.session  # noqa: E402
import botocore.utils  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402

from .choices import AddressingStyle, Checksum  # noqa: E402
from .config import FolderConfig  # noqa: E402
from .s3crt import CrtClient  # noqa: E402
from .s3errors import classify  # noqa: E402
from .s3role import assume_role_session  # noqa: E402
from .store import RequestCounts  # noqa: E402

# A private call parameter: the calling store's request counter, taken out of the parameters
# (before botocore validates them) into the request's context, where the response hook finds it.
_COUNTER = "SyncdRequestCounter"
_CONTEXT = "syncd_requests"


def _timestamp(value: Any) -> datetime:
    """botocore's timestamp parser with a fast path for S3's ISO 8601 form
    (``2026-12-01T10:50:49.000Z``): botocore parses every listing entry's LastModified with
    dateutil, which costs more than the rest of a LIST page together."""
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    parsed: datetime = botocore.utils.parse_timestamp(value)
    return parsed


def _fast_timestamps(session: botocore.session.Session) -> None:
    """Make the clients of ``session`` parse timestamps with :func:`_timestamp`."""
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)


# The answer a complete ListObjectsV2 body ends with.
_LISTING_END = b"</ListBucketResult>"


def _cheap_listing_check(client: Any) -> None:
    """botocore parses every S3 answer a second time (``_handle_200_error``) to find an
    ``<Error>`` document sent with status 200 (S3 does so for copies and
    CompleteMultipartUpload) or a body cut short, and makes both a retried 500. For
    ListObjectsV2, a rebuild's thousands of pages, looking at how the body ends catches both
    at no cost; every other operation keeps botocore's check."""
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is None:  # another botocore: its own handling stays as it is
        return
    client.meta.events.unregister("before-parse.s3.*", check)

    def handler(operation_model: Any, response_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if operation_model.name != "ListObjectsV2":
            check(operation_model, response_dict, **kwargs)
        elif response_dict and response_dict.get("status_code") == 200:
            body = response_dict.get("body") or b""
            if not body.rstrip().endswith(_LISTING_END):
                response_dict["status_code"] = 500  # retried like botocore's own finding

    client.meta.events.register_first("before-parse.s3.*", handler)


def addressing_of(folder: FolderConfig) -> AddressingStyle:
    addressing = folder.addressing_style
    if addressing == AddressingStyle.AUTO and folder.endpoint_url:
        addressing = AddressingStyle.PATH  # S3-compatible servers on an IP or localhost need path style
    return addressing


def client_key(folder: FolderConfig) -> Hashable:
    """Everything a client is built from: folders equal in these share it."""
    return (folder.endpoint_url, folder.region, folder.profile, folder.role_arn, folder.role_session_name,
            folder.role_external_id, folder.role_duration, folder.sts_endpoint_url, addressing_of(folder),
            folder.request_timeout, folder.workers, folder.checksum == Checksum.OFF, bool(folder.bandwidth))


class Shared:
    """One client set and how many stores use it.

    The botocore client is built on first use: a restore of current objects sends every
    request through the CRT, and building the client (loading the S3 service model and its
    endpoint rules) was a tenth of a second of its start-up spent for nothing."""

    def __init__(self, key: Hashable, credentials: Any, make_client: Callable[[], Any],
                 crt: CrtClient | None = None):
        self.key = key
        self.credentials = credentials  # botocore credentials (refreshing for an assumed role), or None
        self.crt = crt                  # the CRT data path for small PUTs, or None (see _crt_client)
        self.users = 0
        self._make_client = make_client
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._warming = False

    @property
    def client(self) -> Any:
        """The botocore client, built by the first caller (others wait for it)."""
        return self.build()

    def build(self) -> Any:
        """See :attr:`client`."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def prewarm(self) -> None:
        """Build the botocore client on a thread of its own, once, unless it is built: the
        daemon's stores are opened ``warm`` and call this (their probe goes through the CRT),
        so that the build's CPU overlaps
        the probe's network waits instead of delaying its first request. A failed build is
        not reported here: the first caller that needs the client builds it again and gets
        the error."""
        with self._client_lock:
            if self._client is not None or self._warming:
                return
            self._warming = True
        threading.Thread(target=self._build_quietly, name="s3-client-build", daemon=True).start()

    def _build_quietly(self) -> None:
        try:
            self.build()
        except Exception:  # noqa: S110 - reported by the caller that needs it (see prewarm)
            pass

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()


_lock = threading.Lock()
_shared: dict[Hashable, Shared] = {}


def acquire(folder: FolderConfig, clock: Callable[[], datetime] | None = None,
            connections: int | None = None) -> Shared:
    """The client set for ``folder``, built on first use. ``clock`` (tests: fake time for
    assumed-role credentials) gets a set of its own; ``connections`` (a restore's threads)
    raises the HTTP pool's size."""
    key = (client_key(folder), connections) if clock is None else object()
    with _lock:  # building a client takes ~0.1 s; two folders at once must not build two
        shared = _shared.get(key)
        if shared is None:
            shared = _build(folder, key, clock, connections)
            if clock is None:
                _shared[key] = shared
        shared.users += 1
        return shared


def release(shared: Shared) -> None:
    with _lock:
        shared.users -= 1
        if shared.users > 0:
            return
        if _shared.get(shared.key) is shared:
            del _shared[shared.key]
    shared.close()


def _build(folder: FolderConfig, key: Hashable, clock: Callable[[], datetime] | None,
           connections: int | None) -> Shared:
    boto_config = BotoConfig(
        region_name=folder.region,
        connect_timeout=10,
        read_timeout=folder.request_timeout,
        # Shared by the folders of this setting: room for the shared transfer threads, the
        # parts of large files and a reconcile pass's HEADs without discarding connections.
        max_pool_connections=max(connections or 0, 2 * folder.workers + 8),
        tcp_keepalive=True,
        # Few quick client-side retries for blips; the journal's own backoff (capped at
        # minutes, never dropping a change) handles outages, so botocore's retry quota
        # draining during a long outage does not matter.
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": addressing_of(folder).value,
            # Over plain HTTP botocore would SHA-256 every body for the signature: a second
            # read of each part (and a third hash). The signed checksum header we send
            # already lets the server reject a damaged or altered body; with
            # `checksum: off` there is no such header, so the body stays signed.
            "payload_signing_enabled": folder.checksum == Checksum.OFF},
        # We send our own integrity checks (config 'checksum'); some S3-compatible
        # stores reject the CRC headers newer boto3 sends by default (boto3 issue 4392).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        if folder.role_arn:
            session = assume_role_session(folder, clock)
        else:
            # botocore's own session, not boto3's: boto3 adds only its transfer manager
            # (s3transfer, imported with it), which is needed for nothing but the copy of an
            # object over 5 GiB (S3Store.set_meta imports it then), and importing it delayed
            # every start's first request.
            session = botocore.session.Session(profile=folder.profile)
        _fast_timestamps(session)
        credentials = session.get_credentials()
    except Exception as exc:  # profile missing and the like
        raise classify(exc, bucket=folder.bucket) from exc

    def make_client() -> Any:
        try:
            client: Any = session.create_client("s3", region_name=folder.region, endpoint_url=folder.endpoint_url,
                                                config=boto_config)
        except Exception as exc:
            raise classify(exc, bucket=folder.bucket) from exc
        _cheap_listing_check(client)
        client.meta.events.register("provide-client-params.s3", _take_counter)
        client.meta.events.register("response-received.s3", _count)
        return client

    shared = Shared(key, credentials, make_client)
    endpoint, region = folder.endpoint_url, folder.region
    if endpoint is None or region is None:
        # The CRT needs both: what botocore's endpoint rules and region chain (environment,
        # profile) resolve, as its client has them.
        endpoint, region = shared.client.meta.endpoint_url, shared.client.meta.region_name
    shared.crt = _crt_client(credentials, endpoint, region or "us-east-1", folder)
    return shared


def _crt_client(credentials: Any, endpoint_url: str, region: str, folder: FolderConfig) -> CrtClient | None:
    """The CRT data path for small PUTs, or None where it cannot serve (no credentials yet:
    the probe reports that; a bandwidth limit: bodies are paced by the boto3 path)."""
    if credentials is None or folder.bandwidth:
        return None

    def current() -> tuple[str, str, str | None]:
        frozen = credentials.get_frozen_credentials()  # refreshes assumed-role credentials
        return frozen.access_key, frozen.secret_key, frozen.token

    return CrtClient(endpoint_url, region, current,
                     timeout=folder.request_timeout, sign_body=folder.checksum == Checksum.OFF)


def _take_counter(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """botocore, first thing in every call: move the caller's counter into the context."""
    counter = params.pop(_COUNTER, None)
    if counter is not None:
        context[_CONTEXT] = counter


def _count(event_name: str, response_dict: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
           **_: Any) -> None:
    """botocore, once per attempt (``response-received.s3.OPERATION``)."""
    counter = None if context is None else context.get(_CONTEXT)
    if isinstance(counter, RequestCounts):
        status = None if response_dict is None else int(response_dict.get("status_code") or 0)
        counter.add(event_name.rsplit(".", 1)[-1], status)


class Counted:
    """A shared client as one store uses it: every call carries that store's counter."""

    # Calls that take no API parameters (or, for `copy`, only s3transfer's own).
    _PLAIN = frozenset({"meta", "close", "copy", "exceptions"})

    def __init__(self, shared: Shared, counter: RequestCounts):
        self._shared = shared
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._shared.client, name)
        if name in self._PLAIN:
            return attr
        if name == "get_paginator":
            return lambda operation: _CountedPaginator(attr(operation), self._counter)
        return partial(attr, **{_COUNTER: self._counter})


class _CountedPaginator:
    def __init__(self, paginator: Any, counter: RequestCounts):
        self._paginator = paginator
        self._counter = counter

    def paginate(self, **kwargs: Any) -> Any:
        return self._paginator.paginate(**kwargs, **{_COUNTER: self._counter})

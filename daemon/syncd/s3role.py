"""Role assumption (``role_arn``): credentials from STS AssumeRole on top of the standard chain,
refreshed by botocore before they expire. Part of the S3 store implementation.

The refresh is botocore's own (:class:`RefreshableCredentials` around an
:class:`AssumeRoleCredentialFetcher`): every request asks for the current credentials, and
those near their expiry are replaced first. What is ours:

- the refresh windows scale with the session. botocore refreshes 15 minutes before expiry
  (advisory, other threads carry on with the old keys) and blocks from 10 minutes before
  (mandatory). A 15-minute session would sit inside both from the start and call STS before
  every request (botocore issue 2189), so a short session is refreshed after two thirds of it.
- the fetcher keeps no cache of its own: the credentials object already decides when to
  refresh, and a refresh then means a new AssumeRole.
- a failed AssumeRole becomes a classified StoreError naming the role: denied or invalid is a
  folder error (a human must fix the role or its trust policy), an unreachable STS or a
  throttled one is transient (the folder stalls and recovers by itself). A long-running
  daemon never stops on expired credentials: the folder is probed again until a refresh works.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import botocore.exceptions as bexc
import botocore.session
import structlog
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    RefreshableCredentials,
)
from botocore.utils import parse_timestamp

from .config import FolderConfig
from .store import FOLDER, TRANSIENT, UNREACHABLE, StoreError

log = structlog.get_logger("syncd.s3role")

ADVISORY_REFRESH = 15 * 60   # botocore's defaults, kept for sessions of an hour and more
MANDATORY_REFRESH = 10 * 60
STS_TIMEOUT = 30


def _not_ours(record: logging.LogRecord) -> bool:
    """botocore logs every failed refresh with a traceback, and in the advisory window it tries
    again on every request: we log the failure ourselves, once per outage (see ``fetch``)."""
    return not str(record.msg).startswith("Refreshing temporary credentials failed")


logging.getLogger("botocore.credentials").addFilter(_not_ours)


class _NoCache(dict[str, Any]):
    """A credential cache that holds nothing, so every refresh is a real AssumeRole."""

    def __contains__(self, key: object) -> bool:
        return False

    def __setitem__(self, key: str, value: Any) -> None:
        pass


class _Provider(CredentialProvider):
    METHOD = "assume-role"

    def __init__(self, credentials: RefreshableCredentials):
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


def refresh_windows(duration: int) -> tuple[int, int]:
    """(advisory, mandatory) seconds before expiry: botocore's, or a third and a sixth of a
    shorter session, so each session is used for at least two thirds of its life."""
    return min(ADVISORY_REFRESH, duration // 3), min(MANDATORY_REFRESH, duration // 6)


def assume_role_session(folder: FolderConfig, clock: Callable[[], datetime] | None = None) -> botocore.session.Session:
    """A botocore session whose credentials are the folder's role, assumed with the standard
    chain's credentials (environment, shared files, ``profile``) and refreshed before expiry.
    Raises StoreError when the role cannot be assumed."""
    assert folder.role_arn is not None
    role = folder.role_arn
    base = botocore.session.Session(profile=folder.profile)
    source = base.get_credentials()
    if source is None:
        raise StoreError(f"cannot assume role {role}: no source credentials; configure the AWS credential chain "
                         "(environment, ~/.aws/credentials or 'profile')", scope=FOLDER, code="NoCredentials")
    sts_config = BotoConfig(connect_timeout=10, read_timeout=STS_TIMEOUT,
                            retries={"mode": "standard", "max_attempts": 3})

    def sts_client(service: str, **kwargs: Any) -> Any:
        # endpoint_url None: botocore honours AWS_ENDPOINT_URL_STS, else AWS's own endpoint.
        return base.create_client(service, region_name=folder.region, endpoint_url=folder.sts_endpoint_url,
                                  config=sts_config, **kwargs)

    extra: dict[str, Any] = {"RoleSessionName": folder.role_session_name, "DurationSeconds": folder.role_duration}
    if folder.role_external_id:
        extra["ExternalId"] = folder.role_external_id
    advisory, mandatory = refresh_windows(folder.role_duration)
    fetcher = AssumeRoleCredentialFetcher(sts_client, source, role, extra_args=extra, cache=_NoCache(),
                                          expiry_window_seconds=advisory)

    failing = threading.Event()  # logged once per streak of failed refreshes

    def fetch() -> dict[str, Any]:
        try:
            fresh = fetcher.fetch_credentials()
        except Exception as exc:
            error = _role_error(exc, folder)
            if not failing.is_set():
                failing.set()
                log.warning("role.refresh_failed", folder=folder.name, role=role, error=str(error),
                            hint="the current credentials are used until they expire; retried on the next request")
            raise error from exc
        if failing.is_set():
            failing.clear()
            log.info("role.refreshed", folder=folder.name, role=role)
        return fresh

    try:  # the first failure is the probe's to report (folder error or stalled)
        first = fetcher.fetch_credentials()
    except Exception as exc:
        raise _role_error(exc, folder) from exc
    faked: dict[str, Any] = {} if clock is None else {"time_fetcher": clock}
    credentials = RefreshableCredentials(
        access_key=first["access_key"], secret_key=first["secret_key"], token=first["token"],
        expiry_time=parse_timestamp(first["expiry_time"]),
        refresh_using=fetch, method=_Provider.METHOD, advisory_timeout=advisory, mandatory_timeout=mandatory,
        **faked)
    # A session of its own: `base` has cached the source credentials it resolved.
    assumed = botocore.session.Session(profile=folder.profile)
    assumed.register_component("credential_provider", CredentialResolver([_Provider(credentials)]))
    return assumed


def _role_error(exc: Exception, folder: FolderConfig) -> StoreError:
    role = folder.role_arn
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = err.get("Message") or code
        if code in ("Throttling", "ThrottlingException", "RequestTimeout") or status >= 500:
            return StoreError(f"cannot assume role {role} now: {code or status}: {message}", scope=TRANSIENT, code=code)
        return StoreError(f"cannot assume role {role}: {code or status}: {message}; check 'role_arn' (and "
                          f"'role_external_id', 'role_duration') in {folder.source}, the role's trust policy and that "
                          "the source credentials may call sts:AssumeRole on it", scope=FOLDER, code="AssumeRoleFailed")
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.CredentialRetrievalError)):
        return StoreError(f"cannot assume role {role}: no usable source credentials ({exc})", scope=FOLDER,
                          code="NoCredentials")
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
        return StoreError(f"cannot assume role {role}: STS endpoint unreachable: {exc}", scope=TRANSIENT,
                          code=UNREACHABLE)
    if isinstance(exc, bexc.BotoCoreError):
        return StoreError(f"cannot assume role {role}: {exc}", scope=TRANSIENT, code=type(exc).__name__)
    return StoreError(f"cannot assume role {role}: {exc!r}", scope=TRANSIENT, code=type(exc).__name__)

"""Builds every boto3 client this package uses, with one retry and timeout policy.

botocore retries throttling and 5xx itself (standard mode); Prefect task retries sit on top for
what outlasts that. The read timeout exceeds SQS's 20 s long poll.

An endpoint set by hand (the config's endpoint_url, a credentials block's, AWS_ENDPOINT_URL) that
refuses connections is a configuration mistake, not a transient error: `check_endpoint` finds it with
one connection attempt and names the setting to fix, where botocore and Prefect retries would spend
about 100 s before showing botocore's own error.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.loaders import Loader, create_loader

from prefect_distributed.core.errors import ConfigError

ENDPOINT_CHECK_TIMEOUT_S = 5.0
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=40)

TRANSIENT_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        "AWS.SimpleQueueService.ServiceUnavailable",
    }
)

# One botocore data loader for every session of this process. botocore parses a service's model (for
# EC2, megabytes of JSON) once per loader, and each session makes its own loader; every task of a run
# builds a session from its credentials, so each would parse the same models again.
_MODELS: Loader = create_loader()

# Configuration mistakes: a retry cannot fix them.
_PERMANENT_BOTOCORE_ERRORS = (NoCredentialsError, NoRegionError, ParamValidationError)

T = TypeVar("T")


@dataclass
class AwsClients:
    """Hands out one client per service for a session, region and optional endpoint."""

    session: boto3.session.Session
    region: str
    endpoint_url: str | None = None
    _cache: dict[str, BaseClient] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # boto3 keeps its botocore session as `_session`; registering a component is botocore's public API.
        self.session._session.register_component("data_loader", _MODELS)

    def client(self, service: str) -> BaseClient:
        if service not in self._cache:
            self._cache[service] = self.session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=CLIENT_CONFIG
            )
        return self._cache[service]

    def secrets(self) -> tuple[str, ...]:
        """The secret parts of the session's credentials (secret key, session token), to mask in
        whatever the run shows; empty without credentials."""
        credentials = self.session.get_credentials()
        if credentials is None:
            return ()
        frozen = credentials.get_frozen_credentials()
        return tuple(secret for secret in (frozen.secret_key, frozen.token) if secret)


def check_endpoint(endpoint_url: str, setting: str, timeout_s: float = ENDPOINT_CHECK_TIMEOUT_S) -> None:
    """Raise ConfigError naming `setting` unless `endpoint_url` accepts a connection; one attempt, no retry."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the AWS endpoint {endpoint_url!r} (set by {setting}) is not an http(s) URL: give one like "
            f"http://127.0.0.1:5000, or unset {setting} to call AWS itself"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"the AWS endpoint {endpoint_url} (set by {setting}) cannot be reached: {reason}. Fix: start the AWS "
            f"emulator or service there, correct {setting}, or unset it to call AWS itself"
        ) from None


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, '' for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later attempt may not see: throttling, 5xx, timeouts, dropped connections."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_ERROR_CODES or status >= 500
    return isinstance(exc, (ConnectionError, ReadTimeoutError, BotoCoreError)) and not isinstance(
        exc, _PERMANENT_BOTOCORE_ERRORS
    )


def paginate(client: BaseClient, operation: str, key: str, **kwargs: Any) -> Iterator[Any]:
    """Every item under `key` across all pages of a paginated operation."""
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items, without materialising the input."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

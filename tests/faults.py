"""AWS errors moto cannot produce (throttling, 503s), answered by botocore event handlers.

Two depths of fault:
- `within_retries`: a `before-send` handler answers one HTTP attempt. botocore's own retries
  (standard mode) see it and try again, as they would against AWS.
- `outlasting_retries`: a `before-call` handler answers the whole call, as if every one of
  botocore's attempts had failed: the ClientError reaches our code, where `is_transient` decides.

A `FaultPlan` serves the errors listed for each operation ("sqs.CreateQueue"), in order, then lets
calls through to the emulator; `where` narrows it to some calls (e.g. those of one Prefect task).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.awsrequest import AWSResponse

Kind = Literal["throttling", "unavailable"]
Depth = Literal["within_retries", "outlasting_retries"]

# (status, error code) as AWS answers; S3 names its throttling SlowDown, with a 503.
ERRORS: dict[tuple[str, Kind], tuple[int, str]] = {
    ("s3", "throttling"): (503, "SlowDown"),
    ("s3", "unavailable"): (503, "ServiceUnavailable"),
}
DEFAULT_ERRORS: dict[Kind, tuple[int, str]] = {
    "throttling": (400, "ThrottlingException"),
    "unavailable": (503, "ServiceUnavailable"),
}


@dataclass(frozen=True)
class Fault:
    kind: Kind
    depth: Depth = "within_retries"


class _Body:
    """The `raw` botocore reads an answer's body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _error(service: str, kind: Kind) -> tuple[int, str]:
    return ERRORS.get((service, kind), DEFAULT_ERRORS[kind])


def http_answer(service: str, kind: Kind, url: str) -> AWSResponse:
    """One HTTP answer carrying the error, in the service's protocol (XML for S3, JSON here otherwise)."""
    status, code = _error(service, kind)
    if service == "s3":
        body = f"<Error><Code>{code}</Code><Message>injected {kind}</Message></Error>".encode()
        headers = {"Content-Type": "application/xml"}
    else:
        body = json.dumps({"__type": code, "message": f"injected {kind}"}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{code};Sender"}
    return AWSResponse(url, status, headers, _Body(body))


def parsed_answer(service: str, kind: Kind) -> tuple[AWSResponse, dict[str, Any]]:
    """A whole call's answer, as a before-call handler returns it (botocore raises ClientError from it)."""
    status, code = _error(service, kind)
    parsed = {
        "Error": {"Code": code, "Message": f"injected {kind}"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 4},
    }
    return AWSResponse("", status, {}, _Body(b"")), parsed


@dataclass
class FaultPlan:
    """The errors to answer, per operation, in order; what was served is kept in `served`."""

    faults: dict[str, list[Fault]]
    where: Callable[[], bool] = lambda: True
    served: list[tuple[str, Fault]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self, event_name: str, depth: Depth) -> tuple[str, Fault] | None:
        _, service, operation = event_name.split(".", 2)
        key = f"{service}.{operation}"
        with self._lock:
            waiting = self.faults.get(key)
            if not waiting or waiting[0].depth != depth or not self.where():
                return None
            fault = waiting.pop(0)
            self.served.append((key, fault))
            return service, fault

    def before_send(self, event_name: str, request: Any, **_: Any) -> AWSResponse | None:
        found = self._next(event_name, "within_retries")
        return http_answer(found[0], found[1].kind, request.url) if found else None

    def before_call(self, event_name: str, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        found = self._next(event_name, "outlasting_retries")
        return parsed_answer(found[0], found[1].kind) if found else None

    @property
    def pending(self) -> dict[str, list[Fault]]:
        """The faults not served yet (a plan whose calls never came)."""
        with self._lock:
            return {key: list(faults) for key, faults in self.faults.items() if faults}

    def attach(self, client: Any) -> None:
        """Serve this plan on one client."""
        client.meta.events.register("before-send", self.before_send)
        client.meta.events.register("before-call", self.before_call)

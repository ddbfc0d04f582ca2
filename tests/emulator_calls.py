"""The workers' AWS calls as the emulator saw them: moto's recording of requests, read back as IAM actions.

Workers run as subprocesses in most tests (and in containers where there is an engine), out of reach
of the in-process hook of tests/aws_calls.py. The session's moto server records every request it
answers (core/emulator.py, `call_log`), and the worker ends its User-Agent with
`worker.main.USER_AGENT_EXTRA`, so each of its calls is found here whatever process made it.

The operation comes from the request as AWS would read it: the `X-Amz-Target` header (JSON
protocols: SQS, CloudWatch Logs, ECS), the `Action` field (query protocols) or, for REST (S3, path
style against an IP endpoint), the method, path, query and headers matched against botocore's
service model. A request that matches no operation is reported as such, so no call escapes the check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import botocore.session

from prefect_distributed.worker.main import USER_AGENT_EXTRA

# Signing names (the service in a SigV4 credential scope) whose service model is named otherwise.
SERVICE_MODELS = {"monitoring": "cloudwatch", "servicequotas": "service-quotas"}
IGNORED_QUERY_KEYS = frozenset({"x-id"})


@dataclass(frozen=True)
class Route:
    """What a REST request must have to be one operation, and how specific that is."""

    operation: str
    method: str
    segments: tuple[str, ...]  # "{Bucket}", "{Key+}" or a literal
    query_keys: frozenset[str]  # literal keys of the URI and required query-string members
    header_names: frozenset[str]  # required header members, lower case

    def matches(self, method: str, segments: list[str], query: Mapping[str, Any], headers: Iterable[str]) -> bool:
        if method != self.method or not self.query_keys <= query.keys() or not self.header_names <= set(headers):
            return False
        for index, pattern in enumerate(self.segments):
            if pattern.endswith("+}"):
                return len(segments) > index
            if index >= len(segments) or not (pattern.startswith("{") or pattern == segments[index]):
                return False
        return len(segments) == len(self.segments)

    @property
    def specificity(self) -> int:
        literals = sum(not pattern.startswith("{") for pattern in self.segments)
        return len(self.query_keys) + len(self.header_names) + literals


@cache
def rest_routes(signing_name: str) -> tuple[Route, ...]:
    """Every operation of a REST service as a Route; empty for a service botocore does not know."""
    session = botocore.session.get_session()
    name = SERVICE_MODELS.get(signing_name, signing_name)
    if name not in session.get_available_services():
        return ()
    model = session.get_service_model(name)
    routes = []
    for operation in model.operation_names:
        operation_model = model.operation_model(operation)
        path, _, query = operation_model.http["requestUri"].partition("?")
        keys = {part.partition("=")[0] for part in query.split("&") if part} - IGNORED_QUERY_KEYS
        headers: set[str] = set()
        shape = operation_model.input_shape
        for member in shape.required_members if shape is not None else ():
            serialization = shape.members[member].serialization
            if serialization.get("location") == "querystring":
                keys.add(serialization["name"])
            elif serialization.get("location") == "header":
                headers.add(serialization["name"].lower())
        segments = tuple(segment for segment in path.split("/") if segment)
        routes.append(
            Route(operation, operation_model.http["method"], segments, frozenset(keys), frozenset(headers))
        )
    return tuple(routes)


def rest_operation(signing_name: str, method: str, url: str, headers: Iterable[str]) -> str | None:
    """The operation of a REST request: the most specific route it matches, None when none does."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    if "x-id" in query:  # botocore names some S3 operations in the URL itself
        return query["x-id"][0]
    segments = [segment for segment in parts.path.split("/") if segment]
    names = [name.lower() for name in headers]
    matching = [route for route in rest_routes(signing_name) if route.matches(method, segments, query, names)]
    return max(matching, key=lambda route: route.specificity).operation if matching else None


@dataclass(frozen=True)
class EmulatorCall:
    """One request the emulator answered: which service, which operation, with what parameters."""

    service: str  # the SigV4 signing name: sqs, s3, logs, ...
    operation: str | None  # None: the request matched no operation of the service
    params: Mapping[str, Any]  # JSON-protocol parameters; empty for the other protocols
    description: str  # how the request looked, for a reader


def _body(entry: Mapping[str, Any]) -> bytes:
    body = entry.get("body") or ""
    return base64.b64decode(body) if entry.get("body_encoded") else str(body).encode()


def read_call(entry: Mapping[str, Any]) -> EmulatorCall:
    """The service, operation and parameters of one line of moto's recording."""
    headers = {name.lower(): value for name, value in entry["headers"].items()}
    scope = headers.get("authorization", "").partition("Credential=")[2].split("/")
    service = scope[3] if len(scope) > 3 else "unsigned"
    path = urlsplit(entry["url"]).path
    description = f"{service} {entry['method']} {path}"
    if "x-amz-target" in headers:
        target = headers["x-amz-target"]
        try:
            params = json.loads(_body(entry) or b"{}")
        except ValueError:
            params = {}
        return EmulatorCall(service, target.rpartition(".")[2], params if isinstance(params, dict) else {}, target)
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        action = parse_qs(_body(entry).decode(errors="replace")).get("Action")
        if action:
            return EmulatorCall(service, action[0], {}, description)
    return EmulatorCall(service, rest_operation(service, entry["method"], entry["url"], headers), {}, description)


@dataclass(frozen=True)
class WorkerCalls:
    """The workers' calls in a set of recordings, and how many lines could not be read."""

    calls: list[EmulatorCall]
    unreadable_lines: int


def is_worker_request(entry: Mapping[str, Any]) -> bool:
    headers = {name.lower(): value for name, value in entry.get("headers", {}).items()}
    return USER_AGENT_EXTRA in headers.get("user-agent", "")


def worker_calls(recordings: Iterable[Path]) -> WorkerCalls:
    """Every request made by a worker in these recordings (files of moto's recorder, JSON lines).

    moto's threads append lines to one file without a lock, so a line may come out garbled; those
    are counted, not guessed at.
    """
    calls: list[EmulatorCall] = []
    unreadable = 0
    for line in _lines(recordings):
        try:
            entry = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if is_worker_request(entry):
            calls.append(read_call(entry))
    return WorkerCalls(calls, unreadable)


def _lines(recordings: Iterable[Path]) -> Iterator[str]:
    for path in recordings:
        with path.open(errors="replace") as lines:
            yield from (line for line in lines if line.strip())

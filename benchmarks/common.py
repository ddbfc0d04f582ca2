"""What the benchmarks share: the machine line, exact call counts, the simulated SQS, job files, results.

Every benchmark prints its figures as a table and, last, one `BENCH_RESULT {json}` line that
`run_all.py` collects. Nothing here writes into the repository.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.client import BaseClient
from botocore.model import OperationModel
from pydantic import BaseModel, ConfigDict

from prefect_distributed.core import emulator
from prefect_distributed.core.aws import sqs as sqs_ops
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.models import QueueUrls, RunResources

RESULT_PREFIX = "BENCH_RESULT "
REGION = "us-east-1"
# The command every generated job file is checked against: it uses a shared key and group keys.
COMMAND = "analyse --pipeline {pipeline} --in {input_dir} --out {output_dir} --plate {plate} --well {well}"
# Where the simulated SQS pretends to be: the discard port on loopback, so a call the simulation
# does not answer fails at once instead of reaching anything real.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


class Figure(BaseModel):
    """One row of the benchmarks/README.md table."""

    model_config = ConfigDict(frozen=True)

    figure: str
    target: str
    measured: str
    baseline: str
    ratio: str
    met: bool | None  # None: the figure has no target of its own
    command: str


def fake_credentials() -> None:
    """Point boto3 at made-up credentials, so no benchmark can touch a real AWS account."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)


def clients(endpoint_url: str | None = None) -> AwsClients:
    """The product's clients (its retry and timeout policy), on a fresh session."""
    return AwsClients(session=boto3.session.Session(), region=REGION, endpoint_url=endpoint_url)


def machine() -> str:
    """The line that says what the figures were measured on."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    return (
        f"{len(os.sched_getaffinity(0))} cores (nproc), {total_kib / 2**20:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


@dataclass
class CallCounter:
    """Counts a client's API calls by operation, through botocore's `before-call` event.

    The event fires once per API call (a retry inside botocore is not a second call), from
    whichever thread makes it, hence the lock: the count is exact.
    """

    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attach(self, *clients: BaseClient) -> CallCounter:
        for client in clients:
            client.meta.events.register("before-call", self._count)
        return self

    def _count(self, model: OperationModel, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


class _Body:
    """The raw body of a simulated response, as botocore reads it."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class SimulatedSqs:
    """Answers SendMessage and SendMessageBatch in place of SQS: a well-formed success after a fixed round trip.

    Real SQS is bound by round trips (tens of ms per call), and moto slows down with the depth of
    the queue, so neither stands in for SQS at scale. The hook sits on botocore's `before-send`
    event: parameter validation, serialisation, signing and the parsing of the answer all run as
    they would against SQS; only the network is replaced by a sleep. Any other operation fails.
    It lives in the benchmarks only, never in the product.
    """

    round_trip_s: float
    # Message ids from a counter: uuid4 would spend the caller's CPU (the GIL) on what SQS computes.
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def attach(self, client: BaseClient) -> None:
        client.meta.events.register("before-send.sqs", self._answer)

    def _message_id(self) -> str:
        return f"00000000-0000-4000-8000-{next(self._ids):012d}"

    def _answer(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        time.sleep(self.round_trip_s)
        target = request.headers.get("X-Amz-Target", b"")
        operation = (target.decode() if isinstance(target, bytes) else target).rpartition(".")[2]
        sent = json.loads(request.body or b"{}")
        answer: dict[str, Any]
        if operation == "SendMessageBatch":
            answer = {
                "Successful": [
                    {"Id": entry["Id"], "MessageId": self._message_id(), "MD5OfMessageBody": _md5(entry["MessageBody"])}
                    for entry in sent["Entries"]
                ],
                "Failed": [],
            }
        elif operation == "SendMessage":
            answer = {"MessageId": self._message_id(), "MD5OfMessageBody": _md5(sent["MessageBody"])}
        else:
            raise RuntimeError(f"the simulated SQS answers SendMessage and SendMessageBatch only, not {operation!r}")
        headers = {"x-amzn-RequestId": self._message_id(), "Content-Type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, 200, headers, _Body(json.dumps(answer).encode()))


def simulated_sqs_client(round_trip_s: float) -> tuple[BaseClient, CallCounter]:
    """A product SQS client whose sends are answered by SimulatedSqs, and the counter of its calls."""
    client = clients(UNREACHABLE_ENDPOINT).client("sqs")
    SimulatedSqs(round_trip_s).attach(client)
    return client, CallCounter().attach(client)


def write_job_file(
    path: Path, count: int, *, with_inputs: bool = True, large_every: int = 0, large_bytes: int = 0
) -> Path:
    """A Distributed-Something job file with `count` groups (plate, well, site), written as a stream.

    The shape of a Distributed-CellProfiler batch: shared keys (a comment, the pipeline, the
    input and output templates) and one small group per image site. With `large_every`, every
    such group also carries `large_bytes` of notes: a file of mixed sizes.
    """
    shared: dict[str, Any] = {"_comment": "generated by benchmarks/common.py", "pipeline": "analysis.cppipe"}
    if with_inputs:
        shared["inputs"] = ["images/{plate}/{well}/s{site}.tif"]
    shared["output"] = "results/{plate}/{well}/s{site}"
    sites_per_plate = 384 * 9
    with path.open("w") as handle:
        handle.write(json.dumps(shared)[:-1] + ', "groups": [\n')
        for index in range(count):
            plate, rest = divmod(index, sites_per_plate)
            well, site = divmod(rest, 9)
            group = {
                "plate": f"P{plate:04d}",
                "well": f"{chr(ord('A') + well // 24)}{well % 24 + 1:02d}",
                "site": site + 1,
                "Metadata": f"Metadata_Plate=P{plate:04d},Metadata_Well={well},Metadata_Site={site + 1}",
            }
            if large_every and index % large_every == 0:
                group["notes"] = "n" * large_bytes
            handle.write(("," if index else "") + json.dumps(group) + "\n")
        handle.write("]}\n")
    return path


def create_run_queues(sqs: BaseClient, resources: RunResources, config: RunConfig) -> QueueUrls:
    """The run's two queues, made with the core calls the setup step makes."""
    dead = sqs_ops.ensure_queue(
        sqs, resources.dead_letter_queue_name, sqs_ops.dead_letter_queue_attributes(), resources.tags
    )
    attributes = sqs_ops.job_queue_attributes(
        sqs_ops.queue_arn(sqs, dead), config.queue.visibility_timeout_s, config.queue.redrive_receive_count
    )
    queue = sqs_ops.ensure_queue(sqs, resources.queue_name, attributes, resources.tags)
    return QueueUrls(queue_url=queue, dead_letter_queue_url=dead)


def _moto_api(endpoint: str, path: str, method: str = "POST") -> bytes:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


# S3 is REST: (method, whether the path names an object) -> operation, for path-style requests.
_S3_OPERATIONS = {
    ("GET", False): "ListObjects",
    ("HEAD", False): "HeadBucket",
    ("PUT", False): "CreateBucket",
    ("DELETE", False): "DeleteBucket",
    ("GET", True): "GetObject",
    ("HEAD", True): "HeadObject",
    ("PUT", True): "PutObject",
    ("DELETE", True): "DeleteObject",
}


def _s3_operation(method: str, url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    names_object = "/" in parts.path.strip("/")
    if method == "GET" and not names_object and "list-type" in query:
        return "ListObjectsV2"
    if method == "POST":
        return "DeleteObjects" if "delete" in query else "MultipartUpload"
    return _S3_OPERATIONS.get((method, names_object), method)


def _operation(entry: dict[str, Any]) -> str:
    """'service.Operation' of one request in moto's recording.

    The service is in the SigV4 credential scope (`Credential=<key>/<date>/<region>/<service>/...`).
    SQS speaks JSON, with the operation in the `X-Amz-Target` header; S3 is REST (path-style
    against an IP endpoint), its operation given by the method, the path and the query.
    """
    headers = {name.lower(): value for name, value in entry["headers"].items()}
    scope = headers.get("authorization", "").partition("Credential=")[2].split("/")
    service = scope[3] if len(scope) > 3 else "unsigned"
    if "x-amz-target" in headers:
        return f"{service}.{headers['x-amz-target'].rpartition('.')[2]}"
    return f"{service}.{_s3_operation(entry['method'], entry['url'])}"


@contextmanager
def recorded_calls(endpoint: str) -> Iterator[Counter[str]]:
    """Count, by 'service.Operation', every request the moto server receives inside the block.

    moto's recorder (`/moto-api/recorder/`) logs each request it serves (headers, method, URL) to
    the file MOTO_RECORDER_FILEPATH names, whoever sends it: the way to count the calls of other
    processes, such as workers, exactly. The counter is filled when the block ends.
    """
    calls: Counter[str] = Counter()
    _moto_api(endpoint, "recorder/reset-recording")
    _moto_api(endpoint, "recorder/start-recording")
    try:
        yield calls
    finally:
        _moto_api(endpoint, "recorder/stop-recording")
        recording = _moto_api(endpoint, "recorder/download-recording", method="GET").decode()
        calls.update(_operation(json.loads(line)) for line in recording.splitlines() if line.strip())


@contextmanager
def recording_moto_server(workdir: Path) -> Iterator[str]:
    """A moto server (the product's emulator) whose recorder writes into `workdir`; yields its endpoint."""
    os.environ["MOTO_RECORDER_FILEPATH"] = str(workdir / "moto-recording.jsonl")
    with emulator.moto_server(log_path=workdir / "moto.log") as endpoint:
        yield endpoint


def ratio(ours: float, baseline: float) -> str:
    return f"{baseline / ours:.1f}x" if ours else "n/a"


def report(title: str, figures: Sequence[Figure], details: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """Print the figures for a person, then one machine-readable line for run_all.py."""
    print(f"\n== {title} ({machine()}; 1-minute load average {os.getloadavg()[0]:.1f})")
    for figure in figures:
        verdict = {True: "target met", False: "TARGET MISSED", None: "no target"}[figure.met]
        print(f"- {figure.figure}: {figure.measured} | baseline {figure.baseline} | {figure.ratio} | {verdict}")
        print(f"    target: {figure.target}")
    for note in notes:
        print(f"  note: {note}")
    result = {
        "title": title,
        "load_average": os.getloadavg()[0],
        "figures": [figure.model_dump() for figure in figures],
        "details": details,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)

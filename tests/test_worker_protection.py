"""ECS task scale-in protection from the worker loop, against in-process moto and a stand-in ECS agent.

moto cannot emulate the ECS agent's task-protection endpoint (the agent runs on the machine, not
in AWS's API), so FakeAgent, a tiny HTTP server on 127.0.0.1, stands in for it: the one fake here.
Queues and buckets are moto's; the loop is the real one, running real programs.
"""

from __future__ import annotations

import http.server
import json
import logging
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from prefect_distributed.core import emulator
from prefect_distributed.worker.core import WorkerSettings
from prefect_distributed.worker.loop import Clients, WorkerLoop
from prefect_distributed.worker.protection import TaskProtection

pytestmark = pytest.mark.usefixtures("aws_mock")

RUN_ID = "run-protect"
BUCKET = "protect-bucket"
PYTHON = shlex.quote(sys.executable)
# The agent's URI carries a per-task path on ECS (http://169.254.170.2/api/<task id>-<n>); it is kept.
TASK_PATH = "/api/task-1"


class FakeAgent:
    """Answers PUT <TASK_PATH>/task-protection/v1/state as the ECS agent does, or fails as told."""

    def __init__(self, answer: str = "protected") -> None:
        self.answer = answer
        # (path, content type, JSON body) of every request, in order.
        self.requests: list[tuple[str, str | None, Any]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
                fake.requests.append((self.path, self.headers.get("Content-Type"), body))
                if fake.answer == "error":
                    self._reply(500, {"error": {"Code": "ServerException", "Message": "ECS is unwell"}})
                elif fake.answer == "failure":
                    self._reply(200, {"failure": {"Arn": "arn:task", "Reason": "TASK_NOT_VALID"}})
                else:
                    self._reply(200, {"protection": {"ProtectionEnabled": True, "TaskArn": "arn:task"}})

            def _reply(self, status: int, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                """Quiet."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}{TASK_PATH}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()
    yield fake
    fake.close()


def make_loop(command: str, job_ids: list[str], agent_protection: TaskProtection | None = None) -> WorkerLoop:
    """A loop over a fresh moto queue holding `job_ids`; it returns from run() once they are done."""
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    dlq_url = sqs.create_queue(QueueName="protect-dlq")["QueueUrl"]
    queue_url = sqs.create_queue(QueueName="protect")["QueueUrl"]
    for job_id in job_ids:
        body = {"schema_version": 1, "run_id": RUN_ID, "job_id": job_id, "fields": {}, "inputs": [], "output": job_id}
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    settings = WorkerSettings(
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        run_id=RUN_ID,
        command=command,
        input_bucket=BUCKET,
        output_bucket=BUCKET,
        records_bucket=BUCKET,
        visibility_timeout_s=30,
        wait_time_s=0,
        idle_exit_s=0,
        resource_log_s=0,
    )
    return WorkerLoop(0, settings, Clients(sqs=sqs, s3=s3), threading.Event(), None, agent_protection)


def outcomes() -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{RUN_ID}/outcomes/")
    return sorted(item["Key"].rsplit("/", 1)[-1] for item in listing.get("Contents", []))


def program(seconds: float) -> str:
    """A job that takes `seconds` and writes one output file."""
    code = f"import pathlib, sys, time; time.sleep({seconds}); pathlib.Path(sys.argv[1], 'out.txt').write_text('x')"
    return f"{PYTHON} -c {shlex.quote(code)} {{output_dir}}"


def protection_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "protection" in r.getMessage()]


def test_a_job_run_by_the_worker_loop_protects_its_container_for_ten_minutes_and_never_unprotects_it(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_AGENT_URI", agent.uri)
    loop = make_loop(program(0), ["job-1", "job-2"])
    loop.run()
    assert outcomes() == ["job-1.succeeded.json", "job-2.succeeded.json"]
    # One protection per job (each finished well within a renewal period); none is ever removed.
    body = {"ProtectionEnabled": True, "ExpiresInMinutes": 10}
    protect = (f"{TASK_PATH}/task-protection/v1/state", "application/json", body)
    assert agent.requests == [protect, protect]


def program_until(go: Path) -> str:
    """A job that runs until the file `go` exists (a minute at most), then writes one output file."""
    code = (
        "import pathlib, sys, time\n"
        f"deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline: time.sleep(0.05)\n"
        "pathlib.Path(sys.argv[1], 'out.txt').write_text('x')"
    )
    return f"{PYTHON} -c {shlex.quote(code)} {{output_dir}}"


def test_a_long_job_renews_protection_while_it_runs_and_renewals_stop_with_it(agent: FakeAgent, tmp_path: Path) -> None:
    """The job lasts until the agent has seen four renewals, however slowly the machine runs."""
    go = tmp_path / "go"

    def end_the_job_after_four_renewals() -> None:
        deadline = time.monotonic() + 60
        while len(agent.requests) < 1 + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()

    log = logging.LoggerAdapter(logging.getLogger("worker"), {})
    loop = make_loop(program_until(go), ["long-job"], TaskProtection(agent.uri, log, renew_every_s=0.25))
    threading.Thread(target=end_the_job_after_four_renewals, daemon=True).start()
    started = time.monotonic()
    loop.run()
    took_s = time.monotonic() - started
    assert outcomes() == ["long-job.succeeded.json"]
    # The first call when the job starts, then one every 0.25 s (never more often) while it runs.
    assert 1 + 4 <= len(agent.requests) <= 1 + took_s / 0.25
    after_job = len(agent.requests)
    time.sleep(0.6)
    assert len(agent.requests) == after_job


def test_without_an_agent_uri_the_loop_makes_no_protection_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ECS_AGENT_URI", raising=False)
    loop = make_loop(program(0), ["local-job"])
    assert loop.protection.enabled is False
    assert loop.protection.protect() is False
    loop.run()
    assert outcomes() == ["local-job.succeeded.json"]
    # Any call would go somewhere: a default address would fail, and be warned about.
    assert protection_warnings(caplog) == []


@pytest.mark.parametrize("answer", ["error", "failure", "unreachable"])
def test_a_failing_endpoint_is_warned_about_once_and_never_fails_a_job(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, answer: str
) -> None:
    agent.answer = answer
    uri = f"http://127.0.0.1:{emulator.free_port()}{TASK_PATH}" if answer == "unreachable" else agent.uri
    monkeypatch.setenv("ECS_AGENT_URI", uri)
    loop = make_loop(program(0), ["job-1", "job-2", "job-3"])
    assert loop.protection.protect() is False
    loop.run()
    assert outcomes() == ["job-1.succeeded.json", "job-2.succeeded.json", "job-3.succeeded.json"]
    [warning] = protection_warnings(caplog)
    assert "ecs:UpdateTaskProtection" in warning
    expected = {"error": "HTTP 500 error: ServerException ECS is unwell", "failure": "failure: TASK_NOT_VALID"}
    assert expected.get(answer, "") in warning
    assert len(agent.requests) == (0 if answer == "unreachable" else 4)

"""Real worker processes against the moto server: the worker folder on its own, as the image runs it
(`python -m worker` from the repository root, nothing of the package imported).

Every test asserts on the state left in AWS (objects, records, queue counts, the dead-letter queue),
never on the order of calls.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from prefect_distributed.core import emulator
from prefect_distributed.core.aws import sqs as sqs_ops
from prefect_distributed.core.aws.sqs import read_dead_messages
from prefect_distributed.core.config import QueueSettings
from prefect_distributed.core.jobs import Job
from prefect_distributed.core.manifest import Manifest
from prefect_distributed.core.models import RunResources, RunSummary
from prefect_distributed.core.records import build_summary, dead_jobs, read_outcomes
from prefect_distributed.worker import spot

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "run-test"
INPUT_BUCKET = "worker-inputs"
OUTPUT_BUCKET = "worker-outputs"
RECORDS_BUCKET = "worker-records"
PYTHON = shlex.quote(sys.executable)
# The worker may run under another interpreter, e.g. the oldest Python an image may have (3.10).
WORKER_PYTHON = os.environ.get("DISTRIBUTED_TEST_WORKER_PYTHON", sys.executable)


def job_body(job_id: str, inputs: tuple[str, ...] = (), **fields: Any) -> str:
    """A message in the wire format; the job's outputs go to `results/<job_id>/`."""
    body = {
        "schema_version": 1,
        "run_id": RUN_ID,
        "job_id": job_id,
        "fields": fields,
        "inputs": list(inputs),
        "output": f"results/{job_id}",
    }
    return json.dumps(body)


@dataclass
class Stack:
    """A job queue with its dead-letter queue, three buckets, and the workers started against them."""

    endpoint: str
    tmp_path: Path
    sqs: Any
    s3: Any
    queue_url: str
    dlq_url: str
    job_retries: int
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def send_job(self, job_id: str, inputs: tuple[str, ...] = (), **fields: Any) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=job_body(job_id, inputs, **fields))

    def send_jobs(self, job_ids: Sequence[str]) -> None:
        """Ten jobs per call: moto's cost per call grows with the queue's depth."""
        for start in range(0, len(job_ids), 10):
            entries = [
                {"Id": str(index), "MessageBody": job_body(job_id)}
                for index, job_id in enumerate(job_ids[start : start + 10])
            ]
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            assert not response.get("Failed")

    def put(self, bucket: str, key: str, body: bytes | str) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def start_worker(
        self, command: str, environment: dict[str, str] | None = None, **settings: object
    ) -> subprocess.Popen[bytes]:
        """A worker process; `environment` adds or replaces variables, `settings` DISTRIBUTED_* ones."""
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "DISTRIBUTED_QUEUE_URL": self.queue_url,
            "DISTRIBUTED_DEAD_LETTER_QUEUE_URL": self.dlq_url,
            "DISTRIBUTED_RUN_ID": RUN_ID,
            "DISTRIBUTED_COMMAND": command,
            "DISTRIBUTED_INPUT_BUCKET": INPUT_BUCKET,
            "DISTRIBUTED_OUTPUT_BUCKET": OUTPUT_BUCKET,
            "DISTRIBUTED_RECORDS_BUCKET": RECORDS_BUCKET,
            "DISTRIBUTED_WAIT_TIME_S": "1",
            "DISTRIBUTED_IDLE_EXIT_S": "2",
            "DISTRIBUTED_RETRY_DELAY_S": "1",
            "DISTRIBUTED_JOB_RETRIES": str(self.job_retries),
            "DISTRIBUTED_WORK_DIR": str(self.tmp_path / "work"),
            **{f"DISTRIBUTED_{name.upper()}": str(value) for name, value in settings.items()},
            **(environment or {}),
        }
        log = open(self.tmp_path / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 - the child owns it
        with log:
            process = subprocess.Popen(
                [WORKER_PYTHON, "-m", "worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.workers.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.tmp_path.glob("worker-*.log")))

    def wait_for_exit(self, process: subprocess.Popen[bytes], timeout_s: float = 25) -> int:
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {timeout_s} s; its log:\n{self.logs()}")

    def counts(self, queue_url: str | None = None) -> tuple[int, int, int]:
        """(visible, in flight, delayed) messages."""
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url or self.queue_url, AttributeNames=["All"])
        values = attributes["Attributes"]
        return (
            int(values["ApproximateNumberOfMessages"]),
            int(values["ApproximateNumberOfMessagesNotVisible"]),
            int(values["ApproximateNumberOfMessagesDelayed"]),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def text(self, bucket: str, key: str) -> str:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def outcome(self, job_id: str) -> dict[str, Any]:
        """The job's one outcome record, whose key carries its status."""
        [key] = self.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/{job_id}.")
        record = json.loads(self.text(RECORDS_BUCKET, key))
        assert key.endswith(f"/{job_id}.{record['status']}.json")
        return record

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's attempt records (one per failed run), in the order of their numbers."""
        keys = self.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/{job_id}.")
        records = [json.loads(self.text(RECORDS_BUCKET, key)) for key in keys]
        for key, record in zip(keys, records, strict=True):
            assert key.endswith(f"/{job_id}.{record['attempt']}.json")
        return sorted(records, key=lambda record: record["attempt"])

    def attempt(self, job_id: str) -> dict[str, Any]:
        """The job's latest attempt record."""
        return self.attempts(job_id)[-1]

    def summary_and_manifest(self, job_ids: Sequence[str]) -> tuple[RunSummary, str]:
        """The run's summary and manifest.csv, as the flow builds them from the records and the
        dead-letter queue (tasks/report.py without Prefect)."""
        resources = RunResources(
            run_id=RUN_ID,
            app_name="workers",
            queue_name="jobs",
            dead_letter_queue_name="jobs-dlq",
            records_bucket=RECORDS_BUCKET,
            records_prefix=f"runs/{RUN_ID}",
            log_group=f"workers/{RUN_ID}",
            tags={},
        )
        with Manifest() as manifest:
            summary = build_summary(
                resources=resources,
                jobs=(Job(job_id=job_id, index=n, fields={}, inputs=(), output="") for n, job_id in enumerate(job_ids)),
                outcomes=read_outcomes(self.s3, resources),
                dead=dead_jobs(self.s3, resources, read_dead_messages(self.sqs, self.dlq_url)),
                duration_s=0,
                error=None,
                manifest=manifest,
            )
            manifest.upload(self.s3, RECORDS_BUCKET, "manifest.csv")
        return summary, self.text(RECORDS_BUCKET, "manifest.csv")

    def dead_letters(self) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        return response.get("Messages", [])


MakeStack = Callable[..., Stack]


@pytest.fixture
def make_stack(moto_endpoint: str, tmp_path: Path) -> Iterator[MakeStack]:
    """Build a stack on the (freshly reset) moto server; workers still running at the end are killed.

    The job queue's redrive policy is the one setup gives it for `job_retries`, unless a test sets
    `max_receive_count` itself.
    """
    stacks: list[Stack] = []

    def build(job_retries: int = 2, visibility_timeout_s: int = 30, max_receive_count: int | None = None) -> Stack:
        clients = {
            name: boto3.client(name, endpoint_url=moto_endpoint, region_name="us-east-1") for name in ("sqs", "s3")
        }
        sqs, s3 = clients["sqs"], clients["s3"]
        dlq_url = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        receives = max_receive_count or QueueSettings(job_retries=job_retries).redrive_receive_count
        attributes = sqs_ops.job_queue_attributes(dlq_arn, visibility_timeout_s, receives)
        queue_url = sqs.create_queue(QueueName="jobs", Attributes=attributes)["QueueUrl"]
        for bucket in (INPUT_BUCKET, OUTPUT_BUCKET, RECORDS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        stack = Stack(moto_endpoint, tmp_path, sqs, s3, queue_url, dlq_url, job_retries)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        for process in stack.workers:
            if process.poll() is None:
                process.kill()
                process.wait()


def write_script(tmp_path: Path, name: str, *lines: str) -> str:
    """A tiny job program; returns the command-line words that run it."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return f"{PYTHON} {shlex.quote(str(path))}"


def write_sleepy_program(tmp_path: Path) -> str:
    """A program that writes its process id into the file named by its argument once started, then
    sleeps for minutes."""
    return write_script(
        tmp_path,
        "sleepy.py",
        "import os, pathlib, sys, time",
        "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))",
        "time.sleep(300)",
    )


def is_running(pid: int) -> bool:
    """The process this test started (by its id) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


COPY_AND_UPPERCASE = """
import os, pathlib, sys
input_dir, output_dir, sample = sys.argv[1:4]
text = pathlib.Path(input_dir, "inputs", sample + ".txt").read_text()
out = pathlib.Path(output_dir)
(out / "result.txt").write_text(text.upper() + ":" + os.environ["JOB_SAMPLE"])
(out / "nested").mkdir()
(out / "nested" / "cwd.txt").write_text(os.getcwd() + "\\n" + os.environ["TMPDIR"])
print("processed", sample)
"""


def test_a_batch_is_processed_by_two_workers_which_then_exit_by_themselves(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    samples = [f"S{number:02d}" for number in range(10)]
    for sample in samples:
        stack.put(INPUT_BUCKET, f"inputs/{sample}.txt", f"data for {sample}")
        stack.send_job(f"job-{sample}", inputs=(f"inputs/{sample}.txt",), sample=sample)
    command = write_script(tmp_path, "copy.py", COPY_AND_UPPERCASE) + " {input_dir} {output_dir} {sample}"

    workers = [stack.start_worker(command), stack.start_worker(command, processes=2, stagger_s=0.5)]

    assert [stack.wait_for_exit(worker) for worker in workers] == [0, 0]
    for sample in samples:
        assert stack.text(OUTPUT_BUCKET, f"results/job-{sample}/result.txt") == f"DATA FOR {sample.upper()}:{sample}"
        assert stack.keys(OUTPUT_BUCKET, f"results/job-{sample}/") == [
            f"results/job-{sample}/nested/cwd.txt",
            f"results/job-{sample}/result.txt",
        ]
        cwd, scratch = stack.text(OUTPUT_BUCKET, f"results/job-{sample}/nested/cwd.txt").split("\n")
        assert cwd == str(REPO)  # the worker's own folder, so relative paths in commands work
        assert scratch.startswith(str(tmp_path / "work"))  # scratch files go to a per-job TMPDIR
        outcome = stack.outcome(f"job-{sample}")
        assert outcome["status"] == "succeeded"
        assert outcome["job_id"] == f"job-{sample}"
    assert len(stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/")) == len(samples)
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/") == []
    assert stack.counts() == (0, 0, 0)
    assert list((tmp_path / "work").iterdir()) == []  # per-job directories are removed


def test_a_program_that_fails_job_retries_times_is_dead_lettered_by_the_worker_with_each_runs_record(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(job_retries=2)
    stack.send_job("job-bad")
    program = write_script(
        tmp_path,
        "fail.py",
        "import pathlib, sys",
        "pathlib.Path(sys.argv[1], 'partial.txt').write_text('half')",
        "for number in range(30):",
        "    print('line', number)",
        "sys.exit(3)",
    )

    worker = stack.start_worker(program + " {output_dir}")

    assert stack.wait_for_exit(worker) == 0
    [dead] = stack.dead_letters()
    assert json.loads(dead["Body"])["job_id"] == "job-bad"
    # The worker moved it (the redrive policy allows 22 deliveries), with the reason.
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "exit status 3"
    attempts = stack.attempts("job-bad")
    assert [attempt["attempt"] for attempt in attempts] == [1, 2]
    for attempt in attempts:
        assert attempt["exit_code"] == 3
        assert attempt["reason"] == "exit status 3"
        assert attempt["permanent"] is False
        assert attempt["output_tail"].splitlines() == [f"line {number}" for number in range(10, 30)]
    assert "attempt 2 of 2 failed (exit status 3): sending to the dead-letter queue" in stack.logs()
    assert stack.keys(OUTPUT_BUCKET) == []
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/") == []
    assert stack.counts() == (0, 0, 0)


def test_a_missing_input_is_dead_lettered_at_once_with_the_reason(make_stack: MakeStack) -> None:
    stack = make_stack(job_retries=5)
    stack.send_job("job-orphan", inputs=("inputs/nowhere.txt",))

    worker = stack.start_worker(f"{PYTHON} -c pass")

    assert stack.wait_for_exit(worker) == 0
    [dead] = stack.dead_letters()
    assert json.loads(dead["Body"])["job_id"] == "job-orphan"
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert "inputs/nowhere.txt" in reason
    attempt = stack.attempt("job-orphan")
    assert attempt["permanent"] is True
    assert attempt["attempt"] == 1
    assert attempt["reason"] == reason
    assert stack.counts() == (0, 0, 0)


def test_malformed_messages_other_runs_and_missing_placeholders_are_dead_lettered(make_stack: MakeStack) -> None:
    stack = make_stack(job_retries=5)
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{not json")
    stack.send_job("job-no-plate", sample="A01")
    other_run = {
        "schema_version": 1,
        "run_id": "run-other",
        "job_id": "job-x",
        "fields": {},
        "inputs": [],
        "output": "x",
    }
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(other_run))

    worker = stack.start_worker(f"{PYTHON} -c pass {{plate}}")

    assert stack.wait_for_exit(worker) == 0
    reasons = sorted(dead["MessageAttributes"]["reason"]["StringValue"] for dead in stack.dead_letters())
    assert len(reasons) == 3
    assert "not JSON" in reasons[0]
    assert "{plate}" in reasons[1]
    assert "run-other" in reasons[2]
    assert stack.attempt("job-no-plate")["permanent"] is True
    [unparsed] = [key for key in stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/") if "unparsed-" in key]
    assert json.loads(stack.text(RECORDS_BUCKET, unparsed))["permanent"] is True


MARKER_PROGRAM = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran')"


def test_check_if_done_skips_a_job_whose_outputs_exist(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack()
    stack.put(OUTPUT_BUCKET, "results/job-done/a.csv", "1,2")
    stack.put(OUTPUT_BUCKET, "results/job-done/b.csv", "3,4")
    stack.put(OUTPUT_BUCKET, "results/job-done/notes.txt", "not counted")
    stack.send_job("job-done")
    marker = tmp_path / "marker"

    worker = stack.start_worker(
        f"{PYTHON} -c {shlex.quote(MARKER_PROGRAM)} {shlex.quote(str(marker))}",
        check_if_done="true",
        expected_number_files=2,
        necessary_string=".csv",
    )

    assert stack.wait_for_exit(worker) == 0
    assert stack.outcome("job-done")["status"] == "skipped"
    assert not marker.exists()
    assert stack.counts() == (0, 0, 0)


def test_a_duplicate_delivery_of_a_finished_job_is_deleted_without_running(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    earlier = {"job_id": "job-twice", "status": "succeeded", "attempt": 1, "duration_s": 1.0,
               "worker": "elsewhere:1:0", "finished_at": "2024-01-01T00:00:00+00:00"}  # fmt: skip
    stack.put(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/job-twice.succeeded.json", json.dumps(earlier))
    stack.send_job("job-twice")
    marker = tmp_path / "marker"

    worker = stack.start_worker(f"{PYTHON} -c {shlex.quote(MARKER_PROGRAM)} {shlex.quote(str(marker))}")

    assert stack.wait_for_exit(worker) == 0
    assert not marker.exists()
    assert stack.outcome("job-twice") == earlier
    assert stack.counts() == (0, 0, 0)


def test_the_heartbeat_keeps_a_long_job_from_a_second_worker(make_stack: MakeStack, tmp_path: Path) -> None:
    visibility_timeout_s = 2
    stack = make_stack(visibility_timeout_s=visibility_timeout_s)
    stack.send_job("job-long")
    starts = tmp_path / "starts"
    program = write_script(
        tmp_path,
        "long.py",
        "import sys, time",
        "with open(sys.argv[1], 'a') as starts:",
        "    starts.write('started\\n')",
        f"time.sleep({3 * visibility_timeout_s})  # three visibility timeouts",
    )
    command = f"{program} {shlex.quote(str(starts))}"

    workers = [stack.start_worker(command, visibility_timeout_s=visibility_timeout_s) for _ in range(2)]

    assert [stack.wait_for_exit(worker) for worker in workers] == [0, 0]
    assert starts.read_text().splitlines() == ["started"]
    outcome = stack.outcome("job-long")
    assert outcome["status"] == "succeeded"
    assert outcome["duration_s"] >= 3 * visibility_timeout_s
    assert stack.counts() == (0, 0, 0)


def test_sigterm_stops_the_program_and_hands_the_job_back_at_once(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(visibility_timeout_s=300)
    stack.send_job("job-sleepy")
    started = tmp_path / "started"
    program = write_sleepy_program(tmp_path)
    worker = stack.start_worker(f"{program} {shlex.quote(str(started))}", visibility_timeout_s=300)
    wait_until(started.exists, 15, "the program started")
    assert stack.counts() == (0, 1, 0)

    worker.send_signal(signal.SIGTERM)

    assert stack.wait_for_exit(worker, timeout_s=10) == 0
    assert not is_running(int(started.read_text()))  # stopped, not left sleeping its 300 s
    wait_until(lambda: stack.counts() == (1, 0, 0), 3, "the message is visible again")
    assert stack.keys(RECORDS_BUCKET) == []  # an interruption is not a failed attempt


def test_a_program_over_its_time_limit_is_killed_and_the_job_returned(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(job_retries=1)
    stack.send_job("job-slow")

    worker = stack.start_worker(f"{PYTHON} -c 'import time; time.sleep(300)'", job_timeout_s=1)

    assert stack.wait_for_exit(worker) == 0  # long before the program's 300 s
    attempt = stack.attempt("job-slow")
    assert "timed out" in attempt["reason"]
    assert attempt["exit_code"] is None
    assert attempt["permanent"] is False
    # Its one retry spent, the worker moved it to the dead-letter queue with the reason.
    [dead] = stack.dead_letters()
    assert json.loads(dead["Body"])["job_id"] == "job-slow"
    assert dead["MessageAttributes"]["reason"]["StringValue"] == attempt["reason"]


def test_a_deleted_queue_ends_the_worker_cleanly(make_stack: MakeStack) -> None:
    stack = make_stack()
    worker = stack.start_worker(f"{PYTHON} -c pass", idle_exit_s=600)
    wait_until(lambda: "loop started" in stack.logs(), 15, "the worker is polling")

    stack.sqs.delete_queue(QueueUrl=stack.queue_url)

    assert stack.wait_for_exit(worker, timeout_s=15) == 0
    assert "no longer exists" in stack.logs()


def test_a_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "AWS_SECRET_ACCESS_KEY": "do-not-log-me"}

    result = subprocess.run(
        [WORKER_PYTHON, "-m", "worker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 2
    assert "DISTRIBUTED_COMMAND is required" in result.stderr
    assert "do-not-log-me" not in result.stdout + result.stderr


# Hardening: crashes, Spot interruptions, per-job log streams, resource lines, and a chaos run.


def test_a_job_whose_worker_is_killed_completes_on_another_worker(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(visibility_timeout_s=3)
    stack.send_job("job-crash")
    starts = tmp_path / "starts"
    program = write_script(
        tmp_path,
        "slow.py",
        "import os, pathlib, sys, time",
        "with open(sys.argv[1], 'a') as starts:",
        "    starts.write(f'{os.getpid()} {os.getppid()}\\n')",
        "if len(pathlib.Path(sys.argv[1]).read_text().splitlines()) == 1:",
        "    time.sleep(60)  # the first run is killed long before",
        "pathlib.Path(sys.argv[2], 'result.txt').write_text('done')",
    )
    command = f"{program} {shlex.quote(str(starts))} {{output_dir}}"
    workers = [stack.start_worker(command, visibility_timeout_s=3) for _ in range(2)]
    wait_until(lambda: starts.exists() and starts.read_text().endswith("\n"), 15, "the program started")

    program_pid, worker_pid = (int(pid) for pid in starts.read_text().split()[:2])
    [victim] = [worker for worker in workers if worker.pid == worker_pid]
    [survivor] = [worker for worker in workers if worker is not victim]
    victim.kill()
    # A container's programs die with it; a bare process's do not, so end this one by hand.
    os.killpg(program_pid, signal.SIGKILL)

    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert stack.wait_for_exit(survivor) == 0
    outcome = stack.outcome("job-crash")
    assert outcome["status"] == "succeeded"
    assert outcome["worker"].split(":")[1] == str(survivor.pid)
    assert [line.split()[1] for line in starts.read_text().splitlines()] == [str(victim.pid), str(survivor.pid)]
    assert stack.text(OUTPUT_BUCKET, "results/job-crash/result.txt") == "done"
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/") == []  # a killed attempt records nothing
    assert stack.counts() == (0, 0, 0)


INTERRUPTIONS = 5


def test_a_job_interrupted_five_times_with_two_retries_still_succeeds_and_spends_none(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Each of the first five runs is cut short: its worker SIGTERMed (the job handed back) or
    SIGKILLed (the job comes back after its visibility timeout). SQS counts six deliveries, three
    times job_retries; the job's own records count no failed run, so it neither dies nor loses a retry.
    """
    stack = make_stack(job_retries=2, visibility_timeout_s=3)
    stack.send_job("job-tough")
    starts = tmp_path / "starts"
    program = write_script(
        tmp_path,
        "tough.py",
        "import os, pathlib, sys, time",
        "with open(sys.argv[1], 'a') as starts:",
        "    starts.write(f'{os.getpid()}\\n')",
        f"if len(pathlib.Path(sys.argv[1]).read_text().splitlines()) <= {INTERRUPTIONS}:",
        "    time.sleep(300)  # interrupted long before",
        "pathlib.Path(sys.argv[2], 'result.txt').write_text('done')",
    )
    command = f"{program} {shlex.quote(str(starts))} {{output_dir}}"

    def runs() -> list[str]:
        return starts.read_text().splitlines() if starts.exists() else []

    for interruption in range(INTERRUPTIONS):
        worker = stack.start_worker(command, visibility_timeout_s=3)
        wait_until(lambda: len(runs()) == interruption + 1, 20, f"run {interruption + 1} started")
        if interruption % 2 == 0:
            worker.send_signal(signal.SIGTERM)
            assert stack.wait_for_exit(worker, timeout_s=10) == 0
        else:
            worker.kill()
            # A container's program dies with its worker; a bare process's does not.
            os.killpg(int(runs()[-1]), signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
    last = stack.start_worker(command, visibility_timeout_s=3)

    assert stack.wait_for_exit(last, timeout_s=30) == 0
    assert len(runs()) == INTERRUPTIONS + 1
    outcome = stack.outcome("job-tough")
    assert outcome["status"] == "succeeded"
    assert outcome["attempt"] == 1  # no failed run before it
    assert stack.text(OUTPUT_BUCKET, "results/job-tough/result.txt") == "done"
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/") == []
    assert stack.counts() == (0, 0, 0)
    assert stack.counts(stack.dlq_url) == (0, 0, 0)


def test_a_job_that_kills_its_worker_every_time_is_caught_by_the_redrive_safety_net_and_said_so(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """No worker lives to record such a job's runs, so only SQS's receive count can stop it: the
    redrive policy (here after 2 deliveries, normally job_retries + 20) moves it, and the summary
    names the likely cause."""
    stack = make_stack(job_retries=2, visibility_timeout_s=2, max_receive_count=2)
    stack.send_job("job-poison")
    command = write_script(tmp_path, "poison.py", "import os, signal", "os.kill(os.getppid(), signal.SIGKILL)")

    for _ in range(2):
        assert stack.wait_for_exit(stack.start_worker(command, visibility_timeout_s=2)) == -signal.SIGKILL
    last = stack.start_worker(command, visibility_timeout_s=2)

    assert stack.wait_for_exit(last) == 0  # its receive moved the job instead of delivering it
    assert stack.keys(RECORDS_BUCKET) == []
    summary, _ = stack.summary_and_manifest(["job-poison"])
    [dead] = summary.failed
    assert dead.reason.startswith("moved to the dead-letter queue by the queue's redrive policy after")
    assert "kill its worker" in dead.reason


def test_a_job_whose_records_show_its_retries_spent_is_dead_lettered_without_running(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """A worker that recorded a job's last failed run but died before moving the job leaves it in
    the queue; the next worker reads the records and moves it, with the reason, without running it."""
    stack = make_stack(job_retries=2)
    for attempt in (1, 2):
        record = {"job_id": "job-spent", "attempt": attempt, "permanent": False, "reason": "exit status 1"}
        stack.put(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/job-spent.{attempt}.json", json.dumps(record))
    # Another job's records, whose id starts with this one's: not this job's failed runs.
    stack.put(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/job-spent.2.1.json", "{}")
    stack.send_job("job-spent")
    marker = tmp_path / "marker"

    worker = stack.start_worker(f"{PYTHON} -c {shlex.quote(MARKER_PROGRAM)} {shlex.quote(str(marker))}")

    assert stack.wait_for_exit(worker) == 0
    assert not marker.exists()
    [dead] = stack.dead_letters()
    assert json.loads(dead["Body"])["job_id"] == "job-spent"
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "its program failed 2 time(s) (job_retries: 2)"
    assert stack.counts() == (0, 0, 0)


class FakeImds:
    """A stand-in for EC2's instance metadata service (IMDSv2) on 127.0.0.1, run by the test.

    moto does not emulate IMDS, so this loopback fake is the one non-moto AWS endpoint in these
    tests: a token for a PUT to the token path, then 404 on the Spot instance-action path until
    `interrupt` is called, and 200 with the notice after.
    """

    TOKEN = "fake-imds-token"

    def __init__(self) -> None:
        self.notice: dict[str, str] | None = None
        # The token header of every GET, in order.
        self.get_tokens: list[str | None] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == spot.TOKEN_PATH and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(200, fake.TOKEN)
                else:
                    self._reply(400, "")

            def do_GET(self) -> None:  # noqa: N802
                token = self.headers.get("X-aws-ec2-metadata-token")
                fake.get_tokens.append(token)
                if token != fake.TOKEN:
                    self._reply(401, "")
                elif self.path != spot.INSTANCE_ACTION_PATH or fake.notice is None:
                    self._reply(404, "")
                else:
                    self._reply(200, json.dumps(fake.notice))

            def _reply(self, status: int, body: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                """Quiet: the test's output is the worker's log."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeImds:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def interrupt(self, action: str, at: str) -> None:
        self.notice = {"action": action, "time": at}


@pytest.fixture
def fake_imds() -> Iterator[FakeImds]:
    with FakeImds() as imds:
        yield imds


def test_a_spot_interruption_notice_stops_the_worker_and_hands_the_job_back_at_once(
    make_stack: MakeStack, tmp_path: Path, fake_imds: FakeImds
) -> None:
    """The notice comes from the loopback FakeImds (moto has no IMDS); the rest is the moto server."""
    stack = make_stack(visibility_timeout_s=300)
    stack.send_job("job-on-spot")
    started = tmp_path / "started"
    program = write_sleepy_program(tmp_path)
    worker = stack.start_worker(
        f"{program} {shlex.quote(str(started))}",
        visibility_timeout_s=300,
        spot_watch="true",
        imds_endpoint=fake_imds.url,
    )
    wait_until(started.exists, 15, "the program started")
    assert fake_imds.get_tokens  # the worker looked before taking the job: no notice (404) yet
    assert worker.poll() is None
    assert stack.counts() == (0, 1, 0)

    fake_imds.interrupt("terminate", "2026-03-01T12:02:00Z")

    assert stack.wait_for_exit(worker, timeout_s=15) == 0
    assert not is_running(int(started.read_text()))
    wait_until(lambda: stack.counts() == (1, 0, 0), 3, "the message is visible again")
    assert stack.keys(RECORDS_BUCKET) == []  # an interruption is not a failed attempt
    assert re.search(r"WARNING .*spot interruption notice: terminate at 2026-03-01T12:02:00Z", stack.logs())
    assert set(fake_imds.get_tokens) == {FakeImds.TOKEN}


def test_the_spot_watcher_reads_a_notice_and_shrugs_off_an_unreachable_metadata_service(
    fake_imds: FakeImds,
) -> None:
    log = logging.LoggerAdapter(logging.getLogger("worker"), {})
    unreachable = spot.SpotWatcher(f"http://127.0.0.1:{emulator.free_port()}", threading.Event(), log)
    assert unreachable.check() is False

    stop = threading.Event()
    watcher = spot.SpotWatcher(fake_imds.url, stop, log)
    assert watcher.check() is False
    assert not stop.is_set()
    fake_imds.interrupt("stop", "2026-03-01T12:02:00Z")
    assert watcher.check() is True
    assert stop.is_set()
    assert fake_imds.get_tokens == [FakeImds.TOKEN, FakeImds.TOKEN]  # one token serves many polls


ECHO_AND_WAIT = """
import pathlib, sys, time
job_id, go = sys.argv[1:3]
print("hello from", job_id, flush=True)
if job_id == "job-b":
    print("halfway", flush=True)
    deadline = time.monotonic() + 30
    while not pathlib.Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
print("bye from", job_id)
"""


def stream_messages(logs: Any, group: str, stream: str) -> list[str]:
    """The stream's messages, oldest first; none while the stream (or its group) does not exist yet."""
    try:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ResourceNotFoundException"
        return []
    return [event["message"] for event in events]


def test_each_job_gets_its_own_log_stream_with_its_program_output(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack()
    logs = boto3.client("logs", endpoint_url=stack.endpoint, region_name="us-east-1")
    group = "cells-jobs"  # not created beforehand: the worker makes it
    stack.send_job("job-a")
    stack.send_job("job-b")
    go = tmp_path / "go"
    command = write_script(tmp_path, "echo.py", ECHO_AND_WAIT) + f" {{job_id}} {shlex.quote(str(go))}"

    worker = stack.start_worker(command, processes=2, log_group=group)

    # Sent while the job runs, not only at its end.
    wait_until(
        lambda: stack.counts()[1] > 0 and any("| halfway" in line for line in stream_messages(logs, group, "job-b")),
        15,
        "job-b's first lines are in its stream while it runs",
    )
    go.touch()
    assert stack.wait_for_exit(worker) == 0
    streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    assert sorted(stream["logStreamName"] for stream in streams) == ["job-a", "job-b"]
    for job_id in ("job-a", "job-b"):
        messages = stream_messages(logs, group, job_id)
        assert re.fullmatch(rf"INFO \[[^ ]+:{worker.pid}:\d run={RUN_ID}\] starting attempt 1", messages[0])
        assert re.fullmatch(r"INFO \[.*\] succeeded in [\d.]+ s", messages[-1])
        program_lines = [message.split("] | ", 1)[1] for message in messages if "] | " in message]
        expected = ["hello from " + job_id, *(["halfway"] if job_id == "job-b" else []), "bye from " + job_id]
        assert program_lines == expected
    assert "could not write to CloudWatch" not in stack.logs()


def test_a_log_stream_that_cannot_be_written_never_fails_a_job(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack()
    stack.send_job("job-a")
    stack.send_job("job-b")
    # CloudWatch Logs, and only it, is a port where nothing listens.
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", f"http://127.0.0.1:{emulator.free_port()}")

    worker = stack.start_worker(f"{PYTHON} -c 'print(42)'", log_group="cells-jobs")

    assert stack.wait_for_exit(worker, timeout_s=60) == 0
    assert [stack.outcome(job_id)["status"] for job_id in ("job-a", "job-b")] == ["succeeded", "succeeded"]
    assert stack.counts() == (0, 0, 0)
    warnings = re.findall(r"WARNING .*could not write to CloudWatch log stream cells-jobs/job-[ab]", stack.logs())
    assert len(warnings) == 1  # once, not once per job


def test_the_worker_logs_a_resource_line_every_interval(make_stack: MakeStack) -> None:
    stack = make_stack()

    worker = stack.start_worker(f"{PYTHON} -c pass", resource_log_s=1, idle_exit_s=3)

    assert stack.wait_for_exit(worker) == 0
    lines = re.findall(
        r"(INFO|WARNING) \[main .*\] resources: disk \d+% free \([\d.]+ of [\d.]+ GiB\) at (\S+); "
        r"memory \d+% available \([\d.]+ of [\d.]+ GiB\); load [\d.]+ on \d+ CPU\(s\)",
        stack.logs(),
    )
    assert len(lines) >= 2
    assert {path for _, path in lines} == {str(stack.tmp_path / "work")}


CHAOS_JOBS = 500
CHAOS_WORKERS = 4
CHAOS_KILLS = 6
# Jobs waiting in the queue while the test feeds it: enough that no worker ever sees it empty.
CHAOS_BACKLOG = 20


def top_up(stack: Stack, pending: list[str], backlog: int) -> None:
    """Send jobs from the front of `pending` until about `backlog` are waiting in the queue."""
    missing = backlog - stack.counts()[0]
    if missing > 0:
        batch, pending[:] = pending[:missing], pending[missing:]
        stack.send_jobs(batch)


def test_chaos_workers_killed_at_random_and_duplicate_deliveries_lose_no_job_and_count_none_twice(
    make_stack: MakeStack,
) -> None:
    """500 jobs, 4 workers; every 1-2 s one worker is SIGKILLed and a new one started in its place.

    A killed worker's job comes back after the (short) visibility timeout, as a job does whose worker
    did not delete it in time; and every fifth job is delivered twice on purpose (SQS delivers at
    least once). Whatever the receive counts, every job must end with exactly one output and one
    `succeeded` outcome record, nothing dead, and the run's manifest must list the 500 jobs once
    each, its counts matching the outputs in S3. The test feeds the queue as it drains rather than
    all at once: moto's cost per call grows with the queue's depth, which is not what is tested.
    """
    rng = random.Random(20260301)
    stack = make_stack(visibility_timeout_s=3)
    job_ids = [f"job-{number:03d}" for number in range(CHAOS_JOBS)]
    pending = job_ids + job_ids[::5]  # every fifth job a second time
    rng.shuffle(pending)
    top_up(stack, pending, CHAOS_BACKLOG)
    # sh, not python: a job takes milliseconds, so the workers spend their time on the queue.
    command = """sh -c 'echo "$0" > "$1/result.txt"' {job_id} {output_dir}"""
    settings = {"visibility_timeout_s": 3, "wait_time_s": 1}
    workers = [stack.start_worker(command, **settings) for _ in range(CHAOS_WORKERS)]
    wait_until(lambda: stack.counts()[1] > 0, 30, "the workers are taking jobs")  # kills then hit jobs

    kills = 0
    next_kill = time.monotonic() + rng.uniform(1, 2)
    while pending or kills < CHAOS_KILLS:
        top_up(stack, pending, CHAOS_BACKLOG)
        running = [worker for worker in workers if worker.poll() is None]
        assert running, "every worker exited while jobs were still to come"
        if kills < CHAOS_KILLS and time.monotonic() >= next_kill:
            victim = rng.choice(running)
            victim.kill()
            victim.wait()
            workers[workers.index(victim)] = stack.start_worker(command, **settings)
            kills += 1
            next_kill += rng.uniform(1, 2)
        time.sleep(0.2)

    assert [stack.wait_for_exit(worker, timeout_s=60) for worker in workers] == [0] * CHAOS_WORKERS
    assert stack.keys(OUTPUT_BUCKET) == [f"results/{job_id}/result.txt" for job_id in job_ids]
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/") == [
        f"runs/{RUN_ID}/outcomes/{job_id}.succeeded.json" for job_id in job_ids
    ]
    for job_id in rng.sample(job_ids, 25):  # each output is its own job's
        assert stack.text(OUTPUT_BUCKET, f"results/{job_id}/result.txt") == job_id + "\n"
    assert stack.counts() == (0, 0, 0)
    assert stack.counts(stack.dlq_url) == (0, 0, 0)

    summary, manifest = stack.summary_and_manifest(job_ids)
    rows = list(csv.DictReader(io.StringIO(manifest)))
    assert sorted(row["job_id"] for row in rows) == job_ids  # each job once
    assert summary.succeeded == sum(row["state"] == "succeeded" for row in rows) == len(stack.keys(OUTPUT_BUCKET))

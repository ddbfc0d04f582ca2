"""Real worker processes (`python -m worker`) against the moto server.

Every test asserts on the state left in AWS (objects, records, queue counts, the dead-letter queue),
never on the order of calls.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "run-test"
INPUT_BUCKET = "worker-inputs"
OUTPUT_BUCKET = "worker-outputs"
RECORDS_BUCKET = "worker-records"
PYTHON = shlex.quote(sys.executable)
# The worker may run under another interpreter, e.g. the oldest Python an image may have (3.10).
WORKER_PYTHON = os.environ.get("DISTRIBUTED_TEST_WORKER_PYTHON", sys.executable)


@dataclass
class Stack:
    """A job queue with its dead-letter queue, three buckets, and the workers started against them."""

    endpoint: str
    tmp_path: Path
    sqs: Any
    s3: Any
    queue_url: str
    dlq_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def send_job(self, job_id: str, inputs: tuple[str, ...] = (), **fields: Any) -> None:
        body = {
            "schema_version": 1,
            "run_id": RUN_ID,
            "job_id": job_id,
            "fields": fields,
            "inputs": list(inputs),
            "output": f"results/{job_id}",
        }
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))

    def put(self, bucket: str, key: str, body: bytes | str) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def start_worker(self, command: str, **settings: object) -> subprocess.Popen[bytes]:
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
            "DISTRIBUTED_WORK_DIR": str(self.tmp_path / "work"),
            **{f"DISTRIBUTED_{name.upper()}": str(value) for name, value in settings.items()},
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
        listing = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def text(self, bucket: str, key: str) -> str:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def outcome(self, job_id: str) -> dict[str, Any]:
        """The job's one outcome record, whose key carries its status."""
        [key] = self.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/{job_id}.")
        record = json.loads(self.text(RECORDS_BUCKET, key))
        assert key.endswith(f"/{job_id}.{record['status']}.json")
        return record

    def attempt(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.text(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/{job_id}.json"))

    def dead_letters(self) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        return response.get("Messages", [])


MakeStack = Callable[..., Stack]


@pytest.fixture
def make_stack(moto_endpoint: str, tmp_path: Path) -> Iterator[MakeStack]:
    """Build a stack on the (freshly reset) moto server; workers still running at the end are killed."""
    stacks: list[Stack] = []

    def build(max_receive_count: int = 2, visibility_timeout_s: int = 30) -> Stack:
        clients = {
            name: boto3.client(name, endpoint_url=moto_endpoint, region_name="us-east-1") for name in ("sqs", "s3")
        }
        sqs, s3 = clients["sqs"], clients["s3"]
        dlq_url = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        queue_url = sqs.create_queue(
            QueueName="jobs",
            Attributes={"VisibilityTimeout": str(visibility_timeout_s), "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        for bucket in (INPUT_BUCKET, OUTPUT_BUCKET, RECORDS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        stack = Stack(moto_endpoint, tmp_path, sqs, s3, queue_url, dlq_url)
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


def test_a_failing_program_is_retried_then_dead_lettered_without_uploading(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(max_receive_count=2)
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
    attempt = stack.attempt("job-bad")
    assert attempt["exit_code"] == 3
    assert attempt["reason"] == "exit status 3"
    assert attempt["permanent"] is False
    assert attempt["attempt"] == 2
    assert attempt["output_tail"].splitlines() == [f"line {number}" for number in range(10, 30)]
    assert stack.keys(OUTPUT_BUCKET) == []
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/outcomes/") == []
    assert stack.counts() == (0, 0, 0)


def test_a_missing_input_is_dead_lettered_at_once_with_the_reason(make_stack: MakeStack) -> None:
    stack = make_stack(max_receive_count=5)
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
    stack = make_stack(max_receive_count=5)
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
    stack = make_stack(visibility_timeout_s=2)
    stack.send_job("job-long")
    starts = tmp_path / "starts"
    program = write_script(
        tmp_path,
        "long.py",
        "import sys, time",
        "with open(sys.argv[1], 'a') as starts:",
        "    starts.write('started\\n')",
        "time.sleep(6)",
    )
    command = f"{program} {shlex.quote(str(starts))}"

    workers = [stack.start_worker(command, visibility_timeout_s=2) for _ in range(2)]

    assert [stack.wait_for_exit(worker) for worker in workers] == [0, 0]
    assert starts.read_text().splitlines() == ["started"]
    assert stack.outcome("job-long")["status"] == "succeeded"
    assert stack.counts() == (0, 0, 0)


def test_sigterm_stops_the_program_and_hands_the_job_back_at_once(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(visibility_timeout_s=300)
    stack.send_job("job-sleepy")
    started = tmp_path / "started"
    program = write_script(
        tmp_path,
        "sleepy.py",
        "import pathlib, sys, time",
        "pathlib.Path(sys.argv[1]).write_text('yes')",
        "time.sleep(300)",
    )
    worker = stack.start_worker(f"{program} {shlex.quote(str(started))}", visibility_timeout_s=300)
    wait_until(started.exists, 15, "the program started")
    assert stack.counts() == (0, 1, 0)

    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)

    assert stack.wait_for_exit(worker, timeout_s=10) == 0
    assert time.monotonic() - signalled < 6
    wait_until(lambda: stack.counts() == (1, 0, 0), 3, "the message is visible again")
    assert stack.keys(RECORDS_BUCKET) == []  # an interruption is not a failed attempt


def test_a_program_over_its_time_limit_is_killed_and_the_job_returned(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(max_receive_count=1)
    stack.send_job("job-slow")
    began = time.monotonic()

    worker = stack.start_worker(f"{PYTHON} -c 'import time; time.sleep(30)'", job_timeout_s=1)

    assert stack.wait_for_exit(worker) == 0
    assert time.monotonic() - began < 20
    attempt = stack.attempt("job-slow")
    assert "timed out" in attempt["reason"]
    assert attempt["exit_code"] is None
    assert attempt["permanent"] is False
    # Returned to the queue rather than deleted: the redrive policy then moved it on its next receive.
    [dead] = stack.dead_letters()
    assert json.loads(dead["Body"])["job_id"] == "job-slow"


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

"""One worker loop: poll, run one job at a time, record, until the queue drains (worker/README.md).

Every decision is made by `worker.core`; this module only talks to AWS, the file system and the
program, and decides which kind of failure each I/O error is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from .core import (
    MAX_REASON_CHARS,
    JobMessage,
    MalformedJob,
    PermanentFailure,
    TransientFailure,
    WorkerSettings,
    attempt_key,
    attempt_prefix,
    attempt_record,
    backoff_delay_s,
    error_code,
    failed_runs,
    job_environment,
    outcome_key,
    outcome_prefix,
    outcome_record,
    output_key,
    outputs_complete,
    parse_message,
    render_command,
    retries_spent,
)
from .inputs import fetch_inputs
from .joblog import JobLogRouter
from .output import secrets_in
from .program import Heartbeat, program_environment, run_program
from .protection import TaskProtection

logger = logging.getLogger("worker")

QUEUE_GONE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
QUEUE_COUNT_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
# An empty poll cycle takes at least this long, so a short poll (wait time 0) cannot spin.
MIN_EMPTY_POLL_S = 1.0


class Interrupted(Exception):
    """The worker is stopping: the job is handed back to the queue, no attempt is recorded."""


@dataclass(frozen=True)
class Clients:
    """One loop's boto3 clients (see worker.main.make_clients)."""

    sqs: Any
    s3: Any


@contextmanager
def job_directories(parent: str | None) -> Iterator[tuple[Path, Path, Path]]:
    """Fresh input, output and work directories for one job, removed afterwards whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="job-", dir=parent))
    try:
        directories = (root / "input", root / "output", root / "work")
        for directory in directories:
            directory.mkdir()
        yield directories
    finally:
        shutil.rmtree(root, ignore_errors=True)


def utc_now() -> datetime:
    """Records carry UTC times."""
    return datetime.now(timezone.utc)  # noqa: UP017 - the image may run Python 3.10


class WorkerLoop:
    """One loop: poll, run one job at a time, until the queue has drained, vanished or we stop."""

    def __init__(
        self,
        index: int,
        settings: WorkerSettings,
        clients: Clients,
        stop: threading.Event,
        job_logs: JobLogRouter | None,
        protection: TaskProtection | None = None,
    ) -> None:
        self.index = index
        self.settings = settings
        self.sqs = clients.sqs
        self.s3 = clients.s3
        self.stop = stop
        # None: no per-job CloudWatch log streams (DISTRIBUTED_LOG_GROUP unset).
        self.job_logs = job_logs
        self.worker = f"{settings.worker_name or socket.gethostname()}:{os.getpid()}:{index}"
        self.log = self._job_log("-")
        # Keeps ECS from stopping this container while it runs a job (on ECS only).
        self.protection = protection or TaskProtection.from_environment(os.environ, self.log)
        # When the queue was first seen drained (monotonic time), for the idle exit.
        self._idle_since: float | None = None
        # Masked in the program's output, whether or not the program gets them.
        self.secrets = secrets_in(os.environ)

    def _job_log(self, job_id: str) -> logging.LoggerAdapter[Any]:
        return logging.LoggerAdapter(logger, {"worker": self.worker, "run_id": self.settings.run_id, "job_id": job_id})

    def run(self) -> None:
        if self.stop.wait(self.index * self.settings.stagger_s):
            return
        self.log.info("loop started")
        failures = 0
        while not self.stop.is_set():
            try:
                if not self._step():
                    return
                failures = 0
            except ClientError as exc:
                if error_code(exc) in QUEUE_GONE_CODES:
                    self.log.info("the queue no longer exists: loop finished")
                    return
                failures = self._back_off(failures)
            except Exception:  # noqa: BLE001 - the loop must survive anything; _back_off logs it
                failures = self._back_off(failures)
        self.log.info("stopped")

    def _step(self) -> bool:
        """One poll and whatever it brought; False once the queue has been drained long enough."""
        polled_at = time.monotonic()
        message = self._receive()
        if message is not None:
            self._idle_since = None
            self._handle(message)
            return True
        if not self._queue_is_empty():
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = polled_at
        if self._idle_since is not None and time.monotonic() - self._idle_since >= self.settings.idle_exit_s:
            self.log.info("queue empty for %.0f s: loop finished", self.settings.idle_exit_s)
            return False
        self.stop.wait(max(0.0, MIN_EMPTY_POLL_S - (time.monotonic() - polled_at)))
        return True

    def _back_off(self, failures: int) -> int:
        """Log the current exception and wait before the next try; returns the new failure count."""
        failures += 1
        delay = backoff_delay_s(failures)
        self.log.exception("error in the worker loop (failure %d in a row); retrying in %.0f s", failures, delay)
        self.stop.wait(delay)
        return failures

    def _receive(self) -> dict[str, Any] | None:
        response = self.sqs.receive_message(
            QueueUrl=self.settings.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.settings.wait_time_s,
            VisibilityTimeout=self.settings.visibility_timeout_s,
        )
        messages = response.get("Messages", [])
        return messages[0] if messages else None

    def _queue_is_empty(self) -> bool:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.settings.queue_url, AttributeNames=list(QUEUE_COUNT_ATTRIBUTES)
        )["Attributes"]
        return all(int(attributes.get(name, "0")) == 0 for name in QUEUE_COUNT_ATTRIBUTES)

    def _handle(self, message: dict[str, Any]) -> None:
        """Take one message through its whole life: it ends deleted, dead-lettered or visible again."""
        receipt = message["ReceiptHandle"]
        if self.stop.is_set():
            self._release(receipt, self.log)
            return
        try:
            job = parse_message(message["Body"])
            if job.run_id != self.settings.run_id:
                raise MalformedJob(f"the job belongs to run {job.run_id!r}, not {self.settings.run_id!r}", job.job_id)
        except MalformedJob as exc:
            job_id = exc.job_id or f"unparsed-{message['MessageId']}"
            self._fail_permanently(message, job_id, 1, exc.reason, self._job_log(job_id))
            return
        log = self._job_log(job.job_id)
        if self._has_outcome(job):
            log.info("already done (duplicate delivery): deleting the message")
            self._delete(receipt)
            return
        # The job's own records count its failed runs; SQS's receive count also counts hand-backs.
        failed = self._failed_runs(job)
        if retries_spent(failed, self.settings.job_retries):
            # A worker recorded the last failure but stopped before it could move the job.
            reason = f"its program failed {failed} time(s) (job_retries: {self.settings.job_retries})"
            log.error("sending to the dead-letter queue: %s", reason)
            self._send_to_dead_letter_queue(message, reason)
            return
        with self._job_log_stream(job.job_id):
            self._attempt(message, job, failed + 1, log)

    def _job_log_stream(self, job_id: str) -> AbstractContextManager[None]:
        """Where the attempt's lines also go: its CloudWatch log stream, when there are streams."""
        if self.job_logs is None:
            return nullcontext()
        return self.job_logs.stream(self.worker, job_id)

    def _attempt(self, message: dict[str, Any], job: JobMessage, attempt: int, log: logging.LoggerAdapter[Any]) -> None:
        """Run the job once; the message ends deleted, dead-lettered or visible again."""
        receipt = message["ReceiptHandle"]
        log.info("starting attempt %d", attempt)
        started = time.monotonic()
        heartbeat = Heartbeat(
            self.sqs,
            queue_url=self.settings.queue_url,
            receipt_handle=receipt,
            visibility_timeout_s=self.settings.visibility_timeout_s,
            interval_s=self.settings.heartbeat_interval_s,
            log=log,
        )
        try:
            with self.protection.while_busy(), heartbeat:
                status = self._execute(job, log)
        except Interrupted:
            log.info("stopping: handing the job back to the queue")
            self._release(receipt, log)
            return
        except PermanentFailure as exc:
            self._fail_permanently(message, job.job_id, attempt, exc.reason, log)
            return
        except TransientFailure as exc:
            self._fail_transiently(message, job.job_id, attempt, exc, log)
            return
        duration_s = time.monotonic() - started
        record = outcome_record(
            job.job_id, status=status, attempt=attempt, duration_s=duration_s, worker=self.worker, finished_at=utc_now()
        )
        self._put_record(outcome_key(job.run_id, job.job_id, status), record)
        self._delete(receipt)
        log.info("%s in %.1f s", status, duration_s)

    def _execute(self, job: JobMessage, log: logging.LoggerAdapter[Any]) -> str:
        """Skip or run the job; returns the outcome status or raises the kind of failure."""
        if self.settings.check_if_done and outputs_complete(self._list_outputs(job), self.settings):
            log.info("check-if-done: outputs already present, skipping")
            return "skipped"
        with job_directories(self.settings.work_dir) as (input_dir, output_dir, work_dir):
            argv = render_command(self.settings.command, job, str(input_dir), str(output_dir))
            job_env = self._job_environment(job, work_dir)
            self._download_inputs(job, input_dir, log)
            if self.stop.is_set():
                raise Interrupted
            try:
                # The worker's own folder is the program's, so relative paths in the command work;
                # scratch files go to a per-job TMPDIR that copies running side by side never share.
                result = run_program(
                    argv,
                    env=program_environment(
                        os.environ,
                        {**job_env, "TMPDIR": str(work_dir)},
                        pass_aws_credentials=self.settings.pass_aws_credentials,
                    ),
                    timeout_s=self.settings.job_timeout_s,
                    stop=self.stop,
                    log=log,
                    secrets=self.secrets,
                )
            except OSError as exc:
                raise TransientFailure(f"could not start the program: {exc}") from None
            if result.interrupted:
                raise Interrupted
            if result.timed_out:
                raise TransientFailure(f"timed out after {self.settings.job_timeout_s:g} s", None, result.output_tail)
            if result.exit_code != 0:
                raise TransientFailure(f"exit status {result.exit_code}", result.exit_code, result.output_tail)
            self._upload_outputs(job, output_dir, result.output_tail, log)
        return "succeeded"

    @staticmethod
    def _job_environment(job: JobMessage, work_dir: Path) -> dict[str, str]:
        """The job's variables; fields too big for the environment are written to files beside."""
        files_dir = work_dir.parent / "fields"
        variables, files = job_environment(job, str(files_dir))
        try:
            for path, text in files.items():
                files_dir.mkdir(exist_ok=True)
                Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise TransientFailure(f"could not write the job's fields to {files_dir}: {exc}") from None
        return variables

    def _list_outputs(self, job: JobMessage) -> Iterator[tuple[str, int]]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.settings.output_bucket, Prefix=f"{job.output}/"):
            for item in page.get("Contents", []):
                yield item["Key"], item["Size"]

    def _download_inputs(self, job: JobMessage, input_dir: Path, log: logging.LoggerAdapter[Any]) -> None:
        log.info("downloaded %d input(s)", fetch_inputs(self.s3, self.settings, job, input_dir))

    def _upload_outputs(
        self, job: JobMessage, output_dir: Path, output_tail: Sequence[str], log: logging.LoggerAdapter[Any]
    ) -> None:
        count = 0
        for directory, _, files in os.walk(output_dir):
            for name in sorted(files):
                path = Path(directory, name)
                key = output_key(job, path.relative_to(output_dir).as_posix())
                try:
                    self.s3.upload_file(str(path), self.settings.output_bucket, key)
                except (S3UploadFailedError, ClientError, BotoCoreError, OSError) as exc:
                    raise TransientFailure(f"could not upload {key}: {exc}", 0, output_tail) from None
                count += 1
        if count == 0:
            log.warning("the program wrote no output files")
        else:
            log.info("uploaded %d output file(s) to s3://%s/%s/", count, self.settings.output_bucket, job.output)

    def _fail_permanently(
        self, message: dict[str, Any], job_id: str, attempt: int, reason: str, log: logging.LoggerAdapter[Any]
    ) -> None:
        log.error("permanent failure, sending to the dead-letter queue: %s", reason)
        self._record_attempt(job_id, attempt=attempt, permanent=True, reason=reason)
        self._send_to_dead_letter_queue(message, reason)

    def _fail_transiently(
        self,
        message: dict[str, Any],
        job_id: str,
        attempt: int,
        failure: TransientFailure,
        log: logging.LoggerAdapter[Any],
    ) -> None:
        """Record the failed run; then retry the job after the delay, or dead-letter it when that
        was its last retry (the worker does it, not the redrive policy: see retries_spent)."""
        self._record_attempt(
            job_id,
            attempt=attempt,
            permanent=False,
            reason=failure.reason,
            exit_code=failure.exit_code,
            output_tail=failure.output_tail,
        )
        retries = self.settings.job_retries
        if retries_spent(attempt, retries):
            log.error(
                "attempt %d of %d failed (%s): sending to the dead-letter queue", attempt, retries, failure.reason
            )
            self._send_to_dead_letter_queue(message, failure.reason)
            return
        delay_s = self.settings.retry_delay_s
        log.warning("attempt %d of %d failed (%s); retrying in %d s", attempt, retries, failure.reason, delay_s)
        self.sqs.change_message_visibility(
            QueueUrl=self.settings.queue_url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=delay_s,
        )

    def _send_to_dead_letter_queue(self, message: dict[str, Any], reason: str) -> None:
        """The body goes to the dead-letter queue with its reason, and only then leaves the job queue."""
        self.sqs.send_message(
            QueueUrl=self.settings.dead_letter_queue_url,
            MessageBody=message["Body"],
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:MAX_REASON_CHARS]}},
        )
        self._delete(message["ReceiptHandle"])

    def _record_attempt(
        self,
        job_id: str,
        *,
        attempt: int,
        permanent: bool,
        reason: str,
        exit_code: int | None = None,
        output_tail: Sequence[str] = (),
    ) -> None:
        record = attempt_record(
            job_id,
            attempt=attempt,
            permanent=permanent,
            reason=reason,
            exit_code=exit_code,
            output_lines=output_tail,
            worker=self.worker,
            failed_at=utc_now(),
        )
        self._put_record(attempt_key(self.settings.run_id, job_id, attempt), record)

    def _put_record(self, key: str, record: dict[str, Any]) -> None:
        self.s3.put_object(
            Bucket=self.settings.records_bucket,
            Key=key,
            Body=json.dumps(record).encode(),
            ContentType="application/json",
        )

    def _failed_runs(self, job: JobMessage) -> int:
        prefix = attempt_prefix(job.run_id, job.job_id)
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.settings.records_bucket, Prefix=prefix)
        return failed_runs((item["Key"] for page in pages for item in page.get("Contents", [])), prefix)

    def _has_outcome(self, job: JobMessage) -> bool:
        listing = self.s3.list_objects_v2(
            Bucket=self.settings.records_bucket, Prefix=outcome_prefix(job.run_id, job.job_id), MaxKeys=1
        )
        return bool(listing.get("Contents"))

    def _release(self, receipt: str, log: logging.LoggerAdapter[Any]) -> None:
        """Make the message visible again at once, for another worker."""
        self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=receipt, VisibilityTimeout=0)
        log.info("message returned to the queue")

    def _delete(self, receipt: str) -> None:
        self.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=receipt)

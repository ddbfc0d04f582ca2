"""Figure 4, worker: the real worker on trivial jobs, with its AWS calls counted from the server side.

200 jobs whose command exits at once (`true`), four local worker processes (`python -m prefect_distributed.worker`,
started by the local fleet exactly as a run starts them) against a moto server. Every request the
server receives while the workers run is logged by moto's recorder and counted by operation, so
the count is the workers' own and exact (see common.recorded_calls). Check-if-done is on, as in
the demo, to compare with Distributed-Something's worker doing the same.

    .venv/bin/python -m benchmarks.bench_worker [--jobs 200] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from botocore.client import BaseClient
from pydantic import BaseModel

from benchmarks.common import (
    Figure,
    clients,
    create_run_queues,
    fake_credentials,
    recorded_calls,
    recording_moto_server,
    report,
    write_job_file,
)
from prefect_distributed.core.aws import s3
from prefect_distributed.core.aws.sqs_send import send_messages_concurrently
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.fleets import FleetRequest, LocalFleet
from prefect_distributed.core.jobs import JobMessage, iter_jobs
from prefect_distributed.core.models import RunResources
from prefect_distributed.core.records import read_outcomes
from prefect_distributed.core.worker_env import worker_environment

RUN_ID = "00000000-0000-4000-8000-0000000000aa"
COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_worker"
WORKERS_TIMEOUT_S = 600
# Distributed-Something's worker (worker/generic-worker.py), per job: ReceiveMessage, then with
# CHECK_IF_DONE_BOOL one ListObjects of the output prefix, the program, `aws s3 mv` of its outputs
# (one upload per file), DeleteMessage. Each worker stops at its first empty 20 s poll.
DS_SQS_PER_JOB = 2
DS_S3_PER_JOB = 1
DS_IDLE_SQS_PER_WORKER = 1


class WorkerRun(BaseModel):
    """What the workers did with the batch, and every AWS call they made."""

    jobs: int
    workers: int
    succeeded: int
    jobs_seconds: float  # fleet start to the last job's outcome
    exit_seconds: float  # fleet start to the last worker's exit (includes the idle wait before it)
    calls: dict[str, int]

    def count(self, operation: str) -> int:
        return self.calls.get(operation, 0)

    def service_total(self, service: str) -> int:
        return sum(count for operation, count in self.calls.items() if operation.startswith(f"{service}."))

    @property
    def deliveries(self) -> int:
        """Messages received with a job: each successful job's message is deleted exactly once."""
        return self.count("sqs.DeleteMessage")

    @property
    def sqs_per_job(self) -> float:
        """SQS calls that handle a job: the receive that brought it, heartbeats, the delete."""
        return (
            self.deliveries + self.count("sqs.ChangeMessageVisibility") + self.count("sqs.DeleteMessage")
        ) / self.jobs

    @property
    def idle_sqs_calls(self) -> int:
        """Empty polls, and the queue counts a worker reads after each before it exits."""
        return self.count("sqs.ReceiveMessage") - self.deliveries + self.count("sqs.GetQueueAttributes")


def last_finished(s3_client: BaseClient, resources: RunResources) -> datetime:
    """When the last job finished, from the outcome records the workers wrote."""
    prefix = f"{resources.records_prefix}/outcomes/"
    times = [
        datetime.fromisoformat(s3.get_json(s3_client, resources.records_bucket, key)["finished_at"])
        for key in s3.list_keys(s3_client, resources.records_bucket, prefix)
    ]
    return max(times)


def run_workers(jobs: int, workers: int, workdir: Path) -> WorkerRun:
    os.environ["DISTRIBUTED_LOCAL_STATE"] = str(workdir / "fleet")  # the local fleet's pid and log files
    job_file = write_job_file(workdir / "jobs.json", jobs, with_inputs=False)
    with recording_moto_server(workdir) as endpoint:
        config = parse_config(
            {
                "app_name": "bench-worker",
                "job_file": str(job_file),
                "command": "true",
                "bucket": "bench-worker",
                "endpoint_url": endpoint,
                "queue": {"visibility_timeout_s": 30, "job_retries": 2, "retry_delay_s": 1},
                "fleet": {"backend": "local", "local_workers": workers, "local_workdir": str(workdir)},
                "check_if_done": {"enabled": True},
                "monitor": {"worker_idle_exit_s": 2, "worker_wait_time_s": 1},
            },
            "bench_worker",
        )
        resources = RunResources.for_run(config, RUN_ID)
        aws = clients(endpoint)
        aws.client("s3").create_bucket(Bucket=config.bucket)
        urls = create_run_queues(aws.client("sqs"), resources, config)
        bodies = (JobMessage.for_job(job, RUN_ID).body() for job in iter_jobs(job_file, config.command))
        send_messages_concurrently(aws.client("sqs"), urls.queue_url, bodies)

        fleet = LocalFleet.from_clients(aws, config)
        with recorded_calls(endpoint) as calls:
            started_at = datetime.now(timezone.utc)  # noqa: UP017 - compared with the records' UTC times
            started = time.monotonic()
            handle = fleet.start(FleetRequest(run_id=RUN_ID, environment=worker_environment(config, resources, urls)))
            while fleet.status(handle).running and time.monotonic() - started < WORKERS_TIMEOUT_S:
                time.sleep(0.2)
            exit_seconds = time.monotonic() - started
            fleet.stop(handle)  # a no-op unless the timeout passed
        outcomes = read_outcomes(aws.client("s3"), resources)
        finished = last_finished(aws.client("s3"), resources)
    return WorkerRun(
        jobs=jobs,
        workers=workers,
        succeeded=outcomes.succeeded,
        jobs_seconds=(finished - started_at).total_seconds(),
        exit_seconds=exit_seconds,
        calls=dict(calls),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    fake_credentials()
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        run = run_workers(args.jobs, args.workers, Path(tmp))

    heartbeats_per_job = run.count("sqs.ChangeMessageVisibility") / run.jobs
    s3_per_job = run.service_total("s3") / run.jobs
    ds_sqs = DS_SQS_PER_JOB + DS_IDLE_SQS_PER_WORKER * run.workers / run.jobs
    ours_sqs = run.service_total("sqs") / run.jobs
    figures = [
        Figure(
            figure=f"Worker: {run.jobs} trivial jobs, {run.workers} local workers on a moto server",
            target=f"all {run.jobs} succeed; jobs per second reported",
            measured=f"{run.succeeded} succeeded, {run.jobs / run.jobs_seconds:.1f} jobs/s "
            f"({run.jobs_seconds:.1f} s to the last outcome, workers exited after {run.exit_seconds:.1f} s)",
            baseline="-",
            ratio="-",
            met=run.succeeded == run.jobs,
            command=COMMAND_LINE,
        ),
        Figure(
            figure="Worker: SQS calls per job",
            target="<= 2 + heartbeats per job (receive and delete)",
            measured=f"{run.sqs_per_job:.2f} per job ({heartbeats_per_job:.2f} heartbeats); "
            f"{ours_sqs:.2f} with the {run.idle_sqs_calls} idle calls of draining",
            baseline=f"DS {DS_SQS_PER_JOB} per job; {ds_sqs:.2f} with its {run.workers} final empty polls",
            ratio=f"{ds_sqs / ours_sqs:.2f}x",
            met=run.sqs_per_job <= 2 + heartbeats_per_job,
            command=COMMAND_LINE,
        ),
        Figure(
            figure="Worker: S3 calls per job (check-if-done on, no output files)",
            target="reported beside DS's",
            measured=f"{s3_per_job:.2f} per job",
            baseline=f"DS {DS_S3_PER_JOB} per job (+1 per output file)",
            ratio=f"{DS_S3_PER_JOB / s3_per_job:.2f}x",
            met=None,
            command=COMMAND_LINE,
        ),
    ]
    report(
        "Worker",
        figures,
        run.model_dump(),
        notes=[
            "calls by operation: " + ", ".join(f"{name} {count}" for name, count in sorted(run.calls.items())),
            (
                "ours per job on S3: a ListObjectsV2 for an outcome record (a duplicate delivery of a finished "
                "job), a ListObjectsV2 of its attempt records (its failed runs, so that interruptions spend no "
                "retry), a ListObjectsV2 for check-if-done, a PutObject of the outcome record; DS keeps no records"
            ),
            (
                "idle calls: each worker loop's empty long polls (1 s here) and the queue counts it read after "
                "each, until the queue has been empty for worker_idle_exit_s (2 s here)"
            ),
            "DS's counts are read from its worker's code (worker/generic-worker.py), not measured",
        ],
    )


if __name__ == "__main__":
    main()

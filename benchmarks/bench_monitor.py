"""Figure 3, monitor: AWS calls per monitor poll with 100 and with 1,000 jobs in the queue.

The monitor step (tasks/monitor.py) reads one snapshot per poll: `sqs.queue_counts` of the job
queue and of the dead-letter queue, plus the fleet's status (no AWS call for the local fleet).
Only once the queue has read empty `settle_polls` times does it count outcomes, with
`records.read_outcomes`. This benchmark makes those same core calls on in-process moto, with N
jobs waiting in the queue, then with the queue empty and N outcome records written, and counts
every AWS call with botocore's `before-call` event.

    .venv/bin/python -m benchmarks.bench_monitor [--jobs 100 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from pydantic import BaseModel

from benchmarks.common import COMMAND, CallCounter, Figure, clients, fake_credentials, report, write_job_file
from prefect_distributed.core.aws import s3, sqs
from prefect_distributed.core.aws.sqs_send import send_messages_concurrently
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.jobs import JobMessage, iter_jobs
from prefect_distributed.core.models import RunResources
from prefect_distributed.core.records import read_outcomes

RUN_ID = "00000000-0000-4000-8000-000000000000"
COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_monitor"
# Distributed-Something's monitor reads its queue with one GetQueueAttributes per poll
# (`queue.load()` in run.py's JobQueue.pendingLoad), every 60 s.
DS_CALLS_PER_POLL = 1


class PollCalls(BaseModel):
    """AWS calls of one poll while jobs wait, and of the final reading that counts outcomes."""

    jobs: int
    busy_poll: dict[str, int]
    final_reading: dict[str, int]

    @property
    def busy_total(self) -> int:
        return sum(self.busy_poll.values())

    @property
    def final_total(self) -> int:
        return sum(self.final_reading.values())


def count_poll_calls(jobs: int, workdir: Path) -> PollCalls:
    from moto import mock_aws

    job_file = write_job_file(workdir / f"jobs-{jobs}.json", jobs)
    config = parse_config(
        {"app_name": "bench", "job_file": str(job_file), "command": COMMAND, "bucket": "bench"}, "bench"
    )
    resources = RunResources.for_run(config, RUN_ID)
    with mock_aws():
        aws = clients()
        sqs_client, s3_client = aws.client("sqs"), aws.client("s3")
        s3_client.create_bucket(Bucket=resources.records_bucket)
        dead_url = sqs.ensure_queue(sqs_client, resources.dead_letter_queue_name, {}, resources.tags)
        queue_url = sqs.ensure_queue(
            sqs_client,
            resources.queue_name,
            sqs.job_queue_attributes(sqs.queue_arn(sqs_client, dead_url), 60, 3),
            resources.tags,
        )
        job_list = list(iter_jobs(job_file, COMMAND))
        send_messages_concurrently(sqs_client, queue_url, (JobMessage.for_job(job, RUN_ID).body() for job in job_list))
        counter = CallCounter().attach(sqs_client, s3_client)

        # A poll while jobs wait: what tasks/monitor.py's read_snapshot calls.
        sqs.queue_counts(sqs_client, queue_url)
        sqs.queue_counts(sqs_client, dead_url)
        busy = dict(counter.counts)

        # Every job done: the queue empties and each job has its outcome record.
        sqs_client.purge_queue(QueueUrl=queue_url)
        for job in job_list:
            key = f"{resources.records_prefix}/outcomes/{job.job_id}.succeeded.json"
            s3.put_json(s3_client, resources.records_bucket, key, {"job_id": job.job_id, "status": "succeeded"})
        counter.reset()
        sqs.queue_counts(sqs_client, queue_url)
        sqs.queue_counts(sqs_client, dead_url)
        finished = len(read_outcomes(s3_client, resources))
        final = dict(counter.counts)
    if finished != jobs:
        raise RuntimeError(f"read {finished} outcomes, wrote {jobs}")
    return PollCalls(jobs=jobs, busy_poll=busy, final_reading=final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs=2, default=[100, 1_000], metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    fake_credentials()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        small, large = (count_poll_calls(jobs, Path(tmp)) for jobs in sorted(args.jobs))

    def calls(poll: dict[str, int]) -> str:
        return json.dumps(poll, sort_keys=True)

    figures = [
        Figure(
            figure=f"AWS calls per monitor poll, {small.jobs:,} vs {large.jobs:,} jobs in the queue",
            target="the same at both (constant in N)",
            measured=f"{small.busy_total} at {small.jobs:,}, {large.busy_total} at {large.jobs:,} "
            f"({calls(large.busy_poll)})",
            baseline=f"{small.jobs:,}-job poll: {small.busy_total} calls; DS: {DS_CALLS_PER_POLL} per poll (its code)",
            ratio=f"{large.busy_total / small.busy_total:.1f}x",
            met=small.busy_poll == large.busy_poll,
            command=COMMAND_LINE,
        ),
        Figure(
            figure=f"AWS calls of the final reading (queue empty, outcomes counted), "
            f"{small.jobs:,} vs {large.jobs:,} jobs",
            target="2 + ceil(N / 1000) listings, made only after settle_polls empty readings",
            measured=f"{small.final_total} at {small.jobs:,}, {large.final_total} at {large.jobs:,} "
            f"({calls(large.final_reading)})",
            baseline="-",
            ratio=f"{large.final_total / small.final_total:.1f}x",
            met=all(poll.final_total == 2 + math.ceil(poll.jobs / 1000) for poll in (small, large)),
            command=COMMAND_LINE,
        ),
    ]
    report(
        "Monitor",
        figures,
        {"polls": [small.model_dump(), large.model_dump()]},
        notes=[
            "the fleet's status is part of each poll too; the local fleet reads it from /proc, no AWS call",
            "ListObjectsV2 returns 1,000 keys per page: the final count costs one call per 1,000 finished jobs",
        ],
    )


if __name__ == "__main__":
    main()

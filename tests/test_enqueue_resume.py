"""Enqueueing never sends a job twice: not on a retry after a crash in the middle, not on a second
call, and after the queue was recreated only the jobs without an outcome go into it (in-process moto)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import boto3
import pytest

from prefect_distributed.core.aws import s3, sqs
from prefect_distributed.core.enqueue import EnqueueMarker, enqueue_batch, marker_key
from prefect_distributed.core.jobs import Job
from prefect_distributed.core.records import read_outcomes
from tests.test_accounting import RESOURCES

pytestmark = pytest.mark.usefixtures("aws_mock")

JOBS = 50


class Crash(Exception):
    """The flow's process dying in the middle of the job file."""


def jobs(crash_after: int | None = None) -> Iterator[Job]:
    for n in range(JOBS):
        if n == crash_after:
            raise Crash
        yield Job(job_id=f"job-{n:02d}", index=n, fields={"n": n}, inputs=(), output=f"out/{n}")


@pytest.fixture
def clients() -> tuple:
    boto3.client("s3").create_bucket(Bucket="records")
    return boto3.client("s3"), boto3.client("sqs")


def new_queue(sqs_client) -> str:  # noqa: ANN001
    return sqs_client.create_queue(QueueName=RESOURCES.queue_name)["QueueUrl"]


def enqueue(clients: tuple, url: str, crash_after: int | None = None, checkpoint_jobs: int = 10):  # noqa: ANN201
    s3_client, sqs_client = clients
    return enqueue_batch(
        s3_client,
        sqs_client,
        RESOURCES,
        url,
        jobs(crash_after),
        JOBS,
        lambda: read_outcomes(s3_client, RESOURCES),
        checkpoint_jobs=checkpoint_jobs,
    )


def queued_job_ids(sqs_client, url: str) -> Counter[str]:  # noqa: ANN001
    ids: Counter[str] = Counter()
    while batch := sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        ids.update(json.loads(message["Body"])["job_id"] for message in batch)
    return ids


def test_a_second_enqueue_into_the_same_queue_sends_nothing(clients: tuple) -> None:
    url = new_queue(clients[1])
    first, second = enqueue(clients, url), enqueue(clients, url)

    assert (first.sent, second.sent) == (JOBS, 0)
    assert sqs.queue_counts(clients[1], url).visible == JOBS


def test_a_crash_in_the_middle_then_a_retry_sends_every_job_exactly_once(clients: tuple) -> None:
    url = new_queue(clients[1])
    with pytest.raises(Crash):
        enqueue(clients, url, crash_after=25)
    marker = EnqueueMarker.model_validate(s3.get_json(clients[0], "records", marker_key(RESOURCES)))
    assert (marker.sent_through, marker.complete) == (20, False)

    retry = enqueue(clients, url)

    assert retry.sent == JOBS - 20
    counts = queued_job_ids(clients[1], url)
    assert len(counts) == JOBS and set(counts.values()) == {1}


def test_into_a_recreated_queue_only_jobs_without_an_outcome_are_sent(clients: tuple) -> None:
    s3_client, sqs_client = clients
    url = new_queue(sqs_client)
    enqueue(clients, url)
    for n in range(30):  # what the workers finished before the queue was deleted
        s3.put_json(s3_client, "records", f"runs/run-1/outcomes/job-{n:02d}.succeeded.json", {})
    sqs_client.delete_queue(QueueUrl=url)
    url = new_queue(sqs_client)

    again = enqueue(clients, url)

    assert again.sent == 20
    assert sorted(queued_job_ids(sqs_client, url)) == [f"job-{n:02d}" for n in range(30, JOBS)]

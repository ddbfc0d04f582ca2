"""A send that fails after some batches, then a resume: no job lost, and none sent twice when a
chunk is one batch, because a chunk's marker is saved only once its batches are in the queue
(in-process moto).

The failure is a before-call handler on the SendMessageBatch calls of the client under test: the
network dropping for good after three batches, which moto cannot do. Batches of a chunk are sent
concurrently, so the handler tells them apart by their jobs, not by the order of the calls.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from prefect_distributed.core.aws import s3
from prefect_distributed.core.enqueue import EnqueueMarker, marker_key
from tests.test_accounting import RESOURCES
from tests.test_enqueue_resume import JOBS, enqueue, new_queue, queued_job_ids

pytestmark = pytest.mark.usefixtures("aws_mock")

SENT_BEFORE_THE_FAILURE = 30  # three batches of ten


def drop_the_network_from(sqs_client: Any, first_lost: int) -> None:
    """Let through the SendMessageBatch calls of jobs before job number `first_lost`; fail the others."""

    def send(params: dict[str, Any], **_: Any) -> None:
        entries = json.loads(params["body"])["Entries"]  # the request as serialized (SQS speaks JSON)
        numbers = [json.loads(entry["MessageBody"])["fields"]["n"] for entry in entries]
        if max(numbers) >= first_lost:
            raise EndpointConnectionError(endpoint_url=sqs_client.meta.endpoint_url)

    sqs_client.meta.events.register("before-call.sqs.SendMessageBatch", send)


@pytest.mark.parametrize(("checkpoint_jobs", "sent_twice"), [(10, 0), (20, 10)])
def test_a_send_that_fails_after_three_batches_then_a_resume_loses_no_job(
    checkpoint_jobs: int, sent_twice: int
) -> None:
    """With ten jobs a batch, the failure cuts the fourth batch: the queue holds jobs 0-29."""
    boto3.client("s3").create_bucket(Bucket="records")
    sqs_client = boto3.client("sqs")
    url = new_queue(sqs_client)
    failing = boto3.client("sqs")
    drop_the_network_from(failing, SENT_BEFORE_THE_FAILURE)

    with pytest.raises(EndpointConnectionError):
        enqueue((boto3.client("s3"), failing), url, checkpoint_jobs=checkpoint_jobs)
    marker = EnqueueMarker.model_validate(s3.get_json(boto3.client("s3"), "records", marker_key(RESOURCES)))
    resumed = enqueue((boto3.client("s3"), boto3.client("sqs")), url, checkpoint_jobs=checkpoint_jobs)

    # The marker counts only whole chunks in the queue: never more than the jobs sent.
    assert (marker.sent_through, marker.complete) == (30 - 30 % checkpoint_jobs, False)
    assert resumed.sent == JOBS - marker.sent_through
    counts = queued_job_ids(sqs_client, url)
    assert sorted(counts) == [f"job-{n:02d}" for n in range(JOBS)]  # none lost
    # Sent again: only jobs of the chunk the failure cut that went out before it (none when a chunk is a batch).
    twice = sorted(job for job, times in counts.items() if times > 1)
    assert twice == [f"job-{n:02d}" for n in range(marker.sent_through, SENT_BEFORE_THE_FAILURE)]
    assert len(twice) == sent_twice and max(counts.values()) <= 2

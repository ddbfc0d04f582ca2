"""Enqueue by size: batches of at most ten messages and 1 MiB in all, messages up to 1 MiB."""

from __future__ import annotations

import boto3
import pytest

from prefect_distributed.core.aws import sqs
from prefect_distributed.core.aws.sqs_send import send_messages_concurrently

pytestmark = pytest.mark.usefixtures("aws_mock")


def make_queue(client, name: str = "jobs") -> str:
    dead = sqs.ensure_queue(client, f"{name}-dead", sqs.dead_letter_queue_attributes(), {"app": "t"})
    return sqs.ensure_queue(client, name, sqs.job_queue_attributes(sqs.queue_arn(client, dead), 30, 2), {"app": "t"})


def receive_all(client, url: str) -> list[str]:
    bodies: list[str] = []
    while messages := client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages"):
        bodies += [message["Body"] for message in messages]
    return bodies


def test_batches_split_by_total_size_as_well_as_by_count() -> None:
    large = [f"{n:02}" + "x" * 199_998 for n in range(12)]  # 200 KB each: five fit in 1 MiB
    assert [len(batch) for batch in sqs.batches(large)] == [5, 5, 2]
    assert [len(batch) for batch in sqs.batches(str(n) for n in range(25))] == [10, 10, 5]
    mixed = ["s"] * 4 + ["x" * 600_000, "y" * 600_000] + ["s"] * 3
    assert [len(batch) for batch in sqs.batches(mixed)] == [5, 4]
    assert all(sum(map(len, batch)) <= sqs.MAX_BATCH_BYTES for batch in sqs.batches(large + mixed))


def test_a_body_larger_than_one_message_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="a message holds at most 1,048,576 bytes, got 1,048,577"):
        list(sqs.batches(["x" * (sqs.MAX_MESSAGE_BYTES + 1)]))


def test_twelve_jobs_of_200_kb_all_arrive_where_count_batches_failed_with_batch_request_too_long() -> None:
    client = boto3.client("sqs")
    url = make_queue(client)
    bodies = [f"{n:02}" + "x" * 199_998 for n in range(12)]
    assert send_messages_concurrently(client, url, iter(bodies), threads=3) == 12
    assert sorted(receive_all(client, url)) == bodies
    ten_per_call = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[:10])]
    with pytest.raises(client.exceptions.BatchRequestTooLong):
        client.send_message_batch(QueueUrl=url, Entries=ten_per_call)


def test_a_message_of_almost_1_mib_is_sent_and_received_whole() -> None:
    client = boto3.client("sqs")
    url = make_queue(client)
    body = "j" * sqs.MAX_MESSAGE_BYTES
    assert send_messages_concurrently(client, url, [body, "small"]) == 2
    assert sorted(receive_all(client, url), key=len) == ["small", body]


def test_setup_raises_an_older_queues_message_size_to_1_mib_on_both_queues() -> None:
    client = boto3.client("sqs")
    for name in ("jobs", "jobs-dead"):  # queues made with SQS's old 256 KiB default
        client.create_queue(QueueName=name, Attributes={"MaximumMessageSize": "262144"})
    url = make_queue(client)
    dead = sqs.queue_url(client, "jobs-dead")
    for queue in (url, dead):
        attributes = client.get_queue_attributes(QueueUrl=queue, AttributeNames=["MaximumMessageSize"])["Attributes"]
        assert attributes["MaximumMessageSize"] == "1048576"

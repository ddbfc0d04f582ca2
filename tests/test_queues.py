"""The SQS layer against in-process moto: queue set-up, batching, dead-letter reads, deletion."""

from __future__ import annotations

import json

import boto3
import pytest

from prefect_distributed.core.aws import sqs
from prefect_distributed.core.aws.sqs_send import send_messages_concurrently
from prefect_distributed.core.errors import AwsOperationError

pytestmark = pytest.mark.usefixtures("aws_mock")


def make_queues(client, visibility: int = 30, retries: int = 2) -> tuple[str, str]:
    dead = sqs.ensure_queue(client, "jobs-dead", {"MessageRetentionPeriod": str(sqs.RETENTION_S)}, {"app": "t"})
    url = sqs.ensure_queue(
        client, "jobs", sqs.job_queue_attributes(sqs.queue_arn(client, dead), visibility, retries), {"app": "t"}
    )
    return url, dead


def test_the_job_queue_redrives_to_a_dead_letter_queue_that_keeps_jobs_as_long() -> None:
    client = boto3.client("sqs")
    url, dead = make_queues(client, visibility=45, retries=4)
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "45"
    assert attributes["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 4
    assert redrive["deadLetterTargetArn"] == sqs.queue_arn(client, dead)
    dead_attributes = client.get_queue_attributes(QueueUrl=dead, AttributeNames=["MessageRetentionPeriod"])
    assert dead_attributes["Attributes"]["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"app": "t"}


def test_setting_up_again_updates_an_existing_queue_to_the_config() -> None:
    client = boto3.client("sqs")
    url, _ = make_queues(client, visibility=30, retries=2)
    again, _ = make_queues(client, visibility=120, retries=5)
    assert again == url
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "120"
    assert int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"]) == 5


def test_jobs_are_sent_ten_per_call_and_each_arrives_once() -> None:
    client = boto3.client("sqs")
    url, _ = make_queues(client)
    calls: list[int] = []
    client.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(len(params["Entries"]))
    )
    sent = send_messages_concurrently(client, url, (json.dumps({"n": n}) for n in range(25)), threads=1)
    assert sent == 25
    assert calls == [10, 10, 5]
    received = []
    while batch := client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
        received += [json.loads(m["Body"])["n"] for m in batch]
    assert sorted(received) == list(range(25))


def test_an_entry_sqs_rejects_through_the_senders_fault_raises() -> None:
    client = boto3.client("sqs")
    url, _ = make_queues(client)

    # moto never fails a single entry; this handler makes SQS answer as it does for a bad entry.
    def reject_one(parsed, **_):
        parsed["Failed"] = [{"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad"}]
        parsed["Successful"] = [ok for ok in parsed.get("Successful", []) if ok["Id"] != "0"]

    client.meta.events.register("after-call.sqs.SendMessageBatch", lambda parsed, **kw: reject_one(parsed))
    with pytest.raises(AwsOperationError, match="SQS rejected a job message: bad"):
        sqs.send_batch(client, url, ["a", "b"])


def test_dead_messages_are_read_with_their_reason_and_left_in_place() -> None:
    client = boto3.client("sqs")
    _, dead = make_queues(client)
    client.send_message(
        QueueUrl=dead,
        MessageBody='{"job_id": "j1"}',
        MessageAttributes={"reason": {"DataType": "String", "StringValue": "input missing"}},
    )
    client.send_message(QueueUrl=dead, MessageBody='{"job_id": "j2"}')
    messages = sqs.read_dead_messages(client, dead)
    assert sorted((m.body, m.reason) for m in messages) == [
        ('{"job_id": "j1"}', "input missing"),
        ('{"job_id": "j2"}', None),
    ]
    counts = sqs.queue_counts(client, dead)
    assert counts.total == 2


def test_deleting_a_queue_twice_is_fine() -> None:
    client = boto3.client("sqs")
    make_queues(client)
    sqs.delete_queue(client, "jobs")
    sqs.delete_queue(client, "jobs")
    assert sqs.queue_url(client, "jobs") is None

"""Sending jobs with several batches in flight: same contract as `sqs.send_batch`, bounded memory."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from prefect_distributed.core.aws.sqs_send import QUEUED_PER_THREAD, send_messages_concurrently
from prefect_distributed.core.errors import AwsOperationError, ConfigError


def sender_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("sqs-send")]


def stored_bodies(queue_name: str) -> list[str]:
    """The bodies moto holds for the queue, read from its in-process backend.

    ReceiveMessage would do, but moto rescans the whole queue several times per call: reading a
    thousand messages back that way takes minutes.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues[queue_name]
    return [message.body for message in queue._messages]


@pytest.mark.usefixtures("aws_mock")
def test_every_job_arrives_once_and_intact_in_batches_of_ten() -> None:
    # 253 jobs: a partial last batch; the benchmark checks 1,000 (moto's cost grows with queue depth).
    client = boto3.client("sqs")
    url = client.create_queue(QueueName="jobs")["QueueUrl"]
    batch_sizes: list[int] = []  # list.append is atomic, so calls from several threads all count
    client.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: batch_sizes.append(len(params["Entries"]))
    )
    bodies = [json.dumps({"n": n, "text": "é" * (n % 5)}) for n in range(253)]

    sent = send_messages_concurrently(client, url, iter(bodies), threads=8)

    assert sent == 253
    assert len(batch_sizes) == 26 and sorted(batch_sizes) == [3] + [10] * 25  # ceil(253 / 10) calls
    assert Counter(stored_bodies("jobs")) == Counter(bodies)
    assert sender_threads() == []


@pytest.mark.usefixtures("aws_mock")
def test_an_entry_rejected_through_the_senders_fault_raises_and_stops_sending() -> None:
    client = boto3.client("sqs")
    url = client.create_queue(QueueName="jobs")["QueueUrl"]

    # moto never fails a single entry; this handler makes SQS answer as it does for a bad entry.
    def reject_first_entry(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Failed"] = [{"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad"}]
        parsed["Successful"] = [ok for ok in parsed.get("Successful", []) if ok["Id"] != "0"]

    client.meta.events.register("after-call.sqs.SendMessageBatch", reject_first_entry)
    with pytest.raises(AwsOperationError, match="SQS rejected a job message: bad"):
        send_messages_concurrently(client, url, (str(n) for n in range(500)), threads=4)
    assert sender_threads() == []


class BlockingSqs:
    """Stands in for an SQS client whose calls wait until released, to see how far the bodies are read."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def send_message_batch(self, **request: Any) -> dict[str, Any]:
        assert self.release.wait(timeout=30)
        return {"Successful": [{"Id": entry["Id"]} for entry in request["Entries"]], "Failed": []}


def test_bodies_are_read_only_a_bounded_number_of_batches_ahead() -> None:
    sqs = BlockingSqs()
    read = 0

    def bodies() -> Iterator[str]:
        nonlocal read
        for n in range(10_000):
            read += 1
            yield str(n)

    result: list[int] = []
    sender = threading.Thread(target=lambda: result.append(send_messages_concurrently(sqs, "q", bodies(), threads=4)))
    sender.start()
    window = 4 * (1 + QUEUED_PER_THREAD) * 10  # bodies in the batches being sent or queued
    deadline = time.monotonic() + 10
    while read < window and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time to read on, were reading not bounded
    held = read
    sqs.release.set()
    sender.join(timeout=30)

    assert window <= held <= window + 10  # plus the batch waiting for a free slot
    assert result == [10_000]


def test_an_error_reading_the_bodies_is_raised_after_the_calls_under_way_end() -> None:
    sqs = BlockingSqs()
    sqs.release.set()

    def bodies() -> Iterator[str]:
        yield from (str(n) for n in range(95))
        raise ConfigError("job file changed after it was validated")

    with pytest.raises(ConfigError, match="changed after it was validated"):
        send_messages_concurrently(sqs, "q", bodies(), threads=4)
    assert sender_threads() == []

"""SQS: the job queue, its dead-letter queue, sending jobs and reading counts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.errors import AwsOperationError

logger = logging.getLogger(__name__)

BATCH_SIZE = 10  # SendMessageBatch's limit on entries
# SQS's limits on one message and on one SendMessageBatch call (all its messages together): 1 MiB
# each since August 2025 (256 KiB before). A queue takes up to its MaximumMessageSize, set to match.
MAX_MESSAGE_BYTES = 1_048_576
MAX_BATCH_BYTES = 1_048_576
RETENTION_S = 14 * 24 * 3600  # the longest SQS allows; the dead-letter queue keeps jobs as long
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
SEND_ATTEMPTS = 5


class QueueCounts(BaseModel):
    """SQS's approximate counts of one queue."""

    model_config = ConfigDict(frozen=True)

    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


class DeadMessage(BaseModel):
    """A message read from the dead-letter queue, with the reason the worker attached, if any."""

    model_config = ConfigDict(frozen=True)

    body: str
    reason: str | None
    receive_count: int


def queue_url(sqs: BaseClient, name: str) -> str | None:
    """The queue's URL, or None when it does not exist."""
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if error_code(exc) in MISSING_QUEUE_CODES:
            return None
        raise


def ensure_queue(sqs: BaseClient, name: str, attributes: dict[str, str], tags: dict[str, str]) -> str:
    """Create the queue, or bring an existing one's attributes and tags up to date. Idempotent.

    Distributed-Something left an existing queue as it was, so a changed visibility timeout or
    retry count was silently ignored; here the config always wins.
    """
    url = queue_url(sqs, name)
    if url is None:
        url = sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)["QueueUrl"]
        logger.info("Created queue %s", name)
        return url
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    sqs.tag_queue(QueueUrl=url, Tags=tags)
    logger.info("Queue %s exists; attributes updated to the config", name)
    return url


def queue_arn(sqs: BaseClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def dead_letter_queue_attributes() -> dict[str, str]:
    """The dead-letter queue keeps jobs as long as SQS allows and takes any job the job queue takes."""
    return {"MessageRetentionPeriod": str(RETENTION_S), "MaximumMessageSize": str(MAX_MESSAGE_BYTES)}


def job_queue_attributes(dead_letter_arn: str, visibility_timeout_s: int, max_receive_count: int) -> dict[str, str]:
    """The job queue's settings. Workers dead-letter a job themselves after its failed runs; the
    redrive after `max_receive_count` deliveries is the safety net for a job no worker survives."""
    return {
        "VisibilityTimeout": str(visibility_timeout_s),
        "MessageRetentionPeriod": str(RETENTION_S),
        "ReceiveMessageWaitTimeSeconds": "20",
        "MaximumMessageSize": str(MAX_MESSAGE_BYTES),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(max_receive_count)}
        ),
    }


def batches(bodies: Iterable[str]) -> Iterator[list[str]]:
    """Consecutive batches SendMessageBatch takes: at most ten bodies and MAX_BATCH_BYTES in all.

    Splitting by count alone fails as soon as ten bodies weigh more than 1 MiB together
    (`BatchRequestTooLong`), which a job file with large jobs reaches quickly. Raises ValueError
    for a body larger than one message may be (the job-file check refuses those first).
    """
    batch: list[str] = []
    batch_bytes = 0
    for body in bodies:
        size = len(body.encode())
        if size > MAX_MESSAGE_BYTES:
            raise ValueError(f"a message holds at most {MAX_MESSAGE_BYTES:,} bytes, got {size:,}")
        if batch_bytes + size > MAX_BATCH_BYTES:
            yield batch
            batch, batch_bytes = [], 0
        batch.append(body)
        batch_bytes += size
        if len(batch) == BATCH_SIZE:  # sent at once: a full batch never waits for the next body
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def send_batch(sqs: BaseClient, url: str, batch: list[str]) -> int:
    """Send one batch (see `batches`) in one SendMessageBatch call; returns how many were sent (all of them).

    Entries that SQS reports as failed are sent again; an entry still failing after a few
    attempts, or one failed through the sender's fault, raises, because a job would be lost.
    """
    if len(batch) > BATCH_SIZE:
        raise ValueError(f"a batch holds at most {BATCH_SIZE} messages, got {len(batch)}")
    batch_bytes = sum(len(body.encode()) for body in batch)
    if batch_bytes > MAX_BATCH_BYTES:
        raise ValueError(f"a batch holds at most {MAX_BATCH_BYTES:,} bytes in all, got {batch_bytes:,}")
    pending = {str(i): body for i, body in enumerate(batch)}
    for _attempt in range(SEND_ATTEMPTS):
        response = sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": key, "MessageBody": body} for key, body in pending.items()]
        )
        for ok in response.get("Successful", []):
            pending.pop(ok["Id"])
        sender_faults = [f for f in response.get("Failed", []) if f.get("SenderFault")]
        if sender_faults:
            raise AwsOperationError(f"SQS rejected a job message: {sender_faults[0].get('Message', sender_faults[0])}")
        if not pending:
            return len(batch)
    raise AwsOperationError(f"SQS failed to accept {len(pending)} job message(s) after {SEND_ATTEMPTS} attempts")


def queue_counts(sqs: BaseClient, url: str) -> QueueCounts:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return QueueCounts(
        visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def read_dead_messages(sqs: BaseClient, url: str, hide_for_s: int = 300) -> list[DeadMessage]:
    """Read every message in a dead-letter queue without deleting any.

    Each read message stays hidden for `hide_for_s`, so a second read does not return it again;
    reading stops at the first empty receive.
    """
    messages: dict[str, DeadMessage] = {}
    while True:
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=hide_for_s,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        received = response.get("Messages", [])
        if not received:
            return list(messages.values())
        for message in received:
            attributes: dict[str, Any] = message.get("MessageAttributes", {})
            reason = attributes.get("reason", {}).get("StringValue")
            messages[message["MessageId"]] = DeadMessage(
                body=message["Body"],
                reason=reason,
                receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0)),
            )


def delete_queue(sqs: BaseClient, name: str) -> None:
    """Delete the queue by name. A queue that does not exist counts as deleted."""
    url = queue_url(sqs, name)
    if url is None:
        return
    try:
        sqs.delete_queue(QueueUrl=url)
    except ClientError as exc:
        if error_code(exc) not in MISSING_QUEUE_CODES:
            raise
    logger.info("Deleted queue %s", name)


def tagged_queues(sqs: BaseClient, prefix: str, tags: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Every queue whose name starts with `prefix` and that carries all of `tags`, with its tags."""
    for url in paginate(sqs, "list_queues", "QueueUrls", QueueNamePrefix=prefix):
        try:
            queue_tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        except ClientError as exc:
            if error_code(exc) in MISSING_QUEUE_CODES:
                continue  # deleted meanwhile
            raise
        if all(queue_tags.get(key) == value for key, value in tags.items()):
            yield url, queue_tags

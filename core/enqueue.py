"""Enqueue a batch so that a retry, a re-run or a resumed run never sends a job twice.

Jobs are sent in file order, in chunks; after each chunk a marker in the run's records notes how
far the batch got and which queue it went into (the queue's creation time):

- same queue, marker complete: nothing is sent again;
- same queue, marker partial (a crash or a retry in the middle): sending goes on after the last
  chunk recorded; only the part of one chunk sent before the crash can be sent again, and a
  worker skips a job whose outcome is already recorded;
- a new queue (the old one was deleted by cleanup, e.g. before a flow retry or a resume): the
  jobs that have no outcome record yet are sent into it, and only those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable, Iterator
from itertools import islice

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict

from prefect_distributed.core.aws import s3
from prefect_distributed.core.aws.sqs_send import send_messages_concurrently
from prefect_distributed.core.jobs import Job, JobMessage
from prefect_distributed.core.models import EnqueueResult, RunResources

logger = logging.getLogger(__name__)

CHECKPOINT_JOBS = 1000


class EnqueueMarker(BaseModel):
    """How far a run's batch got into which queue (runs/<run id>/enqueued.json)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    queue_created: str
    sent_through: int = 0
    complete: bool = False


def marker_key(resources: RunResources) -> str:
    return f"{resources.records_prefix}/enqueued.json"


def queue_created(sqs: BaseClient, url: str) -> str:
    """The queue's creation time: tells the queue a marker refers to from a newer one of that name."""
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])["Attributes"]["CreatedTimestamp"]


def enqueue_batch(
    s3_client: BaseClient,
    sqs: BaseClient,
    resources: RunResources,
    url: str,
    jobs: Iterable[Job],
    total: int,
    finished_ids: Callable[[], Container[str]],
    *,
    checkpoint_jobs: int = CHECKPOINT_JOBS,
) -> EnqueueResult:
    """Send the batch's jobs that this queue has not received yet; see the module docstring.

    `finished_ids` is only called when the queue is new while the run already has a marker (the
    one case where outcome records decide what to send).
    """
    created = queue_created(sqs, url)
    found = s3.get_json(s3_client, resources.records_bucket, marker_key(resources))
    marker = EnqueueMarker.model_validate(found) if found else None
    skip: Container[str] = frozenset()
    if marker and marker.queue_created == created:
        if marker.complete:
            logger.info("The %d jobs of run %s are already in its queue; none sent again", total, resources.run_id)
            return EnqueueResult(sent=0, total=total)
        start = marker.sent_through
        logger.info("Going on enqueueing run %s after its first %d jobs", resources.run_id, start)
    else:
        start = 0
        if marker:
            skip = finished_ids()
            logger.info("Run %s's queue is new: sending only its jobs that have no outcome yet", resources.run_id)
    sent = 0
    position = start
    for chunk in _chunks(islice(jobs, start, None), checkpoint_jobs):
        bodies = (JobMessage.for_job(job, resources.run_id).body() for job in chunk if job.job_id not in skip)
        sent += send_messages_concurrently(sqs, url, bodies)
        position += len(chunk)
        _save(s3_client, resources, EnqueueMarker(queue_created=created, sent_through=position))
    _save(s3_client, resources, EnqueueMarker(queue_created=created, sent_through=position, complete=True))
    return EnqueueResult(sent=sent, total=total)


def _chunks(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    iterator = iter(jobs)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _save(s3_client: BaseClient, resources: RunResources, marker: EnqueueMarker) -> None:
    s3.put_json(s3_client, resources.records_bucket, marker_key(resources), marker.model_dump())

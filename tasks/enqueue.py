"""Enqueue: every job of the job file into the queue, ten per call."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.aws import s3
from core.aws.sqs_send import send_messages_concurrently
from core.batch import Batch
from core.config import RunConfig
from core.jobs import JobMessage
from core.models import EnqueueResult, QueueUrls, RunResources
from tasks._aws import AWS_RETRIES, aws_clients


@task(name="enqueue", cache_policy=NO_CACHE, **AWS_RETRIES)
def enqueue_jobs(config: RunConfig, resources: RunResources, urls: QueueUrls, batch: Batch) -> EnqueueResult:
    """Send the jobs once per run: a marker in the run's records stops a retry from sending twice.

    A retry after a partial send sends the batch again; workers skip a job that already has an
    outcome, so a duplicate costs at most one extra run of a job, never a double count.
    """
    logger = get_run_logger()
    clients = aws_clients(config)
    s3_client = clients.client("s3")
    marker = f"{resources.records_prefix}/enqueued.json"
    if s3.get_json(s3_client, resources.records_bucket, marker) is not None:
        logger.info("Jobs of run %s were already enqueued; not sending them again", resources.run_id)
        return EnqueueResult(sent=0, total=batch.count)
    # Streamed from the file: a million jobs never sit in memory at once.
    bodies = (JobMessage.for_job(job, resources.run_id).body() for job in batch.jobs(config.command))
    sent = send_messages_concurrently(clients.client("sqs"), urls.queue_url, bodies)
    s3.put_json(s3_client, resources.records_bucket, marker, {"jobs": sent})
    logger.info("Enqueued %d jobs into %s", sent, resources.queue_name)
    return EnqueueResult(sent=sent, total=batch.count)

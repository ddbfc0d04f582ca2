"""Enqueue: every job of the batch into the queue, ten per call, never twice (core/enqueue.py)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.batch import Batch
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.enqueue import enqueue_batch
from prefect_distributed.core.models import EnqueueResult, QueueUrls, RunResources
from prefect_distributed.core.records import read_outcomes
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="enqueue", cache_policy=NO_CACHE, **AWS_RETRIES)
def enqueue_jobs(config: RunConfig, resources: RunResources, urls: QueueUrls, batch: Batch) -> EnqueueResult:
    """Streamed from the job file: a million jobs never sit in memory at once."""
    logger = get_run_logger()
    clients = aws_clients(config)
    s3_client = clients.client("s3")
    result = enqueue_batch(
        s3_client,
        clients.client("sqs"),
        resources,
        urls.queue_url,
        batch.jobs(config.command),
        batch.count,
        lambda: read_outcomes(s3_client, resources),
    )
    logger.info("Enqueued %d of the run's %d jobs into %s", result.sent, result.total, resources.queue_name)
    return result

"""Setup: the buckets are checked, the dead-letter queue and the job queue made ready."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.aws import s3, sqs
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.fleets import fleet_backend
from prefect_distributed.core.models import QueueUrls, RunResources
from prefect_distributed.core.tags import DEAD_LETTER, TAG_QUEUE_ROLE
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="setup", cache_policy=NO_CACHE, **AWS_RETRIES)
def setup_run(config: RunConfig, resources: RunResources) -> QueueUrls:
    """Create (or update) the run's queues; idempotent, so a retry or a re-run is safe."""
    logger = get_run_logger()
    clients = aws_clients(config)
    s3_client, sqs_client = clients.client("s3"), clients.client("sqs")
    fleet_backend(clients, config).preflight()  # the fleet's settings, before anything is created
    for setting, bucket in (
        ("bucket", config.bucket),
        ("input_bucket", config.inputs_bucket),
        ("output_bucket", config.outputs_bucket),
    ):
        s3.check_bucket(s3_client, bucket, setting)
    dead_letter_url = sqs.ensure_queue(
        sqs_client,
        resources.dead_letter_queue_name,
        sqs.dead_letter_queue_attributes(),
        {**resources.tags, TAG_QUEUE_ROLE: DEAD_LETTER},
    )
    queue_url = sqs.ensure_queue(
        sqs_client,
        resources.queue_name,
        sqs.job_queue_attributes(
            sqs.queue_arn(sqs_client, dead_letter_url),
            config.queue.visibility_timeout_s,
            config.queue.redrive_receive_count,
        ),
        resources.tags,
    )
    logger.info(
        "Queue %s ready (visibility %d s; a job goes to the dead-letter queue %s after %d failed runs, "
        "or after %d deliveries that no worker finished)",
        resources.queue_name,
        config.queue.visibility_timeout_s,
        resources.dead_letter_queue_name,
        config.queue.job_retries,
        config.queue.redrive_receive_count,
    )
    return QueueUrls(queue_url=queue_url, dead_letter_queue_url=dead_letter_url)

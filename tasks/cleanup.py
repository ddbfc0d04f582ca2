"""Cleanup: stop the workers and delete what setup made. Runs however the run ended."""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.aws import sqs
from core.aws.clients import error_code, is_transient
from core.config import RunConfig
from core.fleets import fleet_backend
from core.models import CleanupResult, RunResources
from tasks._aws import AWS_RETRIES, aws_clients


@task(name="cleanup", cache_policy=NO_CACHE, **AWS_RETRIES)
def cleanup_run(config: RunConfig, resources: RunResources) -> CleanupResult:
    return clean_up(config, resources, get_run_logger())


def clean_up(
    config: RunConfig, resources: RunResources, logger: logging.Logger | logging.LoggerAdapter
) -> CleanupResult:
    """Idempotent: finds everything by the run's derived names, so it works after a crash too,
    from another process (the crash hook runs in the Prefect worker).

    A resource that cannot be deleted is reported in `left` with the AWS error code.
    """
    clients = aws_clients(config)
    sqs_client = clients.client("sqs")
    deleted: list[str] = []
    kept: list[str] = []
    left: list[str] = []

    backend = fleet_backend(clients, config)
    fleet = backend.handle_for(resources.run_id)
    backend.stop(fleet)
    running = backend.status(fleet).running
    (left if running else deleted).append(
        f"fleet {fleet.id}" + (f" ({running} workers still running)" if running else "")
    )

    queues = [resources.queue_name]
    if config.keep_dead_letter_queue:
        kept.append(f"queue {resources.dead_letter_queue_name} (keep_dead_letter_queue)")
    else:
        queues.append(resources.dead_letter_queue_name)
    for name in queues:
        try:
            sqs.delete_queue(sqs_client, name)
            deleted.append(f"queue {name}")
        except ClientError as exc:
            if is_transient(exc):
                raise  # the task's retry runs the whole, idempotent cleanup again
            left.append(f"queue {name} ({error_code(exc)})")
    logger.info(
        "Cleanup of run %s: deleted %s; kept %s; left %s",
        resources.run_id,
        deleted,
        kept or "nothing",
        left or "nothing",
    )
    return CleanupResult(deleted=deleted, kept=kept, left=left)

"""Cleanup of one run: workers stopped, queues deleted, logs exported to S3, from the run id alone.

Runs at the end of every run, in the crash hook (from another process) and again on a retry, so
every step is idempotent and finds its resource by the run's derived names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws import logs, sqs
from prefect_distributed.core.aws.clients import AwsClients, error_code, is_transient
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import AwsOperationError
from prefect_distributed.core.fleets import fleet_backend
from prefect_distributed.core.models import CleanupResult, RunResources

Logger = logging.Logger | logging.LoggerAdapter


def clean_up(
    clients: AwsClients,
    config: RunConfig,
    resources: RunResources,
    logger: Logger,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CleanupResult:
    """Stop the fleet, delete the queues (the dead-letter queue per config), export and delete the
    run's log group. A resource that cannot be deleted is reported in `left` with the AWS error code;
    a transient AWS error is raised so that the caller's retry runs the whole cleanup again."""
    result = CleanupResult()
    _stop_fleet(clients, config, resources, result)
    _delete_queues(clients.client("sqs"), config, resources, result)
    _export_logs(clients, config, resources, result, clock=clock, sleep=sleep)
    logger.info(
        "Cleanup of run %s: deleted %s; kept on purpose %s; could not delete %s",
        resources.run_id,
        result.deleted,
        result.kept or "nothing",
        result.left or "nothing",
    )
    return result


def _stop_fleet(clients: AwsClients, config: RunConfig, resources: RunResources, result: CleanupResult) -> None:
    backend = fleet_backend(clients, config)
    fleet = backend.handle_for(resources.run_id)
    backend.stop(fleet)
    status = backend.status(fleet)
    if status.running:
        result.left.append(f"fleet {fleet.id} ({status.running} workers still running)")
    else:
        result.deleted.append(f"fleet {fleet.id}")
    result.kept.extend(status.kept)


def _delete_queues(sqs_client: BaseClient, config: RunConfig, resources: RunResources, result: CleanupResult) -> None:
    names = [resources.queue_name]
    dead_letter = resources.dead_letter_queue_name
    policy = config.dead_letter_queue_after_run
    dead_jobs = _dead_job_count(sqs_client, dead_letter) if policy == "keep-if-jobs" else 0
    if policy == "keep":
        result.kept.append(f"queue {dead_letter} (dead_letter_queue_after_run: keep)")
    elif dead_jobs:
        result.kept.append(
            f"queue {dead_letter} (holds {dead_jobs} dead job(s): they expire after 14 days, and the janitor "
            "deletes the queue once it is empty; dead_letter_queue_after_run: delete removes it at once)"
        )
    else:
        names.append(dead_letter)
    for name in names:
        try:
            sqs.delete_queue(sqs_client, name)
            result.deleted.append(f"queue {name}")
        except ClientError as exc:
            if is_transient(exc):
                raise
            result.left.append(f"queue {name} ({error_code(exc)})")


def _dead_job_count(sqs_client: BaseClient, name: str) -> int:
    url = sqs.queue_url(sqs_client, name)
    return sqs.queue_counts(sqs_client, url).total if url else 0


def _export_logs(
    clients: AwsClients,
    config: RunConfig,
    resources: RunResources,
    result: CleanupResult,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Export the run's log group to s3://<bucket>/runs/<run id>/logs/, then delete it unless kept.

    A group whose export failed or did not complete within log_export_wait_s is kept (it has a
    retention) and said so: its logs are never lost by cleanup.
    """
    logs_client = clients.client("logs")
    group = resources.log_group
    if not logs.log_group_exists(logs_client, group):
        return
    prefix = f"{resources.records_prefix}/logs"
    try:
        status = logs.export_log_group(
            logs_client,
            group,
            resources.records_bucket,
            prefix,
            0,
            int(datetime.now(UTC).timestamp() * 1000),
            deadline_s=config.log_export_wait_s,
            sleep=sleep,
            clock=clock,
        )
    except AwsOperationError as exc:
        result.kept.append(f"log group {group} (not exported: {exc})")
        return
    except ClientError as exc:
        if is_transient(exc):
            raise
        result.kept.append(f"log group {group} (not exported: {error_code(exc)})")
        return
    if status != "COMPLETED":
        result.kept.append(f"log group {group} (export to s3://{resources.records_bucket}/{prefix}/ is {status})")
    elif config.keep_log_group:
        result.kept.append(f"log group {group} (keep_log_group; exported to s3://{resources.records_bucket}/{prefix}/)")
    else:
        logs.delete_log_group(logs_client, group)
        result.deleted.append(f"log group {group} (exported to s3://{resources.records_bucket}/{prefix}/)")

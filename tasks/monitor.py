"""Monitoring: watch the queues and the fleet until every job is accounted for."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal

from prefect_distributed.core.aws import sqs
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.fleets import fleet_backend
from prefect_distributed.core.models import FleetHandle, QueueUrls, RunResources, RunSnapshot, RunSummary
from prefect_distributed.core.monitor import RunFleet, wait_for_completion
from prefect_distributed.core.monitor_policy import MonitorPolicy, PolicySettings
from prefect_distributed.core.records import read_outcomes
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients
from prefect_distributed.tasks.cancel import cancel_request

HEARTBEAT_S = 30.0


def start_progress(config: RunConfig, total: int) -> UUID:
    """The run's progress artifact, made by the flow so that one monitor retry does not add another."""
    return create_progress_artifact(0.0, description=f"0 of {total} jobs finished ({config.app_name})")


def finish_progress(artifact_id: UUID, state_name: str, summary: RunSummary) -> None:
    """The progress artifact's last word: the run's final state and its counts."""
    done = summary.total - len(summary.unfinished)
    update_progress_artifact(
        artifact_id, 100.0 * done / max(summary.total, 1), description=f"{state_name}: {summary.headline}"
    )


@task(name="monitor", cache_policy=NO_CACHE, **AWS_RETRIES)
def monitor_run(
    config: RunConfig, resources: RunResources, urls: QueueUrls, fleet: FleetHandle, total: int, progress_id: UUID
) -> RunSnapshot:
    """Poll until every job is accounted for, keeping the progress artifact `progress_id` current.

    A reading costs two SQS calls and a fleet check, whatever the number of jobs. Logs when the
    counts change, and every 30 s otherwise; the progress artifact carries the same line (jobs,
    workers, and on spot-fleet the machines running against the fleet's target).
    When the run is cancelled, returns the last reading (the flow cleans up and ends Cancelled)
    instead of crashing.
    """
    logger = get_run_logger()
    clients = aws_clients(config)
    sqs_client, s3_client = clients.client("sqs"), clients.client("s3")
    backend = fleet_backend(clients, config)
    progress = _Progress(logger=logger, total=total, artifact_id=progress_id)

    def read_snapshot() -> RunSnapshot:
        queue = sqs.queue_counts(sqs_client, urls.queue_url)
        dead = sqs.queue_counts(sqs_client, urls.dead_letter_queue_url)
        status = backend.status(fleet)
        return RunSnapshot(
            total=total,
            visible=queue.visible,
            in_flight=queue.in_flight,
            delayed=queue.delayed,
            dead=dead.total,
            workers_running=status.running,
            machines_target=status.machines_target,
            machines_running=status.machines_running,
        )

    def count_accounted(snapshot: RunSnapshot) -> int:
        return len(read_outcomes(s3_client, resources)) + snapshot.dead

    try:
        return wait_for_completion(
            read_snapshot,
            count_accounted,
            policy=MonitorPolicy(PolicySettings.from_config(config)),
            clock=time.monotonic,
            sleep=time.sleep,
            on_snapshot=progress,
            fleet=RunFleet(backend, fleet, logger),
        )
    except TerminationSignal:
        if cancel_request() is None:
            raise
        logger.info("The run is being cancelled: the monitor stops; cleanup follows")
        return progress.snapshot or read_snapshot()


@dataclass
class _Progress:
    """Logs a reading when it differs from the last one, or every 30 s; mirrors it in the UI."""

    logger: logging.Logger | logging.LoggerAdapter
    total: int
    artifact_id: UUID
    line: str = ""
    logged_at: float = field(default=0.0)
    snapshot: RunSnapshot | None = None

    def __call__(self, snapshot: RunSnapshot) -> None:
        self.snapshot = snapshot
        line = (
            f"{snapshot.finished}/{self.total} finished ({snapshot.dead} dead) | "
            f"{snapshot.visible} waiting, {snapshot.in_flight} running, {snapshot.delayed} delayed | "
            f"{snapshot.workers_running} workers"
        )
        if snapshot.machines_target is not None:
            line += f" on {snapshot.machines_running} machines (fleet target {snapshot.machines_target})"
        now = time.monotonic()
        if line == self.line and now - self.logged_at < HEARTBEAT_S:
            return
        self.logger.info("Progress: %s", line)
        update_progress_artifact(self.artifact_id, 100.0 * snapshot.finished / max(self.total, 1), description=line)
        self.line, self.logged_at = line, now

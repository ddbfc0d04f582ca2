"""The `distributed` flow: one batch from job file to results, and nothing left behind.

    validate -> setup -> enqueue -> start fleet -> monitor -> summarize -> cleanup -> publish

Validation runs before anything is created. Summarize, cleanup and publish run however the batch
ended (finished, failed or cancelled), in that order: the dead-letter queue is read before cleanup
deletes it.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from core.config import RunConfig
from core.errors import DistributedError
from core.jobs import JobFileCheck
from core.models import QueueUrls, RunResources, RunSummary
from tasks.cleanup import cleanup_run
from tasks.enqueue import enqueue_jobs
from tasks.fleet import start_fleet
from tasks.monitor import monitor_run
from tasks.report import publish_summary, summarize_run
from tasks.setup import setup_run
from tasks.validate import validate_run


@flow(name="distributed", description="Run a containerised program over every job of a job file, on AWS or locally.")
def distributed(config: str | dict[str, Any]) -> RunSummary:
    """Run one batch.

    Args:
        config: A YAML config file path, the name of a saved 'Distributed Config' block, or the
            settings themselves as a mapping.
    """
    validated = validate_run(config)
    run_config, jobs = validated.config, validated.jobs
    resources = RunResources.for_run(run_config, str(flow_run.id or uuid4()))
    started = time.monotonic()
    urls: QueueUrls | None = None
    error: str | None = None
    try:
        urls = setup_run(run_config, resources)
        enqueue_jobs(run_config, resources, urls, jobs)
        fleet = start_fleet(run_config, resources, urls)
        monitor_run(run_config, resources, urls, fleet, jobs.count)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = _finish(run_config, resources, jobs, started, error, setup_done=urls is not None)
    if summary is None:
        raise DistributedError(f"Run {resources.run_id} finished but its summary could not be built; see the log")
    return summary


def _finish(
    config: RunConfig, resources: RunResources, jobs: JobFileCheck, started: float, error: str | None, setup_done: bool
) -> RunSummary | None:
    """Summarize (when setup got far enough to have records), clean up, publish.

    Cleanup runs even when summarizing fails, and a failure here never hides the run's own error.
    """
    logger = get_run_logger()
    summary: RunSummary | None = None
    if setup_done:
        try:
            summary = summarize_run(config, resources, jobs, time.monotonic() - started, error)
        except Exception:
            logger.exception("Could not summarize run %s; cleaning up anyway", resources.run_id)
    cleanup = cleanup_run(config, resources)
    if summary is None:
        return None
    return publish_summary(config, resources, summary, cleanup)

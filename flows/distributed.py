"""The `distributed` flow: one batch from job file to results, and nothing left behind.

    validate -> setup -> enqueue -> start fleet -> monitor -> summarize -> cleanup -> publish

Validation runs before anything is created. Summarize, cleanup and publish run however the batch
ended (finished, failed or cancelled), in that order: the dead-letter queue is read before cleanup
deletes it. If the flow's process is killed outright, the `on_crashed` hook (run by the Prefect
worker) cleans up from the run id alone, and the janitor flow catches anything left after that.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import yaml
from prefect import Flow, flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run
from prefect.states import State

from core.batch import Batch
from core.config import RunConfig
from core.errors import DistributedError
from core.models import QueueUrls, RunResources, RunSummary
from tasks.cleanup import clean_up, cleanup_run
from tasks.enqueue import enqueue_jobs
from tasks.events import announce
from tasks.fleet import start_fleet
from tasks.monitor import monitor_run
from tasks.report import publish_summary, summarize_run
from tasks.rerun import select_failed_jobs
from tasks.setup import setup_run
from tasks.validate import ConfigParameter, resolve_config, validate_run


def _app_name(config: Any) -> str:
    """Best-effort app name for the run's name, before the config is validated."""
    try:
        data = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text())
        return str(data["app_name"])
    except Exception:  # an invalid config gets a plain name; validation reports the problem
        return "distributed"


def _run_name() -> str:
    return f"{_app_name(current_run.parameters.get('config'))}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def _clean_up_after_crash(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Runs in the Prefect worker when the flow's process died or was cancelled before its own
    cleanup could run; finds everything from the run id and the config parameter alone."""
    logger = flow_run_logger(flow_run, flow)
    config = resolve_config(flow_run.parameters["config"])
    result = clean_up(config, RunResources.for_run(config, str(flow_run.id)), logger)
    logger.info("Cleaned up after the run ended %s: left %s", state.name, result.left or "nothing")


@flow(
    name="distributed",
    flow_run_name=_run_name,
    description="Run a containerised program over every job of a job file, on AWS or locally, then clean up.",
    on_crashed=[_clean_up_after_crash],
    on_cancellation=[_clean_up_after_crash],
)
def distributed(config: ConfigParameter, rerun_failed_from: str | None = None) -> RunSummary:
    """Run one batch.

    Args:
        config: A YAML config file path, the name of a saved 'Distributed Config' block, or the
            settings themselves as a mapping.
        rerun_failed_from: The run id of an earlier run of this config: run only the jobs it
            reported failed or unfinished (after you fixed their cause).
    """
    validated = validate_run(config)
    run_config = validated.config
    batch = (
        select_failed_jobs(run_config, validated.jobs, rerun_failed_from)
        if rerun_failed_from
        else Batch(file=validated.jobs)
    )
    resources = RunResources.for_run(run_config, str(current_run.id or uuid4()))
    _tag_run(run_config)
    started = time.monotonic()
    urls: QueueUrls | None = None
    error: str | None = None
    try:
        with tags(f"app:{run_config.app_name}"):
            urls = setup_run(run_config, resources)
            announce(resources, "queue-ready", queue=resources.queue_name)
            enqueued = enqueue_jobs(run_config, resources, urls, batch)
            announce(resources, "jobs-enqueued", jobs=enqueued.total)
            fleet = start_fleet(run_config, resources, urls)
            announce(resources, "fleet-up", fleet=fleet.id, workers=fleet.workers)
            final = monitor_run(run_config, resources, urls, fleet, batch.count)
            announce(resources, "batch-complete", finished=final.finished, dead=final.dead)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = _finish(run_config, resources, batch, started, error, setup_done=urls is not None)
    if summary is None:
        raise DistributedError(f"Run {resources.run_id} finished but its summary could not be built; see the log")
    return summary


def _tag_run(config: RunConfig) -> None:
    """Tag the flow run with its app, so runs can be filtered and automations scoped in the UI."""
    if current_run.id is None:
        return
    with get_client(sync_client=True) as client:
        existing = client.read_flow_run(current_run.id).tags
        client.update_flow_run(current_run.id, tags=sorted({*existing, "distributed", f"app:{config.app_name}"}))


def _finish(
    config: RunConfig, resources: RunResources, batch: Batch, started: float, error: str | None, setup_done: bool
) -> RunSummary | None:
    """Summarize (when setup got far enough to have records), clean up, publish.

    Cleanup runs even when summarizing fails, and a failure here never hides the run's own error.
    """
    logger = get_run_logger()
    summary: RunSummary | None = None
    if setup_done:
        try:
            summary = summarize_run(config, resources, batch, time.monotonic() - started, error)
        except Exception:
            logger.exception("Could not summarize run %s; cleaning up anyway", resources.run_id)
    cleanup = cleanup_run(config, resources)
    announce(resources, "cleanup-done", deleted=cleanup.deleted, left=cleanup.left)
    if summary is None:
        return None
    return publish_summary(config, resources, summary, cleanup)

"""The `distributed` flow: one batch from job file to results, and nothing left behind.

    validate -> preflight -> setup -> enqueue -> cost estimate -> start fleet -> monitor
             -> summarize -> cleanup -> publish

Validation and the preflight of the account run before anything is created. Summarize, cleanup
and publish run however the batch ended (finished, failed or cancelled), in that order: the
dead-letter queue is read before cleanup may delete it. If the flow's process is killed outright,
the `on_crashed` hook (run by the Prefect worker) cleans up from the run id alone, and the janitor
flow catches anything left after that; with nobody to clean up, a new run with `resume_run_id`
takes the batch over.

With `action`, the same flow (and deployment name) checks the account (`preflight`), prepares it
once (`bootstrap`, `destroy-bootstrap`), or turns a Distributed-Something config.py into a YAML config
(`convert-ds-config`): see flows/preflight.py, flows/bootstrap.py and flows/convert.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import yaml
from prefect import Flow, flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import TerminationSignal
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run
from prefect.states import Cancelled, Completed, Failed, State

from prefect_distributed.core.batch import Batch
from prefect_distributed.core.bootstrap import BootstrapResult, DestroyResult
from prefect_distributed.core.cleanup import clean_up
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate
from prefect_distributed.core.ds_config import DsConversion
from prefect_distributed.core.errors import ConfigError, DistributedError
from prefect_distributed.core.models import QueueUrls, RunResources, RunSummary
from prefect_distributed.core.preflight import PreflightReport
from prefect_distributed.core.records import read_summary
from prefect_distributed.flows.bootstrap import bootstrap_account
from prefect_distributed.flows.convert import convert_ds_config
from prefect_distributed.flows.preflight import preflight
from prefect_distributed.tasks._aws import aws_clients
from prefect_distributed.tasks.cancel import cancel_request
from prefect_distributed.tasks.cleanup import cleanup_run
from prefect_distributed.tasks.cost import estimate_run_cost
from prefect_distributed.tasks.enqueue import enqueue_jobs
from prefect_distributed.tasks.events import announce
from prefect_distributed.tasks.fleet import start_fleet
from prefect_distributed.tasks.monitor import finish_progress, monitor_run, start_progress
from prefect_distributed.tasks.preflight import preflight_run
from prefect_distributed.tasks.report import how_to_go_on, publish_summary, summarize_run
from prefect_distributed.tasks.rerun import select_failed_jobs
from prefect_distributed.tasks.resume import check_resumable
from prefect_distributed.tasks.setup import setup_run
from prefect_distributed.tasks.validate import ConfigParameter, resolve_config, validate_run


def _app_name(config: Any) -> str:
    """Best-effort app name for the run's name, before the config is validated."""
    try:
        data = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text())
        return str(data["app_name"])
    except Exception:  # an invalid config gets a plain name; validation reports the problem
        return "distributed"


def _run_name() -> str:
    action = current_run.parameters.get("action", "run")
    kind = "" if action == "run" else f"{action}-"
    return f"{_app_name(current_run.parameters.get('config'))}-{kind}{datetime.now(UTC):%Y%m%d-%H%M%S}"


Action = Literal["run", "preflight", "bootstrap", "destroy-bootstrap", "convert-ds-config"]
# A Completed state under this name: the runs list shows at a glance which runs have dead jobs.
DEAD_JOBS_STATE = "Completed with dead jobs"


def _clean_up_after_crash(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Runs in the Prefect worker when the flow's process died or was cancelled before its own
    cleanup could run; finds everything from the run id and the config parameter alone."""
    if flow_run.parameters.get("action", "run") != "run":
        return  # checking or preparing the account leaves nothing running
    logger = flow_run_logger(flow_run, flow)
    config = resolve_config(flow_run.parameters["config"])
    run_id = flow_run.parameters.get("resume_run_id") or str(flow_run.id)
    resources = RunResources.for_run(config, run_id)
    clients = aws_clients(config)
    if read_summary(clients.client("s3"), resources) is not None:  # saved after the run's own cleanup
        logger.info("Run %s had cleaned up after itself before it ended %s", run_id, state.name)
        return
    result = clean_up(clients, config, resources, logger)
    logger.info("Cleaned up after the run ended %s: left %s", state.name, result.left or "nothing")


@flow(
    name="distributed",
    flow_run_name=_run_name,
    description="Run a containerised program over every job of a job file, on AWS or locally, then clean up.",
    on_crashed=[_clean_up_after_crash],
    on_cancellation=[_clean_up_after_crash],
)
def distributed(
    config: ConfigParameter,
    rerun_failed_from: str | None = None,
    resume_run_id: str | None = None,
    action: Action = "run",
) -> RunSummary | PreflightReport | BootstrapResult | DestroyResult | DsConversion | State[Any]:
    """Run one batch (or, by `action`, check or prepare the AWS account for batches).

    A batch's run returns its final state carrying the RunSummary (a caller gets the RunSummary):
    Completed, 'Completed with dead jobs' (Failed with `fail_on_dead_jobs`), or Cancelled, each with
    the counts as its message. A config mistake fails the run before anything is created, with the
    mistake as the state's message.

    Args:
        config: A YAML config file path, the name of a saved 'Distributed Config' block, or the
            settings themselves as a mapping (with action 'convert-ds-config': a config.py's path).
        rerun_failed_from: The run id of an earlier run of this config: run only the jobs it
            reported failed or unfinished (after you fixed their cause).
        resume_run_id: The run id of a run whose flow died before the batch finished: attach to its
            queue, fleet and records, send only what its queue lacks, watch it to the end, clean up.
        action: 'run' a batch; 'preflight': only check the account and the config; 'bootstrap': make
            the account's roles, instance profile and bucket policy once; 'destroy-bootstrap': remove them;
            'convert-ds-config': write the YAML config of a Distributed-Something config.py beside it.
    """
    try:
        # Run inline (.fn), not as subflows: their artifacts then belong to this flow run, the one the
        # deployment started and the UI shows.
        if action == "preflight":
            return preflight.fn(config)
        if action in ("bootstrap", "destroy-bootstrap"):
            return bootstrap_account.fn(config, destroy=action == "destroy-bootstrap")
        if action == "convert-ds-config":
            return convert_ds_config.fn(config)
        validated = validate_run(config)
        run_config = validated.config
        if rerun_failed_from and resume_run_id:
            raise ConfigError("give rerun_failed_from or resume_run_id, not both")
        if run_config.preflight:
            preflight_run(run_config)
        if resume_run_id:
            check_resumable(run_config, resume_run_id)
        batch = (
            select_failed_jobs(run_config, validated.jobs, rerun_failed_from)
            if rerun_failed_from
            else Batch(file=validated.jobs)
        )
    except ConfigError as exc:
        return _refused(exc)
    resources = RunResources.for_run(run_config, resume_run_id or str(current_run.id or uuid4()))
    _tag_run(run_config)
    started = time.monotonic()
    urls: QueueUrls | None = None
    estimate: CostEstimate | None = None
    error: str | None = None
    cancelled: str | None = None  # the cancel request's message, once the run is being cancelled
    progress_id = None
    try:
        with tags(f"app:{run_config.app_name}"):
            urls = setup_run(run_config, resources)
            announce(resources, "queue-ready", queue=resources.queue_name)
            enqueued = enqueue_jobs(run_config, resources, urls, batch)
            announce(resources, "jobs-enqueued", jobs=enqueued.total)
            estimate = estimate_run_cost(run_config, batch.count)
            fleet = start_fleet(run_config, resources, urls)
            announce(resources, "fleet-up", fleet=fleet.id, workers=fleet.workers)
            progress_id = start_progress(run_config, batch.count)
            final = monitor_run(run_config, resources, urls, fleet, batch.count, progress_id)
            cancelled = cancel_request()
            if cancelled is None:
                announce(resources, "batch-complete", finished=final.finished, dead=final.dead)
    except BaseException as exc:
        # Cancelling a deployment's run reaches the flow as TerminationSignal: not a crash.
        cancelled = cancel_request() if isinstance(exc, TerminationSignal) else None
        if cancelled is None:
            error = f"{type(exc).__name__}: {exc}"
            raise
    finally:
        if cancelled is not None:
            error = f"cancelled ({cancelled})" if cancelled else "cancelled"
            get_run_logger().info("Run %s is being cancelled%s; cleaning up", resources.run_id, _said(cancelled))
        summary = _finish(run_config, resources, batch, started, error, estimate, setup_done=urls is not None)
    state = _final_state(run_config, resources, summary, cancelled)
    if progress_id is not None and summary is not None:
        finish_progress(progress_id, state.name or "", summary)
    return state


def _refused(exc: ConfigError) -> State[Any]:
    """A config mistake, found before anything was created: one line in the log and the state's
    message, no traceback. A caller of the flow still gets the ConfigError raised."""
    get_run_logger().error("Nothing was created: %s", exc)
    return Failed(message=str(exc), data=exc)


def _said(request: str) -> str:
    return f" (the request said: {request})" if request else ""


def _final_state(
    config: RunConfig, resources: RunResources, summary: RunSummary | None, cancelled: str | None
) -> State[RunSummary | None]:
    """The run's final state, carrying the RunSummary: its name and message are what the runs list
    and the run's page show, so they say how the run went (dead jobs, cancelled, how to go on)."""
    if cancelled is not None:
        if summary is None:
            return Cancelled(message=f"Cancelled before its jobs were sent; cleaned up{_said(cancelled)}")
        return Cancelled(message=f"Cancelled: {summary.headline}. {how_to_go_on(summary)}", data=summary)
    if summary is None:
        raise DistributedError(f"Run {resources.run_id} finished but its summary could not be built; see the log")
    if not summary.failed:
        return Completed(message=summary.headline, data=summary)
    message = f"{summary.headline}: see the dead-jobs artifact. {how_to_go_on(summary)}"
    if config.fail_on_dead_jobs:
        return Failed(message=f"{message} (fail_on_dead_jobs)", data=summary)
    return Completed(name=DEAD_JOBS_STATE, message=message, data=summary)


def _tag_run(config: RunConfig) -> None:
    """Tag the flow run with its app, so runs can be filtered and automations scoped in the UI."""
    if current_run.id is None:
        return
    with get_client(sync_client=True) as client:
        existing = client.read_flow_run(current_run.id).tags
        client.update_flow_run(current_run.id, tags=sorted({*existing, "distributed", f"app:{config.app_name}"}))


def _finish(
    config: RunConfig,
    resources: RunResources,
    batch: Batch,
    started: float,
    error: str | None,
    estimate: CostEstimate | None,
    setup_done: bool,
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
    return publish_summary(config, resources, summary, cleanup, estimate)

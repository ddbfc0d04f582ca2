"""The run's summary: every job accounted for, saved to S3 and shown in the Prefect UI."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.aws import sqs
from prefect_distributed.core.batch import Batch
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate
from prefect_distributed.core.errors import DistributedError
from prefect_distributed.core.fleets import fleet_backend
from prefect_distributed.core.manifest import Manifest
from prefect_distributed.core.models import CleanupResult, RunResources, RunSummary
from prefect_distributed.core.records import build_summary, dead_jobs, read_outcomes, read_summary, save_summary
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients
from prefect_distributed.tasks.validate import ConfigParameter, resolve_config


@task(name="summarize", cache_policy=NO_CACHE, **AWS_RETRIES)
def summarize_run(
    config: RunConfig, resources: RunResources, batch: Batch, duration_s: float, error: str | None
) -> RunSummary:
    """Read outcomes and the dead-letter queue (before cleanup may delete it), write the manifest
    of every job to S3 and show its head in the UI, dead jobs first."""
    clients = aws_clients(config)
    s3_client, sqs_client = clients.client("s3"), clients.client("sqs")
    dead_letter_url = sqs.queue_url(sqs_client, resources.dead_letter_queue_name)
    messages = sqs.read_dead_messages(sqs_client, dead_letter_url) if dead_letter_url else []
    with Manifest() as manifest:
        summary = build_summary(
            resources=resources,
            jobs=batch.jobs(config.command),
            outcomes=read_outcomes(s3_client, resources),
            dead=dead_jobs(s3_client, resources, messages, clients.secrets()),
            duration_s=duration_s,
            error=error,
            manifest=manifest,
        )
        uri = manifest.upload(s3_client, resources.records_bucket, f"{resources.records_prefix}/manifest.csv")
        _jobs_table(summary, manifest, uri)
    return summary.model_copy(update={"manifest_uri": uri})


# The UI table holds the dead and unfinished jobs first, then the first finished ones; the
# manifest in S3 lists them all.
MAX_TABLE_ROWS = 1000


def _jobs_table(summary: RunSummary, manifest: Manifest, uri: str) -> None:
    rows: list[dict[str, Any]] = [
        {
            "job_id": d.job_id,
            "state": "failed",
            "attempts": d.attempts,
            "reason": d.reason,
            "fields": json.dumps(d.fields),
        }
        for d in summary.failed
    ]
    rows = (rows + manifest.unfinished + manifest.preview)[:MAX_TABLE_ROWS]
    create_table_artifact(
        rows,
        key="jobs",
        description=f"{summary.headline}. Run {summary.run_id}: {len(rows)} of its {summary.total} jobs, "
        f"dead and unfinished first; every job with its state: {uri}",
    )


# The artifact carries the RunSummary as JSON, read back through the API; a run with thousands of
# dead jobs keeps the full list in S3 and in the dead-jobs table.
MAX_DEAD_JOBS_SHOWN = 100


def _console_links(config: RunConfig, resources: RunResources) -> list[str]:
    """Links to the run's resources in the AWS console (none on an emulator)."""
    region = config.region
    home = f"https://{region}.console.aws.amazon.com"
    log_group = quote(config.log_group_name or config.app_name, safe="")
    return [
        f"- Queues: [{resources.queue_name}]({home}/sqs/v3/home?region={region}#/queues), "
        f"dead-letter queue `{resources.dead_letter_queue_name}`",
        f"- Logs: [{config.log_group_name or config.app_name}]({home}/cloudwatch/home?region={region}"
        f"#logsV2:log-groups/log-group/{log_group})",
        f"- Records: [s3://{resources.records_bucket}/{resources.records_prefix}/]({home}/s3/buckets/"
        f"{resources.records_bucket}?region={region}&prefix={quote(resources.records_prefix, safe='')}/)",
    ]


def _markdown(summary: RunSummary, config: RunConfig, resources: RunResources, on_aws: bool) -> str:
    where = (
        _console_links(config, resources)
        if on_aws
        else [
            f"- Queues: `{resources.queue_name}`, dead-letter queue `{resources.dead_letter_queue_name}`",
            f"- Fleet: `{config.fleet.backend}`; records in `{summary.records_uri}`",
        ]
    )
    lines = [
        f"# Run {summary.app_name}",
        "",
        *where,
        "",
        "| | jobs |",
        "|---|---|",
        f"| total | {summary.total} |",
        f"| succeeded | {summary.succeeded} |",
        f"| skipped (already done) | {summary.skipped} |",
        f"| failed (dead-letter queue) | {len(summary.failed)} |",
        f"| unfinished | {len(summary.unfinished)} |",
        "",
        f"Duration: {summary.duration_s:.1f} s. Records and summary: `{summary.records_uri}`; "
        f"every job's state: `{summary.manifest_uri}`",
        "",
        f"Left in AWS: {summary.left_in_aws}.",
    ]
    if summary.skipped:
        lines += ["", _skipped_note(summary)]
    if summary.cost_estimate is not None:
        lines += ["", summary.cost_estimate.text]
    if summary.cost is not None:
        lines += ["", summary.cost.text]
    if summary.error:
        lines += ["", f"**The run stopped early:** {summary.error}"]
    if summary.error or summary.unfinished or summary.failed:
        lines += ["", how_to_go_on(summary)]
    shown = summary.model_copy(update={"failed": summary.failed[:MAX_DEAD_JOBS_SHOWN]})
    more = len(summary.failed) - len(shown.failed)
    lines += [
        "",
        "The RunSummary" + (f" ({more} more dead jobs in `summary.json`)" if more else "") + ":",
        "```json",
        shown.model_dump_json(indent=1),
        "```",
    ]
    return "\n".join(lines)


def _skipped_note(summary: RunSummary) -> str:
    if summary.skipped == summary.total:
        return "Every job already had its outputs in place (check-if-done): skipped, its program not run."
    return (
        f"{summary.skipped} of the {summary.total} jobs already had their outputs in place (check-if-done): "
        "skipped, their program not run."
    )


def how_to_go_on(summary: RunSummary) -> str:
    """The two ways to finish a batch that stopped early or has dead jobs, with this run's id."""
    undone = len(summary.failed) + len(summary.unfinished)
    resume = (
        f"`-p resume_run_id={summary.run_id}` finishes this run: only its jobs without an outcome run, "
        "nothing is sent twice; "
        if summary.unfinished
        else ""
    )
    return (
        f"To go on: {resume}`-p rerun_failed_from={summary.run_id}` runs its {undone} dead and unfinished "
        "jobs as a new run, once their cause is fixed."
    )


def read_run_summary(config: ConfigParameter, run_id: str) -> RunSummary:
    """The RunSummary a finished run saved next to its records, for a caller that started the run
    through its deployment (`run_deployment`) and so has no return value."""
    run_config = resolve_config(config)
    resources = RunResources.for_run(run_config, run_id)
    summary = read_summary(aws_clients(run_config).client("s3"), resources)
    if summary is None:
        raise DistributedError(
            f"run {run_id} saved no summary in s3://{resources.records_bucket}/{resources.records_prefix}/: "
            "it ended before it set up its queues, or it is not a run of this config"
        )
    return summary


@task(name="publish summary", cache_policy=NO_CACHE, **AWS_RETRIES)
def publish_summary(
    config: RunConfig,
    resources: RunResources,
    summary: RunSummary,
    cleanup: CleanupResult,
    estimate: CostEstimate | None = None,
) -> RunSummary:
    """Add cleanup's result, save the summary next to the run's records, and show it in the UI."""
    logger = get_run_logger()
    clients = aws_clients(config)
    backend = fleet_backend(clients, config)
    summary = summary.model_copy(
        update={
            "resources_left": cleanup.left,
            "resources_kept": cleanup.kept,
            "cost_estimate": estimate,
            # After cleanup, so that every machine's hours end at its termination.
            "cost": backend.cost(backend.handle_for(resources.run_id)),
        }
    )
    save_summary(clients.client("s3"), resources, summary)
    markdown = _markdown(summary, config, resources, on_aws=clients.endpoint_url is None)
    create_markdown_artifact(markdown, key="run-summary", description=f"{summary.headline}. Run {summary.run_id}")
    if summary.failed:
        shown = summary.failed[:MAX_TABLE_ROWS]
        create_table_artifact(
            [
                {"job_id": job.job_id, "reason": job.reason, "attempts": job.attempts, "fields": json.dumps(job.fields)}
                for job in shown
            ],
            key="dead-jobs",
            description=f"{len(summary.failed)} dead of {summary.total} jobs: the jobs of run {summary.run_id} "
            f"that ended in the dead-letter queue ({len(shown)} shown; all of them in {summary.manifest_uri})",
        )
    logger.info("Run %s: %s; left in AWS: %s", summary.run_id, summary.headline, summary.left_in_aws)
    if summary.skipped:
        logger.info(_skipped_note(summary))
    if summary.cost is not None:
        logger.info("%s", summary.cost.text)
    return summary

"""The records workers write to S3 for each job, and how a run's summary is built from them.

Layout under `runs/<run_id>/` in the records bucket (the worker writes it; worker/README.md):
`outcomes/<job_id>.<status>.json` for each finished job and `attempts/<job_id>.<n>.json` for each
failed run of its program. Counting outcomes by key means one listing per thousand jobs, and a job
delivered twice still has one outcome. The key layout is the worker's own (worker.core).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

from botocore.client import BaseClient

from prefect_distributed.core.aws.s3 import get_json, list_keys, put_json
from prefect_distributed.core.aws.sqs import DeadMessage
from prefect_distributed.core.idset import JobIdSet
from prefect_distributed.core.jobs import Job
from prefect_distributed.core.manifest import JobState, Manifest
from prefect_distributed.core.models import DeadJob, RunResources, RunSummary
from prefect_distributed.worker.core import attempt_numbers, attempt_prefix
from prefect_distributed.worker.output import mask

OUTCOME_STATUSES = ("succeeded", "skipped")


class Outcomes:
    """The jobs that finished, from their records: each id once, however many records it has (a job
    delivered twice may have a succeeded and a skipped one; succeeded wins). Compact (core/idset.py),
    so a million-job run's summary and monitor hold tens of MB, not hundreds."""

    def __init__(self) -> None:
        self._finished = JobIdSet()
        self._succeeded = JobIdSet()

    def add(self, job_id: str, status: str) -> None:
        self._finished.add(job_id)
        if status == "succeeded":
            self._succeeded.add(job_id)

    def status(self, job_id: str) -> Literal["succeeded", "skipped"] | None:
        """'succeeded', 'skipped', or None for a job with no outcome."""
        if job_id not in self._finished:
            return None
        return "succeeded" if job_id in self._succeeded else "skipped"

    @property
    def succeeded(self) -> int:
        return len(self._succeeded)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._finished

    def __len__(self) -> int:
        return len(self._finished)


def read_outcomes(s3: BaseClient, resources: RunResources) -> Outcomes:
    """Every finished job's outcome: one listing call per thousand records."""
    prefix = f"{resources.records_prefix}/outcomes/"
    outcomes = Outcomes()
    for key in list_keys(s3, resources.records_bucket, prefix):
        job_id, _, rest = key[len(prefix) :].partition(".")
        status = rest.removesuffix(".json")
        if status in OUTCOME_STATUSES:
            outcomes.add(job_id, status)
    return outcomes


class Failures(NamedTuple):
    """A job's failed runs, from its attempt records: how many, and the latest record (None: none)."""

    count: int
    latest: dict[str, Any] | None


def failures(s3: BaseClient, resources: RunResources, job_id: str) -> Failures:
    """One listing of the job's attempt records, and one read of the latest."""
    prefix = attempt_prefix(resources.run_id, job_id)
    numbers = attempt_numbers(list_keys(s3, resources.records_bucket, prefix), prefix)
    if not numbers:
        return Failures(0, None)
    return Failures(len(numbers), get_json(s3, resources.records_bucket, f"{prefix}{numbers[-1]}.json"))


def dead_jobs(
    s3: BaseClient, resources: RunResources, messages: Iterable[DeadMessage], secrets: Sequence[str] = ()
) -> list[DeadJob]:
    """One DeadJob per job id in the dead-letter queue, with the most specific reason known.

    `secrets` are masked in reasons and output: a worker masks the ones it knows, the flow the ones
    it knows (e.g. a key a worker never had, printed by a program that found it elsewhere).
    """
    found: dict[str, DeadJob] = {}
    for message in messages:
        try:
            body = json.loads(message.body)
            job_id, fields = str(body["job_id"]), dict(body.get("fields", {}))
            failed = Failures(0, None) if job_id in found else failures(s3, resources, job_id)
        except (ValueError, KeyError, TypeError):
            job_id, fields, failed = f"unreadable-{len(found)}", {"body": message.body[:500]}, Failures(0, None)
        if job_id in found:
            continue
        latest = failed.latest or {}
        output_tail = str(latest.get("output_tail") or "")
        reason = message.reason or latest.get("reason") or _redriven_reason(message.receive_count)
        last_line = next((line for line in reversed(output_tail.splitlines()) if line.strip()), "")
        if last_line and last_line not in reason:
            reason = f"{reason}: {last_line.strip()}"
        # A job the redrive policy moved has no failed run: its deliveries are what it spent.
        attempts = failed.count or message.receive_count
        found[job_id] = DeadJob(
            job_id=job_id,
            fields=fields,
            reason=mask(reason, secrets),
            attempts=attempts,
            output_tail=mask(output_tail, secrets),
        )
    return sorted(found.values(), key=lambda dead: dead.job_id)


def _redriven_reason(receive_count: int) -> str:
    return (
        f"moved to the dead-letter queue by the queue's redrive policy after {receive_count} deliveries that no "
        "worker finished (the job may kill its worker, e.g. by running it out of memory; see the worker logs)"
    )


def build_summary(
    *,
    resources: RunResources,
    jobs: Iterable[Job],
    outcomes: Outcomes,
    dead: list[DeadJob],
    duration_s: float,
    error: str | None,
    manifest: Manifest | None = None,
) -> RunSummary:
    """Account for every job of the job file exactly once, and list each in the manifest.

    A job with an outcome counts by its outcome even if a duplicate copy also died; jobs with
    neither an outcome nor a dead copy are listed as unfinished.
    """
    dead_by_id = {job.job_id: job for job in dead}
    counts = {"succeeded": 0, "skipped": 0}
    failed = []
    unfinished = []
    total = 0
    for job in jobs:
        total += 1
        state: JobState
        status = outcomes.status(job.job_id)
        if status is not None:
            state = status
            counts[status] += 1
        elif job.job_id in dead_by_id:
            state = "failed"
            failed.append(dead_by_id[job.job_id])
        else:
            state = "unfinished"
            unfinished.append(job.job_id)
        if manifest is not None:
            manifest.add(job.job_id, job.fields, state, dead_by_id.get(job.job_id))
    return RunSummary(
        total=total,
        succeeded=counts["succeeded"],
        skipped=counts["skipped"],
        failed=failed,
        unfinished=sorted(unfinished),
        duration_s=round(duration_s, 1),
        resources_left=[],
        run_id=resources.run_id,
        app_name=resources.app_name,
        records_uri=f"s3://{resources.records_bucket}/{resources.records_prefix}/",
        error=error,
    )


def _summary_key(resources: RunResources) -> str:
    return f"{resources.records_prefix}/summary.json"


def save_summary(s3: BaseClient, resources: RunResources, summary: RunSummary) -> None:
    put_json(s3, resources.records_bucket, _summary_key(resources), summary.model_dump(mode="json"))


def read_summary(s3: BaseClient, resources: RunResources) -> RunSummary | None:
    """The run's summary, or None before the run finished (it is saved last, after cleanup)."""
    saved = get_json(s3, resources.records_bucket, _summary_key(resources))
    return None if saved is None else RunSummary.model_validate(saved)

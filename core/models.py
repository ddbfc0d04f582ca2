"""The models that pass between the steps of a run, and the summary a run ends with."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate, CostReport
from prefect_distributed.core.tags import CREATED_BY, TAG_APP, TAG_CREATED_BY, TAG_RUN_ID
from prefect_distributed.worker.core import MAX_OUTPUT_TAIL_CHARS, MAX_REASON_CHARS

# A field value longer than this (as JSON) is shown as its size in summaries, manifests and the UI;
# the job file keeps it, and jobs are found again by id.
MAX_SHOWN_FIELD_CHARS = 1000


def run_log_group(base: str, run_id: str) -> str:
    """A run's own CloudWatch log group, under the config's log_group_name (or app name): exported to
    S3 and deleted at cleanup without touching another run's logs."""
    return f"{base}/{run_id}"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunResources(_Model):
    """Names of everything a run creates. Derived from the config and the run id alone, so that
    cleanup finds them from any process, even when setup never finished."""

    run_id: str
    app_name: str
    queue_name: str
    dead_letter_queue_name: str
    records_bucket: str
    records_prefix: str = Field(description="Key prefix of the run's records in the records bucket.")
    log_group: str = Field(description="CloudWatch log group of the run's workers (spot-fleet, or job_log_streams).")
    tags: dict[str, str]

    @classmethod
    def for_run(cls, config: RunConfig, run_id: str) -> RunResources:
        queue, dead = config.queue_names(run_id)
        return cls(
            run_id=run_id,
            app_name=config.app_name,
            queue_name=queue,
            dead_letter_queue_name=dead,
            records_bucket=config.bucket,
            records_prefix=f"runs/{run_id}",
            log_group=run_log_group(config.log_group_name or config.app_name, run_id),
            tags={TAG_APP: config.app_name, TAG_RUN_ID: run_id, TAG_CREATED_BY: CREATED_BY},
        )


class QueueUrls(_Model):
    """The queues setup made ready."""

    queue_url: str
    dead_letter_queue_url: str


class EnqueueResult(_Model):
    sent: int = Field(description="Jobs sent to the queue by this call.")
    total: int = Field(description="Jobs in the job file.")


class FleetHandle(_Model):
    """What a fleet backend needs to find its fleet again, from any process."""

    backend: str
    id: str
    workers: int = Field(description="Workers (local processes, or containers) the fleet was asked for.")


class FleetStatus(_Model):
    target: int = Field(description="Workers asked for.")
    running: int = Field(description="Workers alive now.")
    kept: list[str] = Field(
        default_factory=list, description="What a stopped fleet keeps on purpose, by config (e.g. its logs)."
    )
    machines_target: int | None = Field(default=None, description="Machines the fleet asks for; None: no machines.")
    machines_running: int | None = Field(default=None, description="Machines running now; None: no machines.")


class RunSnapshot(_Model):
    """One reading of a run's progress."""

    total: int
    visible: int
    in_flight: int
    delayed: int
    dead: int
    workers_running: int
    machines_target: int | None = Field(default=None, description="Machines the fleet asks for (spot-fleet).")
    machines_running: int | None = Field(default=None, description="Machines running now (spot-fleet).")

    @property
    def finished(self) -> int:
        """Jobs no longer in the job queue: done, skipped or dead (SQS counts are approximate)."""
        return max(0, self.total - self.visible - self.in_flight - self.delayed)

    @property
    def queue_empty(self) -> bool:
        return self.visible + self.in_flight + self.delayed == 0


def shown_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The job's fields, each value too long to show replaced by a note of its size."""
    shown = {}
    for name, value in fields.items():
        size = len(json.dumps(value))
        shown[name] = value if size <= MAX_SHOWN_FIELD_CHARS else f"[{size} characters, not shown]"
    return shown


def _head(limit: int) -> AfterValidator:
    return AfterValidator(lambda text: text[:limit])


def _tail(limit: int) -> AfterValidator:
    return AfterValidator(lambda text: text[-limit:])


class DeadJob(_Model):
    """A job that ended in the dead-letter queue. Every part is bounded, whatever the program printed:
    the summary, the manifest and the UI list many of these."""

    job_id: str
    fields: Annotated[dict[str, Any], AfterValidator(shown_fields)]
    reason: Annotated[str, _head(MAX_REASON_CHARS)]
    attempts: int
    output_tail: Annotated[str, _tail(MAX_OUTPUT_TAIL_CHARS)] = Field(
        default="", description="The end of the last lines the program printed on its last failed run."
    )


class CleanupResult(_Model):
    deleted: list[str] = Field(default_factory=list, description="Resources cleanup removed or found gone.")
    kept: list[str] = Field(default_factory=list, description="Resources kept on purpose, by config.")
    left: list[str] = Field(default_factory=list, description="Resources cleanup could not delete, with why.")


class RunSummary(_Model):
    """How a run ended: every job accounted for, and what (if anything) was left in AWS."""

    total: int = Field(description="Jobs in the job file.")
    succeeded: int = Field(description="Jobs whose program ran and whose outputs were uploaded.")
    skipped: int = Field(description="Jobs skipped because their outputs already existed (check-if-done).")
    failed: list[DeadJob] = Field(description="Jobs that ended in the dead-letter queue, with their reasons.")
    unfinished: list[str] = Field(
        default_factory=list, description="Ids of jobs with no outcome when the run stopped early (resubmit these)."
    )
    duration_s: float
    resources_left: list[str] = Field(description="What cleanup could not delete; empty when all is well.")
    resources_kept: list[str] = Field(default_factory=list, description="What the config asked to keep.")
    run_id: str
    app_name: str
    records_uri: str = Field(description="Where the run's records and this summary are stored in S3.")
    manifest_uri: str | None = Field(
        default=None, description="The CSV listing every job with its final state (job_id, state, attempts, reason)."
    )
    error: str | None = Field(default=None, description="Why the run stopped early, if it did.")
    cost_estimate: CostEstimate | None = Field(
        default=None, description="What the run was expected to cost before its fleet started (spot-fleet)."
    )
    cost: CostReport | None = Field(
        default=None, description="Instance-hours the run's machines used, and their cost at spot prices (spot-fleet)."
    )

    @property
    def accounted(self) -> int:
        return self.succeeded + self.skipped + len(self.failed) + len(self.unfinished)

    @property
    def headline(self) -> str:
        """The counts in one line, e.g. '99 of 100 succeeded, 1 dead': the run's state message in the
        Prefect UI and the start of every artifact's description, so a glance at a list tells how a
        run went."""
        parts = [f"{self.succeeded} of {self.total} succeeded"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        if self.failed:
            parts.append(f"{len(self.failed)} dead")
        if self.unfinished:
            parts.append(f"{len(self.unfinished)} unfinished")
        return ", ".join(parts)

    @property
    def left_in_aws(self) -> str:
        """What the run left in AWS, kept on purpose apart from what cleanup could not delete."""
        kept = ", ".join(self.resources_kept)
        if not self.resources_left:
            return f"only what was kept on purpose: {kept}" if kept else "nothing"
        could_not = f"{', '.join(self.resources_left)} (cleanup could not delete it)"
        return f"{could_not}; kept on purpose: {kept}" if kept else could_not

"""Finding and removing what runs left behind, by tag, from any process.

A run cleans up after itself; this catches the rest: a flow process killed with its Prefect
worker, a machine that lost power. Resources are only removed when their run is known to be
over, so a janitor never touches a running batch, nor a queue of another Prefect server's run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws import sqs
from prefect_distributed.core.fleets.base import FleetBackend
from prefect_distributed.core.tags import CREATED_BY, DEAD_LETTER, TAG_APP, TAG_CREATED_BY, TAG_QUEUE_ROLE, TAG_RUN_ID

logger = logging.getLogger(__name__)

# A run is over (True), still going (False), or unknown to this Prefect server (None).
RunIsOver = Callable[[str], bool | None]


class JanitorReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    removed: list[str] = Field(default_factory=list, description="Resources of finished runs, deleted or stopped.")
    kept: list[str] = Field(default_factory=list, description="Resources left alone, with why.")


def sweep(
    sqs_client: BaseClient,
    fleets: Iterable[FleetBackend],
    run_is_over: RunIsOver,
    *,
    app_name: str | None = None,
    dry_run: bool = False,
) -> JanitorReport:
    """Delete the queues and stop the fleets of runs that are over. Idempotent."""
    wanted_tags = {TAG_CREATED_BY: CREATED_BY, **({TAG_APP: app_name} if app_name else {})}
    verdicts: dict[str, bool | None] = {}

    def over(run_id: str) -> bool | None:
        if run_id not in verdicts:
            verdicts[run_id] = run_is_over(run_id)
        return verdicts[run_id]

    removed: list[str] = []
    kept: list[str] = []
    for url, tags in sqs.tagged_queues(sqs_client, app_name or "", wanted_tags):
        name = url.rsplit("/", 1)[-1]
        run_id = tags.get(TAG_RUN_ID, "")
        verdict = over(run_id)
        dead_jobs = _dead_jobs_kept(sqs_client, url, tags) if verdict is True else 0
        if dead_jobs:
            kept.append(f"queue {name} (run {run_id} is over; holds {dead_jobs} dead job(s) until they expire)")
        elif verdict is True:
            if not dry_run:
                sqs.delete_queue(sqs_client, name)
            removed.append(f"queue {name} (run {run_id})")
        else:
            kept.append(f"queue {name} (run {run_id} {'is running' if verdict is False else 'is unknown here'})")
    for backend in fleets:
        for run_id in backend.running_fleets():
            handle = backend.handle_for(run_id)
            if over(run_id) is True:
                if not dry_run:
                    backend.stop(handle)
                removed.append(f"fleet {handle.id} (run {run_id})")
            else:
                kept.append(f"fleet {handle.id} (run {run_id} is not over)")
    for line in removed:
        logger.info("%s %s", "Would remove" if dry_run else "Removed", line)
    return JanitorReport(removed=removed, kept=kept)


def _dead_jobs_kept(sqs_client: BaseClient, url: str, tags: dict[str, str]) -> int:
    """Jobs in a dead-letter queue that cleanup kept for them (dead_letter_queue_after_run)."""
    if tags.get(TAG_QUEUE_ROLE) != DEAD_LETTER:
        return 0
    return sqs.queue_counts(sqs_client, url).total

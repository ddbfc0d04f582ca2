"""Prefect events at each milestone of a run, for automations to trigger on.

Each event's resource is the run (`distributed.run.<run id>`), so an automation can match one
app's runs (`prefect.resource.name`) or a milestone across all of them (the event name).
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from prefect_distributed.core.models import RunResources

MILESTONES = ("queue-ready", "jobs-enqueued", "fleet-up", "batch-complete", "cleanup-done")


def announce(resources: RunResources, milestone: str, **payload: Any) -> None:
    """Emit `distributed.run.<milestone>`; events are best effort and never fail a run."""
    if milestone not in MILESTONES:
        raise ValueError(f"unknown milestone {milestone!r}")
    emit_event(
        event=f"distributed.run.{milestone}",
        resource={
            "prefect.resource.id": f"distributed.run.{resources.run_id}",
            "prefect.resource.name": resources.app_name,
            "distributed.queue": resources.queue_name,
        },
        payload=payload,
    )

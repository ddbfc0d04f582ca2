"""Deciding when a run is finished, from repeated readings of its queues and fleet.

SQS's counts are approximate, so one empty reading proves nothing (Distributed-Something tore
everything down on a single zero). A run is complete only after `settle_polls` consecutive empty
readings *and* when every job has an outcome record or a dead copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core.config import MonitorSettings
from core.errors import DistributedError, FleetError
from core.models import RunSnapshot

logger = logging.getLogger(__name__)

# After this many settle periods with an empty queue, jobs still unaccounted for are reported as
# unfinished instead of being waited for.
UNACCOUNTED_PATIENCE = 5


class RunTimeoutError(DistributedError):
    """The run exceeded monitor.max_run_time_s."""


def wait_for_completion(
    read_snapshot: Callable[[], RunSnapshot],
    count_accounted: Callable[[RunSnapshot], int],
    *,
    settings: MonitorSettings,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_snapshot: Callable[[RunSnapshot], None],
) -> RunSnapshot:
    """Poll until the run is complete; return the last reading.

    `count_accounted` (jobs with an outcome plus dead jobs) is only called once the queue has read
    empty `settle_polls` times, so a poll costs a constant number of AWS calls.
    Raises FleetError when no worker is alive while jobs wait, RunTimeoutError past the deadline.
    """
    deadline = clock() + settings.max_run_time_s
    empty_streak = 0
    lost_streak = 0
    while True:
        snapshot = read_snapshot()
        on_snapshot(snapshot)
        empty_streak = empty_streak + 1 if snapshot.queue_empty else 0
        if empty_streak >= settings.settle_polls:
            accounted = count_accounted(snapshot)
            if accounted >= snapshot.total:
                return snapshot
            if empty_streak >= settings.settle_polls * UNACCOUNTED_PATIENCE:
                logger.warning(
                    "The queue is empty but %d of %d jobs have no outcome; reporting them as unfinished",
                    snapshot.total - accounted,
                    snapshot.total,
                )
                return snapshot
        lost_streak = lost_streak + 1 if snapshot.workers_running == 0 and not snapshot.queue_empty else 0
        if lost_streak >= settings.settle_polls:
            raise FleetError(
                f"No worker is running while {snapshot.visible + snapshot.in_flight + snapshot.delayed} jobs "
                "remain in the queue; see the worker logs"
            )
        if clock() >= deadline:
            raise RunTimeoutError(
                f"The run did not finish within monitor.max_run_time_s={settings.max_run_time_s}; "
                f"{snapshot.visible + snapshot.in_flight + snapshot.delayed} jobs remain"
            )
        sleep(settings.poll_interval_s)

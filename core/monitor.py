"""Watching a run until it is finished: read, ask the policy, act on the fleet, repeat.

The decisions themselves (scale-in, hold, budget, completion) are `core.monitor_policy`'s; this
loop only makes the readings it asks for and carries its decisions out. The clock and the sleep
are injected: the `monitor` task passes real time, tests a fake clock, and the simulation in
benchmarks/ a simulated one, so all three run this same loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect_distributed.core.errors import BudgetExceededError, DistributedError, FleetError
from prefect_distributed.core.fleets.base import FleetBackend
from prefect_distributed.core.models import FleetHandle, RunSnapshot
from prefect_distributed.core.monitor_policy import Decision, MonitorPolicy, Reading, Stop

logger = logging.getLogger(__name__)


class RunTimeoutError(DistributedError):
    """The run exceeded monitor.max_run_time_s."""


_STOP_ERRORS: dict[Stop, type[DistributedError]] = {
    Stop.BUDGET: BudgetExceededError,
    Stop.FLEET_LOST: FleetError,
    Stop.TIMEOUT: RunTimeoutError,
}


class FleetControl(Protocol):
    """What the monitor does to a run's fleet, and the one reading of it that costs extra calls."""

    def scale_in(self, busy_jobs: int) -> None:
        """Shrink to what `busy_jobs` running jobs occupy, never stopping a busy worker."""
        ...

    def hold(self) -> None:
        """Keep the machines the fleet has; stop replacing lost ones."""
        ...

    def spent_usd(self) -> float | None:
        """What the run's machines have cost so far; None: the fleet costs nothing."""
        ...


@dataclass(frozen=True)
class RunFleet:
    """A run's fleet on its backend, as the monitor acts on it; `log` is where it says so (the run's log)."""

    backend: FleetBackend
    handle: FleetHandle
    log: logging.Logger | logging.LoggerAdapter[Any] = field(default=logger)

    def scale_in(self, busy_jobs: int) -> None:
        self.backend.scale_in(self.handle, busy_jobs)

    def hold(self) -> None:
        self.backend.hold(self.handle)
        self.log.info("Cheapest mode: the fleet keeps the machines it has; lost ones are not replaced")

    def spent_usd(self) -> float | None:
        report = self.backend.cost(self.handle)
        return None if report is None else report.total_usd


def wait_for_completion(
    read_snapshot: Callable[[], RunSnapshot],
    count_accounted: Callable[[RunSnapshot], int],
    *,
    policy: MonitorPolicy,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_snapshot: Callable[[RunSnapshot], None],
    fleet: FleetControl | None = None,
) -> RunSnapshot:
    """Poll until the run is complete; return the last reading.

    `count_accounted` (jobs with an outcome plus dead jobs) and the fleet's spend are read only
    when the policy asks, so a poll costs a constant number of AWS calls. Without `fleet`, the
    policy's fleet actions are not carried out (its budget cannot be measured either).
    Raises FleetError when no worker is alive while jobs wait, BudgetExceededError once the
    machines cost fleet.budget_usd, RunTimeoutError past monitor.max_run_time_s.
    """
    started = clock()
    while True:
        snapshot = read_snapshot()
        on_snapshot(snapshot)
        at_s = clock() - started
        spent = fleet.spent_usd() if fleet is not None and policy.spend_due(at_s) else None
        accounted = count_accounted(snapshot) if policy.accounting_due(snapshot) else None
        decision = policy.decide(Reading(at_s=at_s, snapshot=snapshot, spent_usd=spent, accounted=accounted))
        if fleet is not None:
            _act(fleet, decision)
        if decision.stop in _STOP_ERRORS:
            raise _STOP_ERRORS[decision.stop](decision.reason)
        if decision.stop is Stop.UNACCOUNTED:
            logger.warning("%s", decision.reason)
        if decision.stop is not None:
            return snapshot
        sleep(policy.settings.poll_interval_s)


def _act(fleet: FleetControl, decision: Decision) -> None:
    if decision.hold:
        fleet.hold()
    if decision.scale_in_to is not None:
        fleet.scale_in(decision.scale_in_to)

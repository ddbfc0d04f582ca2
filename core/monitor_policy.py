"""The monitor's decisions, apart from the AWS calls: readings in, actions out.

Once per poll the monitor reads the queues and the fleet and asks `MonitorPolicy.decide` what to
do: shrink the fleet to the running jobs (scale-in), stop replacing lost machines (hold, the
'cheapest' mode), stop the run (budget reached, fleet lost, deadline passed), or call the batch
complete. Nothing here calls AWS or reads a clock: time arrives in the reading, so the `monitor`
task (through `core.monitor.wait_for_completion`) and the simulation in benchmarks/ run the very
same decisions, one against AWS and one against a simulated fleet.

Two readings cost AWS calls that a poll should not make every time: the run's spend (the price
history and its machines) and the count of jobs with an outcome (a listing of the records). The
policy says when it needs them (`spend_due`, `accounting_due`); the caller measures them only then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import budget_exceeded
from prefect_distributed.core.models import RunSnapshot

# While nothing waits, how often scale-in runs again with unchanged counts (idle machines freed since).
SCALE_IN_REPEAT_S = 300.0
# How often the run's spend is measured against fleet.budget_usd (two AWS calls, whatever the size).
BUDGET_CHECK_S = 120.0
# After this many settle periods with an empty queue, jobs still unaccounted for are reported as
# unfinished instead of being waited for.
UNACCOUNTED_PATIENCE = 5


class PolicySettings(BaseModel):
    """What the decisions depend on: the run's monitor settings and its fleet's limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    poll_interval_s: float = Field(default=10.0, gt=0, description="Seconds between two readings (monitor).")
    settle_polls: int = Field(default=3, ge=1, description="Empty readings in a row before the batch can be done.")
    max_run_time_s: float = Field(default=7 * 24 * 3600, gt=0, description="Stop the run after this long.")
    budget_usd: float | None = Field(default=None, gt=0, description="Stop once the machines cost this (fleet).")
    cheapest_after_s: float | None = Field(
        default=None, ge=0, description="Hold the fleet at what it has this long after the monitor starts (fleet)."
    )
    lost_after_s: float = Field(
        default=0.0,
        ge=0,
        description="No worker for this long while jobs wait (and `settle_polls` readings in a row) is a lost "
        "fleet: long enough for machines to start or be replaced, join the cluster and pull the image after "
        "the fleet counts them (fleet.capacity_wait_s).",
    )

    @classmethod
    def from_config(cls, config: RunConfig) -> PolicySettings:
        monitor, fleet = config.monitor, config.fleet
        return cls(
            poll_interval_s=monitor.poll_interval_s,
            settle_polls=monitor.settle_polls,
            max_run_time_s=monitor.max_run_time_s,
            budget_usd=fleet.budget_usd,
            cheapest_after_s=fleet.cheapest_after_s,
            lost_after_s=fleet.capacity_wait_s,
        )


class Stop(StrEnum):
    """Why the monitor stops watching."""

    COMPLETE = "complete"  # every job has an outcome or is dead
    UNACCOUNTED = "unaccounted"  # the queue stayed empty, some jobs never reported: listed as unfinished
    BUDGET = "budget"
    FLEET_LOST = "fleet-lost"  # no worker alive while jobs wait
    TIMEOUT = "timeout"


# Readings and decisions are plain frozen dataclasses, not pydantic models: one of each is built
# every poll, hundreds of thousands of times in a simulated batch.
@dataclass(frozen=True, slots=True)
class Reading:
    """One poll's view of the run. `spent_usd` and `accounted` are None unless measured this poll."""

    at_s: float  # seconds since the monitor started
    snapshot: RunSnapshot
    spent_usd: float | None = None  # what the run's machines have cost so far
    accounted: int | None = None  # jobs with an outcome record, plus dead jobs


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after one reading, in this order: hold, scale in, stop."""

    hold: bool = False
    scale_in_to: int | None = None  # shrink the fleet to what this many running jobs occupy
    stop: Stop | None = None
    reason: str = ""  # why it stops, in the user's words


class MonitorPolicy:
    """The monitor's memory between polls (empty streaks, the last scale-in) and its decisions."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self._empty_streak = 0
        self._lost_streak = 0
        self._busy_at_last_scale_in: int | None = None
        self._last_scale_in_s = -math.inf
        self._hold_at_s = settings.cheapest_after_s
        self._next_spend_s = 0.0
        self._no_worker_since_s: float | None = None

    def spend_due(self, at_s: float) -> bool:
        """Whether this poll should measure the run's spend (every BUDGET_CHECK_S, with a budget)."""
        return self.settings.budget_usd is not None and at_s >= self._next_spend_s

    def accounting_due(self, snapshot: RunSnapshot) -> bool:
        """Whether this poll should count jobs with an outcome: only once the queue has read empty
        `settle_polls` times in a row (this reading included), so a poll costs a constant number of calls."""
        return snapshot.queue_empty and self._empty_streak + 1 >= self.settings.settle_polls

    def decide(self, reading: Reading) -> Decision:
        snapshot, at_s, settings = reading.snapshot, reading.at_s, self.settings
        hold = self._hold_at_s is not None and at_s >= self._hold_at_s
        if hold:
            self._hold_at_s = None
        if reading.spent_usd is not None:
            self._next_spend_s = at_s + BUDGET_CHECK_S
            if settings.budget_usd is not None and budget_exceeded(reading.spent_usd, settings.budget_usd):
                return Decision(
                    hold=hold,
                    stop=Stop.BUDGET,
                    reason=f"The run's machines have cost ${reading.spent_usd:,.2f}, reaching fleet.budget_usd "
                    f"(${settings.budget_usd:,.2f}); stopping the run. Jobs not done are listed as unfinished.",
                )
        scale_in_to = self._scale_in(snapshot, at_s)
        stop, reason = self._stop(reading)
        return Decision(hold=hold, scale_in_to=scale_in_to, stop=stop, reason=reason)

    def _scale_in(self, snapshot: RunSnapshot, at_s: float) -> int | None:
        """Nothing waits: the fleet shrinks to the running jobs. On a change of that count, and again
        every few minutes: containers stopped after one scale-in leave idle machines for the next."""
        if snapshot.visible or snapshot.delayed:
            return None
        changed = snapshot.in_flight != self._busy_at_last_scale_in
        if not changed and at_s - self._last_scale_in_s < SCALE_IN_REPEAT_S:
            return None
        self._busy_at_last_scale_in, self._last_scale_in_s = snapshot.in_flight, at_s
        return snapshot.in_flight

    def _stop(self, reading: Reading) -> tuple[Stop | None, str]:
        """Complete after `settle_polls` empty readings with every job accounted for (SQS's counts are
        approximate: Distributed-Something tore everything down on one zero); lost, or out of time."""
        snapshot, settings = reading.snapshot, self.settings
        self._empty_streak = self._empty_streak + 1 if snapshot.queue_empty else 0
        if self._empty_streak >= settings.settle_polls:
            accounted = reading.accounted or 0
            if accounted >= snapshot.total:
                return Stop.COMPLETE, f"all {snapshot.total} jobs accounted for"
            if self._empty_streak >= settings.settle_polls * UNACCOUNTED_PATIENCE:
                return Stop.UNACCOUNTED, (
                    f"The queue is empty but {snapshot.total - accounted} of {snapshot.total} jobs have no outcome; "
                    "reporting them as unfinished"
                )
        remaining = snapshot.visible + snapshot.in_flight + snapshot.delayed
        no_worker = snapshot.workers_running == 0 and remaining > 0
        self._lost_streak = self._lost_streak + 1 if no_worker else 0
        if not no_worker:
            self._no_worker_since_s = None
        elif self._no_worker_since_s is None:
            self._no_worker_since_s = reading.at_s
        if (
            self._lost_streak >= settings.settle_polls
            and self._no_worker_since_s is not None
            and reading.at_s - self._no_worker_since_s >= settings.lost_after_s
        ):
            return Stop.FLEET_LOST, (
                f"No worker is running while {remaining} jobs remain in the queue (none for "
                f"{reading.at_s - self._no_worker_since_s:.0f} s; fleet.capacity_wait_s is the wait); "
                "see the worker logs"
            )
        if reading.at_s >= settings.max_run_time_s:
            return Stop.TIMEOUT, (
                f"The run did not finish within monitor.max_run_time_s={settings.max_run_time_s:g}; "
                f"{remaining} jobs remain"
            )
        return None, ""

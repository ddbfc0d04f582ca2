"""What a batch costs on the spot-fleet backend: an estimate before the fleet starts, the machine
time used and its price while and after it runs, and the budget check built on that.

Only machine time is counted. EBS volumes, data transfer, CloudWatch Logs, SQS and S3 cost extra,
usually little next to the machines. EC2 bills Linux Spot machines per second at the Spot price of
their Availability Zone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.spot_pricing import (
    ENDED_STATES,
    SpotPrice,
    effective_prices,
    price_history,
    run_machines,
    utc,
)

PricesAt = Literal["launch", "now"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _usd(amount: float, scale: float | None = None) -> str:
    """Cents from a dollar up (judged on `scale`, the amount by default), else up to six decimals."""
    return f"{amount:,.2f}" if (amount if scale is None else scale) >= 1 else f"{amount:.6f}".rstrip("0").rstrip(".")


def _hours(hours: float) -> str:
    return f"{hours:.1f}" if hours >= 1 else f"{hours:.2g}"


def _time(moment: datetime) -> str:
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


class PriceRange(_Model):
    """From the cheapest to the dearest case, in USD."""

    low: float
    high: float

    @property
    def text(self) -> str:
        low, high = _usd(self.low, self.high), _usd(self.high)
        return f"${low}" if low == high else f"${low}–{high}"


class CostEstimate(_Model):
    """What a batch should cost, worked out before the fleet starts, with its assumptions spelled out."""

    machines: int
    machine_types: list[str]
    unit: str = Field(default="machine", description="What `machines` counts: machines, or ECS tasks on Fargate.")
    jobs: int
    usd_per_hour: PriceRange | None = Field(description="The whole fleet's hourly cost; None when no type has a price.")
    hours: float | None = Field(description="How long the jobs take; None when the job duration is not known.")
    total_usd: PriceRange | None = Field(description="The batch's cost; None without a price or a job duration.")
    unpriced_types: list[str] = Field(description="Machine types EC2 has no Spot price for: left out of the range.")
    assumptions: list[str] = Field(description="How the figures were reached, in plain words.")

    @property
    def text(self) -> str:
        missing = f"no spot price for {', '.join(self.unpriced_types)}" if self.unpriced_types else ""
        if self.usd_per_hour is None:
            return f"Estimated cost: unknown, {missing}"
        line = f"Estimated cost: {self.usd_per_hour.text}/h for {self.machines} {self.unit}(s)"
        if self.total_usd is not None and self.hours is not None:
            line += f"; {self.total_usd.text} for {self.jobs} job(s) in {_hours(self.hours)} h"
        else:
            line += " (job duration not given: no total)"
        return f"{line}; {missing}" if missing else line


def _type_assumptions(price: SpotPrice, max_price_usd_per_hour: float) -> list[str]:
    zones = len(price.by_zone)
    lines = [
        f"{price.instance_type}: {PriceRange(low=price.low, high=price.high).text}/h per machine "
        f"(lowest–highest of {zones} AZ(s), spot price history at {_time(price.as_of)})"
    ]
    cap = f"fleet.max_price_usd_per_hour (${_usd(max_price_usd_per_hour)}/h)"
    if price.low > max_price_usd_per_hour:
        lines.append(f"no {price.instance_type} machine can start: its spot price is above {cap} in every AZ")
    elif price.high > max_price_usd_per_hour:
        lines.append(f"{price.instance_type} counted at {cap} at most: EC2 starts none where the price is higher")
    return lines


def estimate_cost(
    prices: Mapping[str, SpotPrice],
    *,
    machines: int,
    machine_types: Sequence[str],
    max_price_usd_per_hour: float,
    jobs: int,
    slots_per_machine: int,
    job_minutes: float | None,
) -> CostEstimate:
    """The fleet's hourly cost and, given how long a job takes, the batch's.

    Price-capacity-optimized picks the types and zones with the most spare capacity, not the
    cheapest, so the range runs from every machine on the cheapest type and zone to every machine on
    the dearest, each capped by the max price (no machine runs above it). The batch runs in rounds of
    `machines * slots_per_machine` jobs at once (slots: worker containers times processes each).
    """
    priced = [prices[kind] for kind in machine_types if kind in prices]
    unpriced = [kind for kind in machine_types if kind not in prices]
    assumptions = [line for price in priced for line in _type_assumptions(price, max_price_usd_per_hour)]
    assumptions += [
        f"{kind}: no spot price history in this region (unknown type, or not offered as Spot here): left out"
        for kind in unpriced
    ]
    per_hour = total = hours = None
    if priced:
        each = PriceRange(
            low=min(min(p.low, max_price_usd_per_hour) for p in priced),
            high=max(min(p.high, max_price_usd_per_hour) for p in priced),
        )
        per_hour = PriceRange(low=machines * each.low, high=machines * each.high)
        assumptions.append(
            f"{machines} machine(s) at {each.text}/h each → {per_hour.text}/h: price-capacity-optimized may put "
            "them all on the cheapest or all on the dearest type and AZ"
        )
    if job_minutes is not None:
        slots = machines * slots_per_machine
        rounds = math.ceil(jobs / slots)
        hours = rounds * job_minutes / 60
        assumptions.append(
            f"jobs take {job_minutes:g} min each; {jobs} jobs on {slots} slots → {rounds} round(s) → {_hours(hours)} h"
        )
        if per_hour is not None:
            total = PriceRange(low=per_hour.low * hours, high=per_hour.high * hours)
    assumptions.append(
        "machine time only: start-up, the last machines idling at scale-in, EBS, data transfer and logs are not counted"
    )
    return CostEstimate(
        machines=machines,
        machine_types=list(machine_types),
        jobs=jobs,
        usd_per_hour=per_hour,
        hours=hours,
        total_usd=total,
        unpriced_types=unpriced,
        assumptions=assumptions,
    )


class TypeCost(_Model):
    """The machine time of one machine type in a run, and its cost."""

    instance_type: str
    machines: int
    hours: float = Field(description="Instance-hours, priced or not.")
    usd: float = Field(description="Cost of the priced hours.")
    unpriced_hours: float = Field(description="Hours EC2 gave no Spot price for: not in `usd`.")


class CostReport(_Model):
    """The machine time a run has used so far, and what it cost."""

    run_id: str
    measured_at: datetime = Field(description="The `now` machines still running are counted up to (UTC).")
    prices_at: PricesAt = Field(description="Each machine priced at its launch, or at `measured_at`.")
    machines: int = Field(description="Machines counted, terminated ones included.")
    unit: str = Field(default="machine", description="What `machines` counts: machines, or ECS tasks on Fargate.")
    instance_hours: float
    total_usd: float = Field(description="Cost of the priced hours; see unpriced_types.")
    by_type: list[TypeCost]
    unpriced_types: list[str] = Field(description="Machine types with hours EC2 gave no price for.")
    assumptions: list[str] = Field(description="How the figures were reached, in plain words.")

    @property
    def text(self) -> str:
        parts = [
            f"{t.instance_type}: {t.machines} {self.unit}(s), {_hours(t.hours)} h, ${_usd(t.usd)}"
            + (f" + {_hours(t.unpriced_hours)} h unpriced" if t.unpriced_hours else "")
            for t in self.by_type
        ]
        detail = f" ({'; '.join(parts)})" if parts else ""
        return (
            f"Run {self.run_id}: {self.machines} {self.unit}(s), {_hours(self.instance_hours)} "
            f"{'instance' if self.unit == 'machine' else self.unit}-hours, "
            f"${_usd(self.total_usd)} so far{detail}"
        )


def measure_cost(ec2: BaseClient, run_id: str, *, now: datetime, prices_at: PricesAt = "launch") -> CostReport:
    """The run's instance-hours (launch to termination, or to `now`) by type, and their Spot cost.

    `prices_at="launch"` prices each machine at the Spot price of its type and zone when it launched
    (the current one when the history has none that old); `"now"` at the current one. At most two paginated
    calls whatever the run's size (its instances, then the price history of their types), so the
    monitor can call it every few minutes.
    """
    now = utc(now)
    machines = run_machines(ec2, run_id)
    since = min((m.launched_at for m in machines), default=now) if prices_at == "launch" else now
    history = price_history(ec2, {m.instance_type for m in machines}, start=min(since, now), end=now)
    current = effective_prices(history, now)
    used: dict[str, list[tuple[float, float | None]]] = {}  # type -> (hours, USD per hour) per machine
    for machine in machines:
        hours = max(0.0, (min(machine.ended_at or now, now) - machine.launched_at).total_seconds() / 3600)
        key = (machine.instance_type, machine.zone)
        at_launch = effective_prices(history, machine.launched_at).get(key) if prices_at == "launch" else None
        point = at_launch or current.get(key)
        used.setdefault(machine.instance_type, []).append((hours, point.usd_per_hour if point else None))
    by_type = [
        TypeCost(
            instance_type=kind,
            machines=len(rows),
            hours=sum(hours for hours, _ in rows),
            usd=sum(hours * price for hours, price in rows if price is not None),
            unpriced_hours=sum(hours for hours, price in rows if price is None),
        )
        for kind, rows in sorted(used.items())
    ]
    unpriced = [t.instance_type for t in by_type if t.unpriced_hours]
    basis = "when it launched" if prices_at == "launch" else f"at {_time(now)}"
    assumptions = [
        f"machine time from launch to termination, or to {_time(now)} for machines still running",
        f"each machine at the spot price of its type and AZ {basis} (spot price history)",
    ]
    no_end = sum(1 for m in machines if m.state in ENDED_STATES and m.ended_at is None)
    if no_end:
        assumptions.append(
            f"{no_end} stopped machine(s) with no time in StateTransitionReason: counted to {_time(now)}"
        )
    assumptions += [f"{kind}: no spot price history: its hours are not in the total" for kind in unpriced]
    return CostReport(
        run_id=run_id,
        measured_at=now,
        prices_at=prices_at,
        machines=len(machines),
        instance_hours=sum(t.hours for t in by_type),
        total_usd=sum(t.usd for t in by_type),
        by_type=by_type,
        unpriced_types=unpriced,
        assumptions=assumptions,
    )


def budget_exceeded(spent_usd: float, budget_usd: float) -> bool:
    """True once the run has spent its budget (the monitor stops the run then)."""
    return spent_usd >= budget_usd

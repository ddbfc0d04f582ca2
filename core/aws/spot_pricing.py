"""EC2 reads behind a batch's cost: the Spot price history, and the machines a run has had.

A run's machines are found by the tags the launch template puts on every instance the fleet
launches (run-id, created-by), not through DescribeSpotFleetInstances: that lists only the running
machines of a fleet that still exists, so terminated machines, and every machine once the fleet is
cancelled, would drop out of the count. EC2 keeps a terminated instance visible for about an hour,
so the final measurement has to follow the fleet's cancellation closely.

Spot prices change every few hours to days, per machine type and Availability Zone. Asked for a
time range, DescribeSpotPriceHistory also returns the last change before the range starts, so the
price in effect at any moment of the range is known from one paginated call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import paginate
from prefect_distributed.core.tags import CREATED_BY, TAG_CREATED_BY, TAG_RUN_ID

# EC2 reports Linux Spot prices under both names, depending on the account's platform.
LINUX = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
ENDED_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
# "User initiated (2026-11-28 10:00:00 GMT)"; moto writes UTC instead of GMT.
_REASON_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PricePoint(_Model):
    """One change of the Spot price of a machine type in one Availability Zone."""

    instance_type: str
    zone: str = Field(description="Availability Zone.")
    usd_per_hour: float
    since: datetime = Field(description="When this price took effect (UTC).")


class SpotPrice(_Model):
    """The Spot price of one machine type at one moment, in every Availability Zone that offers it."""

    instance_type: str
    by_zone: dict[str, float] = Field(min_length=1, description="USD per hour, by Availability Zone.")
    as_of: datetime = Field(description="The moment the prices are in effect (UTC).")

    @property
    def low(self) -> float:
        return min(self.by_zone.values())

    @property
    def high(self) -> float:
        return max(self.by_zone.values())


class Machine(_Model):
    """One instance a run's fleet launched."""

    instance_id: str
    instance_type: str
    zone: str = Field(description="Availability Zone.")
    state: str = Field(description="pending, running, shutting-down, terminated...")
    launched_at: datetime = Field(description="LaunchTime (UTC).")
    ended_at: datetime | None = Field(
        description="When it stopped running, from StateTransitionReason; None while it runs, or when EC2 gave no time."
    )


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is refused, as botocore would send it as UTC whatever it meant."""
    if moment.utcoffset() is None:
        raise ValueError("times must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def price_history(ec2: BaseClient, machine_types: Iterable[str], *, start: datetime, end: datetime) -> list[PricePoint]:
    """Every Linux Spot price change of `machine_types` between `start` and `end`, plus the one in
    effect at `start` (paginated). No types, no call: EC2 would answer for every type."""
    kinds = sorted(set(machine_types))
    if not kinds:
        return []
    records = paginate(
        ec2,
        "describe_spot_price_history",
        "SpotPriceHistory",
        InstanceTypes=kinds,
        ProductDescriptions=list(LINUX),
        StartTime=utc(start),
        EndTime=utc(end),
    )
    return [
        PricePoint(
            instance_type=record["InstanceType"],
            zone=record["AvailabilityZone"],
            usd_per_hour=float(record["SpotPrice"]),
            since=utc(record["Timestamp"]),
        )
        for record in records
    ]


def effective_prices(history: Iterable[PricePoint], at: datetime) -> dict[tuple[str, str], PricePoint]:
    """The price in effect at `at` for each (machine type, zone): its newest change at or before `at`."""
    found: dict[tuple[str, str], PricePoint] = {}
    for point in history:
        key = (point.instance_type, point.zone)
        if point.since <= at and (key not in found or point.since > found[key].since):
            found[key] = point
    return found


def spot_prices(ec2: BaseClient, machine_types: Iterable[str], *, now: datetime) -> dict[str, SpotPrice]:
    """The Spot price of each machine type at `now`, in every zone. A type EC2 has no price history
    for (unknown, or not offered as Spot in the region) is left out."""
    now = utc(now)
    by_type: dict[str, dict[str, float]] = {}
    history = price_history(ec2, machine_types, start=now, end=now)
    for (kind, zone), point in sorted(effective_prices(history, now).items()):
        by_type.setdefault(kind, {})[zone] = point.usd_per_hour
    return {kind: SpotPrice(instance_type=kind, by_zone=zones, as_of=now) for kind, zones in by_type.items()}


def _ended_at(instance: dict[str, Any]) -> datetime | None:
    if instance["State"]["Name"] not in ENDED_STATES:
        return None
    found = _REASON_TIME.search(instance.get("StateTransitionReason", ""))
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) if found else None


def run_machines(ec2: BaseClient, run_id: str) -> list[Machine]:
    """Every instance tagged with the run's id by this package, terminated ones included (paginated)."""
    filters = [
        {"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]},
        {"Name": f"tag:{TAG_CREATED_BY}", "Values": [CREATED_BY]},
    ]
    return [
        Machine(
            instance_id=instance["InstanceId"],
            instance_type=instance["InstanceType"],
            zone=instance["Placement"]["AvailabilityZone"],
            state=instance["State"]["Name"],
            launched_at=utc(instance["LaunchTime"]),
            ended_at=_ended_at(instance),
        )
        for reservation in paginate(ec2, "describe_instances", "Reservations", Filters=filters)
        for instance in reservation["Instances"]
    ]

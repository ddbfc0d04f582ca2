"""What a batch costs on the fargate backend: an estimate before the fleet starts, and the ECS task
time used and its price.

Fargate bills each ECS task per second (one minute at least) for its vCPUs, its memory and its disk
beyond the 20 GB included, from the start of the image pull to the task's end. The prices are
AWS's published ones for us-east-1, Linux on x86 (aws.amazon.com/fargate/pricing, unchanged since
the price cut of January 2019): FARGATE $0.04048 per vCPU-hour and $0.004445 per GB-hour, ephemeral
storage $0.000111 per GB-hour. AWS publishes no API for Fargate Spot's price: it moves with supply
and demand, 50 % to 70 % below FARGATE's (AWS: "up to 70 %"), so Spot is counted as a range from
30 % to 50 % of the on-demand price, and the spend (which the budget is held against) at the dearer
end. Other regions cost up to about a third more: the figures say which region they assume.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from botocore.client import BaseClient

from prefect_distributed.core.aws.clients import chunks, paginate
from prefect_distributed.core.aws.ecs_capacity import FARGATE_SPOT
from prefect_distributed.core.aws.spot_pricing import utc
from prefect_distributed.core.cost import CostEstimate, CostReport, PriceRange, TypeCost

PRICES_REGION = "us-east-1"
USD_PER_VCPU_HOUR = 0.04048
USD_PER_GB_HOUR = 0.004445
USD_PER_STORAGE_GB_HOUR = 0.000111
INCLUDED_STORAGE_GB = 20
SPOT_SHARE = PriceRange(low=0.30, high=0.50)  # of the on-demand price: 70 % to 50 % off
DESCRIBE_LIMIT = 100  # DescribeTasks: ECS tasks per call


def on_demand_usd_per_hour(cpu_units: int, memory_mib: int, ephemeral_storage_gb: int) -> float:
    """One ECS task's hourly price on FARGATE."""
    storage = max(0, ephemeral_storage_gb - INCLUDED_STORAGE_GB)
    return (
        cpu_units / 1024 * USD_PER_VCPU_HOUR
        + memory_mib / 1024 * USD_PER_GB_HOUR
        + storage * USD_PER_STORAGE_GB_HOUR
    )


def _size(cpu_units: int, memory_mib: int) -> str:
    return f"{cpu_units / 1024:g} vCPU / {memory_mib / 1024:g} GB"


def _price_assumptions(region: str) -> list[str]:
    lines = [
        f"FARGATE at AWS's published {PRICES_REGION} prices (Linux, x86): ${USD_PER_VCPU_HOUR} per vCPU-hour, "
        f"${USD_PER_GB_HOUR} per GB-hour, ${USD_PER_STORAGE_GB_HOUR} per GB-hour of disk beyond {INCLUDED_STORAGE_GB} GB",
        f"FARGATE_SPOT at {SPOT_SHARE.low:.0%}–{SPOT_SHARE.high:.0%} of those (AWS publishes no API for its price, "
        "which follows supply and demand)",
    ]
    if region != PRICES_REGION:
        lines.append(f"{region} is priced as {PRICES_REGION}; its own prices may be up to about a third higher")
    return lines


def estimate_fargate_cost(
    *,
    cpu_units: int,
    memory_mib: int,
    ephemeral_storage_gb: int,
    tasks: int,
    spot_weight: int,
    on_demand_weight: int,
    jobs: int,
    slots_per_task: int,
    job_minutes: float | None,
    region: str,
) -> CostEstimate:
    """The ECS tasks' hourly cost and, given how long a job takes, the batch's. The tasks split between
    FARGATE_SPOT and FARGATE by their weights; the batch runs in rounds of tasks × slots_per_task jobs."""
    each = on_demand_usd_per_hour(cpu_units, memory_mib, ephemeral_storage_gb)
    spot_share = spot_weight / (spot_weight + on_demand_weight)
    per_task = PriceRange(
        low=each * (spot_share * SPOT_SHARE.low + (1 - spot_share)),
        high=each * (spot_share * SPOT_SHARE.high + (1 - spot_share)),
    )
    per_hour = PriceRange(low=tasks * per_task.low, high=tasks * per_task.high)
    assumptions = _price_assumptions(region) + [
        f"{tasks} ECS task(s) of {_size(cpu_units, memory_mib)}, {ephemeral_storage_gb} GB of disk, "
        f"{spot_share:.0%} of them on FARGATE_SPOT (fleet.fargate_spot_weight {spot_weight}, fleet.fargate_weight "
        f"{on_demand_weight}) → {per_task.text}/h each, {per_hour.text}/h in all"
    ]
    hours = total = None
    if job_minutes is not None:
        slots = tasks * slots_per_task
        rounds = math.ceil(jobs / slots)
        hours = rounds * job_minutes / 60
        total = PriceRange(low=per_hour.low * hours, high=per_hour.high * hours)
        assumptions.append(f"jobs take {job_minutes:g} min each; {jobs} jobs on {slots} slots → {rounds} round(s)")
    assumptions.append("ECS task time only: SQS, S3, data transfer, CloudWatch Logs and ECR are not counted")
    return CostEstimate(
        machines=tasks,
        machine_types=[f"Fargate {_size(cpu_units, memory_mib)}"],
        unit="ECS task",
        jobs=jobs,
        usd_per_hour=per_hour,
        hours=hours,
        total_usd=total,
        unpriced_types=[],
        assumptions=assumptions,
    )


def _task_hours(task: dict[str, Any], now: datetime) -> float:
    started = task.get("pullStartedAt") or task.get("startedAt") or task.get("createdAt")
    if started is None:
        return 0.0
    ended = task.get("stoppedAt") or now
    return max(0.0, (utc(min(ended, now)) - utc(started)).total_seconds() / 3600)


def measure_fargate_cost(ecs: BaseClient, cluster: str, family: str, run_id: str, *, now: datetime) -> CostReport:
    """The ECS task-hours of the run's service (running ECS tasks, and stopped ones while ECS still lists them:
    an hour at least) by capacity provider, and their cost, FARGATE_SPOT at the dearer end of its range."""
    now = utc(now)
    arns: list[str] = []
    for status in ("RUNNING", "STOPPED"):
        if cluster:
            arns += paginate(ecs, "list_tasks", "taskArns", cluster=cluster, family=family, desiredStatus=status)
    used: dict[str, list[tuple[float, float]]] = {}  # provider -> (hours, USD) per ECS task
    for batch in chunks(sorted(set(arns)), DESCRIBE_LIMIT):
        for task in ecs.describe_tasks(cluster=cluster, tasks=batch).get("tasks", []):
            provider = task.get("capacityProviderName") or task.get("launchType") or "FARGATE"
            storage = task.get("ephemeralStorage", {}).get("sizeInGiB", INCLUDED_STORAGE_GB)
            price = on_demand_usd_per_hour(int(task.get("cpu", 0)), int(task.get("memory", 0)), storage)
            share = SPOT_SHARE.high if provider == FARGATE_SPOT else 1.0
            hours = _task_hours(task, now)
            used.setdefault(provider, []).append((hours, hours * price * share))
    by_type = [
        TypeCost(
            instance_type=provider,
            machines=len(tasks),
            hours=sum(hours for hours, _ in tasks),
            usd=sum(usd for _, usd in tasks),
            unpriced_hours=0.0,
        )
        for provider, tasks in sorted(used.items())
    ]
    return CostReport(
        run_id=run_id,
        measured_at=now,
        prices_at="now",
        machines=sum(t.machines for t in by_type),
        unit="ECS task",
        instance_hours=sum(t.hours for t in by_type),
        total_usd=sum(t.usd for t in by_type),
        by_type=by_type,
        unpriced_types=[],
        assumptions=_price_assumptions(PRICES_REGION)
        + [
            "ECS task time from the image pull to the task's end, or to now",
            f"FARGATE_SPOT counted at {SPOT_SHARE.high:.0%} of FARGATE's price, the dearer end of its range",
            "ECS lists stopped ECS tasks for about an hour: older ones are not counted",
        ],
    )

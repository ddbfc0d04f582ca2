"""ECS capacity providers: where a service's ECS tasks run when no launch type is named.

`FARGATE` and `FARGATE_SPOT` are built in, and only need adding to the cluster; an Auto Scaling
group becomes a capacity provider of its own, which ECS scales (managed scaling) and whose machines
it keeps from being removed while they run ECS tasks (managed termination protection).

A cluster's list of capacity providers is replaced whole by PutClusterCapacityProviders, and a
cluster may be shared (fleet.ecs_cluster, 'default' by default): so the list is read first and
only ours is added or removed, the others and the default strategy left as they were.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import error_code
from prefect_distributed.core.errors import ConfigError

logger = logging.getLogger(__name__)

FARGATE = "FARGATE"
FARGATE_SPOT = "FARGATE_SPOT"
MISSING_PROVIDER_CODES = frozenset({"ClientException", "InvalidParameterException"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CapacityShare(_Model):
    """One entry of a capacity provider strategy."""

    provider: str = Field(description="Capacity provider name: FARGATE, FARGATE_SPOT or an Auto Scaling group's.")
    weight: int = Field(ge=0, description="Relative share of the service's ECS tasks.")


class ServicePlacement(_Model):
    """Where a service's ECS tasks run: capacity providers, and awsvpc networking for Fargate."""

    strategy: tuple[CapacityShare, ...] = Field(min_length=1, description="Capacity providers and their weights.")
    subnets: tuple[str, ...] = Field(default=(), description="awsvpc subnets; empty: the machines' network (bridge).")
    security_groups: tuple[str, ...] = Field(default=(), description="awsvpc security groups.")
    assign_public_ip: bool = Field(default=False, description="awsvpc: a public IP on each ECS task's interface.")

    def service_arguments(self) -> dict[str, Any]:
        """CreateService's capacityProviderStrategy and networkConfiguration."""
        arguments: dict[str, Any] = {
            "capacityProviderStrategy": [
                {"capacityProvider": share.provider, "weight": share.weight} for share in self.strategy
            ]
        }
        if self.subnets:
            arguments["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(self.subnets),
                    "securityGroups": list(self.security_groups),  # none: the VPC's default group
                    "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED",
                }
            }
        return arguments


class FargateTask(_Model):
    """What a task definition needs to run on Fargate: its size at the task level, and the role that pulls
    the image and writes the logs."""

    cpu_units: int = Field(description="Task CPU, in ECS cpu units.")
    memory_mib: int = Field(description="Task memory in MiB.")
    ephemeral_storage_gb: int = Field(description="Task disk in GiB; 20 is Fargate's default.")
    execution_role_arn: str = Field(description="The task execution role.")

    def task_definition_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": str(self.cpu_units),
            "memory": str(self.memory_mib),
            "executionRoleArn": self.execution_role_arn,
        }
        if self.ephemeral_storage_gb > 20:
            arguments["ephemeralStorage"] = {"sizeInGiB": self.ephemeral_storage_gb}
        return arguments


def _cluster(ecs: BaseClient, cluster: str) -> dict[str, Any] | None:
    found = ecs.describe_clusters(clusters=[cluster]).get("clusters", [])
    return next((c for c in found if c.get("status") == "ACTIVE"), None)


def _put_providers(ecs: BaseClient, cluster: str, described: dict[str, Any], providers: list[str]) -> None:
    ecs.put_cluster_capacity_providers(
        cluster=cluster,
        capacityProviders=providers,
        defaultCapacityProviderStrategy=described.get("defaultCapacityProviderStrategy", []),
    )


def add_cluster_providers(ecs: BaseClient, cluster: str, names: list[str]) -> None:
    """Add these capacity providers to the cluster's, keeping the others and its default strategy."""
    described = _cluster(ecs, cluster)
    if described is None:
        raise ConfigError(f"ECS cluster {cluster} does not exist (fleet.ecs_cluster)")
    present = list(described.get("capacityProviders", []))
    missing = [name for name in names if name not in present]
    if missing:
        _put_providers(ecs, cluster, described, present + missing)
        logger.info("ECS cluster %s: capacity provider(s) %s added", cluster, ", ".join(missing))


def remove_cluster_provider(ecs: BaseClient, cluster: str, name: str) -> None:
    """Take the capacity provider off the cluster's list; a missing cluster or provider counts as done."""
    described = _cluster(ecs, cluster) if cluster else None
    if described is None or name not in described.get("capacityProviders", []):
        return
    remaining = [provider for provider in described["capacityProviders"] if provider != name]
    strategy = [s for s in described.get("defaultCapacityProviderStrategy", []) if s["capacityProvider"] != name]
    ecs.put_cluster_capacity_providers(
        cluster=cluster, capacityProviders=remaining, defaultCapacityProviderStrategy=strategy
    )


def describe_capacity_provider(ecs: BaseClient, name: str) -> dict[str, Any] | None:
    """The ACTIVE capacity provider with its tags, or None."""
    try:
        found = ecs.describe_capacity_providers(capacityProviders=[name], include=["TAGS"])
    except ClientError as exc:
        if error_code(exc) in MISSING_PROVIDER_CODES:
            return None
        raise
    return next((p for p in found.get("capacityProviders", []) if p.get("status") == "ACTIVE"), None)


def ensure_capacity_provider(ecs: BaseClient, name: str, group_arn: str, tags: dict[str, str]) -> None:
    """A capacity provider on the Auto Scaling group: ECS scales the group to fit the ECS tasks
    (target 100 %: no spare machine), and never removes a machine that runs one."""
    if describe_capacity_provider(ecs, name) is not None:
        return
    ecs.create_capacity_provider(
        name=name,
        autoScalingGroupProvider={
            "autoScalingGroupArn": group_arn,
            "managedScaling": {"status": "ENABLED", "targetCapacity": 100, "minimumScalingStepSize": 1},
            "managedTerminationProtection": "ENABLED",
        },
        tags=[{"key": key, "value": value} for key, value in tags.items()],
    )
    logger.info("Created capacity provider %s", name)


def delete_capacity_provider(ecs: BaseClient, name: str) -> bool:
    """Delete the capacity provider; returns whether one was deleted (a missing one counts as done)."""
    if describe_capacity_provider(ecs, name) is None:
        return False
    try:
        ecs.delete_capacity_provider(capacityProvider=name)
    except ClientError as exc:
        if error_code(exc) in MISSING_PROVIDER_CODES:
            return False
        raise
    logger.info("Deleted capacity provider %s", name)
    return True


class ServiceProblem(_Model):
    """A service event that says why ECS tasks do not start, with what to do about it."""

    message: str = Field(description="What ECS said.")
    fix: str = Field(description="What to change.")
    is_capacity: bool = Field(description="True: Spot has no room now, waiting or more on-demand helps.")


# ECS says why it cannot place an ECS task only in a service event's free text; these are its wordings.
_PLACEMENT_PROBLEMS: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (
        re.compile(r"[Cc]apacity is unavailable"),
        "Fargate Spot has no capacity in these subnets' zones now: give fleet.fargate_weight a value above 0 so "
        "FARGATE (on-demand) takes a share of the ECS tasks, or add subnets of other zones (fleet.subnets)",
        True,
    ),
    (
        re.compile(r"no container instance met all of its requirements"),
        "no machine of the run's Auto Scaling group can take the ECS task yet: ECS is adding machines; if none "
        "comes, see the group's scaling activities",
        True,
    ),
    (
        re.compile(r"(?i)no Fargate configuration exists|invalid '?(cpu|memory)'? setting"),
        "container.cpu_units and container.memory_mib must be one of Fargate's task sizes",
        False,
    ),
    (
        re.compile(r"(?i)subnet|security ?group"),
        "check fleet.subnets and fleet.security_groups: they must exist in the region and share one VPC",
        False,
    ),
)


def service_problems(service: dict[str, Any], since: datetime) -> list[ServiceProblem]:
    """The known placement problems among the service's events since `since`, without repeats."""
    found: dict[str, ServiceProblem] = {}
    for event in service.get("events", []):
        created = event.get("createdAt")
        if created is not None and created < since:
            continue
        message = event.get("message", "")
        for pattern, fix, is_capacity in _PLACEMENT_PROBLEMS:
            if pattern.search(message):
                found.setdefault(fix, ServiceProblem(message=message, fix=fix, is_capacity=is_capacity))
                break
    return list(found.values())

"""The `fargate` fleet: workers as ECS tasks on Fargate Spot, with no machines to choose or pay idle.

An ECS service on the capacity providers FARGATE_SPOT and FARGATE (fleet.fargate_spot_weight and
fleet.fargate_weight), awsvpc networking in the config's subnets and security groups. The task size
is the container's (container.cpu_units, container.memory_mib, container.ephemeral_storage_gb),
checked against Fargate's sizes before anything is created. A task execution role pulls the image
and writes the logs (fleet.execution_role_arn; the bootstrap makes one).

Fargate Spot stops an ECS task with SIGTERM two minutes before it takes the capacity back: the
worker hands its job back then, as on a Spot machine. There is no instance metadata to watch, so the
worker's Spot watch is off. Scale-in is the service's desired count (core/fleets/ecs_service.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from pydantic import Field

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.ecs_capacity import (
    FARGATE,
    FARGATE_SPOT,
    CapacityShare,
    FargateTask,
    ServicePlacement,
    add_cluster_providers,
)
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate, CostReport
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.fargate_cost import estimate_fargate_cost, measure_fargate_cost
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.ecs_service import EcsServiceFleet, ServiceSettings
from prefect_distributed.core.fleets.fargate_size import task_size_problems
from prefect_distributed.core.fleets.spot_fleet import parse_handle, resource_name
from prefect_distributed.core.models import FleetHandle

BACKEND = "fargate"


class FargateSettings(ServiceSettings):
    """What the fargate backend needs from a run's config."""

    spot_weight: int = Field(ge=0, description="Share of the ECS tasks on FARGATE_SPOT.")
    on_demand_weight: int = Field(ge=0, description="Share on FARGATE (on-demand).")
    assign_public_ip: bool = Field(description="A public IP on each ECS task.")
    ephemeral_storage_gb: int = Field(description="Each ECS task's disk in GiB.")
    execution_role_arn: str | None = Field(description="The task execution role.")

    @classmethod
    def from_config(cls, config: RunConfig) -> FargateSettings:
        fleet = config.fleet
        return cls(
            **ServiceSettings.shared(config, BACKEND, fleet.ecs_tasks),
            spot_weight=fleet.fargate_spot_weight,
            on_demand_weight=fleet.fargate_weight,
            assign_public_ip=fleet.assign_public_ip,
            ephemeral_storage_gb=config.container.ephemeral_storage_gb,
            execution_role_arn=fleet.execution_role_arn,
        )

    def problems(self) -> list[str]:
        """Every setting Fargate would refuse, each with its fix."""
        problems = task_size_problems(self.cpu_units, self.memory_mib)
        if self.execution_role_arn is None:
            problems.append(
                "fleet.execution_role_arn is not set: Fargate needs a task execution role to pull the image and "
                "write the logs. Fix: run the bootstrap and paste the execution role ARN it prints"
            )
        if self.spot_weight + self.on_demand_weight == 0:
            problems.append("fleet.fargate_spot_weight and fleet.fargate_weight are both 0: give one a weight")
        return problems

    def placement(self) -> ServicePlacement:
        shares = [CapacityShare(provider=FARGATE_SPOT, weight=self.spot_weight)]
        if self.on_demand_weight:
            shares.append(CapacityShare(provider=FARGATE, weight=self.on_demand_weight))
        return ServicePlacement(
            strategy=tuple(share for share in shares if share.weight),
            subnets=self.subnets,
            security_groups=self.security_groups,
            assign_public_ip=self.assign_public_ip,
        )


class FargateFleet(EcsServiceFleet):
    """Runs workers as ECS tasks on Fargate (Spot). Built without settings it can only find, watch and
    stop fleets (cleanup, janitor)."""

    backend = BACKEND

    @classmethod
    def from_clients(cls, clients: AwsClients, config: RunConfig | None = None) -> FargateFleet:
        return cls(clients, FargateSettings.from_config(config) if config else None)

    def _fargate(self) -> FargateSettings:
        return cast(FargateSettings, self._require())

    def preflight(self) -> FargateSettings:
        """Raises ConfigError naming every setting Fargate would refuse (task size, role, weights)."""
        settings = self._fargate()
        problems = settings.problems()
        if problems:
            raise ConfigError("The fargate settings cannot work:\n" + "\n".join(f"  - {p}" for p in problems))
        return settings

    def before_service(self, cluster: str, run_id: str, tags: dict[str, str]) -> None:
        add_cluster_providers(self._ecs, cluster, [FARGATE_SPOT, FARGATE])

    def start(self, request: FleetRequest) -> FleetHandle:
        """Cluster (with the Fargate capacity providers), task definition sized for Fargate, service in the
        config's subnets; waits (bounded) for the first ECS task. Idempotent: a second start updates the
        service in place. Raises ConfigError for settings Fargate refuses (nothing is created then) and
        FleetError when no ECS task could start for want of Spot capacity."""
        settings = self.preflight()
        assert settings.execution_role_arn is not None  # preflight
        handle = self.start_service(
            request,
            settings.placement(),
            fargate=FargateTask(
                cpu_units=settings.cpu_units,
                memory_mib=settings.memory_mib,
                ephemeral_storage_gb=settings.ephemeral_storage_gb,
                execution_role_arn=settings.execution_role_arn,
            ),
        )
        self.wait_for_tasks(handle, lambda since: [])
        return handle

    def hold(self, handle: FleetHandle) -> None:
        """Nothing to hold: Fargate has no machines; ECS tasks lost to Spot are replaced at Spot's price."""

    def cost_estimate(self, jobs: int) -> CostEstimate:
        settings = self._fargate()
        return estimate_fargate_cost(
            cpu_units=settings.cpu_units,
            memory_mib=settings.memory_mib,
            ephemeral_storage_gb=settings.ephemeral_storage_gb,
            tasks=settings.workers,
            spot_weight=settings.spot_weight,
            on_demand_weight=settings.on_demand_weight,
            jobs=jobs,
            slots_per_task=settings.processes,
            job_minutes=settings.expected_job_minutes,
            region=settings.region,
        )

    def cost(self, handle: FleetHandle) -> CostReport:
        cluster, run_id = parse_handle(handle)
        return measure_fargate_cost(self._ecs, cluster, resource_name(run_id), run_id, now=datetime.now(UTC))

    def stop(self, handle: FleetHandle) -> None:
        """Service to 0 and deleted, the cluster if the run made it and it is empty, the task definitions.
        The FARGATE and FARGATE_SPOT providers stay on the cluster: they are AWS's, shared, and cost nothing."""
        self.stop_service(handle)
        self.finish_stop(handle)

"""The `ec2-spot` fleet: an Auto Scaling group of Spot machines that ECS grows and shrinks itself.

A launch template (the current ECS-optimized AMI from SSM, IMDSv2, the machines join the cluster:
the same template data as spot-fleet's, core/aws/ec2.py), an Auto Scaling group with a
mixed-instances policy (Spot only, `price-capacity-optimized`, every machine type, every subnet of
the config), an ECS capacity provider on that group with managed scaling and managed termination
protection, and the run's service on that capacity provider. The monitor sets the service's desired
count; ECS adds the machines the ECS tasks need and removes only machines left empty. No fleet file,
no Spot Fleet role: the group is AWS's recommended way to run Spot machines, and needs neither
`ec2:RequestSpotFleet` (which some organisations deny) nor `noTermination` tricks at scale-in.

Everything is named `distributed-<run id>` and tagged `run-id` and `created-by` (the group passes its
tags to its machines), so cost, cleanup and the janitor find it from the run id alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from pydantic import Field

from prefect_distributed.core.aws import autoscaling as autoscaling_api
from prefect_distributed.core.aws import ec2 as ec2_api
from prefect_distributed.core.aws import ecs as ecs_api
from prefect_distributed.core.aws import launch_template as template_api
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.ecs_capacity import (
    CapacityShare,
    ServicePlacement,
    add_cluster_providers,
    delete_capacity_provider,
    ensure_capacity_provider,
    remove_cluster_provider,
)
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate, CostReport, measure_cost
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.ecs_service import EcsServiceFleet, ServiceSettings
from prefect_distributed.core.fleets.spot_fleet import (
    known_sizes,
    machine_fit_problems,
    parse_handle,
    resource_name,
    root_volume_problems,
    spot_machines_estimate,
)
from prefect_distributed.core.models import CREATED_BY, TAG_CREATED_BY, TAG_RUN_ID, FleetHandle, FleetStatus

logger = logging.getLogger(__name__)

BACKEND = "ec2-spot"


class Ec2SpotSettings(ServiceSettings):
    """What the ec2-spot backend needs from a run's config."""

    machines: int = Field(ge=1, description="The most machines ECS may start (the group's MaxSize).")
    tasks_per_machine: int = Field(ge=1, description="Worker containers per machine.")
    machine_types: tuple[str, ...] = Field(description="EC2 instance types, one override each.")
    max_price_usd_per_hour: float = Field(gt=0, description="Highest Spot price per machine-hour in USD.")
    ebs_volume_gb: int = Field(description="Root volume per machine in GB.")
    instance_profile_arn: str | None = Field(description="The machines' instance profile.")

    @classmethod
    def from_config(cls, config: RunConfig) -> Ec2SpotSettings:
        fleet = config.fleet
        return cls(
            **ServiceSettings.shared(config, BACKEND, fleet.machines * fleet.tasks_per_machine),
            machines=fleet.machines,
            tasks_per_machine=fleet.tasks_per_machine,
            machine_types=fleet.machine_types,
            max_price_usd_per_hour=fleet.max_price_usd_per_hour,
            ebs_volume_gb=fleet.ebs_volume_gb,
            instance_profile_arn=fleet.instance_profile_arn,
        )


class Ec2SpotFleet(EcsServiceFleet):
    """Runs workers as ECS tasks on an Auto Scaling group of Spot machines. Built without settings it can
    only find, watch and stop fleets (cleanup, janitor)."""

    backend = BACKEND

    def __init__(
        self,
        clients: AwsClients,
        settings: Ec2SpotSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(clients, settings, clock=clock, sleep=sleep)
        self._ec2 = clients.client("ec2")
        self._ssm = clients.client("ssm")
        self._autoscaling = clients.client("autoscaling")

    @classmethod
    def from_clients(cls, clients: AwsClients, config: RunConfig | None = None) -> Ec2SpotFleet:
        return cls(clients, Ec2SpotSettings.from_config(config) if config else None)

    def _spot(self) -> Ec2SpotSettings:
        return cast(Ec2SpotSettings, self._require())

    def preflight(self) -> Ec2SpotSettings:
        """Raises ConfigError naming every setting that cannot work (instance profile, sizes, volume)."""
        settings = self._spot()
        sizes = known_sizes(self._ec2, settings.machine_types)
        problems = machine_fit_problems(
            settings.cpu_units, settings.memory_mib, settings.tasks_per_machine, settings.machine_types, sizes
        )
        if settings.instance_profile_arn is None:
            problems.append(
                "fleet.instance_profile_arn is not set: the machines need it to join ECS. Fix: run the bootstrap "
                "and paste the instance profile ARN it prints"
            )
        problems += root_volume_problems(settings.ebs_volume_gb)
        if problems:
            raise ConfigError("The ec2-spot settings cannot work:\n" + "\n".join(f"  - {p}" for p in problems))
        return settings

    def before_service(self, cluster: str, run_id: str, tags: dict[str, str]) -> None:
        """Launch template, Auto Scaling group and its capacity provider, added to the cluster."""
        settings = self._spot()
        assert settings.instance_profile_arn is not None  # preflight
        name = resource_name(run_id)
        shared = {
            "IamInstanceProfile": {"Arn": settings.instance_profile_arn},
            "SecurityGroups": [{"GroupId": group} for group in settings.security_groups],
        }
        data = template_api.launch_template_data(
            {"LaunchSpecifications": [shared]},
            ebs_volume_gb=settings.ebs_volume_gb,
            cluster=cluster,
            image_id=template_api.resolve_ecs_ami(self._ssm, settings.region),
            tags={**tags, "Name": f"{settings.app_name}-worker"},
        )
        template = template_api.ensure_launch_template(self._ec2, name, data, tags)
        group = autoscaling_api.ensure_group(
            self._autoscaling,
            autoscaling_api.GroupSpec(
                name=name,
                launch_template=template,
                machine_types=settings.machine_types,
                subnets=settings.subnets,
                max_machines=settings.machines,
                max_price_usd_per_hour=settings.max_price_usd_per_hour,
                tags=tags,
            ),
        )
        ensure_capacity_provider(self._ecs, name, group.arn, tags)
        add_cluster_providers(self._ecs, cluster, [name])

    def start(self, request: FleetRequest) -> FleetHandle:
        """Launch template, group, capacity provider, task definition, service; waits (bounded) for the first
        ECS task. Idempotent: a second start adds a template version and updates the group and service in
        place. Raises ConfigError for settings that cannot work (nothing is created then) and FleetError when
        the group cannot launch machines for a reason waiting will not cure (its activity says which)."""
        self.preflight()
        name = resource_name(request.run_id)
        handle = self.start_service(
            request, ServicePlacement(strategy=(CapacityShare(provider=name, weight=1),))
        )
        logged: set[str] = set()
        self.wait_for_tasks(handle, lambda since: self._launch_failures(name, since, logged))
        return handle

    def _launch_failures(self, group: str, since: datetime, logged: set[str]) -> list[str]:
        """The group's failed launches that waiting cannot cure, with their fixes; the others are logged
        once each (`logged` holds those said already)."""
        fatal = []
        for problem in autoscaling_api.launch_problems(self._autoscaling, group, since):
            if problem.is_configuration_error:
                fatal.append(f"  - {problem.message}\n    fix: {problem.fix}")
            elif problem.message not in logged:
                logged.add(problem.message)
                logger.warning("Auto Scaling group %s: %s. Fix: %s", group, problem.message, problem.fix)
        return fatal

    def status(self, handle: FleetHandle) -> FleetStatus:
        """ECS tasks asked for and running, and the machines the group asks for and has in service."""
        _, run_id = parse_handle(handle)
        _, running = self.service_status(handle)
        group = autoscaling_api.describe_group(self._autoscaling, resource_name(run_id))
        return FleetStatus(
            target=handle.workers,
            running=running,
            machines_target=group.desired if group else 0,
            machines_running=group.in_service if group else 0,
        )

    def hold(self, handle: FleetHandle) -> None:
        """'Cheapest' mode: the group may grow no more than the machines it has (at least one)."""
        _, run_id = parse_handle(handle)
        group = autoscaling_api.describe_group(self._autoscaling, resource_name(run_id))
        if group is not None and group.max_size > max(1, group.in_service):
            autoscaling_api.set_max_size(self._autoscaling, group.name, max(1, group.in_service))
            logger.info("Cheapest mode: Auto Scaling group %s keeps its %d machine(s)", group.name, group.in_service)

    def cost_estimate(self, jobs: int) -> CostEstimate:
        """As spot-fleet's: fleet.machines at the current Spot price of each machine type."""
        return spot_machines_estimate(self._ec2, self._spot(), jobs)

    def cost(self, handle: FleetHandle) -> CostReport:
        """Instance-hours of the run's machines (tagged by the group), terminated ones included, and their cost."""
        _, run_id = parse_handle(handle)
        return measure_cost(self._ec2, run_id, now=datetime.now(UTC))

    def running_fleets(self) -> list[str]:
        """Runs with a task definition still registered, or an Auto Scaling group left."""
        groups = autoscaling_api.tagged_groups(self._autoscaling, {TAG_CREATED_BY: CREATED_BY})
        return sorted(set(super().running_fleets()) | {g.tags[TAG_RUN_ID] for g in groups if TAG_RUN_ID in g.tags})

    def stop(self, handle: FleetHandle) -> None:
        """Service deleted (workers hand their jobs back), capacity provider off the cluster and deleted,
        group deleted with its machines (any left running are terminated), launch template, cluster if the
        run made it and it is empty, task definitions last. Idempotent."""
        cluster, run_id = parse_handle(handle)
        name = resource_name(run_id)
        self.stop_service(handle)
        remove_cluster_provider(self._ecs, cluster, name)
        delete_capacity_provider(self._ecs, name)
        machines = set(autoscaling_api.delete_group(self._autoscaling, name))
        # ForceDelete terminates them on AWS; asking again costs nothing and leaves none running where it did not.
        ec2_api.terminate_instances(self._ec2, machines)
        if cluster:
            ecs_api.deregister_container_instances(self._ecs, cluster, machines)
        template_api.delete_launch_template(self._ec2, name)
        self.finish_stop(handle)

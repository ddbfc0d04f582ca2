"""The `spot-fleet` fleet: workers as ECS tasks on EC2 Spot machines that join a cluster.

Before anything is created, the fleet file and the sizes are checked (`load_fleet_file` in
core/fleets/fleet_file.py, `validate_spot_fleet`): every mistake that would fail on AWS, or leave
containers unplaced on paid machines, is named with its fix.

Everything a run creates is named after its run id (`distributed-<run id>`: task definition
family, service, launch template) and tagged `run-id` and `created-by`, so status, scale-in and stop
find it again from the run id alone, in any process, after a crash. The cluster is a config
setting, so it is also written in the tag `ecs-cluster` of the task definition and the fleet request.

Scale-in, once no job waits, uses ECS task scale-in protection: each worker protects its container
while it runs a job (worker/protection.py), so lowering the service's desired count makes ECS stop
only idle containers; machines left running no ECS task are then terminated here, and the fleet's
target lowered so they are not replaced. Distributed-Something instead had every container create a
CloudWatch alarm that terminated its machine after 15 minutes at under 1 % CPU: the alarms cost money
and leaked when not deleted, every idle machine was paid for those 15 minutes, and a job waiting on
I/O could look idle to it. Protection leaves nothing to clean up and never stops a busy container.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws import ec2 as ec2_api
from prefect_distributed.core.aws import ecs as ecs_api
from prefect_distributed.core.aws import launch_template as template_api
from prefect_distributed.core.aws import logs as logs_api
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.ec2 import MachineSize
from prefect_distributed.core.aws.spot_pricing import spot_prices
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate, CostReport, estimate_cost, measure_cost
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.fleet_file import fleet_file_image, fleet_file_problems, load_fleet_file
from prefect_distributed.core.models import (
    CREATED_BY,
    TAG_APP,
    TAG_CREATED_BY,
    TAG_RUN_ID,
    FleetHandle,
    FleetStatus,
    run_log_group,
)

logger = logging.getLogger(__name__)

BACKEND = "spot-fleet"
TAG_CLUSTER = "ecs-cluster"
LOG_RETENTION_DAYS = 60  # Distributed-Something's
EXPIRY_GRACE = timedelta(hours=1)
# The ECS agent registers a machine's memory less what the system and the agent use; 6 % covers it.
MEMORY_RESERVE = 0.06


def _sizes() -> dict[str, MachineSize]:
    """vCPUs and GiB-per-vCPU of common families, large to 24xlarge (c5 has 9x and 18x sizes)."""
    gib_per_vcpu = {"m": 4, "c": 2, "r": 8}
    vcpus = {
        "large": 2,
        "xlarge": 4,
        "2xlarge": 8,
        "4xlarge": 16,
        "8xlarge": 32,
        "12xlarge": 48,
        "16xlarge": 64,
        "24xlarge": 96,
    }
    table = {}
    for family in ("m5", "c5", "r5", "m6i", "c6i", "r6i", "m7i", "c7i"):
        sizes = dict(vcpus)
        if family == "c5":
            sizes = {k: v for k, v in vcpus.items() if k not in {"8xlarge", "16xlarge"}} | {
                "9xlarge": 36,
                "18xlarge": 72,
            }
        for size, count in sizes.items():
            table[f"{family}.{size}"] = MachineSize(vcpus=count, memory_mib=count * gib_per_vcpu[family[0]] * 1024)
    return table


MACHINE_SIZES: Mapping[str, MachineSize] = _sizes()


class SpotFleetSettings(BaseModel):
    """What the spot-fleet backend needs from a run's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_name: str = Field(description="Names the machines and tags every resource.")
    region: str = Field(description="AWS region, for the awslogs driver and the AMI lookup.")
    ecs_cluster: str = Field(description="ECS cluster the machines join (created when missing).")
    machines: int = Field(ge=1, description="Spot Fleet target capacity, in machines.")
    tasks_per_machine: int = Field(ge=1, description="Worker containers per machine.")
    processes: int = Field(default=1, ge=1, description="Worker processes per container, each running one job.")
    machine_types: tuple[str, ...] = Field(description="EC2 instance types, one launch-template config each.")
    max_price_usd_per_hour: float = Field(gt=0, description="Highest Spot price per machine-hour in USD.")
    ebs_volume_gb: int = Field(description="Root volume per machine in GB (holds the containers).")
    fleet_file: Path = Field(description="The fleet file: Distributed-Something's SpotFleetRequestConfig.")
    image: str = Field(description="The worker's container image.")
    cpu_units: int = Field(description="ECS cpu units per container (1024 = 1 vCPU).")
    memory_mib: int = Field(description="Hard memory limit per container in MiB.")
    log_group: str = Field(description="Base of the log groups of the containers' output; a run's is under it.")
    task_role_arn: str | None = Field(default=None, description="IAM role the workers' AWS calls use.")
    capacity_wait_s: float = Field(default=600.0, ge=0, description="Longest wait for the machines at start.")
    poll_s: float = Field(default=20.0, gt=0, description="Seconds between two readings of the fleet.")
    fleet_lifetime_s: int = Field(description="The fleet expires (machines terminated) this long after start.")
    expected_job_minutes: float | None = Field(default=None, description="How long one job takes, for the estimate.")

    @property
    def workers(self) -> int:
        return self.machines * self.tasks_per_machine

    @classmethod
    def from_config(cls, config: RunConfig) -> SpotFleetSettings:
        """Raises ConfigError when the config names no fleet file."""
        fleet = config.fleet
        if fleet.fleet_file is None:
            raise ConfigError(
                "fleet.fleet_file: the spot-fleet backend needs a fleet file; "
                "start from deployments/aws/fleet.example.json"
            )
        return cls(
            app_name=config.app_name,
            region=config.region,
            ecs_cluster=fleet.ecs_cluster,
            machines=fleet.machines,
            tasks_per_machine=fleet.tasks_per_machine,
            processes=config.container.processes,
            machine_types=fleet.machine_types,
            max_price_usd_per_hour=fleet.max_price_usd_per_hour,
            ebs_volume_gb=fleet.ebs_volume_gb,
            fleet_file=fleet.fleet_file,
            image=config.container.image,
            cpu_units=config.container.cpu_units,
            memory_mib=config.container.memory_mib,
            log_group=config.log_group_name or config.app_name,
            task_role_arn=fleet.task_role_arn,
            capacity_wait_s=fleet.capacity_wait_s,
            fleet_lifetime_s=config.monitor.max_run_time_s,
            expected_job_minutes=fleet.expected_job_minutes,
        )


def validate_spot_fleet(
    settings: SpotFleetSettings, fleet_file: dict[str, Any], sizes: Mapping[str, MachineSize] = MACHINE_SIZES
) -> list[str]:
    """Every reason the fleet would fail or never run a container, before any money is spent.

    `sizes` gives each machine type's vCPUs and memory: the built-in table, extended with
    `ec2.machine_sizes` for other types.
    """
    problems = [f"fleet.fleet_file: {problem}" for problem in fleet_file_problems(fleet_file)]
    if not settings.machine_types:
        problems.append("fleet.machine_types: give at least one EC2 instance type, e.g. [m5.xlarge]")
    problems += machine_fit_problems(
        settings.cpu_units, settings.memory_mib, settings.tasks_per_machine, settings.machine_types, sizes
    )
    if not fleet_file_image(fleet_file):
        problems += root_volume_problems(settings.ebs_volume_gb)
    return problems


def machine_fit_problems(
    cpu_units: int,
    memory_mib: int,
    tasks_per_machine: int,
    machine_types: tuple[str, ...],
    sizes: Mapping[str, MachineSize],
) -> list[str]:
    """Machine types that are unknown, or that cannot hold tasks_per_machine containers of this size."""
    problems = []
    cpu = cpu_units * tasks_per_machine
    memory = memory_mib * tasks_per_machine
    for kind in machine_types:
        size = sizes.get(kind)
        if size is None:
            problems.append(
                f"fleet.machine_types: {kind!r} is unknown (built in: m5, c5, r5, m6i, c6i, r6i, m7i, c7i, "
                "large to 24xlarge); check its spelling, or look it up with core.aws.ec2.machine_sizes"
            )
            continue
        usable_mib = int(size.memory_mib * (1 - MEMORY_RESERVE))
        if memory > usable_mib:
            problems.append(
                f"container.memory_mib × fleet.tasks_per_machine = {memory} MiB does not fit {kind} "
                f"(about {usable_mib} MiB for containers): lower either, or pick a larger type"
            )
        if cpu > size.vcpus * 1024:
            problems.append(
                f"container.cpu_units × fleet.tasks_per_machine = {cpu} does not fit {kind} "
                f"({size.vcpus * 1024} cpu units): lower either, or pick a larger type"
            )
    return problems


class SpotMachines(Protocol):
    """The settings a fleet of Spot machines is priced from (spot-fleet's and ec2-spot's)."""

    machines: int
    machine_types: tuple[str, ...]
    max_price_usd_per_hour: float
    tasks_per_machine: int
    processes: int
    expected_job_minutes: float | None


def spot_machines_estimate(ec2: BaseClient, settings: SpotMachines, jobs: int) -> CostEstimate:
    """fleet.machines at the current Spot price of each machine type, and with fleet.expected_job_minutes
    the batch's total; every assumption spelled out."""
    return estimate_cost(
        spot_prices(ec2, list(settings.machine_types), now=datetime.now(UTC)),
        machines=settings.machines,
        machine_types=settings.machine_types,
        max_price_usd_per_hour=settings.max_price_usd_per_hour,
        jobs=jobs,
        slots_per_machine=settings.tasks_per_machine * settings.processes,
        job_minutes=settings.expected_job_minutes,
    )



def resource_name(run_id: str) -> str:
    """Task definition family, service and launch template of a run."""
    return f"distributed-{run_id}"


def parse_handle(handle: FleetHandle) -> tuple[str, str]:
    """(cluster, run id) of an ECS-backed fleet's handle ("<cluster>/<run id>")."""
    cluster, _, run_id = handle.id.rpartition("/")
    return cluster, run_id


def known_sizes(ec2: BaseClient, machine_types: Iterable[str]) -> dict[str, MachineSize]:
    """vCPUs and memory of each machine type: the built-in table, asking EC2 only for the others."""
    unknown = [kind for kind in machine_types if kind not in MACHINE_SIZES]
    return {**MACHINE_SIZES, **ec2_api.machine_sizes(ec2, unknown)}


def root_volume_problems(ebs_volume_gb: int) -> list[str]:
    """The machines' root volume must hold the ECS-optimized AMI's snapshot."""
    if ebs_volume_gb >= template_api.ROOT_SNAPSHOT_GB:
        return []
    return [
        f"fleet.ebs_volume_gb: the ECS-optimized AMI's root volume is {template_api.ROOT_SNAPSHOT_GB} GB; "
        "use at least that"
    ]


def lower_service(ecs: BaseClient, cluster: str, name: str, containers: int) -> int:
    """Lower the service's desired count to `containers`, never raise it; returns its desired count
    before (0: no service)."""
    service = ecs_api.describe_service(ecs, cluster, name) if cluster else None
    if service is None:
        return 0
    if containers < service["desiredCount"]:
        ecs_api.set_desired_count(ecs, cluster, name, containers)
    return service["desiredCount"]


def remove_cluster_and_definitions(ecs: BaseClient, cluster: str, run_id: str) -> None:
    """The last of a stop: the cluster when this run created it and nothing else uses it, then the
    task definitions (whose tags name the cluster, so a stop cut short can be finished from the run id)."""
    described = ecs_api.describe_cluster(ecs, cluster) if cluster else None
    if described and ecs_api.tags_of(described).get(TAG_RUN_ID) == run_id:
        ecs_api.delete_cluster_if_empty(ecs, cluster)
    ecs_api.deregister_task_definitions(ecs, resource_name(run_id))


class SpotFleet:
    """Runs workers as ECS tasks on a Spot Fleet. Built without settings it can only find, watch
    and stop fleets (cleanup, janitor); `start`, `preflight` and `scale_in` need them."""

    def __init__(
        self,
        clients: AwsClients,
        settings: SpotFleetSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ec2 = clients.client("ec2")
        self._ecs = clients.client("ecs")
        self._logs = clients.client("logs")
        self._ssm = clients.client("ssm")
        self._settings = settings
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_clients(cls, clients: AwsClients, config: RunConfig | None = None) -> SpotFleet:
        """With a config: every method. Without (the janitor): all but start, preflight and scale_in."""
        return cls(clients, SpotFleetSettings.from_config(config) if config else None)

    def _require_settings(self) -> SpotFleetSettings:
        if self._settings is None:
            raise FleetError(
                "this spot-fleet backend was built without a run config; build it with from_clients(clients, config)"
            )
        return self._settings

    def _fleets(self, run_id: str, *, active_only: bool = True) -> list[ec2_api.FleetRecord]:
        return ec2_api.tagged_fleets(
            self._ec2, {TAG_RUN_ID: run_id, TAG_CREATED_BY: CREATED_BY}, active_only=active_only
        )

    def handle_for(self, run_id: str, workers: int = 0) -> FleetHandle:
        """The run's handle, `<cluster>/<run id>`. The cluster is the config's, or else read from the
        tags of the run's task definition or fleet request; '' when neither exists any more."""
        cluster = self._settings.ecs_cluster if self._settings else None
        if cluster is None:
            tags = ecs_api.task_definition_tags(self._ecs, resource_name(run_id))
            if tags is None:
                fleets = self._fleets(run_id, active_only=False)
                tags = fleets[0].tags if fleets else {}
            cluster = tags.get(TAG_CLUSTER, "")
        return FleetHandle(backend=BACKEND, id=f"{cluster}/{run_id}", workers=workers)

    def preflight(self) -> dict[str, Any]:
        """Check the fleet file and the sizes before anything is created; returns the fleet file.

        Raises ConfigError listing every problem, each with its fix.
        """
        settings = self._require_settings()
        fleet_file = load_fleet_file(settings.fleet_file)
        problems = validate_spot_fleet(settings, fleet_file, known_sizes(self._ec2, settings.machine_types))
        if problems:
            raise ConfigError("The spot-fleet settings cannot work:\n" + "\n".join(f"  - {p}" for p in problems))
        return fleet_file

    def start(self, request: FleetRequest) -> FleetHandle:
        """Cluster, task definition, service, fleet; waits (bounded) for machines, then asks for
        machines × tasks_per_machine workers. Idempotent: a second start updates the service in place
        and reuses the run's fleet request.

        Raises ConfigError for a fleet file or sizes that cannot work (nothing is created then) and
        FleetError when EC2 refuses the fleet (it is cancelled; stop removes the rest).
        """
        settings = self._require_settings()
        fleet_file = self.preflight()
        run_id, name, cluster = request.run_id, resource_name(request.run_id), settings.ecs_cluster
        tags = {TAG_APP: settings.app_name, TAG_RUN_ID: run_id, TAG_CREATED_BY: CREATED_BY}
        log_group = run_log_group(settings.log_group, run_id)
        logs_api.ensure_log_group(self._logs, log_group, LOG_RETENTION_DAYS, tags)
        ecs_api.ensure_cluster(self._ecs, cluster, tags)
        task_definition = ecs_api.register_task_definition(
            self._ecs,
            name,
            settings.image,
            settings.cpu_units,
            settings.memory_mib,
            {**request.environment, "DISTRIBUTED_SPOT_WATCH": "true"},
            log_group,
            settings.region,
            settings.task_role_arn,
            {**tags, TAG_CLUSTER: cluster},
        )
        ecs_api.ensure_service(self._ecs, cluster, name, task_definition, tags)
        existing = self._fleets(run_id)
        fleet_id = existing[0].id if existing else self._request_fleet(settings, fleet_file, run_id, tags)
        ec2_api.wait_for_capacity(
            self._ec2,
            fleet_id,
            settings.machines,
            deadline_s=settings.capacity_wait_s,
            poll_s=settings.poll_s,
            clock=self._clock,
            sleep=self._sleep,
        )
        ecs_api.set_desired_count(self._ecs, cluster, name, settings.workers)
        logger.info(
            "Spot Fleet %s of run %s: %d worker(s) asked for in cluster %s", fleet_id, run_id, settings.workers, cluster
        )
        return FleetHandle(backend=BACKEND, id=f"{cluster}/{run_id}", workers=settings.workers)

    def _request_fleet(
        self, settings: SpotFleetSettings, fleet_file: dict[str, Any], run_id: str, tags: dict[str, str]
    ) -> str:
        name = resource_name(run_id)
        image_id = fleet_file_image(fleet_file) or template_api.resolve_ecs_ami(self._ssm, settings.region)
        data = template_api.launch_template_data(
            fleet_file,
            ebs_volume_gb=settings.ebs_volume_gb,
            cluster=settings.ecs_cluster,
            image_id=image_id,
            tags={**tags, "Name": f"{settings.app_name}-worker"},
        )
        template = template_api.ensure_launch_template(self._ec2, name, data, tags)
        now = datetime.now(UTC)
        config = ec2_api.build_spot_fleet_request(
            fleet_file,
            launch_template=template,
            run_id=run_id,
            machine_types=settings.machine_types,
            machines=settings.machines,
            max_price_usd_per_hour=settings.max_price_usd_per_hour,
            tags={**tags, TAG_CLUSTER: settings.ecs_cluster},
            valid_from=now,
            # A fleet nobody cleans up expires with the run's time limit, its machines terminated.
            valid_until=now + timedelta(seconds=settings.fleet_lifetime_s) + EXPIRY_GRACE,
        )
        return ec2_api.request_fleet(self._ec2, config)

    def status(self, handle: FleetHandle) -> FleetStatus:
        """Workers asked for (the handle's), ECS tasks of the run's service running now, and the
        machines its fleet asks for and has."""
        cluster, run_id = parse_handle(handle)
        service = ecs_api.describe_service(self._ecs, cluster, resource_name(run_id)) if cluster else None
        fleets = self._fleets(run_id)
        return FleetStatus(
            target=handle.workers,
            running=service.get("runningCount", 0) if service else 0,
            machines_target=sum(fleet.target for fleet in fleets),
            machines_running=round(sum(fleet.fulfilled for fleet in fleets)),
        )

    def hold(self, handle: FleetHandle) -> None:
        """'Cheapest' mode, as Distributed-Something's monitor did it: the fleet's target goes to one
        machine with noTermination, so the machines running keep running and lost ones are not replaced."""
        _, run_id = parse_handle(handle)
        for fleet in self._fleets(run_id):
            if fleet.target > 1:
                ec2_api.set_target_capacity(self._ec2, fleet.id, 1)
                logger.info(
                    "Cheapest mode: fleet %s keeps its %d machine(s), none replaced", fleet.id, round(fleet.fulfilled)
                )

    def cost_estimate(self, jobs: int) -> CostEstimate:
        """Machines x the current Spot price of each machine type, and with fleet.expected_job_minutes
        the batch's total; every assumption spelled out."""
        return spot_machines_estimate(self._ec2, self._require_settings(), jobs)

    def cost(self, handle: FleetHandle) -> CostReport:
        """Instance-hours of the run's machines (found by tag, terminated ones included) and their cost."""
        _, run_id = parse_handle(handle)
        return measure_cost(self._ec2, run_id, now=datetime.now(UTC))

    def scale_in(self, handle: FleetHandle, busy_jobs: int) -> None:
        """Once no job waits, shrink to what the running jobs need, without stopping a busy worker.

        1. The service's desired count goes down to the containers the jobs need, ceil(busy_jobs /
           processes): ECS stops only containers whose scale-in protection has lapsed, i.e. idle ones.
        2. The fleet's target goes down to ceil(containers / tasks_per_machine), with noTermination
           (as Distributed-Something's monitor did), so machines are not replaced once gone.
        3. Machines of the run's fleet that run and await no ECS task are terminated, at most as many as
           the fleet has beyond its target, and their container instances deregistered.

        Neither count is ever raised here. AWS calls grow with the machines, never with the jobs, and
        nothing is changed when nothing needs to be (the monitor calls this when the number of running
        jobs changes). Containers ECS stops after step 1 leave their machine idle for the next call.
        """
        settings = self._require_settings()
        cluster, run_id = parse_handle(handle)
        containers = math.ceil(busy_jobs / settings.processes)
        wanted = math.ceil(containers / settings.tasks_per_machine)
        service = min(containers, lower_service(self._ecs, cluster, resource_name(run_id), containers))
        terminated, target = 0, 0
        for fleet in self._fleets(run_id):
            if wanted < fleet.target:
                ec2_api.set_target_capacity(self._ec2, fleet.id, wanted)
            fleet_target = min(wanted, fleet.target)
            target += fleet_target
            terminated += self._terminate_idle(cluster, fleet.id, fleet_target)
        logger.info(
            "scale-in: %d idle machine(s) terminated, target %d, service %d containers", terminated, target, service
        )

    def _terminate_idle(self, cluster: str, fleet_id: str, target: int) -> int:
        """Terminate the fleet's machines that run no ECS task, down to `target` machines; returns how many."""
        machines = ec2_api.fleet_instance_ids(self._ec2, fleet_id)
        surplus = len(machines) - target
        if surplus <= 0 or not cluster:
            return 0
        idle = set(sorted(ecs_api.idle_container_instances(self._ecs, cluster, machines))[:surplus])
        if idle:
            ec2_api.terminate_instances(self._ec2, idle)
            ecs_api.deregister_container_instances(self._ecs, cluster, idle)
        return len(idle)

    def running_fleets(self) -> list[str]:
        """Run ids of every active fleet request this package made."""
        fleets = ec2_api.tagged_fleets(self._ec2, {TAG_CREATED_BY: CREATED_BY})
        return sorted({fleet.tags[TAG_RUN_ID] for fleet in fleets if TAG_RUN_ID in fleet.tags})

    def stop(self, handle: FleetHandle) -> None:
        """Service to 0 and deleted (workers get SIGTERM and return their jobs), fleet cancelled with its
        machines terminated, the cluster deleted if this run created it and nothing else uses it, then
        the launch template and the task definitions. Idempotent; the order keeps the task definition
        (whose tags name the cluster) until last, so a stop cut short can be finished from the run id."""
        cluster, run_id = parse_handle(handle)
        name = resource_name(run_id)
        if cluster:
            ecs_api.delete_service(self._ecs, cluster, name)
        for fleet in self._fleets(run_id):
            machines = ec2_api.fleet_instance_ids(self._ec2, fleet.id)
            ec2_api.cancel_fleet(self._ec2, fleet.id)
            if cluster:
                ecs_api.deregister_container_instances(self._ecs, cluster, machines)
        template_api.delete_launch_template(self._ec2, name)
        remove_cluster_and_definitions(self._ecs, cluster, run_id)
        logger.info("Spot Fleet of run %s stopped", run_id)

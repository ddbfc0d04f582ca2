"""What the `fargate` and `ec2-spot` fleets share: the run's ECS service on capacity providers.

Both run the workers as the ECS tasks of one service, `distributed-<run id>` (spot-fleet's names), in
the config's cluster. The service's desired count is the only knob the monitor turns: at start it
asks for the workers, and once no job waits it drops to the containers the running jobs occupy. Each
busy container holds ECS task scale-in protection (worker/protection.py), so ECS stops only idle ones.
Where the ECS tasks run is each backend's: Fargate's capacity providers, or an Auto Scaling group's.

Everything is found again from the run id alone: the task definition carries the tags `run-id`,
`created-by`, `ecs-cluster` (the cluster is a config setting) and `fleet-backend`, and is deregistered
last at stop, so a stop cut short is finished from the run id, and the janitor finds the runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws import ecs as ecs_api
from prefect_distributed.core.aws import logs as logs_api
from prefect_distributed.core.aws.clients import AwsClients, error_code, paginate
from prefect_distributed.core.aws.ecs_capacity import FargateTask, ServicePlacement, service_problems
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.spot_fleet import (
    LOG_RETENTION_DAYS,
    TAG_CLUSTER,
    lower_service,
    parse_handle,
    remove_cluster_and_definitions,
    resource_name,
)
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

TAG_BACKEND = "fleet-backend"
FAMILY_PREFIX = "distributed-"


class ServiceSettings(BaseModel):
    """What both backends need from a run's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_name: str = Field(description="Tags every resource.")
    region: str = Field(description="AWS region, for the awslogs driver.")
    ecs_cluster: str = Field(description="ECS cluster of the service (created when missing).")
    workers: int = Field(ge=1, description="Worker containers (ECS tasks) asked for at start.")
    processes: int = Field(default=1, ge=1, description="Worker processes per container, each running one job.")
    image: str = Field(description="The worker's container image.")
    cpu_units: int = Field(description="ECS cpu units per container (1024 = 1 vCPU).")
    memory_mib: int = Field(description="Memory per container in MiB.")
    log_group: str = Field(description="Base of the log groups of the containers' output; a run's is under it.")
    task_role_arn: str | None = Field(default=None, description="IAM role the workers' AWS calls use.")
    subnets: tuple[str, ...] = Field(description="Subnets the ECS tasks or machines start in.")
    security_groups: tuple[str, ...] = Field(default=(), description="Their security groups.")
    capacity_wait_s: float = Field(default=600.0, ge=0, description="Longest wait for the first ECS tasks at start.")
    poll_s: float = Field(default=20.0, gt=0, description="Seconds between two readings at start.")
    expected_job_minutes: float | None = Field(default=None, description="How long one job takes, for the estimate.")

    @staticmethod
    def shared(config: RunConfig, backend: str, workers: int) -> dict[str, Any]:
        """The shared fields from the config, validated; raises ConfigError when it names no subnet."""
        fleet = config.fleet
        if not fleet.subnets:
            raise ConfigError(
                f"fleet.subnets: the {backend} backend needs at least one subnet (several, in different zones, give "
                f"Spot more room); list them with: aws ec2 describe-subnets --region {config.region}"
            )
        return ServiceSettings(
            app_name=config.app_name,
            region=config.region,
            ecs_cluster=fleet.ecs_cluster,
            workers=workers,
            processes=config.container.processes,
            image=config.container.image,
            cpu_units=config.container.cpu_units,
            memory_mib=config.container.memory_mib,
            log_group=config.log_group_name or config.app_name,
            task_role_arn=fleet.task_role_arn,
            subnets=fleet.subnets,
            security_groups=fleet.security_groups,
            capacity_wait_s=fleet.capacity_wait_s,
            expected_job_minutes=fleet.expected_job_minutes,
        ).model_dump()


class EcsServiceFleet:
    """The service, its task definition and its wait; the backends add where the ECS tasks run."""

    backend: str = ""

    def __init__(
        self,
        clients: AwsClients,
        settings: ServiceSettings | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ecs = clients.client("ecs")
        self._logs = clients.client("logs")
        self._service_settings = settings
        self._clock = clock
        self._sleep = sleep

    def _require(self) -> ServiceSettings:
        if self._service_settings is None:
            raise FleetError(
                f"this {self.backend} backend was built without a run config; build it with from_clients(clients, config)"
            )
        return self._service_settings

    def tags(self, run_id: str) -> dict[str, str]:
        return {TAG_APP: self._require().app_name, TAG_RUN_ID: run_id, TAG_CREATED_BY: CREATED_BY}

    def handle_for(self, run_id: str, workers: int = 0) -> FleetHandle:
        """The run's handle, `<cluster>/<run id>`: the config's cluster, or else the one in the tags of the
        run's task definition; '' once that is gone."""
        if self._service_settings is not None:
            cluster = self._service_settings.ecs_cluster
        else:
            cluster = (ecs_api.task_definition_tags(self._ecs, resource_name(run_id)) or {}).get(TAG_CLUSTER, "")
        return FleetHandle(backend=self.backend, id=f"{cluster}/{run_id}", workers=workers)

    def start_service(
        self, request: FleetRequest, placement: ServicePlacement, *, fargate: FargateTask | None = None
    ) -> FleetHandle:
        """Log group, cluster, task definition, service on `placement`; then the desired count."""
        settings = self._require()
        run_id, name, cluster = request.run_id, resource_name(request.run_id), settings.ecs_cluster
        tags = self.tags(run_id)
        log_group = run_log_group(settings.log_group, run_id)
        logs_api.ensure_log_group(self._logs, log_group, LOG_RETENTION_DAYS, tags)
        ecs_api.ensure_cluster(self._ecs, cluster, tags)
        self.before_service(cluster, run_id, tags)
        try:
            task_definition = ecs_api.register_task_definition(
                self._ecs,
                name,
                settings.image,
                settings.cpu_units,
                settings.memory_mib,
                {**request.environment, "DISTRIBUTED_SPOT_WATCH": "false" if fargate else "true"},
                log_group,
                settings.region,
                settings.task_role_arn,
                {**tags, TAG_CLUSTER: cluster, TAG_BACKEND: self.backend},
                fargate=fargate,
            )
        except ClientError as exc:
            if error_code(exc) == "ClientException" and fargate is not None:
                raise ConfigError(
                    f"ECS refused the task definition: {exc.response['Error'].get('Message', '')}. Fix: make "
                    "container.cpu_units and container.memory_mib one of Fargate's task sizes, and "
                    "fleet.execution_role_arn a role trusted by ecs-tasks.amazonaws.com"
                ) from exc
            raise
        ecs_api.ensure_service(self._ecs, cluster, name, task_definition, tags, placement=placement)
        ecs_api.set_desired_count(self._ecs, cluster, name, settings.workers)
        return FleetHandle(backend=self.backend, id=f"{cluster}/{run_id}", workers=settings.workers)

    def before_service(self, cluster: str, run_id: str, tags: dict[str, str]) -> None:
        """What must exist before the service can name its capacity providers."""

    def wait_for_tasks(self, handle: FleetHandle, extra_problems: Callable[[datetime], list[str]]) -> int:
        """Wait (fleet.capacity_wait_s at most) for the first running ECS task; returns how many run.

        A known placement problem in the service's events is logged once with its fix; a configuration
        problem (`extra_problems`, e.g. the Auto Scaling group's failed launches) raises FleetError. With
        none running at the deadline and a capacity problem seen, FleetError says what to change; with
        none running and no problem seen, the run goes on (ECS keeps trying; the monitor watches).
        """
        settings = self._require()
        cluster, run_id = parse_handle(handle)
        since = datetime.now(UTC)
        deadline = self._clock() + settings.capacity_wait_s
        seen: set[str] = set()
        while True:
            service = ecs_api.describe_service(self._ecs, cluster, resource_name(run_id)) or {}
            running = service.get("runningCount", 0)
            if running:
                logger.info("%s fleet of run %s: %d of %d ECS task(s) running", self.backend, run_id, running, handle.workers)
                return running
            fatal = extra_problems(since)
            if fatal:
                raise FleetError(f"The {self.backend} fleet of run {run_id} cannot start:\n" + "\n".join(fatal))
            problems = service_problems(service, since)
            for problem in problems:
                if problem.fix not in seen:
                    seen.add(problem.fix)
                    logger.warning("%s fleet of run %s: %s. Fix: %s", self.backend, run_id, problem.message, problem.fix)
            if self._clock() >= deadline:
                if problems:
                    raise FleetError(
                        f"The {self.backend} fleet of run {run_id} has no ECS task running after "
                        f"{settings.capacity_wait_s:.0f} s:\n"
                        + "\n".join(f"  - {p.message}\n    fix: {p.fix}" for p in problems)
                    )
                logger.warning(
                    "%s fleet of run %s: no ECS task running after %.0f s; going on while ECS places them",
                    self.backend,
                    run_id,
                    settings.capacity_wait_s,
                )
                return 0
            self._sleep(settings.poll_s)

    def service_status(self, handle: FleetHandle) -> tuple[int, int]:
        """(desired, running) ECS tasks of the run's service; (0, 0) without one."""
        cluster, run_id = parse_handle(handle)
        service = ecs_api.describe_service(self._ecs, cluster, resource_name(run_id)) if cluster else None
        return (service["desiredCount"], service.get("runningCount", 0)) if service else (0, 0)

    def status(self, handle: FleetHandle) -> FleetStatus:
        _, running = self.service_status(handle)
        return FleetStatus(target=handle.workers, running=running)

    def scale_in(self, handle: FleetHandle, busy_jobs: int) -> None:
        """The service's desired count goes down to the containers the running jobs occupy, ceil(busy_jobs /
        processes); it is never raised here. Busy containers hold task scale-in protection, so ECS stops only
        idle ones (and, on ec2-spot, then removes the machines left empty)."""
        settings = self._require()
        cluster, run_id = parse_handle(handle)
        containers = math.ceil(busy_jobs / settings.processes)
        if containers < lower_service(self._ecs, cluster, resource_name(run_id), containers):
            logger.info("scale-in: service of run %s down to %d container(s)", run_id, containers)

    def running_fleets(self) -> list[str]:
        """Run ids of this backend's runs whose task definition is still registered (it goes last at stop)."""
        families = paginate(
            self._ecs, "list_task_definition_families", "families", familyPrefix=FAMILY_PREFIX, status="ACTIVE"
        )
        found = set()
        for family in families:
            tags = ecs_api.task_definition_tags(self._ecs, family) or {}
            if tags.get(TAG_BACKEND) == self.backend and tags.get(TAG_CREATED_BY) == CREATED_BY and TAG_RUN_ID in tags:
                found.add(tags[TAG_RUN_ID])
        return sorted(found)

    def stop_service(self, handle: FleetHandle) -> None:
        """Service to 0 and deleted (workers get SIGTERM and hand their jobs back)."""
        cluster, run_id = parse_handle(handle)
        if cluster:
            ecs_api.delete_service(self._ecs, cluster, resource_name(run_id))

    def finish_stop(self, handle: FleetHandle) -> None:
        """The cluster, when this run created it and nothing else uses it; then the task definitions."""
        cluster, run_id = parse_handle(handle)
        remove_cluster_and_definitions(self._ecs, cluster, run_id)
        logger.info("%s fleet of run %s stopped", self.backend, run_id)

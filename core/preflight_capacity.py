"""Preflight rows of the fargate and ec2-spot backends: roles, subnets across zones, the network path
to ECS and ECR, the task size, and the vCPU quota, each problem with its fix.

The checks are the ones a newcomer's first run meets on AWS: an execution role Fargate cannot use
(the ECS task stops with "CannotPullContainerError" or never writes a log line), a task size Fargate
refuses, subnets in one zone only (Spot then has one pool to draw from), a subnet whose ECS tasks or
machines cannot reach ECR or ECS (they run, paid, and never take a job), and a quota below the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from botocore.client import BaseClient

from prefect_distributed.core.aws import iam as iam_api
from prefect_distributed.core.aws import network, service_quotas
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.sts import Identity, caller_identity
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.fleets import BACKENDS
from prefect_distributed.core.fleets.ec2_spot import Ec2SpotFleet, Ec2SpotSettings
from prefect_distributed.core.fleets.fargate import FargateFleet, FargateSettings
from prefect_distributed.core.fleets.spot_fleet import known_sizes, machine_fit_problems
from prefect_distributed.core.preflight_rows import BOOTSTRAP, CheckRow, Status, guarded, role_rows

ECS_TASKS = "ecs-tasks.amazonaws.com"
# What an ECS task on Fargate needs without a route to the internet: ECR (API, registry and its S3
# layers) to pull the image, CloudWatch Logs, and the services the worker calls (SQS, S3).
FARGATE_ENDPOINTS = ("ecr.api", "ecr.dkr", "s3", "logs", "sqs")
# A machine also needs ECS itself for its agent.
MACHINE_ENDPOINTS = ("ecs", "ecs-agent", "ecs-telemetry", "ecr.api", "ecr.dkr", "s3", "logs", "sqs")


def _row(check: str, status: Status, detail: str, fix: str = "") -> CheckRow:
    return CheckRow(check=check, status=status, detail=detail, fix=fix)


class _Account:
    """The clients and identity the checks share."""

    def __init__(self, clients: AwsClients, config: RunConfig) -> None:
        self.config = config
        self.region = config.region
        self.ec2: BaseClient = clients.client("ec2")
        self.iam: BaseClient = clients.client("iam")
        self.quotas: BaseClient = clients.client("service-quotas")
        self.identity: Identity = caller_identity(clients.client("sts"))

    def role(self, check: str, setting: str, arn: str | None, service: str, *, required: bool) -> list[CheckRow]:
        """A role of this account, existing and trusted by `service`."""
        fix = f"{BOOTSTRAP} and set {setting} to the ARN it prints"
        if arn is None:
            status: Status = "problem" if required else "warning"
            return [_row(check, status, f"{setting} is not set", fix)]
        return role_rows(self.iam, check, arn, service, self.identity, fix)

    def instance_profile(self, arn: str | None) -> list[CheckRow]:
        check, fix = "instance profile", f"{BOOTSTRAP} and set fleet.instance_profile_arn to the ARN it prints"
        if arn is None:
            return [_row(check, "problem", "fleet.instance_profile_arn is not set: the machines cannot join ECS", fix)]
        name = iam_api.name_from_arn(arn)
        profile = iam_api.get_instance_profile(self.iam, name)
        roles = (profile or {}).get("Roles", [])
        if profile is None:
            return [_row(check, "problem", f"there is no instance profile {name} in account {self.identity.account}", fix)]
        if not roles or "ec2.amazonaws.com" not in iam_api.trusted_services(roles[0]):
            return [_row(check, "problem", f"instance profile {name} holds no role trusted by ec2.amazonaws.com", fix)]
        return [_row(check, "ok", f"instance profile {name} holds role {roles[0]['RoleName']}")]

    def network(self, subnet_ids: tuple[str, ...], group_ids: tuple[str, ...], public_ip: bool | None,
                endpoints: tuple[str, ...]) -> list[CheckRow]:
        """Each subnet in the region, their zones, the security groups in their VPC, and each subnet's path
        out. `public_ip` None: the subnet's own setting (machines); else the service's (Fargate)."""
        rows: list[CheckRow] = []
        found = []
        for subnet_id in subnet_ids:
            subnet = network.subnet(self.ec2, subnet_id)
            if subnet is None:
                rows.append(_row("subnet", "problem", f"subnet {subnet_id} does not exist in {self.region}",
                                 f"use subnets of {self.region} in fleet.subnets (aws ec2 describe-subnets --region "
                                 f"{self.region})"))
            else:
                found.append(subnet)
        zones = sorted({subnet["AvailabilityZone"] for subnet in found})
        vpcs = sorted({subnet["VpcId"] for subnet in found})
        if len(vpcs) > 1:
            rows.append(_row("subnet", "problem", f"fleet.subnets are in several VPCs ({', '.join(vpcs)})",
                             "use subnets of one VPC"))
        elif len(zones) == 1:
            rows.append(_row("subnet", "warning", f"every subnet is in {zones[0]}: Spot draws on one zone's capacity",
                             "add a subnet of another zone of the VPC to fleet.subnets"))
        elif zones:
            rows.append(_row("subnet", "ok", f"{len(found)} subnet(s) in {', '.join(zones)}, {vpcs[0]}"))
        for group_id in group_ids:
            group = network.security_group(self.ec2, group_id)
            if group is None or (vpcs and group["VpcId"] not in vpcs):
                where = f"in {group['VpcId']}, not the subnets' VPC" if group else f"not found in {self.region}"
                rows.append(_row("security group", "problem", f"security group {group_id} is {where}",
                                 f"use a security group of {vpcs[0] if vpcs else 'the subnets VPC'} in "
                                 "fleet.security_groups"))
            else:
                rows.append(_row("security group", "ok", f"security group {group_id} is in the subnets' VPC"))
        rows += [self._reach(subnet, public_ip, endpoints) for subnet in found]
        return rows

    def _reach(self, subnet: dict[str, Any], public_ip: bool | None, endpoints: tuple[str, ...]) -> CheckRow:
        check, subnet_id, vpc = "network path to ECS and ECR", subnet["SubnetId"], subnet["VpcId"]
        has_public_ip = bool(subnet.get("MapPublicIpOnLaunch")) if public_ip is None else public_ip
        table = network.route_table(self.ec2, subnet)
        gateway, nat = network.default_route_targets(table)
        if has_public_ip and gateway:
            return _row(check, "ok", f"subnet {subnet_id}: public IP and a route to internet gateway {gateway}")
        if nat:
            return _row(check, "ok", f"subnet {subnet_id}: route to NAT gateway {nat}")
        present = network.endpoint_services(self.ec2, vpc)
        missing = [s for s in endpoints if f"com.amazonaws.{self.region}.{s}" not in present]
        if not missing:
            return _row(check, "ok", f"subnet {subnet_id}: VPC endpoints for {', '.join(endpoints)}")
        public_fix = "fleet.assign_public_ip: true" if public_ip is not None else "a subnet that gives public IPs"
        fix = (f"use {public_fix} (the subnet routes to {gateway})" if gateway else
               f"add a NAT gateway route, or VPC endpoints for {', '.join(missing)} in {vpc}")
        return _row(check, "problem", f"subnet {subnet_id}: {'a' if has_public_ip else 'no'} public IP, "
                    f"{'a' if gateway else 'no'} route to an internet gateway, no NAT route, no VPC endpoints for "
                    f"{', '.join(missing)}: the workers could not pull the image or reach ECS and SQS", fix)

    def quota(self, check: str, service_code: str, quota_code: str, needed: int, what: str) -> list[CheckRow]:
        quota = service_quotas.applied_quota(self.quotas, service_code, quota_code)
        if quota is None:
            return [_row(check, "warning", f"the quota could not be read; the run needs {what} = {needed} vCPUs",
                         f"check Service Quotas > {quota_code} in {self.region} is at least {needed}")]
        if quota < needed:
            return [_row(check, "problem", f"the quota is {quota:.0f} vCPUs; the run needs {what} = {needed}",
                         f"ask for {quota_code} to be raised to {needed} in Service Quotas, or run fewer workers")]
        return [_row(check, "ok", f"quota {quota:.0f} vCPUs covers {what} = {needed}")]


def _fargate_rows(clients: AwsClients, config: RunConfig) -> list[CheckRow]:
    settings = FargateSettings.from_config(config)
    account = _Account(clients, config)
    size = f"{settings.cpu_units} cpu units / {settings.memory_mib} MiB"
    problems = [p for p in settings.problems() if p.startswith("container.")]
    rows = [_row("task size", "problem", p, "pick a size from Fargate's table") for p in problems] or [
        _row("task size", "ok", f"{size} is a Fargate task size")
    ]
    vcpus = math.ceil(settings.workers * settings.cpu_units / 1024)
    checks: list[tuple[str, Callable[[], list[CheckRow]]]] = [
        ("execution role", lambda: account.role("execution role", "fleet.execution_role_arn",
                                                settings.execution_role_arn, ECS_TASKS, required=True)),
        ("task role", lambda: account.role("task role", "fleet.task_role_arn", settings.task_role_arn, ECS_TASKS,
                                           required=False)),
        ("network", lambda: account.network(settings.subnets, settings.security_groups, settings.assign_public_ip,
                                            FARGATE_ENDPOINTS)),
    ]
    if settings.spot_weight:
        checks.append(("fargate spot quota", lambda: account.quota(
            "fargate spot vCPU quota", "fargate", service_quotas.FARGATE_SPOT_VCPU_QUOTA_CODE, vcpus,
            "fleet.ecs_tasks × container.cpu_units")))
    if settings.on_demand_weight:
        checks.append(("fargate vCPU quota", lambda: account.quota(
            "fargate vCPU quota", "fargate", service_quotas.FARGATE_VCPU_QUOTA_CODE, vcpus,
            "fleet.ecs_tasks × container.cpu_units")))
    return rows + [row for check, run in checks for row in guarded(check, run)]


def _ec2_spot_rows(clients: AwsClients, config: RunConfig) -> list[CheckRow]:
    settings = Ec2SpotSettings.from_config(config)
    account = _Account(clients, config)
    sizes = known_sizes(account.ec2, settings.machine_types)
    problems = machine_fit_problems(settings.cpu_units, settings.memory_mib, settings.tasks_per_machine,
                                    settings.machine_types, sizes)
    rows = [_row("fleet settings", "problem", p, "change the settings the detail names") for p in problems] or [
        _row("fleet settings", "ok", "the containers fit every machine type")
    ]
    known = [sizes[kind].vcpus for kind in settings.machine_types if kind in sizes]
    checks: list[tuple[str, Callable[[], list[CheckRow]]]] = [
        ("instance profile", lambda: account.instance_profile(settings.instance_profile_arn)),
        ("task role", lambda: account.role("task role", "fleet.task_role_arn", settings.task_role_arn, ECS_TASKS,
                                           required=False)),
        ("network", lambda: account.network(settings.subnets, settings.security_groups, None, MACHINE_ENDPOINTS)),
    ]
    if known:
        checks.append(("spot vCPU quota", lambda: account.quota(
            "spot vCPU quota", "ec2", service_quotas.SPOT_VCPU_QUOTA_CODE, settings.machines * max(known),
            "fleet.machines × the largest machine type's vCPUs")))
    return rows + [row for check, run in checks for row in guarded(check, run)]


# Each backend's rows, keyed by its entry in the registry (the backend names live there only).
ROWS: dict[Callable[..., object], Callable[[AwsClients, RunConfig], list[CheckRow]]] = {
    FargateFleet.from_clients: _fargate_rows,
    Ec2SpotFleet.from_clients: _ec2_spot_rows,
}


def capacity_rows(clients: AwsClients, config: RunConfig) -> list[CheckRow]:
    """The rows of the fargate or ec2-spot backend; none for the others."""
    rows_of = ROWS.get(BACKENDS[config.fleet.backend])
    if rows_of is None:
        return []
    try:
        return rows_of(clients, config)
    except ConfigError as exc:  # a setting the backend cannot start without (fleet.subnets)
        return [_row("fleet settings", "problem", str(exc), "set it in the config")]

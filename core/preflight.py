"""Preflight: every mistake in the account or the config that a run would meet, found before any
money is spent, and reported all at once, each with its fix.

Half of Distributed-Something's troubleshooting pages are such mistakes, met only once a fleet was
paid for: a role ARN where an instance profile ARN belongs, a subnet of another region, a security
group of another VPC, machines that cannot reach ECS, containers larger than the machine, a bucket
policy that stops the log export. Each check adds rows (ok, warning or problem); a check that these
credentials may not make is a warning, not a crash. The network rows are in
core/preflight_network.py, the rows and the report in core/preflight_rows.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws import iam as iam_api
from prefect_distributed.core.aws import network, s3, service_quotas, sqs
from prefect_distributed.core.aws.clients import AwsClients, error_code
from prefect_distributed.core.aws.sts import Identity, caller_identity
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.fleets import docker as docker_fleet
from prefect_distributed.core.fleets import spot_fleet
from prefect_distributed.core.fleets.fleet_file import (
    INSTANCE_PROFILE_ARN,
    KEY_PLACEHOLDER,
    ROLE_ARN,
    fleet_file_problems,
    read_fleet_file,
)
from prefect_distributed.core.fleets.spot_fleet import SpotFleetSettings, known_sizes, validate_spot_fleet
from prefect_distributed.core.models import TAG_APP
from prefect_distributed.core.preflight_capacity import capacity_rows
from prefect_distributed.core.preflight_network import NetworkChecks
from prefect_distributed.core.preflight_rows import (
    BOOTSTRAP,
    CheckRow,
    PreflightReport,
    guarded,
    role_rows,
    row_ok,
    row_problem,
    row_warning,
)

logger = logging.getLogger(__name__)

EXPORT_TEST_KEY = "runs/<run id>/logs/aws-logs-write-test"


def run_preflight(clients: AwsClients, config: RunConfig) -> PreflightReport:
    """Check the buckets, the queue names and, for the spot-fleet backend, the fleet file against
    the account: IAM, network, key pair, AMI, sizes and the Spot vCPU quota; for the docker backend,
    the engine and the worker image; fargate's and ec2-spot's rows come from core/preflight_capacity.py."""
    s3_client = clients.client("s3")
    rows = _bucket_rows(s3_client, config)
    if config.queue.name:
        rows += guarded("queue name", lambda: _queue_rows(clients.client("sqs"), config))
    if config.fleet.backend == spot_fleet.BACKEND:
        rows += _spot_fleet_rows(clients, config)
    if config.fleet.backend == docker_fleet.BACKEND:
        rows += _docker_rows(clients, config)
    rows += capacity_rows(clients, config)
    report = PreflightReport(rows=rows)
    logger.info(
        "Preflight: %d check(s), %d problem(s), %d warning(s)", len(rows), len(report.problems), len(report.warnings)
    )
    return report


def _docker_rows(clients: AwsClients, config: RunConfig) -> list[CheckRow]:
    """The engine and the worker image that the docker fleet runs."""
    found = docker_fleet.DockerFleet.from_clients(clients, config).problems()
    if not found:
        return [row_ok("docker", f"a Docker engine answers and has the worker image {config.container.image}")]
    return [row_problem("docker", detail, fix) for detail, fix in found]


def _bucket_rows(s3_client: BaseClient, config: RunConfig) -> list[CheckRow]:
    settings: dict[str, list[str]] = {}
    for setting, bucket in (
        ("bucket", config.bucket),
        ("input_bucket", config.inputs_bucket),
        ("output_bucket", config.outputs_bucket),
    ):
        settings.setdefault(bucket, []).append(setting)
    rows = []
    for bucket, names in settings.items():
        setting = ", ".join(names)
        try:
            s3.check_bucket(s3_client, bucket, setting)
        except ConfigError as exc:
            rows.append(
                row_problem(
                    "bucket",
                    str(exc),
                    f"create it in {config.region} (aws s3 mb s3://{bucket} --region {config.region}) or correct "
                    f"{setting}; if it exists, let these credentials list it (s3:ListBucket)",
                )
            )
        else:
            rows.append(row_ok("bucket", f"s3://{bucket} ({setting}) exists"))
    return rows


def _queue_rows(sqs_client: BaseClient, config: RunConfig) -> list[CheckRow]:
    """A fixed queue name must be free, or be this app's queue (then the run reuses it)."""
    rows = []
    # With queue.name set the names do not depend on the run id.
    for name in config.queue_names(run_id=""):
        url = sqs.queue_url(sqs_client, name)
        if url is None:
            rows.append(row_ok("queue name", f"queue {name} is free"))
        elif any(found == url for found, _ in sqs.tagged_queues(sqs_client, name, {TAG_APP: config.app_name})):
            rows.append(row_ok("queue name", f"queue {name} is tagged {TAG_APP}={config.app_name}; the run reuses it"))
        else:
            rows.append(
                row_problem(
                    "queue name",
                    f"queue {name} exists and is not tagged {TAG_APP}={config.app_name}: another app's queue",
                    "choose another queue.name (or dead_letter_queue_name), or leave them unset for names of "
                    "the run's own",
                )
            )
    return rows


class _Fleet:
    """The spot-fleet checks of one config: its fleet file, and the clients they need."""

    def __init__(
        self, clients: AwsClients, config: RunConfig, settings: SpotFleetSettings, fleet_file: dict[str, Any]
    ) -> None:
        self.config = config
        self.settings = settings
        self.fleet_file = fleet_file
        specs = fleet_file.get("LaunchSpecifications")
        self.specs: list[dict[str, Any]] = (
            [spec for spec in specs if isinstance(spec, dict)] if isinstance(specs, list) else []
        )
        self.spec: dict[str, Any] = self.specs[0] if self.specs else {}
        self.ec2 = clients.client("ec2")
        self.iam = clients.client("iam")
        self.s3 = clients.client("s3")
        self.quotas = clients.client("service-quotas")
        self.sts = clients.client("sts")
        self.region = config.region

    # --- IAM ---------------------------------------------------------------------------------

    def fleet_role(self, identity: Identity) -> list[CheckRow]:
        arn = str(self.fleet_file.get("IamFleetRole", ""))
        if not ROLE_ARN.match(arn):
            return []  # fleet_file_problems reports it
        return role_rows(
            self.iam,
            "fleet role",
            arn,
            "spotfleet.amazonaws.com",
            identity,
            f"{BOOTSTRAP} and set IamFleetRole to the fleet role ARN it prints",
        )

    def task_role(self, identity: Identity) -> list[CheckRow]:
        arn = self.config.fleet.task_role_arn
        if arn is None:
            return [
                row_warning(
                    "task role",
                    "fleet.task_role_arn is not set: the worker containers get no role of their own, so their "
                    "calls to SQS and S3 fail unless the machines' instance role grants them",
                    f"{BOOTSTRAP} and set fleet.task_role_arn to the task role ARN it prints",
                )
            ]
        return role_rows(
            self.iam,
            "task role",
            arn,
            "ecs-tasks.amazonaws.com",
            identity,
            f"{BOOTSTRAP} and set fleet.task_role_arn to the task role ARN it prints",
        )

    def instance_profile(self, identity: Identity) -> list[CheckRow]:
        given = self.spec.get("IamInstanceProfile", {})
        arn = str(given.get("Arn", ""))
        field = "LaunchSpecifications[0].IamInstanceProfile.Arn"
        if ROLE_ARN.match(arn):
            return [self._role_as_profile(arn, field, identity)]
        if INSTANCE_PROFILE_ARN.match(arn):
            name = iam_api.name_from_arn(arn)
        elif given.get("Name"):
            name = str(given["Name"])
        else:
            return []  # fleet_file_problems reports it
        profile = iam_api.get_instance_profile(self.iam, name)
        if profile is None:
            return [
                row_problem(
                    "instance profile",
                    f"there is no instance profile {name} in account {identity.account}",
                    f"{BOOTSTRAP} and set {field} to the instance profile ARN it prints",
                )
            ]
        roles = profile.get("Roles", [])
        if not roles:
            return [
                row_problem(
                    "instance profile",
                    f"instance profile {name} holds no role: the machines get no credentials and never join ECS",
                    f"aws iam add-role-to-instance-profile --instance-profile-name {name} --role-name "
                    f"<ECS instance role>, or {BOOTSTRAP} and use its instance profile",
                )
            ]
        role = roles[0]
        if "ec2.amazonaws.com" not in iam_api.trusted_services(role):
            return [
                row_problem(
                    "instance profile",
                    f"the role {role['RoleName']} of instance profile {name} is not trusted by ec2.amazonaws.com",
                    f"use a role trusted by EC2 with AmazonEC2ContainerServiceforEC2Role, or {BOOTSTRAP}",
                )
            ]
        return [row_ok("instance profile", f"instance profile {name} holds role {role['RoleName']}")]

    def _role_as_profile(self, arn: str, field: str, identity: Identity) -> CheckRow:
        """A role ARN where an instance profile ARN belongs: EC2's 'Linux/UNIX: Value (...) for parameter
        iamInstanceProfile.arn is invalid'. The fix names the role's instance profile, or how to make one."""
        name = iam_api.name_from_arn(arn)
        detail = f"{field} {arn} is a role ARN; EC2 wants an instance profile ARN there"
        role = iam_api.get_role(self.iam, name)
        profiles = iam_api.instance_profiles_of(self.iam, name) if role else []
        if profiles:
            fix = f"set {field} to {profiles[0]['Arn']}, the instance profile of role {name}"
        elif role:
            detail += f", and role {name} has no instance profile"
            fix = (
                f"{BOOTSTRAP} and use the instance profile ARN it prints; or make one for this role: aws iam "
                f"create-instance-profile --instance-profile-name {name} && aws iam add-role-to-instance-profile "
                f"--instance-profile-name {name} --role-name {name}, then set {field} to "
                f"arn:{identity.partition}:iam::{identity.account}:instance-profile/{name}"
            )
        else:
            detail += f", and there is no role {name} either"
            fix = f"{BOOTSTRAP} and set {field} to the instance profile ARN it prints"
        return row_problem("instance profile", detail, fix)

    def network(self) -> list[CheckRow]:
        return NetworkChecks(self.ec2, self.region, self.specs).rows()

    # --- the rest of the launch specification ------------------------------------------------

    def key_pair(self) -> list[CheckRow]:
        name = self.spec.get("KeyName")
        if not name or KEY_PLACEHOLDER.match(str(name)):
            return []  # a placeholder: fleet_file_problems reports it
        if network.key_pair_exists(self.ec2, name):
            return [row_ok("key pair", f"key pair {name} exists in {self.region}")]
        return [
            row_problem(
                "key pair",
                f"key pair {name} does not exist in {self.region} (key pairs are per region; KeyName is the name "
                "without .pem)",
                f"create or import it in {self.region}, fix KeyName, or remove KeyName (no SSH access then)",
            )
        ]

    def image(self) -> list[CheckRow]:
        image_id = self.spec.get("ImageId")
        if not image_id:
            return [row_ok("machine image", "no ImageId: the region's current ECS-optimized AMI is used")]
        if network.image_exists(self.ec2, image_id):
            return [row_ok("machine image", f"image {image_id} exists in {self.region}")]
        return [
            row_problem(
                "machine image",
                f"image {image_id} does not exist in {self.region} (AMI ids are per region)",
                "remove ImageId to use the region's current ECS-optimized AMI, or give an AMI of " + self.region,
            )
        ]

    def sizes_and_quota(self) -> list[CheckRow]:
        """Containers fit the machines (validate_spot_fleet's rules), and the Spot vCPU quota covers the fleet."""
        sizes = known_sizes(self.ec2, self.settings.machine_types)
        rows = [
            row_problem("fleet settings", problem, "change the config settings the detail names, as it says")
            for problem in validate_spot_fleet(self.settings, self.fleet_file, sizes)
            if not problem.startswith("fleet.fleet_file:")  # reported as fleet-file rows
        ]
        if not rows:
            rows.append(row_ok("fleet settings", "the containers fit every machine type"))
        known = [sizes[kind].vcpus for kind in self.settings.machine_types if kind in sizes]
        if known:
            rows.append(self._quota(self.settings.machines * max(known)))
        return rows

    def _quota(self, needed: int) -> CheckRow:
        check = "spot vCPU quota"
        quota = service_quotas.spot_vcpu_quota(self.quotas)
        what = f"fleet.machines × the largest machine type's vCPUs = {needed} vCPUs"
        if quota is None:
            return row_warning(
                check,
                f"the Spot vCPU quota could not be read; the fleet needs {what}",
                "check Service Quotas > Amazon EC2 > 'All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance "
                f"Requests' (L-34B43A08) in {self.region} is at least {needed}",
            )
        if quota < needed:
            return row_problem(
                check,
                f"the Spot vCPU quota is {quota:.0f}; the fleet needs {what}",
                f"request an increase of 'All Standard Spot Instance Requests' to {needed} in Service Quotas, or "
                "lower fleet.machines or the machine types",
            )
        return row_ok(check, f"quota {quota:.0f} vCPUs covers {what}")

    def log_export(self, identity: Identity) -> list[CheckRow]:
        """The records bucket lets CloudWatch Logs export the run's log group to runs/ (at cleanup)."""
        bucket = self.config.bucket
        try:
            policy = s3.bucket_policy(self.s3, bucket)
        except ClientError as exc:
            if error_code(exc) in s3.MISSING_BUCKET_CODES:
                return []  # the bucket rows report it
            raise
        principal = f"logs.{self.region}.amazonaws.com"
        bucket_arn = f"arn:{identity.partition}:s3:::{bucket}"
        if _allows(policy, principal, "s3:GetBucketAcl", bucket_arn) and _allows(
            policy, principal, "s3:PutObject", f"{bucket_arn}/{EXPORT_TEST_KEY}"
        ):
            return [row_ok("log export", f"the policy of s3://{bucket} lets {principal} export logs to runs/")]
        return [
            row_warning(
                "log export",
                f"the policy of s3://{bucket} does not let {principal} call s3:GetBucketAcl on the bucket and "
                "s3:PutObject under runs/: cleanup cannot export the run's logs, and keeps the log group instead",
                f"{BOOTSTRAP}: it adds the statements to the bucket's policy",
            )
        ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(policy: dict[str, Any] | None, service: str, action: str, resource: str) -> bool:
    """Whether an Allow statement names the service principal, the action and the resource
    (IAM wildcards; conditions are not evaluated)."""
    for statement in _as_list((policy or {}).get("Statement", [])):
        principal = statement.get("Principal", {})
        services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else [principal]
        if (
            statement.get("Effect") == "Allow"
            and (service in services or "*" in services)
            and any(fnmatchcase(action.lower(), str(a).lower()) for a in _as_list(statement.get("Action", [])))
            and any(fnmatchcase(resource, str(r)) for r in _as_list(statement.get("Resource", [])))
        ):
            return True
    return False


def _spot_fleet_rows(clients: AwsClients, config: RunConfig) -> list[CheckRow]:
    settings = SpotFleetSettings.from_config(config)
    path = settings.fleet_file
    # Not load_fleet_file, which stops at the file's own problems: the rest is checked against the account too.
    try:
        fleet_file = read_fleet_file(path)
    except ConfigError as exc:
        return [row_problem("fleet file", str(exc), f"fix {path}; start from deployments/aws/fleet.example.json")]
    rows = [row_problem("fleet file", problem, f"edit {path}") for problem in fleet_file_problems(fleet_file)]
    fleet = _Fleet(clients, config, settings, fleet_file)
    identity = caller_identity(fleet.sts)
    checks: Iterable[tuple[str, Callable[[], list[CheckRow]]]] = (
        ("fleet role", lambda: fleet.fleet_role(identity)),
        ("instance profile", lambda: fleet.instance_profile(identity)),
        ("task role", lambda: fleet.task_role(identity)),
        ("network", fleet.network),
        ("key pair", fleet.key_pair),
        ("machine image", fleet.image),
        ("fleet settings", fleet.sizes_and_quota),
        ("log export", lambda: fleet.log_export(identity)),
    )
    for check, run in checks:
        rows += guarded(check, run)
    return rows

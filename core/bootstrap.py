"""The one-time account bootstrap of the AWS backends, and `destroy`, its exact undoing.

What it makes, each tagged created-by=prefect-distributed and distributed-bootstrap=true:

- the ECS instance role (trusted by EC2, AWS's AmazonEC2ContainerServiceforEC2Role) and its
  instance profile, which Distributed-Something's setup_AWS.py never made: fleets then failed with
  "Linux/UNIX: Value (...) for parameter iamInstanceProfile.arn is invalid";
- the Spot Fleet role (trusted by Spot Fleet, AmazonEC2SpotFleetTaggingRole);
- the ECS task execution role (trusted by ECS tasks, AWS's AmazonECSTaskExecutionRolePolicy), with
  which Fargate pulls the image and sends the containers' output to CloudWatch Logs;
- the workers' ECS task role (trusted by ECS tasks) with one inline policy granting the config's
  buckets, the account's queues, log streams and task scale-in protection: the grants of
  deployments/aws/iam/task-role-policy.json, instead of Distributed-Something's *FullAccess set;
- two statements in the records bucket's policy letting CloudWatch Logs export a run's logs under
  runs/ (without them cleanup cannot export, Distributed-Something issue #144).

A second bootstrap changes nothing. What is ours but has drifted is put right and reported as
updated. A role or instance profile of one of these names without our tag is never adopted: the
bootstrap stops before changing anything and says so. `destroy` removes what carries our tag and
our bucket-policy statements (found by Sid), and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws import iam as iam_api
from prefect_distributed.core.aws import s3
from prefect_distributed.core.aws.clients import AwsClients, error_code
from prefect_distributed.core.aws.sts import Identity, caller_identity
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.models import CREATED_BY, TAG_CREATED_BY

logger = logging.getLogger(__name__)

BOOTSTRAP_TAG = "distributed-bootstrap"
TAGS = {TAG_CREATED_BY: CREATED_BY, BOOTSTRAP_TAG: "true"}
DEFAULT_PREFIX = "distributed"
EC2 = "ec2.amazonaws.com"
SPOT_FLEET = "spotfleet.amazonaws.com"
ECS_TASKS = "ecs-tasks.amazonaws.com"
INSTANCE_POLICY = "service-role/AmazonEC2ContainerServiceforEC2Role"
FLEET_POLICY = "service-role/AmazonEC2SpotFleetTaggingRole"
EXECUTION_POLICY = "service-role/AmazonECSTaskExecutionRolePolicy"
LOG_EXPORT_SIDS = ("DistributedLogExportAcl", "DistributedLogExportWrite")
LOG_EXPORT_PREFIX = "runs"
TASK_BUCKETS_SID = "InputsOutputsRecords"
# IAM answers its own calls within seconds of a change; EC2 and Spot Fleet see it later. After
# creating anything, the bootstrap waits SETTLE_S more so that a fleet started next finds the roles.
PROPAGATION_DEADLINE_S = 60.0
PROPAGATION_POLL_S = 2.0
SETTLE_S = 10.0

Change = Literal["created", "updated", "unchanged"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BootstrapNames(_Model):
    """The names of what the bootstrap makes; `prefix` separates several bootstraps in one account."""

    prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^[\w+=,.@-]{1,40}$")

    @property
    def instance_role(self) -> str:
        return f"{self.prefix}-ecs-instance"

    @property
    def instance_profile(self) -> str:
        return self.instance_role

    @property
    def fleet_role(self) -> str:
        return f"{self.prefix}-spot-fleet"

    @property
    def task_role(self) -> str:
        return f"{self.prefix}-task"

    @property
    def execution_role(self) -> str:
        return f"{self.prefix}-task-execution"

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.instance_role, self.fleet_role, self.task_role, self.execution_role)

    @property
    def task_policy(self) -> str:
        return f"{self.prefix}-task-access"


class BootstrapResult(_Model):
    """The ARNs to put in the fleet file and the config, and what this bootstrap changed."""

    instance_profile_arn: str = Field(description="LaunchSpecifications[0].IamInstanceProfile.Arn of the fleet file.")
    fleet_role_arn: str = Field(description="IamFleetRole of the fleet file.")
    task_role_arn: str = Field(description="fleet.task_role_arn of the config.")
    execution_role_arn: str = Field(description="fleet.execution_role_arn of a fargate config.")
    created: list[str] = Field(description="What this bootstrap created.")
    updated: list[str] = Field(description="What was ours but had drifted, and was put right.")
    unchanged: list[str] = Field(description="What was there already, as it should be.")

    def snippets(self) -> str:
        """The fleet-file fields and the config setting to paste, as text."""
        return (
            "Fleet file (fleet.fleet_file):\n"
            f'  "IamFleetRole": "{self.fleet_role_arn}",\n'
            '  "LaunchSpecifications": [{\n'
            f'    "IamInstanceProfile": {{"Arn": "{self.instance_profile_arn}"}},\n'
            "    ...\n"
            "  }]\n"
            "Config:\n"
            "  fleet:\n"
            f"    task_role_arn: {self.task_role_arn}\n"
            f"    execution_role_arn: {self.execution_role_arn}      # fargate\n"
            f"    instance_profile_arn: {self.instance_profile_arn}  # ec2-spot\n"
        )


class DestroyResult(_Model):
    deleted: list[str] = Field(description="What destroy removed.")
    kept: list[str] = Field(description="What has one of the bootstrap's names but is not the bootstrap's.")


def _is_ours(resource: dict[str, Any]) -> bool:
    tags = iam_api.tags_of(resource)
    return all(tags.get(key) == value for key, value in TAGS.items())


def _policy_arn(identity: Identity, name: str) -> str:
    return f"arn:{identity.partition}:iam::aws:policy/{name}"


def _bucket_arn(identity: Identity, bucket: str) -> str:
    return f"arn:{identity.partition}:s3:::{bucket}"


def task_role_policy(identity: Identity, buckets: Iterable[str]) -> dict[str, Any]:
    """The workers' grants: deployments/aws/iam/task-role-policy.json for this account and buckets."""
    bucket_arns = sorted({_bucket_arn(identity, bucket) for bucket in buckets})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TakeJobs",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:SendMessage",
                    "sqs:GetQueueAttributes",
                ],
                "Resource": f"arn:{identity.partition}:sqs:*:{identity.account}:*",
            },
            {
                "Sid": TASK_BUCKETS_SID,
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
                "Resource": [resource for arn in bucket_arns for resource in (arn, f"{arn}/*")],
            },
            {
                "Sid": "PerJobLogStreams",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:{identity.partition}:logs:*:{identity.account}:log-group:*",
            },
            {
                "Sid": "ScaleInProtectionThroughTheEcsAgent",
                "Effect": "Allow",
                "Action": ["ecs:UpdateTaskProtection"],
                "Resource": f"arn:{identity.partition}:ecs:*:{identity.account}:task/*",
            },
        ],
    }


def granted_buckets(document: dict[str, Any] | None) -> set[str]:
    """The buckets a task-role policy written by the bootstrap grants."""
    for statement in (document or {}).get("Statement", []):
        if statement.get("Sid") == TASK_BUCKETS_SID:
            resources = statement.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            return {arn.split(":::", 1)[1] for arn in resources if ":::" in arn and "/" not in arn}
    return set()


def log_export_statements(identity: Identity, bucket: str, region: str) -> list[dict[str, Any]]:
    """What CloudWatch Logs needs to export a log group to s3://bucket/runs/..., from this account
    only (the statements of 'Export log data to Amazon S3' in the CloudWatch Logs guide)."""
    principal = {"Service": f"logs.{region}.amazonaws.com"}
    source = {
        "StringEquals": {"aws:SourceAccount": identity.account},
        "ArnLike": {"aws:SourceArn": f"arn:{identity.partition}:logs:{region}:{identity.account}:log-group:*"},
    }
    bucket_arn = _bucket_arn(identity, bucket)
    return [
        {
            "Sid": LOG_EXPORT_SIDS[0],
            "Effect": "Allow",
            "Principal": principal,
            "Action": "s3:GetBucketAcl",
            "Resource": bucket_arn,
            "Condition": source,
        },
        {
            "Sid": LOG_EXPORT_SIDS[1],
            "Effect": "Allow",
            "Principal": principal,
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/{LOG_EXPORT_PREFIX}/*",
            "Condition": {
                **source,
                "StringEquals": {**source["StringEquals"], "s3:x-amz-acl": "bucket-owner-full-control"},
            },
        },
    ]


def _statements(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    listed = (policy or {}).get("Statement", [])
    return listed if isinstance(listed, list) else [listed]


class _Bootstrap:
    """One bootstrap: the clients, the names, and the ledger of what it changed."""

    def __init__(
        self,
        clients: AwsClients,
        names: BootstrapNames,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.iam: BaseClient = clients.client("iam")
        self.s3: BaseClient = clients.client("s3")
        self.identity = caller_identity(clients.client("sts"))
        self.names = names
        self.clock, self.sleep = clock, sleep
        self.changes: dict[Change, list[str]] = {"created": [], "updated": [], "unchanged": []}

    def note(self, change: Change, what: str) -> None:
        self.changes[change].append(what)
        if change != "unchanged":
            logger.info("Bootstrap: %s %s", change, what)

    def retry(self, call: Callable[[], Any], what: str) -> Any:
        return iam_api.retry_while_missing(
            call,
            what=what,
            deadline_s=PROPAGATION_DEADLINE_S,
            poll_s=PROPAGATION_POLL_S,
            clock=self.clock,
            sleep=self.sleep,
        )

    def foreign(self) -> list[str]:
        """Roles and the instance profile that have our names but not our tag."""
        found = [
            (f"role {name}", iam_api.get_role(self.iam, name))
            for name in self.names.roles
        ]
        profile = self.names.instance_profile
        found.append((f"instance profile {profile}", iam_api.get_instance_profile(self.iam, profile)))
        return [what for what, resource in found if resource is not None and not _is_ours(resource)]

    def role(self, name: str, service: str, policy_arns: tuple[str, ...], description: str) -> str:
        """Create the role, or put an existing one's trust and managed policies right; its ARN."""
        role = iam_api.get_role(self.iam, name)
        if role is None:
            role = iam_api.create_role(self.iam, name, service, description, TAGS)
            for arn in policy_arns:
                self.retry(lambda arn=arn: iam_api.attach_policy(self.iam, name, arn), f"role {name}")
            self.note("created", f"role {name}")
            return role["Arn"]
        changed = service not in iam_api.trusted_services(role)
        if changed:
            iam_api.set_trust(self.iam, name, service)
        missing = sorted(set(policy_arns) - iam_api.attached_policy_arns(self.iam, name))
        for arn in missing:
            iam_api.attach_policy(self.iam, name, arn)
        self.note("updated" if changed or missing else "unchanged", f"role {name}")
        return role["Arn"]

    def instance_profile(self, role_name: str) -> str:
        """The instance profile holding exactly the instance role; its ARN."""
        name = self.names.instance_profile
        profile = iam_api.get_instance_profile(self.iam, name)
        change: Change = "unchanged"
        if profile is None:
            profile = iam_api.create_instance_profile(self.iam, name, TAGS)
            change = "created"
        held = [role["RoleName"] for role in profile.get("Roles", [])]
        if held != [role_name]:
            for other in held:  # a profile holds one role at most
                iam_api.remove_role_from_instance_profile(self.iam, name, other)
            self.retry(
                lambda: iam_api.add_role_to_instance_profile(self.iam, name, role_name),
                f"instance profile {name}",
            )
            change = "created" if change == "created" else "updated"
        self.note(change, f"instance profile {name}")
        return profile["Arn"]

    def task_policy(self, buckets: set[str]) -> None:
        """The task role's inline policy; buckets granted by an earlier bootstrap stay granted."""
        role, policy = self.names.task_role, self.names.task_policy
        current = iam_api.inline_policy(self.iam, role, policy)
        wanted = task_role_policy(self.identity, buckets | granted_buckets(current))
        what = f"inline policy {policy} of role {role} (buckets {', '.join(sorted(granted_buckets(wanted)))})"
        if current == wanted:
            self.note("unchanged", what)
            return
        self.retry(lambda: iam_api.put_inline_policy(self.iam, role, policy, wanted), f"role {role}")
        self.note("created" if current is None else "updated", what)

    def log_export(self, bucket: str, region: str) -> None:
        """Our statements merged into the bucket's policy, the others untouched."""
        policy = s3.bucket_policy(self.s3, bucket)
        statements = _statements(policy)
        ours = [statement for statement in statements if statement.get("Sid") in LOG_EXPORT_SIDS]
        wanted = log_export_statements(self.identity, bucket, region)
        what = f"log-export statements {', '.join(LOG_EXPORT_SIDS)} in the policy of bucket {bucket}"
        if ours == wanted:
            self.note("unchanged", what)
            return
        others = [statement for statement in statements if statement.get("Sid") not in LOG_EXPORT_SIDS]
        s3.put_bucket_policy(
            self.s3, bucket, {"Version": "2012-10-17", **(policy or {}), "Statement": [*others, *wanted]}
        )
        self.note("updated" if ours else "created", what)


def bootstrap(
    clients: AwsClients,
    config: RunConfig,
    *,
    names: BootstrapNames | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BootstrapResult:
    """Make (or put right) the roles, the instance profile and the log-export bucket statements.

    Idempotent. Raises ConfigError before changing anything when the records bucket is missing or a
    role or instance profile of our names exists without our tag.
    """
    names = names or BootstrapNames()
    run = _Bootstrap(clients, names, clock, sleep)
    s3.check_bucket(run.s3, config.bucket, "bucket")
    foreign = run.foreign()
    if foreign:
        raise ConfigError(
            "Bootstrap stopped before changing anything:\n"
            + "\n".join(
                f"  - {what} exists without the tag {BOOTSTRAP_TAG}=true: it was not made by the bootstrap and is "
                "left as it is.\n    fix: delete or rename it, or bootstrap with another name prefix (name_prefix)"
                for what in foreign
            )
        )
    identity = run.identity
    run.role(names.instance_role, EC2, (_policy_arn(identity, INSTANCE_POLICY),), "ECS container instances")
    profile_arn = run.instance_profile(names.instance_role)
    fleet_role_arn = run.role(names.fleet_role, SPOT_FLEET, (_policy_arn(identity, FLEET_POLICY),), "Spot Fleet")
    task_role_arn = run.role(names.task_role, ECS_TASKS, (), "Worker containers (ECS tasks)")
    execution_role_arn = run.role(
        names.execution_role, ECS_TASKS, (_policy_arn(identity, EXECUTION_POLICY),), "Fargate: image pull and logs"
    )
    run.task_policy({config.bucket, config.inputs_bucket, config.outputs_bucket})
    run.log_export(config.bucket, config.region)
    if run.changes["created"] or run.changes["updated"]:
        logger.info("Bootstrap: waiting %.0f s for EC2 to see the IAM changes", SETTLE_S)
        sleep(SETTLE_S)
    return BootstrapResult(
        instance_profile_arn=profile_arn,
        fleet_role_arn=fleet_role_arn,
        task_role_arn=task_role_arn,
        execution_role_arn=execution_role_arn,
        **run.changes,
    )


def destroy(clients: AwsClients, config: RunConfig, *, names: BootstrapNames | None = None) -> DestroyResult:
    """Remove what the bootstrap made: its tagged roles and instance profile, and its statements in
    the records bucket's policy (the policy deleted when nothing else is left in it). Idempotent."""
    names = names or BootstrapNames()
    iam, s3_client = clients.client("iam"), clients.client("s3")
    deleted: list[str] = []
    kept: list[str] = []
    found: list[tuple[str, dict[str, Any] | None, Callable[[], None]]] = [
        (
            f"instance profile {names.instance_profile}",
            iam_api.get_instance_profile(iam, names.instance_profile),
            lambda: iam_api.delete_instance_profile(iam, names.instance_profile),
        )
    ]
    found += [
        (f"role {name}", iam_api.get_role(iam, name), lambda name=name: iam_api.delete_role(iam, name))
        for name in names.roles
    ]
    for what, resource, remove in found:
        if resource is None:
            continue
        if _is_ours(resource):
            remove()
            deleted.append(what)
        else:
            kept.append(f"{what} (no tag {BOOTSTRAP_TAG}=true: not the bootstrap's)")
    if _remove_log_export(s3_client, config.bucket):
        deleted.append(f"log-export statements in the policy of bucket {config.bucket}")
    logger.info("Destroy: deleted %s; kept %s", deleted or "nothing", kept or "nothing")
    return DestroyResult(deleted=deleted, kept=kept)


def _remove_log_export(s3_client: BaseClient, bucket: str) -> bool:
    """Take our statements out of the bucket's policy; True when there were any."""
    try:
        policy = s3.bucket_policy(s3_client, bucket)
    except ClientError as exc:
        if error_code(exc) in s3.MISSING_BUCKET_CODES:
            return False
        raise
    statements = _statements(policy)
    others = [statement for statement in statements if statement.get("Sid") not in LOG_EXPORT_SIDS]
    if policy is None or len(others) == len(statements):
        return False
    if others:
        s3.put_bucket_policy(s3_client, bucket, {**policy, "Statement": others})
    else:
        s3.delete_bucket_policy(s3_client, bucket)
    return True

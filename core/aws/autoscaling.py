"""EC2 Auto Scaling: the run's group of Spot machines, for the ec2-spot backend.

The group has a mixed-instances policy: Spot only, `price-capacity-optimized` (the types and zones
with the most spare capacity, at the lower prices among those), every machine type of the config as
an override, every subnet of the config. It starts empty; the run's ECS capacity provider sets its
desired capacity (managed scaling) and protects machines that run ECS tasks from scale-in, which is
why new machines start protected.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.aws.ec2 import LaunchTemplateRef

logger = logging.getLogger(__name__)

MISSING_GROUP_CODES = frozenset({"ValidationError", "ResourceInUse"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GroupSpec(_Model):
    """What the run's Auto Scaling group is made of."""

    name: str = Field(description="The group's name, derived from the run id.")
    launch_template: LaunchTemplateRef = Field(description="The machines' launch template.")
    machine_types: tuple[str, ...] = Field(min_length=1, description="One override each.")
    subnets: tuple[str, ...] = Field(min_length=1, description="Every subnet the machines may start in.")
    max_machines: int = Field(ge=1, description="MaxSize: the most machines ECS may ask for.")
    max_price_usd_per_hour: float = Field(gt=0, description="SpotMaxPrice per machine-hour.")
    tags: dict[str, str] = Field(description="Tags of the group, passed on to its machines.")


class GroupState(_Model):
    """One reading of the group."""

    name: str
    arn: str
    desired: int = Field(description="DesiredCapacity: machines ECS asks for.")
    max_size: int = Field(description="MaxSize.")
    in_service: int = Field(description="Machines InService.")
    instance_ids: tuple[str, ...] = Field(description="Every machine of the group, whatever its state.")
    tags: dict[str, str]


class LaunchProblem(_Model):
    """A failed scaling activity, with what to do about it."""

    message: str = Field(description="What Auto Scaling said.")
    fix: str = Field(description="What to change.")
    is_configuration_error: bool = Field(description="True: waiting cannot help. False: no Spot capacity now.")


def _mixed_instances_policy(spec: GroupSpec) -> dict[str, Any]:
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {
                "LaunchTemplateId": spec.launch_template.id,
                "Version": str(spec.launch_template.version),
            },
            "Overrides": [{"InstanceType": kind} for kind in spec.machine_types],
        },
        "InstancesDistribution": {
            "OnDemandBaseCapacity": 0,
            "OnDemandPercentageAboveBaseCapacity": 0,
            "SpotAllocationStrategy": "price-capacity-optimized",
            "SpotMaxPrice": format(Decimal(repr(spec.max_price_usd_per_hour)), "f"),
        },
    }


def _state(group: dict[str, Any]) -> GroupState:
    instances = group.get("Instances", [])
    return GroupState(
        name=group["AutoScalingGroupName"],
        arn=group["AutoScalingGroupARN"],
        desired=group["DesiredCapacity"],
        max_size=group["MaxSize"],
        in_service=sum(1 for i in instances if i.get("LifecycleState") == "InService"),
        instance_ids=tuple(i["InstanceId"] for i in instances),
        tags={tag["Key"]: tag["Value"] for tag in group.get("Tags", [])},
    )


def describe_group(autoscaling: BaseClient, name: str) -> GroupState | None:
    """The group, or None when there is none (or it is being deleted)."""
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    live = [group for group in groups if not group.get("Status", "").startswith("Delete")]
    return _state(live[0]) if live else None


def ensure_group(autoscaling: BaseClient, spec: GroupSpec) -> GroupState:
    """Create the group (empty, new machines protected from scale-in), or point an existing one at the
    new launch template version and limits (a retried start); its desired capacity is ECS's."""
    arguments = {
        "AutoScalingGroupName": spec.name,
        "MinSize": 0,
        "MaxSize": spec.max_machines,
        "MixedInstancesPolicy": _mixed_instances_policy(spec),
        "VPCZoneIdentifier": ",".join(spec.subnets),
        "NewInstancesProtectedFromScaleIn": True,
    }
    if describe_group(autoscaling, spec.name) is None:
        autoscaling.create_auto_scaling_group(
            **arguments,
            DesiredCapacity=0,
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in spec.tags.items()],
        )
        logger.info("Created Auto Scaling group %s (up to %d machines)", spec.name, spec.max_machines)
    else:
        autoscaling.update_auto_scaling_group(**arguments)
        logger.info("Auto Scaling group %s exists; updated to this run's launch template", spec.name)
    state = describe_group(autoscaling, spec.name)
    assert state is not None  # just created or updated
    return state


def set_max_size(autoscaling: BaseClient, name: str, max_size: int) -> None:
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=name, MaxSize=max_size)
    logger.info("Auto Scaling group %s: at most %d machine(s)", name, max_size)


def delete_group(autoscaling: BaseClient, name: str) -> tuple[str, ...]:
    """Delete the group with its machines (ForceDelete: scale-in protection does not hold them);
    returns the machines it had. A missing group counts as deleted."""
    state = describe_group(autoscaling, name)
    if state is None:
        return ()
    try:
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    except ClientError as exc:
        if error_code(exc) not in MISSING_GROUP_CODES:
            raise
    logger.info("Deleted Auto Scaling group %s and its %d machine(s)", name, len(state.instance_ids))
    return state.instance_ids


def tagged_groups(autoscaling: BaseClient, tags: dict[str, str]) -> list[GroupState]:
    """Groups carrying all of `tags` (paginated, filtered by AWS)."""
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]
    return [_state(g) for g in paginate(autoscaling, "describe_auto_scaling_groups", "AutoScalingGroups", Filters=filters)]


# Auto Scaling gives the cause of a failed launch only as free text in the activity's StatusMessage,
# with EC2's error code inside it; these are the codes (and one parameter name) that have a fix.
_LAUNCH_PROBLEMS: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (
        re.compile(r"InsufficientInstanceCapacity|UnfulfillableCapacity|capacity-not-available|SpotMaxPriceTooLow"),
        "EC2 has no Spot capacity for these machine types in these subnets now, or not under "
        "fleet.max_price_usd_per_hour: add machine types (fleet.machine_types), subnets of other zones "
        "(fleet.subnets), or raise the price; ECS keeps asking meanwhile",
        False,
    ),
    (
        re.compile(r"MaxSpotInstanceCountExceeded|VcpuLimitExceeded"),
        "the account's Spot vCPU quota is reached: ask for more 'All Standard Spot Instance Requests' (Service "
        "Quotas, EC2) or lower fleet.machines",
        True,
    ),
    (
        re.compile(r"(?i)iamInstanceProfile|instance profile"),
        "fleet.instance_profile_arn must name an instance profile (arn:aws:iam::<account>:instance-profile/<name>) "
        "that exists and holds a role trusted by EC2: run the bootstrap and paste the ARN it prints",
        True,
    ),
    (
        re.compile(r"InvalidSubnet|subnet"),
        "fleet.subnets must be subnets of this region's VPC",
        True,
    ),
    (
        re.compile(r"InvalidGroup|security group"),
        "fleet.security_groups must be security groups of the subnets' VPC",
        True,
    ),
    (
        re.compile(r"InvalidAMIID|InvalidParameterCombination|Unsupported"),
        "a machine type of fleet.machine_types cannot start the ECS-optimized AMI here: remove it or pick another",
        True,
    ),
)


def explain_launch(message: str) -> LaunchProblem:
    for pattern, fix, is_configuration in _LAUNCH_PROBLEMS:
        if pattern.search(message):
            return LaunchProblem(message=message, fix=fix, is_configuration_error=is_configuration)
    return LaunchProblem(
        message=message, fix="see the Auto Scaling group's activity history in the EC2 console", is_configuration_error=False
    )


def launch_problems(autoscaling: BaseClient, name: str, since: datetime) -> list[LaunchProblem]:
    """The group's failed scaling activities since `since`, explained, without repeats."""
    problems: dict[str, LaunchProblem] = {}
    for activity in paginate(autoscaling, "describe_scaling_activities", "Activities", AutoScalingGroupName=name):
        if activity.get("StatusCode") not in {"Failed", "Cancelled"} or activity["StartTime"] < since:
            continue
        problem = explain_launch(activity.get("StatusMessage") or activity.get("Description", ""))
        problems.setdefault(problem.message, problem)
    return list(problems.values())

"""EC2: the fleet file, the launch template and the Spot Fleet request, and watching it fill.

Spot Fleet launch specifications cannot carry `MetadataOptions`, so IMDSv2 could not be required
with Distributed-Something's request shape. The fleet file keeps that shape: its first launch
specification becomes a launch template, which can require IMDSv2, and every launch specification
gives its subnet and zone (`placements`). The request lists one launch-template config per machine
type and placement, so no entry of the fleet file is dropped. The fleet file is checked before any
of this, in core/fleets/spot_fleet.py: entries that differ in more than subnet and zone are refused.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from core.aws.clients import chunks, error_code, paginate
from core.errors import ConfigError, FleetError

logger = logging.getLogger(__name__)

ECS_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
# The ECS-optimized Amazon Linux 2023 AMI keeps Docker's data on its root volume, so the volume
# sized by fleet.ebs_volume_gb is the root one; its snapshot is 30 GB.
ROOT_DEVICE = "/dev/xvda"
ROOT_SNAPSHOT_GB = 30
# Launch specification fields carried into the launch template (InstanceType, SpotPrice,
# WeightedCapacity, UserData and TagSpecifications come from the config instead).
TEMPLATE_FIELDS = frozenset(
    {
        "ImageId",
        "KeyName",
        "IamInstanceProfile",
        "BlockDeviceMappings",
        "NetworkInterfaces",
        "SecurityGroups",
        "SubnetId",
        "Monitoring",
        "EbsOptimized",
        "Placement",
    }
)
MISSING_FLEET_CODES = frozenset({"InvalidSpotFleetRequestId.NotFound", "InvalidSpotFleetRequestId.Malformed"})
MISSING_TEMPLATE_CODES = frozenset({"InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"})
ACTIVE_FLEET_STATES = frozenset({"submitted", "active", "modifying"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LaunchTemplateRef(_Model):
    """A launch template version the fleet request launches from."""

    id: str = Field(description="LaunchTemplateId.")
    version: int = Field(description="The version made from this run's config.")


class FleetState(_Model):
    """One reading of a Spot Fleet request."""

    target: int = Field(description="Machines asked for (TargetCapacity).")
    fulfilled: float = Field(description="Capacity EC2 reports as fulfilled.")
    state: str = Field(description="SpotFleetRequestState: submitted, active, modifying, cancelled_*...")
    active_instances: int = Field(description="Running instances of the fleet.")
    created_at: datetime = Field(description="When the request was made (UTC aware).")


class FleetRecord(_Model):
    """A fleet request found by its tags."""

    id: str = Field(description="SpotFleetRequestId.")
    state: str = Field(description="SpotFleetRequestState.")
    tags: dict[str, str] = Field(description="The request's tags.")
    target: int = Field(description="Machines asked for (TargetCapacity).")
    fulfilled: float = Field(description="Capacity EC2 reports as fulfilled: machines, each weighing 1.")


class MachineSize(_Model):
    """What one machine type offers ECS tasks."""

    vcpus: int = Field(description="Virtual CPUs (1024 ECS cpu units each).")
    memory_mib: int = Field(description="Memory in MiB, before what the system and the ECS agent keep.")


class FleetProblem(_Model):
    """An error event of a fleet request, with what to do about it."""

    code: str = Field(description="The event's sub-type, or the EC2 error code inside its description.")
    message: str = Field(description="What EC2 said.")
    fix: str = Field(description="What to change.")
    is_configuration_error: bool = Field(description="True: waiting cannot help, cancel. False: capacity, wait.")


def user_data(cluster: str) -> str:
    """Base64 shell script joining the ECS cluster; the agent drains a machine on a Spot notice."""
    script = (
        "#!/bin/bash\n"
        f"echo ECS_CLUSTER={cluster} >> /etc/ecs/ecs.config\n"
        "echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config\n"
    )
    return base64.b64encode(script.encode()).decode()


def _tag_specs(resource_types: tuple[str, ...], tags: dict[str, str]) -> list[dict[str, Any]]:
    tag_list = [{"Key": key, "Value": value} for key, value in tags.items()]
    return [{"ResourceType": kind, "Tags": tag_list} for kind in resource_types]


def _block_devices(spec: dict[str, Any], ebs_volume_gb: int) -> list[dict[str, Any]]:
    """The fleet file's mappings with the root volume sized to the config (added when absent).

    A root SnapshotId is dropped: it belongs to the old AMI the fleet file was written for.
    """
    root = {"DeviceName": ROOT_DEVICE, "Ebs": {"VolumeType": "gp3", "DeleteOnTermination": True}}
    others: list[dict[str, Any]] = []
    for mapping in spec.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == ROOT_DEVICE:
            root = mapping
        else:
            others.append(mapping)
    ebs = {key: value for key, value in root.get("Ebs", {}).items() if key != "SnapshotId"}
    return [{**root, "Ebs": {**ebs, "VolumeSize": ebs_volume_gb}}, *others]


def spec_subnets(spec: dict[str, Any]) -> list[str]:
    """One launch specification's subnets: SubnetId (Distributed-Something allowed 'subnet-a, subnet-b'),
    else NetworkInterfaces[0].SubnetId."""
    interface = (spec.get("NetworkInterfaces") or [{}])[0]
    given = spec.get("SubnetId") or interface.get("SubnetId") or ""
    return [subnet.strip() for subnet in str(given).split(",") if subnet.strip()]


def without_placement(spec: dict[str, Any]) -> dict[str, Any]:
    """A launch specification without its subnet and zone (SubnetId, NetworkInterfaces[].SubnetId,
    Placement.AvailabilityZone): what every machine of the fleet shares."""
    shared = {key: value for key, value in spec.items() if key not in ("SubnetId", "Placement", "NetworkInterfaces")}
    placement = {key: value for key, value in (spec.get("Placement") or {}).items() if key != "AvailabilityZone"}
    if placement:
        shared["Placement"] = placement
    if "NetworkInterfaces" in spec:
        shared["NetworkInterfaces"] = [
            {key: value for key, value in interface.items() if key != "SubnetId"}
            for interface in spec["NetworkInterfaces"]
        ]
    return shared


def placements(fleet_file: dict[str, Any]) -> list[dict[str, str]]:
    """Each subnet (and zone, Placement.AvailabilityZone) of every launch specification, in order and
    without repeats, as launch-template overrides: machines may start in any of them."""
    found: list[dict[str, str]] = []
    for spec in fleet_file["LaunchSpecifications"]:
        zone = (spec.get("Placement") or {}).get("AvailabilityZone")
        for subnet in spec_subnets(spec) or [None]:
            placement = {key: value for key, value in (("SubnetId", subnet), ("AvailabilityZone", zone)) if value}
            if placement not in found:
                found.append(placement)
    return found


def launch_template_data(
    fleet_file: dict[str, Any], *, ebs_volume_gb: int, cluster: str, image_id: str, tags: dict[str, str]
) -> dict[str, Any]:
    """LaunchTemplateData from the fleet file's first launch specification and the config.

    `image_id` is used when the fleet file names none. IMDSv2 is required, with a hop limit of 2 so
    containers on the bridge network reach it (the worker watches Spot notices there). The public IP
    setting is the fleet file's, untouched (Distributed-Something's ASSIGN_IP test was inverted).
    Subnet and zone are left to the request's overrides (`placements`), one per launch specification.
    """
    spec = without_placement(fleet_file["LaunchSpecifications"][0])
    data: dict[str, Any] = {
        key: spec[key]
        for key in ("KeyName", "IamInstanceProfile", "Monitoring", "EbsOptimized", "Placement", "NetworkInterfaces")
        if key in spec
    }
    if "SecurityGroups" in spec and "NetworkInterfaces" not in spec:
        data["SecurityGroupIds"] = [group["GroupId"] for group in spec["SecurityGroups"]]
    data.update(
        ImageId=spec.get("ImageId") or image_id,
        BlockDeviceMappings=_block_devices(spec, ebs_volume_gb),
        UserData=user_data(cluster),
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
        TagSpecifications=_tag_specs(("instance", "volume"), tags),
    )
    return data


def ensure_launch_template(ec2: BaseClient, name: str, data: dict[str, Any], tags: dict[str, str]) -> LaunchTemplateRef:
    """Create the launch template, or add a version with `data` when it exists (a retried start)."""
    try:
        template = ec2.create_launch_template(
            LaunchTemplateName=name, LaunchTemplateData=data, TagSpecifications=_tag_specs(("launch-template",), tags)
        )["LaunchTemplate"]
        logger.info("Created launch template %s", name)
        return LaunchTemplateRef(id=template["LaunchTemplateId"], version=template["LatestVersionNumber"])
    except ClientError as exc:
        if error_code(exc) != "InvalidLaunchTemplateName.AlreadyExistsException":
            raise
    version = ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData=data)
    version = version["LaunchTemplateVersion"]
    return LaunchTemplateRef(id=version["LaunchTemplateId"], version=version["VersionNumber"])


def delete_launch_template(ec2: BaseClient, name: str) -> None:
    """Delete the launch template by name; a missing one counts as deleted."""
    found = paginate(
        ec2,
        "describe_launch_templates",
        "LaunchTemplates",
        Filters=[{"Name": "launch-template-name", "Values": [name]}],
    )
    for template in found:
        try:
            ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
        except ClientError as exc:
            if error_code(exc) not in MISSING_TEMPLATE_CODES:
                raise
        logger.info("Deleted launch template %s", name)


def client_token(run_id: str) -> str:
    """The request's idempotency token: botocore's own retries of a lost response get the same fleet."""
    return f"distributed-{run_id}"[:64]


def build_spot_fleet_request(
    fleet_file: dict[str, Any],
    *,
    launch_template: LaunchTemplateRef,
    run_id: str,
    machine_types: tuple[str, ...],
    machines: int,
    max_price_usd_per_hour: float,
    tags: dict[str, str],
    valid_from: datetime,
    valid_until: datetime,
) -> dict[str, Any]:
    """The SpotFleetRequestConfig: one launch-template config per machine type and placement (subnet
    and zone, from every launch specification), the price to the cent's fraction (Distributed-Something
    rounded it to cents), UTC validity (it sent local time as UTC), and surplus machines are never
    terminated by a lower target (they finish their jobs)."""
    for moment in (valid_from, valid_until):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("valid_from and valid_until must be timezone-aware (UTC)")
    template = {"LaunchTemplateId": launch_template.id, "Version": str(launch_template.version)}
    configs = [
        {"LaunchTemplateSpecification": template, "Overrides": [{"InstanceType": kind, **placement}]}
        for kind in machine_types
        for placement in placements(fleet_file) or [{}]
    ]
    return {
        "IamFleetRole": fleet_file["IamFleetRole"],
        "AllocationStrategy": "priceCapacityOptimized",
        "TargetCapacity": machines,
        "SpotPrice": format(Decimal(repr(max_price_usd_per_hour)), "f"),
        "Type": "maintain",
        "TerminateInstancesWithExpiration": True,
        "ExcessCapacityTerminationPolicy": "noTermination",
        "ValidFrom": valid_from,
        "ValidUntil": valid_until,
        "ClientToken": client_token(run_id),
        "LaunchTemplateConfigs": configs,
        "TagSpecifications": _tag_specs(("spot-fleet-request",), tags),
    }


def resolve_ecs_ami(ssm: BaseClient, region: str) -> str:
    """The current ECS-optimized Amazon Linux 2023 AMI of the region (AWS's public SSM parameter)."""
    try:
        return ssm.get_parameter(Name=ECS_AMI_PARAMETER)["Parameter"]["Value"]
    except ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            raise ConfigError(
                f"no ECS-optimized Amazon Linux 2023 AMI is published in {region}; set ImageId in "
                "the fleet file's launch specification"
            ) from exc
        raise


def machine_sizes(ec2: BaseClient, machine_types: list[str]) -> dict[str, MachineSize]:
    """EC2's vCPUs and memory of each machine type; types EC2 does not know are left out."""
    sizes: dict[str, MachineSize] = {}
    for kind in machine_types:  # one call each: a single unknown type fails the whole call
        try:
            described = ec2.describe_instance_types(InstanceTypes=[kind])["InstanceTypes"]
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceType":
                continue
            raise
        for info in described:
            sizes[kind] = MachineSize(
                vcpus=info["VCpuInfo"]["DefaultVCpus"], memory_mib=info["MemoryInfo"]["SizeInMiB"]
            )
    return sizes


def request_fleet(ec2: BaseClient, config: dict[str, Any]) -> str:
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]
    logger.info("Requested Spot Fleet %s for %d machine(s)", fleet_id, config["TargetCapacity"])
    return fleet_id


def _tags(described: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}


def tagged_fleets(ec2: BaseClient, tags: dict[str, str], *, active_only: bool = True) -> list[FleetRecord]:
    """Fleet requests carrying all of `tags` (paginated), the still-running ones only by default, with
    their capacity: one listing answers a status reading, whatever the number of fleets."""
    found = []
    for request in paginate(ec2, "describe_spot_fleet_requests", "SpotFleetRequestConfigs"):
        config = request["SpotFleetRequestConfig"]
        record = FleetRecord(
            id=request["SpotFleetRequestId"],
            state=request["SpotFleetRequestState"],
            tags=_tags(request),
            target=config["TargetCapacity"],
            fulfilled=config.get("FulfilledCapacity", 0.0),
        )
        if all(record.tags.get(k) == v for k, v in tags.items()) and (
            record.state in ACTIVE_FLEET_STATES or not active_only
        ):
            found.append(record)
    return found


def _describe_fleet(ec2: BaseClient, fleet_id: str) -> dict[str, Any] | None:
    try:
        requests = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    except ClientError as exc:
        if error_code(exc) in MISSING_FLEET_CODES:
            return None
        raise
    return requests[0] if requests else None  # moto forgets cancelled requests at once


def fleet_instance_ids(ec2: BaseClient, fleet_id: str) -> set[str]:
    return {
        i["InstanceId"]
        for i in paginate(ec2, "describe_spot_fleet_instances", "ActiveInstances", SpotFleetRequestId=fleet_id)
    }


def fleet_state(ec2: BaseClient, fleet_id: str) -> FleetState | None:
    """The fleet's capacity and state, or None when EC2 no longer knows it."""
    request = _describe_fleet(ec2, fleet_id)
    if request is None:
        return None
    config = request["SpotFleetRequestConfig"]
    active = len(fleet_instance_ids(ec2, fleet_id)) if request["SpotFleetRequestState"] in ACTIVE_FLEET_STATES else 0
    return FleetState(
        target=config["TargetCapacity"],
        fulfilled=config.get("FulfilledCapacity", 0.0),
        state=request["SpotFleetRequestState"],
        active_instances=active,
        # moto leaves CreateTime out; EC2 always sends it
        created_at=request.get("CreateTime") or datetime.now().astimezone(),
    )


def set_target_capacity(ec2: BaseClient, fleet_id: str, target: int) -> None:
    """Change the number of machines; a lower target never terminates a busy machine."""
    ec2.modify_spot_fleet_request(
        SpotFleetRequestId=fleet_id, TargetCapacity=target, ExcessCapacityTerminationPolicy="noTermination"
    )
    logger.info("Spot Fleet %s: target %d machine(s)", fleet_id, target)


def cancel_fleet(ec2: BaseClient, fleet_id: str) -> None:
    """Cancel the request and terminate its machines. Idempotent: gone or cancelled counts as done."""
    request = _describe_fleet(ec2, fleet_id)
    if request is None or request["SpotFleetRequestState"].startswith("cancelled"):
        return
    response = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    for failed in response.get("UnsuccessfulFleetRequests", []):
        code = failed.get("Error", {}).get("Code", "")
        if code not in {"fleetRequestIdDoesNotExist", "fleetRequestNotInCancellableState"}:
            raise FleetError(f"Spot Fleet {fleet_id} could not be cancelled: {code} {failed.get('Error')}")
    logger.info("Cancelled Spot Fleet %s; its machines are terminating", fleet_id)


# Each known error event: (sub-types, EC2 error codes, description marker, fix, configuration error?).
# History records carry the EC2 error only inside free text ("... Error Code: InvalidSubnetID.NotFound"),
# so codes are read from there; the instance-profile case has no code, only the parameter's name.
_KNOWN_ERRORS: tuple[tuple[frozenset[str], frozenset[str], str, str, bool], ...] = (
    (
        frozenset({"iamFleetRoleInvalid"}),
        frozenset({"UnauthorizedOperation", "AuthFailure"}),
        "not authorized",
        "the fleet file's IamFleetRole must trust spotfleet.amazonaws.com and carry the AWS-managed policy "
        "AmazonEC2SpotFleetTaggingRole; the flow's credentials need iam:PassRole on it and on the "
        "instance profile's role",
        True,
    ),
    (
        frozenset(),
        frozenset(),
        "iamInstanceProfile.arn",
        "LaunchSpecifications[0].IamInstanceProfile.Arn must be an instance profile ARN "
        "(arn:aws:iam::<account>:instance-profile/<name>), not a role ARN, and the profile must exist",
        True,
    ),
    (
        frozenset(),
        frozenset({"InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed", "InvalidSubnetID"}),
        "",
        "the fleet file's subnet does not exist in this region: set SubnetId (or NetworkInterfaces[0].SubnetId) to a "
        "subnet of the region's VPC",
        True,
    ),
    (
        frozenset(),
        frozenset({"InvalidGroup.NotFound", "InvalidGroupId.Malformed", "InvalidGroup"}),
        "",
        "the fleet file's security group does not exist in the subnet's VPC: fix SecurityGroups / "
        "NetworkInterfaces[0].Groups",
        True,
    ),
    (
        frozenset(),
        frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Malformed"}),
        "",
        "the fleet file's ImageId does not exist in this region: remove it to use the current ECS-optimized AMI",
        True,
    ),
    (
        frozenset(),
        frozenset({"InvalidKeyPair.NotFound"}),
        "",
        "the fleet file's KeyName is not a key pair of this region: fix or remove it",
        True,
    ),
    (
        frozenset({"allLaunchSpecsTemporarilyBlacklisted", "launchSpecTemporarilyBlacklisted", "launchSpecUnusable"}),
        frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity"}),
        "",
        "EC2 has no Spot capacity for these machine types now: wait, add machine types (fleet.machine_types) or raise "
        "fleet.max_price_usd_per_hour",
        False,
    ),
    (
        frozenset({"spotInstanceCountLimitExceeded"}),
        frozenset({"MaxSpotInstanceCountExceeded"}),
        "",
        "the account's Spot vCPU quota is reached: ask for a higher 'All Standard Spot Instance Requests' quota "
        "(Service Quotas, EC2) or use fewer machines",
        False,
    ),
)
_ERROR_CODE = re.compile(r"Error Code: ([\w.]+)")


def explain(sub_type: str, description: str) -> FleetProblem:
    """The problem behind one error event; an unknown one is reported as is and not cancelled for."""
    found = _ERROR_CODE.search(description)
    code = found.group(1) if found else sub_type
    for sub_types, codes, marker, fix, is_configuration in _KNOWN_ERRORS:
        if sub_type in sub_types or code in codes or (marker and marker in description):
            return FleetProblem(code=code, message=description, fix=fix, is_configuration_error=is_configuration)
    return FleetProblem(
        code=code,
        message=description,
        fix="see the Spot Fleet request's history in the EC2 console",
        is_configuration_error=False,
    )


def fleet_errors(ec2: BaseClient, fleet_id: str, since: datetime) -> list[FleetProblem]:
    """The fleet's error events since `since` (UTC aware), explained, without repeats.

    The history has no paginator; NextToken is followed by hand. A record without EventDescription
    (Distributed-Something crashed on it with KeyError) is explained from its sub-type alone.
    """
    problems: dict[tuple[str, str], FleetProblem] = {}
    token: dict[str, str] = {}
    while True:
        page = ec2.describe_spot_fleet_request_history(
            SpotFleetRequestId=fleet_id, EventType="error", StartTime=since, **token
        )
        for record in page.get("HistoryRecords", []):
            information = record.get("EventInformation", {})
            sub_type = information.get("EventSubType", "unknown")
            problem = explain(sub_type, information.get("EventDescription", sub_type))
            problems[(problem.code, problem.message)] = problem
        if not page.get("NextToken"):
            return list(problems.values())
        token = {"NextToken": page["NextToken"]}


def describe_problems(fleet_id: str, problems: list[FleetProblem]) -> str:
    lines = [f"Spot Fleet {fleet_id} failed:"]
    lines += [f"  - {p.code}: {p.message}\n    fix: {p.fix}" for p in problems]
    return "\n".join(lines)


def wait_for_capacity(
    ec2: BaseClient,
    fleet_id: str,
    wanted: int,
    *,
    deadline_s: float,
    poll_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    """Wait until `wanted` machines run or `deadline_s` passes; returns how many run.

    Partial capacity at the deadline is returned, not raised: the fleet keeps filling in the
    background. A configuration error (see FleetProblem) cancels the fleet and raises FleetError
    listing every problem with its fix; capacity problems are logged once and waited out.
    """
    deadline = clock() + deadline_s
    seen: set[FleetProblem] = set()
    running = -1
    while True:
        state = fleet_state(ec2, fleet_id)
        if state is None or state.state not in ACTIVE_FLEET_STATES:
            raise FleetError(
                f"Spot Fleet {fleet_id} is gone ({state.state if state else 'not found'}); "
                "was it cancelled outside this run?"
            )
        if state.active_instances != running:
            running = state.active_instances
            logger.info("Spot Fleet %s: %d of %d machine(s) running", fleet_id, running, wanted)
        if running >= wanted:
            return running
        problems = fleet_errors(ec2, fleet_id, since=state.created_at)
        if any(problem.is_configuration_error for problem in problems):
            cancel_fleet(ec2, fleet_id)
            raise FleetError(describe_problems(fleet_id, problems))
        for problem in set(problems) - seen:
            logger.warning("Spot Fleet %s: %s (%s). %s", fleet_id, problem.code, problem.message, problem.fix)
        seen |= set(problems)
        if clock() >= deadline:
            logger.warning(
                "Spot Fleet %s: %d of %d machine(s) after %.0f s; going on with those while it fills",
                fleet_id,
                running,
                wanted,
                deadline_s,
            )
            return running
        sleep(poll_s)


TERMINATE_LIMIT = 1000  # TerminateInstances: instance ids per call


def terminate_instances(ec2: BaseClient, instance_ids: set[str]) -> None:
    """Terminate these machines now. Only for machines known to run nothing: there is no draining."""
    for batch in chunks(sorted(instance_ids), TERMINATE_LIMIT):
        ec2.terminate_instances(InstanceIds=batch)
    if instance_ids:
        logger.info("Terminated %d machine(s): %s", len(instance_ids), ", ".join(sorted(instance_ids)))

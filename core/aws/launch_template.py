"""The launch template a fleet's machines start from, made from the fleet file.

Spot Fleet launch specifications cannot carry `MetadataOptions`, so IMDSv2 could not be required
with Distributed-Something's request shape. The fleet file keeps that shape: its first launch
specification becomes a launch template, which can require IMDSv2, and every launch specification
gives its subnet and zone (`placements`), which the fleet request (core/aws/ec2.py) lists as
overrides. The fleet file is checked before any of this, in core/fleets/fleet_file.py.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.errors import ConfigError

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
MISSING_TEMPLATE_CODES = frozenset({"InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"})


class LaunchTemplateRef(BaseModel):
    """A launch template version the fleet request launches from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="LaunchTemplateId.")
    version: int = Field(description="The version made from this run's config.")


def user_data(cluster: str) -> str:
    """Base64 shell script joining the ECS cluster; the agent drains a machine on a Spot notice."""
    script = (
        "#!/bin/bash\n"
        f"echo ECS_CLUSTER={cluster} >> /etc/ecs/ecs.config\n"
        "echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config\n"
    )
    return base64.b64encode(script.encode()).decode()


def tag_specs(resource_types: tuple[str, ...], tags: dict[str, str]) -> list[dict[str, Any]]:
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
        TagSpecifications=tag_specs(("instance", "volume"), tags),
    )
    return data


def ensure_launch_template(ec2: BaseClient, name: str, data: dict[str, Any], tags: dict[str, str]) -> LaunchTemplateRef:
    """Create the launch template, or add a version with `data` when it exists (a retried start)."""
    try:
        template = ec2.create_launch_template(
            LaunchTemplateName=name, LaunchTemplateData=data, TagSpecifications=tag_specs(("launch-template",), tags)
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

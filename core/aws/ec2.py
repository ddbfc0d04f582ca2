"""EC2: the Spot Fleet request, watching it fill, its error events, and the machines.

The request launches from the launch template made of the fleet file (core/aws/launch_template.py)
and lists one launch-template config per machine type and placement (subnet and zone, from every
launch specification), so no entry of the fleet file is dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import chunks, error_code, paginate
from prefect_distributed.core.aws.launch_template import LaunchTemplateRef, placements, tag_specs
from prefect_distributed.core.errors import FleetError

logger = logging.getLogger(__name__)

MISSING_FLEET_CODES = frozenset({"InvalidSpotFleetRequestId.NotFound", "InvalidSpotFleetRequestId.Malformed"})
ACTIVE_FLEET_STATES = frozenset({"submitted", "active", "modifying"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
        "TagSpecifications": tag_specs(("spot-fleet-request",), tags),
    }


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

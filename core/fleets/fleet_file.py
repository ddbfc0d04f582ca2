"""The fleet file (Distributed-Something's SpotFleetRequestConfig): read it, and name every mistake in
it with its value and the fix, offline, before any AWS call.

Its first launch specification is the template of every machine; each further entry adds a subnet
and zone, and may differ from the first in nothing else (core/aws/launch_template.py turns them into
one launch template and its overrides). The example's placeholders (account XXXXXXXXXXXX, subnet-WWWWWWWW,
sg-ZZZZZZZZZ, your_key_file_name) are caught here, so preflight never blames them on the account.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect_distributed.core.aws import launch_template as template_api
from prefect_distributed.core.errors import ConfigError

DS_DOCKER_DEVICE = "/dev/xvdcz"  # Distributed-Something's devicemapper disk (Amazon Linux 1)
ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
INSTANCE_PROFILE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")
ARN_ACCOUNT = re.compile(r"^arn:aws[\w-]*:iam::(?P<account>[^:]*):")
SUBNET_ID = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
GROUP_ID = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
KEY_PLACEHOLDER = re.compile(r"(?i)^your[-_]")  # Distributed-Something's your_key_file_name, your-key-file.pem
CONFIG_FIELDS = frozenset({"InstanceType", "SpotPrice", "WeightedCapacity", "UserData", "TagSpecifications"})


def _arn_problem(field: str, value: str, kind: str, pattern: re.Pattern[str]) -> str | None:
    """What is wrong with an IAM ARN of the fleet file, its value quoted; None when it is well formed."""
    if pattern.match(value):
        return None
    found = ARN_ACCOUNT.match(value)
    if found and not re.fullmatch(r"\d{12}", found["account"]):
        return (
            f"{field} {value!r}: {found['account']!r} is a placeholder, not an account id. Fix: put your 12-digit "
            "account id there (aws sts get-caller-identity), or run the bootstrap and paste the ARN it prints"
        )
    return f"{field} {value!r} is not an IAM {kind} ARN (arn:aws:iam::<12 digits>:{kind}/<name>)"


def _fleet_role_problems(fleet_file: dict[str, Any]) -> list[str]:
    role = fleet_file.get("IamFleetRole")
    if not role:
        return [
            "IamFleetRole is missing: give the ARN of the Spot Fleet role, "
            "arn:aws:iam::<account>:role/aws-ec2-spot-fleet-tagging-role"
        ]
    return [problem for problem in [_arn_problem("IamFleetRole", str(role), "role", ROLE_ARN)] if problem]


def _instance_profile_problems(spec: dict[str, Any]) -> list[str]:
    field = "LaunchSpecifications[0].IamInstanceProfile.Arn"
    profile = str(spec.get("IamInstanceProfile", {}).get("Arn", ""))
    if ":role/" in profile:
        return [
            f"{field} {profile!r} is a role ARN; give the instance profile's ARN instead: "
            "arn:aws:iam::<account>:instance-profile/<name> (IAM console, the role's page, 'Instance profile ARNs')"
        ]
    if not profile:
        if spec.get("IamInstanceProfile", {}).get("Name"):
            return []
        return [
            f"{field} is missing: machines need an instance profile (arn:aws:iam::<account>:instance-profile/<name>) "
            "to join the ECS cluster"
        ]
    return [p for p in [_arn_problem(field, profile, "instance-profile", INSTANCE_PROFILE_ARN)] if p]


def _network_problems(index: int, spec: dict[str, Any]) -> list[str]:
    """Subnets of one launch specification; security groups and the key of the first (the others share them)."""
    where = f"LaunchSpecifications[{index}]"
    interface = (spec.get("NetworkInterfaces") or [{}])[0]
    subnet_field = f"{where}.SubnetId" if spec.get("SubnetId") else f"{where}.NetworkInterfaces[0].SubnetId"
    subnets = template_api.spec_subnets(spec)
    problems = [] if subnets else [f"{where}: no subnet; set SubnetId, or NetworkInterfaces[0].SubnetId"]
    problems += [
        f"{subnet_field} {subnet!r} is a placeholder or a typo, not a subnet id (subnet- and 8 or 17 hex digits). "
        "Fix: set a subnet of your VPC (aws ec2 describe-subnets)"
        for subnet in subnets
        if not SUBNET_ID.match(subnet)
    ]
    if index:
        return problems
    groups = [(f"{where}.SecurityGroups", g.get("GroupId", "")) for g in spec.get("SecurityGroups", [])] or [
        (f"{where}.NetworkInterfaces[0].Groups", group) for group in interface.get("Groups", [])
    ]
    if not groups:
        problems.append(
            f"{where}: no security group; set SecurityGroups [{{'GroupId': 'sg-...'}}], "
            "or NetworkInterfaces[0].Groups ['sg-...']"
        )
    problems += [
        f"{field} {group!r} is a placeholder or a typo, not a security group id (sg- and 8 or 17 hex digits). "
        "Fix: set a security group of the subnet's VPC (aws ec2 describe-security-groups)"
        for field, group in groups
        if not GROUP_ID.match(str(group))
    ]
    key = str(spec.get("KeyName", ""))
    if KEY_PLACEHOLDER.match(key):
        problems.append(
            f"{where}.KeyName {key!r} is the example's placeholder. Fix: set the name of one of your region's key "
            "pairs (aws ec2 describe-key-pairs), without .pem, or remove KeyName (no SSH access then)"
        )
    return problems


def _entry_problems(index: int, first: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """An entry after the first may differ from it only in subnet and zone: every machine starts from one
    launch template made of the first entry; the others give their subnet and zone to the request."""
    shared = {k: v for k, v in template_api.without_placement(first).items() if k not in CONFIG_FIELDS}
    own = {k: v for k, v in template_api.without_placement(spec).items() if k not in CONFIG_FIELDS}
    differing = sorted(key for key in shared.keys() | own.keys() if shared.get(key) != own.get(key))
    if not differing:
        return []
    fields = ", ".join(differing)
    return [
        f"LaunchSpecifications[{index}] differs from LaunchSpecifications[0] in {fields}: every machine starts from "
        "one launch template made of entry 0, so entries may differ only in subnet (SubnetId, "
        f"NetworkInterfaces[0].SubnetId) and zone (Placement.AvailabilityZone). Fix: make {fields} the same as in "
        f"entry 0, or remove entry {index}"
    ]


def fleet_file_problems(fleet_file: dict[str, Any]) -> list[str]:
    """Every mistake in a fleet file that would make EC2 refuse or fail the request, with the fix; offline.

    Every LaunchSpecifications entry is checked (each gives the fleet a subnet and zone; none is
    dropped), and the example's placeholders (account XXXXXXXXXXXX, subnet-WWWWWWWW, sg-ZZZZZZZZZ,
    your_key_file_name) are named with their value before any AWS call.
    """
    specs = fleet_file.get("LaunchSpecifications")
    problems = _fleet_role_problems(fleet_file)
    if not isinstance(specs, list) or not specs or not all(isinstance(spec, dict) for spec in specs):
        return [
            *problems,
            "LaunchSpecifications is missing: give a list of launch specifications (the first is the template of "
            "every machine; the others may add subnets and zones), as in deployments/aws/fleet.example.json",
        ]
    spec: dict[str, Any] = specs[0]
    problems += _instance_profile_problems(spec)
    unknown = sorted(spec.keys() - template_api.TEMPLATE_FIELDS - CONFIG_FIELDS)
    if unknown:
        problems.append(f"LaunchSpecifications[0]: {', '.join(unknown)} not supported here; remove them")
    for index, entry in enumerate(specs):
        problems += _network_problems(index, entry)
        if index:
            problems += _entry_problems(index, spec, entry)
    if any(m.get("DeviceName") == DS_DOCKER_DEVICE for m in spec.get("BlockDeviceMappings", [])):
        problems.append(
            f"LaunchSpecifications[0].BlockDeviceMappings: {DS_DOCKER_DEVICE} was Distributed-Something's "
            "Docker disk on Amazon Linux 1; Amazon Linux 2023 keeps containers on the root volume, sized "
            "by fleet.ebs_volume_gb: remove this mapping"
        )
    return problems


def read_fleet_file(path: Path) -> dict[str, Any]:
    """Parse a fleet file (JSON) without judging its fields; raises ConfigError when it cannot be read."""
    try:
        fleet_file = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"fleet.fleet_file {path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"fleet.fleet_file {path}: not valid JSON ({exc})") from None
    if not isinstance(fleet_file, dict):
        raise ConfigError(f"fleet.fleet_file {path}: expected a JSON object (a SpotFleetRequestConfig)")
    return fleet_file


def load_fleet_file(path: Path) -> dict[str, Any]:
    """Read a fleet file (JSON); raises ConfigError listing every problem in it at once."""
    fleet_file = read_fleet_file(path)
    problems = fleet_file_problems(fleet_file)
    if problems:
        raise ConfigError(f"fleet.fleet_file {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return fleet_file


def fleet_file_image(fleet_file: dict[str, Any]) -> str | None:
    specs = fleet_file.get("LaunchSpecifications") or [{}]
    return specs[0].get("ImageId")

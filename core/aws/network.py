"""EC2 network reads for preflight: a fleet file's subnet, security groups, routes, VPC endpoints,
key pair and AMI. Each answers None or False for what the region does not have, instead of raising,
so that preflight can report every missing thing at once."""

from __future__ import annotations

from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import error_code, paginate

MISSING_SUBNET_CODES = frozenset({"InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed", "InvalidSubnetID"})
MISSING_GROUP_CODES = frozenset({"InvalidGroup.NotFound", "InvalidGroupId.Malformed", "InvalidGroupId.NotFound"})
MISSING_KEY_CODES = frozenset({"InvalidKeyPair.NotFound"})
MISSING_IMAGE_CODES = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"})
GONE_ENDPOINT_STATES = frozenset({"deleting", "deleted", "rejected", "failed", "expired"})
DEFAULT_ROUTE = "0.0.0.0/0"


def _first(ec2: BaseClient, operation: str, key: str, missing: frozenset[str], **kwargs: Any) -> dict[str, Any] | None:
    try:
        found = getattr(ec2, operation)(**kwargs)[key]
    except ClientError as exc:
        if error_code(exc) in missing:
            return None
        raise
    return found[0] if found else None


def subnet(ec2: BaseClient, subnet_id: str) -> dict[str, Any] | None:
    """The subnet of this region, or None (an id from another region is not found here)."""
    return _first(ec2, "describe_subnets", "Subnets", MISSING_SUBNET_CODES, SubnetIds=[subnet_id])


def security_group(ec2: BaseClient, group_id: str) -> dict[str, Any] | None:
    return _first(ec2, "describe_security_groups", "SecurityGroups", MISSING_GROUP_CODES, GroupIds=[group_id])


def key_pair_exists(ec2: BaseClient, name: str) -> bool:
    return _first(ec2, "describe_key_pairs", "KeyPairs", MISSING_KEY_CODES, KeyNames=[name]) is not None


def image_exists(ec2: BaseClient, image_id: str) -> bool:
    return _first(ec2, "describe_images", "Images", MISSING_IMAGE_CODES, ImageIds=[image_id]) is not None


def route_table(ec2: BaseClient, found_subnet: dict[str, Any]) -> dict[str, Any] | None:
    """The subnet's route table: the one associated with it, else its VPC's main table."""
    for filters in (
        [{"Name": "association.subnet-id", "Values": [found_subnet["SubnetId"]]}],
        [{"Name": "vpc-id", "Values": [found_subnet["VpcId"]]}, {"Name": "association.main", "Values": ["true"]}],
    ):
        tables = list(paginate(ec2, "describe_route_tables", "RouteTables", Filters=filters))
        if tables:
            return tables[0]
    return None


def default_routes(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's working routes to anywhere (0.0.0.0/0); blackholed ones left out."""
    return [
        route
        for route in table.get("Routes", [])
        if route.get("DestinationCidrBlock") == DEFAULT_ROUTE and route.get("State", "active") == "active"
    ]


def default_route_targets(table: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(internet gateway, NAT gateway) the table's working default routes lead to; None where none does."""
    routes = default_routes(table) if table else []
    gateway = next((r["GatewayId"] for r in routes if str(r.get("GatewayId", "")).startswith("igw-")), None)
    nat = next((r["NatGatewayId"] for r in routes if r.get("NatGatewayId")), None)
    return gateway, nat


def endpoint_services(ec2: BaseClient, vpc_id: str) -> set[str]:
    """Service names (com.amazonaws.<region>.<service>) of the VPC's endpoints in use."""
    return {
        endpoint["ServiceName"]
        for endpoint in paginate(
            ec2, "describe_vpc_endpoints", "VpcEndpoints", Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
        )
        if endpoint.get("State", "available").lower() not in GONE_ENDPOINT_STATES
    }

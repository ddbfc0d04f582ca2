"""Preflight of the machines' network: every subnet of the fleet file, its security groups, and a
path to ECS (a public IP and an internet gateway, a NAT gateway, or VPC endpoints)."""

from __future__ import annotations

from typing import Any

from botocore.client import BaseClient

from prefect_distributed.core.aws import launch_template as template_api
from prefect_distributed.core.aws import network
from prefect_distributed.core.fleets.fleet_file import GROUP_ID, SUBNET_ID
from prefect_distributed.core.preflight_rows import CheckRow, row_ok, row_problem

# What a machine in a subnet without a route to the internet needs: ECS for the agent, and the
# services the worker calls (S3 through a gateway endpoint, SQS and CloudWatch Logs interfaces).
ENDPOINT_SERVICES = ("ecs", "ecs-agent", "ecs-telemetry", "sqs", "s3", "logs")


class NetworkChecks:
    """The network rows of one fleet file in one region."""

    def __init__(self, ec2: BaseClient, region: str, specs: list[dict[str, Any]]) -> None:
        self.ec2 = ec2
        self.region = region
        self.specs = specs
        self.spec: dict[str, Any] = specs[0] if specs else {}
        self.interface: dict[str, Any] = (self.spec.get("NetworkInterfaces") or [{}])[0]

    def rows(self) -> list[CheckRow]:
        """Every subnet of every launch specification, and the security groups: against the subnet's VPC
        when it is found, and for existence in the region when none is. Placeholders and malformed ids
        are left to the fleet-file rows, so a placeholder is not blamed on the region."""
        subnet_ids = list(
            dict.fromkeys(
                subnet
                for spec in self.specs
                for subnet in template_api.spec_subnets(spec)
                if SUBNET_ID.match(subnet)
            )
        )
        rows: list[CheckRow] = []
        found_any = False
        for subnet_id in subnet_ids:
            found = network.subnet(self.ec2, subnet_id)
            if found is None:
                rows.append(
                    row_problem(
                        "subnet",
                        f"subnet {subnet_id} does not exist in {self.region}; a subnet belongs to one region, so one "
                        "from another region is not found here",
                        f"use a subnet of {self.region} (aws ec2 describe-subnets --region {self.region}), or set "
                        "region to the subnet's region",
                    )
                )
                continue
            found_any = True
            rows.append(row_ok("subnet", f"subnet {subnet_id} in {found['VpcId']}, {found['AvailabilityZone']}"))
            rows += self._security_groups(found)
            rows.append(self._reach(found))
        if not found_any:
            rows += self._security_groups(None)
        return list(dict.fromkeys(rows))

    def _security_groups(self, found_subnet: dict[str, Any] | None) -> list[CheckRow]:
        group_ids = [group["GroupId"] for group in self.spec.get("SecurityGroups", [])] or list(
            self.interface.get("Groups", [])
        )
        vpc = found_subnet["VpcId"] if found_subnet else None
        filters = f" --filters Name=vpc-id,Values={vpc}" if vpc else ""
        look_up = f"aws ec2 describe-security-groups{filters} --region {self.region}"
        where = vpc or "the subnet's VPC"
        rows = []
        for group_id in filter(GROUP_ID.match, group_ids):
            group = network.security_group(self.ec2, group_id)
            if group is None:
                rows.append(
                    row_problem(
                        "security group",
                        f"security group {group_id} does not exist in {self.region}",
                        f"use a security group of {where} ({look_up})",
                    )
                )
            elif vpc is None:
                rows.append(
                    row_ok(
                        "security group",
                        f"security group {group_id} exists in {self.region}, in {group['VpcId']} (no subnet was "
                        "found to check it against)",
                    )
                )
            elif group["VpcId"] != vpc:
                rows.append(
                    row_problem(
                        "security group",
                        f"security group {group_id} is in {group['VpcId']}, the subnet "
                        f"{found_subnet['SubnetId']} in {vpc}",
                        f"use a security group of {vpc}, or a subnet of {group['VpcId']}",
                    )
                )
            else:
                rows.append(row_ok("security group", f"security group {group_id} is in the subnet's VPC {vpc}"))
        return rows

    def _reach(self, found_subnet: dict[str, Any]) -> CheckRow:
        """Machines reach ECS (and SQS, S3, CloudWatch Logs) with a public IP and a route to an internet
        gateway, through a NAT gateway, or through VPC endpoints."""
        subnet_id, vpc = found_subnet["SubnetId"], found_subnet["VpcId"]
        public_ip = bool(self.interface.get("AssociatePublicIpAddress", found_subnet.get("MapPublicIpOnLaunch")))
        table = network.route_table(self.ec2, found_subnet)
        gateway, nat = network.default_route_targets(table)
        check = "network path to ECS"
        if public_ip and gateway:
            return row_ok(check, f"subnet {subnet_id}: public IP and a route to internet gateway {gateway}")
        if nat:
            return row_ok(check, f"subnet {subnet_id}: route to NAT gateway {nat}")
        present = network.endpoint_services(self.ec2, vpc)
        missing = [s for s in ENDPOINT_SERVICES if f"com.amazonaws.{self.region}.{s}" not in present]
        if not missing:
            return row_ok(check, f"subnet {subnet_id}: VPC endpoints for {', '.join(ENDPOINT_SERVICES)}")
        detail = (
            f"machines in subnet {subnet_id} cannot reach ECS: "
            + ("a public IP, " if public_ip else "no public IP, ")
            + (f"a route to internet gateway {gateway}, " if gateway else "no route to an internet gateway, ")
            + f"no NAT route, no VPC endpoints for {', '.join(missing)}; they would run, paid, without joining "
            "the cluster"
        )
        if gateway:
            fix = (
                'set "AssociatePublicIpAddress": true in LaunchSpecifications[0].NetworkInterfaces[0] of the fleet '
                f"file (the subnet routes to {gateway})"
            )
        elif public_ip:
            fix = f"add a route 0.0.0.0/0 to an internet gateway of {vpc} to the subnet's route table, or use another"
        else:
            fix = (
                "use a public subnet with AssociatePublicIpAddress true, or add a NAT gateway route, or VPC "
                f"endpoints for {', '.join(missing)} (and ecr.api, ecr.dkr for an image in ECR) in {vpc}"
            )
        return row_problem(check, detail, fix)

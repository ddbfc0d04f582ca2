"""Preflight of the fargate and ec2-spot backends against in-process moto: a bootstrapped account with
subnets in two zones passes; each mistake a newcomer makes is a row with its fix; nothing is created.

moto publishes no Fargate or EC2 quotas, so the quota rows are warnings here (on AWS: ok, or a problem
naming the quota to raise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.preflight import run_preflight
from tests.test_fargate import capacity_config
from tests.test_preflight import account, bootstrapped, make_subnet  # noqa: F401 - the account fixture

__all__ = ["account"]


def second_zone(subnet: str, internet: bool = True) -> str:
    """A subnet of another zone in the subnet's VPC, giving public IPs as it does, and routed as it is."""
    ec2 = boto3.client("ec2")
    (first,) = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]
    zone = "us-east-1a" if first["AvailabilityZone"] != "us-east-1a" else "us-east-1b"
    other = ec2.create_subnet(VpcId=first["VpcId"], CidrBlock="10.0.2.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=other, MapPublicIpOnLaunch={"Value": first["MapPublicIpOnLaunch"]})
    if internet:  # the first subnet's route table, to the same internet gateway
        table = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
        ec2.associate_route_table(RouteTableId=table["RouteTables"][0]["RouteTableId"], SubnetId=other)
    return other


def fargate(tmp_path: Path, fleet: dict[str, Any], **container: Any) -> Any:
    return capacity_config(
        tmp_path,
        {"cpu_units": 1024, "memory_mib": 2048, **container},
        {"backend": "fargate", **fleet},
    )


def by_check(report: Any) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    for row in report.rows:
        rows.setdefault(row.check, []).append(row)
    return rows


def test_a_bootstrapped_account_with_subnets_in_two_zones_passes_for_fargate(account: AwsClients, tmp_path: Path) -> None:
    roles = bootstrapped(account)
    subnet, group = make_subnet()
    boto3.client("s3").create_bucket(Bucket="lab-records")
    fleet = {"subnets": [subnet, second_zone(subnet)], "security_groups": [group],
             "execution_role_arn": roles.execution_role_arn, "task_role_arn": roles.task_role_arn}
    report = run_preflight(account, fargate(tmp_path, fleet))
    rows = by_check(report)
    assert report.problems == []
    assert [r.status for r in rows["task size"]] == ["ok"]
    assert rows["execution role"][0].detail == "role distributed-task-execution exists and trusts ecs-tasks.amazonaws.com"
    assert rows["subnet"][0].detail.startswith("2 subnet(s) in us-east-1") and rows["subnet"][0].detail.count("us-east-1") == 2
    assert [r.status for r in rows["network path to ECS and ECR"]] == ["ok", "ok"]
    assert [r.status for r in rows["fargate spot vCPU quota"]] == ["warning"]
    assert boto3.client("ecs").list_clusters()["clusterArns"] == []


def test_a_newcomers_fargate_mistakes_are_each_a_problem_with_its_fix(account: AwsClients, tmp_path: Path) -> None:
    subnet, _ = make_subnet(internet=False)
    boto3.client("s3").create_bucket(Bucket="lab-records")
    fleet = {"subnets": [subnet], "assign_public_ip": False}
    report = run_preflight(account, fargate(tmp_path, fleet, memory_mib=3000))
    rows = by_check(report)
    assert "container.memory_mib 3000" in rows["task size"][0].detail
    assert rows["execution role"][0].status == "problem"
    assert "run the bootstrap" in rows["execution role"][0].fix
    assert rows["subnet"][0].status == "warning" and "another zone" in rows["subnet"][0].fix
    (path,) = rows["network path to ECS and ECR"]
    assert path.status == "problem" and "ecr.api, ecr.dkr, s3, logs, sqs" in path.detail


def test_a_fargate_config_without_subnets_is_one_problem_naming_the_setting(account: AwsClients, tmp_path: Path) -> None:
    boto3.client("s3").create_bucket(Bucket="lab-records")
    report = run_preflight(account, fargate(tmp_path, {}))
    (row,) = by_check(report)["fleet settings"]
    assert row.status == "problem" and "fleet.subnets" in row.detail


def test_ec2_spot_checks_the_instance_profile_the_sizes_and_the_machines_path_to_ecs(
    account: AwsClients, tmp_path: Path
) -> None:
    boto3.client("s3").create_bucket(Bucket="lab-records")
    subnet, group = make_subnet(public=True)
    fleet = {"backend": "ec2-spot", "subnets": [subnet, second_zone(subnet)], "security_groups": [group],
             "machine_types": ["m5.large"], "tasks_per_machine": 3}
    config = capacity_config(tmp_path, {"cpu_units": 1024, "memory_mib": 2048}, fleet)
    rows = by_check(run_preflight(account, config))
    assert rows["instance profile"][0].status == "problem"
    assert "does not fit m5.large" in rows["fleet settings"][0].detail

    roles = bootstrapped(account)
    fleet.update(instance_profile_arn=roles.instance_profile_arn, machine_types=["m5.xlarge"])
    config = capacity_config(tmp_path, {"cpu_units": 1024, "memory_mib": 2048}, fleet)
    report = run_preflight(account, config)
    rows = by_check(report)
    assert report.problems == []
    assert rows["instance profile"][0].detail == "instance profile distributed-ecs-instance holds role distributed-ecs-instance"
    assert [r.status for r in rows["spot vCPU quota"]] == ["warning"]

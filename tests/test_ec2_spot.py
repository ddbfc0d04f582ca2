"""The ec2-spot backend against in-process moto: the launch template, Auto Scaling group and capacity
provider start makes, scale-in, 'cheapest' mode, stop from the run id alone, and a group that cannot
launch turned into its fix.

moto keeps an Auto Scaling group's mixed-instances policy and an ECS capacity provider's settings, but
no ECS managed scaling runs: the group stays at the capacity it is given. moto's scaling activities
never fail, so a failed launch is answered by a before-call handler.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from prefect_distributed.core.aws.autoscaling import explain_launch
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets import Ec2SpotFleet
from prefect_distributed.core.fleets.ec2_spot import Ec2SpotSettings
from tests.fakes import FakeClock
from tests.test_fargate import capacity_config, start
from tests.test_preflight import make_subnet
from tests.test_preflight_capacity import second_zone

pytestmark = pytest.mark.usefixtures("aws_mock")

PROFILE = "arn:aws:iam::123456789012:instance-profile/distributed-ecs-instance"


def config(tmp_path: Path, subnets: list[str], **fleet: Any) -> Any:
    ec2_spot = {
        "backend": "ec2-spot",
        "machines": 3,
        "tasks_per_machine": 2,
        "machine_types": ["m5.xlarge", "c5.xlarge"],
        "max_price_usd_per_hour": 0.12,
        "subnets": subnets,
        "instance_profile_arn": PROFILE,
    }
    return capacity_config(tmp_path, {"cpu_units": 1024, "memory_mib": 2048}, {**ec2_spot, **fleet})


def fleet_for(run_config: Any, clock: FakeClock | None = None) -> Ec2SpotFleet:
    clock = clock or FakeClock()
    return Ec2SpotFleet(
        AwsClients(boto3.session.Session(), "us-east-1"), Ec2SpotSettings.from_config(run_config), clock=clock, sleep=clock.sleep
    )


def failed_launches(fleet: Ec2SpotFleet, message: str) -> None:
    """moto's scaling activities never fail: a before-call handler answers with one failed launch, and an
    after-call handler makes the service run no ECS task (moto's reports them running at once)."""
    failed = {
        "ActivityId": "a1",
        "AutoScalingGroupName": "distributed-r1",
        "Cause": "an instance was started in response to a difference between desired and actual capacity",
        "StartTime": datetime.now(UTC) + timedelta(seconds=5),
        "StatusCode": "Failed",
        "StatusMessage": message,
        "Progress": 100,
    }

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://autoscaling.us-east-1.amazonaws.com", 200, {}, None), {"Activities": [failed]}

    fleet._autoscaling.meta.events.register("before-call.autoscaling.DescribeScalingActivities", answer)
    fleet._ecs.meta.events.register(
        "after-call.ecs.DescribeServices",
        lambda parsed, **_: [service.update(runningCount=0) for service in parsed.get("services", [])],
    )


def two_zones() -> list[str]:
    subnet, _ = make_subnet()
    return [subnet, second_zone(subnet)]


def test_start_makes_a_spot_group_of_every_type_and_subnet_behind_a_capacity_provider(tmp_path: Path) -> None:
    subnets = two_zones()
    handle = start(fleet_for(config(tmp_path, subnets)))
    assert (handle.backend, handle.id, handle.workers) == ("ec2-spot", "lab/r1", 6)
    autoscaling, ecs, ec2 = boto3.client("autoscaling"), boto3.client("ecs"), boto3.client("ec2")
    (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["distributed-r1"])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 3, 0)
    assert group["NewInstancesProtectedFromScaleIn"] is True
    assert sorted(group["VPCZoneIdentifier"].split(",")) == sorted(subnets)
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["m5.xlarge", "c5.xlarge"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert policy["InstancesDistribution"]["SpotMaxPrice"] == "0.12"
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["run-id"] == "r1"
    (provider,) = ecs.describe_capacity_providers(capacityProviders=["distributed-r1"])["capacityProviders"]
    assert provider["autoScalingGroupProvider"]["managedScaling"]["status"] == "ENABLED"
    assert provider["autoScalingGroupProvider"]["managedTerminationProtection"] == "ENABLED"
    assert "distributed-r1" in ecs.describe_clusters(clusters=["lab"])["clusters"][0]["capacityProviders"]
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateName="distributed-r1")["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2, as spot-fleet's template
    assert data["IamInstanceProfile"] == {"Arn": PROFILE}
    assert "ECS_CLUSTER=lab" in base64.b64decode(data["UserData"]).decode()
    (service,) = ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"]
    assert service["desiredCount"] == 6


def test_machines_the_group_starts_carry_the_runs_tags_so_cost_and_cleanup_find_them(tmp_path: Path) -> None:
    fleet = fleet_for(config(tmp_path, two_zones()))
    handle = start(fleet)
    boto3.client("autoscaling").set_desired_capacity(AutoScalingGroupName="distributed-r1", DesiredCapacity=2)
    status = fleet.status(handle)
    assert (status.machines_target, status.machines_running) == (2, 2)
    assert fleet.cost(handle).machines == 2


def test_settings_that_cannot_work_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    fleet = fleet_for(config(tmp_path, two_zones(), instance_profile_arn=None, machine_types=["m5.large"], tasks_per_machine=4))
    with pytest.raises(ConfigError) as raised:
        start(fleet)
    assert "fleet.instance_profile_arn is not set" in str(raised.value)
    assert "does not fit m5.large" in str(raised.value)
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("ecs").list_clusters()["clusterArns"] == []


def test_cheapest_mode_keeps_the_group_to_the_machines_it_has(tmp_path: Path) -> None:
    fleet = fleet_for(config(tmp_path, two_zones()))
    handle = start(fleet)
    autoscaling = boto3.client("autoscaling")
    autoscaling.set_desired_capacity(AutoScalingGroupName="distributed-r1", DesiredCapacity=2)
    fleet.hold(handle)
    (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["distributed-r1"])["AutoScalingGroups"]
    assert group["MaxSize"] == 2


def test_stop_from_the_run_id_alone_deletes_group_machines_provider_template_and_task_definitions(tmp_path: Path) -> None:
    start(fleet_for(config(tmp_path, two_zones())))
    boto3.client("autoscaling").set_desired_capacity(AutoScalingGroupName="distributed-r1", DesiredCapacity=2)
    anywhere = Ec2SpotFleet.from_clients(AwsClients(boto3.session.Session(), "us-east-1"))
    assert anywhere.running_fleets() == ["r1"]
    handle = anywhere.handle_for("r1")
    anywhere.stop(handle)
    anywhere.stop(handle)  # idempotent
    autoscaling, ecs, ec2 = boto3.client("autoscaling"), boto3.client("ecs"), boto3.client("ec2")
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert ecs.describe_capacity_providers(capacityProviders=["distributed-r1"])["capacityProviders"] == []
    assert "distributed-r1" not in ecs.describe_clusters(clusters=["lab"])["clusters"][0].get("capacityProviders", [])
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []
    running = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert [i for r in running["Reservations"] for i in r["Instances"]] == []
    assert anywhere.running_fleets() == []


def test_a_group_that_cannot_launch_fails_the_start_with_the_fix(tmp_path: Path) -> None:
    fleet = fleet_for(config(tmp_path, two_zones()))
    failed_launches(
        fleet,
        "Value (distributed-ecs-instance) for parameter iamInstanceProfile.name is invalid. "
        "Invalid IAM Instance Profile name. Launching EC2 instance failed.",
    )
    with pytest.raises(FleetError) as raised:
        start(fleet)
    assert "Invalid IAM Instance Profile name" in str(raised.value)
    assert "fleet.instance_profile_arn must name an instance profile" in str(raised.value)


@pytest.mark.parametrize(
    ("message", "fix", "waiting_helps"),
    [
        ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available",
         "no Spot capacity", True),
        ("Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded",
         "Spot vCPU quota", False),
        ("The subnet ID 'subnet-0abc' does not exist. Launching EC2 instance failed.", "fleet.subnets", False),
    ],
)
def test_each_known_launch_failure_gets_its_fix(message: str, fix: str, waiting_helps: bool) -> None:
    problem = explain_launch(message)
    assert fix in problem.fix and problem.is_configuration_error is not waiting_helps


def test_the_janitor_stops_the_group_of_a_run_that_is_over_and_leaves_a_running_ones(tmp_path: Path) -> None:
    from prefect_distributed.core.janitor import sweep

    subnets = two_zones()
    start(fleet_for(config(tmp_path, subnets)), run_id="over")
    start(fleet_for(config(tmp_path, subnets)), run_id="going")
    clients = AwsClients(boto3.session.Session(), "us-east-1")
    report = sweep(boto3.client("sqs"), [Ec2SpotFleet.from_clients(clients)], lambda run_id: run_id == "over")
    assert report.removed == ["fleet lab/over (run over)"]
    assert report.kept == ["fleet lab/going (run going is not over)"]
    groups = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [group["AutoScalingGroupName"] for group in groups] == ["distributed-going"]


def test_starting_twice_adds_a_template_version_and_keeps_one_group_and_one_provider(tmp_path: Path) -> None:
    fleet = fleet_for(config(tmp_path, two_zones()))
    start(fleet)
    start(fleet)
    groups = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [group["AutoScalingGroupName"] for group in groups] == ["distributed-r1"]
    template = groups[0]["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    assert template["Version"] == "2"
    cluster = boto3.client("ecs").describe_clusters(clusters=["lab"])["clusters"][0]
    assert cluster["capacityProviders"].count("distributed-r1") == 1


def test_a_group_short_of_spot_capacity_is_waited_for_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    fleet = fleet_for(config(tmp_path, two_zones()), clock)
    failed_launches(
        fleet,
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
        "matches your request. Launching EC2 instance failed.",
    )
    with caplog.at_level(logging.WARNING):
        handle = start(fleet)
    assert handle.workers == 6 and clock.now >= 60  # waited to fleet.capacity_wait_s, then went on
    warnings = [record.message for record in caplog.records if "InsufficientInstanceCapacity" in record.message]
    assert len(warnings) == 1 and "add machine types (fleet.machine_types)" in warnings[0]

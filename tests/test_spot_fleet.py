"""The spot-fleet backend against in-process moto: the fleet file, the request it becomes, its error
events, the wait for machines, and start/scale-in/stop of a whole fleet."""

from __future__ import annotations

import base64
import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from prefect_distributed.core.aws import ec2, ecs, launch_template
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets import fleet_file as fleet_file_module
from prefect_distributed.core.fleets import spot_fleet
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.spot_fleet import (
    MACHINE_SIZES,
    SpotFleet,
    SpotFleetSettings,
    resource_name,
    validate_spot_fleet,
)
from tests.ds_files import DS_FILES, needs_ds_files
from tests.fakes import FakeClock
from tests.test_preflight import make_subnet

pytestmark = pytest.mark.usefixtures("aws_mock")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deployments" / "aws" / "fleet.example.json"
TAGS = {"app": "demo", "run-id": "r1", "created-by": "prefect-distributed"}
UTC_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ROLE_AS_PROFILE = (
    "m5.xlarge, ami-0abc, Linux/UNIX: Value (arn:aws:iam::123456789012:role/ecsInstanceRole) for parameter "
    "iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN"
)


def fleet_file(**changes: Any) -> dict[str, Any]:
    """The example fleet file, with a subnet and a security group of moto's account in place of its own."""
    document = json.loads(EXAMPLE.read_text())
    subnet, group = make_subnet()
    document["LaunchSpecifications"][0]["NetworkInterfaces"][0].update(SubnetId=subnet, Groups=[group])
    document["LaunchSpecifications"][0].update(changes)
    return document


def settings(tmp_path: Path, document: dict[str, Any] | None = None, **changes: Any) -> SpotFleetSettings:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document or fleet_file()))
    values: dict[str, Any] = dict(
        app_name="demo",
        region="us-east-1",
        ecs_cluster="demo-cluster",
        machines=2,
        tasks_per_machine=2,
        machine_types=("m5.xlarge", "c5.xlarge"),
        max_price_usd_per_hour=0.123456789,
        ebs_volume_gb=50,
        fleet_file=path,
        image="worker:1",
        cpu_units=1024,
        memory_mib=3000,
        log_group="demo",
        task_role_arn="arn:aws:iam::123456789012:role/worker",
        capacity_wait_s=60,
        poll_s=10,
        fleet_lifetime_s=3600,
    )
    return SpotFleetSettings(**{**values, **changes})


def backend(fleet_settings: SpotFleetSettings | None, clock: FakeClock | None = None) -> SpotFleet:
    clock = clock or FakeClock()
    return SpotFleet(AwsClients(boto3.session.Session(), "us-east-1"), fleet_settings, clock=clock, sleep=clock.sleep)


def start(fleet: SpotFleet, run_id: str = "r1") -> Any:
    return fleet.start(FleetRequest(run_id=run_id, environment={"DISTRIBUTED_RUN_ID": run_id}))


def inject_history(client: Any, *pages: list[dict[str, Any]]) -> None:
    """moto does not implement DescribeSpotFleetRequestHistory, so it cannot produce error events:
    this before-call handler answers the call as EC2 does, one page per call (the one fake here)."""
    remaining = list(pages)

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        records = remaining.pop(0) if remaining else []
        parsed: dict[str, Any] = {"HistoryRecords": records, "StartTime": UTC_NOW}
        if remaining:
            parsed["NextToken"] = "more"
        return AWSResponse("https://ec2.us-east-1.amazonaws.com", 200, {}, None), parsed

    client.meta.events.register("before-call.ec2.DescribeSpotFleetRequestHistory", answer)


def error_record(sub_type: str, description: str | None = None) -> dict[str, Any]:
    information = {"EventSubType": sub_type}
    if description is not None:
        information["EventDescription"] = description
    return {"EventType": "error", "Timestamp": UTC_NOW, "EventInformation": information}


# The fleet file


def test_the_example_fleet_file_loads_and_names_the_roles_the_bootstrap_makes() -> None:
    from prefect_distributed.core.bootstrap import BootstrapNames

    names = BootstrapNames()
    example = fleet_file_module.load_fleet_file(EXAMPLE)
    assert example["IamFleetRole"].endswith(f":role/{names.fleet_role}")
    profile = example["LaunchSpecifications"][0]["IamInstanceProfile"]["Arn"]
    assert profile.endswith(f":instance-profile/{names.instance_profile}")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("IamFleetRole"), "IamFleetRole is missing"),
        (lambda d: d.update(IamFleetRole="aws-ec2-spot-fleet-tagging-role"), "is not an IAM role ARN"),
        (lambda d: d.pop("LaunchSpecifications"), "LaunchSpecifications is missing"),
        (
            lambda d: d["LaunchSpecifications"][0].update(
                IamInstanceProfile={"Arn": "arn:aws:iam::123456789012:role/ecsInstanceRole"}
            ),
            "is a role ARN; give the instance profile's ARN",
        ),
        (lambda d: d["LaunchSpecifications"][0]["NetworkInterfaces"][0].pop("SubnetId"), "no subnet"),
        (lambda d: d["LaunchSpecifications"][0]["NetworkInterfaces"][0].pop("Groups"), "no security group"),
        (
            lambda d: d["LaunchSpecifications"][0]["BlockDeviceMappings"].append({"DeviceName": "/dev/xvdcz"}),
            "Amazon Linux 2023 keeps containers on the root volume",
        ),
    ],
)
def test_each_fleet_file_mistake_is_named_with_its_fix(tmp_path: Path, change: Any, expected: str) -> None:
    document = fleet_file()
    change(document)
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=expected):
        fleet_file_module.load_fleet_file(path)


def test_every_fleet_file_mistake_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    spec = {"SubnetId": "subnet-0123456789abcdef0"}
    path.write_text(json.dumps({"IamFleetRole": "x", "LaunchSpecifications": [spec]}))
    with pytest.raises(ConfigError) as raised:
        fleet_file_module.load_fleet_file(path)
    assert str(raised.value).count("\n  - ") == 3  # role ARN, instance profile, security group


# The request


def request_for(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        launch_template=launch_template.LaunchTemplateRef(id="lt-1", version=3),
        run_id="r1",
        machine_types=("m5.xlarge", "c5.2xlarge"),
        machines=3,
        max_price_usd_per_hour=0.123456789,
        tags=TAGS,
        valid_from=UTC_NOW,
        valid_until=UTC_NOW + timedelta(days=1),
    )
    return ec2.build_spot_fleet_request(document, **{**values, **changes})


def test_the_request_has_one_config_per_machine_type_the_full_price_utc_validity_tags_and_token() -> None:
    document = fleet_file()
    config = request_for(document)
    subnet = document["LaunchSpecifications"][0]["NetworkInterfaces"][0]["SubnetId"]
    assert [c["Overrides"] for c in config["LaunchTemplateConfigs"]] == [
        [{"InstanceType": "m5.xlarge", "SubnetId": subnet}],
        [{"InstanceType": "c5.2xlarge", "SubnetId": subnet}],
    ]
    assert {c["LaunchTemplateSpecification"]["Version"] for c in config["LaunchTemplateConfigs"]} == {"3"}
    assert config["SpotPrice"] == "0.123456789"  # Distributed-Something rounded to cents
    assert config["TargetCapacity"] == 3
    assert (config["Type"], config["AllocationStrategy"]) == ("maintain", "priceCapacityOptimized")
    assert config["TerminateInstancesWithExpiration"] is True
    assert config["ValidFrom"].utcoffset() == timedelta(0)
    assert config["ClientToken"] == ec2.client_token("r1") == request_for(document)["ClientToken"]
    assert config["TagSpecifications"] == [
        {"ResourceType": "spot-fleet-request", "Tags": [{"Key": k, "Value": v} for k, v in TAGS.items()]}
    ]


def test_local_naive_validity_times_are_refused() -> None:
    """Distributed-Something sent local naive time, which botocore sends as UTC."""
    with pytest.raises(ValueError, match="timezone-aware"):
        request_for(fleet_file(), valid_from=datetime.now())


def test_subnets_listed_in_the_launch_specification_become_overrides() -> None:
    document = fleet_file(SubnetId="subnet-a, subnet-b", SecurityGroups=[{"GroupId": "sg-1"}])
    del document["LaunchSpecifications"][0]["NetworkInterfaces"]
    config = request_for(document, machine_types=("m5.large",))
    assert [c["Overrides"] for c in config["LaunchTemplateConfigs"]] == [
        [{"InstanceType": "m5.large", "SubnetId": "subnet-a"}],
        [{"InstanceType": "m5.large", "SubnetId": "subnet-b"}],
    ]
    data = launch_template.launch_template_data(document, ebs_volume_gb=40, cluster="c", image_id="ami-1", tags=TAGS)
    assert data["SecurityGroupIds"] == ["sg-1"]


def test_the_launch_template_joins_the_cluster_requires_imdsv2_and_sizes_the_root_volume() -> None:
    data = launch_template.launch_template_data(
        fleet_file(), ebs_volume_gb=80, cluster="demo-cluster", image_id="ami-ecs", tags=TAGS
    )
    script = base64.b64decode(data["UserData"]).decode()
    assert "echo ECS_CLUSTER=demo-cluster >> /etc/ecs/ecs.config" in script
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in script
    assert "dm.basesize" not in script
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert data["ImageId"] == "ami-ecs"
    assert data["BlockDeviceMappings"][0]["DeviceName"] == "/dev/xvda"
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 80
    assert {spec["ResourceType"] for spec in data["TagSpecifications"]} == {"instance", "volume"}


def test_a_root_volume_is_added_when_the_fleet_file_has_none_and_an_old_snapshot_is_dropped() -> None:
    assert launch_template.launch_template_data(
        fleet_file(BlockDeviceMappings=[]), ebs_volume_gb=30, cluster="c", image_id="a", tags=TAGS
    )["BlockDeviceMappings"] == [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeType": "gp3", "DeleteOnTermination": True, "VolumeSize": 30}}
    ]
    old_root = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8}}
    old = fleet_file(BlockDeviceMappings=[old_root])
    data = launch_template.launch_template_data(old, ebs_volume_gb=30, cluster="c", image_id="a", tags=TAGS)
    assert data["BlockDeviceMappings"][0]["Ebs"] == {"VolumeSize": 30}


@pytest.mark.parametrize("public_ip", [True, False])
def test_the_public_ip_setting_of_the_fleet_file_is_kept_as_written(public_ip: bool) -> None:
    """Distributed-Something's ASSIGN_IP test was inverted and overwrote the fleet file's choice."""
    document = fleet_file()
    document["LaunchSpecifications"][0]["NetworkInterfaces"][0]["AssociatePublicIpAddress"] = public_ip
    original = copy.deepcopy(document)
    data = launch_template.launch_template_data(document, ebs_volume_gb=30, cluster="c", image_id="a", tags=TAGS)
    assert data["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is public_ip
    assert document == original  # the fleet file itself is not changed


def test_the_ecs_optimized_amazon_linux_2023_ami_comes_from_ssm() -> None:
    assert launch_template.resolve_ecs_ami(boto3.client("ssm"), "us-east-1").startswith("ami-")


# Error events


@pytest.mark.parametrize(
    ("sub_type", "description", "code", "fix", "is_configuration"),
    [
        ("iamFleetRoleInvalid", "Spot Fleet does not have permission", "iamFleetRoleInvalid", "iam:PassRole", True),
        (
            "spotFleetRequestConfigurationInvalid",
            "You are not authorized to perform this operation. (Service: "
            "AmazonEC2; Status Code: 403; Error Code: UnauthorizedOperation)",
            "UnauthorizedOperation",
            "IamFleetRole",
            True,
        ),
        (
            "spotFleetRequestConfigurationInvalid",
            ROLE_AS_PROFILE,
            "spotFleetRequestConfigurationInvalid",
            "instance-profile/<name>), not a role ARN",
            True,
        ),
        (
            "spotFleetRequestConfigurationInvalid",
            "m5.xlarge, ami-1, Linux/UNIX: The subnet ID 'subnet-1' does not "
            "exist (Service: AmazonEC2; Status Code: 400; Error Code: InvalidSubnetID.NotFound)",
            "InvalidSubnetID.NotFound",
            "SubnetId",
            True,
        ),
        (
            "spotFleetRequestConfigurationInvalid",
            "m5.xlarge, ami-1, Linux/UNIX: The security group 'sg-1' does not "
            "exist (Service: AmazonEC2; Status Code: 400; Error Code: InvalidGroup.NotFound)",
            "InvalidGroup.NotFound",
            "security group",
            True,
        ),
        (
            "allLaunchSpecsTemporarilyBlacklisted",
            "All launch specifications are blacklisted",
            "allLaunchSpecsTemporarilyBlacklisted",
            "fleet.machine_types",
            False,
        ),
        (
            "launchSpecUnusable",
            "There is no Spot capacity available that matches your request. (Error Code: InsufficientInstanceCapacity)",
            "InsufficientInstanceCapacity",
            "no Spot capacity",
            False,
        ),
    ],
)
def test_each_fleet_error_event_maps_to_its_fix(
    sub_type: str, description: str, code: str, fix: str, is_configuration: bool
) -> None:
    client = boto3.client("ec2")
    inject_history(client, [error_record(sub_type, description)])
    [problem] = ec2.fleet_errors(client, "sfr-1", since=UTC_NOW)
    assert (problem.code, problem.is_configuration_error) == (code, is_configuration)
    assert fix in problem.fix
    assert problem.message == description


def test_an_error_event_without_a_description_does_not_crash_and_every_page_is_read() -> None:
    """Distributed-Something raised KeyError on a record without EventDescription."""
    client = boto3.client("ec2")
    inject_history(
        client, [error_record("iamFleetRoleInvalid")], [error_record("allLaunchSpecsTemporarilyBlacklisted")]
    )
    problems = ec2.fleet_errors(client, "sfr-1", since=UTC_NOW)
    assert [p.code for p in problems] == ["iamFleetRoleInvalid", "allLaunchSpecsTemporarilyBlacklisted"]


# Waiting for machines


def request_moto_fleet(client: Any, machines: int = 2) -> str:
    template = launch_template.ensure_launch_template(
        client,
        "distributed-r1",
        launch_template.launch_template_data(fleet_file(), ebs_volume_gb=30, cluster="c", image_id="ami-1", tags=TAGS),
        TAGS,
    )
    return ec2.request_fleet(
        client,
        request_for(
            fleet_file(),
            launch_template=template,
            machines=machines,
            valid_from=datetime.now(UTC),
            valid_until=datetime.now(UTC) + timedelta(hours=1),
        ),
    )


def test_waiting_returns_the_machines_running_at_the_deadline_without_sleeping_for_real() -> None:
    client, clock = boto3.client("ec2"), FakeClock()
    fleet_id = request_moto_fleet(client, machines=2)
    inject_history(client, [error_record("allLaunchSpecsTemporarilyBlacklisted", "no capacity for c5.2xlarge")])
    running = ec2.wait_for_capacity(client, fleet_id, 3, deadline_s=60, poll_s=20, clock=clock, sleep=clock.sleep)
    assert running == 2
    assert clock.now == 60
    assert ec2.fleet_state(client, fleet_id).state == "active"  # a capacity problem is waited out


def test_a_configuration_error_cancels_the_fleet_and_lists_every_problem_with_its_fix() -> None:
    client, clock = boto3.client("ec2"), FakeClock()
    fleet_id = request_moto_fleet(client, machines=2)
    inject_history(
        client,
        [
            error_record("spotFleetRequestConfigurationInvalid", ROLE_AS_PROFILE),
            error_record("allLaunchSpecsTemporarilyBlacklisted"),
        ],
    )
    with pytest.raises(FleetError) as raised:
        ec2.wait_for_capacity(client, fleet_id, 3, deadline_s=60, poll_s=20, clock=clock, sleep=clock.sleep)
    assert "instance-profile/<name>" in str(raised.value)
    assert "allLaunchSpecsTemporarilyBlacklisted" in str(raised.value)
    assert str(raised.value).count("fix:") == 2
    assert ec2.tagged_fleets(client, {"run-id": "r1"}) == []
    assert clock.now == 0


# The backend


def test_validation_checks_that_containers_fit_each_machine_type(tmp_path: Path) -> None:
    fleet_settings = settings(
        tmp_path,
        machine_types=("m5.large", "c5.xlarge", "z9.huge"),
        memory_mib=4000,
        tasks_per_machine=2,
        cpu_units=2048,
        ebs_volume_gb=22,
    )
    problems = validate_spot_fleet(fleet_settings, fleet_file())
    assert any("8000 MiB does not fit m5.large" in p for p in problems)
    assert any("4096 does not fit m5.large" in p for p in problems)
    assert any("does not fit c5.xlarge" in p for p in problems)
    assert any("'z9.huge' is unknown" in p for p in problems)
    assert any(p.startswith("fleet.ebs_volume_gb") for p in problems)
    assert validate_spot_fleet(settings(tmp_path), fleet_file()) == []


def test_machine_types_missing_from_the_table_are_looked_up_in_ec2(tmp_path: Path) -> None:
    sizes = {**MACHINE_SIZES, **ec2.machine_sizes(boto3.client("ec2"), ["g4dn.xlarge", "z9.huge"])}
    assert sizes["g4dn.xlarge"] == ec2.MachineSize(vcpus=4, memory_mib=16384)
    assert validate_spot_fleet(settings(tmp_path, machine_types=("g4dn.xlarge",)), fleet_file(), sizes) == []


def test_settings_come_from_the_run_config(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text(EXAMPLE.read_text())
    config = parse_config(
        {
            "app_name": "demo",
            "job_file": "jobs.json",
            "command": "run",
            "bucket": "records",
            "container": {"processes": 4},
            "fleet": {
                "machines": 3,
                "tasks_per_machine": 2,
                "fleet_file": "fleet.json",
                "ecs_cluster": "cp",
                "expected_job_minutes": 12,
            },
        },
        "test",
        base_dir=tmp_path,
    )
    fleet_settings = SpotFleetSettings.from_config(config)
    assert (fleet_settings.workers, fleet_settings.ecs_cluster, fleet_settings.log_group) == (6, "cp", "demo")
    assert (fleet_settings.processes, fleet_settings.expected_job_minutes) == (4, 12)
    assert fleet_settings.fleet_file == tmp_path / "fleet.json"


def test_start_sets_up_the_cluster_task_definition_service_and_fleet_of_the_run(tmp_path: Path) -> None:
    handle = start(backend(settings(tmp_path)))
    ecs_client, ec2_client = boto3.client("ecs"), boto3.client("ec2")
    assert (handle.backend, handle.id, handle.workers) == ("spot-fleet", "demo-cluster/r1", 4)
    assert ecs.tags_of(ecs.describe_cluster(ecs_client, "demo-cluster")) == TAGS
    service = ecs.describe_service(ecs_client, "demo-cluster", resource_name("r1"))
    assert service["desiredCount"] == 4
    definition = ecs_client.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    environment = {e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]}
    assert environment == {"DISTRIBUTED_RUN_ID": "r1", "DISTRIBUTED_SPOT_WATCH": "true"}
    [fleet] = ec2.tagged_fleets(ec2_client, {"run-id": "r1", "created-by": "prefect-distributed"})
    described = ec2_client.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet.id])["SpotFleetRequestConfigs"][0]
    assert [s["InstanceType"] for s in described["SpotFleetRequestConfig"]["LaunchSpecifications"]] == [
        "m5.xlarge",
        "c5.xlarge",
    ]
    assert described["SpotFleetRequestConfig"]["SpotPrice"] == "0.123456789"
    assert fleet.tags["ecs-cluster"] == "demo-cluster"
    template = ec2_client.describe_launch_template_versions(LaunchTemplateName=resource_name("r1"))
    data = template["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["ImageId"] == launch_template.resolve_ecs_ami(boto3.client("ssm"), "us-east-1")
    assert backend(None).status(handle).running == 4


def test_starting_again_reuses_the_fleet_and_updates_the_service_in_place(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path))
    first = start(fleet)
    second = start(fleet)
    assert second == first
    assert len(ec2.tagged_fleets(boto3.client("ec2"), {"run-id": "r1"})) == 1
    services = boto3.client("ecs").list_services(cluster="demo-cluster")["serviceArns"]
    assert len(services) == 1


def test_start_refuses_settings_that_cannot_work_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit m5.xlarge"):
        start(backend(settings(tmp_path, memory_mib=16000)))
    assert boto3.client("ecs").list_clusters()["clusterArns"] == []


def test_running_fleets_lists_the_runs_with_an_active_fleet(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path))
    start(fleet, "r1")
    start(fleet, "r2")
    assert fleet.running_fleets() == ["r1", "r2"]
    fleet.stop(fleet.handle_for("r1"))
    assert backend(None).running_fleets() == ["r2"]


def test_stop_from_the_run_id_alone_leaves_nothing_and_stopping_twice_is_fine(tmp_path: Path) -> None:
    start(backend(settings(tmp_path)))
    janitor = backend(None)  # another process: no config, only the run id
    handle = janitor.handle_for("r1")
    assert handle.id == "demo-cluster/r1"
    janitor.stop(handle)
    janitor.stop(handle)
    janitor.stop(janitor.handle_for("r1"))
    ecs_client, ec2_client = boto3.client("ecs"), boto3.client("ec2")
    assert ec2.tagged_fleets(ec2_client, {"run-id": "r1"}) == []
    active = ecs_client.list_task_definitions(familyPrefix=resource_name("r1"), status="ACTIVE")
    assert active["taskDefinitionArns"] == []
    assert ecs.describe_service(ecs_client, "demo-cluster", resource_name("r1")) is None
    assert ecs.describe_cluster(ecs_client, "demo-cluster") is None  # the run created it
    assert ec2_client.describe_launch_templates()["LaunchTemplates"] == []
    assert janitor.status(handle).running == 0


def test_stop_keeps_a_cluster_the_run_did_not_create(tmp_path: Path) -> None:
    boto3.client("ecs").create_cluster(clusterName="demo-cluster")
    fleet = backend(settings(tmp_path))
    fleet.stop(start(fleet))
    assert ecs.describe_cluster(boto3.client("ecs"), "demo-cluster") is not None


def test_scale_in_lowers_the_target_to_the_machines_running_jobs_and_never_raises_it(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machines=3, tasks_per_machine=2))
    handle = start(fleet)
    [record] = ec2.tagged_fleets(boto3.client("ec2"), {"run-id": "r1"})
    fleet.scale_in(handle, busy_jobs=3)  # 3 jobs on 2 containers per machine: 2 machines
    assert ec2.fleet_state(boto3.client("ec2"), record.id).target == 2
    fleet.scale_in(handle, busy_jobs=6)
    assert ec2.fleet_state(boto3.client("ec2"), record.id).target == 2
    fleet.scale_in(handle, busy_jobs=0)
    assert ec2.fleet_state(boto3.client("ec2"), record.id).target == 0


# Scale-in of idle machines. moto differs from AWS here: it starts no service task and so stops none
# when the desired count drops, and it knows nothing of task scale-in protection (the worker's side,
# tests/test_worker_protection.py). So ECS tasks are put on chosen machines with start_task, standing
# for the protected containers of running jobs. moto also keeps terminated machines in
# DescribeSpotFleetInstances, where AWS drops them.


def join_cluster(instance_ids: list[str], cluster: str = "demo-cluster") -> dict[str, str]:
    """Register machines as container instances of the cluster, as their ECS agent does; EC2 id → ARN."""
    ecs_client = boto3.client("ecs")
    return {
        instance_id: ecs_client.register_container_instance(
            cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": instance_id})
        )["containerInstance"]["containerInstanceArn"]
        for instance_id in instance_ids
    }


def run_ecs_tasks(container_instance_arn: str, count: int, run_id: str = "r1") -> None:
    for _ in range(count):
        boto3.client("ecs").start_task(
            cluster="demo-cluster", taskDefinition=resource_name(run_id), containerInstances=[container_instance_arn]
        )


def machine_states(instance_ids: list[str]) -> dict[str, str]:
    reservations = boto3.client("ec2").describe_instances(InstanceIds=instance_ids)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}


def registered_machines(cluster: str = "demo-cluster") -> set[str]:
    ecs_client = boto3.client("ecs")
    arns = ecs_client.list_container_instances(cluster=cluster)["containerInstanceArns"]
    if not arns:
        return set()
    described = ecs_client.describe_container_instances(cluster=cluster, containerInstances=arns)
    return {instance["ec2InstanceId"] for instance in described["containerInstances"]}


def run_fleet(run_id: str = "r1") -> tuple[str, list[str]]:
    [record] = ec2.tagged_fleets(boto3.client("ec2"), {"run-id": run_id})
    return record.id, sorted(ec2.fleet_instance_ids(boto3.client("ec2"), record.id))


def test_scale_in_terminates_only_the_run_s_machines_that_run_no_ecs_task_and_lowers_service_and_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=spot_fleet.__name__)
    fleet = backend(settings(tmp_path, machines=5, tasks_per_machine=2, processes=2))
    handle = start(fleet)
    start(backend(settings(tmp_path, machines=1)), "r2")  # same cluster, another run
    fleet_id, (busy_a, busy_b, idle_c, idle_d, unregistered) = run_fleet()
    [_, (other_machine,)] = run_fleet("r2")
    arns = join_cluster([busy_a, busy_b, idle_c, idle_d, other_machine])  # `unregistered` is still booting
    run_ecs_tasks(arns[busy_a], 2)
    run_ecs_tasks(arns[busy_b], 1)

    # 3 jobs, 2 per container: 2 containers; 2 containers per machine: 1 machine. 5 machines - 1 = 4 may
    # go, but only the 2 registered ones with no ECS task are idle.
    fleet.scale_in(handle, busy_jobs=3)

    everything = [busy_a, busy_b, idle_c, idle_d, unregistered, other_machine]
    expected = {busy_a: "running", busy_b: "running", idle_c: "terminated", idle_d: "terminated"}
    expected |= {unregistered: "running", other_machine: "running"}
    assert machine_states(everything) == expected
    assert registered_machines() == {busy_a, busy_b, other_machine}
    assert ec2.fleet_state(boto3.client("ec2"), fleet_id).target == 1
    assert ecs.describe_service(boto3.client("ecs"), "demo-cluster", resource_name("r1"))["desiredCount"] == 2
    assert "scale-in: 2 idle machine(s) terminated, target 1, service 2 containers" in caplog.text
    assert ecs.describe_service(boto3.client("ecs"), "demo-cluster", resource_name("r2"))["desiredCount"] == 2

    caplog.clear()
    fleet.scale_in(handle, busy_jobs=3)
    assert machine_states(everything) == expected
    assert registered_machines() == {busy_a, busy_b, other_machine}
    assert ec2.fleet_state(boto3.client("ec2"), fleet_id).target == 1
    assert ecs.describe_service(boto3.client("ecs"), "demo-cluster", resource_name("r1"))["desiredCount"] == 2
    assert "scale-in: 0 idle machine(s) terminated, target 1, service 2 containers" in caplog.text


def test_scale_in_terminates_idle_machines_only_down_to_the_new_target(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machines=3, tasks_per_machine=1))
    handle = start(fleet)
    fleet_id, machines = run_fleet()
    join_cluster(machines)  # all idle: the 2 jobs in flight wait out a retry delay, held by no worker
    fleet.scale_in(handle, busy_jobs=2)
    states = machine_states(machines)
    assert sorted(states.values()) == ["running", "running", "terminated"]  # the fleet keeps its target of 2
    assert ec2.fleet_state(boto3.client("ec2"), fleet_id).target == 2
    assert ecs.describe_service(boto3.client("ecs"), "demo-cluster", resource_name("r1"))["desiredCount"] == 2
    fleet.scale_in(handle, busy_jobs=0)
    assert set(machine_states(machines).values()) == {"terminated"}
    assert registered_machines() == set()
    assert ec2.fleet_state(boto3.client("ec2"), fleet_id).target == 0
    assert ecs.describe_service(boto3.client("ecs"), "demo-cluster", resource_name("r1"))["desiredCount"] == 0


def test_a_second_launch_template_of_a_run_becomes_a_new_version_of_the_same_template() -> None:
    """A start retried after its launch template was made but before its fleet was requested."""
    client = boto3.client("ec2")
    data = launch_template.launch_template_data(
        fleet_file(), ebs_volume_gb=30, cluster="c", image_id="ami-12345678", tags=TAGS
    )

    first = launch_template.ensure_launch_template(client, resource_name("r1"), data, TAGS)
    second = launch_template.ensure_launch_template(client, resource_name("r1"), data, TAGS)

    assert (second.id, second.version) == (first.id, first.version + 1)


# Distributed-CellProfiler's fleet file, and fleet files of more than one launch specification

DCP_FLEET = DS_FILES / "dcp" / "exampleFleet_us-east-1.json"


@needs_ds_files
def test_each_placeholder_of_dcps_fleet_file_is_caught_before_any_aws_call_with_its_value(tmp_path: Path) -> None:
    calls: list[str] = []
    fleet = backend(settings(tmp_path, json.loads(DCP_FLEET.read_text())))
    for client in (fleet._ec2, fleet._ecs, fleet._logs, fleet._ssm):
        client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))

    with pytest.raises(ConfigError) as raised:
        start(fleet)

    message = str(raised.value)
    for value, fix in [
        ("IamFleetRole 'arn:aws:iam::XXXXXXXXXXXXX:role/aws-ec2-spot-fleet-tagging-role'", "12-digit account id"),
        ("IamInstanceProfile.Arn 'arn:aws:iam::XXXXXXXXXXXX:instance-profile/ecsInstanceRole'", "12-digit account"),
        ("NetworkInterfaces[0].SubnetId 'subnet-WWWWWWWW' is a placeholder", "set a subnet of your VPC"),
        ("NetworkInterfaces[0].Groups 'sg-ZZZZZZZZZ' is a placeholder", "set a security group of the subnet's VPC"),
        ("LaunchSpecifications[0].KeyName 'your_key_file_name' is the example's placeholder", "describe-key-pairs"),
    ]:
        line = next(line for line in message.splitlines() if value in line)
        assert fix in line
    assert calls == []  # nothing was asked of AWS, let alone created


def two_zones(**second: Any) -> tuple[dict[str, Any], list[str]]:
    """A fleet file of two launch specifications, each in its own subnet and zone of one VPC."""
    client = boto3.client("ec2")
    document = fleet_file()
    first = document["LaunchSpecifications"][0]
    vpc = client.describe_subnets(SubnetIds=[first["NetworkInterfaces"][0]["SubnetId"]])["Subnets"][0]["VpcId"]
    other = client.create_subnet(VpcId=vpc, CidrBlock="10.0.2.0/24", AvailabilityZone="us-east-1b")["Subnet"]
    first["Placement"] = {"AvailabilityZone": "us-east-1a"}
    entry = copy.deepcopy(first)
    entry["NetworkInterfaces"][0]["SubnetId"] = other["SubnetId"]
    entry["Placement"] = {"AvailabilityZone": "us-east-1b"}
    entry.update(second)
    document["LaunchSpecifications"].append(entry)
    return document, [first["NetworkInterfaces"][0]["SubnetId"], other["SubnetId"]]


def test_a_second_launch_specification_adds_its_subnet_and_zone_for_every_machine_type(tmp_path: Path) -> None:
    document, (subnet_a, subnet_b) = two_zones()
    assert fleet_file_module.fleet_file_problems(document) == []

    start(backend(settings(tmp_path, document)))

    [fleet] = ec2.tagged_fleets(boto3.client("ec2"), {"run-id": "r1"})
    described = boto3.client("ec2").describe_spot_fleet_requests(SpotFleetRequestIds=[fleet.id])
    launched = described["SpotFleetRequestConfigs"][0]["SpotFleetRequestConfig"]["LaunchSpecifications"]
    assert sorted((spec["InstanceType"], spec["SubnetId"]) for spec in launched) == sorted(
        (kind, subnet) for kind in ("m5.xlarge", "c5.xlarge") for subnet in (subnet_a, subnet_b)
    )
    overrides = [c["Overrides"] for c in request_for(document, machine_types=("m5.xlarge",))["LaunchTemplateConfigs"]]
    assert overrides == [
        [{"InstanceType": "m5.xlarge", "SubnetId": subnet_a, "AvailabilityZone": "us-east-1a"}],
        [{"InstanceType": "m5.xlarge", "SubnetId": subnet_b, "AvailabilityZone": "us-east-1b"}],
    ]
    # The launch template leaves subnet and zone to the overrides.
    data = launch_template.launch_template_data(document, ebs_volume_gb=30, cluster="c", image_id="ami-1", tags=TAGS)
    assert "SubnetId" not in data["NetworkInterfaces"][0] and "Placement" not in data


def test_a_launch_specification_that_differs_in_more_than_subnet_and_zone_is_refused_by_name(tmp_path: Path) -> None:
    document, _ = two_zones(KeyName="other-key", EbsOptimized=True)
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document))

    with pytest.raises(ConfigError) as raised:
        fleet_file_module.load_fleet_file(path)

    assert "LaunchSpecifications[1] differs from LaunchSpecifications[0] in EbsOptimized, KeyName: every machine" in (
        str(raised.value)
    )
    assert "Fix: make EbsOptimized, KeyName the same as in entry 0, or remove entry 1" in str(raised.value)


def test_a_placeholder_subnet_in_a_later_launch_specification_is_named_with_its_index() -> None:
    document, _ = two_zones()
    document["LaunchSpecifications"][1]["NetworkInterfaces"][0]["SubnetId"] = "subnet-WWWWWWWW"

    [problem] = fleet_file_module.fleet_file_problems(document)

    assert problem.startswith("LaunchSpecifications[1].NetworkInterfaces[0].SubnetId 'subnet-WWWWWWWW' is a placeh")

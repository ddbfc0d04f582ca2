"""Preflight against in-process moto: a broken account gets every problem with its fix in one report,
a bootstrapped and correct one gets none.

What moto cannot answer: the EC2 Spot vCPU quota (its Service Quotas knows only VPC quotas, so the
quota is 'unknown' there, a warning); one test fakes the quota with a before-call handler. Subnets,
route tables, internet gateways, VPC endpoints, key pairs, AMIs, IAM roles and instance profiles,
bucket policies and queue tags are all moto's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto.iam.models
import pytest
from botocore.awsrequest import AWSResponse

from prefect_distributed.core import emulator
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.iam import trust_policy
from prefect_distributed.core.bootstrap import BootstrapResult, bootstrap
from prefect_distributed.core.config import RunConfig, parse_config
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.preflight import PreflightReport, run_preflight
from tests.ds_files import DS_FILES, needs_ds_files
from tests.fakes import FakeClock

RECORDS, IMAGES = "lab-records", "lab-images"
ACCOUNT = "123456789012"


@pytest.fixture
def account(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsClients]:
    """The records and image buckets, in a moto account that knows AWS's managed policies."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    monkeypatch.setattr(moto.iam.models, "aws_managed_policies_data", emulator.our_managed_policies())
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in (RECORDS, IMAGES):
        s3.create_bucket(Bucket=bucket)
    yield AwsClients(boto3.session.Session(), "us-east-1")


def make_subnet(region: str = "us-east-1", *, internet: bool = True, public: bool = False) -> tuple[str, str]:
    """A VPC's subnet (and a security group of that VPC); `internet`: its route table sends
    0.0.0.0/0 to an internet gateway; `public`: the subnet gives machines a public IP.

    The subnet is in the region's first zone: left to moto, it may land in a zone where moto's Spot
    price history offers no price for the machine types the tests use (us-east-1e), as in AWS."""
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]
    if public:
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    if internet:
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    group = ec2.create_security_group(GroupName="workers", Description="workers", VpcId=vpc)["GroupId"]
    return subnet, group


def write_fleet_file(
    tmp_path: Path, *, fleet_role: str, instance_profile: str, subnet: str, group: str, **spec: Any
) -> Path:
    document = {
        "IamFleetRole": fleet_role,
        "AllocationStrategy": "priceCapacityOptimized",
        "Type": "maintain",
        "LaunchSpecifications": [
            {
                "IamInstanceProfile": {"Arn": instance_profile},
                "NetworkInterfaces": [
                    {"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": True, "Groups": [group]}
                ],
                **spec,
            }
        ],
    }
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document))
    return path


def spot_config(fleet_file: Path, **changes: Any) -> RunConfig:
    fleet = {
        "backend": "spot-fleet",
        "fleet_file": str(fleet_file),
        "machines": 4,
        "tasks_per_machine": 1,
        "machine_types": ["m5.xlarge"],
        "task_role_arn": f"arn:aws:iam::{ACCOUNT}:role/distributed-task",
        **changes.pop("fleet", {}),
    }
    settings = {
        "app_name": "cells",
        "job_file": "jobs.json",
        "command": "measure {plate}",
        "bucket": RECORDS,
        "input_bucket": IMAGES,
        "fleet": fleet,
        **changes,
    }
    return parse_config(settings, source="test")


def bootstrapped(account: AwsClients) -> BootstrapResult:
    clock = FakeClock()
    return bootstrap(account, spot_config(Path("unused.json")), clock=clock, sleep=clock.sleep)


def rows_of(report: PreflightReport, check: str) -> list[Any]:
    return [row for row in report.rows if row.check == check]


def correct_fleet_file(tmp_path: Path, account: AwsClients, **spec: Any) -> Path:
    roles = bootstrapped(account)
    subnet, group = make_subnet()
    return write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=roles.instance_profile_arn,
        subnet=subnet,
        group=group,
        **spec,
    )


def test_a_bootstrapped_correct_account_has_no_problem(account: AwsClients, tmp_path: Path) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.create_key_pair(KeyName="lab")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    fleet_file = correct_fleet_file(tmp_path, account, KeyName="lab", ImageId=image)

    report = run_preflight(account, spot_config(fleet_file))

    assert report.problems == []
    # moto's Service Quotas has no EC2 quotas: the only warning is that the quota is unknown.
    assert [(row.check, row.status) for row in report.warnings] == [("spot vCPU quota", "warning")]
    assert "needs fleet.machines × the largest machine type's vCPUs = 16 vCPUs" in report.warnings[0].detail
    assert {row.check for row in report.rows} >= {
        "bucket",
        "fleet role",
        "instance profile",
        "task role",
        "subnet",
        "security group",
        "network path to ECS",
        "key pair",
        "machine image",
        "fleet settings",
        "log export",
    }
    report.raise_for_problems()  # no problem: does not raise


def break_account(account: AwsClients, tmp_path: Path) -> tuple[Path, str]:
    """The mistakes of a first try by hand: an instance role with no instance profile, given by its
    role ARN; a subnet and security group of another region; the image bucket missing; no bootstrap.
    Returns the fleet file and its subnet."""
    iam = account.client("iam")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument=json.dumps(trust_policy("ec2.amazonaws.com")))
    boto3.client("s3", region_name="us-east-1").delete_bucket(Bucket=IMAGES)
    west_subnet, west_group = make_subnet("us-west-2")
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=f"arn:aws:iam::{ACCOUNT}:role/aws-ec2-spot-fleet-tagging-role",
        instance_profile=f"arn:aws:iam::{ACCOUNT}:role/ecsInstanceRole",
        subnet=west_subnet,
        group=west_group,
    )
    return fleet_file, west_subnet


def test_a_broken_account_gets_every_problem_with_its_fix_in_one_report(account: AwsClients, tmp_path: Path) -> None:
    """The instance role was made by hand, without an instance profile, and its role ARN given
    where the instance profile's belongs; the subnet and security group are from another region; the
    containers are larger than the machine; the image bucket is missing; no bootstrap ran."""
    fleet_file, west_subnet = break_account(account, tmp_path)

    report = run_preflight(account, spot_config(fleet_file, container={"memory_mib": 20000}))

    problems = {(row.check, row.detail): row.fix for row in report.problems}
    found = {check for check, _ in problems}
    assert found == {
        "bucket",
        "fleet file",
        "instance profile",
        "fleet role",
        "task role",
        "subnet",
        "security group",
        "fleet settings",
    }
    [profile] = rows_of(report, "instance profile")
    assert "is a role ARN; EC2 wants an instance profile ARN there, and role ecsInstanceRole has no instance" in (
        profile.detail
    )
    assert "aws iam create-instance-profile --instance-profile-name ecsInstanceRole" in profile.fix
    assert f"arn:aws:iam::{ACCOUNT}:instance-profile/ecsInstanceRole" in profile.fix
    [subnet] = rows_of(report, "subnet")
    assert f"subnet {west_subnet} does not exist in us-east-1" in subnet.detail
    assert "from another region is not found here" in subnet.detail
    assert "use a subnet of us-east-1" in subnet.fix
    [sizes] = [row for row in report.problems if row.check == "fleet settings"]
    assert "20000 MiB does not fit m5.xlarge" in sizes.detail
    [bucket] = [row for row in report.problems if row.check == "bucket"]
    assert f"bucket '{IMAGES}' does not exist" in bucket.detail
    assert f"aws s3 mb s3://{IMAGES} --region us-east-1" in bucket.fix
    [fleet_role] = rows_of(report, "fleet role")
    assert "there is no role aws-ec2-spot-fleet-tagging-role" in fleet_role.detail
    assert "distributed/bootstrap" in fleet_role.fix
    [task_role] = rows_of(report, "task role")
    assert "there is no role distributed-task" in task_role.detail
    # Without a bootstrap the records bucket's policy cannot take the log export: a warning.
    [export] = rows_of(report, "log export")
    assert export.status == "warning" and "run the bootstrap" in export.fix
    # The security group is checked though the subnet is not found; the route of that subnet is not.
    [group] = rows_of(report, "security group")
    assert group.detail.endswith("does not exist in us-east-1")
    assert "aws ec2 describe-security-groups --region us-east-1" in group.fix
    assert rows_of(report, "network path to ECS") == []

    with pytest.raises(ConfigError) as raised:
        report.raise_for_problems()
    message = str(raised.value)
    assert message.startswith(f"Preflight found {len(report.problems)} problem(s); nothing was created")
    assert all(row.fix in message and row.detail in message for row in report.problems)


def test_an_instance_profile_that_does_not_exist_is_reported(account: AwsClients, tmp_path: Path) -> None:
    roles = bootstrapped(account)
    subnet, group = make_subnet()
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=f"arn:aws:iam::{ACCOUNT}:instance-profile/ecsInstanceRole",
        subnet=subnet,
        group=group,
    )

    report = run_preflight(account, spot_config(fleet_file))

    [row] = report.problems
    assert row.check == "instance profile"
    assert row.detail == f"there is no instance profile ecsInstanceRole in account {ACCOUNT}"
    assert "set LaunchSpecifications[0].IamInstanceProfile.Arn to the instance profile ARN it prints" in row.fix


def test_a_role_arn_whose_role_has_an_instance_profile_gets_that_profiles_arn_as_fix(
    account: AwsClients, tmp_path: Path
) -> None:
    roles = bootstrapped(account)
    subnet, group = make_subnet()
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=f"arn:aws:iam::{ACCOUNT}:role/distributed-ecs-instance",
        subnet=subnet,
        group=group,
    )

    [row] = rows_of(run_preflight(account, spot_config(fleet_file)), "instance profile")

    assert row.fix == (
        f"set LaunchSpecifications[0].IamInstanceProfile.Arn to {roles.instance_profile_arn}, the instance profile "
        "of role distributed-ecs-instance"
    )


@pytest.mark.parametrize(
    ("internet", "public_ip", "nat", "endpoints", "reachable", "fix"),
    [
        (True, True, False, (), True, ""),
        (True, False, False, (), False, '"AssociatePublicIpAddress": true'),
        (False, True, False, (), False, "add a route 0.0.0.0/0 to an internet gateway"),
        (False, False, True, (), True, ""),
        (False, False, False, ("ecs", "ecs-agent", "ecs-telemetry"), False, "VPC endpoints for sqs, s3, logs"),
        (False, False, False, ("ecs", "ecs-agent", "ecs-telemetry", "sqs", "s3", "logs"), True, ""),
    ],
)
def test_machines_must_reach_ecs_by_internet_gateway_nat_or_vpc_endpoints(
    account: AwsClients,
    tmp_path: Path,
    internet: bool,
    public_ip: bool,
    nat: bool,
    endpoints: tuple[str, ...],
    reachable: bool,
    fix: str,
) -> None:
    roles = bootstrapped(account)
    subnet, group = make_subnet(internet=internet)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    if nat:
        address = ec2.allocate_address(Domain="vpc")["AllocationId"]
        gateway = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=address)["NatGateway"]["NatGatewayId"]
        table = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
        table_id = table["RouteTables"][0]["RouteTableId"]
        ec2.create_route(RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=gateway)
    for service in endpoints:
        ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.us-east-1.{service}")
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=roles.instance_profile_arn,
        subnet=subnet,
        group=group,
    )
    document = json.loads(fleet_file.read_text())
    document["LaunchSpecifications"][0]["NetworkInterfaces"][0]["AssociatePublicIpAddress"] = public_ip
    fleet_file.write_text(json.dumps(document))

    [row] = rows_of(run_preflight(account, spot_config(fleet_file)), "network path to ECS")

    assert (row.status == "ok") is reachable
    assert fix in row.fix


def test_without_network_interfaces_the_subnets_own_public_ip_setting_counts(
    account: AwsClients, tmp_path: Path
) -> None:
    roles = bootstrapped(account)
    subnet, group = make_subnet(public=True)
    fleet_file = tmp_path / "fleet.json"
    spec = {
        "IamInstanceProfile": {"Arn": roles.instance_profile_arn},
        "SubnetId": subnet,
        "SecurityGroups": [{"GroupId": group}],
    }
    fleet_file.write_text(json.dumps({"IamFleetRole": roles.fleet_role_arn, "LaunchSpecifications": [spec]}))

    report = run_preflight(account, spot_config(fleet_file))

    assert report.problems == []
    [row] = rows_of(report, "network path to ECS")
    assert row.detail.startswith(f"subnet {subnet}: public IP and a route to internet gateway igw-")


def test_a_security_group_of_another_vpc_is_a_problem(account: AwsClients, tmp_path: Path) -> None:
    roles = bootstrapped(account)
    subnet, _ = make_subnet()
    _, other_group = make_subnet()
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=roles.instance_profile_arn,
        subnet=subnet,
        group=other_group,
    )

    [row] = run_preflight(account, spot_config(fleet_file)).problems

    assert row.check == "security group" and f"security group {other_group} is in vpc-" in row.detail


def test_a_missing_key_pair_and_image_are_problems(account: AwsClients, tmp_path: Path) -> None:
    fleet_file = correct_fleet_file(tmp_path, account, KeyName="lab.pem", ImageId="ami-0123456789abcdef0")

    report = run_preflight(account, spot_config(fleet_file))

    assert [(row.check, row.detail) for row in report.problems] == [
        (
            "key pair",
            "key pair lab.pem does not exist in us-east-1 (key pairs are per region; KeyName is the name without .pem)",
        ),
        ("machine image", "image ami-0123456789abcdef0 does not exist in us-east-1 (AMI ids are per region)"),
    ]


def spot_quota(client: Any, vcpus: float) -> None:
    """moto's Service Quotas knows no EC2 quota; this before-call handler answers as AWS does."""

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        quota = {"Quota": {"ServiceCode": "ec2", "QuotaCode": "L-34B43A08", "Value": vcpus}}
        return AWSResponse("https://servicequotas.us-east-1.amazonaws.com", 200, {}, None), quota

    client.meta.events.register("before-call.service-quotas.GetServiceQuota", answer)


@pytest.mark.parametrize(("quota", "status"), [(8.0, "problem"), (16.0, "ok")])
def test_the_spot_vcpu_quota_must_cover_the_fleet(
    account: AwsClients, tmp_path: Path, quota: float, status: str
) -> None:
    fleet_file = correct_fleet_file(tmp_path, account)
    spot_quota(account.client("service-quotas"), quota)

    [row] = rows_of(run_preflight(account, spot_config(fleet_file)), "spot vCPU quota")

    assert row.status == status
    assert "= 16 vCPUs" in row.detail


def test_a_queue_name_of_another_app_is_a_problem_and_one_of_this_app_is_reused(account: AwsClients) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    sqs.create_queue(QueueName="shared-jobs", tags={"app": "someone-else"})
    sqs.create_queue(QueueName="shared-jobs-dead", tags={"app": "cells"})
    config = parse_config(
        {"app_name": "cells", "job_file": "j", "command": "x", "bucket": RECORDS, "queue": {"name": "shared-jobs"}},
        source="test",
    )

    report = run_preflight(account, config)

    assert [(row.status, row.detail.split(" ")[1]) for row in rows_of(report, "queue name")] == [
        ("problem", "shared-jobs"),
        ("ok", "shared-jobs-dead"),
    ]
    assert "choose another queue.name" in report.problems[0].fix


def test_the_local_backend_checks_only_buckets_and_queue_names(account: AwsClients) -> None:
    config = parse_config(
        {"app_name": "cells", "job_file": "j.json", "command": "x", "bucket": RECORDS, "output_bucket": "gone-results"},
        source="test",
    )

    report = run_preflight(account, config)

    assert [(row.check, row.status) for row in report.rows] == [("bucket", "ok"), ("bucket", "problem")]


def test_the_bootstrap_and_preflight_flows_publish_their_artifacts(
    account: AwsClients, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from prefect_distributed.core import bootstrap as bootstrap_module
    from prefect_distributed.flows.bootstrap import bootstrap_account
    from prefect_distributed.flows.preflight import preflight

    monkeypatch.setattr(bootstrap_module, "SETTLE_S", 0.0)  # no real wait for IAM propagation
    subnet, group = make_subnet()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(spot_config(tmp_path / "fleet.json").model_dump(mode="json")))

    bootstrapped_state = bootstrap_account(str(config_file), return_state=True)
    roles = bootstrapped_state.result()
    write_fleet_file(
        tmp_path,
        fleet_role=roles.fleet_role_arn,
        instance_profile=roles.instance_profile_arn,
        subnet=subnet,
        group=group,
    )
    passed = preflight(str(config_file), return_state=True)
    report = passed.result()
    (tmp_path / "fleet.json").write_text("{}")
    failed = preflight(str(config_file), return_state=True)

    assert failed.is_failed()
    with pytest.raises(ConfigError, match="IamFleetRole is missing"):
        failed.result()

    def artifact(state: Any, key: str) -> Any:
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
        [found] = [a for a in artifacts if a.key]  # a failed run also has an unnamed result record
        assert found.key == key
        return json.loads(found.data) if key == "preflight" and isinstance(found.data, str) else found.data

    markdown = artifact(bootstrapped_state, "bootstrap")
    assert roles.instance_profile_arn in markdown
    assert '"IamFleetRole": "arn:aws:iam::123456789012:role/distributed-spot-fleet"' in markdown
    good, bad = artifact(passed, "preflight"), artifact(failed, "preflight")
    assert [row["status"] for row in good] == [row.status for row in report.rows]
    assert "problem" not in {row["status"] for row in good}
    assert any(row["status"] == "problem" and row["check"] == "fleet file" for row in bad)


def test_the_run_flow_stops_at_its_preflight_with_every_problem_and_creates_nothing(
    account: AwsClients, prefect_api: None, tmp_path: Path
) -> None:
    from prefect_distributed.flows.distributed import distributed

    fleet_file, _ = break_account(account, tmp_path)
    (tmp_path / "jobs.json").write_text(json.dumps({"output": "results/{plate}", "groups": [{"plate": "P1"}]}))
    config = spot_config(fleet_file, container={"memory_mib": 20000}, job_file=str(tmp_path / "jobs.json"))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))

    with pytest.raises(ConfigError) as raised:
        distributed(config=str(config_file))

    message = str(raised.value)
    for fix in ("create-instance-profile", "use a subnet of us-east-1", "does not fit m5.xlarge", f"s3://{IMAGES}"):
        assert fix in message
    assert boto3.client("sqs", region_name="us-east-1").list_queues().get("QueueUrls", []) == []
    assert boto3.client("ecs", region_name="us-east-1").list_clusters()["clusterArns"] == []
    assert boto3.client("ec2", region_name="us-east-1").describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
    assert boto3.client("logs", region_name="us-east-1").describe_log_groups()["logGroups"] == []


DCP_FLEET = DS_FILES / "dcp" / "exampleFleet_us-east-1.json"


@needs_ds_files
def test_dcps_example_fleet_file_gets_each_placeholder_as_a_fleet_file_row_not_blamed_on_the_region(
    account: AwsClients,
) -> None:
    report = run_preflight(account, spot_config(DCP_FLEET))

    fleet_file_rows = " ".join(row.detail for row in rows_of(report, "fleet file"))
    for value in ("XXXXXXXXXXXXX", "'arn:aws:iam::XXXXXXXXXXXX:instance-profile/ecsInstanceRole'", "'subnet-WWWWWWWW'"):
        assert value in fleet_file_rows
    assert "'sg-ZZZZZZZZZ'" in fleet_file_rows and "'your_key_file_name'" in fleet_file_rows
    # Placeholders are the fleet file's rows only: no subnet 'of another region', no missing key pair.
    assert rows_of(report, "subnet") == rows_of(report, "key pair") == rows_of(report, "security group") == []


def test_every_launch_specifications_subnet_is_checked(account: AwsClients, tmp_path: Path) -> None:
    fleet_file = correct_fleet_file(tmp_path, account)
    document = json.loads(fleet_file.read_text())
    ec2 = boto3.client("ec2", region_name="us-east-1")
    first = document["LaunchSpecifications"][0]["NetworkInterfaces"][0]["SubnetId"]
    vpc = ec2.describe_subnets(SubnetIds=[first])["Subnets"][0]["VpcId"]
    second = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.2.0/24")["Subnet"]["SubnetId"]
    missing = "subnet-0123456789abcdef0"
    for subnet in (second, missing):
        entry = json.loads(json.dumps(document["LaunchSpecifications"][0]))
        entry["NetworkInterfaces"][0]["SubnetId"] = subnet
        document["LaunchSpecifications"].append(entry)
    fleet_file.write_text(json.dumps(document))

    report = run_preflight(account, spot_config(fleet_file))

    assert [(row.status, row.detail.split(" ")[1]) for row in rows_of(report, "subnet")] == [
        ("ok", first),
        ("ok", second),
        ("problem", missing),
    ]
    [group] = rows_of(report, "security group")  # the same group, checked once
    assert group.status == "ok"

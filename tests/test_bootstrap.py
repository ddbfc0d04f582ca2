"""The account bootstrap against in-process moto: what it makes, that a second run changes nothing,
that it never adopts what is not its own, and that destroy removes exactly what it made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto.iam.models
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from prefect_distributed.core import emulator
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.aws.iam import trust_policy
from prefect_distributed.core.bootstrap import BootstrapNames, bootstrap, destroy
from prefect_distributed.core.config import RunConfig, parse_config
from prefect_distributed.core.errors import AwsOperationError, ConfigError
from tests.aws_calls import BOOTSTRAP_ADMIN, RECORDER, granted_actions
from tests.fakes import FakeClock

IAM_POLICIES = Path(__file__).resolve().parents[1] / "deployments" / "aws" / "iam"
RECORDS, IMAGES, RESULTS = "lab-records", "lab-images", "lab-results"
INSTANCE_ROLE, FLEET_ROLE, TASK_ROLE = "distributed-ecs-instance", "distributed-spot-fleet", "distributed-task"
EXECUTION_ROLE = "distributed-task-execution"
ADMIN_GRANTS = granted_actions(json.loads((IAM_POLICIES / "bootstrap-admin-policy.json").read_text()))
OTHER_STATEMENT = {
    "Sid": "CollaboratorsRead",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
    "Action": "s3:GetObject",
    "Resource": f"arn:aws:s3:::{RECORDS}/*",
}


@pytest.fixture
def account(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsClients]:
    """The buckets of the config, in a moto account that knows AWS's managed policies (moto loads
    them only when asked to, before IAM's first call)."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    monkeypatch.setattr(moto.iam.models, "aws_managed_policies_data", emulator.our_managed_policies())
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in (RECORDS, IMAGES, RESULTS):
        s3.create_bucket(Bucket=bucket)
    yield AwsClients(boto3.session.Session(), "us-east-1")


def lab_config(**changes: Any) -> RunConfig:
    settings = {
        "app_name": "cells",
        "job_file": "jobs.json",
        "command": "measure {plate}",
        "bucket": RECORDS,
        "input_bucket": IMAGES,
        "output_bucket": RESULTS,
        **changes,
    }
    return parse_config(settings, source="test")


def bucket_policy() -> dict[str, Any] | None:
    try:
        return json.loads(boto3.client("s3", region_name="us-east-1").get_bucket_policy(Bucket=RECORDS)["Policy"])
    except ClientError:
        return None


def put_bucket_policy(*statements: dict[str, Any]) -> None:
    boto3.client("s3", region_name="us-east-1").put_bucket_policy(
        Bucket=RECORDS, Policy=json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    )


def role_names(iam: Any) -> set[str]:
    return {role["RoleName"] for role in iam.list_roles()["Roles"]}


def test_bootstrap_makes_the_roles_and_the_instance_profile_holding_the_instance_role(account: AwsClients) -> None:
    clock = FakeClock()
    result = bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    iam = account.client("iam")
    assert result.instance_profile_arn == f"arn:aws:iam::123456789012:instance-profile/{INSTANCE_ROLE}"
    assert result.fleet_role_arn == f"arn:aws:iam::123456789012:role/{FLEET_ROLE}"
    assert result.task_role_arn == f"arn:aws:iam::123456789012:role/{TASK_ROLE}"
    profile = iam.get_instance_profile(InstanceProfileName=INSTANCE_ROLE)["InstanceProfile"]
    assert [role["RoleName"] for role in profile["Roles"]] == [INSTANCE_ROLE]
    expected = {
        INSTANCE_ROLE: ("ec2.amazonaws.com", ["AmazonEC2ContainerServiceforEC2Role"]),
        FLEET_ROLE: ("spotfleet.amazonaws.com", ["AmazonEC2SpotFleetTaggingRole"]),
        TASK_ROLE: ("ecs-tasks.amazonaws.com", []),
        EXECUTION_ROLE: ("ecs-tasks.amazonaws.com", ["AmazonECSTaskExecutionRolePolicy"]),
    }
    for name, (service, managed) in expected.items():
        role = iam.get_role(RoleName=name)["Role"]
        assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": service}
        assert {tag["Key"]: tag["Value"] for tag in role["Tags"]} == {
            "created-by": "prefect-distributed",
            "distributed-bootstrap": "true",
        }
        attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        assert [policy["PolicyName"] for policy in attached] == managed
    assert result.execution_role_arn == f"arn:aws:iam::123456789012:role/{EXECUTION_ROLE}"
    assert len(result.created) == 7 and result.updated == [] and result.unchanged == []
    assert clock.now == 10.0  # IAM propagation: one settle wait once something was created


def test_a_second_bootstrap_changes_nothing(account: AwsClients) -> None:
    clock = FakeClock()
    first = bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    iam = account.client("iam")
    state = {name: iam.get_role(RoleName=name)["Role"] for name in (INSTANCE_ROLE, FLEET_ROLE, TASK_ROLE)}
    policy = bucket_policy()

    again = FakeClock()
    second = bootstrap(account, lab_config(), clock=again, sleep=again.sleep)

    assert second.created == [] and second.updated == []
    assert sorted(second.unchanged) == sorted(first.created)
    assert (second.instance_profile_arn, second.fleet_role_arn, second.task_role_arn) == (
        first.instance_profile_arn,
        first.fleet_role_arn,
        first.task_role_arn,
    )
    assert {name: iam.get_role(RoleName=name)["Role"] for name in state} == state
    assert bucket_policy() == policy
    assert again.now == 0.0  # nothing created, nothing to wait for


def test_a_drifted_role_of_the_bootstrap_is_put_right(account: AwsClients) -> None:
    clock = FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    iam = account.client("iam")
    iam.detach_role_policy(
        RoleName=FLEET_ROLE, PolicyArn="arn:aws:iam::aws:policy/service-role/AmazonEC2SpotFleetTaggingRole"
    )
    iam.remove_role_from_instance_profile(InstanceProfileName=INSTANCE_ROLE, RoleName=INSTANCE_ROLE)

    result = bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    assert sorted(result.updated) == [f"instance profile {INSTANCE_ROLE}", f"role {FLEET_ROLE}"]
    assert iam.list_attached_role_policies(RoleName=FLEET_ROLE)["AttachedPolicies"]
    profile = iam.get_instance_profile(InstanceProfileName=INSTANCE_ROLE)["InstanceProfile"]
    assert [role["RoleName"] for role in profile["Roles"]] == [INSTANCE_ROLE]


def test_the_task_role_gets_what_task_role_policy_json_grants_on_the_configs_buckets_only(
    account: AwsClients,
) -> None:
    clock = FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    iam = account.client("iam")
    document = iam.get_role_policy(RoleName=TASK_ROLE, PolicyName="distributed-task-access")["PolicyDocument"]
    shipped = json.loads((IAM_POLICIES / "task-role-policy.json").read_text())
    by_sid = {statement["Sid"]: statement for statement in document["Statement"]}
    assert {sid: granted_actions({"Statement": [s]}) for sid, s in by_sid.items()} == {
        s["Sid"]: granted_actions({"Statement": [s]}) for s in shipped["Statement"]
    }
    assert sorted(by_sid["InputsOutputsRecords"]["Resource"]) == sorted(
        f"arn:aws:s3:::{bucket}{suffix}" for bucket in (RECORDS, IMAGES, RESULTS) for suffix in ("", "/*")
    )
    assert by_sid["TakeJobs"]["Resource"] == "arn:aws:sqs:*:123456789012:*"
    assert not any(p["PolicyArn"].endswith("FullAccess") for p in iam.list_policies(Scope="Local")["Policies"])


def test_a_config_with_other_buckets_adds_them_and_keeps_those_granted_before(account: AwsClients) -> None:
    clock = FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="other-lab-data")

    result = bootstrap(account, lab_config(input_bucket="other-lab-data"), clock=clock, sleep=clock.sleep)

    [change] = result.updated
    assert change.startswith("inline policy distributed-task-access")
    document = account.client("iam").get_role_policy(RoleName=TASK_ROLE, PolicyName="distributed-task-access")
    [buckets] = [s["Resource"] for s in document["PolicyDocument"]["Statement"] if s["Sid"] == "InputsOutputsRecords"]
    assert {arn.removeprefix("arn:aws:s3:::") for arn in buckets if not arn.endswith("/*")} == {
        RECORDS,
        IMAGES,
        RESULTS,
        "other-lab-data",
    }


def test_the_log_export_statements_join_the_bucket_policy_and_leave_the_others_alone(account: AwsClients) -> None:
    put_bucket_policy(OTHER_STATEMENT)
    clock = FakeClock()
    bootstrap(account, lab_config(region="eu-west-1"), clock=clock, sleep=clock.sleep)

    statements = bucket_policy()["Statement"]
    assert statements[0] == OTHER_STATEMENT
    by_sid = {statement["Sid"]: statement for statement in statements[1:]}
    assert set(by_sid) == {"DistributedLogExportAcl", "DistributedLogExportWrite"}
    assert by_sid["DistributedLogExportAcl"]["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}
    assert by_sid["DistributedLogExportAcl"]["Action"] == "s3:GetBucketAcl"
    assert by_sid["DistributedLogExportAcl"]["Resource"] == f"arn:aws:s3:::{RECORDS}"
    assert by_sid["DistributedLogExportWrite"]["Action"] == "s3:PutObject"
    assert by_sid["DistributedLogExportWrite"]["Resource"] == f"arn:aws:s3:::{RECORDS}/runs/*"


def test_destroy_removes_exactly_what_bootstrap_made(account: AwsClients) -> None:
    iam = account.client("iam")
    iam.create_role(RoleName="lab-admin", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
    put_bucket_policy(OTHER_STATEMENT)
    clock = FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    result = destroy(account, lab_config())

    assert sorted(result.deleted) == sorted(
        [
            f"instance profile {INSTANCE_ROLE}",
            f"role {INSTANCE_ROLE}",
            f"role {FLEET_ROLE}",
            f"role {TASK_ROLE}",
            f"role {EXECUTION_ROLE}",
            f"log-export statements in the policy of bucket {RECORDS}",
        ]
    )
    assert role_names(iam) == {"lab-admin"}
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert bucket_policy() == {"Version": "2012-10-17", "Statement": [OTHER_STATEMENT]}
    assert destroy(account, lab_config()).deleted == []  # idempotent


def test_destroy_deletes_the_bucket_policy_that_held_only_its_statements(account: AwsClients) -> None:
    clock = FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    assert bucket_policy() is not None

    destroy(account, lab_config())

    assert bucket_policy() is None


def test_a_role_of_a_bootstrap_name_without_its_tag_is_never_adopted(account: AwsClients) -> None:
    iam = account.client("iam")
    iam.create_role(RoleName=TASK_ROLE, AssumeRolePolicyDocument=json.dumps(trust_policy("ecs-tasks.amazonaws.com")))
    clock = FakeClock()

    with pytest.raises(ConfigError, match=f"role {TASK_ROLE} exists without the tag distributed-bootstrap=true"):
        bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    assert role_names(iam) == {TASK_ROLE}  # nothing created
    assert iam.list_role_policies(RoleName=TASK_ROLE)["PolicyNames"] == []
    assert bucket_policy() is None
    result = destroy(account, lab_config())
    assert result.deleted == [] and result.kept == [
        f"role {TASK_ROLE} (no tag distributed-bootstrap=true: not the bootstrap's)"
    ]
    assert role_names(iam) == {TASK_ROLE}
    # Another prefix is a separate set, next to the user's role.
    other = bootstrap(account, lab_config(), names=BootstrapNames(prefix="cells"), clock=clock, sleep=clock.sleep)
    assert other.task_role_arn.endswith(":role/cells-task")


def test_a_missing_records_bucket_stops_bootstrap_before_anything_is_made(account: AwsClients) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-records' does not exist"):
        bootstrap(account, lab_config(bucket="no-such-records"))
    assert role_names(account.client("iam")) == set()


def not_yet_visible(client: Any, operation: str, times: int) -> list[int]:
    """moto's IAM is consistent at once, so it never shows IAM's propagation delay: this before-call
    handler answers `operation` with NoSuchEntity `times` times, as IAM does right after a create."""
    calls: list[int] = []

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        calls.append(1)
        if len(calls) > times:
            return None
        error = {"Error": {"Code": "NoSuchEntity", "Message": "The role cannot be found."}}
        return AWSResponse("https://iam.amazonaws.com", 404, {}, None), error

    client.meta.events.register(f"before-call.iam.{operation}", answer)
    return calls


def test_bootstrap_waits_out_iam_propagation_with_a_bounded_retry(account: AwsClients) -> None:
    calls = not_yet_visible(account.client("iam"), "AddRoleToInstanceProfile", times=3)
    clock = FakeClock()

    result = bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)

    assert len(calls) == 4
    assert f"instance profile {INSTANCE_ROLE}" in result.created
    assert clock.now == 3 * 2.0 + 10.0  # three 2 s retries, then the settle wait


def test_bootstrap_gives_up_when_iam_never_shows_the_role(account: AwsClients) -> None:
    not_yet_visible(account.client("iam"), "AddRoleToInstanceProfile", times=10_000)
    clock = FakeClock()

    with pytest.raises(AwsOperationError, match="still reports NoSuchEntity after 60 s; run the bootstrap again"):
        bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    assert 60.0 <= clock.now <= 62.0


def test_every_grant_of_the_bootstrap_admin_policy_is_used_by_bootstrap_repair_or_destroy(
    account: AwsClients,
) -> None:
    """tests/aws_calls.py fails the session when bootstrap or destroy calls what the policy does not
    grant; this test runs every path (create, repair, a destroy keeping the bucket policy and one
    deleting it) and checks the other way: the policy grants nothing they never call."""
    before = {action: RECORDER.count(BOOTSTRAP_ADMIN, action) for action in ADMIN_GRANTS}
    iam, clock = account.client("iam"), FakeClock()
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    iam.update_assume_role_policy(RoleName=FLEET_ROLE, PolicyDocument=json.dumps(trust_policy("ec2.amazonaws.com")))
    iam.detach_role_policy(
        RoleName=FLEET_ROLE, PolicyArn="arn:aws:iam::aws:policy/service-role/AmazonEC2SpotFleetTaggingRole"
    )
    iam.remove_role_from_instance_profile(InstanceProfileName=INSTANCE_ROLE, RoleName=INSTANCE_ROLE)
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    destroy(account, lab_config())
    put_bucket_policy(OTHER_STATEMENT)
    bootstrap(account, lab_config(), clock=clock, sleep=clock.sleep)
    destroy(account, lab_config())

    # Tagging on create is authorised as iam:TagRole and iam:TagInstanceProfile, not as calls of its own.
    tagging = {"iam:TagRole", "iam:TagInstanceProfile"}
    unused = sorted(a for a in ADMIN_GRANTS - tagging if RECORDER.count(BOOTSTRAP_ADMIN, a) == before[a])
    assert unused == []
    assert tagging <= ADMIN_GRANTS
    assert all("*" not in action for action in ADMIN_GRANTS)

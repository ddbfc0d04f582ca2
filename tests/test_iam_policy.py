"""The shipped IAM policies, and the recorder (tests/aws_calls.py) that checks them against the calls
the code makes during the tests."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import botocore.session
import pytest

from prefect_distributed.core.aws.sqs import queue_url
from tests.aws_calls import (
    BOOTSTRAP_ADMIN,
    FLOW_USER,
    IAM_DIR,
    NO_REPOSITORY_FRAME,
    RECORDER,
    TASK_ROLE,
    Recorder,
    granted_actions,
    iam_actions,
    iam_prefix,
    never_called,
    not_granted,
    policy_for,
)

POLICIES = sorted(IAM_DIR.glob("*.json"))


def statements(path: Path) -> list[dict]:
    listed = json.loads(path.read_text())["Statement"]
    return [listed] if isinstance(listed, dict) else listed


@pytest.mark.parametrize(
    ("prefix", "operation", "params", "needed"),
    [
        ("sqs", "GetQueueUrl", {"QueueName": "q"}, {"sqs:GetQueueUrl"}),
        ("sqs", "SendMessageBatch", {"Entries": [{"Id": "0", "MessageBody": "{}"}]}, {"sqs:SendMessage"}),
        ("sqs", "DeleteMessageBatch", {}, {"sqs:DeleteMessage"}),
        ("sqs", "ChangeMessageVisibilityBatch", {}, {"sqs:ChangeMessageVisibility"}),
        ("s3", "HeadBucket", {"Bucket": "b"}, {"s3:ListBucket"}),
        ("s3", "ListObjectsV2", {"Bucket": "b"}, {"s3:ListBucket"}),
        ("s3", "ListObjects", {"Bucket": "b"}, {"s3:ListBucket"}),
        ("s3", "HeadObject", {"Bucket": "b", "Key": "k"}, {"s3:GetObject"}),
        ("s3", "CopyObject", {"Bucket": "b", "Key": "k"}, {"s3:GetObject", "s3:PutObject"}),
        ("s3", "GetBucketPolicy", {"Bucket": "b"}, {"s3:GetBucketPolicy"}),
        ("s3", "PutBucketPolicy", {"Bucket": "b"}, {"s3:PutBucketPolicy"}),
        ("s3", "DeleteBucketPolicy", {"Bucket": "b"}, {"s3:DeleteBucketPolicy"}),
        ("sqs", "CreateQueue", {"QueueName": "q", "tags": {"app": "a"}}, {"sqs:CreateQueue", "sqs:TagQueue"}),
        ("sqs", "CreateQueue", {"QueueName": "q", "tags": {}}, {"sqs:CreateQueue"}),
        ("sqs", "TagQueue", {"QueueUrl": "u", "Tags": {"app": "a"}}, {"sqs:TagQueue"}),
        ("logs", "CreateLogGroup", {"tags": {"a": "b"}}, {"logs:CreateLogGroup", "logs:TagResource"}),
        (
            "ec2",
            "RequestSpotFleet",
            {
                "SpotFleetRequestConfig": {
                    "IamFleetRole": "arn:aws:iam::111122223333:role/fleet",
                    "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": [{"Key": "app"}]}],
                }
            },
            {"ec2:RequestSpotFleet", "ec2:CreateTags", "iam:PassRole"},
        ),
        (
            "ecs",
            "RegisterTaskDefinition",
            {"family": "f", "taskRoleArn": "arn:aws:iam::111122223333:role/task", "tags": [{"key": "app"}]},
            {"ecs:RegisterTaskDefinition", "ecs:TagResource", "iam:PassRole"},
        ),
        ("ecs", "RegisterTaskDefinition", {"family": "f", "containerDefinitions": []}, {"ecs:RegisterTaskDefinition"}),
        ("sts", "GetCallerIdentity", {}, set()),
    ],
)
def test_an_api_call_maps_to_the_iam_actions_it_needs(prefix: str, operation: str, params: dict, needed: set) -> None:
    assert iam_actions(prefix, operation, params) == needed


@pytest.mark.parametrize(
    ("service", "prefix"), [("service-quotas", "servicequotas"), ("sqs", "sqs"), ("logs", "logs"), ("ecs", "ecs")]
)
def test_the_iam_prefix_comes_from_the_service_model(service: str, prefix: str) -> None:
    assert iam_prefix(botocore.session.get_session().get_service_model(service)) == prefix


@pytest.mark.parametrize(
    ("paths", "policy"),
    [
        (["core/aws/sqs.py", "tasks/setup.py", "tests/test_flow_end_to_end.py"], FLOW_USER),
        (["tasks/report.py"], FLOW_USER),
        (["flows/janitor.py"], FLOW_USER),
        (["blocks/config.py"], FLOW_USER),
        (["worker/loop.py", "worker/main.py"], TASK_ROLE),
        (["tests/fakes.py", "worker/loop.py", "tests/test_worker_core.py"], TASK_ROLE),
        (["core/aws/iam.py", "core/bootstrap.py"], BOOTSTRAP_ADMIN),
        (["tests/test_queues.py"], None),
        (["tests/test_queues.py", "core/aws/sqs.py"], None),
        (["deployments/demo/data.py", "deployments/local_stack.py"], None),
        (["benchmarks/common.py", "core/aws/sqs.py"], None),
        (["core/emulator.py", "tests/conftest.py"], None),
        ([], None),
    ],
)
def test_a_call_is_held_against_the_policy_of_the_code_that_made_it(paths: list[str], policy: str | None) -> None:
    assert policy_for(paths) == policy


def test_a_call_made_from_core_is_recorded_against_the_flow_user_policy(aws_mock: None) -> None:
    before = RECORDER.count(FLOW_USER, "sqs:GetQueueUrl")

    assert queue_url(boto3.client("sqs", region_name="us-east-1"), "absent") is None

    assert RECORDER.count(FLOW_USER, "sqs:GetQueueUrl") == before + 1
    [entry] = [e for e in RECORDER.recorded() if (e.policy, e.action) == (FLOW_USER, "sqs:GetQueueUrl")]
    assert entry.caller.startswith(("core/", "tasks/", "flows/", "blocks/"))


def test_a_call_made_by_a_test_itself_is_held_against_no_policy(aws_mock: None) -> None:
    before = {policy: RECORDER.count(policy, "sqs:ListQueues") for policy in (None, FLOW_USER, TASK_ROLE)}

    boto3.client("sqs", region_name="us-east-1").list_queues()

    after = {policy: RECORDER.count(policy, "sqs:ListQueues") for policy in (None, FLOW_USER, TASK_ROLE)}
    assert after == {None: before[None] + 1, FLOW_USER: before[FLOW_USER], TASK_ROLE: before[TASK_ROLE]}


def test_an_action_called_but_not_granted_is_reported_and_a_wildcard_grant_counts() -> None:
    recorder = Recorder()
    ensure_queue_from_setup = [("core/aws/sqs.py", "ensure_queue"), ("tasks/setup.py", "setup")]
    recorder.record({"sqs:CreateQueue", "sqs:TagQueue"}, ensure_queue_from_setup)
    recorder.record({"ecs:SubmitTaskStateChange"}, [("worker/loop.py", "run")])
    recorder.record({"s3:DeleteBucket"}, [("tests/test_queues.py", "a_bucket")])
    recorder.record({"s3:GetObject"}, [])
    grants = {FLOW_USER: frozenset({"sqs:createqueue", "sqs:ListQueues"}), TASK_ROLE: frozenset({"ecs:Submit*"})}

    missing = not_granted(recorder.recorded(), grants)

    assert [(e.action, e.policy, e.caller, e.calls) for e in missing] == [
        ("sqs:TagQueue", FLOW_USER, "core/aws/sqs.py:ensure_queue < tasks/setup.py:setup", 1)
    ]
    assert never_called(recorder.recorded(), grants) == {FLOW_USER: ["sqs:ListQueues"]}
    assert {(e.action, e.caller) for e in recorder.recorded() if e.policy is None} == {
        ("s3:DeleteBucket", "tests/test_queues.py:a_bucket"),
        ("s3:GetObject", NO_REPOSITORY_FRAME),
    }


def test_a_policy_file_that_does_not_exist_yet_is_not_judged() -> None:
    recorder = Recorder()
    recorder.record({"iam:CreateRole"}, [("core/bootstrap.py", "bootstrap")])

    assert not_granted(recorder.recorded(), {FLOW_USER: frozenset()}) == []


@pytest.mark.parametrize("path", POLICIES, ids=[path.name for path in POLICIES])
def test_each_policy_is_valid_json_that_only_allows_named_actions(path: Path) -> None:
    assert all(statement["Effect"] == "Allow" for statement in statements(path))
    actions = granted_actions(json.loads(path.read_text()))
    assert actions
    assert all(":" in action and not action.endswith(":*") and action != "*" for action in actions)


def test_the_policies_may_pass_roles_only_by_role_arn() -> None:
    passing = [s for path in POLICIES for s in statements(path) if "iam:PassRole" in granted_actions({"Statement": s})]
    resources = [r for s in passing for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert resources, "the flow user passes the Spot Fleet role and the workers' task role"
    assert all(resource.startswith("arn:aws:iam::") and ":role/" in resource for resource in resources)


def test_the_checked_policies_are_shipped() -> None:
    assert {FLOW_USER, TASK_ROLE} <= {path.name for path in POLICIES}

"""The shipped IAM policies: the flow's grants exactly what the control plane calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.aws.iam_actions import REQUIRED_IAM_ACTIONS

IAM = Path(__file__).resolve().parents[1] / "deployments" / "aws" / "iam"


def allowed_actions(policy: dict) -> set[str]:
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"]
        actions |= {listed} if isinstance(listed, str) else set(listed)
    return actions


def test_the_flow_user_policy_grants_exactly_the_actions_the_control_plane_calls() -> None:
    granted = allowed_actions(json.loads((IAM / "flow-user-policy.json").read_text()))
    assert granted - REQUIRED_IAM_ACTIONS == set(), "granted but never called"
    assert REQUIRED_IAM_ACTIONS - granted == set(), "called but not granted"


def test_the_flow_user_may_pass_only_the_fleet_and_task_roles() -> None:
    policy = json.loads((IAM / "flow-user-policy.json").read_text())
    [statement] = [s for s in policy["Statement"] if "iam:PassRole" in s["Action"]]
    assert all(":role/" in resource for resource in statement["Resource"])


@pytest.mark.parametrize("name", ["flow-user-policy.json", "task-role-policy.json", "instance-role-policy.json"])
def test_each_policy_is_valid_json_without_wildcard_services(name: str) -> None:
    actions = allowed_actions(json.loads((IAM / name).read_text()))
    assert actions
    assert all(":" in action and not action.endswith(":*") and action != "*" for action in actions)


def test_the_worker_task_role_covers_what_the_worker_calls() -> None:
    granted = allowed_actions(json.loads((IAM / "task-role-policy.json").read_text()))
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    } <= granted

"""IAM: roles, their policies and instance profiles, made by the bootstrap and read by preflight.

IAM is eventually consistent: a role or an instance profile created a moment ago can still be
unknown (NoSuchEntity) to the next IAM call, and for longer to EC2. `retry_while_missing` repeats a
call until it stops failing that way, within a deadline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.errors import AwsOperationError

logger = logging.getLogger(__name__)

MISSING = "NoSuchEntity"
T = TypeVar("T")


def trust_policy(service: str) -> dict[str, Any]:
    """A trust policy letting one AWS service (e.g. ec2.amazonaws.com) assume the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def name_from_arn(arn: str) -> str:
    """The role's or instance profile's name: the ARN's last path segment."""
    return arn.rsplit("/", 1)[-1]


def account_from_arn(arn: str) -> str:
    return arn.split(":")[4] if arn.count(":") >= 5 else ""


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _document(value: str | dict[str, Any]) -> dict[str, Any]:
    """IAM sends policy documents as URL-encoded JSON; boto3 decodes most of them, not all."""
    return json.loads(unquote(value)) if isinstance(value, str) else value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def get_role(iam: BaseClient, name: str) -> dict[str, Any] | None:
    """The role with its tags and trust policy, or None when there is none of that name."""
    try:
        return iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if error_code(exc) == MISSING:
            return None
        raise


def get_instance_profile(iam: BaseClient, name: str) -> dict[str, Any] | None:
    """The instance profile with its tags and roles, or None when there is none of that name."""
    try:
        return iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as exc:
        if error_code(exc) == MISSING:
            return None
        raise


def trusted_services(role: dict[str, Any]) -> set[str]:
    """The AWS services the role's trust policy lets assume it."""
    services: set[str] = set()
    for statement in _as_list(_document(role["AssumeRolePolicyDocument"]).get("Statement", [])):
        if statement.get("Effect") != "Allow" or "sts:AssumeRole" not in _as_list(statement.get("Action", [])):
            continue
        principal = statement.get("Principal", {})
        if isinstance(principal, dict):
            services |= set(_as_list(principal.get("Service", [])))
    return services


def instance_profiles_of(iam: BaseClient, role_name: str) -> list[dict[str, Any]]:
    return list(paginate(iam, "list_instance_profiles_for_role", "InstanceProfiles", RoleName=role_name))


def attached_policy_arns(iam: BaseClient, role_name: str) -> set[str]:
    return {
        policy["PolicyArn"]
        for policy in paginate(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=role_name)
    }


def inline_policy(iam: BaseClient, role_name: str, policy_name: str) -> dict[str, Any] | None:
    try:
        return _document(iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"])
    except ClientError as exc:
        if error_code(exc) == MISSING:
            return None
        raise


def create_role(iam: BaseClient, name: str, service: str, description: str, tags: dict[str, str]) -> dict[str, Any]:
    role = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(trust_policy(service)),
        Description=description,
        Tags=_tag_list(tags),
    )["Role"]
    logger.info("Created role %s (trusted by %s)", name, service)
    return role


def set_trust(iam: BaseClient, role_name: str, service: str) -> None:
    iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(trust_policy(service)))
    logger.info("Role %s: trust policy set to %s", role_name, service)


def attach_policy(iam: BaseClient, role_name: str, policy_arn: str) -> None:
    iam.attach_role_policy(RoleName=role_name, PolicyArn=policy_arn)
    logger.info("Role %s: attached %s", role_name, policy_arn)


def put_inline_policy(iam: BaseClient, role_name: str, policy_name: str, document: dict[str, Any]) -> None:
    iam.put_role_policy(RoleName=role_name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    logger.info("Role %s: inline policy %s written", role_name, policy_name)


def create_instance_profile(iam: BaseClient, name: str, tags: dict[str, str]) -> dict[str, Any]:
    profile = iam.create_instance_profile(InstanceProfileName=name, Tags=_tag_list(tags))["InstanceProfile"]
    logger.info("Created instance profile %s", name)
    return profile


def add_role_to_instance_profile(iam: BaseClient, profile_name: str, role_name: str) -> None:
    iam.add_role_to_instance_profile(InstanceProfileName=profile_name, RoleName=role_name)
    logger.info("Instance profile %s: role %s added", profile_name, role_name)


def remove_role_from_instance_profile(iam: BaseClient, profile_name: str, role_name: str) -> None:
    iam.remove_role_from_instance_profile(InstanceProfileName=profile_name, RoleName=role_name)
    logger.info("Instance profile %s: role %s removed", profile_name, role_name)


def delete_instance_profile(iam: BaseClient, name: str) -> None:
    """Remove its roles (left themselves untouched), then delete it; a missing one counts as deleted."""
    profile = get_instance_profile(iam, name)
    if profile is None:
        return
    for role in profile.get("Roles", []):
        remove_role_from_instance_profile(iam, name, role["RoleName"])
    iam.delete_instance_profile(InstanceProfileName=name)
    logger.info("Deleted instance profile %s", name)


def delete_role(iam: BaseClient, name: str) -> None:
    """Take the role out of its instance profiles, detach and delete its policies, delete it.

    IAM refuses to delete a role that still has any of these (DeleteConflict). A missing role counts
    as deleted.
    """
    if get_role(iam, name) is None:
        return
    for profile in instance_profiles_of(iam, name):
        remove_role_from_instance_profile(iam, profile["InstanceProfileName"], name)
    for policy_arn in attached_policy_arns(iam, name):
        iam.detach_role_policy(RoleName=name, PolicyArn=policy_arn)
    for policy_name in list(paginate(iam, "list_role_policies", "PolicyNames", RoleName=name)):
        iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
    iam.delete_role(RoleName=name)
    logger.info("Deleted role %s", name)


def retry_while_missing(
    call: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    poll_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> T:
    """`call()` again every `poll_s` while it fails with NoSuchEntity (IAM propagation), at most
    `deadline_s`; then raises AwsOperationError naming `what`."""
    deadline = clock() + deadline_s
    while True:
        try:
            return call()
        except ClientError as exc:
            if error_code(exc) != MISSING:
                raise
            if clock() >= deadline:
                raise AwsOperationError(
                    f"{what}: IAM still reports NoSuchEntity after {deadline_s:.0f} s; run the bootstrap again "
                    "(it resumes where it stopped)"
                ) from exc
            logger.info("%s: not visible in IAM yet; retrying in %.0f s", what, poll_s)
        sleep(poll_s)

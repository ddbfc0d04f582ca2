"""The emulator (core/emulator.py) and in-process moto know what the code looks up, and only that.

moto would otherwise give every account it makes all of AWS's managed policies (about 1,600) and
the region's 1,227 ECS-optimized AMIs, rebuilt after every reset: most of the emulator's time.
"""

from __future__ import annotations

import boto3
import pytest

from prefect_distributed.core import emulator
from prefect_distributed.core.aws import launch_template
from prefect_distributed.core.bootstrap import EXECUTION_POLICY, FLEET_POLICY, INSTANCE_POLICY

DEFAULT_AMIS = 44  # moto's own list (moto/ec2/resources/amis.json.gz)


def knows(endpoint_url: str | None) -> tuple[int, str, set[str]]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint_url)
    ssm = boto3.client("ssm", endpoint_url=endpoint_url)
    iam = boto3.client("iam", endpoint_url=endpoint_url)
    images = len(ec2.describe_images(Owners=["amazon"])["Images"])
    ecs_ami = launch_template.resolve_ecs_ami(ssm, "us-east-1")
    policies = {policy["Arn"] for policy in iam.list_policies(Scope="AWS", MaxItems=1000)["Policies"]}
    return images, ecs_ami, policies


def test_the_emulators_accounts_know_the_bootstraps_policies_the_default_amis_and_the_ecs_ami(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOTO_AMIS_PATH")  # the tests' own setting: the emulator must not need it
    with emulator.moto_server() as endpoint:
        images, ecs_ami, policies = knows(endpoint)
    assert images == DEFAULT_AMIS  # not also the region's 1,227 ECS-optimized ones
    assert ecs_ami.startswith("ami-")  # the ECS AMI is still found the way AWS publishes it: in SSM
    assert policies == {f"arn:aws:iam::aws:policy/{name}" for name in (INSTANCE_POLICY, FLEET_POLICY, EXECUTION_POLICY)}


def test_in_process_moto_knows_the_same_amis(aws_mock: None) -> None:
    images, ecs_ami, _ = knows(None)
    assert images == DEFAULT_AMIS
    assert ecs_ami.startswith("ami-")

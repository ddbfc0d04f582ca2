"""The `fargate` and `ec2-spot` backends end to end on a moto server, from the bootstrap to nothing left.

moto starts no containers (an ECS service's tasks never run there) and runs no ECS managed scaling (the
Auto Scaling group stays empty). So this test stands in for ECS, as the spot-fleet one does: once the
run's task definition exists, it starts worker processes with exactly the environment that task
definition gives its container (plus the emulator's endpoint and credentials, which a container gets
from its task role). Everything else is the real flow: its preflight, setup, the fleet's start, the
monitor's scale-in, cleanup and the summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.bootstrap import bootstrap
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.models import RunSummary
from tests.test_flow_end_to_end import BROKEN_WELL, BUCKET, upload_inputs, write_batch
from tests.test_preflight import make_subnet
from tests.test_preflight_capacity import second_zone

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[1]


def container_environment(ecs: Any, family: str) -> dict[str, str]:
    definition = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    (container,) = definition["containerDefinitions"]
    return {pair["name"]: pair["value"] for pair in container["environment"]}


@contextmanager
def stand_in_workers(environment: dict[str, str], workdir: Path, moto_endpoint: str, *, count: int) -> Iterator[None]:
    """`count` worker processes with a container's environment, in the image's working directory, killed at exit."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "worker"],
            cwd=workdir,
            env={
                **os.environ,
                **environment,
                "DISTRIBUTED_SPOT_WATCH": "false",  # no instance metadata service on this machine
                "AWS_ENDPOINT_URL": moto_endpoint,
                "PYTHONPATH": str(REPO),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def start_flow(config_path: Path) -> tuple[threading.Thread, dict[str, Any]]:
    """The distributed flow in a thread; its summary lands in the returned mapping."""
    from prefect_distributed.flows.distributed import distributed

    outcome: dict[str, Any] = {}
    flow_thread = threading.Thread(
        target=lambda: outcome.update(summary=distributed(config=str(config_path), return_state=True).result()),
        daemon=True,
    )
    flow_thread.start()
    return flow_thread, outcome


def first_task_definition(flow_thread: threading.Thread, outcome: dict[str, Any]) -> str:
    """The family of the first task definition the run registers (two minutes at most)."""
    ecs = boto3.client("ecs")
    deadline = time.monotonic() + 120
    families: list[str] = []
    while not families:
        assert time.monotonic() < deadline and flow_thread.is_alive(), f"no task definition appeared: {outcome}"
        families = [arn.rsplit("/", 1)[-1].split(":")[0] for arn in ecs.list_task_definitions()["taskDefinitionArns"]]
        time.sleep(0.5)
    return families[0]


def run_with_stand_in_workers(config_path: Path, tmp_path: Path, moto_endpoint: str) -> tuple[RunSummary, dict[str, str]]:
    """Run the flow; once its task definition exists, two worker processes take the place of its ECS tasks."""
    flow_thread, outcome = start_flow(config_path)
    environment = container_environment(boto3.client("ecs"), first_task_definition(flow_thread, outcome))
    with stand_in_workers(environment, tmp_path, moto_endpoint, count=2):
        flow_thread.join(timeout=240)
        assert not flow_thread.is_alive(), "the flow did not finish"
    summary = outcome["summary"]
    assert isinstance(summary, RunSummary), summary
    return summary, environment


def assert_batch_done_and_nothing_left(summary: RunSummary) -> None:
    assert (summary.total, summary.succeeded) == (6, 5)
    assert [dead.fields for dead in summary.failed] == [{"well": BROKEN_WELL}]
    assert summary.resources_left == []
    ecs = boto3.client("ecs")
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []
    services = ecs.describe_services(cluster="e2e-cluster", services=[f"distributed-{summary.run_id}"])["services"]
    assert all(service["status"] == "INACTIVE" for service in services)
    assert all(c["status"] == "INACTIVE" for c in ecs.describe_clusters(clusters=["e2e-cluster"])["clusters"])


@pytest.fixture
def account(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The account as a newcomer prepares it: the bootstrap, and two subnets of a VPC that reach the internet."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    upload_inputs()
    config = parse_config({"app_name": "e2e-cap", "job_file": "jobs.json", "command": "run", "bucket": BUCKET}, "test")
    roles = bootstrap(AwsClients(boto3.session.Session(), "us-east-1"), config, sleep=lambda _: None)
    subnet, group = make_subnet(public=True)
    return roles, [subnet, second_zone(subnet)], group


def test_a_fargate_batch_from_a_config_of_a_few_lines_runs_to_completion_and_leaves_nothing(
    account: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    roles, subnets, group = account
    config_path = write_batch(
        tmp_path,
        app_name="e2e-fargate",
        fleet={
            "backend": "fargate",
            "ecs_tasks": 2,
            "subnets": subnets,
            "security_groups": [group],
            "execution_role_arn": roles.execution_role_arn,
            "task_role_arn": roles.task_role_arn,
            "ecs_cluster": "e2e-cluster",
        },
        container={"image": "example/worker:1", "cpu_units": 512, "memory_mib": 1024},
    )
    summary, environment = run_with_stand_in_workers(config_path, tmp_path, moto_endpoint)
    assert "AWS_SECRET_ACCESS_KEY" not in environment and environment["DISTRIBUTED_SPOT_WATCH"] == "false"
    assert_batch_done_and_nothing_left(summary)
    assert summary.cost_estimate is not None and "ECS task(s)" in summary.cost_estimate.text


def test_an_ec2_spot_batch_runs_to_completion_and_leaves_no_group_provider_template_or_machine(
    account: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    roles, subnets, group = account
    config_path = write_batch(
        tmp_path,
        app_name="e2e-ec2spot",
        fleet={
            "backend": "ec2-spot",
            "machines": 2,
            "machine_types": ["m5.large", "c5.large"],
            "subnets": subnets,
            "security_groups": [group],
            "instance_profile_arn": roles.instance_profile_arn,
            "task_role_arn": roles.task_role_arn,
            "ecs_cluster": "e2e-cluster",
        },
        container={"image": "example/worker:1", "cpu_units": 1024, "memory_mib": 2048},
    )
    summary, environment = run_with_stand_in_workers(config_path, tmp_path, moto_endpoint)
    assert environment["DISTRIBUTED_SPOT_WATCH"] == "true"  # machines have instance metadata to watch
    assert_batch_done_and_nothing_left(summary)
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("ec2").describe_launch_templates()["LaunchTemplates"] == []
    providers = boto3.client("ecs").describe_capacity_providers(capacityProviders=[f"distributed-{summary.run_id}"])
    assert providers["capacityProviders"] == []

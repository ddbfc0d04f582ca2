"""The fargate backend against in-process moto: the task size rules, what start creates, scale-in, stop
from the run id alone, the janitor's view, and its failure modes turned into fixes.

moto's ECS takes a capacity provider strategy on CreateService but keeps none of it (the service comes
back with launchType EC2), accepts any CPU and memory pair, and never places an ECS task: its service
reports runningCount = desiredCount at once. So the strategy is tested from what the service is asked
with, and Fargate's refusals and Spot's lack of capacity are answered by before-call handlers.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets import FargateFleet, fleet_backend
from prefect_distributed.core.fleets.base import FleetRequest
from prefect_distributed.core.fleets.fargate import FargateSettings
from prefect_distributed.core.fleets.fargate_size import allowed_memory_mib, task_size_problems
from tests.fakes import FakeClock
from tests.test_preflight import make_subnet

pytestmark = pytest.mark.usefixtures("aws_mock")

EXECUTION_ROLE = "arn:aws:iam::123456789012:role/distributed-task-execution"


def capacity_config(tmp_path: Path, container: dict[str, Any], fleet: dict[str, Any]) -> Any:
    """A run config of a few lines, as a newcomer writes it for the fargate or ec2-spot backend."""
    (tmp_path / "jobs.json").write_text('{"groups": [{"well": "A01"}]}')
    settings = {
        "app_name": "cells",
        "job_file": "jobs.json",
        "command": "measure {well}",
        "bucket": "lab-records",
        "container": {"image": "worker:1", **container},
        "fleet": {"ecs_cluster": "lab", "capacity_wait_s": 60, **fleet},
    }
    return parse_config(settings, "test", base_dir=tmp_path)


def config(tmp_path: Path, subnets: list[str], **fleet: Any) -> Any:
    container = {"cpu_units": 1024, "memory_mib": 2048, "ephemeral_storage_gb": 50}
    fargate = {"backend": "fargate", "ecs_tasks": 3, "subnets": subnets, "execution_role_arn": EXECUTION_ROLE}
    return capacity_config(tmp_path, container, {**fargate, **fleet})


def fleet_for(run_config: Any, clock: FakeClock | None = None) -> FargateFleet:
    clock = clock or FakeClock()
    return FargateFleet(
        AwsClients(boto3.session.Session(), "us-east-1"),
        FargateSettings.from_config(run_config),
        clock=clock,
        sleep=clock.sleep,
    )


def start(fleet: FargateFleet, run_id: str = "r1") -> Any:
    return fleet.start(FleetRequest(run_id=run_id, environment={"DISTRIBUTED_RUN_ID": run_id}))


def answer_service(client: Any, service: dict[str, Any]) -> None:
    """A service ECS could not place any ECS task of (moto's services run whatever is asked): every
    DescribeServices after the first (start's, which finds no service yet and creates it) gets `service`."""
    calls = []

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        calls.append(1)
        if len(calls) == 1:
            return None
        return AWSResponse("https://ecs.us-east-1.amazonaws.com", 200, {}, None), {"services": [service]}

    client.meta.events.register("before-call.ecs.DescribeServices", answer)


class TestTaskSize:
    def test_every_size_of_fargates_table_is_accepted(self) -> None:
        assert allowed_memory_mib(256) == [512, 1024, 2048]
        assert allowed_memory_mib(4096)[:2] == [8192, 9216] and allowed_memory_mib(4096)[-1] == 30720
        assert allowed_memory_mib(16384) == list(range(32768, 122881, 8192))
        assert all(not task_size_problems(cpu, memory) for cpu in (256, 1024, 8192) for memory in allowed_memory_mib(cpu))

    def test_a_memory_fargate_refuses_is_named_with_the_sizes_it_takes_and_the_nearest(self) -> None:
        (problem,) = task_size_problems(1024, 3000)
        assert "container.memory_mib 3000 with container.cpu_units 1024 is not a Fargate task size" in problem
        assert "2048 to 8192 in steps of 1024" in problem and "the nearest: 3072" in problem

    def test_a_memory_that_fits_another_cpu_value_says_which(self) -> None:
        (problem,) = task_size_problems(256, 4096)
        assert "512, 1024, 2048 MiB" in problem and "container.cpu_units 512 or 1024 or 2048" in problem

    def test_a_cpu_value_fargate_does_not_offer_lists_the_ones_it_does(self) -> None:
        (problem,) = task_size_problems(1000, 2048)
        assert "256, 512, 1024, 2048, 4096, 8192, 16384" in problem

    def test_a_refused_task_size_stops_the_run_before_anything_is_created(self, tmp_path: Path) -> None:
        subnet, _ = make_subnet()
        run_config = config(tmp_path, [subnet])
        run_config = run_config.model_copy(
            update={"container": run_config.container.model_copy(update={"memory_mib": 3000})}
        )
        with pytest.raises(ConfigError, match="container.memory_mib 3000"):
            start(fleet_for(run_config))
        ecs = boto3.client("ecs")
        assert ecs.list_clusters()["clusterArns"] == [] and ecs.list_task_definitions()["taskDefinitionArns"] == []

    def test_ephemeral_storage_above_200_gb_is_refused_with_its_limit(self, tmp_path: Path) -> None:
        (tmp_path / "jobs.json").write_text('{"groups": [{"well": "A01"}]}')
        with pytest.raises(ConfigError, match="container.ephemeral_storage_gb: Input should be less than or equal to 200"):
            parse_config(
                {"app_name": "a", "job_file": "jobs.json", "command": "x", "bucket": "lab-records",
                 "container": {"ephemeral_storage_gb": 201}},
                "test",
                base_dir=tmp_path,
            )


def test_a_config_without_subnets_is_refused_naming_the_setting(tmp_path: Path) -> None:
    run_config = config(tmp_path, [])
    with pytest.raises(ConfigError, match="fleet.subnets: the fargate backend needs at least one subnet"):
        fleet_backend(AwsClients(boto3.session.Session(), "us-east-1"), run_config)


def test_a_config_without_execution_role_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    fleet = fleet_for(config(tmp_path, [subnet], execution_role_arn=None))
    with pytest.raises(ConfigError, match="fleet.execution_role_arn is not set"):
        start(fleet)
    assert boto3.client("ecs").list_clusters()["clusterArns"] == []


def test_start_runs_the_workers_as_a_fargate_service_in_the_configs_subnets(tmp_path: Path) -> None:
    subnet, group = make_subnet()
    handle = start(fleet_for(config(tmp_path, [subnet], security_groups=[group], assign_public_ip=False)))
    assert (handle.backend, handle.id, handle.workers) == ("fargate", "lab/r1", 3)
    ecs = boto3.client("ecs")
    (cluster,) = ecs.describe_clusters(clusters=["lab"])["clusters"]
    assert {"FARGATE", "FARGATE_SPOT"} <= set(cluster["capacityProviders"])
    described = ecs.describe_task_definition(taskDefinition="distributed-r1", include=["TAGS"])
    definition = described["taskDefinition"]
    assert definition["requiresCompatibilities"] == ["FARGATE"] and definition["networkMode"] == "awsvpc"
    assert (definition["cpu"], definition["memory"]) == ("1024", "2048")
    assert definition["executionRoleArn"] == EXECUTION_ROLE
    assert definition["ephemeralStorage"] == {"sizeInGiB": 50}
    (container,) = definition["containerDefinitions"]
    environment = {pair["name"]: pair["value"] for pair in container["environment"]}
    assert environment["DISTRIBUTED_SPOT_WATCH"] == "false"  # no instance metadata on Fargate
    tags = {tag["key"]: tag["value"] for tag in described["tags"]}
    assert tags == {"app": "cells", "run-id": "r1", "created-by": "prefect-distributed", "ecs-cluster": "lab",
                    "fleet-backend": "fargate"}
    (service,) = ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"]
    assert service["desiredCount"] == 3
    assert service["networkConfiguration"]["awsvpcConfiguration"] == {
        "subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"
    }


def test_the_service_asks_for_fargate_spot_with_fargate_as_the_weighted_fallback(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    settings = FargateSettings.from_config(config(tmp_path, [subnet]))
    assert settings.placement().service_arguments()["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 4},
        {"capacityProvider": "FARGATE", "weight": 1},
    ]
    spot_only = FargateSettings.from_config(config(tmp_path, [subnet], fargate_weight=0))
    assert spot_only.placement().service_arguments()["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 4}
    ]


def test_starting_twice_keeps_one_service_and_the_running_workers(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    fleet = fleet_for(config(tmp_path, [subnet]))
    start(fleet)
    start(fleet)
    ecs = boto3.client("ecs")
    services = ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"]
    assert [s["status"] for s in services] == ["ACTIVE"] and services[0]["desiredCount"] == 3


def test_scale_in_lowers_the_desired_count_to_the_busy_containers_and_never_raises_it(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    fleet = fleet_for(config(tmp_path, [subnet]))
    handle = start(fleet)
    fleet.scale_in(handle, busy_jobs=1)
    ecs = boto3.client("ecs")
    assert ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"][0]["desiredCount"] == 1
    fleet.scale_in(handle, busy_jobs=2)
    assert ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"][0]["desiredCount"] == 1
    assert fleet.status(handle).running == 1


def test_stop_from_the_run_id_alone_leaves_nothing_and_the_janitor_sees_the_run_until_then(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    start(fleet_for(config(tmp_path, [subnet])))
    start(fleet_for(config(tmp_path, [subnet])), run_id="r2")
    anywhere = FargateFleet.from_clients(AwsClients(boto3.session.Session(), "us-east-1"))
    assert anywhere.running_fleets() == ["r1", "r2"]
    handle = anywhere.handle_for("r1")
    assert handle.id == "lab/r1"  # the cluster read back from the task definition's tags
    anywhere.stop(handle)
    anywhere.stop(handle)  # idempotent
    ecs = boto3.client("ecs")
    assert [s["status"] for s in ecs.describe_services(cluster="lab", services=["distributed-r1"])["services"]] in (
        [], ["INACTIVE"]
    )
    assert all(":task-definition/distributed-r2:" in arn for arn in ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"])
    assert anywhere.running_fleets() == ["r2"]
    assert anywhere.handle_for("r1").id == "/r1"


def test_no_spot_capacity_at_the_deadline_fails_the_start_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subnet, _ = make_subnet()
    clock = FakeClock()
    fleet = fleet_for(config(tmp_path, [subnet], fargate_weight=0), clock)
    message = (
        "(service distributed-r1) was unable to place a task. Reason: Capacity is unavailable at this time. "
        "Please try again later or in a different availability zone."
    )
    answer_service(
        fleet._ecs,
        {"serviceName": "distributed-r1", "serviceArn": "arn", "status": "ACTIVE", "desiredCount": 3, "runningCount": 0,
         "events": [{"id": "1", "createdAt": datetime.now(UTC) + timedelta(seconds=5), "message": message}]},
    )
    with caplog.at_level(logging.WARNING), pytest.raises(FleetError) as raised:
        start(fleet)
    assert "no ECS task running after 60 s" in str(raised.value)
    assert "give fleet.fargate_weight a value above 0" in str(raised.value)
    assert clock.now >= 60
    assert sum("Capacity is unavailable" in record.message for record in caplog.records) == 1  # logged once


def test_a_task_size_ecs_refuses_at_registration_becomes_a_config_error_with_the_fix(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    fleet = fleet_for(config(tmp_path, [subnet]))

    def refuse(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        parsed = {"Error": {"Code": "ClientException", "Message": "No Fargate configuration exists for given values."},
                  "ResponseMetadata": {"HTTPStatusCode": 400}}
        return AWSResponse("https://ecs.us-east-1.amazonaws.com", 400, {}, None), parsed

    fleet._ecs.meta.events.register("before-call.ecs.RegisterTaskDefinition", refuse)
    with pytest.raises(ConfigError, match="No Fargate configuration exists for given values.*one of Fargate's task sizes"):
        start(fleet)


def test_the_estimate_prices_each_ecs_task_by_its_size_disk_and_share_of_spot(tmp_path: Path) -> None:
    subnet, _ = make_subnet()
    run_config = config(tmp_path, [subnet], expected_job_minutes=30)
    estimate = fleet_for(run_config).cost_estimate(jobs=12)
    # 1 vCPU, 2 GB, 30 GB of disk beyond the 20 included: 0.04048 + 2 × 0.004445 + 30 × 0.000111 = 0.0527/h
    # on FARGATE; four in five on FARGATE_SPOT at 30–50 %: 0.0527 × (0.8 × 0.3 + 0.2) = 0.023188,
    # 0.0527 × (0.8 × 0.5 + 0.2) = 0.03162; three ECS tasks.
    assert estimate.usd_per_hour is not None and estimate.total_usd is not None
    assert (round(estimate.usd_per_hour.low, 6), round(estimate.usd_per_hour.high, 6)) == (0.069564, 0.09486)
    assert estimate.hours == 2.0  # 12 jobs on 3 slots: 4 rounds of 30 min
    assert (round(estimate.total_usd.low, 6), round(estimate.total_usd.high, 6)) == (0.139128, 0.18972)
    assert estimate.text.startswith("Estimated cost: $0.069564–0.09486/h for 3 ECS task(s); $0.139128–0.18972 for 12")
    assert any("AWS publishes no API" in line for line in estimate.assumptions)


def test_the_spend_counts_each_ecs_task_from_its_image_pull_to_its_end_by_capacity_provider(tmp_path: Path) -> None:
    """moto runs no ECS task on Fargate, so ListTasks and DescribeTasks are answered as ECS does."""
    subnet, _ = make_subnet()
    fleet = fleet_for(config(tmp_path, [subnet]))
    handle = start(fleet)
    now = datetime.now(UTC)
    tasks = [
        {"taskArn": "t1", "capacityProviderName": "FARGATE_SPOT", "cpu": "1024", "memory": "2048",
         "pullStartedAt": now - timedelta(hours=2), "stoppedAt": now - timedelta(hours=1)},
        {"taskArn": "t2", "capacityProviderName": "FARGATE", "cpu": "1024", "memory": "2048",
         "pullStartedAt": now - timedelta(hours=1)},
    ]
    listed = iter([["t1"], ["t2"]])

    def list_tasks(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://ecs.us-east-1.amazonaws.com", 200, {}, None), {"taskArns": next(listed, [])}

    def describe_tasks(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://ecs.us-east-1.amazonaws.com", 200, {}, None), {"tasks": tasks}

    fleet._ecs.meta.events.register("before-call.ecs.ListTasks", list_tasks)
    fleet._ecs.meta.events.register("before-call.ecs.DescribeTasks", describe_tasks)
    report = fleet.cost(handle)
    on_demand = 0.04048 + 2 * 0.004445
    assert [(t.instance_type, t.machines, round(t.hours, 3)) for t in report.by_type] == [
        ("FARGATE", 1, 1.0), ("FARGATE_SPOT", 1, 1.0)
    ]
    assert round(report.total_usd, 6) == round(on_demand + on_demand * 0.5, 6)
    assert report.text.startswith("Run r1: 2 ECS task(s), 2.0 ECS task-hours")

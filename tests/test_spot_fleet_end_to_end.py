"""The `spot-fleet` backend end to end on a moto server, from setup to nothing left.

moto starts no containers: an ECS service's tasks never run there. So this test stands in for
ECS: once the run's task definition exists, it starts worker processes with exactly the
environment that task definition gives its container (plus the emulator's endpoint and
credentials, which a container gets from its task role). Everything else is the real flow.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.bootstrap import bootstrap
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.models import RunSummary
from tests.test_capacity_end_to_end import (
    container_environment,
    first_task_definition,
    stand_in_workers,
    start_flow,
)
from tests.test_flow_end_to_end import BROKEN_WELL, BUCKET, upload_inputs, write_batch
from tests.test_preflight import make_subnet, write_fleet_file

pytestmark = pytest.mark.usefixtures("prefect_api")

BOOTSTRAP_CONFIG = {"app_name": "e2e-spot", "job_file": "jobs.json", "command": "run", "bucket": BUCKET}


def test_a_spot_fleet_batch_runs_to_completion_and_leaves_nothing_behind(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    upload_inputs()
    # The account as a newcomer prepares it: the bootstrap's roles, and a subnet that reaches ECS;
    # the run's preflight then checks them for real.
    account = bootstrap(
        AwsClients(boto3.session.Session(), "us-east-1"), parse_config(BOOTSTRAP_CONFIG, "test"), sleep=lambda _: None
    )
    subnet, group = make_subnet(public=True)
    fleet_file = write_fleet_file(
        tmp_path,
        fleet_role=account.fleet_role_arn,
        instance_profile=account.instance_profile_arn,
        subnet=subnet,
        group=group,
    )
    config_path = write_batch(
        tmp_path,
        app_name="e2e-spot",
        fleet={
            "backend": "spot-fleet",
            "fleet_file": str(fleet_file),
            "machines": 2,
            "tasks_per_machine": 1,
            "machine_types": ["m5.large"],
            "ebs_volume_gb": 30,
            "ecs_cluster": "e2e-cluster",
            "task_role_arn": account.task_role_arn,
            "capacity_wait_s": 5,
        },
        container={"image": "example/worker:1", "cpu_units": 1024, "memory_mib": 2048},
    )
    config = yaml.safe_load(config_path.read_text())
    assert config["fleet"]["backend"] == "spot-fleet"

    flow_thread, outcome = start_flow(config_path)
    ecs = boto3.client("ecs")
    family = first_task_definition(flow_thread, outcome)
    environment = container_environment(ecs, family)
    assert "AWS_SECRET_ACCESS_KEY" not in environment and "AWS_ACCESS_KEY_ID" not in environment
    assert environment["DISTRIBUTED_SPOT_WATCH"] == "true"
    # The awslogs driver would send the containers' output to the run's own log group; moto runs no
    # containers, so one line stands in for it (the export at cleanup must carry it to S3).
    (definition,) = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]["containerDefinitions"]
    log_group = definition["logConfiguration"]["options"]["awslogs-group"]
    assert log_group.startswith("e2e-spot/")
    logs_client = boto3.client("logs")
    logs_client.create_log_stream(logGroupName=log_group, logStreamName="worker/1")
    logs_client.put_log_events(
        logGroupName=log_group, logStreamName="worker/1", logEvents=[{"timestamp": 1000, "message": "worker started"}]
    )

    # the image's working directory, where the job's program lives
    with stand_in_workers(environment, tmp_path, moto_endpoint, count=2):
        flow_thread.join(timeout=240)
        assert not flow_thread.is_alive(), "the flow did not finish"

    summary = outcome["summary"]
    assert isinstance(summary, RunSummary)
    assert (summary.total, summary.succeeded) == (6, 5)
    assert [dead.fields for dead in summary.failed] == [{"well": BROKEN_WELL}]
    assert summary.resources_left == []

    ec2 = boto3.client("ec2")
    (kept_queue,) = boto3.client("sqs").list_queues().get("QueueUrls", [])
    assert kept_queue.endswith("-dead")  # kept while it holds the dead job, and said so
    assert "holds 1 dead job(s)" in " ".join(summary.resources_kept)
    assert boto3.client("logs").describe_log_groups()["logGroups"] == []
    exported = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{summary.run_id}/logs/")
    assert exported["KeyCount"] > 0, "the run's log group was not exported before it was deleted"
    active = [
        request
        for request in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
        if request["SpotFleetRequestState"] in {"submitted", "active", "modifying"}
    ]
    assert active == []
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []
    clusters = ecs.describe_clusters(clusters=["e2e-cluster"])["clusters"]
    assert all(cluster["status"] == "INACTIVE" for cluster in clusters)
    running = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert [i for r in running["Reservations"] for i in r["Instances"]] == []
    saved = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"runs/{summary.run_id}/summary.json")["Body"].read()
    assert json.loads(saved)["succeeded"] == 5

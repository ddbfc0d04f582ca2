"""The ECS and CloudWatch Logs layers against in-process moto: cluster, task definition, service,
their removal, and the log group with its export."""

from __future__ import annotations

import boto3
import pytest

from prefect_distributed.core.aws import ecs, logs
from prefect_distributed.core.errors import AwsOperationError

pytestmark = pytest.mark.usefixtures("aws_mock")

TAGS = {"app": "demo", "run-id": "r1", "created-by": "prefect-distributed"}
ENVIRONMENT = {"DISTRIBUTED_QUEUE_URL": "https://sqs/q", "DISTRIBUTED_RUN_ID": "r1"}


def register(client, role: str | None = "arn:aws:iam::123456789012:role/worker", image: str = "worker:1") -> str:
    return ecs.register_task_definition(
        client, "distributed-r1", image, 1024, 2048, ENVIRONMENT, "demo", "us-east-1", role, TAGS
    )


def test_a_new_cluster_is_created_with_the_runs_tags_and_an_existing_one_is_left_as_it_is() -> None:
    client = boto3.client("ecs")
    arn, created = ecs.ensure_cluster(client, "work", TAGS)
    again, created_again = ecs.ensure_cluster(client, "work", {"run-id": "other"})
    assert (created, created_again) == (True, False)
    assert again == arn
    assert ecs.tags_of(ecs.describe_cluster(client, "work")) == TAGS


def test_the_task_definition_carries_the_environment_awslogs_and_the_task_role_but_no_keys() -> None:
    client = boto3.client("ecs")
    arn = register(client)
    definition = client.describe_task_definition(taskDefinition=arn, include=["TAGS"])
    container = definition["taskDefinition"]["containerDefinitions"][0]
    assert container["name"] == "distributed-r1"
    assert container["essential"] is True
    # An init reaps the orphans of the programs; a stopped worker has time to hand its job back.
    assert container["linuxParameters"] == {"initProcessEnabled": True}
    assert container["stopTimeout"] == 30
    assert (container["cpu"], container["memory"], container["image"]) == (1024, 2048, "worker:1")
    assert {item["name"]: item["value"] for item in container["environment"]} == ENVIRONMENT
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {"awslogs-group": "demo", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "distributed-r1"},
    }
    assert definition["taskDefinition"]["taskRoleArn"] == "arn:aws:iam::123456789012:role/worker"
    assert ecs.tags_of(definition) == TAGS


def test_a_task_definition_without_a_role_has_no_task_role() -> None:
    client = boto3.client("ecs")
    definition = client.describe_task_definition(taskDefinition=register(client, role=None))["taskDefinition"]
    assert "taskRoleArn" not in definition


@pytest.mark.parametrize(
    "name", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"]
)
def test_access_keys_are_refused_in_a_task_definitions_environment(name: str) -> None:
    client = boto3.client("ecs")
    with pytest.raises(ValueError, match=name):
        ecs.register_task_definition(client, "f", "i", 256, 512, {name: "x"}, "g", "us-east-1", None, TAGS)
    assert client.list_task_definitions()["taskDefinitionArns"] == []


def test_a_new_service_starts_at_zero_and_a_second_setup_updates_it_in_place() -> None:
    client = boto3.client("ecs")
    ecs.ensure_cluster(client, "work", TAGS)
    first = ecs.ensure_service(client, "work", "distributed-r1", register(client), TAGS)
    service = ecs.describe_service(client, "work", "distributed-r1")
    assert service["desiredCount"] == 0
    assert ecs.tags_of(service) == TAGS
    ecs.set_desired_count(client, "work", "distributed-r1", 3)
    second_definition = register(client, image="worker:2")
    second = ecs.ensure_service(client, "work", "distributed-r1", second_definition, TAGS)
    service = ecs.describe_service(client, "work", "distributed-r1")
    assert second == first
    assert service["taskDefinition"] == second_definition
    assert service["desiredCount"] == 3  # a retried setup does not stop running workers


def test_deleting_a_scaled_up_service_works_and_deleting_it_again_is_fine() -> None:
    client = boto3.client("ecs")
    ecs.ensure_cluster(client, "work", TAGS)
    ecs.ensure_service(client, "work", "distributed-r1", register(client), TAGS)
    ecs.set_desired_count(client, "work", "distributed-r1", 2)
    ecs.delete_service(client, "work", "distributed-r1")
    ecs.delete_service(client, "work", "distributed-r1")
    ecs.delete_service(client, "no-such-cluster", "distributed-r1")
    assert ecs.describe_service(client, "work", "distributed-r1") is None


def test_every_active_revision_of_the_family_and_only_that_family_is_deregistered() -> None:
    client = boto3.client("ecs")
    for _ in range(3):
        register(client)
    other = ecs.register_task_definition(client, "distributed-r10", "i", 256, 512, {}, "g", "us-east-1", None, TAGS)
    assert len(ecs.deregister_task_definitions(client, "distributed-r1")) == 3
    assert ecs.deregister_task_definitions(client, "distributed-r1") == []
    active = list(client.list_task_definitions(status="ACTIVE")["taskDefinitionArns"])
    assert active == [other]
    assert ecs.task_definition_tags(client, "distributed-r1") is None


def test_a_cluster_is_deleted_only_once_nothing_uses_it() -> None:
    client = boto3.client("ecs")
    ecs.ensure_cluster(client, "work", TAGS)
    ecs.ensure_service(client, "work", "distributed-r1", register(client), TAGS)
    assert ecs.delete_cluster_if_empty(client, "work") is False
    ecs.delete_service(client, "work", "distributed-r1")
    assert ecs.delete_cluster_if_empty(client, "work") is True
    assert ecs.describe_cluster(client, "work") is None
    assert ecs.delete_cluster_if_empty(client, "work") is True


def test_the_log_group_is_created_once_with_its_retention() -> None:
    client = boto3.client("logs")
    logs.ensure_log_group(client, "demo", 60, TAGS)
    logs.ensure_log_group(client, "demo", 30, TAGS)
    groups = client.describe_log_groups(logGroupNamePrefix="demo")["logGroups"]
    assert [(g["logGroupName"], g["retentionInDays"]) for g in groups] == [("demo", 30)]
    assert client.list_tags_log_group(logGroupName="demo")["tags"] == TAGS


def test_a_log_group_export_writes_to_the_bucket_and_reports_its_status() -> None:
    client, s3 = boto3.client("logs"), boto3.client("s3")
    s3.create_bucket(Bucket="records")
    logs.ensure_log_group(client, "demo", 60, TAGS)
    client.create_log_stream(logGroupName="demo", logStreamName="job-1")
    client.put_log_events(logGroupName="demo", logStreamName="job-1", logEvents=[{"timestamp": 1000, "message": "hi"}])
    status = logs.export_log_group(
        client, "demo", "records", "exportedlogs/demo", 0, 2000, deadline_s=60, sleep=_no_sleep, clock=lambda: 0.0
    )
    assert status == "COMPLETED"
    assert s3.list_objects_v2(Bucket="records", Prefix="exportedlogs/demo")["KeyCount"] > 0


def test_an_export_refused_by_the_bucket_names_the_bucket_policy_fix() -> None:
    """Distributed-Something's except clause named a missing class and died with AttributeError."""
    client = boto3.client("logs")
    logs.ensure_log_group(client, "demo", 60, TAGS)
    with pytest.raises(AwsOperationError, match=r"s3://no-such-bucket/exportedlogs.*s3:GetBucketAcl.*s3:PutObject"):
        logs.export_log_group(
            client, "demo", "no-such-bucket", "exportedlogs", 0, 1, deadline_s=1, sleep=_no_sleep, clock=lambda: 0.0
        )


def test_deleting_a_log_group_twice_is_fine() -> None:
    client = boto3.client("logs")
    logs.ensure_log_group(client, "demo", 60, TAGS)
    logs.delete_log_group(client, "demo")
    logs.delete_log_group(client, "demo")
    assert client.describe_log_groups(logGroupNamePrefix="demo")["logGroups"] == []


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds} s; the export should have been complete")

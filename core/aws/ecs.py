"""ECS: the cluster, the worker's task definition and the service that keeps workers running.

Distributed-Something deleted and re-created the service on every setup (which failed while the
old one was scaled above 0) and read only the first page of every list; here the service is
updated in place and every list is paginated. Errors are recognised by their code only.
"""

from __future__ import annotations

import logging

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import chunks, error_code, paginate
from prefect_distributed.core.aws.ecs_capacity import FargateTask, ServicePlacement
from prefect_distributed.core.worker_env import WORKER_STOP_TIMEOUT_S
from prefect_distributed.worker.program import AWS_KEY_VARIABLES

logger = logging.getLogger(__name__)

MISSING_CODES = frozenset({"ClusterNotFoundException", "ServiceNotFoundException", "ServiceNotActiveException"})
CLUSTER_IN_USE_CODES = frozenset(
    {
        "ClusterContainsContainerInstancesException",
        "ClusterContainsServicesException",
        "ClusterContainsTasksException",
        "ClusterContainsCapacityProviderException",
        "UpdateInProgressException",
    }
)
DESCRIBE_LIMIT = 100  # DescribeContainerInstances: names per call
SERVICE_DESCRIBE_LIMIT = 10  # DescribeServices: names per call


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in tags.items()]


def tags_of(described: dict) -> dict[str, str]:
    """The tags of a described ECS resource (requested with include=["TAGS"]) as a mapping."""
    return {tag["key"]: tag["value"] for tag in described.get("tags", [])}


def describe_cluster(ecs: BaseClient, name: str) -> dict | None:
    """The ACTIVE cluster's description with its tags, or None when there is none."""
    clusters = ecs.describe_clusters(clusters=[name], include=["TAGS"]).get("clusters", [])
    return next((cluster for cluster in clusters if cluster.get("status") == "ACTIVE"), None)


def ensure_cluster(ecs: BaseClient, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The cluster's ARN, creating it (tagged) when missing; `created` tells whether this call made it.

    An existing cluster is left untagged: it may be shared, and its tags decide who deletes it.
    """
    existing = describe_cluster(ecs, name)
    if existing is not None:
        logger.info("ECS cluster %s exists", name)
        return existing["clusterArn"], False
    arn = ecs.create_cluster(clusterName=name, tags=_tag_list(tags))["cluster"]["clusterArn"]
    logger.info("Created ECS cluster %s", name)
    return arn, True


def register_task_definition(
    ecs: BaseClient,
    family: str,
    image: str,
    cpu_units: int,
    memory_mib: int,
    environment: dict[str, str],
    log_group: str,
    region: str,
    task_role_arn: str | None,
    tags: dict[str, str],
    *,
    fargate: FargateTask | None = None,
) -> str:
    """Register a new revision of the worker's task definition and return its ARN.

    One essential container named after the family; its output goes to `log_group` through the
    awslogs driver. ECS's init runs as PID 1 and reaps what every job's program leaves behind, and
    a stopped worker gets WORKER_STOP_TIMEOUT_S to hand its job back before SIGKILL (set here, not
    left to each machine's agent setting, ECS_CONTAINER_STOP_TIMEOUT). AWS access comes from the task role, never from keys in the environment
    (Distributed-Something copied the user's keys there in plain text): such keys raise ValueError.
    With `fargate`, the task is sized and networked for Fargate and gets its execution role.
    """
    # Keys never go into a task definition: its environment is readable by anyone who may describe it.
    secrets = AWS_KEY_VARIABLES & environment.keys()
    if secrets:
        raise ValueError(f"refusing to put {sorted(secrets)} in a task definition; give the task a role instead")
    container = {
        "name": family,
        "image": image,
        "cpu": cpu_units,
        "memory": memory_mib,
        "essential": True,
        "linuxParameters": {"initProcessEnabled": True},
        "stopTimeout": WORKER_STOP_TIMEOUT_S,
        "environment": [{"name": key, "value": value} for key, value in sorted(environment.items())],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-region": region, "awslogs-stream-prefix": family},
        },
    }
    extra = {"taskRoleArn": task_role_arn} if task_role_arn else {}
    if fargate is not None:
        extra.update(fargate.task_definition_arguments())
    response = ecs.register_task_definition(
        family=family, containerDefinitions=[container], tags=_tag_list(tags), **extra
    )
    arn = response["taskDefinition"]["taskDefinitionArn"]
    logger.info("Registered task definition %s", arn)
    return arn


def describe_service(ecs: BaseClient, cluster: str, name: str) -> dict | None:
    """The service's description when it is ACTIVE (or DRAINING), else None."""
    try:
        services = ecs.describe_services(cluster=cluster, services=[name], include=["TAGS"]).get("services", [])
    except ClientError as exc:
        if error_code(exc) in MISSING_CODES:
            return None
        raise
    return next((service for service in services if service.get("status") in {"ACTIVE", "DRAINING"}), None)


def ensure_service(
    ecs: BaseClient,
    cluster: str,
    name: str,
    task_definition_arn: str,
    tags: dict[str, str],
    *,
    placement: ServicePlacement | None = None,
) -> str:
    """Create the service at desiredCount 0, or point an existing one at the new task definition.

    Updating in place keeps the desired count, so a retried setup does not stop running workers.
    Without `placement` the service's ECS tasks run on the cluster's EC2 machines; with it, on its
    capacity providers (and in its subnets).
    """
    existing = describe_service(ecs, cluster, name)
    if existing is not None and existing["status"] == "ACTIVE":
        ecs.update_service(cluster=cluster, service=name, taskDefinition=task_definition_arn)
        logger.info("ECS service %s exists; now runs %s", name, task_definition_arn)
        return existing["serviceArn"]
    response = ecs.create_service(
        cluster=cluster,
        serviceName=name,
        taskDefinition=task_definition_arn,
        desiredCount=0,
        **(placement.service_arguments() if placement else {"launchType": "EC2"}),
        tags=_tag_list(tags),
        propagateTags="SERVICE",
    )
    logger.info("Created ECS service %s in cluster %s", name, cluster)
    return response["service"]["serviceArn"]


def set_desired_count(ecs: BaseClient, cluster: str, service: str, count: int) -> None:
    ecs.update_service(cluster=cluster, service=service, desiredCount=count)
    logger.info("ECS service %s: desired count %d", service, count)


def delete_service(ecs: BaseClient, cluster: str, service: str) -> None:
    """Scale the service to 0 (its tasks get SIGTERM and return their jobs), then delete it.

    Idempotent: a missing cluster or service counts as deleted.
    """
    try:
        ecs.update_service(cluster=cluster, service=service, desiredCount=0)
        ecs.delete_service(cluster=cluster, service=service, force=True)
    except ClientError as exc:
        if error_code(exc) not in MISSING_CODES:
            raise
        return
    logger.info("Deleted ECS service %s", service)


def deregister_task_definitions(ecs: BaseClient, family: str) -> list[str]:
    """Deregister every ACTIVE revision of the family; returns their ARNs. Idempotent."""
    arns = list(paginate(ecs, "list_task_definitions", "taskDefinitionArns", familyPrefix=family, status="ACTIVE"))
    # familyPrefix matches prefixes: "app-1" would also list "app-10"'s revisions.
    own = [arn for arn in arns if arn.rsplit("/", 1)[-1].rsplit(":", 1)[0] == family]
    for arn in own:
        ecs.deregister_task_definition(taskDefinition=arn)
    if own:
        logger.info("Deregistered %d revision(s) of task definition %s", len(own), family)
    return own


def task_definition_tags(ecs: BaseClient, family: str) -> dict[str, str] | None:
    """The tags of the family's latest ACTIVE revision, or None when it has none."""
    try:
        response = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
    except ClientError as exc:
        if error_code(exc) in {"ClientException", "InvalidParameterException"}:  # ECS's "not found"
            return None
        raise
    if response["taskDefinition"].get("status") != "ACTIVE":
        return None
    return tags_of(response)


def deregister_container_instances(ecs: BaseClient, cluster: str, ec2_instance_ids: set[str]) -> int:
    """Deregister the cluster's container instances that run on these EC2 instances; returns how many.

    ECS notices terminated instances only minutes later; until then the cluster cannot be deleted.
    """
    if not ec2_instance_ids:
        return 0
    try:
        arns = list(paginate(ecs, "list_container_instances", "containerInstanceArns", cluster=cluster))
    except ClientError as exc:
        if error_code(exc) in MISSING_CODES:
            return 0
        raise
    count = 0
    for batch in chunks(arns, DESCRIBE_LIMIT):
        described = ecs.describe_container_instances(cluster=cluster, containerInstances=batch)
        for instance in described.get("containerInstances", []):
            if instance.get("ec2InstanceId") in ec2_instance_ids:
                ecs.deregister_container_instance(
                    cluster=cluster, containerInstance=instance["containerInstanceArn"], force=True
                )
                count += 1
    return count


def _has_services(ecs: BaseClient, cluster: str) -> bool:
    """Whether a service not yet deleted is left (activeServicesCount would do on AWS; moto never sets
    it, and its list_services also lists deleted services)."""
    for arns in chunks(paginate(ecs, "list_services", "serviceArns", cluster=cluster), SERVICE_DESCRIBE_LIMIT):
        services = ecs.describe_services(cluster=cluster, services=arns).get("services", [])
        if any(service.get("status") != "INACTIVE" for service in services):
            return True
    return False


def delete_cluster_if_empty(ecs: BaseClient, name: str) -> bool:
    """Delete the cluster when no service, task or container instance is left in it.

    Returns True when the cluster is gone (deleted now or missing), False when it is still in use.
    """
    cluster = describe_cluster(ecs, name)
    if cluster is None:
        return True
    in_use = (
        _has_services(ecs, name)
        + cluster.get("runningTasksCount", 0)
        + cluster.get("pendingTasksCount", 0)
        + cluster.get("registeredContainerInstancesCount", 0)
    )
    if in_use:
        logger.info("ECS cluster %s is still in use; kept", name)
        return False
    try:
        ecs.delete_cluster(cluster=name)
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING_CODES:
            return True
        if code in CLUSTER_IN_USE_CODES:
            logger.info("ECS cluster %s is still in use (%s); kept", name, code)
            return False
        raise
    logger.info("Deleted ECS cluster %s", name)
    return True


def idle_container_instances(ecs: BaseClient, cluster: str, ec2_instance_ids: set[str]) -> set[str]:
    """Those of these EC2 instances whose container instance in the cluster runs no ECS task and has
    none pending: safe to terminate. A machine whose agent has not registered is not idle (it is
    still starting, or ECS cannot tell what it runs). Calls grow with the cluster's machines only."""
    if not ec2_instance_ids:
        return set()
    try:
        arns = list(paginate(ecs, "list_container_instances", "containerInstanceArns", cluster=cluster))
    except ClientError as exc:
        if error_code(exc) in MISSING_CODES:
            return set()
        raise
    idle: set[str] = set()
    for batch in chunks(arns, DESCRIBE_LIMIT):
        for instance in ecs.describe_container_instances(cluster=cluster, containerInstances=batch).get(
            "containerInstances", []
        ):
            busy = instance.get("runningTasksCount", 0) + instance.get("pendingTasksCount", 0)
            if instance.get("ec2InstanceId") in ec2_instance_ids and not busy:
                idle.add(instance["ec2InstanceId"])
    return idle

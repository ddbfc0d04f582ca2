"""CloudWatch Logs: the workers' log group, its export to S3, its deletion."""

from __future__ import annotations

import logging
from collections.abc import Callable

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.errors import AwsOperationError

logger = logging.getLogger(__name__)

EXPORT_POLL_S = 5.0
EXPORT_RUNNING_STATES = frozenset({"PENDING", "RUNNING", "PENDING_CANCEL"})
BUCKET_POLICY_FIX = (
    "CloudWatch Logs could not write to s3://{bucket}/{prefix}: the bucket needs a policy letting the "
    "service principal logs.{region}.amazonaws.com call s3:GetBucketAcl on the bucket and s3:PutObject on "
    "'{prefix}/*' (see 'Export log data to Amazon S3' in the CloudWatch Logs guide). AWS said: {detail}"
)


def log_group_exists(logs: BaseClient, name: str) -> bool:
    return any(
        group["logGroupName"] == name
        for group in paginate(logs, "describe_log_groups", "logGroups", logGroupNamePrefix=name)
    )


def ensure_log_group(logs: BaseClient, name: str, retention_days: int, tags: dict[str, str]) -> None:
    """Create the log group when missing (tagged), and set its retention either way. Idempotent."""
    if not log_group_exists(logs, name):
        try:
            logs.create_log_group(logGroupName=name, tags=tags)
            logger.info("Created log group %s", name)
        except ClientError as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":  # created meanwhile by a worker
                raise
    logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)


def export_log_group(
    logs: BaseClient,
    name: str,
    bucket: str,
    prefix: str,
    from_ms: int,
    to_ms: int,
    *,
    deadline_s: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str:
    """Export the group's events in [from_ms, to_ms] to s3://bucket/prefix; returns the final status.

    Waits at most `deadline_s` and returns the status reached by then (e.g. 'RUNNING'): the export
    goes on in AWS without us. Raises AwsOperationError saying which bucket policy is missing when
    CloudWatch may not write to the bucket (Distributed-Something meant to print that, but named an
    exception class that does not exist and crashed with AttributeError instead).
    """
    try:
        task_id = logs.create_export_task(
            taskName=f"{name.strip('/').replace('/', '-')}-{to_ms}",
            logGroupName=name,
            fromTime=from_ms,
            to=to_ms,
            destination=bucket,
            destinationPrefix=prefix,
        )["taskId"]
    except ClientError as exc:
        if error_code(exc) == "InvalidParameterException":
            detail = exc.response.get("Error", {}).get("Message", "")
            region = logs.meta.region_name
            raise AwsOperationError(
                BUCKET_POLICY_FIX.format(bucket=bucket, prefix=prefix, region=region, detail=detail)
            ) from exc
        raise
    deadline = clock() + deadline_s
    while True:
        tasks = logs.describe_export_tasks(taskId=task_id).get("exportTasks", [])
        status = tasks[0]["status"]["code"] if tasks else "UNKNOWN"
        if status not in EXPORT_RUNNING_STATES or clock() >= deadline:
            logger.info("Export of log group %s to s3://%s/%s: %s", name, bucket, prefix, status)
            return status
        sleep(EXPORT_POLL_S)


def delete_log_group(logs: BaseClient, name: str) -> None:
    """Delete the log group; a missing one counts as deleted."""
    try:
        logs.delete_log_group(logGroupName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        return
    logger.info("Deleted log group %s", name)

"""What every task shares: AWS clients from the configured credentials, and the retry policy."""

from __future__ import annotations

import os
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect_aws import AwsCredentials

from core.aws.clients import AwsClients, is_transient
from core.config import RunConfig


def clients_for(credentials_block: str | None, region: str, endpoint_url: str | None = None) -> AwsClients:
    """Clients from a saved credentials block (or boto3's default chain), for a region.

    AWS calls go to `endpoint_url`, else the block's endpoint, else AWS_ENDPOINT_URL, else AWS.
    """
    credentials = AwsCredentials.load(credentials_block, _sync=True) if credentials_block else AwsCredentials()
    return AwsClients(
        session=credentials.get_boto3_session(),
        region=region,
        endpoint_url=endpoint_url
        or credentials.aws_client_parameters.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL"),
    )


def aws_clients(config: RunConfig) -> AwsClients:
    return clients_for(config.aws_credentials, config.region, config.endpoint_url)


def retry_on_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a task only when it failed on throttling, a 5xx, a timeout or a dropped connection."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return is_transient(exc)
    return False


# Every task that talks to AWS is idempotent and declares these.
AWS_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
}

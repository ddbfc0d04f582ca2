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


def aws_credentials(config: RunConfig) -> AwsCredentials:
    """The saved credentials block the config names, or boto3's default chain."""
    if config.aws_credentials:
        return AwsCredentials.load(config.aws_credentials, _sync=True)
    return AwsCredentials()


def endpoint_url(config: RunConfig, credentials: AwsCredentials) -> str | None:
    """Where AWS calls go: the config's endpoint, the block's, AWS_ENDPOINT_URL, or AWS itself."""
    return config.endpoint_url or credentials.aws_client_parameters.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")


def aws_clients(config: RunConfig) -> AwsClients:
    credentials = aws_credentials(config)
    return AwsClients(
        session=credentials.get_boto3_session(),
        region=config.region,
        endpoint_url=endpoint_url(config, credentials),
    )


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

"""What every task shares: AWS clients from the configured credentials, and the retry policy."""

from __future__ import annotations

import os
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import ObjectNotFound
from prefect.states import State
from prefect_aws import AwsCredentials

from prefect_distributed.core.aws.clients import AwsClients, check_endpoint, is_transient
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError


def load_credentials(credentials_block: str | None) -> AwsCredentials:
    """The saved 'AWS Credentials' block of that name, or boto3's default chain when None."""
    if not credentials_block:
        return AwsCredentials()
    try:
        return AwsCredentials.load(credentials_block, _sync=True)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):  # Prefect's "Unable to find block document"
            raise
        raise ConfigError(
            f"aws_credentials: there is no saved AWS Credentials block named '{credentials_block}' (list them with "
            f"`prefect block ls`). Fix: correct aws_credentials, save one under that name "
            f"(AwsCredentials(profile_name=...).save('{credentials_block}')), or remove aws_credentials to use "
            "boto3's default credentials"
        ) from None


def clients_for(credentials_block: str | None, region: str, endpoint_url: str | None = None) -> AwsClients:
    """Clients from a saved credentials block (or boto3's default chain), for a region.

    AWS calls go to `endpoint_url`, else the block's endpoint, else AWS_ENDPOINT_URL, else AWS. An
    endpoint set by any of these is tried once first, so a wrong one fails at once, naming its setting.
    """
    credentials = load_credentials(credentials_block)
    candidates = (
        (endpoint_url, "the endpoint_url setting"),
        (
            credentials.aws_client_parameters.endpoint_url,
            f"aws_client_parameters.endpoint_url of credentials block '{credentials_block}'",
        ),
        (os.environ.get("AWS_ENDPOINT_URL"), "AWS_ENDPOINT_URL in the environment"),
    )
    endpoint, setting = next(((url, setting) for url, setting in candidates if url), (None, ""))
    if endpoint:
        check_endpoint(endpoint, setting)
    return AwsClients(session=credentials.get_boto3_session(), region=region, endpoint_url=endpoint)


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

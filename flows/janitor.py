"""The `distributed-janitor` flow: remove what crashed runs left behind, found by tag.

Deployed as `distributed-janitor/sweep` with an hourly schedule (off until you turn it on).
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from prefect_distributed.core.fleets import BACKENDS
from prefect_distributed.core.janitor import JanitorReport, sweep
from prefect_distributed.tasks._aws import clients_for


def _run_is_over(run_id: str) -> bool | None:
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
    except (ObjectNotFound, ValueError):
        return None
    return state is not None and state.is_final()


@flow(name="distributed-janitor", description="Remove the queues and fleets of runs that are over, by tag.")
def janitor(
    region: str = "us-east-1",
    aws_credentials: str | None = None,
    endpoint_url: str | None = None,
    app_name: str | None = None,
    dry_run: bool = False,
) -> JanitorReport:
    """Sweep one region.

    Args:
        region: The AWS region to sweep.
        aws_credentials: Name of a saved prefect-aws 'AWS Credentials' block; default: boto3's chain.
        endpoint_url: Send AWS calls here (a local emulator) instead of AWS.
        app_name: Only resources of this app.
        dry_run: Report what would be removed, remove nothing.
    """
    logger = get_run_logger()
    clients = clients_for(aws_credentials, region, endpoint_url)
    fleets = [make_backend(clients, None) for make_backend in BACKENDS.values()]
    report = sweep(clients.client("sqs"), fleets, _run_is_over, app_name=app_name, dry_run=dry_run)
    logger.info("Janitor: %d removed, %d kept: %s", len(report.removed), len(report.kept), report.kept or "")
    return report

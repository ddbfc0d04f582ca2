"""Resume: attach a new flow run to a batch whose flow run died, by the batch's run id."""

from __future__ import annotations

from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as current_run
from prefect.states import Crashed

from prefect_distributed.core.aws import s3
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.enqueue import marker_key
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.models import RunResources
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="check resumable", cache_policy=NO_CACHE, **AWS_RETRIES)
def check_resumable(config: RunConfig, run_id: str) -> None:
    """Refuse to resume a run that never enqueued anything. A flow run killed outright can stay
    'Running' on the server for ever: being asked to resume it, we mark it Crashed, so that the UI
    and the janitor see one live run of the batch.

    The resumed run works under the old run id: the same queues, fleet, records and summary.
    """
    logger = get_run_logger()
    resources = RunResources.for_run(config, run_id)
    if s3.get_json(aws_clients(config).client("s3"), resources.records_bucket, marker_key(resources)) is None:
        raise ConfigError(
            f"resume_run_id: run {run_id} has no records at "
            f"s3://{resources.records_bucket}/{resources.records_prefix}/; give the run id (the flow run id) "
            "of a run of this config that got as far as enqueueing"
        )
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(UUID(run_id)).state
        except (ValueError, ObjectNotFound):
            state = None  # a run of another Prefect server
        if state is not None and not state.is_final():
            client.set_flow_run_state(
                UUID(run_id), Crashed(message=f"Its process is gone; resumed as flow run {current_run.id}"), force=True
            )
            logger.warning("Run %s was still %s on the server; marked it Crashed", run_id, state.name)
    logger.info("Resuming run %s", run_id)

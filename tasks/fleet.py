"""Fleet start: the workers that take jobs off the queue."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.fleets import FleetRequest, fleet_backend
from prefect_distributed.core.models import FleetHandle, QueueUrls, RunResources
from prefect_distributed.core.worker_env import worker_environment
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="start fleet", cache_policy=NO_CACHE, **AWS_RETRIES)
def start_fleet(config: RunConfig, resources: RunResources, urls: QueueUrls) -> FleetHandle:
    """Start the workers; starting again for the same run returns the running fleet."""
    logger = get_run_logger()
    backend = fleet_backend(aws_clients(config), config)
    environment = worker_environment(config, resources, urls)
    handle = backend.start(FleetRequest(run_id=resources.run_id, environment=environment))
    logger.info("Fleet %s (%s) started with %d workers", handle.id, handle.backend, handle.workers)
    return handle

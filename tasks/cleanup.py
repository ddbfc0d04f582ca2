"""Cleanup: stop the workers and delete what setup made. Runs however the run ended."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.cleanup import clean_up
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.models import CleanupResult, RunResources
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="cleanup", cache_policy=NO_CACHE, **AWS_RETRIES)
def cleanup_run(config: RunConfig, resources: RunResources) -> CleanupResult:
    """Idempotent, from the run's derived names: safe after a crash, and twice."""
    return clean_up(aws_clients(config), config, resources, get_run_logger())

"""Rerun the jobs an earlier run did not finish: its dead (and unfinished) jobs, once fixed.

The earlier run's summary in S3 names them, so this works after its queues are long gone
(Distributed-Something users had to move messages out of the dead-letter queue by hand).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.aws.s3 import get_json
from prefect_distributed.core.batch import Batch
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.jobs import JobFileCheck, reread_jobs
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="select failed jobs", cache_policy=NO_CACHE, **AWS_RETRIES)
def select_failed_jobs(config: RunConfig, jobs: JobFileCheck, earlier_run_id: str) -> Batch:
    logger = get_run_logger()
    key = f"runs/{earlier_run_id}/summary.json"
    summary = get_json(aws_clients(config).client("s3"), config.bucket, key)
    if summary is None:
        raise ConfigError(
            f"rerun_failed_from: no summary of run {earlier_run_id} at s3://{config.bucket}/{key}; "
            "give the run id of a finished run of this config"
        )
    wanted = {dead["job_id"] for dead in summary.get("failed", [])} | set(summary.get("unfinished", []))
    if not wanted:
        raise ConfigError(f"rerun_failed_from: run {earlier_run_id} has no failed or unfinished job to rerun")
    present = {job.job_id for job in reread_jobs(jobs, config.command) if job.job_id in wanted}
    if missing := wanted - present:
        raise ConfigError(
            f"rerun_failed_from: {len(missing)} job(s) of run {earlier_run_id} are not in {jobs.path} any more "
            f"(e.g. {sorted(missing)[0]}); rerun with the job file that run used"
        )
    logger.info("Rerunning %d failed or unfinished jobs of run %s", len(wanted), earlier_run_id)
    return Batch(file=jobs, only=frozenset(wanted))

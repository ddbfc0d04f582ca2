"""Preflight: check the account and the config before anything is created or paid for."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.preflight import PreflightReport, run_preflight
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="preflight", cache_policy=NO_CACHE, **AWS_RETRIES)
def preflight_run(config: RunConfig) -> PreflightReport:
    """Run every check, publish all rows as the table artifact `preflight`, and raise ConfigError
    listing every problem with its fix when there is any. Read-only, so retries are safe."""
    logger = get_run_logger()
    report = run_preflight(aws_clients(config), config)
    create_table_artifact(
        key="preflight",
        table=[row.model_dump() for row in report.rows],
        description=f"Preflight of {config.app_name} ({config.fleet.backend}, {config.region}): "
        f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)",
    )
    for row in report.warnings:
        logger.warning("Preflight %s: %s. Fix: %s", row.check, row.detail, row.fix)
    for row in report.problems:
        logger.error("Preflight %s: %s. Fix: %s", row.check, row.detail, row.fix)
    logger.info(
        "Preflight of %s: %d check(s) ok, %d warning(s), %d problem(s)",
        config.app_name,
        len(report.rows) - len(report.problems) - len(report.warnings),
        len(report.warnings),
        len(report.problems),
    )
    report.raise_for_problems()
    return report

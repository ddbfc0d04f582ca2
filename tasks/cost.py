"""What a run should cost, shown before its fleet starts (spot-fleet; local fleets are free)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.cost import CostEstimate
from prefect_distributed.core.fleets import fleet_backend
from prefect_distributed.tasks._aws import AWS_RETRIES, aws_clients


@task(name="cost estimate", cache_policy=NO_CACHE, **AWS_RETRIES)
def estimate_run_cost(config: RunConfig, jobs: int) -> CostEstimate | None:
    """Log the estimate with its assumptions and show it in the UI; warn when it passes the budget."""
    logger = get_run_logger()
    estimate = fleet_backend(aws_clients(config), config).cost_estimate(jobs)
    if estimate is None:
        return None
    logger.info("%s", estimate.text)
    budget = config.fleet.budget_usd
    lines = [f"# Cost estimate of {config.app_name}", "", estimate.text, "", "Assumptions:", ""]
    lines += [f"- {assumption}" for assumption in estimate.assumptions]
    if budget is not None:
        lines += ["", f"Budget: ${budget:,.2f} (fleet.budget_usd): the run stops when its machines have cost that."]
        if estimate.total_usd is not None and estimate.total_usd.low > budget:
            logger.warning(
                "Even the low estimate ($%.2f) is over fleet.budget_usd ($%.2f): the run will stop before the "
                "batch is done",
                estimate.total_usd.low,
                budget,
            )
    create_markdown_artifact("\n".join(lines), key="cost-estimate", description="Estimated cost of the run")
    return estimate

"""The `distributed-preflight` flow: check the account and a config, create nothing.

Deployed as `distributed/preflight`; the `distributed` flow runs the same check before setup.
"""

from __future__ import annotations

from prefect import flow

from prefect_distributed.core.preflight import PreflightReport
from prefect_distributed.tasks.preflight import preflight_run
from prefect_distributed.tasks.validate import ConfigParameter, resolve_config


@flow(
    name="distributed-preflight",
    description="Check the account and a config before a run: buckets, queue names, IAM roles, network, sizes.",
)
def preflight(config: ConfigParameter) -> PreflightReport:
    """Report every problem at once (table artifact `preflight`); fails when there is any.

    Args:
        config: A YAML config file path, the name of a saved 'Distributed Config' block, or the
            settings themselves as a mapping.
    """
    return preflight_run(resolve_config(config))

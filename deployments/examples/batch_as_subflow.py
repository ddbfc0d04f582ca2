"""Example: call `distributed` from your own flow, as a subflow, and use its RunSummary.

The batch runs in this process, as a child flow run of `plate_pipeline`, so this process needs the
AWS access the flow needs. For the demo config that is the AWS emulator of `make serve`, which
prints the lines to export (its endpoint, its keys and the Prefect server) in its first terminal:

    make serve                                   # terminal 1
    export AWS_ENDPOINT_URL=http://127.0.0.1:... AWS_ACCESS_KEY_ID=demo ...   # terminal 2, as printed
    .venv/bin/python deployments/examples/batch_as_subflow.py deployments/demo/config.yaml

The last line printed is the batch's RunSummary as JSON. On AWS, your own credentials (an AWS
profile, or the config's `aws_credentials` block) take the emulator's place.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from prefect_distributed import RunSummary, distributed


@flow(name="plate-pipeline")
def plate_pipeline(config: str) -> RunSummary:
    """Process a batch, then decide what to do next from its summary."""
    logger = get_run_logger()
    summary = distributed(config=config)
    if summary.failed:
        logger.warning("%d jobs failed; rerun them with rerun_failed_from=%s", len(summary.failed), summary.run_id)
    logger.info("%d of %d wells processed; next step can start", summary.succeeded + summary.skipped, summary.total)
    return summary


if __name__ == "__main__":
    print(plate_pipeline(config=sys.argv[1]).model_dump_json())

"""Example: start the `distributed/run` deployment from your own flow, wait for it, read its RunSummary.

    make serve                                   # terminal 1: prints the lines to export
    export PREFECT_API_URL=http://127.0.0.1:4200/api AWS_ENDPOINT_URL=...   # terminal 2, as printed
    .venv/bin/python deployments/examples/trigger_deployment.py deployments/demo/config.yaml

Unlike a subflow, the batch runs wherever the deployment's work pool runs it, and can be
cancelled on its own. Its RunSummary is read back from S3 (`runs/<run id>/summary.json` in the
config's bucket), so this process needs read access to that bucket: here, the emulator's. A relative
config path is read by the deployment's run from the folder `prefect deploy` ran in, and by this
process from its own working directory: run both from the repository's root, or give an absolute path.
The last line printed is the RunSummary as JSON.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from prefect_distributed.core.models import RunSummary
from prefect_distributed.tasks.report import read_run_summary


@flow(name="nightly-batch")
def nightly_batch(config: str) -> RunSummary:
    """Run the batch through its deployment; fail if the batch did not complete."""
    logger = get_run_logger()
    batch = run_deployment("distributed/run", parameters={"config": config}, timeout=None)
    if batch.state is None or not batch.state.is_completed():
        raise RuntimeError(f"batch {batch.name} ended in state {batch.state.name if batch.state else 'unknown'}")
    summary = read_run_summary(config, str(batch.id))
    logger.info("Batch %s (flow run %s): %s", batch.name, batch.id, summary.headline)
    return summary


if __name__ == "__main__":
    print(nightly_batch(config=sys.argv[1]).model_dump_json())

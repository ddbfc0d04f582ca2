"""Example: start the `distributed/run` deployment from your own flow and wait for it.

    export PREFECT_API_URL=http://127.0.0.1:4200/api     # a server with the deployment (make serve)
    python deployments/examples/trigger_deployment.py deployments/demo/config.yaml

Unlike a subflow, the batch runs wherever the deployment's work pool runs it, and can be
cancelled on its own. Its RunSummary is read back from the summary artifact's run.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment


@flow(name="nightly-batch")
def nightly_batch(config: str) -> str:
    """Run the batch through its deployment; fail if the batch did not complete."""
    logger = get_run_logger()
    batch = run_deployment("distributed/run", parameters={"config": config}, timeout=None)
    if batch.state is None or not batch.state.is_completed():
        raise RuntimeError(f"batch {batch.name} ended in state {batch.state.name if batch.state else 'unknown'}")
    logger.info("Batch %s completed (flow run %s)", batch.name, batch.id)
    return str(batch.id)


if __name__ == "__main__":
    print(nightly_batch(config=sys.argv[1]))

"""Cancellation seen from inside the flow run.

Cancelling a deployment's run (`prefect flow-run cancel`, the UI) sets it Cancelling on the server;
the Prefect worker then sends the flow's process SIGTERM, which Prefect raises as
`TerminationSignal` wherever the run is. Reading the run's state tells a cancel from any other
termination, so the run can stop its monitor quietly, clean up once and end Cancelled.
"""

from __future__ import annotations

import logging

import httpx
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run as current_run

logger = logging.getLogger(__name__)


def cancel_request() -> str | None:
    """The request's message ('' when it gave none) if this flow run is being cancelled, else None.

    Prefect keeps no record of who asked; the message is what the UI, CLI or API sent with it.
    """
    if current_run.id is None:
        return None
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(current_run.id).state
    except httpx.HTTPError as exc:  # an unreachable API: the termination is handled as a crash
        logger.warning("Could not read the state of flow run %s: %s", current_run.id, exc)
        return None
    if state is None or not (state.is_cancelling() or state.is_cancelled()):
        return None
    return state.message or ""

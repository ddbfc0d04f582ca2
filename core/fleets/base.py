"""The contract every fleet backend keeps. The flow only ever sees these types."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.cost import CostEstimate, CostReport
from prefect_distributed.core.models import FleetHandle, FleetStatus


def flow_credentials(clients: AwsClients) -> dict[str, str]:
    """The flow's own AWS keys as the variables boto3 reads; empty when it has none. Workers on this
    machine use them; a Spot Fleet's use their task role instead."""
    found = clients.session.get_credentials()
    if found is None:
        return {}
    frozen = found.get_frozen_credentials()
    credentials = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        credentials["AWS_SESSION_TOKEN"] = frozen.token
    return credentials


class FleetRequest(BaseModel):
    """What a fleet must start for a run: the environment each worker reads. How many workers and
    where is the backend's own config (fleet.local_workers, fleet.machines x tasks_per_machine)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    environment: dict[str, str] = Field(description="Worker settings; never secrets (see worker/README.md).")


class FleetBackend(Protocol):
    """Starts, watches and stops the workers of one run.

    Every method is idempotent and works from any process: a handle is all it needs.
    """

    def handle_for(self, run_id: str, workers: int = 0) -> FleetHandle:
        """The handle of a run's fleet from the run id alone, for cleanup after a crash."""
        ...

    def preflight(self) -> object:
        """Check the fleet's settings before anything exists; raises ConfigError with every problem."""
        ...

    def start(self, request: FleetRequest) -> FleetHandle:
        """Start the workers and return at once, without waiting for them to take jobs.

        Starting again for a run whose workers are alive returns the same handle.
        Raises FleetError when the fleet cannot be started at all.
        """
        ...

    def running_fleets(self) -> list[str]:
        """Run ids of every fleet of this backend that is still running (for the janitor)."""
        ...

    def status(self, handle: FleetHandle) -> FleetStatus:
        """How many workers were asked for, and how many are alive now; once stopped, what the fleet
        keeps on purpose by config (`kept`, e.g. the local fleet's logs), for the run's summary."""
        ...

    def scale_in(self, handle: FleetHandle, busy_jobs: int) -> None:
        """No job waits any more: shrink to what `busy_jobs` occupy, never stopping a busy worker."""
        ...

    def hold(self, handle: FleetHandle) -> None:
        """'Cheapest' mode: ask for no more machines than the fleet has, and stop replacing lost ones
        beyond one; never stops a running worker."""
        ...

    def cost_estimate(self, jobs: int) -> CostEstimate | None:
        """What running `jobs` jobs on this fleet should cost, with its assumptions; None: free."""
        ...

    def cost(self, handle: FleetHandle) -> CostReport | None:
        """What the fleet's machines have cost so far (instance-hours x spot price); None: free."""
        ...

    def stop(self, handle: FleetHandle) -> None:
        """Stop every worker of the fleet; stopping a stopped fleet does nothing."""
        ...


class ThisMachine:
    """What a fleet of workers on this machine (processes or containers) does where a Spot Fleet
    would scale, hold or pay: nothing."""

    def scale_in(self, handle: FleetHandle, busy_jobs: int) -> None:
        """Nothing to do: workers exit by themselves once the queue has drained for
        monitor.worker_idle_exit_s, and stopping one could interrupt its job."""

    def hold(self, handle: FleetHandle) -> None:
        """Nothing to do: workers on this machine are never replaced."""

    def cost_estimate(self, jobs: int) -> CostEstimate | None:
        """Workers on this machine cost nothing extra."""
        return None

    def cost(self, handle: FleetHandle) -> CostReport | None:
        return None

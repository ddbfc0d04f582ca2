"""The deployments of prefect.yaml, for the installed package: no checkout of the repository needed.

From a checkout, `prefect deploy --all` registers prefect.yaml's deployments. Where only the package
is installed, `prefect-distributed deploy` registers the same ones (module-path entrypoints, so a
worker imports the flow from the package) and `prefect-distributed serve` serves them from one
process. tests/test_packaging.py holds this list to prefect.yaml's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

WORK_POOL = "distributed"
TAGS = ["distributed"]
# The flows' names (their @flow(name=...)): a deployment is "<flow name>/<deployment name>".
FLOW_NAMES = {"distributed": "distributed", "janitor": "distributed-janitor"}


class DeploymentSpec(BaseModel):
    """One deployment: which flow, its name, and what it presets."""

    model_config = ConfigDict(frozen=True)

    flow: Literal["distributed", "janitor"]
    name: str
    description: str
    parameters: dict[str, Any] = {}
    # An interval schedule, created turned off (the user turns it on).
    paused_interval_s: int | None = None

    @property
    def full_name(self) -> str:
        """What `prefect deployment run` takes: "<flow name>/<deployment name>"."""
        return f"{FLOW_NAMES[self.flow]}/{self.name}"


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        flow="distributed",
        name="run",
        description="Run a containerised program over every job of a job file, then clean up.",
    ),
    DeploymentSpec(
        flow="distributed",
        name="redrive",
        description=(
            "Rerun the failed and unfinished jobs of an earlier run, after fixing their cause: "
            "prefect deployment run distributed/redrive -p config=... -p rerun_failed_from=<run id>"
        ),
    ),
    DeploymentSpec(
        flow="distributed",
        name="preflight",
        description=(
            "Check the AWS account and a config before a batch (roles, instance profile, network, key pair, "
            "AMI, sizes, Spot quota, buckets, queue names); creates nothing, fails listing every problem: "
            "prefect deployment run distributed/preflight -p config=..."
        ),
        parameters={"action": "preflight"},
    ),
    DeploymentSpec(
        flow="distributed",
        name="bootstrap",
        description=(
            "Once per AWS account and region: the IAM roles, instance profile and bucket policy that spot-fleet "
            "batches need (idempotent); -p action=destroy-bootstrap removes exactly what it made."
        ),
        parameters={"action": "bootstrap"},
    ),
    DeploymentSpec(
        flow="janitor",
        name="sweep",
        description="Remove the queues and fleets of runs that are over (crashed runs' leftovers), by tag.",
        paused_interval_s=3600,
    ),
)


def _flow(name: Literal["distributed", "janitor"]) -> Flow[..., Any]:
    if name == "distributed":
        from prefect_distributed.flows.distributed import distributed

        return distributed
    from prefect_distributed.flows.janitor import janitor

    return janitor


def runner_deployments(job_variables: dict[str, Any] | None = None) -> list[RunnerDeployment]:
    """Every deployment, loading its flow by module path (`prefect_distributed.flows...`)."""
    from prefect.schedules import Interval
    from prefect.types.entrypoint import EntrypointType

    return [
        _flow(spec.flow).to_deployment(
            name=spec.name,
            description=spec.description,
            parameters=spec.parameters,
            tags=TAGS,
            enforce_parameter_schema=True,
            schedules=[Interval(spec.paused_interval_s, active=False)] if spec.paused_interval_s else None,
            job_variables=job_variables,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for spec in DEPLOYMENTS
    ]


def deploy(work_pool: str = WORK_POOL, working_dir: Path | None = None) -> list[str]:
    """Register every deployment on `work_pool`; returns their ids.

    A process pool's runs start in `working_dir` (default: this folder), so a relative config path
    means the same as for prefect.yaml's deployments: relative to where they were registered.
    """
    from prefect import deploy as prefect_deploy
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            pool_type = client.read_work_pool(work_pool).type
    except ObjectNotFound:
        raise ValueError(
            f"there is no work pool named {work_pool!r}: create it with "
            f"`prefect work-pool create {work_pool} --type process`, or name another with --pool"
        ) from None
    job_variables = {"working_dir": str((working_dir or Path.cwd()).resolve())} if pool_type == "process" else None
    ids = prefect_deploy(*runner_deployments(job_variables), work_pool_name=work_pool, print_next_steps_message=False)
    return [str(deployment_id) for deployment_id in ids]


def serve() -> None:
    """Serve every deployment from this process until it is stopped: no work pool or worker needed.
    Runs start in this process's folder, so relative config paths resolve against it."""
    from prefect import serve as prefect_serve

    prefect_serve(*runner_deployments())

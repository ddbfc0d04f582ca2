"""The `docker` fleet: worker containers of `container.image` on this machine's Docker engine.

It is how a user tests their image before paying for a fleet: the same image, the same environment
(core/worker_env.py, the task definition's), an init as PID 1 and the same stop timeout as on ECS,
against the emulator or AWS. Containers are labelled with the run's tags (labels play the part of
AWS tags), so status, stop and the janitor find them from the run id alone, from any process.

Containers use the host's network, so they reach an emulator bound to 127.0.0.1 as the flow does.
The flow's AWS credentials reach the workers as a credentials file mounted read-only, never in the
container's environment, which `docker inspect` shows to anyone who may use the engine.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError, FleetError
from prefect_distributed.core.fleets.base import FleetRequest, ThisMachine, flow_credentials
from prefect_distributed.core.fleets.local import default_state_root
from prefect_distributed.core.models import FleetHandle, FleetStatus
from prefect_distributed.core.tags import CREATED_BY, TAG_APP, TAG_CREATED_BY, TAG_RUN_ID
from prefect_distributed.core.worker_env import WORKER_STOP_TIMEOUT_S

logger = logging.getLogger(__name__)

BACKEND = "docker"
# worker/Dockerfile sets this label; an image without it would not run the worker.
WORKER_IMAGE_LABEL = "prefect-distributed.worker"
# Where the credentials file appears inside each container.
CONTAINER_CREDENTIALS = "/run/prefect-distributed/aws-credentials"
BUILD_HINT = (
    "build it on top of your program's image: docker build --build-arg BASE_IMAGE=<your program's image> "
    "-t {image} worker/"
)
ENGINE_HINT = (
    "start the Docker engine (sudo systemctl start docker, or sudo dockerd &; on Debian or Ubuntu without one: "
    "sudo apt-get install docker.io), or let this user reach it (sudo usermod -aG docker $USER)"
)


class DockerFleetSettings(BaseModel):
    """What the docker backend needs from a run's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_name: str = Field(description="Names the containers and labels them.")
    image: str = Field(description="The worker image (worker/Dockerfile on top of the program's image).")
    workers: int = Field(ge=1, description="Containers to run (fleet.local_workers).")
    cpu_units: int = Field(description="CPU shares per container, as ECS cpu units (1024 = 1 vCPU).")
    memory_mib: int = Field(description="Hard memory limit per container in MiB, as in the task definition.")

    @classmethod
    def from_config(cls, config: RunConfig) -> DockerFleetSettings:
        return cls(
            app_name=config.app_name,
            image=config.container.image,
            workers=config.fleet.local_workers,
            cpu_units=config.container.cpu_units,
            memory_mib=config.container.memory_mib,
        )


def credentials_file(credentials: dict[str, str]) -> str:
    """The text of an AWS shared credentials file holding these keys (boto3 reads it in the worker)."""
    return "[default]\n" + "".join(f"{name.lower()} = {value}\n" for name, value in credentials.items())


class DockerFleet(ThisMachine):
    """Runs worker containers on this machine; `credentials` are the AWS keys the workers use."""

    def __init__(
        self,
        credentials: dict[str, str],
        endpoint_url: str | None = None,
        settings: DockerFleetSettings | None = None,
        state_root: Path | None = None,
    ) -> None:
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        self._settings = settings
        self._state_root = (state_root or default_state_root()) / BACKEND

    @classmethod
    def from_clients(cls, clients: AwsClients, config: RunConfig | None = None) -> DockerFleet:
        """Workers get the flow's own credentials (in a file) and endpoint."""
        settings = DockerFleetSettings.from_config(config) if config is not None else None
        return cls(flow_credentials(clients), clients.endpoint_url, settings)

    def _require_settings(self) -> DockerFleetSettings:
        if self._settings is None:
            raise ConfigError("the docker fleet needs the run's config to start containers")
        return self._settings

    def _engine(self) -> docker.DockerClient:
        """A client of the engine that answers; ConfigError saying where none did."""
        try:
            engine = docker.from_env()
            engine.ping()
        except DockerException as exc:
            where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise ConfigError(f"fleet.backend 'docker': no Docker engine answers at {where} ({exc})") from None
        return engine

    def _containers(self, run_id: str | None, running_only: bool = False) -> list[Any]:
        """The containers of one run (or of every run: None), found by label; none without an engine."""
        try:
            engine = docker.from_env()
            labels = [f"{TAG_CREATED_BY}={CREATED_BY}"] + ([f"{TAG_RUN_ID}={run_id}"] if run_id else [])
            filters: dict[str, Any] = {"label": labels}
            if running_only:
                filters["status"] = "running"
            return engine.containers.list(all=not running_only, filters=filters)
        except DockerException:
            return []  # no engine: nothing of ours can be running

    def problems(self) -> list[tuple[str, str]]:
        """What would stop the containers from starting, each as (what is wrong, its fix); empty
        when nothing would. Creates nothing."""
        settings = self._require_settings()
        try:
            engine = self._engine()
        except ConfigError as exc:
            return [(str(exc), ENGINE_HINT)]
        build = BUILD_HINT.format(image=settings.image)
        try:
            image = engine.images.get(settings.image)
        except ImageNotFound:
            return [(f"container.image: the Docker engine has no image {settings.image!r}", build)]
        if WORKER_IMAGE_LABEL not in (image.labels or {}):
            return [
                (
                    f"container.image: {settings.image!r} was not built from worker/Dockerfile (it has no label "
                    f"{WORKER_IMAGE_LABEL}), so it would not run the worker",
                    build,
                )
            ]
        return []

    def preflight(self) -> None:
        """Raises ConfigError, with the fix, when no engine answers, or the image is missing or is not
        a worker image."""
        found = self.problems()
        if found:
            raise ConfigError("\n".join(f"{detail}. Fix: {fix}" for detail, fix in found))

    def handle_for(self, run_id: str, workers: int = 0) -> FleetHandle:
        return FleetHandle(backend=BACKEND, id=run_id, workers=workers)

    def start(self, request: FleetRequest) -> FleetHandle:
        """Start `fleet.local_workers` containers; a run whose containers run gets its handle back.

        Containers of the run that have exited (an earlier start) are removed first. Raises
        ConfigError as preflight does and FleetError when the engine refuses a container.
        """
        settings = self._require_settings()
        self.preflight()
        handle = self.handle_for(request.run_id, settings.workers)
        if self._containers(request.run_id, running_only=True):
            logger.info("Docker fleet of run %s is already running", request.run_id)
            return handle
        self._remove(self._containers(request.run_id))
        api = self._engine().api
        environment = {**request.environment, **self._credentials_environment(request.run_id)}
        if self._endpoint_url:
            environment["AWS_ENDPOINT_URL"] = self._endpoint_url
        labels = {TAG_APP: settings.app_name, TAG_RUN_ID: request.run_id, TAG_CREATED_BY: CREATED_BY}
        for index in range(settings.workers):
            name = f"{settings.app_name}-{request.run_id}-{index}"
            try:
                created = api.create_container(
                    settings.image,
                    name=name,
                    labels=labels,
                    # With host networking every container has the host's name: the name tells workers apart.
                    environment={**environment, "DISTRIBUTED_WORKER_NAME": name},
                    stop_timeout=WORKER_STOP_TIMEOUT_S,
                    host_config=api.create_host_config(
                        init=True,  # reaps the orphans of every job's program, as initProcessEnabled on ECS
                        network_mode="host",
                        mem_limit=f"{settings.memory_mib}m",
                        cpu_shares=settings.cpu_units,
                        binds=self._credentials_binds(request.run_id),
                    ),
                )
                api.start(created["Id"])
            except APIError as exc:
                refusal = exc.explanation or str(exc)
                raise FleetError(f"the Docker engine refused worker container {name}: {refusal}") from None
        logger.info(
            "Started %d worker containers of %s; their output: docker logs %s-%s-<n>",
            settings.workers,
            settings.image,
            settings.app_name,
            request.run_id,
        )
        return handle

    def _credentials_dir(self, run_id: str) -> Path:
        return self._state_root / run_id

    def _credentials_environment(self, run_id: str) -> dict[str, str]:
        """Write the run's credentials file (readable on this machine only through its folder)."""
        if not self._credentials:
            return {}
        folder = self._credentials_dir(run_id)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # also when an earlier start made it
        path = folder / "aws-credentials"
        path.write_text(credentials_file(self._credentials))
        # The worker runs as its own user in the container; the folder keeps other users out here.
        path.chmod(0o644)
        return {"AWS_SHARED_CREDENTIALS_FILE": CONTAINER_CREDENTIALS}

    def _credentials_binds(self, run_id: str) -> dict[str, dict[str, str]]:
        path = self._credentials_dir(run_id) / "aws-credentials"
        return {str(path): {"bind": CONTAINER_CREDENTIALS, "mode": "ro"}} if self._credentials else {}

    def running_fleets(self) -> list[str]:
        """Run ids with a running container of ours."""
        return sorted({container.labels.get(TAG_RUN_ID, "") for container in self._containers(None, True)} - {""})

    def status(self, handle: FleetHandle) -> FleetStatus:
        return FleetStatus(target=handle.workers, running=len(self._containers(handle.id, running_only=True)))

    def stop(self, handle: FleetHandle) -> None:
        """Stop every container of the run (SIGTERM: each hands its job back; SIGKILL after the stop
        timeout), all at once, then remove them and the credentials file. Idempotent."""
        self._remove(self._containers(handle.id))
        shutil.rmtree(self._credentials_dir(handle.id), ignore_errors=True)

    def _remove(self, containers: list[Any]) -> None:
        if not containers:
            return

        def remove(container: Any) -> None:
            try:
                container.stop(timeout=WORKER_STOP_TIMEOUT_S)
                container.remove()
            except NotFound:
                pass  # removed meanwhile

        with ThreadPoolExecutor(max_workers=len(containers)) as pool:
            list(pool.map(remove, containers))
        logger.info("Stopped and removed %d worker container(s)", len(containers))

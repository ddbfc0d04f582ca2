"""Fleet backends: where workers run. A backend's name appears only in this registry."""

from __future__ import annotations

from collections.abc import Callable

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.fleets.base import FleetBackend, FleetRequest
from prefect_distributed.core.fleets.docker import DockerFleet
from prefect_distributed.core.fleets.ec2_spot import Ec2SpotFleet
from prefect_distributed.core.fleets.fargate import FargateFleet
from prefect_distributed.core.fleets.local import LocalFleet
from prefect_distributed.core.fleets.spot_fleet import SpotFleet

BACKENDS: dict[str, Callable[[AwsClients, RunConfig | None], FleetBackend]] = {
    "local": LocalFleet.from_clients,
    "docker": DockerFleet.from_clients,
    "spot-fleet": SpotFleet.from_clients,
    "fargate": FargateFleet.from_clients,
    "ec2-spot": Ec2SpotFleet.from_clients,
}


def fleet_backend(clients: AwsClients, config: RunConfig) -> FleetBackend:
    """The backend the config names, set up for that config."""
    return BACKENDS[config.fleet.backend](clients, config)


__all__ = [
    "BACKENDS",
    "DockerFleet",
    "Ec2SpotFleet",
    "FargateFleet",
    "FleetBackend",
    "FleetRequest",
    "LocalFleet",
    "SpotFleet",
    "fleet_backend",
]

"""Fleet backends: where workers run. A backend's name appears only in this registry."""

from __future__ import annotations

from collections.abc import Callable

from core.aws.clients import AwsClients
from core.config import RunConfig
from core.fleets.base import FleetBackend, FleetRequest
from core.fleets.docker import DockerFleet
from core.fleets.local import LocalFleet
from core.fleets.spot_fleet import SpotFleet

BACKENDS: dict[str, Callable[[AwsClients, RunConfig | None], FleetBackend]] = {
    "local": LocalFleet.from_clients,
    "docker": DockerFleet.from_clients,
    "spot-fleet": SpotFleet.from_clients,
}


def fleet_backend(clients: AwsClients, config: RunConfig) -> FleetBackend:
    """The backend the config names, set up for that config."""
    return BACKENDS[config.fleet.backend](clients, config)


__all__ = ["BACKENDS", "DockerFleet", "FleetBackend", "FleetRequest", "LocalFleet", "SpotFleet", "fleet_backend"]

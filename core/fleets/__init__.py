"""Fleet backends: where workers run. A backend's name appears only in this registry."""

from __future__ import annotations

from collections.abc import Callable

from core.aws.clients import AwsClients
from core.fleets.base import FleetBackend, FleetRequest
from core.fleets.local import LocalFleet

BACKENDS: dict[str, Callable[[AwsClients], FleetBackend]] = {"local": LocalFleet.from_clients}


def fleet_backend(name: str, clients: AwsClients) -> FleetBackend:
    return BACKENDS[name](clients)


__all__ = ["BACKENDS", "FleetBackend", "FleetRequest", "LocalFleet", "fleet_backend"]

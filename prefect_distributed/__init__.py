"""prefect-distributed: run a containerised program over every job of a job file on AWS, as Prefect flows.

    from prefect_distributed import distributed, DistributedConfig

`prefect block register -m prefect_distributed` registers the config block. The subpackages are the
repository's top-level folders (setuptools maps them): `flows` (what users run), `tasks` (the steps of
a run), `core` (plain code under the tasks), `blocks`, and `worker`, which runs inside every container.

The names below load on first use, so `python -m prefect_distributed.worker` (the local fleet's
workers) starts without importing Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_distributed.blocks.config import DistributedConfig
    from prefect_distributed.core.config import RunConfig
    from prefect_distributed.core.models import RunSummary
    from prefect_distributed.flows.distributed import distributed
    from prefect_distributed.flows.janitor import janitor

_LAZY = {
    "distributed": "prefect_distributed.flows.distributed",
    "janitor": "prefect_distributed.flows.janitor",
    "DistributedConfig": "prefect_distributed.blocks.config",
    "RunConfig": "prefect_distributed.core.config",
    "RunSummary": "prefect_distributed.core.models",
}

__all__ = ["DistributedConfig", "RunConfig", "RunSummary", "distributed", "janitor"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

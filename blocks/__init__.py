"""Prefect blocks of this package. `prefect block register -m prefect_distributed` registers them."""

from prefect_distributed.blocks.config import DistributedConfig

__all__ = ["DistributedConfig"]

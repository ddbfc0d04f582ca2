"""Prefect blocks of this package. `prefect block register -m blocks` registers them."""

from blocks.config import DistributedConfig

__all__ = ["DistributedConfig"]

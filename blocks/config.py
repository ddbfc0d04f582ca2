"""A batch's configuration saved as a Prefect block, so runs can name it instead of a file."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from prefect_distributed.core.config import RunConfig


class DistributedConfig(Block):
    """The configuration of a distributed batch: queue, container, fleet and check-if-done settings.

    AWS credentials are not stored here: `settings.aws_credentials` names a saved prefect-aws
    'AWS Credentials' block.

    Attributes:
        settings: Every setting of the batch, as in a YAML config file.

    Example:
        Load a saved config and run it:
        ```python
        from prefect_distributed.blocks import DistributedConfig
        config = DistributedConfig.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Distributed Config"

    settings: RunConfig = Field(
        title="Settings",
        description="Every setting of the batch, as in a YAML config file (see deployments/demo/config.yaml).",
    )

    def to_run_config(self) -> RunConfig:
        return self.settings

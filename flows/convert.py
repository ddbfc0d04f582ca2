"""The `distributed-convert-ds-config` flow: a Distributed-Something config.py becomes a YAML config.

Also reached as `distributed` with `action: convert-ds-config`. The same conversion is the command
`distributed-convert-ds-config` (core/ds_config.py), which also takes the job file, the command and
the fleet file that config.py does not hold.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from prefect_distributed.core.ds_config import DsConversion, summary, write_ds_config
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.tasks.validate import ConfigParameter


def _markdown(output: Path, conversion: DsConversion) -> str:
    lines = [
        f"# {conversion.kind} config.py converted",
        "",
        f"Written: `{output}`. Carried: {', '.join(conversion.carried) or 'nothing'}.",
        "",
        "| not carried | value in config.py | what to do instead |",
        "|---|---|---|",
    ]
    lines += [f"| {item.setting} | `{item.value}` | {item.instead} |" for item in conversion.left_out]
    lines += ["", *[f"- {note}" for note in conversion.notes]]
    return "\n".join(lines)


@flow(
    name="distributed-convert-ds-config",
    description="Convert a Distributed-Something or Distributed-CellProfiler config.py (read, never run) into a "
    "YAML config, listing every setting it could not carry with what to do instead.",
)
def convert_ds_config(config: ConfigParameter) -> DsConversion:
    """Write the YAML config beside the config.py (config.yaml) and publish the markdown artifact
    `ds-config`: what was carried, and every setting not carried with what to do instead.

    Args:
        config: The path of the config.py to convert.
    """
    logger = get_run_logger()
    if not isinstance(config, str) or not config.endswith(".py"):
        raise ConfigError(
            f"action convert-ds-config takes the path of a Distributed-Something config.py as config, got {config!r}"
        )
    output, conversion = write_ds_config(Path(config).expanduser())
    level = logging.WARNING if conversion.left_out else logging.INFO
    logger.log(level, "Converted %s into %s. %s", config, output, summary(conversion))
    create_markdown_artifact(key="ds-config", markdown=_markdown(output, conversion))
    return conversion

"""Read and check the config and the job file, before anything is created or paid for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict

from prefect_distributed.blocks.config import DistributedConfig
from prefect_distributed.core.config import RunConfig, load_config_file, parse_config
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.jobs import JobFileCheck, check_jobs

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class ValidatedRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    config: RunConfig
    jobs: JobFileCheck


# What `prefect deployment run -p config=...` may hand over: it parses each value as JSON first.
ConfigParameter = str | dict[str, Any] | int | float | bool | None


def resolve_config(value: ConfigParameter) -> RunConfig:
    """A config from a YAML path, a saved 'Distributed Config' block name, or an inline mapping."""
    if isinstance(value, dict):
        return parse_config(value, source="the config parameter")
    if not isinstance(value, str):
        text = json.dumps(value)
        raise ConfigError(
            f"config was read as the {type(value).__name__} {text}: `-p config=VALUE` parses VALUE as JSON. "
            f'Quote it as a JSON string: -p \'config="{text}"\' (or --params \'{{"config": "{text}"}}\')'
        )
    if not value.strip():
        raise ConfigError("config is empty; give a YAML file path, a saved block name or a mapping of settings")
    path = Path(value).expanduser()
    if path.is_file() or path.suffix.lower() in CONFIG_SUFFIXES:
        return load_config_file(path)
    try:
        block = DistributedConfig.load(value.removeprefix(f"{DistributedConfig.get_block_type_slug()}/"), _sync=True)
    except ValueError:
        raise ConfigError(
            f"config '{value}' is neither a file nor a saved Distributed Config block "
            "(see `prefect block ls`); give a path to a YAML file or a block name"
        ) from None
    return block.to_run_config()


def validate_run(config: ConfigParameter) -> ValidatedRun:
    """Read the config and check the whole job file, in the flow itself rather than as a task: a
    mistake here is one line in the log and the run's state message, not a task's traceback."""
    logger = get_run_logger()
    run_config = resolve_config(config)
    jobs = check_jobs(run_config.job_file, run_config.command, run_config.job_settings)
    logger.info("Config %s: %d jobs in %s, all valid", run_config.app_name, jobs.count, run_config.job_file)
    return ValidatedRun(config=run_config, jobs=jobs)

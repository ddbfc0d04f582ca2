"""The Distributed Config block: saved by name, loaded back, usable as the flow's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks import DistributedConfig
from core.config import load_config_file
from core.errors import ConfigError
from tasks.validate import resolve_config

pytestmark = pytest.mark.usefixtures("prefect_api")

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "demo" / "config.yaml"


def test_a_saved_config_block_loads_back_as_the_same_config() -> None:
    config = load_config_file(DEMO_CONFIG)
    DistributedConfig(settings=config).save("demo-batch", overwrite=True)
    assert resolve_config("demo-batch") == config
    assert resolve_config("distributed-config/demo-batch") == config


def test_an_unknown_name_says_it_is_neither_a_file_nor_a_block() -> None:
    with pytest.raises(ConfigError, match="'no-such-batch' is neither a file nor a saved Distributed Config block"):
        resolve_config("no-such-batch")


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_config_parameter_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="config is empty; give a YAML file path"):
        resolve_config(value)


@pytest.mark.parametrize(
    ("value", "shown"), [(123, "int 123"), (1.5, "float 1.5"), (True, "bool true"), (None, "NoneType null")]
)
def test_a_value_the_cli_read_as_json_says_how_to_quote_it(value: object, shown: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_config(value)  # type: ignore[arg-type]
    assert f"config was read as the {shown}" in str(error.value)
    assert "Quote it as a JSON string: -p 'config=\"" in str(error.value)


def test_block_types_register_from_the_module() -> None:
    DistributedConfig.register_type_and_schema()
    assert DistributedConfig.get_block_type_slug() == "distributed-config"

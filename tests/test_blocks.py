"""The Distributed Config block: saved by name, loaded back, usable as the flow's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_distributed.blocks import DistributedConfig
from prefect_distributed.core.config import load_config_file
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.tasks.validate import resolve_config

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


def test_a_credentials_block_that_does_not_exist_is_named_with_prefect_block_ls() -> None:
    from prefect_distributed.tasks._aws import clients_for

    with pytest.raises(ConfigError) as error:
        clients_for("lab-creds", "us-east-1")

    message = str(error.value)
    assert message.startswith("aws_credentials: there is no saved AWS Credentials block named 'lab-creds'")
    assert "`prefect block ls`" in message
    assert "Unable to find block document" not in message


def test_a_saved_credentials_block_gives_its_endpoint_to_the_clients(moto_endpoint: str) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    from prefect_distributed.tasks._aws import clients_for

    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
    ).save("emulator-creds", overwrite=True)

    clients = clients_for("emulator-creds", "us-east-1")

    assert clients.endpoint_url == moto_endpoint
    assert clients.client("sqs").list_queues().get("QueueUrls", []) == []

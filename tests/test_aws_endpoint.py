"""An AWS endpoint set by hand that refuses connections is a configuration mistake: it fails at once,
at preflight too, naming the endpoint and the setting that set it, instead of botocore's own error
after retries."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from prefect_distributed.core.aws.clients import check_endpoint
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.tasks._aws import clients_for


@pytest.fixture
def refused_endpoint() -> str:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_refused_endpoint_from_the_config_names_the_setting(refused_endpoint: str) -> None:
    with pytest.raises(ConfigError) as error:
        clients_for(None, "us-east-1", refused_endpoint)

    assert str(error.value).startswith(
        f"the AWS endpoint {refused_endpoint} (set by the endpoint_url setting) cannot be reached: Connection refused"
    )


def test_a_refused_endpoint_from_the_environment_names_aws_endpoint_url(
    refused_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", refused_endpoint)

    with pytest.raises(ConfigError, match="set by AWS_ENDPOINT_URL in the environment"):
        clients_for(None, "us-east-1")


def test_an_endpoint_that_is_no_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"'localhost:5000' \(set by AWS_ENDPOINT_URL\) is not an http\(s\) URL"):
        check_endpoint("localhost:5000", "AWS_ENDPOINT_URL")


def test_a_listening_endpoint_passes_and_no_endpoint_is_not_tried(moto_endpoint: str) -> None:
    assert clients_for(None, "us-east-1", moto_endpoint).endpoint_url == moto_endpoint
    assert clients_for(None, "us-east-1").endpoint_url is None


def test_preflight_fails_on_its_first_attempt_naming_the_endpoint(
    refused_endpoint: str, prefect_api: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from prefect_distributed.flows.preflight import preflight

    config = tmp_path / "config.yaml"
    config.write_text(
        f"app_name: cells\njob_file: jobs.json\ncommand: run\nbucket: my-bucket\nendpoint_url: {refused_endpoint}\n"
    )

    state = preflight(str(config), return_state=True)

    assert state.is_failed()
    with pytest.raises(ConfigError, match=f"the AWS endpoint {refused_endpoint} .* cannot be reached"):
        state.result()
    with get_client(sync_client=True) as client:
        [task_run] = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert (task_run.name.split("-")[0], task_run.run_count) == ("preflight", 1)  # no retry

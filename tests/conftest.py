"""Shared fixtures: fake AWS credentials, a moto server on loopback, in-process moto, Prefect.

The environment is set before anything imports prefect or boto3, so no test can reach a real AWS
account or the user's own Prefect profile.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="distributed-tests-"))
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
    }
)
for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "PREFECT_API_URL", "PREFECT_API_KEY"):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parents[1]

# Records every AWS call the code makes and checks it against the shipped IAM policies.
pytest_plugins = ["tests.aws_calls"]

from core import emulator  # noqa: E402 - after the environment is set


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server in its own process on a free loopback port (never mixed with mock_aws).

    It records every request, so the calls of worker processes are checked against their IAM policy.
    """
    from tests.aws_calls import emulator_call_log

    with emulator.moto_server(log_path=_SESSION_HOME / "moto.log", call_log=emulator_call_log()) as endpoint:
        yield endpoint


@pytest.fixture
def moto_endpoint(moto_server: str) -> str:
    """The moto server, emptied before the test."""
    emulator.reset(moto_server)
    return moto_server


@pytest.fixture
def aws_mock() -> Iterator[None]:
    """In-process moto for single-process unit tests."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A Prefect API for flow-level tests, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield

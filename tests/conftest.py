"""Shared fixtures: fake AWS credentials, a moto server on loopback, in-process moto, Prefect.

The environment is set before anything imports prefect or boto3, so no test can reach a real AWS
account or the user's own Prefect profile.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
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
        # Parallel workers share one Prefect test server; on a loaded machine it answers 503 at times.
        "PREFECT_CLIENT_MAX_RETRIES": "10",
    }
)
for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "PREFECT_API_URL", "PREFECT_API_KEY"):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parents[1]

# Records every AWS call the code makes and checks it against the shipped IAM policies.
pytest_plugins = ["tests.aws_calls"]

from prefect_distributed.core import emulator  # noqa: E402 - after the environment is set
from tests.ds_files import ds_files_present  # noqa: E402, F401 - a fixture for every test module


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
    """In-process moto for single-process unit tests.

    boto3's default session lives on from test to test (moto would drop it each time): every test's
    credentials are the same fake ones, and a new session parses botocore's service models again."""
    from moto import mock_aws

    with mock_aws(config={"core": {"reset_boto3_session": False}}):
        yield


# Under pytest-xdist the controller starts one Prefect test server and hands its URL to every worker
# in this variable: one server to start and keep busy instead of one per worker, which on a small
# machine is most of a worker's start-up.
SHARED_PREFECT_API = "DISTRIBUTED_TESTS_PREFECT_API_URL"
PREFECT_STARTUP_S = 240  # generous: a loaded 2-core machine takes minutes to start a Prefect server
_SHARED_SERVER = pytest.StashKey[ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    if not getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        return  # not the controller of parallel workers: prefect_api starts its own server
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    server = ExitStack()
    server.enter_context(prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_S))
    os.environ[SHARED_PREFECT_API] = str(PREFECT_API_URL.value())  # the workers, started next, inherit it
    config.stash[_SHARED_SERVER] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SHARED_SERVER, None)
    if server is not None:
        server.close()


# Test modules whose tests share one expensive module fixture (a whole stack: Prefect server, work
# pool, worker, emulator; a built wheel and its environment) or the deployment names of one Prefect
# server, and must therefore run on one worker, started first because they are the longest units. pytest-xdist's own `xdist_group` mark cannot do it under pytest 9: xdist 3.8
# writes the group into `item._nodeid`, which pytest 9 no longer reads, so the mark is silently
# ignored and every worker starts the stack.
ONE_WORKER_MODULES = ("tests/test_deployment.py", "tests/test_packaging.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        """Each test is a unit of work, except that each of ONE_WORKER_MODULES is one unit; the
        largest units are handed out first (xdist's default ordering of units by size)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return OneWorkerModules(config, log)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A Prefect API for flow-level tests: the controller's shared server under pytest-xdist, else one
    started once per session."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shared = os.environ.get(SHARED_PREFECT_API)
    if shared is None:
        from prefect.testing.utilities import prefect_test_harness  # imports Prefect's server: only here

        with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_S):
            yield
        return
    # As the harness does: also for code whose context was copied before this fixture ran.
    with temporary_settings({PREFECT_API_URL: shared}), _temporary_global_settings_context(get_settings_context()):
        yield

"""Shared fixtures: fake AWS credentials, a moto server on loopback, in-process moto, Prefect.

The environment is set before anything imports prefect or boto3, so no test can reach a real AWS
account or the user's own Prefect profile.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
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

# In-process moto's accounts know the AMIs the emulator's do (see emulator.write_default_amis).
os.environ["MOTO_AMIS_PATH"] = str(emulator.write_default_amis(_SESSION_HOME / "amis.json"))


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


# Under pytest-xdist the controller starts one Prefect test server and hands its URL to every worker,
# through the file this variable names: one server to start and keep busy instead of one per worker.
# It starts in the background while the workers start and collect, so neither waits for the other;
# a worker waits for the file only when a test first asks for prefect_api.
SHARED_PREFECT_API_FILE = "DISTRIBUTED_TESTS_PREFECT_API_FILE"
PREFECT_STARTUP_S = 240  # generous: a loaded 2-core machine takes minutes to start a Prefect server
_SHARED_SERVER = pytest.StashKey["SharedPrefectServer"]()


class SharedPrefectServer(threading.Thread):
    """Prefect's test harness, entered and left on this thread (its settings are context variables),
    writing `{"url": ...}` or `{"error": ...}` to `api_file` once the server answers or fails."""

    def __init__(self, api_file: Path) -> None:
        super().__init__(name="shared-prefect-test-server", daemon=True)
        self.api_file = api_file
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_S):
                self._publish({"url": str(PREFECT_API_URL.value())})
                self.stopping.wait()
        except Exception as error:  # the workers' prefect_api reports it
            self._publish({"error": f"{type(error).__name__}: {error}"})

    def _publish(self, answer: dict[str, str]) -> None:
        written = self.api_file.with_suffix(".tmp")
        written.write_text(json.dumps(answer))
        written.replace(self.api_file)  # whole or not at all, for the workers polling it

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def pytest_configure(config: pytest.Config) -> None:
    if not getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        return  # not the controller of parallel workers: prefect_api starts its own server
    server = SharedPrefectServer(_SESSION_HOME / "prefect-api.json")
    os.environ[SHARED_PREFECT_API_FILE] = str(server.api_file)  # the workers, started next, inherit it
    server.start()
    config.stash[_SHARED_SERVER] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SHARED_SERVER, None)
    if server is not None:
        server.stop()
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)  # each process's own: nothing left in /tmp


def shared_prefect_api(api_file: Path) -> str:
    """The shared server's URL, once the controller has it."""
    deadline = time.monotonic() + PREFECT_STARTUP_S
    while not api_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shared Prefect test server did not start within {PREFECT_STARTUP_S} s")
        time.sleep(0.1)
    answer = json.loads(api_file.read_text())
    if "error" in answer:
        raise RuntimeError(f"the shared Prefect test server did not start: {answer['error']}")
    return answer["url"]


# Test modules whose tests share one expensive module fixture (a whole stack: Prefect server, work
# pool, worker, emulator; a built wheel and its environment) or the deployment names of one Prefect
# server, and must therefore run on one worker, started first because they are the longest units.
# pytest-xdist's own `xdist_group` mark cannot do it under pytest 9: xdist 3.8 writes the group into
# `item._nodeid`, which pytest 9 no longer reads, so the mark is silently ignored and every worker
# starts the stack.
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


# Tests that start processes (an emulator's workers, flow runs) take seconds each; the rest take
# milliseconds. Run first, the long ones are spread over the workers, and the quick ones fill the gaps
# at the end, so the workers finish together instead of one running the last long tests alone.
LONG_TEST_FIXTURES = frozenset({"moto_server", "prefect_api", "pytester"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: LONG_TEST_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())))


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A Prefect API for flow-level tests: the controller's shared server under pytest-xdist, else one
    started once per session."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_file = os.environ.get(SHARED_PREFECT_API_FILE)
    if api_file is None:
        from prefect.testing.utilities import prefect_test_harness  # imports Prefect's server: only here

        with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_S):
            yield
        return
    # As the harness does: also for code whose context was copied before this fixture ran.
    shared = shared_prefect_api(Path(api_file))
    with temporary_settings({PREFECT_API_URL: shared}), _temporary_global_settings_context(get_settings_context()):
        yield

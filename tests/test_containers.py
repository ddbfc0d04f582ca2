"""The worker in real containers: worker/Dockerfile built on Debian base images, run by the `docker`
fleet against the moto server on loopback, through the flow.

The engine and the base images come from tests/containers/base_image.sh (Debian's packages, no
image registry). These tests skip only when no engine can be started, and say why.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from prefect_distributed.core.config import RunConfig, parse_config
from prefect_distributed.core.fleets import DockerFleet, FleetRequest
from prefect_distributed.core.models import QueueUrls, RunResources, RunSummary
from prefect_distributed.core.worker_env import worker_environment

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE_SCRIPT = REPO / "tests" / "containers" / "base_image.sh"
BUCKET = "containers"
WELLS = ("A01", "A02", "A03", "A04")

# Each writes out.txt: what it ran on, then its input. The Python programs read `sys.version_info`
# or their own boto3; the minimal image's program is a shell script.
PYTHON_VERSION_PROGRAM = (
    "python3 -c \"import sys; v = '%d.%d' % sys.version_info[:2]; "
    "open(sys.argv[1] + '/out.txt', 'w').write(v + ':' + open(sys.argv[2]).read())\" "
    "{output_dir} {input_dir}/inputs/{well}.txt"
)
BOTO3_VERSION_PROGRAM = (
    "python3 -c \"import boto3, sys; "
    "open(sys.argv[1] + '/out.txt', 'w').write(boto3.__version__ + ':' + open(sys.argv[2]).read())\" "
    "{output_dir} {input_dir}/inputs/{well}.txt"
)
SHELL_PROGRAM = "sh -c 'printf \"sh:%s\" \"$(cat \"$1\")\" > \"$0/out.txt\"' {output_dir} {input_dir}/inputs/{well}.txt"


@pytest.fixture(scope="session")
def worker_image() -> Iterator[Callable[[str], str]]:
    """Builds (once per session) worker/Dockerfile on the base image of a variant; returns its tag."""
    built: dict[str, str] = {}

    def build(variant: str) -> str:
        if variant not in built:
            made = subprocess.run(
                ["bash", str(BASE_IMAGE_SCRIPT), variant], capture_output=True, text=True, timeout=1800
            )
            if made.returncode == 3:
                pytest.skip(f"no Docker engine could be started: {made.stderr.strip()}")
            assert made.returncode == 0, made.stderr
            tag = f"distributed-test/worker:{variant}"
            docker_build = subprocess.run(
                ["docker", "build", "-q", "--build-arg", f"BASE_IMAGE=local/base:{variant}", "-t", tag, "worker/"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert docker_build.returncode == 0, docker_build.stderr
            built[variant] = tag
        return built[variant]

    yield build


def test_a_build_from_the_repository_root_sends_neither_the_venv_nor_git(
    worker_image: Callable[[str], str],
) -> None:
    worker_image("bookworm-nopython")
    dockerfile = "FROM local/base:bookworm-nopython\nCOPY . /context\nRUN ls -a /context\n"
    build = subprocess.run(
        ["docker", "build", "--no-cache", "--rm", "-f-", "."],
        input=dockerfile,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    listed = set(build.stdout.split())
    assert {"worker", "core", "pyproject.toml"} <= listed
    assert not listed & {".venv", ".git", ".pytest_cache"}
    image_id = build.stdout.strip().rsplit(" ", 1)[-1]
    subprocess.run(["docker", "rmi", image_id], capture_output=True, timeout=120)


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("DISTRIBUTED_LOCAL_STATE", str(tmp_path / "fleet-state"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for n, well in enumerate(WELLS):
        s3.put_object(Bucket=BUCKET, Key=f"inputs/{well}.txt", Body=f"{well}={n}".encode())
    return moto_endpoint


def write_batch(tmp_path: Path, image: str, command: str, **overrides: Any) -> dict[str, Any]:
    """The settings of a batch of one job per well, run by two worker containers of `image`."""
    (tmp_path / "jobs.json").write_text(
        json.dumps(
            {"inputs": ["inputs/{well}.txt"], "output": "results/{well}", "groups": [{"well": w} for w in WELLS]}
        )
    )
    return {
        "app_name": "containers",
        "job_file": str(tmp_path / "jobs.json"),
        "command": command,
        "bucket": BUCKET,
        "queue": {"visibility_timeout_s": 30, "job_retries": 2, "retry_delay_s": 1},
        "container": {"image": image, "memory_mib": 512, "resource_log_interval_s": 0},
        "fleet": {"backend": "docker", "local_workers": 2},
        "monitor": {"poll_interval_s": 0.5, "settle_polls": 2, "worker_idle_exit_s": 3, "worker_wait_time_s": 1},
        **overrides,
    }


def containers_of(run_id: str) -> list[Any]:
    import docker

    return docker.from_env().containers.list(all=True, filters={"label": f"run-id={run_id}"})


def outcome_records(run_id: str) -> list[dict[str, Any]]:
    s3 = boto3.client("s3")
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{run_id}/outcomes/").get("Contents", [])
    return [json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()) for item in listing]


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("variant", "command", "ran_on"),
    [
        pytest.param("bookworm-python", PYTHON_VERSION_PROGRAM, "3.11", id="debian-bookworm-python-3.11"),
        pytest.param("bullseye-python", PYTHON_VERSION_PROGRAM, "3.9", id="debian-bullseye-python-3.9"),
        pytest.param("bookworm-nopython", SHELL_PROGRAM, "sh", id="minimal-image-without-python"),
        # Debian's python3-boto3 is 1.13.14; the worker's own boto3 (1.42 for Python 3.9) stays apart.
        pytest.param("bullseye-oldboto", BOTO3_VERSION_PROGRAM, "1.13.14", id="program-with-its-own-old-boto3"),
    ],
)
def test_a_batch_runs_through_the_flow_in_worker_containers_built_on(
    variant: str, command: str, ran_on: str, worker_image: Callable[[str], str], aws: str, tmp_path: Path
) -> None:
    from prefect_distributed.flows.distributed import distributed

    image = worker_image(variant)
    summary: RunSummary = distributed(config=write_batch(tmp_path, image, command))

    assert (summary.total, summary.succeeded, summary.failed, summary.unfinished) == (4, 4, [], [])
    assert summary.resources_left == []
    s3 = boto3.client("s3")
    for n, well in enumerate(WELLS):
        output = s3.get_object(Bucket=BUCKET, Key=f"results/{well}/out.txt")["Body"].read().decode()
        assert output == f"{ran_on}:{well}={n}"
    # Each container names its worker, though both share the host's network and so its host name.
    names = {record["worker"].rsplit(":", 2)[0] for record in outcome_records(summary.run_id)}
    assert names <= {f"containers-{summary.run_id}-0", f"containers-{summary.run_id}-1"} and names
    assert containers_of(summary.run_id) == []


@pytest.mark.parametrize("preflight", [True, False], ids=["in-the-preflight", "in-setup-without-preflight"])
def test_a_run_whose_image_is_missing_stops_before_creating_anything(
    preflight: bool, worker_image: Callable[[str], str], aws: str, tmp_path: Path, prefect_api: None
) -> None:
    from prefect_distributed.core.errors import ConfigError
    from prefect_distributed.flows.distributed import distributed

    worker_image("bookworm-python")  # an engine answers
    settings = write_batch(tmp_path, "distributed-test/no-such-image:1", SHELL_PROGRAM, preflight=preflight)
    with pytest.raises(ConfigError, match=r"(?s)has no image 'distributed-test/no-such-image:1'.*[Ff]ix: build it"):
        distributed(config=settings)
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


def test_an_image_not_built_from_the_worker_dockerfile_is_refused_with_the_fix(
    worker_image: Callable[[str], str], tmp_path: Path
) -> None:
    from prefect_distributed.core.errors import ConfigError

    worker_image("bookworm-python")
    config = parse_config(write_batch(tmp_path, "local/base:bookworm-python", SHELL_PROGRAM), "test")
    fleet = DockerFleet({}, settings=_settings(config))
    with pytest.raises(ConfigError, match=r"not built from worker/Dockerfile .*docker build --build-arg BASE_IMAGE"):
        fleet.preflight()


def test_no_engine_is_a_config_error_that_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect_distributed.core.errors import ConfigError

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    config = parse_config(write_batch(tmp_path, "any:1", SHELL_PROGRAM), "test")
    fleet = DockerFleet({}, settings=_settings(config))
    with pytest.raises(ConfigError, match=r"no Docker engine answers at unix://.*Fix: start the Docker engine"):
        fleet.preflight()
    # The janitor finds nothing to stop rather than failing.
    assert fleet.running_fleets() == []


def test_the_preflight_table_lists_a_missing_worker_image_with_its_fix(
    worker_image: Callable[[str], str], aws: str, tmp_path: Path
) -> None:
    from prefect_distributed.core.preflight import run_preflight

    image = worker_image("bookworm-python")
    missing = parse_config(write_batch(tmp_path, "distributed-test/no-such-image:1", SHELL_PROGRAM), "test")
    (row,) = [row for row in run_preflight(_clients(), missing).rows if row.check == "docker"]
    assert (row.status, row.detail) == (
        "problem",
        "container.image: the Docker engine has no image 'distributed-test/no-such-image:1'",
    )
    assert row.fix.startswith("build it on top of your program's image: docker build --build-arg BASE_IMAGE=")
    ready = parse_config(write_batch(tmp_path, image, SHELL_PROGRAM), "test")
    assert [row.status for row in run_preflight(_clients(), ready).rows if row.check == "docker"] == ["ok"]


def _settings(config: RunConfig) -> Any:
    from prefect_distributed.core.fleets.docker import DockerFleetSettings

    return DockerFleetSettings.from_config(config)


class Worker:
    """One worker container of the docker fleet on a queue of its own, started outside the flow so a
    test can look inside it while it runs."""

    def __init__(self, image: str, tmp_path: Path, command: str, **monitor: Any) -> None:
        settings = write_batch(
            tmp_path,
            image,
            command,
            fleet={"backend": "docker", "local_workers": 1},
            monitor={"worker_idle_exit_s": 60, "worker_wait_time_s": 20, **monitor},
        )
        self.config = parse_config(settings, "test")
        self.run_id = f"test-{time.monotonic_ns()}"
        resources = RunResources.for_run(self.config, self.run_id)
        sqs = boto3.client("sqs")
        self.queue_url = sqs.create_queue(QueueName=resources.queue_name)["QueueUrl"]
        dead = sqs.create_queue(QueueName=resources.dead_letter_queue_name)["QueueUrl"]
        urls = QueueUrls(queue_url=self.queue_url, dead_letter_queue_url=dead)
        self.environment = worker_environment(self.config, resources, urls)
        self.fleet = DockerFleet.from_clients(_clients(), self.config)
        self.handle = self.fleet.start(FleetRequest(run_id=self.run_id, environment=self.environment))
        (self.container,) = containers_of(self.run_id)

    def send(self, well: str) -> None:
        body = {
            "schema_version": 1,
            "run_id": self.run_id,
            "job_id": f"job-{well}",
            "fields": {"well": well},
            "inputs": [f"inputs/{well}.txt"],
            "output": f"results/{well}",
        }
        boto3.client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))

    def logs(self) -> str:
        return self.container.logs().decode()

    def wait_for_log(self, text: str, deadline_s: float = 120) -> None:
        """Waits for a line of the worker's log (a deadline against a hung test, not a speed check)."""
        end = time.monotonic() + deadline_s
        while text not in self.logs():
            assert time.monotonic() < end, f"the worker never logged {text!r}:\n{self.logs()}"
            time.sleep(0.2)

    def queue_counts(self) -> tuple[int, int]:
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _clients() -> Any:
    import os

    from prefect_distributed.core.aws.clients import AwsClients

    return AwsClients(boto3.session.Session(), "us-east-1", os.environ["AWS_ENDPOINT_URL"])


def zombies(container: Any) -> list[str]:
    """The container's processes that exited and were never reaped."""
    listing = container.exec_run(["sh", "-c", "grep -H '^State:' /proc/[0-9]*/status"]).output.decode()
    return [line for line in listing.splitlines() if "zombie" in line]


def test_a_job_whose_program_leaves_a_background_process_leaves_no_zombie(
    worker_image: Callable[[str], str], aws: str, tmp_path: Path
) -> None:
    command = "sh -c '(sleep 1 &); (sleep 1 &); echo done > \"$0/out.txt\"' {output_dir}"
    worker = Worker(worker_image("bookworm-python"), tmp_path, command, worker_wait_time_s=1)
    try:
        for well in WELLS[:2]:
            worker.send(well)
        worker.wait_for_log("job=job-A02] succeeded")
        time.sleep(2)  # the four orphaned sleeps have ended by now
        assert len(outcome_records(worker.run_id)) == 2
        assert zombies(worker.container) == []
        # The keys reach the worker in a file, not in the environment `docker inspect` shows.
        environment = {item.split("=", 1)[0] for item in worker.container.attrs["Config"]["Env"]}
        assert "AWS_SHARED_CREDENTIALS_FILE" in environment
        assert not environment & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
        # Found from the run id alone, by its labels, as the janitor and cleanup do.
        assert worker.run_id in worker.fleet.running_fleets()
        assert worker.fleet.status(worker.fleet.handle_for(worker.run_id, 1)).running == 1
    finally:
        worker.fleet.stop(worker.fleet.handle_for(worker.run_id))
    assert worker.run_id not in worker.fleet.running_fleets()
    assert worker.fleet.status(worker.handle).running == 0
    assert containers_of(worker.run_id) == []


def test_docker_stop_on_an_idle_worker_exits_0_and_hands_back_what_its_poll_brought(
    worker_image: Callable[[str], str], aws: str, tmp_path: Path
) -> None:
    worker = Worker(worker_image("bookworm-python"), tmp_path, SHELL_PROGRAM)
    try:
        worker.wait_for_log("loop started")
        stopping = threading.Thread(target=subprocess.run, args=(["docker", "stop", worker.container.name],))
        stopping.start()
        worker.wait_for_log("received SIGTERM: stopping")
        worker.send("A01")  # arrives during the 20 s poll in flight
        stopping.join()
        worker.container.reload()
        assert worker.container.attrs["State"]["ExitCode"] == 0
        assert "message returned to the queue" in worker.logs()
        assert worker.queue_counts() == (1, 0)  # visible again at once, none left invisible
    finally:
        worker.fleet.stop(worker.handle)
    assert containers_of(worker.run_id) == []

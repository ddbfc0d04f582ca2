"""Resume after a crash: the flow's process is killed right after enqueue; a new flow run attaches
to the batch by its run id, sends nothing twice, finishes it and leaves nothing behind.

A moto server on loopback, the flow in a real child process (killed with SIGKILL), real local
worker processes, and the test's Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3
import pytest
import yaml
from prefect.settings import PREFECT_API_URL

from prefect_distributed.core.models import RunSummary
from tests.test_flow_end_to_end import BUCKET, aws, queues_left  # noqa: F401 - `aws` is a fixture (used by pytestmark)

pytestmark = pytest.mark.usefixtures("prefect_api", "aws")

JOBS = 24
# Appends its job's id to ran.txt (in the workers' folder) each time it really runs, then takes a while.
PROGRAM = """
import pathlib, sys, time
with open("ran.txt", "a") as ran:
    ran.write(sys.argv[1] + "\\n")
time.sleep(0.4)
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
(out / "done.txt").write_text(sys.argv[1])
"""


def write_batch(tmp_path: Path, check_if_done: bool = False) -> Path:
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "jobs.json").write_text(
        json.dumps({"output": "resumed/{n}", "groups": [{"n": n} for n in range(JOBS)]})
    )
    config = {
        "app_name": "resume",
        "job_file": "jobs.json",
        "command": f"{sys.executable} program.py {{n}} {{output_dir}}",
        "bucket": BUCKET,
        "queue": {"visibility_timeout_s": 30, "job_retries": 2, "retry_delay_s": 1},
        "fleet": {"local_workers": 2},
        "check_if_done": {"enabled": check_if_done},
        "monitor": {"poll_interval_s": 0.5, "settle_polls": 2, "worker_idle_exit_s": 3, "worker_wait_time_s": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_flow_process(config: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    code = f"from prefect_distributed import distributed; distributed(config={str(config)!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        cwd=Path(__file__).resolve().parents[1],
        stdout=(tmp_path / "flow.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for_enqueued(s3, process: subprocess.Popen[bytes]) -> str:  # noqa: ANN001
    """The crashed run's id, once its enqueue marker says every job went into its queue."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the flow ended before it could be killed"
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/").get("Contents", []):
            if item["Key"].endswith("/enqueued.json"):
                marker = json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
                if marker["complete"]:
                    return item["Key"].split("/")[1]
        time.sleep(0.2)
    raise AssertionError("the flow never finished enqueueing")


def test_a_batch_whose_flow_was_killed_after_enqueue_is_resumed_without_sending_a_job_twice(tmp_path: Path) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    config = write_batch(tmp_path)
    s3 = boto3.client("s3")
    process = start_flow_process(config, tmp_path)
    run_id = wait_for_enqueued(s3, process)
    marker_before = s3.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/enqueued.json")["Body"].read()
    process.send_signal(signal.SIGKILL)
    process.wait()

    summary = run_flow_resumed(str(config), run_id)

    assert (summary.run_id, summary.total, summary.succeeded, summary.failed, summary.unfinished) == (
        run_id,
        JOBS,
        JOBS,
        [],
        [],
    )
    # The resumed run found every job in the old run's queue: the marker is the one the killed run wrote.
    assert s3.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/enqueued.json")["Body"].read() == marker_before
    ran = Counter((tmp_path / "ran.txt").read_text().split())
    assert sorted(ran) == sorted(str(n) for n in range(JOBS)) and set(ran.values()) == {1}
    assert summary.resources_left == [] and queues_left() == []
    assert not list((tmp_path / "fleet-state").glob(f"{run_id}/*.pid")), "workers of the run are still running"


def run_flow_resumed(config: str, run_id: str) -> RunSummary:
    from prefect_distributed.flows.distributed import distributed

    return distributed(config=config, resume_run_id=run_id)


def test_resuming_a_run_that_never_enqueued_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    from prefect_distributed.core.errors import ConfigError

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    with pytest.raises(ConfigError, match="resume_run_id: run 0000.* has no records"):
        run_flow_resumed(str(write_batch(tmp_path)), "00000000-0000-4000-8000-000000000000")
    assert queues_left() == []


def test_a_second_run_of_a_finished_batch_skips_every_job_runs_no_program_and_says_so(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from prefect_distributed.flows.distributed import distributed

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    config = str(write_batch(tmp_path, check_if_done=True))
    first = distributed(config=config)
    runs_before = (tmp_path / "ran.txt").read_text()

    again = distributed(config=config)

    assert (first.succeeded, again.total, again.skipped, again.succeeded) == (JOBS, JOBS, JOBS, 0)
    assert (tmp_path / "ran.txt").read_text() == runs_before, "a program ran again"
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[again.run_id]), key=ArtifactFilterKey(any_=["run-summary"])
            )
        )
    assert "Every job already had its outputs in place (check-if-done): skipped, its program not run." in str(
        artifact.data
    )

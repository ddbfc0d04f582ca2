"""Deployments against a real Prefect server: `prefect deployment run distributed/run -p config=...`.

The stack is what `make serve` starts: a Prefect server (SQLite, loopback) in a temporary home,
the `distributed` process work pool with the deployments of prefect.yaml, a Prefect worker, and a
moto server holding the demo's inputs. Runs are started through the CLI and read back through the
Prefect API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from core.emulator import free_port
from core.models import RunSummary
from deployments.local_stack import PREFECT, REPO, LocalStack, local_stack
from tests.aws_calls import emulator_call_log

DEMO_CONFIG = "deployments/demo/config.yaml"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack's emulator records its requests, so its workers' calls are checked against their policy."""
    with local_stack(tmp_path_factory.mktemp("stack"), port=free_port(), call_log=emulator_call_log()) as running:
        yield running


def cli(stack: LocalStack, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREFECT, *args],
        cwd=REPO,
        env={**os.environ, **stack.environment},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def read_flow_run(stack: LocalStack, flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def read_artifacts(stack: LocalStack, flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact.data for artifact in artifacts if artifact.key}


def flow_run_id_of(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def flow_run_processes(flow_run_id: str) -> list[int]:
    """Processes the Prefect worker started for a flow run (it passes the id in the environment)."""
    return processes_with(f"PREFECT__FLOW_RUN_ID={flow_run_id}")


def run_processes(run_id: str) -> list[int]:
    """The run's worker processes and the programs they started (each inherits DISTRIBUTED_RUN_ID)."""
    return processes_with(f"DISTRIBUTED_RUN_ID={run_id}")


def processes_with(variable: str) -> list[int]:
    """Processes whose environment holds `variable` (NAME=value): this test's own, found by the ids
    it started, never by a name other tests' processes may share."""
    marker = variable.encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def aws(stack: LocalStack, service: str):
    return boto3.client(service, endpoint_url=stack.aws_endpoint)


def test_a_deployment_run_from_the_cli_completes_with_its_summary_and_artifacts(stack: LocalStack) -> None:
    result = cli(stack, "deployment", "run", "distributed/run", "-p", f"config={DEMO_CONFIG}", "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    flow_run = read_flow_run(stack, flow_run_id_of(result.stdout))
    assert flow_run.state.is_completed()
    assert flow_run.name.startswith("demo-stats-")
    for milestone in ("queue-ready", "jobs-enqueued", "fleet-up", "batch-complete", "cleanup-done"):
        assert f"distributed.run.{milestone}" in result.stdout  # --watch prints the run's events
    assert {"distributed", "app:demo-stats"} <= set(flow_run.tags)

    artifacts = read_artifacts(stack, str(flow_run.id))
    markdown = str(artifacts["run-summary"])
    assert "| succeeded | 99 |" in markdown
    summary = RunSummary.model_validate_json(markdown.split("```json", 1)[1].split("```", 1)[0])
    assert (summary.total, summary.succeeded, len(summary.failed)) == (100, 99, 1)
    assert summary.resources_left == [] and summary.run_id == str(flow_run.id)
    saved = aws(stack, "s3").get_object(Bucket="distributed-demo", Key=f"runs/{flow_run.id}/summary.json")
    assert RunSummary.model_validate_json(saved["Body"].read()) == summary
    assert "P2" in str(artifacts["dead-jobs"])
    # Only the dead-letter queue is left, kept for its one dead job, and the summary says so.
    (kept,) = aws(stack, "sqs").list_queues().get("QueueUrls", [])
    assert kept.endswith("-dead") and "holds 1 dead job(s)" in " ".join(summary.resources_kept)


def test_every_deployment_of_prefect_yaml_is_registered(stack: LocalStack) -> None:
    listed = cli(stack, "deployment", "ls")
    for name in (
        "distributed/run",
        "distributed/redrive",
        "distributed/preflight",
        "distributed/bootstrap",
        "distributed-janitor/sweep",
    ):
        assert name in listed.stdout, listed.stdout


def test_the_preflight_deployment_checks_the_demo_config_and_creates_nothing(stack: LocalStack) -> None:
    queues_before = aws(stack, "sqs").list_queues().get("QueueUrls", [])
    result = cli(stack, "deployment", "run", "distributed/preflight", "-p", f"config={DEMO_CONFIG}", "--watch")

    assert result.returncode == 0, result.stdout + result.stderr
    flow_run = read_flow_run(stack, flow_run_id_of(result.stdout))
    assert flow_run.state.is_completed() and "-preflight-" in flow_run.name
    rows = read_artifacts(stack, str(flow_run.id))["preflight"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert rows and all(row["status"] == "ok" for row in rows), rows
    assert {row["check"] for row in rows} >= {"bucket"}
    assert aws(stack, "sqs").list_queues().get("QueueUrls", []) == queues_before


def test_a_number_given_as_config_fails_with_how_to_quote_it(stack: LocalStack) -> None:
    result = cli(stack, "deployment", "run", "distributed/run", "-p", "config=123", "--watch")
    assert result.returncode != 0
    flow_run = read_flow_run(stack, flow_run_id_of(result.stdout))
    assert flow_run.state.is_failed()
    assert "config was read as the int 123" in flow_run.state.message
    assert "Quote it as a JSON string" in flow_run.state.message


def start_slow_batch(stack: LocalStack, tmp_path: Path) -> str:
    """A batch whose jobs sleep for minutes; returns its flow run id once its queue exists and jobs run."""
    (tmp_path / "jobs.json").write_text(json.dumps({"output": "slow/{n}", "groups": [{"n": n} for n in range(4)]}))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "app_name": "slow",
                "job_file": "jobs.json",
                "command": f"{sys.executable} -c 'import time; time.sleep(300)' {{n}}",
                "bucket": "distributed-demo",
                "fleet": {"local_workers": 2},
                "monitor": {"poll_interval_s": 1, "worker_wait_time_s": 1},
            }
        )
    )
    started = cli(stack, "deployment", "run", "distributed/run", "-p", f"config={config}")
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = flow_run_id_of(started.stdout)
    sqs = aws(stack, "sqs")
    deadline = time.monotonic() + 120
    while not any("slow-" in url for url in sqs.list_queues().get("QueueUrls", [])):
        assert time.monotonic() < deadline, "the batch never set up its queue"
        time.sleep(1)
    # The workers have taken jobs: both local workers and at least one of their programs are running.
    while len(run_processes(flow_run_id)) < 3:
        assert time.monotonic() < deadline, f"the run's workers never started a job: {run_processes(flow_run_id)}"
        time.sleep(0.5)
    return flow_run_id


def wait_until_clean(stack: LocalStack, flow_run_id: str) -> None:
    """The slow batch's queues are gone (another test's run may keep its dead-letter queue), and so
    are its workers and their programs (the run id is the flow run's id)."""
    sqs = aws(stack, "sqs")
    deadline = time.monotonic() + 60

    def slow_queues() -> list[str]:
        return [url for url in sqs.list_queues().get("QueueUrls", []) if "slow-" in url]

    while slow_queues():
        assert time.monotonic() < deadline, f"queues left: {slow_queues()}"
        time.sleep(1)
    while run_processes(flow_run_id):
        assert time.monotonic() < deadline, f"the run's workers or programs are still running: {run_processes(flow_run_id)}"
        time.sleep(1)


def test_cancelling_a_running_batch_cleans_everything_up(stack: LocalStack, tmp_path: Path) -> None:
    flow_run_id = start_slow_batch(stack, tmp_path)
    cancelled = cli(stack, "flow-run", "cancel", flow_run_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    deadline = time.monotonic() + 120
    while not read_flow_run(stack, flow_run_id).state.is_cancelled():
        assert time.monotonic() < deadline, "the run never reached Cancelled"
        time.sleep(1)
    wait_until_clean(stack, flow_run_id)


def test_a_run_whose_process_is_killed_is_cleaned_up_by_its_crash_hook(stack: LocalStack, tmp_path: Path) -> None:
    flow_run_id = start_slow_batch(stack, tmp_path)
    # The flow run's own process (the Prefect worker's child) dies at once, with no chance to clean up.
    processes = flow_run_processes(flow_run_id)
    assert processes, "found no process for the flow run"
    for pid in processes:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not read_flow_run(stack, flow_run_id).state.is_crashed():
        assert time.monotonic() < deadline, f"state: {read_flow_run(stack, flow_run_id).state}"
        time.sleep(1)
    wait_until_clean(stack, flow_run_id)


def test_another_flow_can_run_the_deployment_and_wait_for_it(stack: LocalStack) -> None:
    result = subprocess.run(
        [sys.executable, "deployments/examples/trigger_deployment.py", DEMO_CONFIG],
        cwd=REPO,
        env={**os.environ, **stack.environment},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    batch_id = result.stdout.strip().splitlines()[-1]
    batch = read_flow_run(stack, batch_id)
    assert batch.state.is_completed()
    assert batch.parent_task_run_id is not None  # linked to the calling flow as a subflow

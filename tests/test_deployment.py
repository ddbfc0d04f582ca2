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

from deployments.local_stack import PREFECT, REPO, LocalStack, local_stack
from prefect_distributed.core.emulator import free_port
from prefect_distributed.core.models import RunSummary
from tests.aws_calls import emulator_call_log
from tests.test_flow_end_to_end import run_logs

DEMO_CONFIG = "deployments/demo/config.yaml"
STACK_STARTUP_S = 240  # the stack's Prefect server, on a machine loaded by other test workers
# One stack for the whole module: under pytest-xdist its tests go to the same worker
# (tests/conftest.py, ONE_WORKER_MODULES). The first test also waits for that server, its worker and
# the emulator to start: on a loaded machine that alone can take minutes, hence a longer hang guard
# than the suite's.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack's emulator records its requests, so its workers' calls are checked against their policy."""
    with local_stack(
        tmp_path_factory.mktemp("stack"), port=free_port(), call_log=emulator_call_log(), startup_s=STACK_STARTUP_S
    ) as running:
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


def all_artifacts(stack: LocalStack, flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def read_artifacts(stack: LocalStack, flow_run_id: str) -> dict[str, object]:
    return {artifact.key: artifact.data for artifact in all_artifacts(stack, flow_run_id) if artifact.key}


def read_logs(stack: LocalStack, flow_run_id: str, last: str) -> list[str]:
    """The run's log messages, once one containing `last` has arrived (logs are sent in batches)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        return [log.message for log in run_logs(flow_run_id, last, timeout_s=60)]


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
        assert time.monotonic() < deadline, f"the run's workers or programs still run: {run_processes(flow_run_id)}"
        time.sleep(1)


def test_cancelling_a_running_batch_cleans_up_once_and_says_how_to_go_on(stack: LocalStack, tmp_path: Path) -> None:
    flow_run_id = start_slow_batch(stack, tmp_path)
    cancelled = cli(stack, "flow-run", "cancel", flow_run_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    deadline = time.monotonic() + 120
    while not read_flow_run(stack, flow_run_id).state.is_cancelled():
        assert time.monotonic() < deadline, "the run never reached Cancelled"
        time.sleep(1)
    wait_until_clean(stack, flow_run_id)

    state = read_flow_run(stack, flow_run_id).state
    assert state.message.startswith("Cancelled: 0 of 4 succeeded, 4 unfinished."), state.message
    assert f"-p resume_run_id={flow_run_id}" in state.message
    artifacts = all_artifacts(stack, flow_run_id)
    by_key = {artifact.key: artifact.data for artifact in artifacts if artifact.key}
    assert "**The run stopped early:** cancelled" in str(by_key["run-summary"])
    assert f"-p rerun_failed_from={flow_run_id}" in str(by_key["run-summary"])
    rows = json.loads(by_key["jobs"]) if isinstance(by_key["jobs"], str) else by_key["jobs"]
    assert sorted(json.loads(row["fields"])["n"] for row in rows if row["state"] == "unfinished") == [0, 1, 2, 3]
    (progress,) = [artifact for artifact in artifacts if artifact.type == "progress"]
    assert progress.description == "Cancelled: 0 of 4 succeeded, 4 unfinished"
    logs = read_logs(stack, flow_run_id, last="had cleaned up after itself")
    assert [m for m in logs if "is being cancelled" in m] and [m for m in logs if "had cleaned up after itself" in m]
    assert not [m for m in logs if "Crash detected" in m or "TerminationSignal" in m], logs
    assert len([m for m in logs if m.startswith("Cleanup of run")]) == 1, logs


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


def run_example(stack: LocalStack, script: str) -> RunSummary:
    """An example run as the README shows it: from the repository's root, with what `make serve` prints
    to export; its last line is the RunSummary."""
    result = subprocess.run(
        [sys.executable, f"deployments/examples/{script}", DEMO_CONFIG],
        cwd=REPO,
        env={**os.environ, **stack.environment},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return RunSummary.model_validate_json(result.stdout.strip().splitlines()[-1])


def test_another_flow_can_run_the_deployment_wait_for_it_and_read_its_summary(stack: LocalStack) -> None:
    summary = run_example(stack, "trigger_deployment.py")
    # The demo's outputs exist from an earlier test: check-if-done skips those jobs.
    assert (summary.total, summary.succeeded + summary.skipped, len(summary.failed)) == (100, 99, 1)
    batch = read_flow_run(stack, summary.run_id)
    assert batch.state.is_completed() and batch.state.name == "Completed with dead jobs"
    assert batch.parent_task_run_id is not None  # linked to the calling flow as a subflow


def test_the_subflow_example_runs_against_the_emulator_of_make_serve(stack: LocalStack) -> None:
    summary = run_example(stack, "batch_as_subflow.py")
    assert (summary.total, summary.succeeded + summary.skipped, len(summary.failed)) == (100, 99, 1)
    assert read_flow_run(stack, summary.run_id).parent_task_run_id is not None

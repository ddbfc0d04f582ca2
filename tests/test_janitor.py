"""The janitor removes what finished runs left behind, and nothing of a running or unknown run."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

from prefect_distributed.core.tags import CREATED_BY, DEAD_LETTER, TAG_QUEUE_ROLE

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow
def finished_flow() -> None:
    """Stands in for a run that ended (its own cleanup having been killed)."""


def leftover_queue(sqs, name: str, run_id: str, app: str = "cells", dead_jobs: int | None = None) -> None:
    """A run's queue; with `dead_jobs`, a dead-letter queue holding that many jobs."""
    tags = {"app": app, "run-id": run_id, "created-by": CREATED_BY}
    if dead_jobs is not None:
        tags[TAG_QUEUE_ROLE] = DEAD_LETTER
    url = sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"]
    for n in range(dead_jobs or 0):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {n}")


@pytest.fixture
def local_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DISTRIBUTED_LOCAL_STATE", str(tmp_path))
    return tmp_path


@pytest.fixture
def stray_worker(local_state: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A live local 'worker' process of a finished run (its command line says worker)."""
    state = finished_flow(return_state=True)
    run_id = str(state.state_details.flow_run_id)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "worker"])
    (local_state / run_id).mkdir()
    (local_state / run_id / "worker-0.pid").write_text(str(process.pid))
    yield run_id, process
    process.kill()
    process.wait()


def test_leftovers_of_finished_runs_go_and_running_or_unknown_runs_stay(
    moto_endpoint: str, stray_worker: tuple[str, subprocess.Popen[bytes]], local_state: Path
) -> None:
    from prefect_distributed.flows.janitor import janitor

    finished_run, worker = stray_worker
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(finished_flow)
        client.set_flow_run_state(running.id, Running(), force=True)
    unknown_run = str(uuid.uuid4())
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    leftover_queue(sqs, "cells-finished", finished_run)
    leftover_queue(sqs, "cells-finished-dead", finished_run, dead_jobs=0)
    leftover_queue(sqs, "cells-earlier-dead", finished_run, dead_jobs=2)  # kept by its run's cleanup
    leftover_queue(sqs, "cells-running", str(running.id))
    leftover_queue(sqs, "cells-unknown", unknown_run)
    sqs.create_queue(QueueName="someone-elses-queue")

    dry = janitor(endpoint_url=moto_endpoint, dry_run=True)
    assert len(dry.removed) == 3 and len(sqs.list_queues()["QueueUrls"]) == 6 and worker.poll() is None

    report = janitor(endpoint_url=moto_endpoint)
    remaining = sorted(url.rsplit("/", 1)[-1] for url in sqs.list_queues()["QueueUrls"])
    assert remaining == ["cells-earlier-dead", "cells-running", "cells-unknown", "someone-elses-queue"]
    assert sorted(report.removed) == [
        f"fleet {local_state / finished_run} (run {finished_run})",
        f"queue cells-finished (run {finished_run})",
        f"queue cells-finished-dead (run {finished_run})",
    ]
    assert any("is running" in line for line in report.kept) and any("unknown here" in line for line in report.kept)
    assert any(line.startswith("queue cells-earlier-dead") and "holds 2 dead job(s)" in line for line in report.kept)
    deadline = time.monotonic() + 20
    while worker.poll() is None:
        assert time.monotonic() < deadline, "the stray worker of a finished run was not stopped"
        time.sleep(0.2)
    assert janitor(endpoint_url=moto_endpoint).removed == []  # a second sweep finds nothing

"""Cleanup against in-process moto: the dead-letter queue kept while it holds jobs, logs exported
to S3 before their group is deleted, and a second cleanup that changes nothing."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from prefect_distributed.core.aws import logs, sqs
from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.cleanup import clean_up
from prefect_distributed.core.config import RunConfig, parse_config
from prefect_distributed.core.models import RunResources
from prefect_distributed.core.tags import DEAD_LETTER, TAG_QUEUE_ROLE

pytestmark = pytest.mark.usefixtures("aws_mock")

RUN_ID = "7f3e2a10-0000-4000-8000-000000000001"
LOGGER = logging.getLogger("test")


@pytest.fixture(autouse=True)
def local_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DISTRIBUTED_LOCAL_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def make_config(**settings: Any) -> RunConfig:
    base = {"app_name": "cells", "job_file": "jobs.json", "command": "run {x}", "bucket": "records"}
    return parse_config({**base, **settings}, "test")


def set_up_run(config: RunConfig, dead_jobs: int = 0) -> RunResources:
    """The queues and the log group a run leaves for cleanup, as setup and the workers make them."""
    resources = RunResources.for_run(config, RUN_ID)
    client = boto3.client("sqs")
    boto3.client("s3").create_bucket(Bucket="records")
    dead_url = sqs.ensure_queue(
        client, resources.dead_letter_queue_name, {}, {**resources.tags, TAG_QUEUE_ROLE: DEAD_LETTER}
    )
    sqs.ensure_queue(client, resources.queue_name, {}, resources.tags)
    for n in range(dead_jobs):
        client.send_message(QueueUrl=dead_url, MessageBody=f'{{"job_id": "j{n}"}}')
    log_client = boto3.client("logs")
    logs.ensure_log_group(log_client, resources.log_group, 60, resources.tags)
    log_client.create_log_stream(logGroupName=resources.log_group, logStreamName="worker/1")
    log_client.put_log_events(
        logGroupName=resources.log_group,
        logStreamName="worker/1",
        logEvents=[{"timestamp": 1000, "message": "job 1 done"}],
    )
    return resources


def run_cleanup(config: RunConfig, resources: RunResources):  # noqa: ANN201 - a CleanupResult
    clients = AwsClients(session=boto3.Session(), region="us-east-1")
    return clean_up(clients, config, resources, LOGGER, clock=lambda: 0.0, sleep=lambda _: None)


def queue_names() -> list[str]:
    return sorted(url.rsplit("/", 1)[-1] for url in boto3.client("sqs").list_queues().get("QueueUrls", []))


def test_a_dead_letter_queue_holding_jobs_is_kept_and_said_so_by_default() -> None:
    config = make_config()
    resources = set_up_run(config, dead_jobs=2)

    result = run_cleanup(config, resources)

    assert queue_names() == [resources.dead_letter_queue_name]
    assert result.left == []
    assert any(resources.dead_letter_queue_name in kept and "holds 2 dead job(s)" in kept for kept in result.kept)


def test_an_empty_dead_letter_queue_is_deleted_by_default() -> None:
    config = make_config()
    resources = set_up_run(config)

    result = run_cleanup(config, resources)

    assert queue_names() == []
    assert f"queue {resources.dead_letter_queue_name}" in result.deleted


@pytest.mark.parametrize(("policy", "left_queues"), [("delete", 0), ("keep", 1)])
def test_the_dead_letter_queue_policy_delete_or_keep_is_followed_whatever_it_holds(
    policy: str, left_queues: int
) -> None:
    config = make_config(dead_letter_queue_after_run=policy)
    resources = set_up_run(config, dead_jobs=1 if policy == "delete" else 0)

    run_cleanup(config, resources)

    assert len(queue_names()) == left_queues


def test_the_runs_logs_are_exported_to_its_records_then_the_log_group_is_deleted() -> None:
    config = make_config()
    resources = set_up_run(config)

    result = run_cleanup(config, resources)

    assert boto3.client("logs").describe_log_groups(logGroupNamePrefix="cells/")["logGroups"] == []
    exported = boto3.client("s3").list_objects_v2(Bucket="records", Prefix=f"runs/{RUN_ID}/logs/")
    assert exported["KeyCount"] > 0
    assert any(line.startswith(f"log group cells/{RUN_ID} (exported") for line in result.deleted)


def test_a_log_group_that_could_not_be_exported_is_kept_with_the_fix() -> None:
    config = make_config()
    resources = set_up_run(config)
    boto3.client("s3").delete_bucket(Bucket="records")  # CloudWatch Logs cannot write there

    result = run_cleanup(config, resources)

    assert [g["logGroupName"] for g in boto3.client("logs").describe_log_groups()["logGroups"]] == [resources.log_group]
    (kept,) = [line for line in result.kept if line.startswith("log group")]
    assert "s3:PutObject" in kept and "s3://records/" in kept


def test_keep_log_group_keeps_it_after_the_export() -> None:
    config = make_config(keep_log_group=True)
    resources = set_up_run(config)

    result = run_cleanup(config, resources)

    assert len(boto3.client("logs").describe_log_groups()["logGroups"]) == 1
    assert any("keep_log_group" in line for line in result.kept)


def test_cleaning_up_twice_is_safe_and_the_second_time_finds_nothing_to_keep() -> None:
    config = make_config(dead_letter_queue_after_run="delete")
    resources = set_up_run(config, dead_jobs=1)

    first = run_cleanup(config, resources)
    second = run_cleanup(config, resources)

    assert first.left == second.left == [] and second.kept == []
    assert queue_names() == []


@pytest.fixture
def local_worker(local_state: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live local 'worker' of the run (its command line says worker) with its pid and log files."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "worker"])
    folder = local_state / RUN_ID
    folder.mkdir(parents=True)
    (folder / "worker-0.pid").write_text(str(process.pid))
    (folder / "worker-0.log").write_text("INFO starting 1 worker loop(s)\n")
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize("keep_local_logs", [False, True])
def test_the_local_fleets_workers_are_stopped_and_its_log_folder_removed_unless_kept(
    local_worker: subprocess.Popen[bytes], local_state: Path, keep_local_logs: bool
) -> None:
    config = make_config(fleet={"keep_local_logs": keep_local_logs})
    resources = set_up_run(config)

    result = run_cleanup(config, resources)

    # Stopped long before its 120 s sleep ends: the wait raises otherwise. (Its status is -SIGTERM, or
    # 0 when the fleet's own liveness check reaped it first, since this test process is its parent.)
    assert local_worker.wait(timeout=5) in (-signal.SIGTERM, 0)
    folder = local_state / RUN_ID
    assert f"fleet {folder}" in result.deleted
    if keep_local_logs:
        assert [path.name for path in folder.iterdir()] == ["worker-0.log"]
        assert f"local fleet logs {folder} (fleet.keep_local_logs)" in result.kept
    else:
        assert not folder.exists()
        assert not [line for line in result.kept if "local fleet" in line]

"""Throttling and 503s on the clients of setup, enqueue, monitor and cleanup: retried, then the run goes on.

Errors within botocore's retries are retried by botocore; errors that outlast them reach the task,
which Prefect runs again because `is_transient` says so (tasks/_aws.py), and cleanup raises them for
that retry instead of reporting the queue as left. moto cannot throttle, so the errors come from
botocore event handlers (tests/faults.py) on every client made during the test, narrowed to the
calls of one task at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import botocore.handlers
import pytest
from prefect.context import TaskRunContext

from tests.faults import Fault, FaultPlan
from tests.test_flow_end_to_end import BROKEN_WELL, WELLS, aws, queues_left, run_flow, upload_inputs, write_batch

__all__ = ["aws"]  # the fixture, used by name

pytestmark = pytest.mark.usefixtures("prefect_api")

OUTLASTING = "outlasting_retries"


def in_task(name: str) -> Callable[[], bool]:
    """True for calls made by the Prefect task of that name (not by the test or another task)."""

    def where() -> bool:
        context = TaskRunContext.get()
        return context is not None and context.task.name == name

    return where


@pytest.fixture
def faults_on_every_client() -> Iterator[Callable[[FaultPlan], FaultPlan]]:
    """Serve plans on every botocore session created during the test (each task makes its own)."""
    installed: list[tuple[str, Callable[..., object]]] = []

    def install(plan: FaultPlan) -> FaultPlan:
        handlers = [("before-send", plan.before_send), ("before-call", plan.before_call)]
        botocore.handlers.BUILTIN_HANDLERS.extend(handlers)
        installed.extend(handlers)
        return plan

    yield install
    for handler in installed:
        botocore.handlers.BUILTIN_HANDLERS.remove(handler)


def test_throttling_and_503s_in_every_step_are_retried_and_the_run_finishes_with_nothing_left(
    aws: str, tmp_path: Path, faults_on_every_client: Callable[[FaultPlan], FaultPlan]
) -> None:
    upload_inputs()
    plans = {
        "setup": FaultPlan(
            {"sqs.CreateQueue": [Fault("unavailable"), Fault("throttling", OUTLASTING)]}, where=in_task("setup")
        ),
        # The second marker (the batch complete) fails for good: the retried enqueue sends nothing again.
        "enqueue": FaultPlan(
            {"s3.PutObject": [Fault("throttling"), Fault("unavailable", OUTLASTING)]}, where=in_task("enqueue")
        ),
        "monitor": FaultPlan(
            {"sqs.GetQueueAttributes": [Fault("throttling"), Fault("unavailable"), Fault("throttling", OUTLASTING)]},
            where=in_task("monitor"),
        ),
        "cleanup": FaultPlan(
            {"sqs.DeleteQueue": [Fault("throttling", OUTLASTING)], "sqs.GetQueueUrl": [Fault("unavailable")]},
            where=in_task("cleanup"),
        ),
    }
    for plan in plans.values():
        faults_on_every_client(plan)

    summary = run_flow(str(write_batch(tmp_path)))

    assert {step: plan.pending for step, plan in plans.items()} == {step: {} for step in plans}
    assert (summary.total, summary.succeeded, summary.skipped, len(summary.failed)) == (len(WELLS), 5, 0, 1)
    assert summary.failed[0].fields == {"well": BROKEN_WELL}
    assert summary.unfinished == [] and summary.error is None
    assert summary.resources_left == []
    (kept_queue,) = queues_left()  # the dead-letter queue holding the broken well
    assert kept_queue.endswith("-dead")
    manifest = boto3.client("s3").get_object(Bucket="e2e-data", Key=f"runs/{summary.run_id}/manifest.csv")
    states = [row.split(",")[1] for row in manifest["Body"].read().decode().splitlines()[1:]]
    assert sorted(states) == ["failed"] + ["succeeded"] * (len(WELLS) - 1)  # each job once

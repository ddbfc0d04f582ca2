"""Cleanup when AWS does not cooperate: a log export still running at the deadline keeps the log
group (and says so); a transient error is raised for the caller's retry, never reported as left
(in-process moto, with a fake clock).

moto finishes an export at once and never throttles, so an after-call handler reports the export
as still running and tests/faults.py answers with the errors.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import AwsClients, is_transient
from prefect_distributed.core.cleanup import clean_up
from tests.fakes import FakeClock
from tests.faults import Fault, FaultPlan
from tests.test_cleanup import LOGGER, local_state, make_config, queue_names, set_up_run

__all__ = ["local_state"]  # the autouse fixture

pytestmark = pytest.mark.usefixtures("aws_mock")


def still_running(parsed: dict[str, Any], **_: Any) -> None:
    for export in parsed.get("exportTasks", []):
        export["status"] = {"code": "RUNNING", "message": "Pending export task"}


def test_a_log_export_still_running_at_the_deadline_keeps_the_log_group_and_says_so() -> None:
    config = make_config(log_export_wait_s=120)
    resources = set_up_run(config)
    clients = AwsClients(session=boto3.Session(), region="us-east-1")
    clients.client("logs").meta.events.register("after-call.cloudwatch-logs.DescribeExportTasks", still_running)
    clock = FakeClock()

    result = clean_up(clients, config, resources, LOGGER, clock=clock, sleep=clock.sleep)

    groups = boto3.client("logs").describe_log_groups()["logGroups"]
    assert [group["logGroupName"] for group in groups] == [resources.log_group]
    assert clock.now >= 120  # it waited for the export until the deadline, then gave up on it
    (kept,) = [line for line in result.kept if line.startswith("log group")]
    assert kept == f"log group {resources.log_group} (export to s3://records/{resources.records_prefix}/logs/ is RUNNING)"
    assert not any("log group" in line for line in result.deleted + result.left)


@pytest.mark.parametrize("kind", ["throttling", "unavailable"])
def test_a_transient_error_in_cleanup_is_raised_for_the_retry_and_the_retry_deletes_the_queues(kind: str) -> None:
    config = make_config(dead_letter_queue_after_run="delete")
    resources = set_up_run(config)
    clients = AwsClients(session=boto3.Session(), region="us-east-1")
    plan = FaultPlan({"sqs.DeleteQueue": [Fault(kind, "outlasting_retries")]})  # type: ignore[arg-type]
    plan.attach(clients.client("sqs"))

    with pytest.raises(ClientError) as raised:
        clean_up(clients, config, resources, LOGGER, clock=FakeClock(), sleep=FakeClock().sleep)
    retried = clean_up(clients, config, resources, LOGGER, clock=FakeClock(), sleep=FakeClock().sleep)

    assert is_transient(raised.value)
    assert plan.pending == {}
    assert retried.left == []
    assert queue_names() == []

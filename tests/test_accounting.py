"""Every job is accounted for exactly once, from outcome records and the dead-letter queue."""

from __future__ import annotations

import csv
import io
import json

import boto3
import pytest

from prefect_distributed.core.aws.s3 import put_json
from prefect_distributed.core.aws.sqs import DeadMessage
from prefect_distributed.core.jobs import Job
from prefect_distributed.core.manifest import Manifest
from prefect_distributed.core.models import RunResources
from prefect_distributed.core.records import Outcomes, build_summary, dead_jobs, read_outcomes
from prefect_distributed.worker.core import MAX_OUTPUT_TAIL_CHARS, MAX_REASON_CHARS

pytestmark = pytest.mark.usefixtures("aws_mock")

RESOURCES = RunResources(
    run_id="run-1",
    app_name="cells",
    queue_name="q",
    dead_letter_queue_name="q-dead",
    records_bucket="records",
    records_prefix="runs/run-1",
    log_group="cells/run-1",
    tags={},
)


def dead(job_id: str, reason: str | None = None, receive_count: int = 3) -> DeadMessage:
    body = json.dumps({"schema_version": 1, "run_id": "run-1", "job_id": job_id, "fields": {"id": job_id}})
    return DeadMessage(body=body, reason=reason, receive_count=receive_count)


@pytest.fixture
def s3():
    client = boto3.client("s3")
    client.create_bucket(Bucket="records")
    return client


def test_outcomes_are_counted_by_key_and_a_job_counts_once(s3) -> None:
    for key in ("a.succeeded.json", "b.skipped.json", "c.succeeded.json", "junk.txt"):
        s3.put_object(Bucket="records", Key=f"runs/run-1/outcomes/{key}", Body=b"{}")
    s3.put_object(Bucket="records", Key="runs/other-run/outcomes/z.succeeded.json", Body=b"{}")
    s3.put_object(Bucket="records", Key="runs/run-1/outcomes/c.skipped.json", Body=b"{}")  # a duplicate delivery
    outcomes = read_outcomes(s3, RESOURCES)
    assert {job_id: outcomes.status(job_id) for job_id in "abcdz"} == {
        "a": "succeeded",
        "b": "skipped",
        "c": "succeeded",
        "d": None,
        "z": None,
    }
    assert (len(outcomes), outcomes.succeeded, "junk" in outcomes) == (3, 2, False)


REDRIVEN = (
    "moved to the dead-letter queue by the queue's redrive policy after 3 deliveries that no worker finished "
    "(the job may kill its worker, e.g. by running it out of memory; see the worker logs)"
)


def test_a_dead_job_carries_the_workers_reason_or_its_last_failed_run_and_counts_its_failed_runs(s3) -> None:
    runs = ((1, "exit status 1", "first try"), (2, "exit status 2", "reading\nrow 7: 'n/a' is not a number\n"))
    for attempt, reason, tail in runs:
        record = {"job_id": "b", "attempt": attempt, "reason": reason, "output_tail": tail}
        put_json(s3, "records", f"runs/run-1/attempts/b.{attempt}.json", record)
    put_json(s3, "records", "runs/run-1/attempts/b.2.1.json", {"reason": "job b.2's, not b's"})
    found = dead_jobs(
        s3, RESOURCES, [dead("a", reason="input missing", receive_count=1), dead("b"), dead("c"), dead("b")]
    )
    assert [(d.job_id, d.reason, d.attempts) for d in found] == [
        ("a", "input missing", 1),
        ("b", "exit status 2: row 7: 'n/a' is not a number", 2),
        ("c", REDRIVEN, 3),
    ]
    assert found[0].fields == {"id": "a"}
    assert found[1].output_tail.splitlines() == ["reading", "row 7: 'n/a' is not a number"]


def test_a_dead_jobs_reason_and_output_are_bounded_and_mask_the_secrets_the_flow_knows(s3) -> None:
    secret = "flow-Secret-Key-0123456789abcdef"
    tail = "x" * 20_000 + f"\nconnecting with {secret}\nboom"
    record = {"job_id": "b", "attempt": 1, "reason": f"exit status 1 ({secret})" + "!" * 5000, "output_tail": tail}
    put_json(s3, "records", "runs/run-1/attempts/b.1.json", record)
    big_field = {"id": "b", "image_list": "p" * 200_000}
    body = json.dumps({"schema_version": 1, "run_id": "run-1", "job_id": "b", "fields": big_field})

    [found] = dead_jobs(s3, RESOURCES, [DeadMessage(body=body, reason=None, receive_count=1)], [secret])

    assert secret not in found.model_dump_json()
    assert found.reason.startswith("exit status 1 (*****)") and len(found.reason) == MAX_REASON_CHARS
    assert len(found.output_tail) == MAX_OUTPUT_TAIL_CHARS and found.output_tail.endswith("with *****\nboom")
    assert found.fields == {"id": "b", "image_list": "[200002 characters, not shown]"}


def outcomes_of(**statuses: str) -> Outcomes:
    outcomes = Outcomes()
    for job_id, status in statuses.items():
        outcomes.add(job_id, status)
    return outcomes


def test_the_summary_accounts_for_every_job_exactly_once(s3) -> None:
    manifest = Manifest()
    summary = build_summary(
        resources=RESOURCES,
        jobs=(
            Job(job_id=job_id, index=n, fields={"id": job_id}, inputs=(), output="") for n, job_id in enumerate("abcde")
        ),
        outcomes=outcomes_of(a="succeeded", b="skipped", c="succeeded", stranger="succeeded"),
        # "c" both succeeded and has a dead duplicate: it counts as succeeded only.
        dead=dead_jobs(s3, RESOURCES, [dead("c"), dead("d")]),
        duration_s=12.345,
        error=None,
        manifest=manifest,
    )
    assert (summary.total, summary.succeeded, summary.skipped) == (5, 2, 1)
    assert [d.job_id for d in summary.failed] == ["d"]
    assert summary.unfinished == ["e"]
    assert summary.accounted == summary.total
    assert summary.duration_s == 12.3
    assert summary.records_uri == "s3://records/runs/run-1/"
    uri = manifest.upload(s3, "records", "runs/run-1/manifest.csv")
    body = s3.get_object(Bucket="records", Key="runs/run-1/manifest.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert uri == "s3://records/runs/run-1/manifest.csv"
    assert [(row["job_id"], row["state"]) for row in rows] == [
        ("a", "succeeded"),
        ("b", "skipped"),
        ("c", "succeeded"),
        ("d", "failed"),
        ("e", "unfinished"),
    ]
    assert rows[3]["reason"] == REDRIVEN and rows[3]["attempts"] == "3"
    assert json.loads(rows[4]["fields"]) == {"id": "e"}
    assert [(row["job_id"], row["fields"], row["reason"]) for row in manifest.unfinished] == [
        ("e", '{"id": "e"}', "no outcome when the run ended")
    ]
    assert summary.headline == "2 of 5 succeeded, 1 skipped (already done), 1 dead, 1 unfinished"


def test_what_is_left_in_aws_tells_kept_on_purpose_from_not_deleted(s3) -> None:
    summary = build_summary(resources=RESOURCES, jobs=(), outcomes=Outcomes(), dead=[], duration_s=1.0, error=None)
    kept = "queue q-dead (holds 1 dead job(s))"
    assert summary.left_in_aws == "nothing"
    assert summary.model_copy(update={"resources_kept": [kept]}).left_in_aws == f"only what was kept on purpose: {kept}"
    both = summary.model_copy(update={"resources_kept": [kept], "resources_left": ["queue q (AccessDenied)"]})
    assert both.left_in_aws == f"queue q (AccessDenied) (cleanup could not delete it); kept on purpose: {kept}"

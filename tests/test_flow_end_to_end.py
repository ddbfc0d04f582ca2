"""The `distributed` flow end to end: a moto server on loopback, real worker processes, Prefect.

Every test starts from an empty emulator and checks AWS state afterwards: outputs in S3, the
summary's counts and reasons, and that no queue of the run is left.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml

from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.models import RunSummary

pytestmark = pytest.mark.usefixtures("prefect_api")

BUCKET = "e2e-data"
WELLS = ["A01", "A02", "A03", "A04", "A05", "B01"]
BROKEN_WELL = "B01"

# A stand-in for a user's program: doubles every number of its input; "FAIL" in the input fails it.
PROGRAM = """
import pathlib, sys
source, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
text = "".join(p.read_text() for p in sorted(source.rglob("*.txt")))
if "FAIL" in text:
    print("cannot read this well: corrupt value", file=sys.stderr)
    sys.exit(3)
target.mkdir(parents=True, exist_ok=True)
(target / "doubled.txt").write_text(" ".join(str(2 * int(n)) for n in text.split()))
"""


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("DISTRIBUTED_LOCAL_STATE", str(tmp_path / "fleet-state"))
    return moto_endpoint


def write_batch(tmp_path: Path, **overrides: object) -> Path:
    """A config, a job file and a program in tmp_path; returns the config's path."""
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "jobs.json").write_text(
        json.dumps(
            {
                "_comment": "one job per well",
                "inputs": ["inputs/{well}.txt"],
                "output": "results/{well}",
                "groups": [{"well": well} for well in WELLS],
            }
        )
    )
    config = {
        "app_name": "e2e",
        "job_file": "jobs.json",
        "command": f"{sys.executable} program.py {{input_dir}} {{output_dir}}",
        "bucket": BUCKET,
        "queue": {"visibility_timeout_s": 20, "job_retries": 2, "retry_delay_s": 1},
        "fleet": {"local_workers": 2},
        "check_if_done": {"enabled": True},
        "monitor": {"poll_interval_s": 0.5, "settle_polls": 2, "worker_idle_exit_s": 2, "worker_wait_time_s": 1},
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def upload_inputs() -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for n, well in enumerate(WELLS):
        body = "1 2 FAIL" if well == BROKEN_WELL else f"{n} {n + 1} {n + 2}"
        s3.put_object(Bucket=BUCKET, Key=f"inputs/{well}.txt", Body=body.encode())


def s3_text(key: str) -> str:
    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def queues_left() -> list[str]:
    return boto3.client("sqs").list_queues().get("QueueUrls", [])


def run_logs(flow_run_id: object, last: str, timeout_s: float = 30) -> list:
    """The run's logs from the Prefect API, once the line containing `last` has arrived (they are sent
    in batches), or when `timeout_s` has passed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any(last in log.message for log in logs) or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)


def run_flow(config: str | dict) -> RunSummary:
    from prefect_distributed.flows.distributed import distributed

    return distributed(config=config)


def test_a_batch_runs_to_completion_and_leaves_nothing_behind(aws: str, tmp_path: Path) -> None:
    upload_inputs()
    summary = run_flow(str(write_batch(tmp_path)))

    assert (summary.total, summary.succeeded, summary.skipped) == (6, 5, 0)
    assert summary.unfinished == [] and summary.error is None
    (dead,) = summary.failed
    assert dead.fields == {"well": BROKEN_WELL}
    assert "exit status 3" in dead.reason and "corrupt value" in dead.reason and dead.attempts == 2
    assert summary.resources_left == []
    assert not (tmp_path / "fleet-state" / summary.run_id).exists()  # the local fleet's pid and log files
    assert not [line for line in summary.resources_kept if "local fleet" in line]
    # The dead-letter queue stays while it holds the dead job (dead_letter_queue_after_run: keep-if-jobs).
    (kept_queue,) = queues_left()
    assert kept_queue.endswith("-dead")
    assert [line for line in summary.resources_kept if "holds 1 dead job(s)" in line]
    manifest = s3_text(f"runs/{summary.run_id}/manifest.csv").splitlines()
    assert summary.manifest_uri == f"s3://{BUCKET}/runs/{summary.run_id}/manifest.csv"
    assert len(manifest) == 1 + len(WELLS) and sum(",failed," in row for row in manifest) == 1

    s3 = boto3.client("s3")
    for n, well in enumerate(WELLS):
        key = f"results/{well}/doubled.txt"
        if well == BROKEN_WELL:
            assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"results/{well}/").get("KeyCount", 0) == 0
        else:
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode() == f"{2 * n} {2 * n + 2} {2 * n + 4}"
    saved = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{summary.run_id}/summary.json")["Body"].read())
    assert RunSummary.model_validate(saved) == summary


def test_a_run_with_dead_jobs_says_so_in_its_state_and_at_the_head_of_every_artifact(aws: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from prefect_distributed.flows.distributed import distributed

    upload_inputs()
    state = distributed(config=str(write_batch(tmp_path)), return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        saved_state = client.read_flow_run(summary.run_id).state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[summary.run_id]))
        )
    # The runs list shows the state's name; the run's page, its message.
    assert saved_state.is_completed() and saved_state.name == "Completed with dead jobs"
    assert saved_state.message.startswith("5 of 6 succeeded, 1 dead: see the dead-jobs artifact.")
    assert f"rerun_failed_from={summary.run_id}" in saved_state.message
    by_key = {artifact.key: artifact for artifact in artifacts if artifact.key}
    assert "| succeeded | 5 |" in by_key["run-summary"].data
    assert by_key["run-summary"].description.startswith("5 of 6 succeeded, 1 dead. Run ")
    assert by_key["dead-jobs"].description.startswith("1 dead of 6 jobs")
    assert by_key["jobs"].description.startswith("5 of 6 succeeded, 1 dead. Run ")
    (row,) = (
        json.loads(by_key["dead-jobs"].data) if isinstance(by_key["dead-jobs"].data, str) else by_key["dead-jobs"].data
    )
    assert row["job_id"] == summary.failed[0].job_id
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.data == pytest.approx(100.0)
    assert progress.description == "Completed with dead jobs: 5 of 6 succeeded, 1 dead"


def test_fail_on_dead_jobs_ends_such_a_run_failed_after_its_cleanup(aws: str, tmp_path: Path) -> None:
    from prefect_distributed.flows.distributed import distributed

    upload_inputs()
    state = distributed(config=str(write_batch(tmp_path, fail_on_dead_jobs=True)), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("5 of 6 succeeded, 1 dead") and state.message.endswith("(fail_on_dead_jobs)")
    (kept_queue,) = queues_left()  # cleaned up as any run: only the dead job's queue is kept
    assert kept_queue.endswith("-dead")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("missing.yaml", "config file {tmp_path}/missing.yaml does not exist"),
        (123, "config was read as the int 123"),
    ],
)
def test_a_config_mistake_is_one_line_in_the_log_and_the_states_message(
    aws: str, tmp_path: Path, config: object, message: str
) -> None:
    from prefect_distributed.flows.distributed import distributed

    state = distributed(config=str(tmp_path / config) if isinstance(config, str) else config, return_state=True)
    logs = run_logs(state.state_details.flow_run_id, last="Finished in state")
    assert state.is_failed() and state.message.startswith(message.format(tmp_path=tmp_path))
    errors = [log.message for log in logs if log.level >= 40]
    assert errors == [f"Nothing was created: {state.message}"]
    assert not [log.message for log in logs if "Traceback" in log.message]
    assert queues_left() == []


def test_a_second_run_skips_every_job_already_done(aws: str, tmp_path: Path) -> None:
    upload_inputs()
    config = str(write_batch(tmp_path))
    run_flow(config)
    again = run_flow(config)
    assert (again.succeeded, again.skipped, len(again.failed)) == (0, 5, 1)
    # Each run keeps only its dead-letter queue, for its one dead job.
    assert len(queues_left()) == 2 and all(url.endswith("-dead") for url in queues_left())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"queue": {"visiblity_timeout_s": 5}},
            "queue.visiblity_timeout_s: unknown setting; did you mean 'visibility_timeout_s'?",
        ),
        ({"queue": {"job_retries": "many"}}, "queue.job_retries: Input should be a valid integer"),
        ({"job_file": "nowhere.json"}, "nowhere.json does not exist"),
        ({"job_file": "no-groups.json"}, "needs a non-empty 'groups' list"),
        ({"bucket": "no-such-bucket"}, "bucket: bucket 'no-such-bucket' does not exist"),
    ],
)
def test_bad_input_is_refused_before_any_resource_exists(aws: str, tmp_path: Path, change: dict, message: str) -> None:
    (tmp_path / "no-groups.json").write_text(json.dumps({"output": "o", "jobs": []}))
    with pytest.raises(ConfigError) as error:
        run_flow(str(write_batch(tmp_path, **change)))
    assert message in str(error.value)
    assert queues_left() == []
    assert boto3.client("s3").list_buckets()["Buckets"] == []


def test_an_inline_mapping_works_as_the_config(aws: str, tmp_path: Path) -> None:
    upload_inputs()
    config = yaml.safe_load(write_batch(tmp_path).read_text())
    config.update(job_file=str(tmp_path / "jobs.json"), fleet={"local_workers": 2, "local_workdir": str(tmp_path)})
    summary = run_flow(config)
    assert summary.succeeded == 5


# The program prints its environment first (the AWS variables last, so that the dead job's output
# tail holds them), then runs as usual.
PRINTENV_COMMAND = "sh -c 'env | sort -r; exec \"$@\"' sh {python} program.py {{input_dir}} {{output_dir}}"


@pytest.mark.parametrize("pass_aws_credentials", [False, True])
def test_no_secret_reaches_a_log_a_record_an_artifact_the_summary_or_the_manifest(
    aws: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], pass_aws_credentials: bool
) -> None:
    """Every job's program prints its environment; one fails, so its output reaches the records, the
    summary, the manifest and the artifacts. Without pass_aws_credentials the program has no key to
    print; with it, the worker masks the secret key in the program's output."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect_aws import AwsCredentials

    secret = "distributed-Secret-Value-0123456789"
    AwsCredentials(aws_access_key_id="AKIAE2ETESTKEY", aws_secret_access_key=secret, region_name="us-east-1").save(
        "e2e-credentials", overwrite=True
    )
    upload_inputs()
    config = write_batch(
        tmp_path,
        aws_credentials="e2e-credentials",
        command=PRINTENV_COMMAND.format(python=sys.executable),
        container={"pass_aws_credentials": pass_aws_credentials},
        fleet={"local_workers": 2, "keep_local_logs": True},
    )
    summary = run_flow(str(config))
    assert summary.succeeded == 5
    kept_logs = tmp_path / "fleet-state" / summary.run_id
    assert f"local fleet logs {kept_logs} (fleet.keep_local_logs)" in summary.resources_kept

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[summary.run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[summary.run_id]))
        )
    worker_logs = [p.read_text() for p in (tmp_path / "fleet-state").rglob("*.log")]
    s3 = boto3.client("s3")
    records = [
        s3_text(item["Key"])
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{summary.run_id}/").get("Contents", [])
        if item["Key"].endswith((".json", ".csv"))
    ]
    captured = capfd.readouterr()
    haystacks = {
        "flow and task logs": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(str(a.data) + str(a.description) for a in artifacts),
        "worker logs": "\n".join(worker_logs),
        "records, summary.json and manifest.csv": "\n".join(records),
        "summary": summary.model_dump_json(),
        "console": captured.out + captured.err,
    }
    assert len(logs) > 10 and worker_logs and len(records) > 3
    for where, text in haystacks.items():
        assert secret not in text, f"the secret appeared in the {where}"
    (dead,) = summary.failed
    assert "AWS_REGION=us-east-1" in dead.output_tail  # the program did print its environment
    if pass_aws_credentials:
        assert "AWS_SECRET_ACCESS_KEY=*****" in dead.output_tail
    else:
        assert "AWS_SECRET_ACCESS_KEY=" not in dead.output_tail


def test_failed_jobs_can_be_rerun_once_their_cause_is_fixed(aws: str, tmp_path: Path) -> None:
    upload_inputs()
    config = str(write_batch(tmp_path))
    first = run_flow(config)
    assert [dead.fields for dead in first.failed] == [{"well": BROKEN_WELL}]
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"inputs/{BROKEN_WELL}.txt", Body=b"7 8")

    from prefect_distributed.flows.distributed import distributed

    rerun = distributed(config=config, rerun_failed_from=first.run_id)
    assert (rerun.total, rerun.succeeded, rerun.failed) == (1, 1, [])
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"results/{BROKEN_WELL}/doubled.txt")["Body"].read()
    assert body == b"14 16"


def test_rerunning_a_run_without_a_summary_is_refused_before_anything_is_created(aws: str, tmp_path: Path) -> None:
    upload_inputs()
    from prefect_distributed.flows.distributed import distributed

    with pytest.raises(ConfigError, match="rerun_failed_from: no summary of run nope"):
        distributed(config=str(write_batch(tmp_path)), rerun_failed_from="nope")
    assert queues_left() == []


def test_the_subflow_example_gets_the_batchs_summary(aws: str, tmp_path: Path) -> None:
    from deployments.examples.batch_as_subflow import plate_pipeline

    upload_inputs()
    state = plate_pipeline(config=str(write_batch(tmp_path)), return_state=True)
    summary = state.result()
    assert isinstance(summary, RunSummary)
    assert (summary.succeeded, len(summary.failed)) == (5, 1)

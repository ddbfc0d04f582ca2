"""The worker's pure decisions: settings, the wire format, the command line, check-if-done, records,
resource warnings, log batches and Spot notices."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest

from prefect_distributed.worker.core import (
    MAX_ARGUMENT_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_OUTPUT_TAIL_CHARS,
    MAX_REASON_CHARS,
    ConfigError,
    JobMessage,
    MalformedJob,
    MissingPlaceholder,
    PermanentFailure,
    attempt_key,
    attempt_prefix,
    attempt_record,
    backoff_delay_s,
    count_finished_outputs,
    failed_runs,
    job_environment,
    outcome_key,
    outcome_prefix,
    outcome_record,
    outputs_complete,
    parse_message,
    render_command,
    retries_spent,
    settings_from_env,
)
from prefect_distributed.worker.joblog import (
    EVENT_OVERHEAD_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    batches,
    log_event,
)
from prefect_distributed.worker.resources import ResourceReading, describe_resources
from prefect_distributed.worker.spot import InstanceAction, parse_instance_action

REQUIRED_ENV = {
    "DISTRIBUTED_QUEUE_URL": "https://sqs.example/queue",
    "DISTRIBUTED_DEAD_LETTER_QUEUE_URL": "https://sqs.example/dlq",
    "DISTRIBUTED_RUN_ID": "run-1",
    "DISTRIBUTED_COMMAND": "tool --sample {sample} --in {input_dir} --out {output_dir}",
    "DISTRIBUTED_INPUT_BUCKET": "in-bucket",
    "DISTRIBUTED_OUTPUT_BUCKET": "out-bucket",
    "DISTRIBUTED_RECORDS_BUCKET": "records-bucket",
}


def message(**overrides: object) -> str:
    body = {
        "schema_version": 1,
        "run_id": "run-1",
        "job_id": "job-A01",
        "fields": {"sample": "A01", "threads": 4},
        "inputs": ["inputs/A01.csv"],
        "output": "results/A01",
    }
    body.update(overrides)
    return json.dumps(body)


def job(**overrides: object) -> JobMessage:
    return parse_message(message(**overrides))


def test_settings_take_defaults_from_the_readme() -> None:
    settings = settings_from_env(REQUIRED_ENV)
    assert settings.queue_url == "https://sqs.example/queue"
    assert settings.check_if_done is False
    assert settings.expected_number_files == 1
    assert settings.min_file_size_bytes == 1
    assert settings.necessary_string == ""
    assert settings.visibility_timeout_s == 60
    assert settings.retry_delay_s == 60
    assert settings.job_retries == 3
    assert settings.job_timeout_s == 0
    assert settings.idle_exit_s == 60
    assert settings.wait_time_s == 20
    assert settings.processes == 1
    assert settings.stagger_s == 0
    assert settings.work_dir is None
    assert settings.heartbeat_interval_s == 30
    assert settings.log_group is None
    assert settings.resource_log_s == 30
    assert settings.spot_watch is False
    assert settings.imds_endpoint == "http://169.254.169.254"
    assert settings.pass_aws_credentials is False


def test_settings_parse_every_optional_variable() -> None:
    settings = settings_from_env(
        {
            **REQUIRED_ENV,
            "DISTRIBUTED_CHECK_IF_DONE": "TRUE",
            "DISTRIBUTED_EXPECTED_NUMBER_FILES": "3",
            "DISTRIBUTED_MIN_FILE_SIZE_BYTES": "0",
            "DISTRIBUTED_NECESSARY_STRING": ".csv",
            "DISTRIBUTED_VISIBILITY_TIMEOUT_S": "120",
            "DISTRIBUTED_RETRY_DELAY_S": "5",
            "DISTRIBUTED_JOB_RETRIES": "7",
            "DISTRIBUTED_JOB_TIMEOUT_S": "1.5",
            "DISTRIBUTED_IDLE_EXIT_S": "2",
            "DISTRIBUTED_WAIT_TIME_S": "0",
            "DISTRIBUTED_PROCESSES": "4",
            "DISTRIBUTED_STAGGER_S": "0.5",
            "DISTRIBUTED_WORK_DIR": "/scratch",
            "DISTRIBUTED_LOG_GROUP": "/batch/cells",
            "DISTRIBUTED_RESOURCE_LOG_S": "0",
            "DISTRIBUTED_SPOT_WATCH": "true",
            "DISTRIBUTED_IMDS_ENDPOINT": "http://127.0.0.1:8080/",
            "DISTRIBUTED_PASS_AWS_CREDENTIALS": "true",
        }
    )
    assert settings.check_if_done is True
    assert (settings.expected_number_files, settings.min_file_size_bytes) == (3, 0)
    assert settings.necessary_string == ".csv"
    assert (settings.visibility_timeout_s, settings.retry_delay_s, settings.job_retries) == (120, 5, 7)
    assert (settings.job_timeout_s, settings.idle_exit_s, settings.stagger_s) == (1.5, 2.0, 0.5)
    assert (settings.wait_time_s, settings.processes) == (0, 4)
    assert settings.work_dir == "/scratch"
    assert settings.log_group == "/batch/cells"
    assert settings.resource_log_s == 0
    assert settings.spot_watch is True
    assert settings.imds_endpoint == "http://127.0.0.1:8080"
    assert settings.pass_aws_credentials is True


@pytest.mark.parametrize("name", sorted(REQUIRED_ENV))
def test_a_missing_required_variable_is_named(name: str) -> None:
    env = {key: value for key, value in REQUIRED_ENV.items() if key != name}
    with pytest.raises(ConfigError, match=name):
        settings_from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISTRIBUTED_WAIT_TIME_S", "21"),
        ("DISTRIBUTED_WAIT_TIME_S", "five"),
        ("DISTRIBUTED_VISIBILITY_TIMEOUT_S", "0"),
        ("DISTRIBUTED_VISIBILITY_TIMEOUT_S", "1.5"),
        ("DISTRIBUTED_RETRY_DELAY_S", "-1"),
        ("DISTRIBUTED_JOB_RETRIES", "0"),
        ("DISTRIBUTED_PROCESSES", "0"),
        ("DISTRIBUTED_EXPECTED_NUMBER_FILES", "0"),
        ("DISTRIBUTED_JOB_TIMEOUT_S", "nan"),
        ("DISTRIBUTED_CHECK_IF_DONE", "yes"),
        ("DISTRIBUTED_LOG_GROUP", "cells:run"),
        ("DISTRIBUTED_RESOURCE_LOG_S", "-1"),
        ("DISTRIBUTED_SPOT_WATCH", "1"),
        ("DISTRIBUTED_IMDS_ENDPOINT", "169.254.169.254"),
        ("DISTRIBUTED_IMDS_ENDPOINT", "http://169.254.169.254/latest"),
        ("DISTRIBUTED_COMMAND", "tool 'unclosed"),
        ("DISTRIBUTED_COMMAND", "tool {"),
        ("DISTRIBUTED_COMMAND", "tool {}"),
        ("DISTRIBUTED_COMMAND", "tool {0[key]}"),
    ],
)
def test_a_malformed_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from_env({**REQUIRED_ENV, name: value})


def test_parse_message_reads_the_wire_format() -> None:
    parsed = job()
    assert parsed.run_id == "run-1"
    assert parsed.job_id == "job-A01"
    assert dict(parsed.fields) == {"sample": "A01", "threads": 4}
    assert parsed.inputs == ("inputs/A01.csv",)
    assert parsed.output == "results/A01"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"schema_version": 1, "job_id": "j"}), "missing keys: fields, inputs, output, run_id"),
        (message(schema_version=2), "schema_version"),
        (message(schema_version="1"), "schema_version"),
        (message(schema_version=True), "schema_version"),
        (message(job_id=""), "job_id"),
        (message(run_id=7), "run_id"),
        (message(output="results/A01/"), "output"),
        (message(output=""), "output"),
        (message(fields=["sample"]), "fields"),
        (message(fields={"input_dir": "/tmp"}), "reserved"),
        (message(inputs="inputs/A01.csv"), "inputs"),
        (message(inputs=[""]), "input"),
        (message(inputs=["../etc/passwd"]), "../etc/passwd"),
        (message(inputs=["/abs/key"]), "/abs/key"),
    ],
)
def test_parse_message_rejects_a_bad_body_with_the_reason(body: str, reason: str) -> None:
    with pytest.raises(MalformedJob, match=reason) as caught:
        parse_message(body)
    assert reason in caught.value.reason


def test_a_malformed_job_still_names_its_job_id_when_it_has_one() -> None:
    with pytest.raises(MalformedJob) as caught:
        parse_message(message(schema_version=9))
    assert caught.value.job_id == "job-A01"
    with pytest.raises(MalformedJob) as caught:
        parse_message("{}")
    assert caught.value.job_id is None


def test_a_malformed_job_is_a_permanent_failure() -> None:
    assert issubclass(MalformedJob, PermanentFailure)
    assert issubclass(MissingPlaceholder, PermanentFailure)


def test_render_command_fills_fields_and_directories() -> None:
    argv = render_command(
        "tool --sample {sample} -t {threads} --in {input_dir} --out '{output_dir}' --id {job_id} {{literal}}",
        job(),
        "/work/in",
        "/work/my out",
    )
    assert argv == [
        "tool", "--sample", "A01", "-t", "4", "--in", "/work/in", "--out", "/work/my out",
        "--id", "job-A01", "{literal}",
    ]  # fmt: skip


def test_render_command_keeps_each_value_one_argument() -> None:
    argv = render_command("tool {sample}", job(fields={"sample": "A 01; rm -rf /"}), "/i", "/o")
    assert argv == ["tool", "A 01; rm -rf /"]


def test_render_command_names_a_missing_placeholder() -> None:
    with pytest.raises(MissingPlaceholder, match=r"\{plate\}"):
        render_command("tool {plate}", job(), "/i", "/o")


def test_job_fields_become_environment_variables_for_scalars_with_plain_names() -> None:
    fields = {"sample": "A01", "threads": 4, "ratio": 0.5, "dry": True, "tags": ["x"], "a-b": "x", "a=b": "y"}
    env, files = job_environment(job(fields=fields), "/job/fields")
    assert env == {"JOB_SAMPLE": "A01", "JOB_THREADS": "4", "JOB_RATIO": "0.5", "JOB_DRY": "True"}
    assert files == {}


def test_a_field_too_big_for_the_environment_becomes_a_file_named_by_a_variable() -> None:
    big = "é" * (MAX_ENV_VALUE_BYTES // 2 + 1)  # over the limit in bytes, not in characters
    fits = "x" * MAX_ENV_VALUE_BYTES
    env, files = job_environment(job(fields={"big": big, "fits": fits}), "/job/fields")
    assert env == {"JOB_BIG_FILE": "/job/fields/JOB_BIG", "JOB_FITS": fits}
    assert files == {"/job/fields/JOB_BIG": big}


def test_a_command_word_over_linuxs_argument_limit_is_a_permanent_failure_that_says_the_fix() -> None:
    just_fits = "x" * MAX_ARGUMENT_BYTES
    assert render_command("tool {big}", job(fields={"big": just_fits}), "/i", "/o") == ["tool", just_fits]
    with pytest.raises(PermanentFailure, match=r"'\{big\}' is 131072 bytes .* JOB_<FIELD>_FILE"):
        render_command("tool {big}", job(fields={"big": just_fits + "x"}), "/i", "/o")


def test_render_command_accepts_any_field_name() -> None:
    assert render_command("tool {plate-id}", job(fields={"plate-id": "P1"}), "/i", "/o") == ["tool", "P1"]


def test_check_if_done_filters_on_the_key_not_the_size() -> None:
    # The original Distributed-Something tested `NECESSARY_STRING in <size>` and crashed.
    objects = [("results/A01/cells.csv", 120), ("results/A01/log.txt", 50), ("results/A01/empty.csv", 0)]
    assert count_finished_outputs(objects, min_size_bytes=1, necessary_string=".csv") == 1
    assert count_finished_outputs(objects, min_size_bytes=1, necessary_string="") == 2
    assert count_finished_outputs(objects, min_size_bytes=0, necessary_string="") == 3
    assert count_finished_outputs(objects, min_size_bytes=100, necessary_string="") == 1
    assert count_finished_outputs([], min_size_bytes=0, necessary_string="") == 0


def test_check_if_done_needs_the_expected_number_of_files() -> None:
    objects = [("results/A01/a.csv", 10), ("results/A01/b.csv", 10)]
    settings = settings_from_env({**REQUIRED_ENV, "DISTRIBUTED_NECESSARY_STRING": ".csv"})
    assert outputs_complete(objects, settings) is True
    settings = settings_from_env({**REQUIRED_ENV, "DISTRIBUTED_EXPECTED_NUMBER_FILES": "3"})
    assert outputs_complete(objects, settings) is False
    assert outputs_complete([*objects, ("results/A01/c.csv", 1)], settings) is True


def test_outcome_record_has_the_documented_fields() -> None:
    finished = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    record = outcome_record(
        "job-A01", status="succeeded", attempt=2, duration_s=12.34567, worker="host:1:0", finished_at=finished
    )
    assert record == {
        "job_id": "job-A01",
        "status": "succeeded",
        "attempt": 2,
        "duration_s": 12.346,
        "worker": "host:1:0",
        "finished_at": "2024-05-01T10:00:00+00:00",
    }
    with pytest.raises(ValueError, match="status"):
        outcome_record("job-A01", status="failed", attempt=1, duration_s=0.0, worker="host:1:0", finished_at=finished)


def test_attempt_record_keeps_the_last_twenty_output_lines() -> None:
    failed = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    lines = [f"line {number}" for number in range(30)]
    record = attempt_record(
        "job-A01",
        attempt=3,
        permanent=False,
        reason="exit status 2",
        exit_code=2,
        output_lines=lines,
        worker="host:1:0",
        failed_at=failed,
    )
    assert record["output_tail"].splitlines() == lines[10:]
    assert {key: value for key, value in record.items() if key != "output_tail"} == {
        "job_id": "job-A01",
        "attempt": 3,
        "permanent": False,
        "reason": "exit status 2",
        "exit_code": 2,
        "worker": "host:1:0",
        "failed_at": "2024-05-01T10:00:00+00:00",
    }


def test_an_attempt_record_keeps_a_bounded_reason_and_the_end_of_its_tail() -> None:
    lines = ["x" * 5000, "y" * 5000, "the last line"]
    record = attempt_record(
        "job-A01",
        attempt=1,
        permanent=False,
        reason="r" * 5000,
        exit_code=1,
        output_lines=lines,
        worker="host:1:0",
        failed_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    )
    assert record["reason"] == "r" * MAX_REASON_CHARS
    assert len(record["output_tail"]) == MAX_OUTPUT_TAIL_CHARS
    assert record["output_tail"].endswith("y\nthe last line")


def test_records_refuse_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone"):
        outcome_record(
            "job-A01", status="skipped", attempt=1, duration_s=0.0, worker="host:1:0", finished_at=datetime(2024, 5, 1)
        )


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff_delay_s(failures) for failures in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay_s(10_000) == 60


def test_outcome_keys_carry_the_status_and_never_match_a_longer_job_id() -> None:
    assert outcome_key("run-1", "job-1", "skipped") == "runs/run-1/outcomes/job-1.skipped.json"
    assert outcome_key("run-1", "job-1", "succeeded").startswith(outcome_prefix("run-1", "job-1"))
    assert not outcome_key("run-1", "job-10", "succeeded").startswith(outcome_prefix("run-1", "job-1"))


def test_failed_runs_are_counted_from_the_jobs_own_numbered_attempt_records() -> None:
    prefix = attempt_prefix("run-1", "job-1")
    assert attempt_key("run-1", "job-1", 2) == "runs/run-1/attempts/job-1.2.json"
    keys = [
        attempt_key("run-1", "job-1", 1),
        attempt_key("run-1", "job-1", 2),
        attempt_key("run-1", "job-1", 2),  # two workers that ran a duplicate delivery at once
        attempt_key("run-1", "job-1.5", 1),  # another job, whose id starts with this one's
        attempt_key("run-1", "job-10", 1),
        "runs/run-1/attempts/job-1.notes.json",
    ]
    assert failed_runs(keys, prefix) == 2
    assert failed_runs([], prefix) == 0


def test_only_failed_runs_spend_retries() -> None:
    assert [retries_spent(failed, job_retries=2) for failed in range(4)] == [False, False, True, True]


GIB = 1024**3


def reading(
    disk_free_gib: float = 50, memory_available_gib: float | None = 8, load_1m: float | None = 1.0
) -> ResourceReading:
    """A 100 GiB disk, 16 GiB of memory and 2 CPUs, with the given free disk, memory and load."""
    return ResourceReading(
        path="/work",
        disk_total_bytes=100 * GIB,
        disk_free_bytes=int(disk_free_gib * GIB),
        memory_total_bytes=16 * GIB if memory_available_gib is not None else None,
        memory_available_bytes=int(memory_available_gib * GIB) if memory_available_gib is not None else None,
        load_1m=load_1m,
        cpus=2,
    )


def test_a_resource_line_reports_disk_memory_and_load() -> None:
    assert describe_resources(reading()) == (
        logging.INFO,
        "resources: disk 50% free (50.0 of 100.0 GiB) at /work; memory 50% available (8.0 of 16.0 GiB); "
        "load 1.00 on 2 CPU(s)",
    )


@pytest.mark.parametrize(
    ("values", "warning"),
    [
        ({"disk_free_gib": 9}, "disk over 90% used"),
        ({"memory_available_gib": 1.5}, "memory under 10% available"),
        ({"load_1m": 4.5}, "load over 2 per CPU"),
    ],
)
def test_a_resource_line_is_a_warning_when_something_runs_short(values: dict[str, float], warning: str) -> None:
    level, line = describe_resources(reading(**values))
    assert level == logging.WARNING
    assert line.endswith(f"; LOW: {warning}")


def test_a_resource_line_at_the_thresholds_is_no_warning_and_leaves_out_what_it_could_not_read() -> None:
    level, line = describe_resources(reading(disk_free_gib=10, memory_available_gib=None, load_1m=4.0))
    assert level == logging.INFO
    assert "memory" not in line
    level, line = describe_resources(reading(load_1m=None))
    assert level == logging.INFO
    assert "load" not in line


def test_a_log_event_is_cut_to_what_cloudwatch_takes_on_a_character_boundary() -> None:
    assert log_event(5, "héllo") == (5, "héllo", len("héllo".encode()) + EVENT_OVERHEAD_BYTES)
    event = log_event(5, "é" * MAX_EVENT_BYTES)
    assert event.size <= MAX_EVENT_BYTES
    assert set(event.message) == {"é"}
    assert event.size == len(event.message.encode()) + EVENT_OVERHEAD_BYTES


def test_log_batches_are_in_time_order_within_the_event_and_byte_limits() -> None:
    small = [log_event(timestamp, "x") for timestamp in range(MAX_BATCH_EVENTS + 5, 0, -1)]
    sent = list(batches(small))
    assert [len(batch) for batch in sent] == [MAX_BATCH_EVENTS, 5]
    timestamps = [event["timestamp"] for batch in sent for event in batch]
    assert timestamps == sorted(timestamps)

    large = [log_event(timestamp, "y" * 200_000) for timestamp in range(12)]
    sent = list(batches(large))
    assert [len(batch) for batch in sent] == [5, 5, 2]
    for batch in sent:
        assert sum(len(event["message"]) + EVENT_OVERHEAD_BYTES for event in batch) <= MAX_BATCH_BYTES
    assert list(batches([])) == []


@pytest.mark.parametrize(
    ("body", "notice"),
    [
        (b'{"action": "terminate", "time": "2026-03-01T12:02Z"}', InstanceAction("terminate", "2026-03-01T12:02Z")),
        (b'{"action": "stop"}', InstanceAction("stop", "unknown")),
        (b"not json", InstanceAction("unknown", "unknown")),
        (b"[1]", InstanceAction("unknown", "unknown")),
    ],
)
def test_a_spot_notice_is_a_notice_even_when_its_body_is_not_as_documented(body: bytes, notice: InstanceAction) -> None:
    assert parse_instance_action(body) == notice

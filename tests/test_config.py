"""The config: every mistake is an error that names the setting and says what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_distributed.core.config import RunConfig, load_config_file, parse_config
from prefect_distributed.core.errors import ConfigError

MINIMAL = {"app_name": "cells", "job_file": "jobs.json", "command": "run {x}", "bucket": "my-bucket"}


def test_defaults_follow_distributed_something_where_it_had_one() -> None:
    config = parse_config(MINIMAL, "test")
    assert config.queue.visibility_timeout_s == 60
    assert config.queue.retry_delay_s == 60
    assert config.fleet.backend == "local"
    assert config.check_if_done.enabled is False
    assert config.inputs_bucket == config.outputs_bucket == "my-bucket"


def test_an_unknown_key_is_named_with_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, "queue": {"visiblity_timeout_s": 30}}, "cfg.yaml")
    assert "cfg.yaml" in str(error.value)
    assert "queue.visiblity_timeout_s: unknown setting; did you mean 'visibility_timeout_s'?" in str(error.value)


def test_a_wrong_type_names_the_field_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"queue\.job_retries: Input should be a valid integer.*'three'"):
        parse_config({**MINIMAL, "queue": {"job_retries": "three"}}, "cfg.yaml")


def test_out_of_range_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"queue\.visibility_timeout_s: Input should be less than or equal to 43200"):
        parse_config({**MINIMAL, "queue": {"visibility_timeout_s": 50000}}, "cfg.yaml")


def test_a_missing_required_setting_is_named() -> None:
    data = {k: v for k, v in MINIMAL.items() if k != "command"}
    with pytest.raises(ConfigError, match="command: required setting is missing"):
        parse_config(data, "cfg.yaml")


def test_an_invalid_bucket_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="bucket: .*lowercase letters"):
        parse_config({**MINIMAL, "bucket": "My_Bucket"}, "cfg.yaml")


def test_the_spot_fleet_backend_needs_a_fleet_file() -> None:
    with pytest.raises(ConfigError, match="fleet.fleet_file is required with fleet.backend 'spot-fleet'"):
        parse_config({**MINIMAL, "fleet": {"backend": "spot-fleet"}}, "cfg.yaml")


def test_a_task_role_must_be_a_role_arn() -> None:
    with pytest.raises(ConfigError, match=r"fleet\.task_role_arn: String should match pattern"):
        parse_config({**MINIMAL, "fleet": {"task_role_arn": "arn:aws:iam::123456789012:instance-profile/x"}}, "c")


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_config_file(tmp_path / "nope.yaml")


def test_a_missing_relative_config_path_names_the_folder_it_was_looked_for_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_config_file(Path("configs/nope.yaml"))
    assert str(error.value).startswith(f"config file configs/nope.yaml does not exist in {tmp_path} ")
    assert "the folder `prefect deploy` ran in" in str(error.value)


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("app_name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config_file(path)


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.yaml"
    path.parent.mkdir()
    path.write_text("app_name: cells\njob_file: jobs.json\ncommand: run\nbucket: my-bucket\n")
    config = load_config_file(path)
    assert config.job_file == tmp_path / "sub" / "jobs.json"
    assert config.fleet.local_workdir == tmp_path / "sub"


def test_queue_names_are_derived_from_the_app_and_the_run() -> None:
    config = RunConfig.model_validate(MINIMAL)
    assert config.queue_names("0123abcd-0000-0000-0000-000000000000") == ("cells-0123abcd", "cells-0123abcd-dead")
    named = RunConfig.model_validate({**MINIMAL, "queue": {"name": "MyQueue"}})
    assert named.queue_names("x") == ("MyQueue", "MyQueue-dead")


def test_job_log_streams_are_off_and_resource_lines_every_30_s_by_default() -> None:
    config = parse_config(MINIMAL, "test")
    assert config.container.job_log_streams is False
    assert config.container.resource_log_interval_s == 30
    with pytest.raises(ConfigError, match=r"container\.resource_log_interval_s: Input should be greater than or"):
        parse_config({**MINIMAL, "container": {"resource_log_interval_s": -1}}, "cfg.yaml")


@pytest.mark.parametrize(
    ("job_log_streams", "log_group_name", "expected"),
    [
        (False, None, ""),
        (True, None, "cells/run-1"),
        (True, "/batch/cells", "/batch/cells/run-1"),
        (False, "/batch/cells", ""),
    ],
)
def test_workers_get_the_runs_own_log_group_only_when_job_log_streams_are_on(
    job_log_streams: bool, log_group_name: str | None, expected: str
) -> None:
    from prefect_distributed.core.models import QueueUrls, RunResources
    from prefect_distributed.core.worker_env import worker_environment

    container = {"job_log_streams": job_log_streams, "resource_log_interval_s": 0}
    config = parse_config({**MINIMAL, "log_group_name": log_group_name, "container": container}, "test")
    urls = QueueUrls(queue_url="https://sqs/q", dead_letter_queue_url="https://sqs/d")

    environment = worker_environment(config, RunResources.for_run(config, "run-1"), urls)

    assert environment["DISTRIBUTED_LOG_GROUP"] == expected
    assert environment["DISTRIBUTED_RESOURCE_LOG_S"] == "0"


@pytest.mark.parametrize(
    ("key", "ours"),
    [("APP_NAME", "app_name"), ("SQS_QUEUE_NAME", "queue.name"), ("MACHINE_TYPE", "fleet.machine_types")],
)
def test_a_key_with_a_distributed_something_name_is_told_its_name_here(key: str, ours: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, key: "x"}, "cfg.yaml")
    assert f"  - {key}: unknown setting; {key} is Distributed-Something's name; here it is {ours}" in str(error.value)


def test_a_distributed_something_name_inside_a_section_gets_the_same_hint() -> None:
    with pytest.raises(ConfigError, match=r"queue\.JOB_RETRIES: unknown setting; JOB_RETRIES is Distributed-Some"):
        parse_config({**MINIMAL, "queue": {"JOB_RETRIES": 3}}, "cfg.yaml")


def test_a_dead_letter_queue_given_as_an_arn_is_reduced_to_its_name() -> None:
    """Distributed-CellProfiler configs before 2023 name the dead-letter queue by its ARN."""
    arn = "arn:aws:sqs:us-east-1:123456789012:user_DeadMessages"
    config = parse_config({**MINIMAL, "queue": {"name": "cellsQueue", "dead_letter_queue_name": arn}}, "cfg.yaml")
    assert config.queue_names("x") == ("cellsQueue", "user_DeadMessages")


def test_a_malformed_dead_letter_queue_is_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"queue\.dead_letter_queue_name: String should match pattern"):
        parse_config({**MINIMAL, "queue": {"dead_letter_queue_name": "arn:aws:sqs:us-east-1:12:x y"}}, "cfg.yaml")


def test_a_job_file_that_is_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("app_name: cells\njob_file: jobs\ncommand: run\nbucket: my-bucket\n")
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert str(error.value).startswith(f"job_file {tmp_path / 'jobs'} is a folder, not a job file: set job_file to")
    assert "does not exist" not in str(error.value)


@pytest.mark.parametrize(("job_retries", "receives"), [(1, 21), (3, 23), (990, 1000), (1000, 1000)])
def test_the_redrive_policy_sits_well_above_job_retries_within_sqss_limit(job_retries: int, receives: int) -> None:
    config = parse_config({**MINIMAL, "queue": {"job_retries": job_retries}}, "test")
    assert config.queue.redrive_receive_count == receives


@pytest.mark.parametrize("passed", [False, True])
def test_workers_get_the_retries_and_whether_the_program_gets_aws_keys(passed: bool) -> None:
    from prefect_distributed.core.models import QueueUrls, RunResources
    from prefect_distributed.core.worker_env import worker_environment

    config = parse_config(
        {**MINIMAL, "queue": {"job_retries": 4}, "container": {"pass_aws_credentials": passed}}, "test"
    )
    urls = QueueUrls(queue_url="https://sqs/q", dead_letter_queue_url="https://sqs/d")

    environment = worker_environment(config, RunResources.for_run(config, "run-1"), urls)

    assert environment["DISTRIBUTED_JOB_RETRIES"] == "4"
    assert environment["DISTRIBUTED_PASS_AWS_CREDENTIALS"] == str(passed).lower()
    assert not any("SECRET" in name or "KEY" in name for name in environment)

"""The config.py converter, on Distributed-Something's and Distributed-CellProfiler's own config.py:
the YAML it writes loads with this project's parser and carries every value that has a counterpart;
every other setting is listed with what to do instead; nothing in config.py is ever run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_distributed.core.config import load_config_file
from prefect_distributed.core.ds_config import HEADER, convert_ds_config, read_config_py, write_ds_config
from prefect_distributed.core.errors import ConfigError
from tests.ds_files import DS_FILES, needs_ds_files

REPO = Path(__file__).resolve().parents[1]
DS_CONFIG, DCP_CONFIG = DS_FILES / "ds" / "config.py", DS_FILES / "dcp" / "config.py"

pytestmark = needs_ds_files


def converted(tmp_path: Path, config_py: Path, **given: str) -> tuple[Path, object]:
    """Copy config.py and the job file of its project into tmp_path, convert, return the YAML and result."""
    shutil.copy(config_py, tmp_path / "config.py")
    shutil.copy(config_py.parent / "exampleJob.json", tmp_path / "exampleJob.json")
    return write_ds_config(
        tmp_path / "config.py", job_file=tmp_path / "exampleJob.json", command="run {group}", **given
    )


def left_out(conversion: object) -> dict[str, str]:
    return {item.setting: item.instead for item in conversion.left_out}  # type: ignore[attr-defined]


def test_distributed_somethings_config_py_becomes_a_config_that_loads_with_its_values(tmp_path: Path) -> None:
    output, conversion = converted(tmp_path, DS_CONFIG)

    config = load_config_file(output)

    assert conversion.kind == "Distributed-Something"
    assert config.app_name == "DistributedSomething"
    assert config.container.image == "user/distributed-something:sometag"
    assert (config.region, config.bucket) == ("us-east-1", "your-bucket-name")
    assert config.log_group_name == "DistributedSomething"
    assert config.queue_names("x") == ("DistributedSomethingQueue", "user_DeadMessages")
    # Distributed-Something had no JOB_RETRIES: run.py retried 10 times.
    assert (config.queue.visibility_timeout_s, config.queue.job_retries) == (60, 10)
    fleet = config.fleet
    assert (fleet.ecs_cluster, fleet.machines, fleet.tasks_per_machine) == ("default", 3, 1)
    assert (fleet.machine_types, fleet.max_price_usd_per_hour, fleet.ebs_volume_gb) == (("m4.xlarge",), 0.10, 30)
    container = config.container
    assert (container.processes, container.cpu_units) == (4, 4096)
    assert (container.memory_mib, container.stagger_s) == (15000, 180)
    done = config.check_if_done
    assert (done.enabled, done.expected_number_files, done.min_file_size_bytes, done.necessary_string) == (
        False,
        7,
        1,
        "",
    )
    assert config.job_file == tmp_path / "exampleJob.json"
    assert config.command == "run {group}"
    assert any("queue.job_retries is 10" in note for note in conversion.notes)


def test_distributed_cellprofilers_config_py_carries_its_buckets_and_retries(tmp_path: Path) -> None:
    output, conversion = converted(tmp_path, DCP_CONFIG, fleet_file=DS_FILES / "dcp" / "exampleFleet_us-east-1.json")

    config = load_config_file(output)

    assert conversion.kind == "Distributed-CellProfiler"
    assert config.app_name == "DistributedCP"
    assert config.container.image == "cellprofiler/distributed-cellprofiler:2.2.0_4.2.8"
    assert (config.bucket, config.input_bucket, config.output_bucket) == (
        "your-bucket-name",
        "bucket-name",
        "bucket-name",
    )
    assert (config.queue.job_retries, config.fleet.machine_types, config.fleet.max_price_usd_per_hour) == (
        3,
        ("m5.xlarge",),
        0.20,
    )
    assert config.queue_names("x") == ("DistributedCPQueue", "user_DeadMessages")
    assert config.fleet.backend == "spot-fleet"
    assert config.download_files.enabled is False  # DOWNLOAD_FILES = 'False'
    assert config.fleet.fleet_file.resolve() == (DS_FILES / "dcp" / "exampleFleet_us-east-1.json").resolve()
    assert "fleet.fleet_file" not in left_out(conversion)


@pytest.mark.parametrize(
    ("config_py", "settings"),
    [
        (
            DS_CONFIG,
            {"AWS_PROFILE", "SSH_KEY_NAME", "ASSIGN_IP", "AUTO_MONITOR", "CREATE_DASHBOARD", "CLEAN_DASHBOARD"},
        ),
        (
            DCP_CONFIG,
            {
                "AWS_PROFILE",
                "SSH_KEY_NAME",
                "WORKSPACE_BUCKET",
                "UPLOAD_FLAGS",
                "ASSIGN_IP",
                "AUTO_MONITOR",
                "CREATE_DASHBOARD",
                "CLEAN_DASHBOARD",
                "ALWAYS_CONTINUE",
                "USE_PLUGINS",
                "UPDATE_PLUGINS",
                "PLUGINS_COMMIT",
                "INSTALL_REQUIREMENTS",
                "REQUIREMENTS",
            },
        ),
    ],
)
def test_every_setting_not_carried_is_listed_with_what_to_do_instead(
    tmp_path: Path, config_py: Path, settings: set[str]
) -> None:
    output, conversion = converted(tmp_path, config_py)

    listed = left_out(conversion)

    values, _ = read_config_py(config_py.read_text(), str(config_py))
    assert set(values) == set(conversion.carried) | settings  # each setting carried or listed, none dropped
    assert set(listed) == settings | {"fleet.fleet_file"}
    assert all(instead for instead in listed.values())
    assert "AwsCredentials" in listed["AWS_PROFILE"] and "aws_credentials" in listed["AWS_PROFILE"]
    assert "KeyName" in listed["SSH_KEY_NAME"]
    assert "AssociatePublicIpAddress" in listed["ASSIGN_IP"]
    text = output.read_text()
    assert text.startswith(HEADER)
    assert all(f"#   - {setting} = " in text for setting in listed)


def test_without_job_file_command_and_fleet_file_each_is_listed_and_the_parser_names_what_is_missing(
    tmp_path: Path,
) -> None:
    shutil.copy(DS_CONFIG, tmp_path / "config.py")

    output, conversion = write_ds_config(tmp_path / "config.py")

    assert output == tmp_path / "config.yaml"
    assert {"job_file", "command", "fleet.fleet_file"} <= set(left_out(conversion))
    with pytest.raises(ConfigError) as error:
        load_config_file(output)
    assert "job_file: required setting is missing" in str(error.value)
    assert "command: required setting is missing" in str(error.value)


def test_an_old_style_dead_letter_queue_arn_is_carried_as_its_name() -> None:
    text = "APP_NAME = 'cells'\nSQS_DEAD_LETTER_QUEUE = 'arn:aws:sqs:us-east-1:123456789012:cells_DeadMessages'\n"

    conversion = convert_ds_config(text, "config.py", job_file="jobs.json", command="run")

    assert conversion.settings["queue"]["dead_letter_queue_name"] == "cells_DeadMessages"
    assert any("SQS_DEAD_LETTER_QUEUE is an ARN" in note for note in conversion.notes)


def test_dcps_download_files_switch_is_carried_to_download_files_enabled() -> None:
    conversion = convert_ds_config("APP_NAME = 'cells'\nDOWNLOAD_FILES = 'True'\n", "config.py", job_file="j", command="c")

    assert conversion.settings["download_files"] == {"enabled": True}
    assert "DOWNLOAD_FILES" in conversion.carried


def test_config_py_is_read_never_run_and_what_is_no_literal_is_listed_with_its_line(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = (
        "import os\n"
        f"os.system('touch {marker}')\n"
        "APP_NAME = 'cells'\n"
        "AWS_BUCKET = os.environ['BUCKET']\n"
        "SQS_QUEUE_NAME = APP_NAME + 'Queue'\n"
        "MACHINE_PRICE = 0.5 / 2\n"
    )

    values, unreadable = read_config_py(text, "config.py")

    assert not marker.exists()
    assert values == {"APP_NAME": "cells", "SQS_QUEUE_NAME": "cellsQueue", "MACHINE_PRICE": 0.25}
    assert [(item.setting, item.value) for item in unreadable] == [
        ("line 1", "import os"),
        ("line 2", f"os.system('touch {marker}')"),
        ("line 4", "AWS_BUCKET = os.environ['BUCKET']"),
    ]
    assert all("nothing is run" in item.instead for item in unreadable)


def test_dcps_source_and_destination_buckets_set_to_false_leave_aws_bucket_for_both() -> None:
    text = "AWS_BUCKET = 'lab-records'\nSOURCE_BUCKET = 'False'\nDESTINATION_BUCKET = 'False'\n"

    conversion = convert_ds_config(text, "config.py", job_file="j.json", command="run")

    assert conversion.settings["bucket"] == "lab-records"
    assert "input_bucket" not in conversion.settings and "output_bucket" not in conversion.settings
    assert {item.setting: item.instead for item in conversion.left_out}["SOURCE_BUCKET"].startswith(
        "off in config.py: nothing to do (AWS_BUCKET serves; input_bucket defaults to bucket)"
    )


def test_a_setting_of_the_users_own_is_listed_with_how_to_pass_it_to_the_program() -> None:
    conversion = convert_ds_config("APP_NAME = 'cells'\nTHRESHOLD = 3\n", "config.py", job_file="j", command="run")

    [item] = [item for item in conversion.left_out if item.setting == "THRESHOLD"]

    assert item.value == "3"
    assert "--threshold 3" in item.instead


def test_a_secret_in_config_py_is_listed_but_its_value_is_never_repeated(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    (tmp_path / "config.py").write_text(f"APP_NAME = 'cells'\nAWS_SECRET_ACCESS_KEY = '{secret}'\n")

    output, conversion = write_ds_config(tmp_path / "config.py", job_file=tmp_path / "j.json", command="run")

    [item] = [item for item in conversion.left_out if item.setting == "AWS_SECRET_ACCESS_KEY"]
    assert "AwsCredentials" in item.instead
    assert secret not in output.read_text() and secret not in conversion.model_dump_json()


def test_a_file_the_converter_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    shutil.copy(DS_CONFIG, tmp_path / "config.py")
    (tmp_path / "config.yaml").write_text("app_name: mine\n")

    with pytest.raises(ConfigError, match="exists and was not written by this converter"):
        write_ds_config(tmp_path / "config.py")

    assert (tmp_path / "config.yaml").read_text() == "app_name: mine\n"
    write_ds_config(tmp_path / "config.py", tmp_path / "converted.yaml")
    write_ds_config(tmp_path / "config.py", tmp_path / "converted.yaml")  # its own output: rewritten


def test_a_file_that_is_not_python_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("app_name: cells\n  bad: [\n")
    with pytest.raises(ConfigError, match=r"config\.py is not a Python file \(line 2"):
        write_ds_config(tmp_path / "config.py")


def test_the_command_writes_the_config_prints_its_path_and_lists_what_was_not_carried(tmp_path: Path) -> None:
    shutil.copy(DCP_CONFIG, tmp_path / "config.py")
    shutil.copy(DS_FILES / "dcp" / "exampleJob.json", tmp_path / "jobs.json")

    done = subprocess.run(
        [sys.executable, "-m", "prefect_distributed.core.ds_config", "config.py", "--job-file", "jobs.json", "--command", "cp {pipeline}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "config.yaml"
    assert done.stderr.startswith("Distributed-CellProfiler config.py: 26 setting(s) carried, 15 not carried")
    assert "  - WORKSPACE_BUCKET = 'bucket-name': there is one input bucket here" in done.stderr
    assert load_config_file(tmp_path / "config.yaml").command == "cp {pipeline}"
    missing = subprocess.run(
        [sys.executable, "-m", "prefect_distributed.core.ds_config", "nope.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "nope.py is not a file: give the path of your Distributed-Something config.py",
    )


def test_the_flow_action_converts_a_config_py_and_publishes_what_was_not_carried(
    tmp_path: Path, prefect_api: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect_distributed.flows.distributed import distributed

    shutil.copy(DCP_CONFIG, tmp_path / "config.py")

    conversion = distributed(config=str(tmp_path / "config.py"), action="convert-ds-config")

    assert conversion.kind == "Distributed-CellProfiler"
    assert (tmp_path / "config.yaml").read_text().startswith(HEADER)
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ds-config"])), limit=1
        )
    assert "| WORKSPACE_BUCKET | `'bucket-name'` |" in str(artifact.data)
    with pytest.raises(ConfigError, match="action convert-ds-config takes the path of a Distributed-Something config"):
        distributed(config=str(tmp_path / "config.yaml"), action="convert-ds-config")

"""Job files in Distributed-Something's format, validated in full before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.jobs import MAX_MESSAGE_BYTES, JobMessage, check_jobs, iter_jobs, reread_jobs

COMMAND = "tool --in {input_dir} --out {output_dir} --well {well}"


def load_jobs(path: Path, command: str) -> list:
    check_jobs(path, command)
    return list(iter_jobs(path, command))


def write(tmp_path: Path, document: object, name: str = "jobs.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document) if name.endswith(".json") else str(document))
    return path


def test_shared_keys_merge_into_every_group_and_comments_are_dropped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "_comment": "ignored",
            "pipeline": "analysis.cppipe",
            "inputs": ["in/{plate}/{well}.csv"],
            "output": "out/{plate}/{well}/",
            "groups": [
                {"plate": "P1", "well": "A01", "note_comment": "x"},
                {"plate": "P1", "well": "A02", "pipeline": "other"},
            ],
        },
    )
    first, second = load_jobs(path, COMMAND)
    assert first.fields == {"pipeline": "analysis.cppipe", "plate": "P1", "well": "A01"}
    assert first.inputs == ("in/P1/A01.csv",)
    assert first.output == "out/P1/A01"
    assert second.fields["pipeline"] == "other"


def test_job_ids_are_stable_and_differ_between_jobs(tmp_path: Path) -> None:
    document = {"output": "o/{w}", "groups": [{"w": 1}, {"w": 2}]}
    ids = [job.job_id for job in load_jobs(write(tmp_path, document), "run {w}")]
    again = [job.job_id for job in load_jobs(write(tmp_path, document), "run {w}")]
    assert ids == again and len(set(ids)) == 2


def test_yaml_job_files_work(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("output: o/{w}\ngroups:\n  - w: 1\n  - w: 2\n")
    assert [job.output for job in load_jobs(path, "run")] == ["o/1", "o/2"]


def test_a_missing_job_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"job file .*missing\.json does not exist"):
        load_jobs(tmp_path / "missing.json", "run")


def test_a_job_file_without_groups_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a non-empty 'groups' list"):
        load_jobs(write(tmp_path, {"output": "o"}), "run")


def test_a_group_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[1\] must be a mapping"):
        load_jobs(write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}, "oops"]}), "run")


def test_a_job_without_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\]: 'output' .* is missing"):
        load_jobs(write(tmp_path, {"groups": [{"w": 1}]}), "run")


def test_a_placeholder_the_job_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\] output: 'o/\{plate\}' uses \{plate\}"):
        load_jobs(write(tmp_path, {"output": "o/{plate}", "groups": [{"w": 1}]}), "run")
    with pytest.raises(ConfigError, match=r"groups\[0\]: the command uses \{well\}"):
        load_jobs(write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}]}), "run --well {well}")


def test_duplicate_groups_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[2\] repeats groups\[0\]"):
        load_jobs(write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}, {"w": 2}, {"w": 1}]}), "run")


def test_a_job_too_large_for_one_sqs_message_is_refused(tmp_path: Path) -> None:
    big = "x" * MAX_MESSAGE_BYTES
    with pytest.raises(ConfigError, match=r"groups\[1\] makes a [\d,]+-byte message; SQS takes at most 262,144"):
        load_jobs(write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}, {"w": 2, "blob": big}]}), "run")


def test_the_message_body_round_trips_the_job(tmp_path: Path) -> None:
    (job,) = load_jobs(write(tmp_path, {"inputs": "in/{w}", "output": "o/{w}", "groups": [{"w": "é"}]}), "run")
    body = JobMessage.for_job(job, run_id="run-1").body()
    assert body.isascii()
    assert json.loads(body) == {
        "schema_version": 1,
        "run_id": "run-1",
        "job_id": job.job_id,
        "fields": {"w": "é"},
        "inputs": ["in/é"],
        "output": "o/é",
    }


def test_an_invalid_command_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.command is not a valid command line"):
        load_jobs(write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}]}), "run 'unclosed")


def test_a_checked_file_is_read_again_only_while_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}, {"w": 2}]})
    checked = check_jobs(path, "run")
    assert checked.count == 2
    assert [job.output for job in reread_jobs(checked, "run")] == ["o/1", "o/2"]
    write(tmp_path, {"output": "o/{w}", "groups": [{"w": 1}, {"w": 3}]})
    with pytest.raises(ConfigError, match="changed after it was validated"):
        reread_jobs(checked, "run")

"""Job files in Distributed-Something's format, validated in full before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_distributed.core.aws.sqs import MAX_MESSAGE_BYTES
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.jobs import JobMessage, check_jobs, iter_jobs, reread_jobs

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


def test_a_job_without_output_anywhere_is_refused_naming_the_config_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\]: 'output' .* is missing; .*or set jobs.output in the config"):
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
    with pytest.raises(ConfigError, match=r"groups\[1\] makes a [\d,]+-byte message; SQS takes at most 1,048,576"):
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


def test_shared_keys_after_groups_apply_to_every_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text('{"groups": [{"w": 1}, {"w": 2}], "output": "o/{w}", "pipeline": "p"}')
    jobs = load_jobs(path, "run {pipeline}")
    assert [job.output for job in jobs] == ["o/1", "o/2"]
    assert all(job.fields["pipeline"] == "p" for job in jobs)


def test_a_streamed_json_file_gives_the_same_jobs_as_the_same_file_in_yaml(tmp_path: Path) -> None:
    document = {
        "_comment": "x",
        "output": "o/{w}",
        "inputs": ["in/{w}.csv"],
        "nested": {"list": [1, 2.5, None, True, "é"], "map": {"b": 1, "a": [{"c": -0.5}]}},
        "big": 2**70,  # beyond 64 bits: the C parser refuses it, the pure-Python one reads it
        "groups": [{"w": 1, "ratio": 0.1}, {"w": "two", "flag": False, "none": None}, {"w": 3, "exp": 1.5e-7}],
    }
    from_json = load_jobs(write(tmp_path, document), "run")
    from_yaml = load_jobs(write(tmp_path, json.dumps(document), name="jobs.yaml"), "run")  # JSON is YAML
    assert from_json == from_yaml
    assert from_json[0].fields["big"] == 2**70 and from_json[0].fields["ratio"] == 0.1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"output": "o", "groups": [{"w": 1}]} trailing', "is not valid JSON"),
        ('{"output": "o", "groups": [{"w": 1},]}', "is not valid JSON"),
        ("", "is not valid JSON"),
        ('[{"w": 1}]', "must be a mapping with a 'groups' list, got list"),
        ('"groups"', "must be a mapping with a 'groups' list, got str"),
        ('{"output": "o", "groups": {"w": 1}}', "needs a non-empty 'groups' list"),
        ('{"output": "o", "groups": []}', "needs a non-empty 'groups' list"),
        ('{"output": "o", "groups": [{"w": 1}], "groups": [{"w": 2}]}', "more than one 'groups' key"),
        ('{"output": "o/{w}", "groups.item": {"w": 9}, "groups": [{"w": 1}]}', "'groups.item' is not allowed"),
    ],
)
def test_a_malformed_json_job_file_is_refused_before_any_job(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        next(iter_jobs(path, "run"))


def test_a_yaml_field_name_that_is_not_a_string_is_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("output: o/{w}\ngroups:\n  - w: 1\n    7: seven\n")
    with pytest.raises(ConfigError, match=r"groups\[0\]: field name 7 must be a string"):
        load_jobs(path, "run")


def test_a_duplicate_far_down_a_large_file_names_both_groups(tmp_path: Path) -> None:
    groups: list[dict[str, object]] = [{"w": n} for n in range(5_000)]  # enough for the id table to grow
    groups.append({"w": 4_321})
    with pytest.raises(ConfigError, match=r"groups\[5000\] repeats groups\[4321\]"):
        check_jobs(write(tmp_path, {"output": "o/{w}", "groups": groups}), "run")


@pytest.mark.parametrize("output", ["o/{w}", "o"])  # "o": each job's folder is "<w>-<pad>", 10 KB long
def test_checking_keeps_memory_flat_however_many_jobs(tmp_path: Path, output: str) -> None:
    """The file is streamed and neither a job nor its output prefix outlives its check: the peak does not grow."""
    import tracemalloc

    def peak_bytes(count: int) -> int:
        path = write(tmp_path, {"output": output, "groups": [{"w": n, "pad": "x" * 10_000} for n in range(count)]})
        tracemalloc.start()
        try:
            check_jobs(path, "run")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(200), peak_bytes(800)  # files of 2 MB and 8 MB
    assert large - small < 100_000
    assert large < 2_500_000  # `fingerprint` reads 1 MiB blocks (2 MB at its peak); json.load would hold 8 MB

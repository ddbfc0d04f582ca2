"""Each job's output prefix, DCP's Metadata, and the check that no two jobs share where they write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_distributed.core import job_outputs
from prefect_distributed.core.config import JobSettings
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.jobs import Job, JobMessage, check_jobs, iter_jobs
from prefect_distributed.worker.core import job_environment, parse_message, render_command


def jobs_in(tmp_path: Path, document: object, command: str = "run", settings: JobSettings | None = None) -> list[Job]:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(document))
    check_jobs(path, command, settings)
    return list(iter_jobs(path, command, settings))


def test_one_output_shared_by_every_job_becomes_a_folder_with_one_sub_folder_per_job(tmp_path: Path) -> None:
    jobs = jobs_in(tmp_path, {"output": "results/", "groups": [{"plate": "P1", "well": 1}, {"plate": "P1", "well": 2}]})
    assert [job.output for job in jobs] == ["results/P1-1", "results/P1-2"]


def test_an_output_with_placeholders_or_given_per_group_is_used_as_it_is(tmp_path: Path) -> None:
    templated = jobs_in(tmp_path, {"output": "r/{w}", "groups": [{"w": 1}, {"w": 2}]})
    per_group = jobs_in(tmp_path, {"groups": [{"w": 1, "output": "a"}, {"w": 2, "output": "b"}]})
    assert [job.output for job in templated + per_group] == ["r/1", "r/2", "a", "b"]


def test_a_group_without_simple_values_of_its_own_gets_its_job_id_as_folder(tmp_path: Path) -> None:
    jobs = jobs_in(tmp_path, {"output": "r", "groups": [{"wells": ["A01", "A02"]}, {"wells": ["B01"]}, {"w": ""}]})
    assert [job.output for job in jobs] == [f"r/{job.job_id}" for job in jobs]


def test_two_jobs_writing_to_the_same_prefix_are_refused_naming_both_and_the_fix(tmp_path: Path) -> None:
    groups = [{"a": "x-y", "b": "z"}, {"a": "q", "b": "r"}, {"a": "x", "b": "y-z"}]
    with pytest.raises(ConfigError) as caught:
        jobs_in(tmp_path, {"output": "r", "groups": groups})
    message = str(caught.value)
    assert "groups[0] and groups[2] would both write their outputs under 'r/x-y-z/'" in message
    assert "check-if-done would skip a job that never ran" in message
    assert "Fix: put {placeholders} that tell the jobs apart in 'output'" in message


def test_an_output_structure_that_does_not_tell_jobs_apart_is_refused_with_the_dcp_fix(tmp_path: Path) -> None:
    document = {
        "output": "out",
        "output_structure": "Metadata_Plate",
        "groups": [
            {"Metadata": "Metadata_Plate=P1,Metadata_Well=A01"},
            {"Metadata": "Metadata_Plate=P1,Metadata_Well=A02"},
        ],
    }
    clash = r"groups\[0\] and groups\[1\] would both write .*'out/P1/'.*Fix: .* in 'output_structure'"
    with pytest.raises(ConfigError, match=clash):
        jobs_in(tmp_path, document)


def test_a_job_writing_inside_another_jobs_prefix_is_refused(tmp_path: Path) -> None:
    groups = [{"w": 1, "output": "r/P1/A01"}, {"w": 2, "output": "r/P1"}]
    inside = r"groups\[0\] would write its outputs under 'r/P1/A01/', inside the prefix of groups\[1\]"
    with pytest.raises(ConfigError, match=inside):
        jobs_in(tmp_path, {"groups": groups})
    next_door = jobs_in(tmp_path, {"groups": [{"w": 1, "output": "r/P1"}, {"w": 2, "output": "r/P10"}]})
    assert [job.output for job in next_door] == ["r/P1", "r/P10"]


@pytest.mark.parametrize(
    ("outputs", "named"),
    [
        (["r/P", "r/P/A"], "groups[1] would write its outputs under 'r/P/A/', inside the prefix of groups[0]"),
        (["r/P/A", "r/Q/A", "r/P"], "groups[0] would write its outputs under 'r/P/A/', inside the prefix of groups[2]"),
        (["r/A/1", "r/A/2", "r/A"], "groups[0] would write its outputs under 'r/A/1/', inside the prefix of groups[2]"),
        (["a/b", "a/c", "a/b"], "groups[0] and groups[2] would both write their outputs under 'a/b/'"),
        # "r/x" brings a new, shallower depth: the parents of "r/a/b" at that depth are held from then on.
        (
            ["r/a/b", "r/x", "r/y", "r/a"],
            "groups[0] would write its outputs under 'r/a/b/', inside the prefix of groups[3]",
        ),
    ],
)
def test_nested_or_equal_prefixes_are_found_whatever_their_order(
    tmp_path: Path, outputs: list[str], named: str
) -> None:
    groups = [{"n": n, "output": output} for n, output in enumerate(outputs)]
    with pytest.raises(ConfigError) as caught:
        jobs_in(tmp_path, {"groups": groups})
    assert named in str(caught.value)


def test_a_clash_far_down_a_large_file_names_both_groups(tmp_path: Path) -> None:
    groups: list[dict[str, object]] = [{"w": n, "output": f"r/{n}"} for n in range(5_000)]
    groups.append({"w": "again", "output": "r/4321"})
    with pytest.raises(ConfigError, match=r"groups\[4321\] and groups\[5000\] would both write"):
        jobs_in(tmp_path, {"groups": groups})


def test_a_hash_that_only_looks_like_a_clash_is_confirmed_by_reading_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 64-bit collision of two real prefixes cannot be made to order; every prefix hashing alike stands in for one.
    monkeypatch.setattr(job_outputs, "_prefix_hash", lambda prefix: 255)
    jobs = jobs_in(tmp_path, {"output": "r/{w}", "groups": [{"w": n} for n in range(20)]})
    assert len({job.output for job in jobs}) == 20


def test_dcp_metadata_gives_fields_placeholders_and_job_variables_and_keeps_its_string(tmp_path: Path) -> None:
    document = {
        "output": "out/{Metadata_Plate}",
        "groups": [{"Metadata": "Metadata_Plate=P1,Metadata_Well=A01,Metadata_Site=1"}],
    }
    (job,) = jobs_in(tmp_path, document, command="cp -g {Metadata} --plate {Metadata_Plate}")
    assert job.output == "out/P1/P1-A01-1"
    message = parse_message(JobMessage.for_job(job, "run-1").body())
    argv = render_command("cp -g {Metadata} --plate {Metadata_Plate}", message, "/in", "/out")
    assert argv == ["cp", "-g", "Metadata_Plate=P1,Metadata_Well=A01,Metadata_Site=1", "--plate", "P1"]
    environment, files = job_environment(message, "/job/fields")
    assert files == {}
    assert environment["JOB_METADATA_WELL"] == "A01"
    assert environment["JOB_METADATA"] == "Metadata_Plate=P1,Metadata_Well=A01,Metadata_Site=1"


def test_metadata_as_a_mapping_from_print_groups_works_like_the_string(tmp_path: Path) -> None:
    groups = [{"Metadata": {"Metadata_Plate": "P1", "Metadata_Site": 2}}]
    (job,) = jobs_in(tmp_path, {"output": "out", "groups": groups})
    assert job.fields["Metadata"] == "Metadata_Plate=P1,Metadata_Site=2"
    assert job.fields["Metadata_Site"] == "2"
    assert job.output == "out/P1-2"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("Metadata_Plate=P1,Metadata_Well", r"Metadata '.*' must be 'Metadata_Name=value' pairs .*'Metadata_Well' is"),
        (7, "Metadata must be a string like 'Metadata_Plate=P1,Metadata_Well=A01' or a mapping, got int"),
        ("Metadata_Plate=P1,Metadata_Plate=P2", "Metadata '.*' names a field twice"),
        ({"Metadata_Plate": ["P1"]}, "Metadata field 'Metadata_Plate' must be a single value, got list"),
    ],
)
def test_malformed_metadata_is_refused_naming_the_group(tmp_path: Path, metadata: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"groups\[0\]: {message}"):
        jobs_in(tmp_path, {"output": "out", "groups": [{"Metadata": metadata}]})


def test_metadata_that_contradicts_a_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Metadata sets Metadata_Plate='P1' but the job's field .* is 'P2'"):
        jobs_in(tmp_path, {"output": "out", "groups": [{"Metadata": "Metadata_Plate=P1", "Metadata_Plate": "P2"}]})


def test_an_output_structure_naming_no_metadata_field_is_refused(tmp_path: Path) -> None:
    document = {"output": "out", "output_structure": "Plate", "groups": [{"Metadata": "Metadata_Well=A01"}]}
    with pytest.raises(ConfigError, match=r"output_structure 'Plate' names none of .* \(Metadata_Well\)"):
        jobs_in(tmp_path, document)


def test_the_configs_output_template_serves_a_file_without_output_and_the_file_wins(tmp_path: Path) -> None:
    settings = JobSettings(output="results/{plate}/{well}", inputs=("{pipeline}",))
    groups = [{"plate": "P1", "well": "A01"}, {"plate": "P1", "well": "A02", "output": "x"}]
    document = {"pipeline": "p.cppipe", "groups": groups}
    first, second = jobs_in(tmp_path, document, settings=settings)
    assert (first.output, second.output) == ("results/P1/A01", "x")
    assert first.inputs == ("p.cppipe",)


def test_an_input_ending_in_a_slash_stays_a_prefix_to_download(tmp_path: Path) -> None:
    (job,) = jobs_in(tmp_path, {"inputs": ["images/{plate}/"], "output": "r/{plate}", "groups": [{"plate": "P1"}]})
    assert job.inputs == ("images/P1/",)
    assert parse_message(JobMessage.for_job(job, "run-1").body()).inputs == ("images/P1/",)

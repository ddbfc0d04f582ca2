"""The public job files of Distributed-Something and Distributed-CellProfiler, unchanged, through validation.

They are what a user switching over brings; each must pass and yield the jobs its own worker would
run, every job with an output prefix of its own.
"""

from __future__ import annotations

import pytest

from prefect_distributed.core.config import parse_config
from prefect_distributed.core.jobs import Job, check_jobs, iter_jobs
from tests.ds_files import DS_FILES, needs_ds_files

pytestmark = needs_ds_files
DCP_COMMAND = (
    "cellprofiler -c -r -p {input_dir}/{pipeline} -o {output_dir} --data-file={input_dir}/{data_file} -g {Metadata}"
)


def jobs_of(name: str, command: str, app_name: str = "ds") -> list[Job]:
    """The file's jobs as a run with this config would read them, after the whole-file check."""
    settings = {"app_name": app_name, "job_file": str(DS_FILES / name), "command": command, "bucket": "lab-data"}
    config = parse_config(settings, "test")
    checked = check_jobs(config.job_file, config.command, config.job_settings)
    jobs = list(iter_jobs(config.job_file, config.command, config.job_settings))
    assert checked.count == len(jobs)
    return jobs


def test_distributed_somethings_example_needs_no_output_and_each_job_gets_a_folder_of_its_own() -> None:
    jobs = jobs_of("ds/exampleJob.json", "run {job_flag_1} {job_flag_2} {job_flag_3} {input_location}")
    assert [job.output for job in jobs] == ["ds/A-foo", "ds/A-bar", "ds/B-foo", "ds/B-bar"]
    assert jobs[0].fields == {
        "input_location": "Somewhere/on/your/bucket",
        "job_flag_1": "True",
        "job_flag_2": "A",
        "job_flag_3": "foo",
    }
    assert all(job.inputs == () for job in jobs)


def test_distributed_cellprofilers_example_gets_output_structure_folders_and_metadata_fields() -> None:
    first, second = jobs_of("dcp/exampleJob.json", DCP_COMMAND)
    assert [first.output, second.output] == ["projects/output/Plate1-A01-1", "projects/output/Plate1-A01-2"]
    assert first.fields == {
        "pipeline": "projects/analysis.cppipe",
        "data_file": "projects/list_of_images.csv",
        "input": "projects/input/",
        "output_structure": "Metadata_Plate-Metadata_Well-Metadata_Site",
        "Metadata": "Metadata_Plate=Plate1,Metadata_Well=A01,Metadata_Site=1",
        "Metadata_Plate": "Plate1",
        "Metadata_Well": "A01",
        "Metadata_Site": "1",
    }
    assert second.fields["Metadata_Site"] == "2"


@pytest.mark.parametrize(
    ("name", "outputs", "metadata"),
    [
        (
            "dcp/example_project_job.json",
            ["demo_project_folder/output/2", "demo_project_folder/output/76", "demo_project_folder/output/218"],
            [{"Metadata_Position": "2"}, {"Metadata_Position": "76"}, {"Metadata_Position": "218"}],
        ),
        (
            "dcp/example_project_CPG_job.json",
            [f"demo_project_folder/output/{name}" for name in ("A01-1", "A01-2", "A02-1")],
            [
                {"Metadata_Well": "A01", "Metadata_Site": "1"},
                {"Metadata_Well": "A01", "Metadata_Site": "2"},
                {"Metadata_Well": "A02", "Metadata_Site": "1"},
            ],
        ),
    ],
)
def test_distributed_cellprofilers_example_projects_give_one_folder_per_group(
    name: str, outputs: list[str], metadata: list[dict[str, str]]
) -> None:
    jobs = jobs_of(name, DCP_COMMAND)
    assert [job.output for job in jobs] == outputs
    assert [{key: job.fields[key] for key in expected} for job, expected in zip(jobs, metadata)] == metadata
    assert all(job.fields["pipeline"].endswith(".cppipe") for job in jobs)

"""Distributed-Something's and Distributed-CellProfiler's own job files, unchanged, run on the emulator.

The stand-in program writes fixed file names, as CellProfiler's ExportToSpreadsheet does
(`Image.csv`, `Nuclei.csv`): with one `output` shared by every job, each job's files must still
land under a prefix of its own, none lost and none skipped wrongly with check-if-done on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
import pytest

from tests.ds_files import DS_FILES, needs_ds_files
from tests.test_flow_end_to_end import BUCKET, aws, run_flow, write_batch  # noqa: F401 - aws is a fixture

pytestmark = needs_ds_files
ROOT = "/home/ubuntu/bucket"

# Writes what it was given to fixed names: its JOB_ variables and the images its LoadData CSV points
# at (Image.csv), its Metadata (Nuclei.csv), and the files of its input directory (Experiment.csv).
PROGRAM = """
import csv, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
lines = sorted(f"{name}={value}" for name, value in os.environ.items() if name.startswith("JOB_"))
if len(sys.argv) > 2:
    with open(sys.argv[2], newline="") as handle:
        for row in csv.DictReader(handle):
            lines.append(pathlib.Path(row["PathName_DNA"], row["FileName_DNA"]).read_text())
    inputs = pathlib.Path(sys.argv[3])
    files = sorted(path.relative_to(inputs).as_posix() for path in inputs.rglob("*") if path.is_file())
    (out / "Experiment.csv").write_text("\\n".join(files) + "\\n")
(out / "Image.csv").write_text("\\n".join(lines) + "\\n")
(out / "Nuclei.csv").write_text(os.environ.get("JOB_METADATA", "no metadata") + "\\n")
"""

pytestmark = pytest.mark.usefixtures("prefect_api")


def write_config(tmp_path: Path, job_file: str, arguments: str, **overrides: object) -> str:
    """The end-to-end suite's batch config, with a DS job file and the stand-in program."""
    (tmp_path / "stand_in.py").write_text(PROGRAM)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    command = f"{sys.executable} stand_in.py {arguments}"
    job_file_path = str(DS_FILES / job_file)
    return str(write_batch(tmp_path, app_name="ds-e2e", job_file=job_file_path, command=command, **overrides))


def outputs() -> dict[str, str]:
    """Every result object in the bucket (run records aside), with its text."""
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    objects = [item["Key"] for page in pages for item in page.get("Contents", [])]
    keys = [key for key in objects if key.endswith(".csv") and not key.startswith("runs/")]
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode() for key in keys}


def test_dcps_example_job_file_runs_unchanged_with_download_files_and_loses_no_result(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        "dcp/example_project_CPG_job.json",
        "{output_dir} {input_dir}/{data_file} {input_dir} -g {Metadata}",
        download_files={"enabled": True},
        jobs={"inputs": ["{input}"]},  # DCP's input folder, downloaded whole: the pipeline is in it
    )
    s3 = boto3.client("s3")
    sites = [("A01", "1"), ("A01", "2"), ("A02", "1")]
    rows = ["Metadata_Well,Metadata_Site,FileName_DNA,PathName_DNA"]
    for well, site in sites:
        rows.append(f"{well},{site},{well}_s{site}.tif,{ROOT}/demo_project_folder/images")
        s3.put_object(Bucket=BUCKET, Key=f"demo_project_folder/images/{well}_s{site}.tif", Body=f"pixels {well} {site}")
    s3.put_object(Bucket=BUCKET, Key="demo_project_folder/workspace/load_data.csv", Body="\n".join(rows) + "\n")
    s3.put_object(Bucket=BUCKET, Key="demo_project_folder/workspace/ExampleCPG.cppipe", Body=b"pipeline")

    summary = run_flow(config)

    assert (summary.total, summary.succeeded, summary.skipped, summary.failed) == (3, 3, 0, [])
    found = outputs()
    results = {key: text for key, text in found.items() if key.startswith("demo_project_folder/output/")}
    names = ("Experiment.csv", "Image.csv", "Nuclei.csv")
    expected = [f"demo_project_folder/output/{well}-{site}/{name}" for well, site in sites for name in names]
    assert sorted(results) == expected
    for well, site in sites:
        image = results[f"demo_project_folder/output/{well}-{site}/Image.csv"]
        assert f"JOB_METADATA_WELL={well}" in image and f"JOB_METADATA_SITE={site}" in image
        assert image.endswith(f"pixels {well} {site}\n")  # only the job's own row, read from the local copy
        nuclei = results[f"demo_project_folder/output/{well}-{site}/Nuclei.csv"]
        assert nuclei == f"Metadata_Well={well},Metadata_Site={site}\n"
        assert results[f"demo_project_folder/output/{well}-{site}/Experiment.csv"].splitlines() == [
            f"demo_project_folder/images/{well}_s{site}.tif",
            "demo_project_folder/workspace/ExampleCPG.cppipe",
            "demo_project_folder/workspace/load_data.csv",
        ]


def test_distributed_somethings_example_job_file_runs_unchanged_and_a_rerun_skips_only_finished_jobs(
    aws: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "ds/exampleJob.json", "{output_dir}")

    first = run_flow(config)

    assert (first.total, first.succeeded, first.skipped, first.failed) == (4, 4, 0, [])
    found = outputs()
    folders = ["A-foo", "A-bar", "B-foo", "B-bar"]
    names = ("Image.csv", "Nuclei.csv")
    assert sorted(found) == sorted(f"ds-e2e/{folder}/{name}" for folder in folders for name in names)
    for folder in folders:
        flag_2, flag_3 = folder.split("-")
        assert f"JOB_JOB_FLAG_2={flag_2}\nJOB_JOB_FLAG_3={flag_3}\n" in found[f"ds-e2e/{folder}/Image.csv"]

    boto3.client("s3").delete_object(Bucket=BUCKET, Key="ds-e2e/B-bar/Image.csv")
    boto3.client("s3").delete_object(Bucket=BUCKET, Key="ds-e2e/B-bar/Nuclei.csv")
    again = run_flow(config)

    assert (again.total, again.succeeded, again.skipped) == (4, 1, 3)
    assert sorted(outputs()) == sorted(found)

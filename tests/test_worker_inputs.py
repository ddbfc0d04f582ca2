"""A job's inputs as Distributed-Something's users give them: prefixes, and DCP's DOWNLOAD_FILES."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import boto3
import pytest

from prefect_distributed.worker.core import JobMessage, PermanentFailure, WorkerSettings, settings_from_env
from prefect_distributed.worker.inputs import fetch_inputs

pytestmark = pytest.mark.usefixtures("aws_mock")

BUCKET = "images"
ROOT = "/home/ubuntu/bucket"
CSV_HEADER = ["Metadata_Plate", "Metadata_Well", "FileName_DNA", "PathName_DNA", "FileName_RNA", "PathName_RNA"]
ENV = {
    "DISTRIBUTED_QUEUE_URL": "q",
    "DISTRIBUTED_DEAD_LETTER_QUEUE_URL": "d",
    "DISTRIBUTED_RUN_ID": "r",
    "DISTRIBUTED_COMMAND": "run",
    "DISTRIBUTED_INPUT_BUCKET": BUCKET,
    "DISTRIBUTED_OUTPUT_BUCKET": "out",
    "DISTRIBUTED_RECORDS_BUCKET": "rec",
}


@pytest.fixture
def s3():
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def settings(**changes: object) -> WorkerSettings:
    return dataclasses.replace(settings_from_env(ENV), **changes)


def job(inputs: tuple[str, ...] = (), **fields: object) -> JobMessage:
    return JobMessage(run_id="r", job_id="j", fields=fields, inputs=inputs, output="out/j")


def files_under(directory: Path) -> list[str]:
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())


def put_plate(s3, rows: list[list[str]]) -> None:
    """A LoadData CSV of `rows` and every image it lists, in the input bucket."""
    lines = [",".join(CSV_HEADER)] + [",".join(row) for row in rows]
    s3.put_object(Bucket=BUCKET, Key="project/load_data.csv", Body="\n".join(lines) + "\n")
    for row in rows:
        for name, folder in ((row[2], row[3]), (row[4], row[5])):
            s3.put_object(Bucket=BUCKET, Key=f"{folder.removeprefix(ROOT + '/')}/{name}", Body=f"pixels of {name}")


def row(plate: str, well: str) -> list[str]:
    folder = f"{ROOT}/project/images/{plate}"
    return [plate, well, f"{well}_dna.tif", folder, f"{well}_rna.tif", folder]


def test_an_input_ending_in_a_slash_downloads_everything_under_that_prefix(s3, tmp_path: Path) -> None:
    for key in ("plates/P1/a.tif", "plates/P1/sub/b.tif", "plates/P10/other.tif", "plates/P1/folder/"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    count = fetch_inputs(s3, settings(), job(("plates/P1/",)), tmp_path)
    assert files_under(tmp_path) == ["plates/P1/a.tif", "plates/P1/sub/b.tif"]
    assert count == 2


def test_an_empty_prefix_is_a_permanent_failure_naming_it(s3, tmp_path: Path) -> None:
    with pytest.raises(PermanentFailure, match=r"input prefix s3://images/nothing/here/ holds no files"):
        fetch_inputs(s3, settings(), job(("nothing/here/",)), tmp_path)


def test_download_files_fetches_only_the_jobs_rows_and_points_the_csv_at_the_local_copies(s3, tmp_path: Path) -> None:
    put_plate(s3, [row("P1", "A01"), row("P1", "A02"), row("P2", "A01")])
    message = job(
        ("project/pipeline.cppipe",),
        data_file="project/load_data.csv",
        Metadata="Metadata_Plate=P1,Metadata_Well=A01",
    )
    s3.put_object(Bucket=BUCKET, Key="project/pipeline.cppipe", Body=b"pipeline")
    count = fetch_inputs(s3, settings(download_files=True, download_threads=4), message, tmp_path)
    assert files_under(tmp_path) == [
        "project/images/P1/A01_dna.tif",
        "project/images/P1/A01_rna.tif",
        "project/load_data.csv",
        "project/pipeline.cppipe",
    ]
    assert count == 4
    with (tmp_path / "project/load_data.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    local = rows[0]["PathName_DNA"]
    assert local == f"{tmp_path}/project/images/P1"
    assert Path(local, rows[0]["FileName_DNA"]).read_text() == "pixels of A01_dna.tif"


def test_download_files_reads_a_txt_file_list(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="lists/files.txt", Body=f"{ROOT}/imgs/a.tif\n{ROOT}/imgs/b.tif\n")
    for name in ("a.tif", "b.tif"):
        s3.put_object(Bucket=BUCKET, Key=f"imgs/{name}", Body=b"x")
    fetch_inputs(s3, settings(download_files=True), job(data_file="lists/files.txt"), tmp_path)
    assert files_under(tmp_path) == ["imgs/a.tif", "imgs/b.tif", "lists/files.txt"]
    assert (tmp_path / "lists/files.txt").read_text() == f"{tmp_path}/imgs/a.tif\n{tmp_path}/imgs/b.tif\n"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "DOWNLOAD_FILES is on but the job has no field 'data_file'"),
        ({"data_file": "project/load_data.csv", "Metadata": "Metadata_Plate=P9"}, "no row of load_data.csv matches"),
        ({"data_file": "project/load_data.csv", "Metadata": "Metadata_Site=1"}, "has no column Metadata_Site"),
        ({"data_file": "project/missing.csv"}, "input s3://images/project/missing.csv does not exist"),
    ],
)
def test_download_files_problems_are_permanent_failures_with_the_reason(
    s3, tmp_path: Path, fields: dict[str, str], reason: str
) -> None:
    put_plate(s3, [row("P1", "A01")])
    with pytest.raises(PermanentFailure, match=reason):
        fetch_inputs(s3, settings(download_files=True), job(**fields), tmp_path)


def test_a_csv_path_outside_the_bucket_root_is_refused_naming_the_setting(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="l.csv", Body="FileName_DNA,PathName_DNA\na.tif,/mnt/elsewhere\n")
    with pytest.raises(PermanentFailure, match=r"'/mnt/elsewhere/a.tif', which is not under /home/ubuntu/bucket"):
        fetch_inputs(s3, settings(download_files=True), job(data_file="l.csv"), tmp_path)


def test_a_malformed_csv_fails_the_job_permanently_with_the_reason(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="l.csv", Body="FileName_DNA,PathName_DNA\na.tif,/home/ubuntu/bucket/x,extra\n")
    with pytest.raises(PermanentFailure, match="l.csv line 2 has not as many cells as its header has columns"):
        fetch_inputs(s3, settings(download_files=True), job(data_file="l.csv"), tmp_path)
    s3.put_object(Bucket=BUCKET, Key="binary.csv", Body=b"\xff\xfe\x00")
    with pytest.raises(PermanentFailure, match="cannot read binary.csv as a LoadData CSV or file list"):
        fetch_inputs(s3, settings(download_files=True), job(data_file="binary.csv"), tmp_path)


def test_a_listed_image_that_is_missing_fails_the_job_permanently(s3, tmp_path: Path) -> None:
    put_plate(s3, [row("P1", "A01")])
    s3.delete_object(Bucket=BUCKET, Key="project/images/P1/A01_rna.tif")
    message = job(data_file="project/load_data.csv", Metadata="Metadata_Well=A01")
    with pytest.raises(PermanentFailure, match="input s3://images/project/images/P1/A01_rna.tif does not exist"):
        fetch_inputs(s3, settings(download_files=True), message, tmp_path)


def test_the_download_settings_are_read_from_the_environment() -> None:
    variables = {
        "DISTRIBUTED_DOWNLOAD_FILES": "true",
        "DISTRIBUTED_DOWNLOAD_LIST_FIELD": "file_list",
        "DISTRIBUTED_BUCKET_ROOT": "/mnt/bucket/",
        "DISTRIBUTED_DOWNLOAD_THREADS": "3",
    }
    read = settings_from_env({**ENV, **variables})
    assert (read.download_files, read.download_list_field, read.bucket_root, read.download_threads) == (
        True,
        "file_list",
        "/mnt/bucket",
        3,
    )

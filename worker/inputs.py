"""A job's inputs, fetched the ways Distributed-Something's users give them.

- an S3 key: that object;
- a key ending in `/`: every object under that prefix (Distributed-Something's workers mounted the
  bucket, so a folder was an input as good as a file);
- with `DISTRIBUTED_DOWNLOAD_FILES=true` (Distributed-CellProfiler's DOWNLOAD_FILES): the job's
  LoadData CSV (the field `DISTRIBUTED_DOWNLOAD_LIST_FIELD`, `data_file`), then every file its rows
  for the job's `Metadata` list (`PathName_<channel>`/`FileName_<channel>`, paths under
  `DISTRIBUTED_BUCKET_ROOT`, DCP's s3fs mount point). The CSV is rewritten in place with those rows
  only and its paths pointing at the local copies, so `--data-file={input_dir}/{data_file}` reads
  them. A `.txt` file list works the same way, one path per line.

Everything lands at `<input dir>/<key>` and is downloaded `DISTRIBUTED_DOWNLOAD_THREADS` at a time.
A missing object, an empty prefix or a CSV that lists nothing for the job is a permanent failure
with its reason; any other download error may pass, and is raised as `TransientFailure` (the job is retried).
Standard library and boto3 only, Python 3.8+, as the rest of the worker.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List

from botocore.exceptions import BotoCoreError, ClientError

from .core import JobMessage, PermanentFailure, TransientFailure, WorkerSettings, error_code

MISSING_OBJECT_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_FILE_NAME = "FileName_"
_PATH_NAME = "PathName_"


def fetch_inputs(s3: Any, settings: WorkerSettings, job: JobMessage, input_dir: Path) -> int:
    """Download the job's inputs below `input_dir` (see the module docstring); returns how many files."""
    bucket = settings.input_bucket
    keys: List[str] = []
    for item in job.inputs:
        keys += _under_prefix(s3, bucket, item) if item.endswith("/") else [item]
    if not settings.download_files:
        _download_all(s3, bucket, list(dict.fromkeys(keys)), input_dir, settings.download_threads)
        return len(set(keys))
    list_key = _list_key(job, settings.download_list_field)
    _download(s3, bucket, list_key, input_dir)
    try:
        keys += localise_list(input_dir / list_key, job.fields.get("Metadata"), settings.bucket_root, input_dir)
    except (csv.Error, ValueError) as exc:  # not text, or not CSV (UnicodeDecodeError is a ValueError)
        raise PermanentFailure(f"cannot read {list_key} as a LoadData CSV or file list: {exc!r}") from None
    # The list is rewritten now: never downloaded again over the local copy.
    unique = [key for key in dict.fromkeys(keys) if key != list_key]
    _download_all(s3, bucket, unique, input_dir, settings.download_threads)
    return 1 + len(unique)


def _under_prefix(s3: Any, bucket: str, prefix: str) -> List[str]:
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [item["Key"] for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as exc:
        raise TransientFailure(f"could not list s3://{bucket}/{prefix}: {exc}") from None
    if not keys:
        raise PermanentFailure(f"input prefix s3://{bucket}/{prefix} holds no files")
    return keys


def _list_key(job: JobMessage, field: str) -> str:
    key = job.fields.get(field)
    if not isinstance(key, str) or not key.strip("/"):
        raise PermanentFailure(
            f"DOWNLOAD_FILES is on but the job has no field {field!r} naming its CSV in the input bucket "
            "(set download_files.list_field, or turn download_files off)"
        )
    if key.startswith("/") or ".." in PurePosixPath(key).parts:
        raise PermanentFailure(f"{field} {key!r} must be a key in the input bucket, without a leading '/' or '..'")
    return key


def _download_all(s3: Any, bucket: str, keys: List[str], input_dir: Path, threads: int) -> None:
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(keys)), thread_name_prefix="input") as pool:
        # list() re-raises the first failure; the pool's exit waits for the downloads under way.
        list(pool.map(lambda key: _download(s3, bucket, key, input_dir), keys))


def _download(s3: Any, bucket: str, key: str, input_dir: Path) -> None:
    destination = input_dir.joinpath(*PurePosixPath(key).parts)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(destination))
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING_OBJECT_CODES:
            raise PermanentFailure(f"input s3://{bucket}/{key} does not exist") from None
        raise TransientFailure(f"could not download s3://{bucket}/{key}: {code}") from None
    except (BotoCoreError, OSError) as exc:
        raise TransientFailure(f"could not download s3://{bucket}/{key}: {exc}") from None


def localise_list(path: Path, metadata: Any, bucket_root: str, input_dir: Path) -> List[str]:
    """Rewrite a downloaded CSV (or .txt list) for this job; returns the input-bucket keys it lists.

    The CSV keeps its header and the rows whose Metadata columns equal the job's `Metadata`
    (all rows when the job has none), with `bucket_root` replaced by `input_dir` in every cell.
    """
    local_root = str(input_dir).rstrip("/")
    if path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keys = [_bucket_key(line, bucket_root, path.name) for line in lines]
        path.write_text("".join(line.replace(bucket_root, local_root) + "\n" for line in lines), encoding="utf-8")
        return keys
    if path.suffix.lower() != ".csv":
        raise PermanentFailure(f"DOWNLOAD_FILES reads a .csv (LoadData) or .txt (file list) file, not {path.name}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = _matching_rows(reader, _metadata_filter(metadata), columns, path.name)
    keys: List[str] = []
    for channel in (column[len(_FILE_NAME) :] for column in columns if column.startswith(_FILE_NAME)):
        if f"{_PATH_NAME}{channel}" not in columns:
            raise PermanentFailure(f"{path.name} has {_FILE_NAME}{channel} but no {_PATH_NAME}{channel} column")
        for row in rows:
            full = f"{row[_PATH_NAME + channel].rstrip('/')}/{row[_FILE_NAME + channel]}"
            keys.append(_bucket_key(full, bucket_root, path.name))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({name: value.replace(bucket_root, local_root) for name, value in row.items()} for row in rows)
    return keys


def _metadata_filter(metadata: Any) -> Dict[str, str]:
    """`Metadata_Plate=P1,Metadata_Well=A01` (as the job file check leaves it) as column -> value."""
    if not isinstance(metadata, str) or not metadata:
        return {}
    pairs = (part.partition("=") for part in metadata.split(","))
    return {name.strip(): value.strip() for name, _, value in pairs}


def _matching_rows(
    reader: Iterable[Dict[str, str]], wanted: Dict[str, str], columns: List[str], name: str
) -> List[Dict[str, str]]:
    absent = [column for column in wanted if column not in columns]
    if absent:
        raise PermanentFailure(f"{name} has no column {absent[0]}, which the job's Metadata filters on")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row or None in row.values():
            raise PermanentFailure(f"{name} line {line} has not as many cells as its header has columns")
        if all(row[column] == value for column, value in wanted.items()):
            rows.append(row)
    if not rows:
        described = ",".join(f"{column}={value}" for column, value in wanted.items())
        raise PermanentFailure(f"no row of {name} matches the job's Metadata {described}; check the Metadata")
    return rows


def _bucket_key(path: str, bucket_root: str, name: str) -> str:
    """`<bucket_root>/<key>` -> `<key>`: the CSV's path as an object of the input bucket."""
    root = bucket_root.rstrip("/") + "/"
    if not path.startswith(root) or ".." in PurePosixPath(path).parts:
        raise PermanentFailure(
            f"{name} lists {path!r}, which is not under {bucket_root} (download_files.bucket_root, DCP's DATA_ROOT); "
            "its paths must be <bucket_root>/<key in the input bucket>"
        )
    return path[len(root) :]


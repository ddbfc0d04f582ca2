"""The run's manifest: one CSV in S3 listing every job of the batch with its final state.

Written while the summary streams the job file, to a temporary file that spills to disk, so a
million-job batch never holds its rows in memory; uploaded next to the summary.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from typing import Any, Literal

from botocore.client import BaseClient

from prefect_distributed.core.models import DeadJob, shown_fields

JobState = Literal["succeeded", "skipped", "failed", "unfinished"]
COLUMNS = ("job_id", "state", "attempts", "reason", "fields")
SPILL_BYTES = 8 * 1024 * 1024
PREVIEW_ROWS = 200
UNFINISHED_ROWS = 1000  # the UI's jobs table holds at most this many rows


class Manifest:
    """Collects one row per job; keeps the first PREVIEW_ROWS finished rows and UNFINISHED_ROWS unfinished
    ones (with their fields, to resubmit them) for the UI table."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPILL_BYTES, mode="w+b")  # noqa: SIM115 - closed by close()
        self._text = io.TextIOWrapper(self._file, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text)
        self._csv.writerow(COLUMNS)
        self.preview: list[dict[str, Any]] = []
        self.unfinished: list[dict[str, Any]] = []

    def add(self, job_id: str, fields: dict[str, Any], state: JobState, dead: DeadJob | None = None) -> None:
        row = {
            "job_id": job_id,
            "state": state,
            "attempts": dead.attempts if dead else "",
            "reason": dead.reason if dead else "",
            "fields": json.dumps(shown_fields(fields), sort_keys=True),
        }
        self._csv.writerow(row[column] for column in COLUMNS)
        if state in ("succeeded", "skipped") and len(self.preview) < PREVIEW_ROWS:
            self.preview.append(row)
        elif state == "unfinished" and len(self.unfinished) < UNFINISHED_ROWS:
            self.unfinished.append({**row, "reason": "no outcome when the run ended"})

    def upload(self, s3: BaseClient, bucket: str, key: str) -> str:
        """Upload the manifest (multipart when large) and return its s3:// URI."""
        self._text.flush()
        self._file.seek(0)
        s3.upload_fileobj(self._file, bucket, key, ExtraArgs={"ContentType": "text/csv"})
        return f"s3://{bucket}/{key}"

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

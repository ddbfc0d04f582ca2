"""The demo's input data: per-cell measurements of 100 wells, one of them corrupt on purpose."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
CORRUPT_WELL = ("P2", "A04")


def well_csv(plate: str, well: str) -> bytes:
    """Per-cell measurements of one well: deterministic, so every demo run sees the same data."""
    rng = random.Random(f"{plate}-{well}")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["cell_id", "area", "intensity", "eccentricity"])
    for cell in range(rng.randint(150, 250)):
        area = round(rng.gauss(300, 40), 2)
        writer.writerow(
            [
                cell,
                "n/a" if (plate, well) == CORRUPT_WELL and cell == 17 else area,
                round(rng.gauss(0.5, 0.1), 4),
                round(rng.uniform(0, 1), 4),
            ]
        )
    return out.getvalue().encode()


def upload_inputs(bucket: str, endpoint_url: str) -> int:
    """Create the bucket on the emulator at `endpoint_url` and upload every well's file; returns how many."""
    jobs = json.loads((HERE / "jobs.json").read_text())
    s3 = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo"
    )
    s3.create_bucket(Bucket=bucket)
    for group in jobs["groups"]:
        key = jobs["inputs"][0].format(**group)
        s3.put_object(Bucket=bucket, Key=key, Body=well_csv(group["plate"], group["well"]))
    return len(jobs["groups"])

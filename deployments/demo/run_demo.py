"""`make demo`: the demo batch end to end on the embedded default, with no AWS account.

Starts a moto server on a free loopback port, uploads the demo's inputs (100 wells of per-cell
measurements, one of them corrupt on purpose), runs the `distributed` flow on config.yaml with a
local fleet, prints the RunSummary as one JSON line last, and stops everything it started.
Exit status 0 when every job is accounted for and nothing was left behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
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


def upload_inputs(bucket: str) -> int:
    import boto3

    jobs = json.loads((HERE / "jobs.json").read_text())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for group in jobs["groups"]:
        key = jobs["inputs"][0].format(**group)
        s3.put_object(Bucket=bucket, Key=key, Body=well_csv(group["plate"], group["well"]))
    return len(jobs["groups"])


def main() -> int:
    sys.path.insert(0, str(REPO))
    os.environ.update(
        {
            # The emulator accepts any credentials; these keep the demo away from a real account.
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    from core import emulator
    from core.config import load_config_file

    config_path = HERE / "config.yaml"
    config = load_config_file(config_path)
    state = REPO / ".demo"
    state.mkdir(exist_ok=True)
    with emulator.moto_server(log_path=state / "emulator.log") as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        print(f"AWS emulator at {endpoint}; uploading inputs", flush=True)
        print(f"Uploaded {upload_inputs(config.bucket)} input files to s3://{config.bucket}/", flush=True)
        from flows.distributed import distributed

        summary = distributed(config=str(config_path))
    print(json.dumps(summary.model_dump(mode="json")))
    ok = summary.accounted == summary.total and not summary.resources_left and not summary.unfinished
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

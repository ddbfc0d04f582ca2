"""`make demo`: the demo batch end to end on the embedded default, with no AWS account.

Starts a moto server on a free loopback port, uploads the demo's inputs (100 wells of per-cell
measurements, one of them corrupt on purpose), runs the `distributed` flow on config.yaml with a
local fleet, and stops everything it started. The RunSummary is printed as one JSON line, last.
Exit status 0 when every job is accounted for and nothing was left behind.

The batch runs in a child process: Prefect's temporary API server logs its shutdown when that
process exits, and the summary must still be the very last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUMMARY_FILE = "DISTRIBUTED_DEMO_SUMMARY_FILE"

DEMO_ENVIRONMENT = {
    # The emulator accepts any credentials; these keep the demo away from a real account.
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def run_batch(summary_file: Path) -> None:
    """The child: emulator, inputs, flow; writes the RunSummary to `summary_file`."""
    sys.path.insert(0, str(REPO))
    from deployments.demo.data import CONFIG, upload_inputs
    from prefect_distributed.core import emulator
    from prefect_distributed.core.config import load_config_file

    config = load_config_file(CONFIG)
    state = REPO / ".demo"
    state.mkdir(exist_ok=True)
    with emulator.moto_server(log_path=state / "emulator.log") as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        print(f"AWS emulator at {endpoint}", flush=True)
        print(f"Uploaded {upload_inputs(config.bucket, endpoint)} input files to s3://{config.bucket}/", flush=True)
        from prefect_distributed.flows.distributed import distributed

        summary = distributed(config=str(CONFIG))
    summary_file.write_text(summary.model_dump_json())


def main() -> int:
    environment = {k: v for k, v in os.environ.items() if k not in {"AWS_PROFILE", "AWS_SESSION_TOKEN"}}
    environment.update(DEMO_ENVIRONMENT)
    with tempfile.TemporaryDirectory() as scratch:
        summary_file = Path(scratch) / "summary.json"
        child = subprocess.run(
            [sys.executable, __file__], env={**environment, SUMMARY_FILE: str(summary_file)}, check=False
        )
        if child.returncode != 0 or not summary_file.exists():
            print(f"The demo batch failed (exit status {child.returncode}); see the log above.", file=sys.stderr)
            return 1
        summary = json.loads(summary_file.read_text())
    print(json.dumps(summary), flush=True)
    accounted = summary["succeeded"] + summary["skipped"] + len(summary["failed"]) + len(summary["unfinished"])
    ok = accounted == summary["total"] and not summary["resources_left"] and not summary["unfinished"]
    return 0 if ok else 1


if __name__ == "__main__":
    if SUMMARY_FILE in os.environ:
        run_batch(Path(os.environ[SUMMARY_FILE]))
    else:
        sys.exit(main())

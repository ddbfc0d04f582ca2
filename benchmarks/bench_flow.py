"""Figure 5, flow overhead: setup + cleanup on a moto server, and the whole demo batch.

Setup and cleanup run inside a Prefect flow twice over: as the flow runs them (Prefect tasks, with
their task-run bookkeeping) and as their bare bodies (`.fn`, the same code without it), so the
difference is Prefect's own cost. Their AWS calls are counted by the moto server's recorder. The
demo batch (`make demo`: 100 jobs, four local workers, a temporary Prefect API) is timed end to
end as a user runs it.

    .venv/bin/python -m benchmarks.bench_flow [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from benchmarks.common import (
    Figure,
    clients,
    fake_credentials,
    recorded_calls,
    recording_moto_server,
    report,
    write_job_file,
)
from prefect_distributed.core.config import parse_config
from prefect_distributed.core.models import RunResources

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "deployments" / "demo" / "run_demo.py"
DEMO_TARGET_S = 60.0
COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_flow"


class SetupCleanup(BaseModel):
    """Seconds of setup and cleanup, as tasks and as bare bodies (medians of the rounds)."""

    flow_start_s: float  # from calling the flow to its first line: Prefect's temporary API and the flow run
    task_setup_s: float
    task_cleanup_s: float
    body_setup_s: float
    body_cleanup_s: float
    setup_calls: dict[str, int]
    cleanup_calls: dict[str, int]


class DemoRun(BaseModel):
    seconds: float
    exit_status: int
    summary: dict[str, Any]


def time_demo() -> DemoRun:
    """`make demo` as a user runs it; its summary is the last line it prints."""
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600, check=False, cwd=REPO
    )
    seconds = time.perf_counter() - started
    lines = finished.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return DemoRun(seconds=seconds, exit_status=finished.returncode, summary=summary)


def time_setup_cleanup(rounds: int, workdir: Path) -> SetupCleanup:
    # Prefect reads its settings on import: show the figures, not every task's log lines.
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect import flow

    from prefect_distributed.tasks.cleanup import cleanup_run
    from prefect_distributed.tasks.setup import setup_run

    job_file = write_job_file(workdir / "jobs.json", 10)
    with recording_moto_server(workdir) as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # where the tasks' own clients go
        settings = {"app_name": "bench-flow", "job_file": str(job_file), "command": "true", "bucket": "bench-flow"}
        config = parse_config(settings, "bench_flow")
        clients(endpoint).client("s3").create_bucket(Bucket=config.bucket)

        def seconds(step: Callable[..., object], *arguments: object) -> float:
            started = time.perf_counter()
            step(*arguments)
            return time.perf_counter() - started

        @flow(name="bench-setup-cleanup")
        def setup_and_cleanup(called_at: float) -> SetupCleanup:
            flow_start_s = time.perf_counter() - called_at
            timings: dict[str, list[float]] = {
                "task_setup": [],
                "task_cleanup": [],
                "body_setup": [],
                "body_cleanup": [],
            }
            calls: dict[str, Counter[str]] = {}
            for round_ in range(rounds):
                as_tasks = RunResources.for_run(config, f"00000000-0000-4000-8000-{2 * round_:012d}")
                timings["task_setup"].append(seconds(setup_run, config, as_tasks))
                timings["task_cleanup"].append(seconds(cleanup_run, config, as_tasks))
                bare = RunResources.for_run(config, f"00000000-0000-4000-8000-{2 * round_ + 1:012d}")
                with recorded_calls(endpoint) as calls["setup"]:
                    timings["body_setup"].append(seconds(setup_run.fn, config, bare))
                with recorded_calls(endpoint) as calls["cleanup"]:
                    timings["body_cleanup"].append(seconds(cleanup_run.fn, config, bare))
            medians = {f"{name}_s": statistics.median(values) for name, values in timings.items()}
            return SetupCleanup(
                flow_start_s=flow_start_s,
                setup_calls=dict(calls["setup"]),
                cleanup_calls=dict(calls["cleanup"]),
                **medians,
            )

        return setup_and_cleanup(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="setup + cleanup pairs, of which the median is kept")
    args = parser.parse_args()
    demo = time_demo()
    fake_credentials()
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        steps = time_setup_cleanup(args.rounds, Path(tmp))

    as_tasks = steps.task_setup_s + steps.task_cleanup_s
    bodies = steps.body_setup_s + steps.body_cleanup_s
    summary = demo.summary
    figures = [
        Figure(
            figure=f"Flow overhead: setup + cleanup on a moto server (median of {args.rounds})",
            target="reported",
            measured=f"{as_tasks:.2f} s as Prefect tasks (setup {steps.task_setup_s:.2f} s, cleanup "
            f"{steps.task_cleanup_s:.2f} s); {sum(steps.setup_calls.values())} + "
            f"{sum(steps.cleanup_calls.values())} AWS calls",
            baseline=f"{bodies:.2f} s for the same code without Prefect's task runs",
            ratio=f"+{as_tasks - bodies:.2f} s Prefect",
            met=None,
            command=COMMAND_LINE,
        ),
        Figure(
            figure="The demo batch end to end (`make demo`: 100 jobs, 4 local workers)",
            target=f"< {DEMO_TARGET_S:.0f} s",
            measured=f"{demo.seconds:.1f} s (the flow's own duration_s: {summary.get('duration_s')}); "
            f"{summary.get('succeeded')} succeeded, {len(summary.get('failed', []))} failed of {summary.get('total')}",
            baseline="-",
            ratio="-",
            met=demo.exit_status == 0 and demo.seconds < DEMO_TARGET_S,
            command="make demo (timed by " + COMMAND_LINE + ")",
        ),
    ]
    report(
        "Flow",
        figures,
        {"setup_cleanup": steps.model_dump(), "demo": demo.model_dump()},
        notes=[
            f"the bench flow itself took {steps.flow_start_s:.1f} s to start (Prefect's temporary API and flow run)",
            "setup calls: " + json.dumps(steps.setup_calls, sort_keys=True),
            "cleanup calls: " + json.dumps(steps.cleanup_calls, sort_keys=True),
            "the demo's one failed job is on purpose (a corrupt input), as in the README",
            (
                "DS's `run.py setup` sleeps WAIT_TIME = 60 s after creating each queue (its code), so its setup "
                "alone takes over 120 s; not measured here"
            ),
        ],
    )


if __name__ == "__main__":
    main()

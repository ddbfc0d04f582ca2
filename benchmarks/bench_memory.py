"""Figure 2, memory: a big Distributed-Something job file through our pipeline against `json.load`.

Ours is what validate and enqueue do to the file: `check_jobs` (every job built and checked, ids
kept for the duplicate check), then the jobs read again as message bodies, sent ten per batch by
`send_messages_concurrently` to a client that only counts. DS's baseline is `json.load` of the same
file, the first thing its submitJob does. Each measurement runs in a fresh process
(`memory_child.py`) and reports its peak resident memory (VmHWM).

    .venv/bin/python -m benchmarks.bench_memory [--jobs 100000 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from benchmarks.common import COMMAND, Figure, ratio, report, write_job_file
from benchmarks.memory_child import COMMAND as CHILD_COMMAND
from benchmarks.memory_child import Measurement
from prefect_distributed.core.records import Outcomes

TARGET_MB = 150
# Ours at the largest N may be at most this many times its peak at the smallest: "flat in N".
FLAT_FACTOR = 1.5
COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_memory"


def measure(method: str, path: Path) -> Measurement:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_child", method, str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout
    return Measurement(**json.loads(output.strip().splitlines()[-1]))


def outcome_memory(jobs: int) -> tuple[float, float]:
    """MiB held by the outcomes of `jobs` finished jobs: ours (core.records.Outcomes), and the
    dict of id strings to status the summary held before (tracemalloc, ids parsed as from S3 keys)."""
    keys = [f"{hashlib.sha256(str(n).encode()).hexdigest()[:16]}.succeeded.json" for n in range(jobs)]
    tracemalloc.start()
    try:
        outcomes = Outcomes()
        for key in keys:
            job_id, _, rest = key.partition(".")
            outcomes.add(job_id, rest.removesuffix(".json"))
        ours = tracemalloc.get_traced_memory()[0]
        del outcomes
        before = tracemalloc.get_traced_memory()[0]
        as_dict = {}
        for key in keys:
            job_id, _, rest = key.partition(".")
            as_dict[job_id] = rest.removesuffix(".json")
        baseline = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return ours / 2**20, baseline / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    if CHILD_COMMAND != COMMAND:
        raise SystemExit("benchmarks.memory_child.COMMAND must equal benchmarks.common.COMMAND")

    results: list[tuple[Measurement, Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for jobs in sorted(args.jobs):
            path = write_job_file(Path(tmp) / f"jobs-{jobs}.json", jobs)
            results.append((measure("ours", path), measure("json.load", path)))
            path.unlink()

    smallest = results[0][0]
    figures = [
        Figure(
            figure=f"Peak memory, {ours.jobs:,}-job file ({ours.file_mib:,.0f} MiB)",
            target=f"<= {TARGET_MB} MB, flat in N",
            measured=f"{ours.peak_mib:,.0f} MiB peak, {ours.peak_mib - ours.imports_mib:,.0f} MiB above imports; "
            f"{ours.peak_mib / smallest.peak_mib:.2f}x the {smallest.jobs:,}-job peak; "
            f"{ours.seconds:,.1f} s ({ours.jobs / ours.seconds:,.0f} jobs/s)",
            baseline=f"json.load {baseline.peak_mib:,.0f} MiB peak, "
            f"{baseline.peak_mib - baseline.imports_mib:,.0f} MiB above imports; {baseline.seconds:,.1f} s",
            ratio=ratio(ours.peak_mib, baseline.peak_mib),
            met=ours.peak_mib * 2**20 <= TARGET_MB * 10**6 and ours.peak_mib <= FLAT_FACTOR * smallest.peak_mib,
            command=COMMAND_LINE,
        )
        for ours, baseline in results
    ]
    largest = max(args.jobs)
    held, held_as_dict = outcome_memory(largest)
    figures.append(
        Figure(
            figure=f"Memory of the outcomes of {largest:,} finished jobs (summary and monitor)",
            target="well under the job file's peak",
            measured=f"{held:,.0f} MiB (core.records.Outcomes: two compact id sets)",
            baseline=f"dict of id strings: {held_as_dict:,.0f} MiB",
            ratio=ratio(held, held_as_dict),
            met=held < results[-1][0].peak_mib,
            command=COMMAND_LINE,
        )
    )
    report(
        "Memory",
        figures,
        {"measurements": [vars(m) for pair in results for m in pair]},
        notes=[
            (
                "ours = check_jobs (the validate step), then the file read again into message bodies sent ten per "
                "batch by send_messages_concurrently to a client that only counts; a fresh process per measurement"
            ),
            "ours' time is CPU: every job is built and validated twice (validate, then enqueue); json.load only parses",
        ],
    )


if __name__ == "__main__":
    main()

"""`make bench`: every benchmark in turn, each in its own process, then all figures as one table.

Each benchmark's output is shown as it runs; its last line (`BENCH_RESULT {json}`) carries its
figures. With `--write-readme`, the table and the machine line in benchmarks/README.md are
replaced by this run's; otherwise nothing is written.

    .venv/bin/python -m benchmarks.run_all [--write-readme] [--only enqueue memory ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from benchmarks.common import RESULT_PREFIX, Figure, machine

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BENCHMARKS = ("enqueue", "memory", "monitor", "worker", "flow", "simulation")
TABLE_START, TABLE_END = "<!-- figures:start -->", "<!-- figures:end -->"
BENCHMARK_TIMEOUT_S = 900


class BenchmarkResult(BaseModel):
    """What one benchmark's result line carries that the table uses."""

    title: str
    load_average: float  # the machine is shared: wall times move with its load
    figures: list[Figure]


def run_benchmark(name: str) -> BenchmarkResult | None:
    """Run one benchmark, echoing its output; its result line, None if it failed."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.bench_{name}"],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None  # stdout=PIPE above
    result: BenchmarkResult | None = None
    # Each benchmark bounds its own steps; this is the backstop that keeps `make bench` finite.
    watchdog = threading.Timer(BENCHMARK_TIMEOUT_S, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith(RESULT_PREFIX):
                result = BenchmarkResult.model_validate_json(line[len(RESULT_PREFIX) :])
            else:
                print(line, end="", flush=True)
    finally:
        watchdog.cancel()
    if process.wait() != 0 or result is None:
        print(f"bench_{name} failed (exit status {process.returncode}); its figures are missing", flush=True)
        return None
    return result


def markdown_table(figures: list[Figure]) -> str:
    verdicts = {True: "yes", False: "**no**", None: "-"}
    rows = [
        "| figure | target | measured | baseline | ratio | met | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for figure in figures:
        cells = (
            figure.figure,
            figure.target,
            figure.measured,
            figure.baseline,
            figure.ratio,
            verdicts[figure.met],
            f"`{figure.command}`",
        )
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def write_readme(table: str, machine_line: str) -> None:
    text = README.read_text()
    text = re.sub(
        f"{re.escape(TABLE_START)}.*?{re.escape(TABLE_END)}",
        lambda _: f"{TABLE_START}\n{machine_line}\n\n{table}\n{TABLE_END}",
        text,
        flags=re.DOTALL,
    )
    README.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-readme", action="store_true", help="put this run's table into benchmarks/README.md")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args()
    if args.write_readme and set(args.only) != set(BENCHMARKS):
        parser.error("--write-readme needs every benchmark: the table is replaced whole")
    started = time.monotonic()
    results = [result for name in args.only if (result := run_benchmark(name)) is not None]
    loads = ", ".join(f"{result.title.lower()} {result.load_average:.1f}" for result in results)
    machine_line = (
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; all benchmarks took "
        f"{time.monotonic() - started:.0f} s; 1-minute load average as each ended: {loads}."
    )
    table = markdown_table([figure for result in results for figure in result.figures])
    print(f"\n{machine_line}\n\n{table}")
    if args.write_readme:
        write_readme(table, machine_line)
        print(f"\nWrote the table into {README}")


if __name__ == "__main__":
    main()

"""One memory measurement, in a fresh interpreter that imports only what the measured method needs.

Peak resident memory (VmHWM) is per process and never goes down, so every measurement gets its
own process; and this module imports nothing heavy itself, so `json.load`'s baseline is not
charged for boto3 or pydantic.

    python -m benchmarks.memory_child {ours|json.load} PATH   # prints one JSON Measurement
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The command the generated job files are checked against (benchmarks.common.COMMAND).
COMMAND = "analyse --pipeline {pipeline} --in {input_dir} --out {output_dir} --plate {plate} --well {well}"


@dataclass(frozen=True)
class Measurement:
    """One method on one file, in its own process."""

    method: str
    jobs: int
    file_mib: float
    imports_mib: float  # resident memory once the method's modules are imported, before any work
    peak_mib: float
    seconds: float


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


class CountingSqs:
    """Stands in for the SQS client: answers every SendMessageBatch at once and only counts."""

    def __init__(self) -> None:
        self.messages = 0
        self._lock = threading.Lock()

    def send_message_batch(self, **request: Any) -> dict[str, Any]:
        entries = request["Entries"]
        with self._lock:
            self.messages += len(entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in entries], "Failed": []}


def run_ours(path: Path) -> int:
    """Validate (check_jobs), then read the file again into bodies sent ten per batch, as a run does."""
    from prefect_distributed.core.aws.sqs_send import send_messages_concurrently
    from prefect_distributed.core.jobs import JobMessage, check_jobs, reread_jobs

    checked = check_jobs(path, COMMAND)
    sqs = CountingSqs()
    bodies = (JobMessage.for_job(job, "0" * 36).body() for job in reread_jobs(checked, COMMAND))
    sent = send_messages_concurrently(sqs, "counting", bodies)  # type: ignore[arg-type]  # a duck-typed client
    if not sent == sqs.messages == checked.count:
        raise RuntimeError(f"sent {sent}, counted {sqs.messages}, checked {checked.count}")
    return sent


def run_json_load(path: Path) -> int:
    """Distributed-Something's first step: the whole job file in memory."""
    with path.open() as handle:
        document = json.load(handle)
    return len(document["groups"])


def measure(method: str, path: Path) -> Measurement:
    if method == "ours":
        # Imported before the floor is read: run_ours imports them again at no cost.
        for module in ("prefect_distributed.core.jobs", "prefect_distributed.core.aws.sqs_send"):
            importlib.import_module(module)

        run = run_ours
    elif method == "json.load":
        run = run_json_load
    else:
        raise SystemExit(f"unknown method {method!r}: ours or json.load")
    imports_mib = _proc_status_mib("VmRSS")
    started = time.perf_counter()
    jobs = run(path)
    seconds = time.perf_counter() - started
    return Measurement(
        method=method,
        jobs=jobs,
        file_mib=path.stat().st_size / 2**20,
        imports_mib=imports_mib,
        peak_mib=_proc_status_mib("VmHWM"),
        seconds=seconds,
    )


if __name__ == "__main__":
    print(json.dumps(asdict(measure(sys.argv[1], Path(sys.argv[2])))))

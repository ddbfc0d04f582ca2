"""A resource line (disk, memory, load) every few seconds, as Distributed-Something's workers logged.

A job that dies of a full disk or of memory pressure often says nothing useful itself; these lines,
next to the job's own, show what the machine looked like. A WARNING marks the line when a resource
is close to running out, so it stands out in the log.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any

DISK_USED_WARNING = 0.90
MEMORY_AVAILABLE_WARNING = 0.10
# Load per CPU above which the machine is oversubscribed (e.g. DISTRIBUTED_PROCESSES too high).
LOAD_PER_CPU_WARNING = 2.0
_GIB = 1024**3


@dataclass(frozen=True)
class ResourceReading:
    """One look at the machine; a part that could not be read is None and left out of the line."""

    path: str
    disk_total_bytes: int
    disk_free_bytes: int
    memory_total_bytes: int | None
    memory_available_bytes: int | None
    load_1m: float | None
    cpus: int


def _memory() -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo; (None, None) where there is none."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    values[name] = int(rest.split()[0]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable")


def _cpus() -> int:
    """The CPUs this process may run on (fewer than the machine's when pinned)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def read_resources(path: str) -> ResourceReading:
    """Read disk usage of `path`'s file system, memory and load; raises OSError if `path` is gone."""
    disk = shutil.disk_usage(path)
    memory_total, memory_available = _memory()
    try:
        load_1m: float | None = os.getloadavg()[0]
    except OSError:  # not available on this system
        load_1m = None
    return ResourceReading(
        path=path,
        disk_total_bytes=disk.total,
        disk_free_bytes=disk.free,
        memory_total_bytes=memory_total,
        memory_available_bytes=memory_available,
        load_1m=load_1m,
        cpus=_cpus(),
    )


def describe_resources(reading: ResourceReading) -> tuple[int, str]:
    """The log level (INFO, or WARNING when something runs short) and the line for one reading."""
    parts: list[str] = []
    warnings: list[str] = []
    if reading.disk_total_bytes > 0:
        free = reading.disk_free_bytes / reading.disk_total_bytes
        parts.append(
            f"disk {free:.0%} free ({reading.disk_free_bytes / _GIB:.1f} of "
            f"{reading.disk_total_bytes / _GIB:.1f} GiB) at {reading.path}"
        )
        if 1 - free > DISK_USED_WARNING:
            warnings.append(f"disk over {DISK_USED_WARNING:.0%} used")
    if reading.memory_total_bytes and reading.memory_available_bytes is not None:
        available = reading.memory_available_bytes / reading.memory_total_bytes
        parts.append(
            f"memory {available:.0%} available ({reading.memory_available_bytes / _GIB:.1f} of "
            f"{reading.memory_total_bytes / _GIB:.1f} GiB)"
        )
        if available < MEMORY_AVAILABLE_WARNING:
            warnings.append(f"memory under {MEMORY_AVAILABLE_WARNING:.0%} available")
    if reading.load_1m is not None:
        parts.append(f"load {reading.load_1m:.2f} on {reading.cpus} CPU(s)")
        if reading.load_1m > LOAD_PER_CPU_WARNING * reading.cpus:
            warnings.append(f"load over {LOAD_PER_CPU_WARNING:g} per CPU")
    line = "resources: " + "; ".join(parts)
    if warnings:
        return logging.WARNING, f"{line}; LOW: {', '.join(warnings)}"
    return logging.INFO, line


def log_resources(path: str, interval_s: float, stop: threading.Event, log: logging.LoggerAdapter[Any]) -> None:
    """Log one resource line now and every `interval_s` seconds until `stop` is set (a thread's target)."""
    while True:
        try:
            level, line = describe_resources(read_resources(path))
            log.log(level, "%s", line)
        except OSError as exc:  # e.g. the work dir was removed: say so, and keep watching
            log.warning("resources: cannot read the disk usage of %s: %s", path, exc)
        if stop.wait(interval_s):
            return

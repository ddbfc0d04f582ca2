"""Fargate's task sizes: the CPU and memory pairs it accepts, checked before anything is created.

From the ECS developer guide, "Task CPU and memory" (Linux platform 1.4.0, which Fargate runs by
default): each CPU value allows a range of memory in fixed steps. A pair outside these is refused by
RegisterTaskDefinition ("No Fargate configuration exists for given values"); here it is named with
the nearest sizes that exist, before anything is paid for.
"""

from __future__ import annotations

# cpu units -> (lowest MiB, highest MiB, step MiB)
FARGATE_SIZES: dict[int, tuple[int, int, int]] = {
    256: (512, 2048, 512),  # 512, 1024, 2048: 1536 is refused, see _allowed
    512: (1024, 4096, 1024),
    1024: (2048, 8192, 1024),
    2048: (4096, 16384, 1024),
    4096: (8192, 30720, 1024),
    8192: (16384, 61440, 4096),
    16384: (32768, 122880, 8192),
}
MAX_EPHEMERAL_STORAGE_GB = 200


def allowed_memory_mib(cpu_units: int) -> list[int]:
    """The memory sizes Fargate accepts with this CPU value; empty when the CPU value is not one of its."""
    if cpu_units not in FARGATE_SIZES:
        return []
    low, high, step = FARGATE_SIZES[cpu_units]
    sizes = list(range(low, high + 1, step))
    return [size for size in sizes if size != 1536] if cpu_units == 256 else sizes


def _span(sizes: list[int]) -> str:
    if len(sizes) <= 4:
        return ", ".join(str(size) for size in sizes)
    return f"{sizes[0]} to {sizes[-1]} in steps of {sizes[1] - sizes[0]}"


def task_size_problems(cpu_units: int, memory_mib: int) -> list[str]:
    """What is wrong with container.cpu_units and container.memory_mib as a Fargate task size, with the fix."""
    if cpu_units not in FARGATE_SIZES:
        return [
            f"container.cpu_units {cpu_units} is not a Fargate task size: use one of "
            f"{', '.join(str(cpu) for cpu in FARGATE_SIZES)} (1024 = 1 vCPU)"
        ]
    sizes = allowed_memory_mib(cpu_units)
    if memory_mib in sizes:
        return []
    fitting = [cpu for cpu in FARGATE_SIZES if memory_mib in allowed_memory_mib(cpu)]
    other_cpu = f"; or keep {memory_mib} MiB with container.cpu_units {' or '.join(map(str, fitting))}" if fitting else ""
    nearest = min(sizes, key=lambda size: (abs(size - memory_mib), -size))
    return [
        f"container.memory_mib {memory_mib} with container.cpu_units {cpu_units} is not a Fargate task size: with "
        f"{cpu_units} cpu units Fargate takes {_span(sizes)} MiB (the nearest: {nearest}){other_cpu}"
    ]

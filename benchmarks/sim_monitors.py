"""The two monitors the simulation compares, each driving a `sim_model.Simulation` to the end.

Ours is not re-implemented here: `run_ours` calls `core.monitor.wait_for_completion` with the
policy the `monitor` task uses, on the simulated clock (its `sleep` advances the simulation), with
the simulation standing in for the fleet (`scale_in`, `hold`, `spent_usd`). Distributed-
Something's `run.py monitor` is re-stated from its code (`monitor`, `downscaleSpotFleet`): a
reading every 60 s, the fleet's target lowered to the in-flight count every 10 minutes once nothing
is visible (noTermination), and teardown on the first reading of zero visible and zero in flight.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from benchmarks.sim_model import FARGATE_MIN_BILLED_S, Simulation, Worker
from benchmarks.sim_scenario import Scenario
from prefect_distributed.core.errors import DistributedError
from prefect_distributed.core.monitor import wait_for_completion
from prefect_distributed.core.monitor_policy import MonitorPolicy, PolicySettings

CAPACITY_WAIT_S = 600.0  # fleet.capacity_wait_s: how long starting the fleet waits for the machines
DS_POLL_S = 60.0  # run.py's MONITOR_TIME


class BatchResult(BaseModel):
    """What one simulated batch cost and how long it took, beside its lower bounds."""

    model_config = ConfigDict(frozen=True)

    worker: Worker
    scenario: Scenario
    makespan_s: float  # the fleet request to the last job done
    packing_bound_s: float  # max(job-seconds / slots, the longest job) + boot
    job_s: float  # the sum of the jobs' durations: the paid slot-seconds' lower bound
    paid_slot_s: float  # machine-seconds x slots per machine (fargate: task-seconds, one-minute minimum)
    idle_tail_s: float  # the last job done to the last machine gone
    lost_to_interruptions_s: float
    duplicate_s: float  # job-seconds run again while the first copy still ran (no visibility heartbeat)
    interruptions: int
    machines_launched: int  # replacements included (fargate: tasks)
    cost_usd: float
    done: int
    dead: int
    unfinished: int
    stop: str  # how the monitor ended: "complete" or the error it raised
    timeline: list[tuple[float, int, int]]  # (time, busy slots, paid slots)

    @property
    def makespan_ratio(self) -> float:
        return self.makespan_s / self.packing_bound_s

    @property
    def paid_ratio(self) -> float:
        return self.paid_slot_s / self.job_s


def monitor_start(sim: Simulation) -> float:
    """The monitor starts once starting the fleet stops waiting for machines (all there, or the wait
    is over); fargate has no machines to wait for."""
    if sim.s.backend == "fargate":
        return 0.0
    if sim.capacity < sim.target:
        return CAPACITY_WAIT_S
    return min(CAPACITY_WAIT_S, max(machine.launched_at for machine in sim.machines))


def run_ours(scenario: Scenario, durations: list[float] | None = None) -> BatchResult:
    """Our monitor's own loop and policy on the simulated clock, then cleanup."""
    sim = Simulation(scenario, "ours", durations)
    sim.run_until(monitor_start(sim))
    policy = MonitorPolicy(
        PolicySettings(
            poll_interval_s=scenario.poll_interval_s,
            settle_polls=scenario.settle_polls,
            budget_usd=scenario.budget_usd,
            cheapest_after_s=scenario.cheapest_after_s,
            lost_after_s=CAPACITY_WAIT_S,
        )
    )
    stop = "complete"
    try:
        wait_for_completion(
            sim.snapshot,
            lambda snapshot: sim.done + sim.dead,
            policy=policy,
            clock=lambda: sim.now,
            sleep=lambda seconds: sim.run_until(sim.now + seconds),
            on_snapshot=lambda snapshot: None,
            fleet=sim,
        )
    except DistributedError as exc:
        stop = f"{type(exc).__name__}: {exc}"
    return _finish(sim, stop)


def run_ds(scenario: Scenario, durations: list[float] | None = None) -> BatchResult:
    """Distributed-Something's monitor loop (run.py monitor) on the same simulated batch."""
    sim = Simulation(scenario, "ds", durations)
    at_s = monitor_start(sim)
    while True:
        sim.run_until(at_s)
        visible, in_flight = sim.visible, sim.in_flight
        if visible + in_flight == 0:  # one zero reading ends the run
            break
        if int(at_s // 60) % 10 == 9 and visible == 0 and in_flight < sim.active:
            sim.target = in_flight  # downscaleSpotFleet: TargetCapacity=nonVisible, noTermination
        at_s += DS_POLL_S
    return _finish(sim, "complete")


def _finish(sim: Simulation, stop: str) -> BatchResult:
    sim.stop()
    sim.run_out()
    s = sim.s
    last_gone = max((m.ended_at or 0.0 for m in sim.machines), default=0.0)
    if s.backend == "fargate":
        last_gone = max((max(m.ended_at or 0.0, m.launched_at + FARGATE_MIN_BILLED_S) for m in sim.machines))
    paid = sim.paid_slot_s(math.inf)
    return BatchResult(
        worker=sim.worker,
        scenario=s,
        makespan_s=sim.last_done_at,
        packing_bound_s=max(sim.job_s / s.slots, max(sim.durations)) + s.boot_s,
        job_s=sim.job_s,
        paid_slot_s=paid,
        idle_tail_s=last_gone - sim.last_done_at,
        lost_to_interruptions_s=sim.lost_to_interruptions_s,
        duplicate_s=sim.duplicate_s,
        interruptions=sim.interruptions,
        machines_launched=len(sim.machines),
        cost_usd=sim.spent_usd_until(math.inf),
        done=sim.done,
        dead=sim.dead,
        unfinished=sim.unfinished,
        stop=stop,
        timeline=sim.timeline,
    )

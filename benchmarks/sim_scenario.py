"""A simulated batch's settings: its jobs, its fleet and its prices (see sim_model.py for the model)."""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["spot-fleet", "ec2-spot", "fargate"]


class Scenario(BaseModel):
    """One batch and its fleet. Times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jobs: int = Field(ge=1)
    machines: int = Field(ge=1, description="Machines asked for; on fargate, tasks = machines x slots.")
    slots_per_machine: int = Field(default=1, ge=1, description="Containers per machine (tasks_per_machine).")
    backend: Backend = "spot-fleet"
    distribution: Literal["lognormal", "pareto", "fixed"] = "lognormal"
    mean_job_s: float = Field(default=600.0, gt=0)
    spread: float = Field(default=0.5, gt=0, description="lognormal: sigma of log(duration); pareto: its shape.")
    boot_s: float = Field(default=180.0, ge=0, description="Launch to containers running (fargate: task start).")
    boot_jitter_s: float = Field(default=60.0, ge=0, description="Each machine boots up to this much slower.")
    capacity_fraction: float = Field(default=1.0, gt=0, le=1, description="Share of the machines that ever come.")
    capacity_delay_s: float = Field(default=0.0, ge=0, description="Machines arrive spread over this long.")
    interruptions_per_hour: float = Field(default=0.0, ge=0, description="Spot interruptions per machine-hour.")
    failure_rate: float = Field(default=0.0, ge=0, lt=1, description="Chance that one attempt of a job fails.")
    job_retries: int = Field(default=3, ge=1)
    retry_delay_s: float = Field(default=60.0, ge=0)
    poll_interval_s: float = Field(default=10.0, gt=0, description="Our monitor's poll (monitor.poll_interval_s).")
    settle_polls: int = Field(default=3, ge=1)
    worker_idle_exit_s: float = Field(default=60.0, ge=0)
    drop_protection_when_idle: bool = Field(
        default=False, description="Our worker drops its scale-in protection as its job ends (today it lapses)."
    )
    ecs_stop_s: float = Field(default=30.0, ge=0, description="A scale-in call to the container or machine gone.")
    shutdown_s: float = Field(default=30.0, ge=0, description="The monitor's end to the last machine terminated.")
    ds_visibility_s: float | None = Field(
        default=None, description="Distributed-Something's SQS_MESSAGE_VISIBILITY; default 1.5 x mean_job_s."
    )
    usd_per_machine_hour: float = Field(default=0.08, gt=0, description="Spot price of one machine (EC2).")
    machine_vcpus: int = Field(default=4, ge=1, description="vCPUs of one machine (m5.xlarge).")
    machine_memory_gb: float = Field(default=16, gt=0, description="Memory of one machine (m5.xlarge).")
    fargate_usd_per_vcpu_hour: float = Field(default=0.01334, gt=0, description="Fargate Spot, Linux/x86.")
    fargate_usd_per_gb_hour: float = Field(default=0.00146, gt=0, description="Fargate Spot, Linux/x86.")
    budget_usd: float | None = None
    cheapest_after_s: float | None = None
    sample_s: float = Field(default=60.0, gt=0, description="How often busy and paid slots are recorded.")
    seed: int = 1

    @property
    def slots(self) -> int:
        return self.machines * self.slots_per_machine

    @property
    def usd_per_task_hour(self) -> float:
        """A Fargate task the size of one slot of a machine."""
        task_hour = self.machine_vcpus * self.fargate_usd_per_vcpu_hour
        task_hour += self.machine_memory_gb * self.fargate_usd_per_gb_hour
        return task_hour / self.slots_per_machine

    @property
    def visibility_s(self) -> float:
        return self.ds_visibility_s if self.ds_visibility_s is not None else 1.5 * self.mean_job_s


def job_durations(scenario: Scenario) -> list[float]:
    """Durations with the scenario's mean: lognormal (mu chosen so the mean is exact), Pareto, or all equal."""
    rng = random.Random(scenario.seed)
    if scenario.distribution == "fixed":
        return [scenario.mean_job_s] * scenario.jobs
    if scenario.distribution == "lognormal":
        mu = math.log(scenario.mean_job_s) - scenario.spread**2 / 2
        return [rng.lognormvariate(mu, scenario.spread) for _ in range(scenario.jobs)]
    shape = scenario.spread
    if shape <= 1:
        raise ValueError("a Pareto distribution with shape <= 1 has no mean; give spread > 1")
    scale = scenario.mean_job_s * (shape - 1) / shape
    return [scale * rng.paretovariate(shape) for _ in range(scenario.jobs)]

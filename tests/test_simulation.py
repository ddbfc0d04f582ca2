"""The batch simulation (benchmarks/) is itself correct: exact figures on cases worked out by hand,
every job accounted for, and our monitor's decisions carried out on the simulated fleet."""

from __future__ import annotations

import pytest

from benchmarks.sim_monitors import CAPACITY_WAIT_S, BatchResult, run_ds, run_ours
from benchmarks.sim_scenario import Scenario, job_durations

# No boot jitter, so times can be worked out by hand.
EXACT = {"boot_s": 60.0, "boot_jitter_s": 0.0}


def test_one_machine_with_fixed_durations_takes_the_sum_of_the_jobs_after_its_boot() -> None:
    scenario = Scenario(jobs=5, machines=1, distribution="fixed", mean_job_s=100, **EXACT)
    ours, ds = run_ours(scenario), run_ds(scenario)
    assert ours.makespan_s == ds.makespan_s == 60 + 5 * 100
    assert ours.packing_bound_s == 60 + 5 * 100
    assert ours.makespan_ratio == 1.0
    assert ours.job_s == 500 and ours.done == ds.done == 5


def test_slots_share_the_work_and_the_longest_job_bounds_the_makespan() -> None:
    scenario = Scenario(jobs=4, machines=2, slots_per_machine=2, **EXACT)
    result = run_ours(scenario, durations=[1000.0, 10.0, 10.0, 10.0])
    assert result.packing_bound_s == 60 + 1000
    assert result.makespan_s == 60 + 1000


def test_no_job_is_lost_with_failures_and_spot_interruptions() -> None:
    scenario = Scenario(
        jobs=2000, machines=20, failure_rate=0.05, job_retries=2, interruptions_per_hour=0.5, mean_job_s=300
    )
    result = run_ours(scenario)
    assert result.stop == "complete"
    assert result.interruptions > 0 and result.lost_to_interruptions_s > 0
    assert result.dead > 0
    assert result.done + result.dead == 2000 and result.unfinished == 0
    assert result.machines_launched > 20  # interrupted machines were replaced


def test_distributed_somethings_jobs_run_twice_when_they_outlast_the_visibility_timeout() -> None:
    scenario = Scenario(jobs=2, machines=2, ds_visibility_s=600, **EXACT)
    ds = run_ds(scenario, durations=[1000.0, 700.0])
    ours = run_ours(scenario, durations=[1000.0, 700.0])
    # The first job is visible again at 60 + 600; the other worker, free at 760, runs it again until the
    # first copy ends at 1060 and the run is torn down at Distributed-Something's next reading.
    assert ds.duplicate_s >= 1060 - 760 and ours.duplicate_s == 0
    assert ds.done == ours.done == 2


def test_our_scale_in_frees_idle_machines_long_before_the_last_job_ends() -> None:
    scenario = Scenario(jobs=10, machines=10, **EXACT)
    result = run_ours(scenario, durations=[7200.0] + [60.0] * 9)
    # Idle containers stop once their scale-in protection lapses (10 min after their job started),
    # their machines at the next scale-in (within 5 min): from then on one machine is paid for.
    paid_late = {paid for at_s, _, paid in result.timeline if CAPACITY_WAIT_S + 1200 <= at_s <= 7000}
    assert paid_late == {1}
    ds = run_ds(scenario, durations=[7200.0] + [60.0] * 9)
    assert ds.paid_slot_s > 1.2 * result.paid_slot_s  # idle alarms after 15 min and more, then replacements


def test_the_budget_stops_the_run_and_lists_the_jobs_not_done() -> None:
    scenario = Scenario(jobs=1000, machines=10, budget_usd=1.0)
    result = run_ours(scenario)
    assert result.stop.startswith("BudgetExceededError: The run's machines have cost $1.0")
    assert result.unfinished > 0 and result.done + result.dead + result.unfinished == 1000
    # Spend is checked every two minutes: the run stops within one check of the budget, plus shutdown.
    ten_machines_usd_per_s = 10 * scenario.usd_per_machine_hour / 3600
    late_s = 120 + scenario.poll_interval_s + scenario.shutdown_s
    assert 1.0 <= result.cost_usd <= 1.0 + ten_machines_usd_per_s * late_s


def test_cheapest_mode_replaces_interrupted_machines_only_when_none_is_left() -> None:
    scenario = Scenario(jobs=200, mean_job_s=120, machines=10, interruptions_per_hour=1.0, cheapest_after_s=0)
    held = run_ours(scenario)
    replaced = run_ours(scenario.model_copy(update={"cheapest_after_s": None}))
    assert held.interruptions > 0
    assert held.machines_launched < replaced.machines_launched
    assert held.done == replaced.done == 200  # the machines that remain finish the batch
    assert held.makespan_s > replaced.makespan_s


@pytest.mark.parametrize("backend", ["ec2-spot", "fargate"])
def test_every_backend_finishes_the_batch(backend: str) -> None:
    result = run_ours(Scenario(jobs=500, machines=10, backend=backend, interruptions_per_hour=0.2))
    assert result.stop == "complete" and result.done == 500
    assert result.paid_ratio >= 1.0


@pytest.mark.parametrize(("distribution", "spread"), [("lognormal", 0.5), ("lognormal", 1.0), ("pareto", 2.5)])
def test_durations_are_drawn_with_the_mean_asked_for(distribution: str, spread: float) -> None:
    durations = job_durations(Scenario(jobs=100_000, machines=1, distribution=distribution, spread=spread))
    assert sum(durations) / len(durations) == pytest.approx(600, rel=0.02)
    assert max(durations) > 3 * 600  # a tail, not a constant


def test_managed_scaling_removes_an_empty_machine_fifteen_minutes_after_it_emptied() -> None:
    durations = [3000.0, 60.0]
    fleet = run_ours(Scenario(jobs=2, machines=2, **EXACT), durations=durations)
    managed = run_ours(Scenario(jobs=2, machines=2, backend="ec2-spot", **EXACT), durations=durations)

    def second_machine_gone(result: BatchResult) -> float:
        return next(at_s for at_s, _, paid in result.timeline if paid < 2)

    # The short job's container is stopped when its protection lapses (10 min after its start) and 30 s
    # later its machine is empty: spot-fleet terminates it at a scale-in within 5 minutes, managed
    # scaling 15 minutes after it emptied.
    emptied = 60 + 60 + 600 + 30
    assert second_machine_gone(fleet) <= emptied + 300 + 60
    assert emptied + 900 <= second_machine_gone(managed) <= emptied + 900 + 60 + 60
    assert fleet.paid_slot_s < managed.paid_slot_s

"""The monitor's decisions on their own: readings in, actions out, no AWS and no clock."""

from __future__ import annotations

from prefect_distributed.core.models import RunSnapshot
from prefect_distributed.core.monitor_policy import (
    BUDGET_CHECK_S,
    SCALE_IN_REPEAT_S,
    Decision,
    MonitorPolicy,
    PolicySettings,
    Reading,
    Stop,
)


def snap(visible: int = 0, in_flight: int = 0, delayed: int = 0, workers: int = 4, total: int = 10) -> RunSnapshot:
    return RunSnapshot(
        total=total, visible=visible, in_flight=in_flight, delayed=delayed, dead=0, workers_running=workers
    )


def decide_all(policy: MonitorPolicy, readings: list[tuple[float, RunSnapshot]]) -> list[Decision]:
    return [policy.decide(Reading(at_s=at_s, snapshot=snapshot)) for at_s, snapshot in readings]


def test_the_fleet_shrinks_to_the_running_jobs_only_once_nothing_waits() -> None:
    policy = MonitorPolicy(PolicySettings())
    readings = [(0, snap(visible=5, in_flight=4)), (10, snap(delayed=1, in_flight=4)), (20, snap(in_flight=3))]
    decisions = decide_all(policy, readings)
    assert [d.scale_in_to for d in decisions] == [None, None, 3]


def test_scale_in_repeats_on_a_change_of_running_jobs_and_every_few_minutes_otherwise() -> None:
    policy = MonitorPolicy(PolicySettings())
    readings = [(0, snap(in_flight=3)), (10, snap(in_flight=3)), (20, snap(in_flight=2)), (30, snap(in_flight=2))]
    readings.append((20 + SCALE_IN_REPEAT_S, snap(in_flight=2)))
    assert [d.scale_in_to for d in decide_all(policy, readings)] == [3, None, 2, None, 2]


def test_cheapest_mode_holds_the_fleet_once_when_its_time_comes() -> None:
    policy = MonitorPolicy(PolicySettings(cheapest_after_s=900))
    decisions = decide_all(policy, [(at_s, snap(visible=9)) for at_s in (0, 899, 900, 960)])
    assert [d.hold for d in decisions] == [False, False, True, False]


def test_the_spend_is_asked_for_only_with_a_budget_and_every_two_minutes() -> None:
    assert not MonitorPolicy(PolicySettings()).spend_due(0)
    policy = MonitorPolicy(PolicySettings(budget_usd=50))
    assert policy.spend_due(0)
    policy.decide(Reading(at_s=0, snapshot=snap(visible=9), spent_usd=10))
    assert not policy.spend_due(BUDGET_CHECK_S - 1)
    assert policy.spend_due(BUDGET_CHECK_S)


def test_reaching_the_budget_stops_the_run_and_says_which_setting() -> None:
    policy = MonitorPolicy(PolicySettings(budget_usd=50))
    under = policy.decide(Reading(at_s=0, snapshot=snap(visible=9), spent_usd=49.99))
    over = policy.decide(Reading(at_s=120, snapshot=snap(visible=9), spent_usd=50))
    assert under.stop is None
    assert over.stop is Stop.BUDGET
    assert "$50.00, reaching fleet.budget_usd ($50.00)" in over.reason


def test_outcomes_are_counted_only_after_enough_empty_readings_and_then_the_batch_is_complete() -> None:
    policy = MonitorPolicy(PolicySettings(settle_polls=2))
    assert not policy.accounting_due(snap())
    first = policy.decide(Reading(at_s=0, snapshot=snap()))
    assert policy.accounting_due(snap()) and not policy.accounting_due(snap(in_flight=1))
    second = policy.decide(Reading(at_s=10, snapshot=snap(), accounted=10))
    assert (first.stop, second.stop) == (None, Stop.COMPLETE)


def test_jobs_that_never_report_are_given_up_on_after_five_settle_periods() -> None:
    policy = MonitorPolicy(PolicySettings(settle_polls=2))
    decisions = [policy.decide(Reading(at_s=10 * i, snapshot=snap(), accounted=9)) for i in range(10)]
    assert [d.stop for d in decisions] == [None] * 9 + [Stop.UNACCOUNTED]
    assert "1 of 10 jobs have no outcome" in decisions[-1].reason


def test_no_worker_while_jobs_wait_is_a_lost_fleet_and_the_deadline_is_a_timeout() -> None:
    lost = decide_all(MonitorPolicy(PolicySettings(settle_polls=2)), [(0, snap(visible=3, workers=0))] * 2)
    late = decide_all(MonitorPolicy(PolicySettings(max_run_time_s=60)), [(59, snap(visible=3)), (60, snap(visible=3))])
    assert [d.stop for d in lost] == [None, Stop.FLEET_LOST]
    assert [d.stop for d in late] == [None, Stop.TIMEOUT]


def test_no_worker_is_a_lost_fleet_only_after_long_enough_for_machines_to_start_or_be_replaced() -> None:
    policy = MonitorPolicy(PolicySettings(settle_polls=2, lost_after_s=300))
    readings = [(at_s, snap(visible=3, workers=0)) for at_s in (0, 10, 20, 290, 300)]
    readings += [(310, snap(visible=3, workers=2))]
    readings += [(at_s, snap(visible=3, workers=0)) for at_s in (320, 620)]
    decisions = decide_all(policy, readings)
    assert [d.stop for d in decisions] == [None] * 4 + [Stop.FLEET_LOST, None, None, Stop.FLEET_LOST]
    assert "3 jobs remain in the queue (none for 300 s; fleet.capacity_wait_s is the wait)" in decisions[-1].reason

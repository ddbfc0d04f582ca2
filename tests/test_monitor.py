"""When a run counts as complete: several empty readings, every job accounted for, deadlines."""

from __future__ import annotations

import pytest

from prefect_distributed.core.errors import FleetError
from prefect_distributed.core.models import RunSnapshot
from prefect_distributed.core.monitor import RunTimeoutError, wait_for_completion
from prefect_distributed.core.monitor_policy import MonitorPolicy, PolicySettings
from tests.fakes import FakeClock


def snap(visible: int = 0, in_flight: int = 0, dead: int = 0, workers: int = 2, total: int = 10) -> RunSnapshot:
    return RunSnapshot(total=total, visible=visible, in_flight=in_flight, delayed=0, dead=dead, workers_running=workers)


def run(readings: list[RunSnapshot], accounted: int = 10, **settings) -> tuple[RunSnapshot, int, list[RunSnapshot]]:
    feed = iter(readings)
    seen: list[RunSnapshot] = []
    checks = []
    time = FakeClock()
    result = wait_for_completion(
        lambda: next(feed),
        lambda s: checks.append(s) or accounted,
        policy=MonitorPolicy(PolicySettings(poll_interval_s=1, **settings)),
        clock=time,
        sleep=time.sleep,
        on_snapshot=seen.append,
    )
    return result, len(checks), seen


def test_one_empty_reading_is_not_enough() -> None:
    readings = [snap(visible=5), snap(), snap(in_flight=1), snap(), snap(), snap()]
    result, checks, seen = run(readings, settle_polls=3)
    assert len(seen) == 6
    assert checks == 1
    assert result == readings[-1]


def test_the_run_waits_while_jobs_are_unaccounted_for_then_reports_them() -> None:
    readings = [snap()] * 20
    _, checks, seen = run(readings, accounted=9, settle_polls=2)
    assert len(seen) == 10  # 2 settle readings x 5 patience
    assert checks == 9


def test_no_worker_alive_while_jobs_wait_is_a_lost_fleet() -> None:
    with pytest.raises(FleetError, match="No worker is running while 4 jobs remain"):
        run([snap(visible=4, workers=0)] * 5, settle_polls=3)


def test_workers_that_exit_after_the_queue_drained_are_fine() -> None:
    result, _, _ = run([snap(visible=1), snap(workers=0), snap(workers=0), snap(workers=0)], settle_polls=3)
    assert result.workers_running == 0


def test_the_deadline_stops_the_run() -> None:
    with pytest.raises(RunTimeoutError, match="did not finish within monitor.max_run_time_s=10"):
        run([snap(visible=3)] * 100, max_run_time_s=10)

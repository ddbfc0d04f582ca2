"""The spot-fleet backend's cost, budget and 'cheapest' mode against in-process moto: the estimate
from the spot price history, the spend of the run's machines, the monitor's budget stop, the fleet
held at what it has, and the machines shown in each reading."""

from __future__ import annotations

import itertools
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.cost import measure_cost
from prefect_distributed.core.errors import BudgetExceededError
from prefect_distributed.core.fleets.local import LocalFleet
from prefect_distributed.core.models import RunSnapshot
from prefect_distributed.core.monitor import RunFleet, RunTimeoutError, wait_for_completion
from prefect_distributed.core.monitor_policy import MonitorPolicy, PolicySettings
from tests.fakes import FakeClock
from tests.test_spot_fleet import backend, settings, start

pytestmark = pytest.mark.usefixtures("aws_mock")


def moto_price(machine_type: str) -> float:
    """moto answers the price history with one fixed price per zone offering the type."""
    history = boto3.client("ec2").describe_spot_price_history(InstanceTypes=[machine_type])["SpotPriceHistory"]
    return min(float(point["SpotPrice"]) for point in history)


def test_the_estimate_is_machines_times_the_spot_price_and_rounds_of_jobs_times_their_length(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machine_types=("m5.xlarge",), expected_job_minutes=30))
    estimate = fleet.cost_estimate(jobs=10)

    price = moto_price("m5.xlarge")
    rounds = math.ceil(10 / (2 * 2))  # 2 machines x 2 containers x 1 process
    assert estimate.hours == rounds * 30 / 60
    assert estimate.usd_per_hour is not None and estimate.usd_per_hour.low == pytest.approx(2 * price)
    assert estimate.total_usd is not None and estimate.total_usd.high == pytest.approx(2 * price * rounds * 0.5)
    assert any("m5.xlarge" in line for line in estimate.assumptions)


def test_the_cost_so_far_counts_the_runs_machines_and_the_status_shows_them(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machine_types=("m5.xlarge",)))
    handle = start(fleet)

    spent = fleet.cost(handle)
    status = fleet.status(handle)
    # An hour from now, the same two machines have run at least an hour each.
    later = measure_cost(boto3.client("ec2"), "r1", now=datetime.now(UTC) + timedelta(hours=1))

    # Two machines launched moments ago, at moto's one price in every zone: their hours times that price.
    price = moto_price("m5.xlarge")
    assert spent.machines == 2 and spent.prices_at == "launch"
    assert later.instance_hours >= 2.0 and later.total_usd == pytest.approx(later.instance_hours * price)
    assert spent.total_usd == pytest.approx(spent.instance_hours * price)
    [row] = spent.by_type
    assert (row.instance_type, row.machines, row.hours) == ("m5.xlarge", 2, pytest.approx(spent.instance_hours))
    assert (status.machines_target, status.machines_running) == (2, 2)


def test_the_budget_stops_the_run_once_the_machines_have_cost_it(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machine_types=("m5.xlarge",)))
    handle = start(fleet)

    with pytest.raises(BudgetExceededError, match=r"fleet.budget_usd \(\$0.00\); stopping the run"):
        watch(RunFleet(fleet, handle), [waiting()], budget_usd=1e-12)  # any time at moto's price passes it


def test_a_budget_not_reached_lets_the_run_go_on_with_its_fleet_untouched(tmp_path: Path) -> None:
    fleet = backend(settings(tmp_path, machine_types=("m5.xlarge",)))
    handle = start(fleet)
    budget_usd = 1000.0

    # Jobs wait until the deadline stops the run: the budget, checked all along, never acts on the fleet.
    with pytest.raises(RunTimeoutError):
        watch(RunFleet(fleet, handle), [waiting()], budget_usd=budget_usd, max_run_time_s=600)

    assert fleet.cost(handle).total_usd < budget_usd
    status = fleet.status(handle)
    assert (status.machines_target, status.machines_running) == (2, 2)


def test_cheapest_mode_holds_the_fleet_at_one_machine_without_terminating_any(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = backend(settings(tmp_path, machine_types=("m5.xlarge",)))
    handle = start(fleet)

    # Jobs wait until the deadline stops the run: no scale-in, only the hold acts on the fleet.
    with caplog.at_level(logging.INFO), pytest.raises(RunTimeoutError):
        watch(RunFleet(fleet, handle, logging.getLogger("run")), [waiting()], cheapest_after_s=0, max_run_time_s=1)

    status = fleet.status(handle)
    assert (status.machines_target, status.machines_running) == (1, 2)
    assert [r.name for r in caplog.records if r.message.startswith("Cheapest mode: the fleet keeps")] == ["run"]


def waiting() -> RunSnapshot:
    return RunSnapshot(total=4, visible=2, in_flight=2, delayed=0, dead=0, workers_running=4)


def watch(fleet: RunFleet, readings: list[RunSnapshot], **limits: float) -> RunSnapshot:
    """The monitor's loop on these readings (the last one repeated) and the real fleet."""
    feed = itertools.chain(readings, itertools.repeat(readings[-1]))
    time = FakeClock()
    return wait_for_completion(
        lambda: next(feed),
        lambda snapshot: snapshot.total,
        policy=MonitorPolicy(PolicySettings(settle_polls=1, **limits)),
        clock=time,
        sleep=time.sleep,
        on_snapshot=lambda snapshot: None,
        fleet=fleet,
    )


def test_the_local_fleet_costs_nothing_and_has_no_machines(tmp_path: Path) -> None:
    local = LocalFleet.from_clients(AwsClients(boto3.session.Session(), "us-east-1"), None)
    assert local.cost_estimate(100) is None and local.cost(local.handle_for("r1")) is None

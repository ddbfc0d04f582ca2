"""A batch's cost on the spot-fleet backend against in-process moto: the estimate from the Spot price
history, and the machine time and cost of machines a real moto Spot Fleet launched.

moto's Spot price history is fixed: one record per Availability Zone that offers the type in the
region (moto's instance-type offerings), each "Linux/UNIX (Amazon VPC)" at SpotPrice "0.00001" with
the Timestamp 2006-01-02T15:04:05Z, whatever StartTime, EndTime or ProductDescriptions ask. A type it
does not offer (z9.huge) has no record. Expected figures are computed from those records.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from prefect_distributed.core.aws import ec2, launch_template
from prefect_distributed.core.aws.spot_pricing import SpotPrice, spot_prices
from prefect_distributed.core.cost import budget_exceeded, estimate_cost, measure_cost
from tests.test_spot_fleet import TAGS, fleet_file, request_for

pytestmark = pytest.mark.usefixtures("aws_mock")

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def moto_prices(client: Any, kind: str) -> dict[str, float]:
    """The Spot price by zone as moto's history holds it, read without the code under test."""
    history = client.describe_spot_price_history(InstanceTypes=[kind])["SpotPriceHistory"]
    return {record["AvailabilityZone"]: float(record["SpotPrice"]) for record in history}


def launch_fleet(client: Any, run_id: str, kind: str, machines: int) -> list[dict[str, Any]]:
    """A moto Spot Fleet of `machines` of one type, launched as the backend does, and its instances."""
    tags = {**TAGS, "run-id": run_id}
    data = launch_template.launch_template_data(
        fleet_file(), ebs_volume_gb=30, cluster="c", image_id="ami-1", tags=tags
    )
    template = launch_template.ensure_launch_template(client, f"distributed-{run_id}-{kind}", data, tags)
    fleet_id = ec2.request_fleet(
        client,
        request_for(
            fleet_file(), launch_template=template, run_id=run_id, machine_types=(kind,), machines=machines, tags=tags
        ),
    )
    ids = sorted(ec2.fleet_instance_ids(client, fleet_id))
    return [i for r in client.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]


def hours_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600


def rewrite_reasons(client: Any, reasons: dict[str, str]) -> None:
    """moto writes the wall-clock time of the TerminateInstances call into StateTransitionReason (as
    "... UTC"), so a machine cannot have run 30 minutes in a test without waiting for them. This
    after-call handler, on this client only, rewrites the reason of the given instances as EC2 does."""

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                if instance["InstanceId"] in reasons:
                    instance["StateTransitionReason"] = reasons[instance["InstanceId"]]

    client.meta.events.register("after-call.ec2.DescribeInstances", rewrite)


def count_calls(client: Any) -> list[str]:
    calls: list[str] = []
    client.meta.events.register("before-call.ec2", lambda model, **_: calls.append(model.name))
    return calls


# Current prices and the estimate


def test_spot_prices_hold_the_price_of_every_zone_with_the_lowest_and_highest() -> None:
    client = boto3.client("ec2")
    prices = spot_prices(client, ["m5.xlarge", "c5.2xlarge"], now=NOW)
    assert set(prices) == {"m5.xlarge", "c5.2xlarge"}
    for kind, price in prices.items():
        expected = moto_prices(client, kind)
        assert len(expected) > 1  # several zones
        assert price.by_zone == expected
        assert (price.low, price.high) == (min(expected.values()), max(expected.values()))
        assert price.as_of == NOW


@pytest.mark.parametrize(("jobs", "rounds"), [(400, 10), (401, 11), (0, 0)])
def test_the_estimate_is_machines_times_price_times_rounds_of_jobs(jobs: int, rounds: int) -> None:
    client = boto3.client("ec2")
    prices = spot_prices(client, ["m5.xlarge", "c5.xlarge"], now=NOW)
    estimate = estimate_cost(
        prices,
        machines=10,
        machine_types=["m5.xlarge", "c5.xlarge"],
        max_price_usd_per_hour=0.5,
        jobs=jobs,
        slots_per_machine=4,
        job_minutes=12,
    )
    every_price = [*moto_prices(client, "m5.xlarge").values(), *moto_prices(client, "c5.xlarge").values()]
    low, high = 10 * min(every_price), 10 * max(every_price)
    hours = rounds * 12 / 60  # rounds = ceil(jobs / (10 machines * 4 slots))
    assert rounds == math.ceil(jobs / 40)
    assert (estimate.usd_per_hour.low, estimate.usd_per_hour.high) == pytest.approx((low, high))
    assert estimate.hours == pytest.approx(hours)
    assert (estimate.total_usd.low, estimate.total_usd.high) == pytest.approx((low * hours, high * hours))
    assert estimate.unpriced_types == []
    assert f"{jobs} jobs on 40 slots → {rounds} round(s)" in "\n".join(estimate.assumptions)
    assert "spot price history at 2026-11-28T12:00:00Z" in estimate.assumptions[0]
    assert estimate.text.startswith("Estimated cost: $0.0001/h for 10 machine(s)")


def test_the_range_runs_from_the_cheapest_type_and_zone_to_the_dearest_each_capped_by_the_max_price() -> None:
    """Prices built by hand: moto's history has one price for every zone, so no range."""
    prices = {
        "m5.xlarge": SpotPrice(instance_type="m5.xlarge", by_zone={"a": 0.0712, "b": 0.0851}, as_of=NOW),
        "c5.xlarge": SpotPrice(instance_type="c5.xlarge", by_zone={"a": 0.05, "b": 0.2}, as_of=NOW),
    }
    estimate = estimate_cost(
        prices,
        machines=10,
        machine_types=["m5.xlarge", "c5.xlarge"],
        max_price_usd_per_hour=0.1,
        jobs=400,
        slots_per_machine=4,
        job_minutes=None,
    )
    # cheapest: c5.xlarge in a at 0.05; dearest: c5.xlarge in b at 0.2, capped to 0.1
    assert (estimate.usd_per_hour.low, estimate.usd_per_hour.high) == pytest.approx((0.5, 1.0))
    assert (estimate.hours, estimate.total_usd) == (None, None)
    assert estimate.assumptions[0] == (
        "m5.xlarge: $0.0712–0.0851/h per machine "
        "(lowest–highest of 2 AZ(s), spot price history at 2026-11-28T12:00:00Z)"
    )
    assert "c5.xlarge counted at fleet.max_price_usd_per_hour ($0.1/h) at most" in estimate.assumptions[2]
    assert estimate.text == "Estimated cost: $0.50–1.00/h for 10 machine(s) (job duration not given: no total)"


def test_a_max_price_below_the_spot_price_caps_the_estimate_and_says_no_machine_can_start() -> None:
    client = boto3.client("ec2")
    price = min(moto_prices(client, "m5.xlarge").values())
    estimate = estimate_cost(
        spot_prices(client, ["m5.xlarge"], now=NOW),
        machines=4,
        machine_types=["m5.xlarge"],
        max_price_usd_per_hour=price / 2,
        jobs=8,
        slots_per_machine=2,
        job_minutes=30,
    )
    assert estimate.usd_per_hour.high == pytest.approx(4 * price / 2)
    assert estimate.total_usd.high == pytest.approx(4 * price / 2 * 0.5)  # 8 jobs on 8 slots: 1 round of 30 min
    assert any("no m5.xlarge machine can start" in line for line in estimate.assumptions)


def test_a_type_without_price_history_is_named_and_left_out_without_failing() -> None:
    client = boto3.client("ec2")
    prices = spot_prices(client, ["m5.xlarge", "z9.huge"], now=NOW)
    assert set(prices) == {"m5.xlarge"}
    values: dict[str, Any] = dict(machines=2, max_price_usd_per_hour=1.0, jobs=4, slots_per_machine=2, job_minutes=60)
    partly = estimate_cost(prices, machine_types=["z9.huge", "m5.xlarge"], **values)
    assert partly.unpriced_types == ["z9.huge"]
    assert partly.usd_per_hour.high == pytest.approx(2 * max(moto_prices(client, "m5.xlarge").values()))
    assert any(line.startswith("z9.huge: no spot price history") for line in partly.assumptions)
    assert partly.text.endswith("; no spot price for z9.huge")
    nothing = estimate_cost(prices, machine_types=["z9.huge"], **values)
    assert (nothing.usd_per_hour, nothing.total_usd, nothing.hours) == (None, None, 1.0)
    assert nothing.text == "Estimated cost: unknown, no spot price for z9.huge"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        spot_prices(boto3.client("ec2"), ["m5.xlarge"], now=datetime(2026, 11, 28, 12))


# Machine time and cost of a run


def test_a_run_s_machines_are_counted_from_launch_to_now_at_their_zone_s_price_in_two_calls() -> None:
    client = boto3.client("ec2")
    instances = launch_fleet(client, "r1", "m5.xlarge", 3)
    launch_fleet(client, "r2", "m5.xlarge", 2)  # another run's machines are not counted
    now = max(i["LaunchTime"] for i in instances) + timedelta(hours=2)
    zone_prices = moto_prices(client, "m5.xlarge")
    hours = [hours_between(i["LaunchTime"], now) for i in instances]
    usd = sum(h * zone_prices[i["Placement"]["AvailabilityZone"]] for h, i in zip(hours, instances, strict=True))
    calls = count_calls(client)
    report = measure_cost(client, "r1", now=now)
    assert calls == ["DescribeInstances", "DescribeSpotPriceHistory"]
    assert report.machines == 3
    assert report.instance_hours == pytest.approx(sum(hours))
    assert sum(hours) == pytest.approx(6.0, abs=0.01)  # launched within the same second or two
    assert report.total_usd == pytest.approx(usd)
    [row] = report.by_type
    assert (row.instance_type, row.machines, row.unpriced_hours) == ("m5.xlarge", 3, 0.0)
    assert (row.hours, row.usd) == pytest.approx((sum(hours), usd))
    assert report.text.startswith("Run r1: 3 machine(s), 6.0 instance-hours, $0.00006 so far (m5.xlarge: 3 machine(s)")


def test_terminated_machines_count_up_to_their_termination_and_types_are_kept_apart() -> None:
    client = boto3.client("ec2")
    instances = launch_fleet(client, "r1", "m5.xlarge", 2) + launch_fleet(client, "r1", "c5.2xlarge", 1)
    gone = instances[0]
    client.terminate_instances(InstanceIds=[gone["InstanceId"]])
    ended = gone["LaunchTime"] + timedelta(minutes=30)
    rewrite_reasons(client, {gone["InstanceId"]: f"User initiated ({ended:%Y-%m-%d %H:%M:%S} GMT)"})
    now = max(i["LaunchTime"] for i in instances) + timedelta(hours=2)
    report = measure_cost(client, "r1", now=now)
    m5_hours = 0.5 + hours_between(instances[1]["LaunchTime"], now)
    c5_hours = hours_between(instances[2]["LaunchTime"], now)
    assert [(t.instance_type, t.machines) for t in report.by_type] == [("c5.2xlarge", 1), ("m5.xlarge", 2)]
    assert [t.hours for t in report.by_type] == pytest.approx([c5_hours, m5_hours])
    assert report.instance_hours == pytest.approx(4.5, abs=0.01)
    assert report.machines == 3


def test_moto_s_own_termination_reason_is_read() -> None:
    client = boto3.client("ec2")
    instances = launch_fleet(client, "r1", "m5.xlarge", 2)
    client.terminate_instances(InstanceIds=[instances[0]["InstanceId"]])  # "User initiated (<now> UTC)"
    now = max(i["LaunchTime"] for i in instances) + timedelta(hours=2)
    report = measure_cost(client, "r1", now=now)
    # the terminated machine ran for the test's few seconds, not the 2 hours to `now`
    assert report.instance_hours == pytest.approx(hours_between(instances[1]["LaunchTime"], now), abs=0.01)


def test_a_terminated_machine_without_a_time_in_its_reason_is_counted_to_now() -> None:
    client = boto3.client("ec2")
    instances = launch_fleet(client, "r1", "m5.xlarge", 2)
    client.terminate_instances(InstanceIds=[instances[0]["InstanceId"]])
    rewrite_reasons(client, {instances[0]["InstanceId"]: "Server.SpotInstanceTermination"})
    now = max(i["LaunchTime"] for i in instances) + timedelta(hours=2)
    report = measure_cost(client, "r1", now=now)
    assert report.instance_hours == pytest.approx(sum(hours_between(i["LaunchTime"], now) for i in instances))
    assert "1 stopped machine(s) with no time in StateTransitionReason: counted to" in report.assumptions[2]


def price_record(zone: str, usd: str, since: datetime) -> dict[str, Any]:
    return {
        "InstanceType": "m5.xlarge",
        "AvailabilityZone": zone,
        "SpotPrice": usd,
        "ProductDescription": "Linux/UNIX",
        "Timestamp": since,
    }


def inject_price_change(client: Any, zone: str, launched: datetime, *, before: bool) -> list[dict[str, Any]]:
    """moto's history holds one fixed record per zone and ignores StartTime, so it cannot show a price
    change: this before-call handler, on this client only, answers as EC2 does: $0.05 from an hour
    before launch (when `before`), $0.08 from an hour after, and $0.50 in another zone. Returns the
    parameters of each call."""
    hour = timedelta(hours=1)
    records = [price_record(zone, "0.080000", launched + hour), price_record("us-east-1z", "0.500000", launched - hour)]
    if before:
        records.append(price_record(zone, "0.050000", launched - hour))
    asked: list[dict[str, Any]] = []
    client.meta.events.register(
        "before-parameter-build.ec2.DescribeSpotPriceHistory", lambda params, **_: asked.append(dict(params))
    )

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://ec2.us-east-1.amazonaws.com", 200, {}, None), {"SpotPriceHistory": records}

    client.meta.events.register("before-call.ec2.DescribeSpotPriceHistory", answer)
    return asked


@pytest.mark.parametrize(
    ("prices_at", "before", "price"),
    [("launch", True, 0.05), ("now", True, 0.08), ("launch", False, 0.08)],
    ids=["at-launch", "now", "no-price-at-launch-falls-back-to-now"],
)
def test_machines_are_priced_at_their_zone_s_price_at_launch_or_now(prices_at: str, before: bool, price: float) -> None:
    client = boto3.client("ec2")
    [instance] = launch_fleet(client, "r1", "m5.xlarge", 1)
    launched = instance["LaunchTime"]
    asked = inject_price_change(client, instance["Placement"]["AvailabilityZone"], launched, before=before)
    now = launched + timedelta(hours=3)
    report = measure_cost(client, "r1", now=now, prices_at=prices_at)
    assert report.total_usd == pytest.approx(3 * price)
    assert asked[0]["StartTime"] == (launched if prices_at == "launch" else now)
    assert asked[0]["EndTime"] == now


def test_a_type_without_price_history_counts_its_hours_but_not_in_the_total() -> None:
    client = boto3.client("ec2")
    [instance] = launch_fleet(client, "r1", "m5.xlarge", 1)
    client.meta.events.register(  # moto has a record for every type it knows; EC2 may have none
        "before-call.ec2.DescribeSpotPriceHistory",
        lambda **_: (AWSResponse("https://ec2.us-east-1.amazonaws.com", 200, {}, None), {"SpotPriceHistory": []}),
    )
    report = measure_cost(client, "r1", now=instance["LaunchTime"] + timedelta(hours=1))
    assert (report.instance_hours, report.total_usd, report.unpriced_types) == (1.0, 0.0, ["m5.xlarge"])
    assert report.by_type[0].unpriced_hours == 1.0
    assert "m5.xlarge: no spot price history: its hours are not in the total" in report.assumptions


def test_a_run_without_machines_has_cost_nothing_after_one_call() -> None:
    client = boto3.client("ec2")
    calls = count_calls(client)
    report = measure_cost(client, "r9", now=NOW)
    assert (report.machines, report.instance_hours, report.total_usd, report.by_type) == (0, 0, 0, [])
    assert calls == ["DescribeInstances"]
    assert report.text == "Run r9: 0 machine(s), 0 instance-hours, $0 so far"


def test_the_budget_is_exceeded_once_the_spending_reaches_it() -> None:
    client = boto3.client("ec2")
    [instance] = launch_fleet(client, "r1", "m5.xlarge", 1)
    report = measure_cost(client, "r1", now=instance["LaunchTime"] + timedelta(hours=10))
    spent = 10 * moto_prices(client, "m5.xlarge")[instance["Placement"]["AvailabilityZone"]]
    assert report.total_usd == pytest.approx(spent)
    assert budget_exceeded(report.total_usd, report.total_usd)
    assert not budget_exceeded(report.total_usd, spent * 1.01)

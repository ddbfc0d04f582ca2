"""Figure 6, simulation: what a batch costs and how long it takes, 1,000 to 1,000,000 jobs, ours beside DS.

No AWS account is reachable here, so machine time is measured on a discrete-event simulation
(`sim_model.py`) that runs our own monitor loop and policy (`sim_monitors.py`) and, on the same
batch, Distributed-Something's monitor and idle alarms. Every figure is a ratio against a lower
bound: the makespan against max(job-seconds / slots, the longest job) + boot, the paid slot-seconds
(machine-seconds x slots per machine) against the job-seconds. The assumptions are in
benchmarks/README.md ("The simulation").

    .venv/bin/python -m benchmarks.bench_simulation [--quick] [--plot benchmarks/simulation.png]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Figure, report
from benchmarks.sim_monitors import BatchResult, run_ds, run_ours
from benchmarks.sim_scenario import Scenario, job_durations
from prefect_distributed.core.aws.spot_pricing import SpotPrice
from prefect_distributed.core.cost import estimate_cost

COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_simulation"
PLOT = Path(__file__).resolve().parent / "simulation.png"
HEADLINE = Scenario(jobs=100_000, machines=1_000)
TARGET = Scenario(jobs=10_000, machines=100)  # the targets' batch: lognormal, spread 0.5, no interruptions
# Beside TARGET, one thing changed at a time.
VARIANTS: dict[str, dict[str, object]] = {
    "lognormal, spread 0.5": {},
    "lognormal, spread 1.0": {"spread": 1.0},
    "heavy tail (Pareto, shape 2.5)": {"distribution": "pareto", "spread": 2.5},
    "4 slots per machine": {"slots_per_machine": 4},
    "Spot interruptions 0.05 / machine-hour": {"interruptions_per_hour": 0.05},
    "80 % of the machines, arriving over 15 min": {"capacity_fraction": 0.8, "capacity_delay_s": 900.0},
    "5 % of attempts fail (3 tries)": {"failure_rate": 0.05},
}
# What would change a figure that misses or lags: ours only.
CHANGES: dict[str, dict[str, object]] = {
    "settle_polls 2": {"settle_polls": 2},
    "4 slots per machine, protection dropped as each job ends": {
        "slots_per_machine": 4,
        "drop_protection_when_idle": True,
    },
}
BACKENDS: dict[str, dict[str, object]] = {
    "spot-fleet": {},
    "ec2-spot": {"backend": "ec2-spot"},
    "fargate": {"backend": "fargate", "boot_s": 40.0, "boot_jitter_s": 20.0},
}
PLOT_BATCH = TARGET.model_copy(update={"slots_per_machine": 4, "spread": 1.0})
GROWTH = [(1_000, 10), (1_000, 1_000), (10_000, 10), (10_000, 100), (10_000, 1_000), (100_000, 100), (100_000, 1_000)]
GROWTH_FULL = [*GROWTH, (1_000_000, 1_000)]
TARGET_PAID_RATIO, TARGET_ESTIMATE_ERROR = 1.10, 0.15
MACHINE_TYPE = "m5.xlarge"
BUDGET_USD = 5_000.0  # stops the 1,000,000-job batch (about $13,000) part way


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h"


def row(name: str, ours: BatchResult, ds: BatchResult | None = None) -> str:
    """One markdown row: ours, then DS's where it was run beside."""
    complete = ours.stop == "complete"  # a batch stopped early has no bound to compare with
    estimated = complete and ours.scenario.backend == "spot-fleet"
    cells = [
        name,
        f"{ours.makespan_ratio:.3f}" if complete else "-",
        f"{ours.paid_ratio:.3f}" if complete else "-",
        f"{ours.idle_tail_s:,.0f} s" if complete else "-",
        f"{ours.lost_to_interruptions_s / ours.job_s:.2%}",
        f"${ours.cost_usd:,.2f}",
        f"{logged_estimate(ours.scenario) / ours.cost_usd - 1:+.1%}" if estimated else "-",
        ours.stop if complete else ours.stop.split(":")[0],
    ]
    if ds is None:
        cells += ["-"] * 5
    else:
        cells += [
            f"{ds.makespan_ratio:.3f}",
            f"{ds.paid_ratio:.3f}",
            f"{ds.idle_tail_s:,.0f} s",
            f"{(ds.lost_to_interruptions_s + ds.duplicate_s) / ds.job_s:.2%}",
            f"{ours.cost_usd / ds.cost_usd:.3f}",
        ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| batch | makespan ÷ bound | paid ÷ bound | idle tail | lost to interruptions | cost | estimate off by "
    "| monitor ended | DS makespan ÷ bound | DS paid ÷ bound | DS idle tail | DS lost (interruptions + runs twice) "
    "| cost ours ÷ DS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table(title: str, rows: Sequence[str]) -> str:
    text = "\n".join([f"\n### {title}\n", TABLE_HEAD, *rows])
    print(text, flush=True)
    return text


def logged_estimate(scenario: Scenario) -> float:
    """The estimate the run logs before its fleet starts (core.cost.estimate_cost), at the same price."""
    price = SpotPrice(
        instance_type=MACHINE_TYPE, by_zone={"us-east-1a": scenario.usd_per_machine_hour}, as_of=datetime.now(UTC)
    )
    estimate = estimate_cost(
        {MACHINE_TYPE: price},
        machines=scenario.machines,
        machine_types=(MACHINE_TYPE,),
        max_price_usd_per_hour=scenario.usd_per_machine_hour,
        jobs=scenario.jobs,
        slots_per_machine=scenario.slots_per_machine,
        job_minutes=scenario.mean_job_s / 60,
    )
    assert estimate.total_usd is not None  # a price and a job duration were given
    return estimate.total_usd.low


def plot(ours: BatchResult, ds: BatchResult, path: Path) -> str:
    """Busy and paid slots over time, ours beside DS's: the whole batch, then its last two hours."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    end_h = max(result.timeline[-1][0] for result in (ours, ds)) / 3600
    figure, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row")
    names = ("ours", "Distributed-Something (busy: jobs run twice included)")
    for column, (result, name) in enumerate(zip((ours, ds), names, strict=True)):
        hours = [at_s / 3600 for at_s, _, _ in result.timeline]
        for top, axis in ((True, axes[0][column]), (False, axes[1][column])):
            axis.step(hours, [paid for _, _, paid in result.timeline], where="post", label="paid slots")
            axis.step(hours, [busy for _, busy, _ in result.timeline], where="post", label="busy slots")
            axis.set_xlim(0 if top else max(0.0, end_h - 2), end_h)
            axis.set_xlabel("hours since the fleet was requested")
            axis.grid(alpha=0.3)
        axes[0][column].set_title(
            f"{name}\npaid ÷ bound {result.paid_ratio:.3f}, idle tail {result.idle_tail_s:,.0f} s, "
            f"${result.cost_usd:,.2f}",
            fontsize=10,
        )
    axes[0][0].set_ylabel("slots (whole batch)")
    axes[1][0].set_ylabel("slots (last two hours)")
    axes[0][0].legend(loc="lower left")
    s = ours.scenario
    figure.suptitle(
        f"{s.jobs:,} jobs ({s.distribution}, mean {s.mean_job_s:.0f} s, spread {s.spread}) on {s.machines} machines "
        f"x {s.slots_per_machine} slots, simulated"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return f"plot written to {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="growth table without the 1,000,000-job batch")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"where the PNG goes (default {PLOT})")
    args = parser.parse_args()

    started = time.perf_counter()
    headline = run_ours(HEADLINE)
    headline_s = time.perf_counter() - started
    headline_ds = run_ds(HEADLINE)

    target, target_ds = run_ours(TARGET), run_ds(TARGET)
    estimate = logged_estimate(TARGET)
    estimate_error = abs(estimate - target.cost_usd) / target.cost_usd
    tail_limit = 2 * TARGET.poll_interval_s + TARGET.shutdown_s

    variants = []
    for name, change in VARIANTS.items():
        scenario = TARGET.model_copy(update=change)
        variants.append(row(name, run_ours(scenario), run_ds(scenario)))
    heavy = TARGET.model_copy(update=VARIANTS["heavy tail (Pareto, shape 2.5)"])
    longest_first = run_ours(heavy, durations=sorted(job_durations(heavy), reverse=True))
    variants.append(row("heavy tail, longest jobs first (ours only)", longest_first))
    for name, change in CHANGES.items():
        variants.append(row(f"{name} (ours only)", run_ours(TARGET.model_copy(update=change))))
    backends = []
    for name, change in BACKENDS.items():
        for rate in (0.0, 0.05):
            scenario = TARGET.model_copy(update={**change, "interruptions_per_hour": rate})
            label = f"{name}" + (f", {rate} interruptions / machine-hour" if rate else "")
            backends.append(row(label, run_ours(scenario)))
    growth = []
    for jobs, machines in GROWTH if args.quick else GROWTH_FULL:
        scenario = Scenario(jobs=jobs, machines=machines)
        ours = run_ours(scenario)
        growth.append(row(f"{jobs:,} jobs, {machines:,} machines ({_hours(ours.makespan_s)})", ours, run_ds(scenario)))
    few_per_machine = Scenario(jobs=1_000, machines=1_000, drop_protection_when_idle=True)
    label = "1,000 jobs, 1,000 machines, protection dropped as each job ends (ours only)"
    growth.append(row(label, run_ours(few_per_machine)))
    if not args.quick:
        stopped = run_ours(Scenario(jobs=1_000_000, machines=1_000, budget_usd=BUDGET_USD))
        label = f"1,000,000 jobs, 1,000 machines, fleet.budget_usd ${BUDGET_USD:,.0f}"
        growth.append(row(f"{label}: {stopped.unfinished:,} unfinished (ours only)", stopped))

    tables = [
        table(f"The reference batch: {TARGET.jobs:,} jobs, {TARGET.machines} machines, one thing changed at a time",
              variants),
        table(f"Backends, {TARGET.jobs:,} jobs on {TARGET.machines} machines (slots)", backends),
        table("Growth (lognormal, mean 600 s, spread 0.5, one slot per machine)", growth),
    ]
    plot_note = plot(run_ours(PLOT_BATCH), run_ds(PLOT_BATCH), args.plot)
    print(plot_note)

    figures = [
        Figure(
            figure=f"Simulate {HEADLINE.jobs:,} jobs on {HEADLINE.machines:,} machines (our monitor's own code)",
            target="< 60 s",
            measured=f"{headline_s:.1f} s; makespan {headline.makespan_ratio:.3f}x its bound, "
            f"paid {headline.paid_ratio:.3f}x the job-seconds, ${headline.cost_usd:,.0f}",
            baseline=f"DS: paid {headline_ds.paid_ratio:.3f}x, ${headline_ds.cost_usd:,.0f}",
            ratio=f"{headline_ds.cost_usd / headline.cost_usd:.3f}x",
            met=headline_s < 60,
            command=COMMAND_LINE,
        ),
        Figure(
            figure=f"Paid machine-seconds ÷ bound, {TARGET.jobs:,} jobs on {TARGET.machines} machines "
            "(lognormal, spread 0.5, no interruptions)",
            target=f"<= {TARGET_PAID_RATIO:.2f}",
            measured=f"{target.paid_ratio:.3f} (${target.cost_usd:,.2f})",
            baseline=f"DS {target_ds.paid_ratio:.3f} (${target_ds.cost_usd:,.2f})",
            ratio=f"{target_ds.cost_usd / target.cost_usd:.3f}x",
            met=target.paid_ratio <= TARGET_PAID_RATIO,
            command=COMMAND_LINE,
        ),
        Figure(
            figure=f"Idle tail (last job done → last machine gone), same batch, poll {TARGET.poll_interval_s:g} s, "
            f"settle_polls {TARGET.settle_polls}",
            target=f"< 2 polls + shutdown = {tail_limit:g} s",
            measured=f"{target.idle_tail_s:,.0f} s",
            baseline=f"DS {target_ds.idle_tail_s:,.0f} s (60 s polls, one zero reading ends its run)",
            ratio="-",
            met=target.idle_tail_s < tail_limit,
            command=COMMAND_LINE,
        ),
        Figure(
            figure="The cost estimate logged before the fleet starts, against the simulated cost (same batch)",
            target=f"within {TARGET_ESTIMATE_ERROR:.0%}",
            measured=f"estimate ${estimate:,.2f} vs simulated ${target.cost_usd:,.2f}: {estimate_error:.1%} off",
            baseline="-",
            ratio="-",
            met=estimate_error <= TARGET_ESTIMATE_ERROR,
            command=COMMAND_LINE,
        ),
    ]
    report(
        "Simulation",
        figures,
        {"tables": tables},
        notes=[plot_note, "ratios: lower is better; 1.000 is the bound; 'cost ours ÷ DS' below 1 means we pay less"],
    )


if __name__ == "__main__":
    main()

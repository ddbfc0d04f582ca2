"""Figure 1, enqueue: Distributed-Something's method against ours in the same run, then ours at scale.

DS (`run.py submitJob`): `json.load` the job file, then one SendMessage per job from one thread.
Ours (the enqueue step): stream the checked job file, build each job's message body, and send
them by SendMessageBatch (ten, or fewer when ten would pass 1 MiB) with `send_messages_concurrently`.
The same comparison runs on a file of mixed sizes (one job in four carries 400 KB), where batches
split by count alone would fail with BatchRequestTooLong.

Both talk to the same simulated SQS (`common.SimulatedSqs`: every send answered after a fixed
round trip), because real SQS is bound by round trips and moto slows down with queue depth. What
is sent is checked separately on in-process moto at a small N. API calls are counted with
botocore's `before-call` event.

    .venv/bin/python -m benchmarks.bench_enqueue [--compare-jobs 2000] [--jobs 100000] [--moto-jobs 1000]
        [--mixed-jobs 400]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from botocore.client import BaseClient
from pydantic import BaseModel

from benchmarks.common import (
    COMMAND,
    CallCounter,
    Figure,
    clients,
    fake_credentials,
    ratio,
    report,
    simulated_sqs_client,
    write_job_file,
)
from prefect_distributed.core.aws.sqs import batches
from prefect_distributed.core.aws.sqs_send import DEFAULT_THREADS, send_messages_concurrently
from prefect_distributed.core.jobs import JobFileCheck, JobMessage, check_jobs, reread_jobs

RUN_ID = "00000000-0000-4000-8000-000000000000"  # as long as a Prefect flow-run id
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/bench-jobs"
COMMAND_LINE = ".venv/bin/python -m benchmarks.bench_enqueue"
# The mixed-size file: one job in LARGE_EVERY carries LARGE_BYTES, so ten in a row pass 1 MiB.
LARGE_EVERY = 4
LARGE_BYTES = 400_000


class EnqueueRun(BaseModel):
    """One method sending one job file."""

    method: str
    jobs: int
    seconds: float
    calls: dict[str, int]

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


class MotoCheck(BaseModel):
    """What arrived on moto compared with what was sent."""

    jobs: int
    sent: int
    calls: dict[str, int]
    batches: int
    arrived_once_intact: bool

    @property
    def met(self) -> bool:
        calls = self.calls.get("SendMessageBatch")
        return self.arrived_once_intact and self.sent == self.jobs and calls == self.batches


def ds_enqueue(sqs: BaseClient, path: Path) -> int:
    """Distributed-Something's submitJob: the whole file in memory, one SendMessage per job."""
    with path.open() as handle:
        job_info = json.load(handle)
    template = {key: value for key, value in job_info.items() if key != "groups" and "_comment" not in key}
    for group in job_info["groups"]:
        template["group"] = group
        sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps(template))
    return len(job_info["groups"])


def our_bodies(checked: JobFileCheck) -> Iterator[str]:
    """What the enqueue step sends: each job of the checked file as its message body, streamed."""
    return (JobMessage.for_job(job, RUN_ID).body() for job in reread_jobs(checked, COMMAND))


def timed_run(method: str, send: Callable[[BaseClient], int], round_trip_s: float) -> EnqueueRun:
    sqs, counter = simulated_sqs_client(round_trip_s)
    started = time.perf_counter()
    sent = send(sqs)
    return EnqueueRun(method=method, jobs=sent, seconds=time.perf_counter() - started, calls=dict(counter.counts))


def ours_run(checked: JobFileCheck, threads: int, round_trip_s: float) -> EnqueueRun:
    return timed_run(
        f"ours: SendMessageBatch, {threads} threads",
        lambda sqs: send_messages_concurrently(sqs, QUEUE_URL, our_bodies(checked), threads=threads),
        round_trip_s,
    )


def check_on_moto(checked: JobFileCheck, threads: int) -> MotoCheck:
    """Send the file's jobs to in-process moto and compare what the queue holds with what was sent."""
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    expected = list(our_bodies(checked))
    with mock_aws():
        sqs = clients().client("sqs")
        url = sqs.create_queue(QueueName="bench-correctness")["QueueUrl"]
        counter = CallCounter().attach(sqs)
        sent = send_messages_concurrently(sqs, url, iter(expected), threads=threads)
        # Read from moto's store: ReceiveMessage rescans the whole queue on every call in moto.
        queue = sqs_backends[DEFAULT_ACCOUNT_ID][sqs.meta.region_name].queues["bench-correctness"]
        arrived = [message.body for message in queue._messages]
    return MotoCheck(
        jobs=len(expected),
        sent=sent,
        calls=dict(counter.counts),
        batches=sum(1 for _ in batches(expected)),
        arrived_once_intact=Counter(arrived) == Counter(expected),
    )


def mixed_size_figures(tmp: Path, jobs: int, threads: int, round_trip_s: float) -> tuple[list[Figure], dict]:
    """DS against ours on a file where one job in LARGE_EVERY weighs LARGE_BYTES, and that file on moto."""
    path = write_job_file(tmp / "mixed.json", jobs, large_every=LARGE_EVERY, large_bytes=LARGE_BYTES)
    checked = check_jobs(path, COMMAND)
    expected_calls = sum(1 for _ in batches(our_bodies(checked)))
    ds = timed_run("DS: SendMessage per job, 1 thread", lambda sqs: ds_enqueue(sqs, path), round_trip_s)
    ours = ours_run(checked, threads, round_trip_s)
    moto_path = write_job_file(tmp / "mixed-moto.json", 100, large_every=LARGE_EVERY, large_bytes=LARGE_BYTES)
    moto = check_on_moto(check_jobs(moto_path, COMMAND), threads)
    our_calls = ours.calls.get("SendMessageBatch", 0)
    shape = f"1 in {LARGE_EVERY} of {LARGE_BYTES // 1000} KB"
    figures = [
        Figure(
            figure=f"Enqueue {jobs:,} mixed-size jobs ({shape}), {round_trip_s * 1000:g} ms simulated round trip",
            target=f">= 3x faster than DS; batches of <= 10 messages and <= 1 MiB: {expected_calls} calls",
            measured=f"{ours.seconds:.2f} s, {our_calls} calls ({ours.jobs_per_s:,.0f} jobs/s)",
            baseline=f"DS {ds.seconds:.1f} s, {ds.calls.get('SendMessage', 0):,} calls ({ds.jobs_per_s:,.0f} jobs/s)",
            ratio=ratio(ours.seconds, ds.seconds),
            met=ds.seconds / ours.seconds >= 3 and our_calls == expected_calls and ours.jobs == jobs,
            command=COMMAND_LINE,
        ),
        Figure(
            figure=f"Enqueue {moto.jobs} mixed-size jobs ({shape}) on moto, which refuses batches over 1 MiB",
            target="all arrive once, intact; one call per size-split batch",
            measured=f"{moto.sent:,} sent, arrived once and intact: {moto.arrived_once_intact}, "
            f"{moto.calls.get('SendMessageBatch', 0)} calls (count alone: {math.ceil(moto.jobs / 10)})",
            baseline="-",
            ratio="-",
            met=moto.met,
            command=COMMAND_LINE,
        ),
    ]
    return figures, {"mixed_runs": [ds.model_dump(), ours.model_dump()], "mixed_moto": moto.model_dump()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-jobs", type=int, default=2_000, help="jobs for the side-by-side comparison")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs for ours alone")
    parser.add_argument("--moto-jobs", type=int, default=1_000, help="jobs for the correctness check on moto")
    parser.add_argument("--mixed-jobs", type=int, default=400, help="jobs of the mixed-size file (0: skip)")
    parser.add_argument("--round-trip-ms", type=float, default=20.0, help="simulated SQS round trip per call")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="our sender's threads")
    parser.add_argument(
        "--more-threads", type=int, default=16, help="ours alone once more with this many threads (0: skip)"
    )
    args = parser.parse_args()
    fake_credentials()
    round_trip_s = args.round_trip_ms / 1000

    with tempfile.TemporaryDirectory(prefix="bench-enqueue-") as tmp:
        small = write_job_file(Path(tmp) / "compare.json", args.compare_jobs)
        small_checked = check_jobs(small, COMMAND)
        ds = timed_run("DS: SendMessage per job, 1 thread", lambda sqs: ds_enqueue(sqs, small), round_trip_s)
        ours = ours_run(small_checked, args.threads, round_trip_s)
        moto = check_on_moto(check_jobs(write_job_file(Path(tmp) / "moto.json", args.moto_jobs), COMMAND), args.threads)

        big = write_job_file(Path(tmp) / "big.json", args.jobs)
        validate_started = time.perf_counter()
        big_checked = check_jobs(big, COMMAND)
        validate_s = time.perf_counter() - validate_started
        bodies_started = time.perf_counter()
        body_count = sum(1 for _ in our_bodies(big_checked))
        bodies_s = time.perf_counter() - bodies_started
        alone = ours_run(big_checked, args.threads, round_trip_s)
        more = ours_run(big_checked, args.more_threads, round_trip_s) if args.more_threads else None
        mixed, mixed_details = (
            mixed_size_figures(Path(tmp), args.mixed_jobs, args.threads, round_trip_s) if args.mixed_jobs else ([], {})
        )

    speedup = ds.seconds / ours.seconds
    our_calls = ours.calls.get("SendMessageBatch", 0)
    expected_calls = math.ceil(args.compare_jobs / 10)
    command = COMMAND_LINE
    figures = [
        Figure(
            figure=f"Enqueue {args.compare_jobs:,} jobs, {args.round_trip_ms:g} ms simulated round trip",
            target=f">= 40x faster than DS; SendMessageBatch calls = ceil(N/10) = {expected_calls}",
            measured=f"{ours.seconds:.2f} s, {our_calls} calls ({ours.jobs_per_s:,.0f} jobs/s)",
            baseline=f"DS {ds.seconds:.1f} s, {ds.calls.get('SendMessage', 0):,} calls ({ds.jobs_per_s:,.0f} jobs/s)",
            ratio=ratio(ours.seconds, ds.seconds),
            met=speedup >= 40 and our_calls == expected_calls and ours.calls.keys() == {"SendMessageBatch"},
            command=command,
        ),
        Figure(
            figure=f"Enqueue {args.jobs:,} jobs, ours alone, {args.round_trip_ms:g} ms simulated round trip",
            target="< 30 s",
            measured=f"{alone.seconds:.1f} s, {alone.calls.get('SendMessageBatch', 0):,} calls "
            f"({alone.jobs_per_s:,.0f} jobs/s)",
            baseline=f"DS's rate would take {args.jobs / ds.jobs_per_s:,.0f} s",
            ratio=ratio(alone.seconds, args.jobs / ds.jobs_per_s),
            met=alone.seconds < 30 and alone.jobs == args.jobs,
            command=command,
        ),
        Figure(
            figure=f"Enqueue {args.moto_jobs:,} jobs on moto: every job arrives once, body intact",
            target="all arrive once, intact; ceil(N/10) calls",
            measured=f"{moto.sent:,} sent, arrived once and intact: {moto.arrived_once_intact}, "
            f"{moto.calls.get('SendMessageBatch', 0)} calls",
            baseline="-",
            ratio="-",
            met=moto.met and moto.batches == math.ceil(moto.jobs / 10),
            command=command,
        ),
        *mixed,
    ]
    if more is not None:
        figures.append(
            Figure(
                figure=f"Enqueue {args.jobs:,} jobs, ours with {args.more_threads} threads (not the default: "
                f"needs max_pool_connections >= {args.more_threads})",
                target="-",
                measured=f"{more.seconds:.1f} s ({more.jobs_per_s:,.0f} jobs/s)",
                baseline=f"{args.threads} threads: {alone.seconds:.1f} s",
                ratio=ratio(more.seconds, alone.seconds),
                met=None,
                command=f"{command} --more-threads {args.more_threads}",
            )
        )
    report(
        "Enqueue",
        figures,
        {
            "runs": [run.model_dump() for run in (ds, ours, alone, more) if run is not None],
            "moto": moto.model_dump(),
            "validate_s": validate_s,
            "bodies_only_s": bodies_s,
            "bodies": body_count,
            **mixed_details,
        },
        notes=[
            f"validating the {args.jobs:,}-job file (the validate step, before enqueue) took {validate_s:.1f} s",
            (
                f"reading the file into {body_count:,} bodies without sending them takes {bodies_s:.1f} s; "
                "the rest of the enqueue time is botocore's CPU per call and the round trips"
            ),
            "the 100,000-job baseline is DS's measured rate extrapolated, not a run",
            (
                "the mixed-size file is bound by CPU, not round trips: each 400 KB job is parsed, hashed and "
                "serialised (by validate, and again by enqueue) while DS only pays one round trip per job"
            ),
        ],
    )


if __name__ == "__main__":
    main()

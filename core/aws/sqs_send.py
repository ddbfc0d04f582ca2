"""Sending jobs to SQS with several batches in flight.

SQS is bound by round trips (tens of milliseconds per call), not by CPU: one thread sending a
million jobs ten at a time waits 100,000 round trips end to end. Here a few threads share one
client (boto3 clients are thread-safe) and each sends whole batches (`sqs.batches`: at most ten
messages and 1 MiB in all) with `sqs.send_batch`, so
the re-sending of failed entries and the errors are exactly those of that function.

Threads are not free either: botocore spends 1.5-2 ms of CPU per call, under one GIL, so past
about ten threads a single process is bound by CPU (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from botocore.client import BaseClient

from prefect_distributed.core.aws.sqs import batches, send_batch

# One thread per connection of botocore's default pool (max_pool_connections=10): a thread beyond
# the pool would open, and then drop, a connection of its own for every call.
DEFAULT_THREADS = 10
# Batches queued per thread beyond the one it is sending: keeps every thread busy while bounding
# how many bodies are held in memory (threads x 2 batches of at most 10 messages and 1 MiB).
QUEUED_PER_THREAD = 1


def send_messages_concurrently(
    sqs: BaseClient, url: str, bodies: Iterable[str], *, threads: int = DEFAULT_THREADS
) -> int:
    """Send every body, in batches of ten or 1 MiB, `threads` calls at a time; returns how many were sent.

    Same contract as `sqs.send_batch`: failed entries are sent again, an entry that keeps
    failing or fails through the sender's fault raises AwsOperationError, and any error raises
    (after the calls already under way have ended, so nothing is still sending when this returns).
    `bodies` is read lazily: at most `threads * (1 + QUEUED_PER_THREAD)` batches are held at once.
    Messages may arrive in a different order than `bodies` (a standard queue keeps no order anyway).
    More `threads` than the client's `max_pool_connections` cost a new connection per call.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    limit = threads * (1 + QUEUED_PER_THREAD)
    sent = 0
    pending: set[Future[int]] = set()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqs-send") as pool:
        try:
            for batch in batches(bodies):
                if len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    sent += sum(future.result() for future in done)
                pending.add(pool.submit(send_batch, sqs, url, batch))
            done, pending = wait(pending)
            sent += sum(future.result() for future in done)
        except BaseException:
            # Batches not started yet are dropped; the pool's exit waits for those being sent.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sent

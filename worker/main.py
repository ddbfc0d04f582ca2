"""The worker process: configuration, logging, signals, and its threads.

Started as `python -m prefect_distributed.worker` (the local fleet) or by worker/entrypoint.py (the image).

Besides the worker loops: a resource monitor, per-job CloudWatch log streams and a Spot
interruption watcher, each when configured. Each loop thread gets its own boto3 clients, all made
here in the main thread from one session: using a client from several threads is safe, creating
clients from a shared session is not.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from types import FrameType
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError

from .core import ConfigError, WorkerSettings, settings_from_env
from .joblog import JobLogRouter
from .loop import Clients, WorkerLoop
from .resources import log_resources
from .spot import start_spot_watch

logger = logging.getLogger("worker")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(worker)s run=%(run_id)s job=%(job_id)s] %(message)s"
# Ends the User-Agent of every request the worker makes, so CloudTrail (and the test suite's
# emulator) tells the workers' calls from the flow's, which may use the same credentials.
USER_AGENT_EXTRA = "prefect-distributed-worker"


def make_clients(session: boto3.session.Session, settings: WorkerSettings) -> Clients:
    # The read timeout must outlast a long poll, or every empty poll would look like a failure.
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 5},
        read_timeout=30 + settings.wait_time_s,
        user_agent_extra=USER_AGENT_EXTRA,
    )
    return Clients(sqs=session.client("sqs", config=config), s3=session.client("s3", config=config))


def make_job_logs(
    session: boto3.session.Session, settings: WorkerSettings, log: logging.LoggerAdapter[Any]
) -> JobLogRouter | None:
    """The per-job log streams, attached to the worker's logger; None when they are not wanted."""
    if not settings.log_group:
        return None
    # Each attempt's last lines are sent before the loop takes the next job: short timeouts and one
    # retry keep an unreachable CloudWatch to seconds per job, and lines are never worth more.
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 2},
        connect_timeout=2,
        read_timeout=10,
        user_agent_extra=USER_AGENT_EXTRA,
    )
    router = JobLogRouter(session.client("logs", config=config), settings.log_group, log)
    logger.addHandler(router)
    return router


class _ContextDefaults(logging.Filter):
    """Fill the context fields for records that do not come through a loop's adapter (boto, main)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("worker", "run_id", "job_id"):
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


def configure_logging() -> None:
    """Every line carries the loop, run and job it is about; the environment is never logged."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_ContextDefaults())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # botocore's INFO lines (e.g. where credentials were found) are noise for a job log.
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start_watchers(settings: WorkerSettings, stop: threading.Event, log: logging.LoggerAdapter[Any]) -> None:
    """The daemon threads beside the loops: the Spot interruption watcher and the resource lines.

    The Spot watcher looks once before returning, so a worker started after the notice takes no job.
    """
    if settings.spot_watch:
        start_spot_watch(settings.imds_endpoint, stop, log)
    if settings.resource_log_s > 0:
        arguments = (settings.work_dir or tempfile.gettempdir(), settings.resource_log_s, stop, log)
        threading.Thread(target=log_resources, args=arguments, name="resources", daemon=True).start()


def main() -> int:
    """Run the worker loops until they all finish; 0 when they did, 2 for a bad configuration."""
    configure_logging()
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        logger.error("invalid configuration: %s", exc)
        return 2
    log = logging.LoggerAdapter(logger, {"worker": "main", "run_id": settings.run_id, "job_id": "-"})
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if settings.work_dir:
            os.makedirs(settings.work_dir, exist_ok=True)
        session = boto3.session.Session()
        job_logs = make_job_logs(session, settings, log)
        loops = [
            WorkerLoop(index, settings, make_clients(session, settings), stop, job_logs)
            for index in range(settings.processes)
        ]
    except OSError as exc:
        log.error("cannot create DISTRIBUTED_WORK_DIR: %s", exc)
        return 2
    except BotoCoreError as exc:  # e.g. no region configured
        log.error("cannot create AWS clients: %s", exc)
        return 2
    start_watchers(settings, stop, log)
    threads = [threading.Thread(target=loop.run, name=f"worker-loop-{loop.index}") for loop in loops]
    log.info("starting %d worker loop(s)", len(threads))
    for thread in threads:
        thread.start()
    # Join with a timeout so the main thread keeps running the signal handler promptly.
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    log.info("all worker loops finished")
    return 0

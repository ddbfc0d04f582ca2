"""Each job attempt's lines, also sent to a CloudWatch log stream named by the job's id.

With many workers, one job's lines are scattered over the logs of whichever workers tried it; a
stream per job puts every attempt's program output and the worker's own lines about that job in one
place. Lines are buffered and sent every few seconds and at the end of the attempt. Logging is a
convenience: a failure to send is reported once and never fails the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

# PutLogEvents limits: events and bytes per call, where each event counts its UTF-8 message plus 26
# bytes; one event may hold at most 256 KiB.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 256 * 1024
FLUSH_INTERVAL_S = 5.0
# A program that prints faster than CloudWatch takes it must not run the worker out of memory: past
# this much unsent output, lines are dropped from the stream (never from the worker's own log).
MAX_BUFFER_BYTES = 16 * MAX_BATCH_BYTES
# The stream already names the job and CloudWatch stamps the time; the worker and run tell attempts
# and reruns apart (a job keeps its id from run to run).
STREAM_FORMAT = "%(levelname)s [%(worker)s run=%(run_id)s] %(message)s"


class LogEvent(NamedTuple):
    """One line for PutLogEvents, with the size it counts for against the batch limit."""

    timestamp_ms: int
    message: str
    size: int


def log_event(timestamp_ms: int, message: str) -> LogEvent:
    """An event, its message cut to the size CloudWatch accepts (on a character boundary)."""
    encoded = message.encode("utf-8")
    limit = MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES
    if len(encoded) > limit:
        encoded = encoded[:limit]
        message = encoded.decode("utf-8", errors="ignore")
        encoded = message.encode("utf-8")
    return LogEvent(timestamp_ms, message, len(encoded) + EVENT_OVERHEAD_BYTES)


def batches(events: Iterable[LogEvent]) -> Iterator[list[dict[str, Any]]]:
    """PutLogEvents batches in time order, each within the event and byte limits.

    Lines come from several threads (program output, heartbeat, the loop), so the order they were
    buffered in may differ slightly from their timestamps; CloudWatch wants time order.
    """
    batch: list[dict[str, Any]] = []
    size = 0
    for event in sorted(events, key=lambda event: event.timestamp_ms):
        if batch and (len(batch) == MAX_BATCH_EVENTS or size + event.size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append({"timestamp": event.timestamp_ms, "message": event.message})
        size += event.size
    if batch:
        yield batch


def _error(exc: ClientError | BotoCoreError) -> str:
    """What went wrong, without the request (an error code, or botocore's own short message)."""
    return exc.response["Error"]["Code"] if isinstance(exc, ClientError) else str(exc)


def _create_if_missing(create: Callable[..., Any], **kwargs: str) -> None:
    try:
        create(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise


class JobLogStream:
    """One attempt's buffered lines and the thread that sends them every FLUSH_INTERVAL_S.

    Leaving the `with` block stops that thread and sends what is left, so the stream is complete
    when the attempt is over.
    """

    def __init__(self, logs: Any, group: str, name: str, report_failure: Callable[[str, str], None]) -> None:
        self._logs = logs
        self._group = group
        self._name = name
        self._report_failure = report_failure
        self._lock = threading.Lock()
        self._buffer: list[LogEvent] = []
        self._buffered_bytes = 0
        self._dropped = 0
        self._stream_ready = False
        self._closing = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._send_periodically, name="job-log-stream", daemon=True)

    def __enter__(self) -> JobLogStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._flush()

    def add(self, timestamp_ms: int, message: str) -> None:
        """Buffer a line; wakes the sender early when a full batch is waiting."""
        event = log_event(timestamp_ms, message)
        with self._lock:
            if self._buffered_bytes + event.size > MAX_BUFFER_BYTES:
                self._dropped += 1
                return
            self._buffer.append(event)
            self._buffered_bytes += event.size
            full = self._buffered_bytes >= MAX_BATCH_BYTES or len(self._buffer) >= MAX_BATCH_EVENTS
        if full:
            self._wake.set()

    def _send_periodically(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            if self._closing:  # __exit__ sends the rest itself
                return
            self._flush()

    def _take(self) -> list[LogEvent]:
        with self._lock:
            events, self._buffer, self._buffered_bytes = self._buffer, [], 0
            dropped, self._dropped = self._dropped, 0
        if dropped:
            note = f"[{dropped} line(s) left out of this stream: more output than CloudWatch took in time]"
            events.append(log_event(int(time.time() * 1000), note))
        return events

    def _flush(self) -> None:
        """Send everything buffered; what cannot be sent is dropped (logged once by the router)."""
        events = self._take()
        if not events:
            return
        try:
            self._ensure_stream()
            for batch in batches(events):
                self._logs.put_log_events(logGroupName=self._group, logStreamName=self._name, logEvents=batch)
        except (ClientError, BotoCoreError) as exc:
            self._report_failure(self._name, _error(exc))

    def _ensure_stream(self) -> None:
        """Create the stream (and its group, which setup normally made) unless it exists."""
        if self._stream_ready:
            return
        try:
            _create_if_missing(self._logs.create_log_stream, logGroupName=self._group, logStreamName=self._name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            _create_if_missing(self._logs.create_log_group, logGroupName=self._group)
            _create_if_missing(self._logs.create_log_stream, logGroupName=self._group, logStreamName=self._name)
        self._stream_ready = True


class JobLogRouter(logging.Handler):
    """A logging handler that hands each record about a job to that attempt's open stream.

    Records are told apart by the `worker` and `job_id` their loop's LoggerAdapter adds, so loops
    running side by side, even on the same job, each fill their own stream's buffer.
    """

    def __init__(self, logs: Any, group: str, log: logging.LoggerAdapter[Any]) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(STREAM_FORMAT))
        self._logs = logs
        self._group = group
        self._log = log
        self._streams: dict[tuple[str, str], JobLogStream] = {}
        self._streams_lock = threading.Lock()
        self._warned = False

    def emit(self, record: logging.LogRecord) -> None:
        key = (getattr(record, "worker", ""), getattr(record, "job_id", ""))
        with self._streams_lock:
            stream = self._streams.get(key)
        if stream is not None:
            stream.add(int(record.created * 1000), self.format(record))

    @contextmanager
    def stream(self, worker: str, job_id: str) -> Iterator[None]:
        """Inside this block, the loop `worker`'s lines about `job_id` also go to stream `<job_id>`."""
        key = (worker, job_id)
        with JobLogStream(self._logs, self._group, job_id, self._report_failure) as stream:
            with self._streams_lock:
                self._streams[key] = stream
            try:
                yield
            finally:
                with self._streams_lock:
                    del self._streams[key]

    def _report_failure(self, stream: str, error: str) -> None:
        """A WARNING the first time (e.g. no permission to write logs), DEBUG after: not once per job."""
        with self._streams_lock:
            first, self._warned = not self._warned, True
        level = logging.WARNING if first else logging.DEBUG
        self._log.log(
            level, "could not write to CloudWatch log stream %s/%s (%s); jobs go on", self._group, stream, error
        )

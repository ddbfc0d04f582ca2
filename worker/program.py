"""Running one job's program, and keeping its message invisible while it runs.

Both need a thread beside the worker loop: one pumps the program's output into the log, the other
extends the message's visibility. They live here so `worker.main` reads as the job's life cycle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from .core import OUTPUT_TAIL_LINES
from .output import READ_CHUNK_BYTES, SECRET_VARIABLES, OutputLines

# The variables that hold AWS keys, which boto3 and the AWS CLI read: the secret ones and the key's id.
AWS_KEY_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", *SECRET_VARIABLES})
# How long a terminated program gets to exit before it is killed.
TERMINATE_GRACE_S = 3.0
# How often a waiting loop looks at the stop event and the job's deadline.
_POLL_S = 0.2


@dataclass(frozen=True)
class ProgramResult:
    """How a program run ended. `exit_code` is None when the worker had to stop it."""

    exit_code: int | None
    timed_out: bool
    interrupted: bool
    output_tail: tuple[str, ...]


def _pump_output(stream: IO[bytes], lines: OutputLines, tail: deque[str], log: logging.LoggerAdapter[Any]) -> None:
    """Log every line of the program's output and keep the last few for the attempt record.

    Reads chunks as they come, never a whole line: a line is only as long as the program makes it.
    """
    with stream:
        while True:
            chunk = os.read(stream.fileno(), READ_CHUNK_BYTES)
            for line in lines.feed(chunk) if chunk else lines.close():
                tail.append(line)
                log.info("| %s", line)
            if not chunk:
                return


def program_environment(
    worker_env: Mapping[str, str], job_env: Mapping[str, str], *, pass_aws_credentials: bool
) -> dict[str, str]:
    """The program's environment: the worker's own, without its AWS keys unless asked, plus the job's.

    The worker needs keys to reach the queue where no role provides them (the local fleet, an
    emulator); the program does not, and a program that prints its environment would otherwise put
    them into logs and records. A task role (AWS_CONTAINER_CREDENTIALS_*) is no key and stays.
    """
    env = {name: value for name, value in worker_env.items() if pass_aws_credentials or name not in AWS_KEY_VARIABLES}
    env.update(job_env)
    return env


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the program's whole process group, so the children it started go too."""
    with contextlib.suppress(ProcessLookupError):  # it is gone already
        os.killpg(process.pid, signum)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    stop: threading.Event,
    log: logging.LoggerAdapter[Any],
    secrets: Sequence[str] = (),
) -> ProgramResult:
    """Run `argv` (no shell) to completion, until `timeout_s` (0: no limit), or until `stop` is set.

    The program gets its own session: a Ctrl-C at the terminal reaches the worker only, which then
    terminates the program's whole process group itself. Its output lines are cut at
    MAX_LINE_BYTES and `secrets` masked in them. Raises OSError when it cannot start.
    """
    process = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None  # stdout=PIPE
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    pump = threading.Thread(
        target=_pump_output, args=(process.stdout, OutputLines(secrets), tail, log), name="program-output", daemon=True
    )
    pump.start()
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    timed_out = interrupted = False
    while process.poll() is None:
        if stop.is_set():
            interrupted = True
        elif deadline is not None and time.monotonic() >= deadline:
            timed_out = True
        if interrupted or timed_out:
            _terminate(process)
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_POLL_S)
    # A grandchild that left the process group may still hold the pipe open: do not wait forever.
    pump.join(timeout=TERMINATE_GRACE_S)
    stopped = timed_out or interrupted
    return ProgramResult(
        exit_code=None if stopped else process.returncode,
        timed_out=timed_out,
        interrupted=interrupted,
        output_tail=tuple(tail),
    )


class Heartbeat:
    """Extends a message's visibility every `interval_s` while the `with` block runs.

    Leaving the block waits for a call in flight, so no late extension can undo the visibility
    change or deletion that follows.
    """

    def __init__(
        self,
        sqs: Any,
        *,
        queue_url: str,
        receipt_handle: str,
        visibility_timeout_s: int,
        interval_s: float,
        log: logging.LoggerAdapter[Any],
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._receipt_handle = receipt_handle
        self._visibility_timeout_s = visibility_timeout_s
        self._interval_s = interval_s
        self._log = log
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._queue_url,
                    ReceiptHandle=self._receipt_handle,
                    VisibilityTimeout=self._visibility_timeout_s,
                )
            except ClientError as exc:
                # The job keeps running: if the message was lost, the outcome record still stops a
                # second run from counting twice.
                self._log.warning("could not extend the message's visibility: %s", exc.response["Error"]["Code"])
            except BotoCoreError as exc:
                self._log.warning("could not extend the message's visibility: %s", exc)

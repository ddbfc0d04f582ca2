"""The worker's pure logic: settings, the wire format, the command line, check-if-done, records.

Nothing here touches the network, the file system or the clock, so every decision the worker makes
can be tested without AWS. `worker.loop` and `worker.main` are the I/O shell around it.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

SCHEMA_VERSION = 1
OUTPUT_TAIL_LINES = 20
# An attempt record keeps the end of those lines, up to this many characters (each line is already
# cut at worker.output.MAX_LINE_BYTES): the summary and the UI show the tail of many dead jobs.
MAX_OUTPUT_TAIL_CHARS = 8192
# A reason is a sentence, not a log (and SQS message attributes are small).
MAX_REASON_CHARS = 1000
# Linux refuses an environment string or an argument of 128 KiB or more (MAX_ARG_STRLEN), and all of
# them share one limit (ARG_MAX); a field whose value is longer than this goes in a file instead.
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ARGUMENT_BYTES = 128 * 1024 - 1
# The names the worker itself supplies to the command template; a job field may not shadow them.
RESERVED_PLACEHOLDERS = frozenset({"input_dir", "output_dir", "job_id"})
# Only fields named like this become `JOB_<NAME>` variables: other names are unusable in a shell, and
# some (with '=') cannot be in an environment at all.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# SQS limits: visibility timeouts up to 12 hours, long polls up to 20 seconds.
_MAX_VISIBILITY_S = 43_200
_MAX_WAIT_TIME_S = 20
# CloudWatch Logs' rule for log group names.
_LOG_GROUP_NAME = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}\Z")
# What follows an attempt record's prefix: its number.
_ATTEMPT_SUFFIX = re.compile(r"[0-9]+\.json\Z")
# Where EC2 serves instance metadata (IMDS); a test points the worker at a fake instead.
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"

_Num = TypeVar("_Num", int, float)


class ConfigError(ValueError):
    """The worker's environment is incomplete or malformed; the message names the variable."""


class PermanentFailure(Exception):
    """A job that can never succeed as sent: it goes to the dead-letter queue without retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientFailure(Exception):
    """An attempt that failed but may succeed later: the message is retried after the delay."""

    def __init__(self, reason: str, exit_code: int | None = None, output_tail: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.output_tail = tuple(output_tail)


def error_code(exc: Any) -> str:
    """The code of a botocore ClientError: AWS errors are told apart by their code, never by their message."""
    return str(exc.response.get("Error", {}).get("Code", ""))


class MalformedJob(PermanentFailure):
    """A message body that is not a valid job.

    `job_id` is whatever job id could still be read from the body, so the failure can be recorded
    under it; None when the body does not even carry one.
    """

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.job_id = job_id


class MissingPlaceholder(PermanentFailure):
    """The command template names a placeholder that the job does not define."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker reads from its environment, validated once at start-up."""

    queue_url: str
    dead_letter_queue_url: str
    run_id: str
    command: str
    input_bucket: str
    output_bucket: str
    records_bucket: str
    check_if_done: bool = False
    expected_number_files: int = 1
    min_file_size_bytes: int = 1
    necessary_string: str = ""
    visibility_timeout_s: int = 60
    retry_delay_s: int = 60
    # Failed runs of a job's program before the worker moves it to the dead-letter queue.
    job_retries: int = 3
    job_timeout_s: float = 0.0
    idle_exit_s: float = 60.0
    wait_time_s: int = 20
    processes: int = 1
    stagger_s: float = 0.0
    work_dir: str | None = None
    # None: no per-job log streams.
    log_group: str | None = None
    # 0: no resource lines.
    resource_log_s: float = 30.0
    spot_watch: bool = False
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    # Names this worker in records and log lines; None: the host's name (a container's own, unless
    # it shares the host's network, where the docker fleet names each container instead).
    worker_name: str | None = None
    # DCP's DOWNLOAD_FILES (worker/inputs.py).
    download_files: bool = False
    download_list_field: str = "data_file"
    bucket_root: str = "/home/ubuntu/bucket"
    download_threads: int = 8
    # False: the program's environment holds none of the worker's AWS keys.
    pass_aws_credentials: bool = False

    @property
    def heartbeat_interval_s(self) -> float:
        """Extend visibility every half timeout, so one late or failed call does not lose the job."""
        return self.visibility_timeout_s / 2


@dataclass(frozen=True)
class JobMessage:
    """One job as sent on the queue (see the wire format in worker/README.md)."""

    run_id: str
    job_id: str
    fields: Mapping[str, Any]
    inputs: tuple[str, ...]
    output: str


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


def _number(env: Mapping[str, str], name: str, default: _Num, low: _Num, high: _Num | None = None) -> _Num:
    """Parse a numeric variable of the default's type (int or float) within [low, high]."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None
    if not low <= value <= (high if high is not None else value):  # also rejects NaN
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be {bounds}, got {raw!r}")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be 'true' or 'false', got {raw!r}")
    return raw == "true"


def _log_group(env: Mapping[str, str]) -> str | None:
    """Checked here, or a bad name would only show up as a warning at the first job."""
    name = env.get("DISTRIBUTED_LOG_GROUP", "").strip()
    if name and not _LOG_GROUP_NAME.match(name):
        raise ConfigError(f"DISTRIBUTED_LOG_GROUP must be 1-512 letters, digits and '._-/#', got {name!r}")
    return name or None


def _bucket_root(env: Mapping[str, str]) -> str:
    root = env.get("DISTRIBUTED_BUCKET_ROOT", "").strip() or "/home/ubuntu/bucket"
    if not root.startswith("/") or root == "/":
        raise ConfigError(f"DISTRIBUTED_BUCKET_ROOT must be an absolute path such as /home/ubuntu/bucket, got {root!r}")
    return root.rstrip("/")


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A scheme and a host (and port), nothing else: the worker appends the paths itself."""
    value = env.get(name, "").strip() or default
    if not re.match(r"https?://[^/\s]+/?\Z", value):
        raise ConfigError(f"{name} must be a base URL like {default}, got {value!r}")
    return value.rstrip("/")


def _is_positional(field_name: str) -> bool:
    """'{}', '{0}', '{0.attr}' or '{0[key]}' would need positional arguments, which never exist."""
    first = re.split(r"[.\[]", field_name, maxsplit=1)[0]
    return first == "" or first.isdigit()


def _check_template(command: str) -> None:
    """Reject a command that could never be rendered, at start-up rather than once per job."""
    try:
        tokens = shlex.split(command)
        names = [name for token in tokens for _, name, _, _ in string.Formatter().parse(token)]
    except ValueError as exc:  # unbalanced quotes or braces
        raise ConfigError(f"DISTRIBUTED_COMMAND is not a valid command template: {exc}") from None
    if not tokens:
        raise ConfigError("DISTRIBUTED_COMMAND is required but empty")
    if any(name is not None and _is_positional(name) for name in names):
        raise ConfigError("DISTRIBUTED_COMMAND uses a positional placeholder; name every placeholder")


def settings_from_env(env: Mapping[str, str]) -> WorkerSettings:
    """Build the settings from environment variables; raises ConfigError naming the bad variable."""
    command = _required(env, "DISTRIBUTED_COMMAND")
    _check_template(command)
    return WorkerSettings(
        queue_url=_required(env, "DISTRIBUTED_QUEUE_URL"),
        dead_letter_queue_url=_required(env, "DISTRIBUTED_DEAD_LETTER_QUEUE_URL"),
        run_id=_required(env, "DISTRIBUTED_RUN_ID"),
        command=command,
        input_bucket=_required(env, "DISTRIBUTED_INPUT_BUCKET"),
        output_bucket=_required(env, "DISTRIBUTED_OUTPUT_BUCKET"),
        records_bucket=_required(env, "DISTRIBUTED_RECORDS_BUCKET"),
        check_if_done=_boolean(env, "DISTRIBUTED_CHECK_IF_DONE", False),
        expected_number_files=_number(env, "DISTRIBUTED_EXPECTED_NUMBER_FILES", 1, low=1),
        min_file_size_bytes=_number(env, "DISTRIBUTED_MIN_FILE_SIZE_BYTES", 1, low=0),
        necessary_string=env.get("DISTRIBUTED_NECESSARY_STRING", ""),
        visibility_timeout_s=_number(env, "DISTRIBUTED_VISIBILITY_TIMEOUT_S", 60, 1, _MAX_VISIBILITY_S),
        retry_delay_s=_number(env, "DISTRIBUTED_RETRY_DELAY_S", 60, 0, _MAX_VISIBILITY_S),
        job_retries=_number(env, "DISTRIBUTED_JOB_RETRIES", 3, 1, 1000),
        job_timeout_s=_number(env, "DISTRIBUTED_JOB_TIMEOUT_S", 0.0, low=0.0),
        idle_exit_s=_number(env, "DISTRIBUTED_IDLE_EXIT_S", 60.0, low=0.0),
        wait_time_s=_number(env, "DISTRIBUTED_WAIT_TIME_S", 20, 0, _MAX_WAIT_TIME_S),
        processes=_number(env, "DISTRIBUTED_PROCESSES", 1, low=1),
        stagger_s=_number(env, "DISTRIBUTED_STAGGER_S", 0.0, low=0.0),
        work_dir=env.get("DISTRIBUTED_WORK_DIR", "").strip() or None,
        log_group=_log_group(env),
        resource_log_s=_number(env, "DISTRIBUTED_RESOURCE_LOG_S", 30.0, low=0.0),
        spot_watch=_boolean(env, "DISTRIBUTED_SPOT_WATCH", False),
        imds_endpoint=_http_url(env, "DISTRIBUTED_IMDS_ENDPOINT", DEFAULT_IMDS_ENDPOINT),
        worker_name=env.get("DISTRIBUTED_WORKER_NAME", "").strip() or None,
        download_files=_boolean(env, "DISTRIBUTED_DOWNLOAD_FILES", False),
        download_list_field=env.get("DISTRIBUTED_DOWNLOAD_LIST_FIELD", "").strip() or "data_file",
        bucket_root=_bucket_root(env),
        download_threads=_number(env, "DISTRIBUTED_DOWNLOAD_THREADS", 8, 1, 64),
        pass_aws_credentials=_boolean(env, "DISTRIBUTED_PASS_AWS_CREDENTIALS", False),
    )


def _non_empty_string(body: Mapping[str, Any], key: str, job_id: str | None) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise MalformedJob(f"'{key}' must be a non-empty string, got {value!r}", job_id)
    return value


def _check_input_key(key: Any, job_id: str) -> str:
    """An input key (or a prefix, ending in '/') must stay below the input directory as a relative path."""
    if not isinstance(key, str) or not key.strip("/"):
        raise MalformedJob(f"every input must be a non-empty string, got {key!r}", job_id)
    if key.startswith("/") or ".." in PurePosixPath(key).parts:
        raise MalformedJob(f"input key {key!r} cannot be stored below the input directory", job_id)
    return key


def parse_message(body: str) -> JobMessage:
    """Parse and validate a message body; raises MalformedJob with the reason."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise MalformedJob(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedJob(f"body must be a JSON object, got {type(data).__name__}")
    raw_job_id = data.get("job_id")
    job_id = raw_job_id if isinstance(raw_job_id, str) and raw_job_id else None
    missing = sorted({"schema_version", "run_id", "job_id", "fields", "inputs", "output"} - data.keys())
    if missing:
        raise MalformedJob(f"missing keys: {', '.join(missing)}", job_id)
    version = data["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MalformedJob(f"unsupported schema_version {version!r} (this worker reads {SCHEMA_VERSION})", job_id)
    run_id = _non_empty_string(data, "run_id", job_id)
    job_id = _non_empty_string(data, "job_id", job_id)
    output = _non_empty_string(data, "output", job_id)
    if output.endswith("/"):
        raise MalformedJob(f"'output' must not end with '/', got {output!r}", job_id)

    fields = data["fields"]
    if not isinstance(fields, dict):
        raise MalformedJob(f"'fields' must be an object, got {type(fields).__name__}", job_id)
    # A field named like a placeholder the worker supplies would make `{job_id}` ambiguous.
    reserved = sorted(RESERVED_PLACEHOLDERS & fields.keys())
    if reserved:
        raise MalformedJob(f"field name {reserved[0]!r} is reserved for the worker", job_id)

    inputs = data["inputs"]
    if not isinstance(inputs, list):
        raise MalformedJob(f"'inputs' must be a list, got {type(inputs).__name__}", job_id)
    return JobMessage(
        run_id=run_id,
        job_id=job_id,
        fields=MappingProxyType(dict(fields)),
        inputs=tuple(_check_input_key(key, job_id) for key in inputs),
        output=output,
    )


def render_command(template: str, job: JobMessage, input_dir: str, output_dir: str) -> list[str]:
    """The program's argv: the template split like a shell would, then each word formatted.

    Splitting before formatting keeps every value one argument, whatever spaces or quotes it
    holds, so a job's fields can never inject extra arguments.
    """
    values = {**job.fields, "input_dir": input_dir, "output_dir": output_dir, "job_id": job.job_id}
    argv: list[str] = []
    for token in shlex.split(template):
        try:
            word = token.format(**values)
        except KeyError as exc:
            raise MissingPlaceholder(
                f"the command uses placeholder {{{exc.args[0]}}}, which the job does not define"
            ) from None
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise PermanentFailure(f"cannot render command word {token!r} for this job: {exc}") from None
        size = len(word.encode("utf-8"))
        if size > MAX_ARGUMENT_BYTES:
            raise PermanentFailure(
                f"command word {token!r} is {size} bytes for this job, over Linux's 128 KiB limit for one "
                "argument: leave the field out of the command and read it in the program from the file "
                "named by JOB_<FIELD>_FILE (worker/README.md)"
            )
        argv.append(word)
    return argv


def job_environment(job: JobMessage, files_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    """The job's scalar fields as `JOB_<FIELD>` variables, rendered like str.format renders them.

    Returns (variables, files). A value over MAX_ENV_VALUE_BYTES would make the program fail to start,
    so it is a file to write instead, `<files_dir>/JOB_<FIELD>` (path -> content), named by the
    variable `JOB_<FIELD>_FILE`.
    """
    variables: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, value in job.fields.items():
        if not (isinstance(value, (str, int, float, bool)) and _ENV_NAME.match(name)):
            continue
        variable, text = f"JOB_{name.upper()}", str(value)
        if len(text.encode("utf-8")) <= MAX_ENV_VALUE_BYTES:
            variables[variable] = text
        else:
            path = str(PurePosixPath(files_dir, variable))
            files[path] = text
            variables[f"{variable}_FILE"] = path
    return variables, files


def count_finished_outputs(objects: Iterable[tuple[str, int]], min_size_bytes: int, necessary_string: str) -> int:
    """How many (key, size) pairs count as finished outputs.

    The filter applies to the key (the original Distributed-Something tested the string against
    the size and crashed).
    """
    return sum(1 for key, size in objects if size >= min_size_bytes and necessary_string in key)


def outputs_complete(objects: Iterable[tuple[str, int]], settings: WorkerSettings) -> bool:
    """Check-if-done: are there enough finished outputs to skip the job?"""
    found = count_finished_outputs(objects, settings.min_file_size_bytes, settings.necessary_string)
    return found >= settings.expected_number_files


def output_key(job: JobMessage, relative_path: str) -> str:
    """Where a file the program wrote (path relative to the output directory) goes in S3."""
    return f"{job.output}/{relative_path}"


def outcome_prefix(run_id: str, job_id: str) -> str:
    """What every outcome record of the job starts with, whatever its status (the dot ends the id)."""
    return f"runs/{run_id}/outcomes/{job_id}."


def outcome_key(run_id: str, job_id: str, status: str) -> str:
    """The status is part of the key, so one listing of `outcomes/` counts a whole run."""
    return f"{outcome_prefix(run_id, job_id)}{status}.json"


def attempt_prefix(run_id: str, job_id: str) -> str:
    """What every attempt record of the job starts with (the dot ends the id, as for outcomes)."""
    return f"runs/{run_id}/attempts/{job_id}."


def attempt_key(run_id: str, job_id: str, attempt: int) -> str:
    """One record per failed run of the program, numbered from 1: their count is the job's retries."""
    return f"{attempt_prefix(run_id, job_id)}{attempt}.json"


def attempt_numbers(keys: Iterable[str], prefix: str) -> list[int]:
    """The numbers of the attempt records under `prefix`, in order, each once.

    Only `<prefix><number>.json` counts, so the records of a longer job id that starts with this one
    and a dot (`job-1.5` beside `job-1`) are never taken for this job's.
    """
    suffixes = (key[len(prefix) :] for key in keys if key.startswith(prefix))
    return sorted({int(suffix[: -len(".json")]) for suffix in suffixes if _ATTEMPT_SUFFIX.match(suffix)})


def failed_runs(keys: Iterable[str], prefix: str) -> int:
    """How many failed runs of the job's program its attempt records show."""
    return len(attempt_numbers(keys, prefix))


def retries_spent(failed: int, job_retries: int) -> bool:
    """Whether a job whose program failed `failed` times goes to the dead-letter queue.

    Only failed runs count: a job handed back (SIGTERM, a Spot notice) or whose worker died has
    no attempt record, so interruptions never spend a job's retries, whatever SQS's receive count.
    """
    return failed >= job_retries


def _utc_iso(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("record times must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat()  # noqa: UP017 - the image may run Python 3.10


def outcome_record(
    job_id: str, *, status: str, attempt: int, duration_s: float, worker: str, finished_at: datetime
) -> dict[str, Any]:
    """The one record of a finished job (`succeeded` or `skipped`)."""
    if status not in ("succeeded", "skipped"):
        raise ValueError(f"unknown outcome status {status!r}")
    return {
        "job_id": job_id,
        "status": status,
        "attempt": attempt,
        "duration_s": round(duration_s, 3),
        "worker": worker,
        "finished_at": _utc_iso(finished_at),
    }


def attempt_record(
    job_id: str,
    *,
    attempt: int,
    permanent: bool,
    reason: str,
    exit_code: int | None,
    output_lines: Iterable[str],
    worker: str,
    failed_at: datetime,
) -> dict[str, Any]:
    """The record of one failed run; `output_tail` keeps the end of the last 20 output lines.

    Both texts are bounded (MAX_REASON_CHARS, MAX_OUTPUT_TAIL_CHARS), so a record stays small
    whatever the program printed.
    """
    tail = "\n".join(list(output_lines)[-OUTPUT_TAIL_LINES:])
    return {
        "job_id": job_id,
        "attempt": attempt,
        "permanent": permanent,
        "reason": reason[:MAX_REASON_CHARS],
        "exit_code": exit_code,
        "output_tail": tail[-MAX_OUTPUT_TAIL_CHARS:],
        "worker": worker,
        "failed_at": _utc_iso(failed_at),
    }


def backoff_delay_s(failures: int, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Capped exponential back-off after `failures` consecutive errors (1, 2, 4, ... cap)."""
    if failures <= 0:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(failures - 1, 32))

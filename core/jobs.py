"""Job files (Distributed-Something's format) and the message each job becomes.

A job file holds keys shared by every job plus a `groups` list: one job per element, the element's
keys added to (and overriding) the shared ones. Keys containing `_comment` are dropped. Two keys
have a meaning of their own: `inputs` (S3 keys in the input bucket, a string or a list) and `output`
(the S3 prefix the job's results go to). Both may use `{field}` placeholders filled from the job.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 262_144  # SQS's limit for one message
COMMAND_PLACEHOLDERS = ("input_dir", "output_dir", "job_id")
RESERVED_KEYS = ("inputs", "output")


class Job(BaseModel):
    """One unit of work: what one worker runs once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(description="Stable id: a hash of the job's fields, the same in every run.")
    index: int = Field(description="Position of the job's group in the job file, from 0.")
    fields: dict[str, Any] = Field(description="Shared keys merged with the group's keys.")
    inputs: tuple[str, ...] = Field(description="S3 keys downloaded before the program runs.")
    output: str = Field(description="S3 prefix the program's outputs are uploaded under.")


class JobMessage(BaseModel):
    """The SQS message body: the wire format the worker reads (see worker/README.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    job_id: str
    fields: dict[str, Any]
    inputs: tuple[str, ...]
    output: str

    @classmethod
    def for_job(cls, job: Job, run_id: str) -> JobMessage:
        return cls(run_id=run_id, job_id=job.job_id, fields=job.fields, inputs=job.inputs, output=job.output)

    def body(self) -> str:
        # ASCII-only JSON: every character is one SQS accepts, and the size is exact.
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)


def _read_document(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist (set job_file in the config)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"job file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}") from None


def _without_comments(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if "_comment" not in str(key)}


def _fill(template: str, fields: dict[str, Any], where: str) -> str:
    try:
        return template.format_map(fields)
    except KeyError as exc:
        raise ConfigError(f"{where}: '{template}' uses {{{exc.args[0]}}}, which this job does not define") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{where}: '{template}' is not a valid template: {exc}") from None


def _placeholders(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def _build_job(index: int, shared: dict[str, Any], group: Any, command: str, source: str) -> Job:
    where = f"{source}: groups[{index}]"
    if not isinstance(group, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {type(group).__name__}")
    merged = {**shared, **_without_comments(group)}
    fields = {key: value for key, value in merged.items() if key not in RESERVED_KEYS}
    raw_inputs = merged.get("inputs", [])
    if isinstance(raw_inputs, str):
        raw_inputs = [raw_inputs]
    if not isinstance(raw_inputs, list) or not all(isinstance(item, str) for item in raw_inputs):
        raise ConfigError(f"{where}: 'inputs' must be an S3 key or a list of S3 keys")
    output = merged.get("output")
    if not isinstance(output, str) or not output.strip("/"):
        raise ConfigError(
            f"{where}: 'output' (the S3 prefix for the job's results) is missing; "
            "add it to the group or the shared keys"
        )
    inputs = tuple(_fill(item, fields, f"{where} inputs") for item in raw_inputs)
    job_output = _fill(output, fields, f"{where} output").strip("/")
    missing = _placeholders(command) - set(fields) - set(COMMAND_PLACEHOLDERS)
    if missing:
        raise ConfigError(
            f"{where}: the command uses {{{sorted(missing)[0]}}}, which this job does not define; "
            "add it to the group or the shared keys"
        )
    canonical = json.dumps({"fields": fields, "inputs": inputs, "output": job_output}, sort_keys=True, default=str)
    job_id = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return Job(job_id=job_id, index=index, fields=fields, inputs=inputs, output=job_output)


def iter_jobs(path: Path, command: str) -> Iterator[Job]:
    """Yield the jobs of a job file in order, validating each one (raises ConfigError)."""
    document = _read_document(path)
    source = str(path)
    if not isinstance(document, dict):
        raise ConfigError(f"job file {source} must be a mapping with a 'groups' list, got {type(document).__name__}")
    shared = _without_comments({k: v for k, v in document.items() if k != "groups"})
    groups = document.get("groups")
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"job file {source} needs a non-empty 'groups' list: one element per job")
    for index, group in enumerate(groups):
        yield _build_job(index, shared, group, command, source)


class JobFileCheck(BaseModel):
    """A job file that passed validation: how many jobs, and a fingerprint of its bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    count: int
    sha256: str = Field(description="Lets later steps re-read the file and know it did not change.")


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_jobs(path: Path, command: str) -> JobFileCheck:
    """Validate a whole job file: fields, templates, duplicates and message size. Raises ConfigError.

    The size is checked against a message for a run id of maximal length, so nothing sent later
    can be rejected by SQS.
    """
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"config.command is not a valid command line: {exc}") from None
    seen: dict[str, int] = {}
    for job in iter_jobs(path, command):
        if job.job_id in seen:
            raise ConfigError(f"{path}: groups[{job.index}] repeats groups[{seen[job.job_id]}]; every job must differ")
        seen[job.job_id] = job.index
        size = len(JobMessage.for_job(job, run_id="0" * 36).body().encode())
        if size > MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"{path}: groups[{job.index}] makes a {size:,}-byte message; SQS takes at most "
                f"{MAX_MESSAGE_BYTES:,} bytes. Move large values to S3 and pass their keys."
            )
    return JobFileCheck(path=path, count=len(seen), sha256=fingerprint(path))


def reread_jobs(checked: JobFileCheck, command: str) -> Iterator[Job]:
    """The jobs of a checked file, again; raises ConfigError if the file changed since the check."""
    if fingerprint(checked.path) != checked.sha256:
        raise ConfigError(f"job file {checked.path} changed after it was validated; start the run again")
    return iter_jobs(checked.path, command)

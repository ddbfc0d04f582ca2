"""Job files (Distributed-Something's format) and the message each job becomes.

A job file holds keys shared by every job plus a `groups` list: one job per element, the element's
keys added to (and overriding) the shared ones. Keys containing `_comment` are dropped. Two keys
have a meaning of their own: `inputs` (S3 keys in the input bucket, a string or a list; a key
ending in `/` is a prefix) and `output` (where the job's results go: see core/job_outputs.py for
how each job gets a prefix of its own). Both may use `{field}` placeholders filled from the job.
Distributed-CellProfiler's `Metadata` (`"Metadata_Plate=P1,..."`) also gives fields of their own.

A batch of a million jobs is normal, so JSON job files are streamed: their memory does not grow with
the number of jobs (see `_read_json`). YAML job files are loaded whole: PyYAML cannot stream one
element of a list at a time, and a file that large is JSON in practice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import string
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import ijson
import yaml
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws.sqs import MAX_MESSAGE_BYTES
from prefect_distributed.core.config import JobSettings
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.idset import JobIdSet
from prefect_distributed.core.job_outputs import METADATA_KEY, PrefixCheck, metadata_fields, overlap, own_folder

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COMMAND_PLACEHOLDERS = ("input_dir", "output_dir", "job_id")
RESERVED_KEYS = ("inputs", "output")

# ijson uses its C extension (yajl2_c) when it is installed and falls back to slower backends when
# not; the result is the same, only the speed differs (about ten times), so say so once.
if ijson.backend != "yajl2_c":
    logger.warning("ijson's C backend is not available (using %s): large job files read slowly", ijson.backend)
# yajl refuses integers beyond 64 bits, which JSON allows; the pure-Python backend reads them.
_EXACT_JSON: ModuleType = ijson.get_backend("python")
_OPENING_EVENTS = frozenset({"start_map", "start_array"})
_CLOSING_EVENTS = frozenset({"end_map", "end_array"})
# ijson's path to the elements of the top-level `groups` list.
_GROUPS_ITEMS = "groups.item"
# Encoders made once: json.dumps with options builds a new one per call, which doubles its cost.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, default=str)  # the text a job id hashes
_BODY_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)  # ASCII-only, like json.dumps


class Job(BaseModel):
    """One unit of work: what one worker runs once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(description="Stable id: a hash of the job's fields, the same in every run.")
    index: int = Field(description="Position of the job's group in the job file, from 0.")
    fields: dict[str, Any] = Field(description="Shared keys merged with the group's keys.")
    inputs: tuple[str, ...] = Field(description="S3 keys downloaded before the program runs.")
    output: str = Field(description="S3 prefix the program's outputs are uploaded under, this job's alone.")


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
        return _BODY_JSON.encode(self.model_dump(mode="json"))


def _not_a_mapping(source: str, type_name: str) -> ConfigError:
    return ConfigError(f"job file {source} must be a mapping with a 'groups' list, got {type_name}")


def _no_groups(source: str) -> ConfigError:
    return ConfigError(f"job file {source} needs a non-empty 'groups' list: one element per job")


def _invalid(path: Path, exc: Exception) -> ConfigError:
    return ConfigError(f"job file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}")


def _value_events(first: tuple[str, Any], events: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The parser events of the one JSON value that starts with `first`, taking no more from `events`."""
    yield first
    if first[0] not in _OPENING_EVENTS:
        return
    depth = 1
    for event in events:
        yield event
        if event[0] in _OPENING_EVENTS:
            depth += 1
        elif event[0] in _CLOSING_EVENTS:
            depth -= 1
            if not depth:
                return


def _scan_json(path: Path, backend: ModuleType) -> dict[str, Any]:
    """First pass: the top-level keys other than `groups`, with their values.

    Shared keys may come before or after `groups`, so they must all be known before the first job
    is built. The `groups` list is only walked over, never built; the parser checks the whole
    document on the way, so the second pass meets no syntax error.
    """
    source = str(path)
    shared: dict[str, Any] = {}
    groups_is_list: bool | None = None
    with path.open("rb") as handle:
        events = iter(backend.basic_parse(handle, use_float=True))
        kind, value = next(events)
        if kind != "start_map":
            raise _not_a_mapping(source, "list" if kind == "start_array" else type(value).__name__)
        for kind, key in events:
            if kind == "end_map":
                break
            start = next(events)
            if key == "groups":
                if groups_is_list is not None:
                    raise ConfigError(f"job file {source} has more than one 'groups' key")
                groups_is_list = start[0] == "start_array"
                deque(_value_events(start, events), maxlen=0)
            else:
                builder = ijson.ObjectBuilder()
                for event in _value_events(start, events):
                    builder.event(*event)
                shared[key] = builder.value
        deque(events, maxlen=0)  # the parser refuses anything after the document
    if _GROUPS_ITEMS in shared:
        # The second pass finds the jobs by this path, so this key's value would be read as a job.
        raise ConfigError(f"job file {source}: the top-level key '{_GROUPS_ITEMS}' is not allowed")
    if not groups_is_list:
        raise _no_groups(source)
    return shared


def _scan_json_any(path: Path) -> tuple[dict[str, Any], ModuleType]:
    """The first pass with the fastest backend that can read the file, and that backend."""
    try:
        return _scan_json(path, ijson), ijson
    except ijson.JSONError as exc:
        if "integer overflow" not in str(exc):
            raise _invalid(path, exc) from None
    try:
        return _scan_json(path, _EXACT_JSON), _EXACT_JSON
    except ijson.JSONError as exc:
        raise _invalid(path, exc) from None


def _json_groups(path: Path, backend: ModuleType) -> Iterator[Any]:
    """Second pass: the elements of `groups`, one at a time."""
    with path.open("rb") as handle:
        try:
            yield from backend.items(handle, _GROUPS_ITEMS, use_float=True)
        except ijson.JSONError as exc:  # the file changed since the first pass
            raise _invalid(path, exc) from None


def _read_json(path: Path) -> tuple[dict[str, Any], Iterator[Any]]:
    """The shared keys, and the groups as a stream: two passes over the file, neither holding it whole."""
    shared, backend = _scan_json_any(path)
    return shared, _json_groups(path, backend)


def _read_yaml(path: Path) -> tuple[dict[str, Any], Iterator[Any]]:
    """The shared keys and the groups of a YAML job file, which is loaded whole."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _invalid(path, exc) from None
    if not isinstance(document, dict):
        raise _not_a_mapping(str(path), type(document).__name__)
    groups = document.get("groups")
    if not isinstance(groups, list):
        raise _no_groups(str(path))
    return {key: value for key, value in document.items() if key != "groups"}, iter(groups)


def _read_job_file(path: Path) -> tuple[dict[str, Any], Iterator[Any]]:
    """The keys shared by every job, and the groups; raises ConfigError when the file is no job file."""
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist (set job_file in the config)")
    return _read_json(path) if path.suffix.lower() == ".json" else _read_yaml(path)


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


@dataclass(frozen=True)
class _JobBuilder:
    """Builds and validates each job of one file; what is the same for every job is worked out once."""

    source: str
    shared: dict[str, Any]
    command_fields: frozenset[str]  # the job fields the command's placeholders need
    settings: JobSettings

    @classmethod
    def for_file(cls, source: str, shared: dict[str, Any], command: str, settings: JobSettings) -> _JobBuilder:
        return cls(
            source=source,
            shared=_without_comments(shared),
            command_fields=frozenset(_placeholders(command) - set(COMMAND_PLACEHOLDERS)),
            settings=settings,
        )

    def build(self, index: int, group: Any) -> Job:
        where = f"{self.source}: groups[{index}]"
        if not isinstance(group, dict):
            raise ConfigError(f"{where} must be a mapping of fields, got {type(group).__name__}")
        own = _without_comments(group)
        merged = {**self.shared, **own}
        fields = {key: value for key, value in merged.items() if key not in RESERVED_KEYS}
        odd_key = next((key for key in fields if not isinstance(key, str)), None)
        if odd_key is not None:  # YAML allows them; a field is a name
            raise ConfigError(f"{where}: field name {odd_key!r} must be a string")
        metadata = None
        if METADATA_KEY in fields:
            text, metadata = metadata_fields(fields[METADATA_KEY], where)
            _check_metadata_agrees(fields, metadata, where)
            fields = {**fields, METADATA_KEY: text, **metadata}
        template = merged.get("output", self.settings.output)
        if template is None:
            raise ConfigError(
                f"{where}: 'output' (the S3 prefix for the job's results) is missing; "
                "add it to the group or the shared keys, or set jobs.output in the config"
            )
        if not isinstance(template, str) or not template.strip("/"):
            raise ConfigError(f"{where}: 'output' must be an S3 prefix such as 'results/{{plate}}', got {template!r}")
        raw_inputs = (*_input_list(merged, where), *self.settings.inputs)
        inputs = tuple(_fill(item, fields, f"{where} inputs") for item in raw_inputs)
        filled = _fill(template, fields, f"{where} output").strip("/")
        missing = self.command_fields.difference(fields)
        if missing:
            raise ConfigError(
                f"{where}: the command uses {{{min(missing)}}}, which this job does not define; "
                "add it to the group or the shared keys"
            )
        canonical = _CANONICAL_JSON.encode({"fields": fields, "inputs": inputs, "output": filled})
        job_id = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        output = filled
        if metadata is not None or ("output" not in own and not _placeholders(template)):
            # One folder for every job: each gets a sub-folder of its own (core/job_outputs.py).
            group_keys = [key for key in own if key not in RESERVED_KEYS]
            folder = own_folder(fields, group_keys, metadata, job_id, where).strip("/") or job_id
            output = f"{filled}/{folder}"
        return Job(job_id=job_id, index=index, fields=fields, inputs=inputs, output=output)


def _input_list(merged: dict[str, Any], where: str) -> list[str]:
    raw_inputs = merged.get("inputs", [])
    if isinstance(raw_inputs, str):
        raw_inputs = [raw_inputs]
    if not isinstance(raw_inputs, list) or not all(isinstance(item, str) for item in raw_inputs):
        raise ConfigError(f"{where}: 'inputs' must be an S3 key or a list of S3 keys")
    return raw_inputs


def _check_metadata_agrees(fields: dict[str, Any], metadata: dict[str, str], where: str) -> None:
    """A field that Metadata also sets must say the same, or `{Metadata_X}` would mean two things."""
    for name, value in metadata.items():
        if name in fields and str(fields[name]) != value:
            raise ConfigError(
                f"{where}: Metadata sets {name}={value!r} but the job's field {name} is {fields[name]!r}; "
                "keep one of them"
            )


def iter_jobs(path: Path, command: str, settings: JobSettings | None = None) -> Iterator[Job]:
    """Yield the jobs of a job file in order, validating each one (raises ConfigError).

    `settings` gives what the file leaves out (the config's `jobs` section). A JSON file is
    streamed, so memory stays flat however many jobs it holds; a YAML file is loaded whole.
    """
    shared, groups = _read_job_file(path)
    builder = _JobBuilder.for_file(str(path), shared, command, settings or JobSettings())
    index = -1
    for index, group in enumerate(groups):
        yield builder.build(index, group)
    if index < 0:
        raise _no_groups(str(path))


class JobFileCheck(BaseModel):
    """A job file that passed validation: how many jobs, and a fingerprint of its bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    count: int
    sha256: str = Field(description="Lets later steps re-read the file and know it did not change.")
    settings: JobSettings = Field(
        default_factory=JobSettings, description="The defaults the file was checked with; it is read again with them."
    )


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _earlier_jobs(path: Path, command: str, settings: JobSettings, job: Job) -> Iterator[Job]:
    """The jobs before this one: a second pass, made only when a check suspects a clash."""
    for other in iter_jobs(path, command, settings):
        if other.index >= job.index:
            return
        yield other


def _prefix_clash(path: Path, first: Job, second: Job) -> ConfigError:
    if first.output == second.output:
        what = f"groups[{first.index}] and groups[{second.index}] would both write their outputs under "
        what += f"'{first.output}/'"
        harm = "one job's files would overwrite the other's, and check-if-done would skip a job that never ran"
    else:
        outer, inner = (first, second) if len(first.output) < len(second.output) else (second, first)
        what = (
            f"groups[{inner.index}] would write its outputs under '{inner.output}/', inside the prefix of "
            f"groups[{outer.index}] ('{outer.output}/')"
        )
        harm = f"check-if-done on groups[{outer.index}] would count the other job's files as its own"
    fix = "put {placeholders} that tell the jobs apart in 'output' (e.g. 'results/{plate}/{well}')"
    if METADATA_KEY in second.fields:
        fix += ", or name the Metadata fields that tell them apart in 'output_structure' (e.g. " \
            "'Metadata_Plate-Metadata_Well-Metadata_Site')"
    return ConfigError(f"{path}: {what}: {harm}. Fix: {fix}")


def check_jobs(path: Path, command: str, settings: JobSettings | None = None) -> JobFileCheck:
    """Validate a whole job file: fields, templates, duplicates, output prefixes and message size.

    Raises ConfigError. Two jobs whose output prefixes are the same, or one inside the other, are
    refused: they would lose results. The size is checked against a message for a run id of
    maximal length, so nothing sent later can be rejected by SQS.
    """
    settings = settings or JobSettings()
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"config.command is not a valid command line: {exc}") from None
    seen = JobIdSet()
    prefixes = PrefixCheck()
    count = 0
    for job in iter_jobs(path, command, settings):
        if not seen.add(job.job_id):
            first = next(other for other in _earlier_jobs(path, command, settings, job) if other.job_id == job.job_id)
            raise ConfigError(f"{path}: groups[{job.index}] repeats groups[{first.index}]; every job must differ")
        if not prefixes.add(job.output):  # a suspect: confirmed (or not) by reading the file again
            for other in _earlier_jobs(path, command, settings, job):
                if overlap(other.output, job.output):
                    raise _prefix_clash(path, other, job)
                prefixes.remember_parents(other.output)
        count += 1
        size = len(JobMessage.for_job(job, run_id="0" * 36).body().encode())
        if size > MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"{path}: groups[{job.index}] makes a {size:,}-byte message; SQS takes at most "
                f"{MAX_MESSAGE_BYTES:,} bytes. Move large values to S3 and pass their keys."
            )
    return JobFileCheck(path=path, count=count, sha256=fingerprint(path), settings=settings)


def reread_jobs(checked: JobFileCheck, command: str) -> Iterator[Job]:
    """The jobs of a checked file, again; raises ConfigError if the file changed since the check."""
    if fingerprint(checked.path) != checked.sha256:
        raise ConfigError(f"job file {checked.path} changed after it was validated; start the run again")
    return iter_jobs(checked.path, command, checked.settings)

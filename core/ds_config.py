"""Distributed-Something's (and Distributed-CellProfiler's) `config.py`, turned into this project's
YAML config.

A `config.py` is Python, but users write it as a list of assignments of literals, some computed from
earlier ones (`SQS_QUEUE_NAME = APP_NAME + 'Queue'`, `CPU_SHARES = DOCKER_CORES * 1024`). It is read
with `ast` and never executed: literals, names assigned above, and arithmetic on them are folded;
anything else (a call, an import, an `if`) is listed as unreadable, with its line. Every setting is
either carried into the YAML (under its name here, `core.config.DS_NAMES`) or listed with what to do
instead: nothing is dropped without a word.
"""

from __future__ import annotations

import argparse
import ast
import operator
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.config import DS_NAMES, QUEUE_ARN, parse_config
from prefect_distributed.core.errors import ConfigError

HEADER = "# Converted from a Distributed-Something config.py"
DCP_ONLY = frozenset({"SOURCE_BUCKET", "WORKSPACE_BUCKET", "DESTINATION_BUCKET", "DOWNLOAD_FILES", "ALWAYS_CONTINUE"})
# run.py's default when a config.py has no JOB_RETRIES: Distributed-Something's fixed 10 attempts.
DS_JOB_RETRIES = 10
BOOLEAN_SETTINGS = frozenset({"CHECK_IF_DONE_BOOL", "DOWNLOAD_FILES"})
PLUGINS = "bake it into the worker image instead: worker/Dockerfile FROM your image, with the plugins installed"
# Settings with no counterpart here, and what to do instead.
INSTEAD: dict[str, str] = {
    "AWS_PROFILE": "credentials never go into a task definition here. Save the profile as a prefect-aws "
    "AwsCredentials block (AwsCredentials(profile_name='PROFILE').save('NAME')) and set aws_credentials: NAME, "
    "or leave it unset to use boto3's default chain (AWS_PROFILE in the flow's environment)",
    "SSH_KEY_NAME": "set KeyName in each LaunchSpecifications entry of the fleet file: the key pair's name, "
    "without .pem",
    "WORKSPACE_BUCKET": "there is one input bucket here (input_bucket): copy the pipelines and CSVs there, or "
    "give the job file's inputs as keys of input_bucket",
    "UPLOAD_FLAGS": "outputs are uploaded with no extra flags; for another account's bucket, give that bucket "
    "Object Ownership 'Bucket owner enforced' instead of --acl bucket-owner-full-control",
    "ASSIGN_IP": "the fleet file's AssociatePublicIpAddress (NetworkInterfaces[0] of each LaunchSpecifications "
    "entry) is used as written; set it there",
    "AUTO_MONITOR": "the flow monitors every run itself, to the end, and cleans up: nothing to set",
    "CREATE_DASHBOARD": "there is no CloudWatch dashboard; progress is the run's Prefect artifact 'progress'",
    "CLEAN_DASHBOARD": "there is no dashboard to clean",
    "ALWAYS_CONTINUE": "add --always-continue to command",
    "USE_PLUGINS": PLUGINS,
    "UPDATE_PLUGINS": PLUGINS,
    "PLUGINS_COMMIT": PLUGINS,
    "INSTALL_REQUIREMENTS": PLUGINS,
    "REQUIREMENTS": PLUGINS,
    "REQUIREMENTS_FILE": PLUGINS,
}
OFF_VALUES = frozenset({"", "false", "none", "0"})
# A setting of one's own that holds a secret: its value is never repeated, in the YAML or anywhere.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)

_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class LeftOut(BaseModel):
    """A setting of config.py that the YAML config does not carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    setting: str = Field(description="Its name in config.py, or 'line N' for a statement that could not be read.")
    value: str = Field(description="Its value as config.py gives it.")
    instead: str = Field(description="What to do instead.")


class DsConversion(BaseModel):
    """What a config.py became: the settings of the YAML config, and everything not carried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["Distributed-Something", "Distributed-CellProfiler"] = Field(
        description="Which config.py it was, told by the settings only Distributed-CellProfiler has."
    )
    settings: dict[str, Any] = Field(description="The YAML config's settings, nested as in core/config.py.")
    carried: list[str] = Field(description="The config.py settings carried, by their config.py names.")
    left_out: list[LeftOut] = Field(description="Every setting not carried, with what to do instead.")
    notes: list[str] = Field(description="Settings carried with a change worth knowing.")


class _NotLiteral(Exception):
    """A statement's value is not a literal, nor arithmetic on literals and earlier names."""


def _fold(node: ast.expr, known: dict[str, Any]) -> Any:
    """The value of a literal expression; names must be assigned above. Nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_fold(item, known) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_fold(k, known): _fold(v, known) for k, v in zip(node.keys, node.values, strict=True) if k}
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_fold(node.operand, known)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        try:
            return _OPERATORS[type(node.op)](_fold(node.left, known), _fold(node.right, known))
        except (TypeError, ZeroDivisionError) as exc:
            raise _NotLiteral(str(exc)) from None
    raise _NotLiteral(ast.unparse(node))


def read_config_py(text: str, source: str) -> tuple[dict[str, Any], list[LeftOut]]:
    """The assignments of a config.py, in order, and every statement that could not be read.

    Raises ConfigError when the text is not Python at all.
    """
    try:
        module = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise ConfigError(f"{source} is not a Python file (line {exc.lineno}: {exc.msg})") from None
    values: dict[str, Any] = {}
    unreadable: list[LeftOut] = []
    for statement in module.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else []
        if len(targets) == 1 and isinstance(targets[0], ast.Name):
            try:
                values[targets[0].id] = _fold(statement.value, values)
                continue
            except _NotLiteral:
                pass
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        unreadable.append(
            LeftOut(
                setting=f"line {statement.lineno}",
                value=ast.get_source_segment(text, statement) or ast.unparse(statement),
                instead="not read: only assignments of literals (and arithmetic on them) are read, nothing is "
                "run; give the setting its value here by hand",
            )
        )
    return values, unreadable


def _is_off(value: Any) -> bool:
    return str(value).strip().lower() in OFF_VALUES


def _carry(name: str, value: Any) -> Any:
    """config.py's value in this project's type: 'True'/'False' strings become booleans, a single
    machine type a list."""
    if name in BOOLEAN_SETTINGS:
        return not _is_off(value)
    if name == "MACHINE_TYPE" and isinstance(value, str):
        return [value]
    if name == "SQS_DEAD_LETTER_QUEUE" and isinstance(value, str):
        found = QUEUE_ARN.match(value)
        return found.group("name") if found else value
    return value


def _put(settings: dict[str, Any], path: str, value: Any) -> None:
    *sections, key = path.split(".")
    for section in sections:
        settings = settings.setdefault(section, {})
    settings[key] = value


def convert_ds_config(
    text: str,
    source: str,
    *,
    job_file: str | None = None,
    command: str | None = None,
    fleet_file: str | None = None,
) -> DsConversion:
    """Carry every setting of a config.py that has a counterpart here; list the rest with what to do.

    `job_file`, `command` and `fleet_file` are what config.py does not hold (run.py took the job and
    fleet files as arguments; the command lives in the worker's code); each one not given is listed.
    """
    values, left_out = read_config_py(text, source)
    kind: Literal["Distributed-Something", "Distributed-CellProfiler"] = (
        "Distributed-CellProfiler" if DCP_ONLY & values.keys() else "Distributed-Something"
    )
    settings: dict[str, Any] = {}
    carried: list[str] = []
    notes: list[str] = []
    for name, value in values.items():
        if name in DS_NAMES:
            if name in ("SOURCE_BUCKET", "DESTINATION_BUCKET") and _is_off(value):
                instead = f"off in config.py: nothing to do (AWS_BUCKET serves; {DS_NAMES[name]} defaults to bucket)"
                left_out.append(LeftOut(setting=name, value=repr(value), instead=instead))
                continue
            _put(settings, DS_NAMES[name], _carry(name, value))
            carried.append(name)
            if name == "SQS_DEAD_LETTER_QUEUE" and isinstance(value, str) and QUEUE_ARN.match(value):
                notes.append(f"SQS_DEAD_LETTER_QUEUE is an ARN ({value}); its name is carried")
        elif name in INSTEAD:
            instead = INSTEAD[name]
            if _is_off(value) and name not in ("AWS_PROFILE", "ASSIGN_IP"):
                instead = f"off in config.py: nothing to do ({instead})"
            left_out.append(LeftOut(setting=name, value=repr(value), instead=instead))
        elif SECRET_NAME.search(name):
            left_out.append(
                LeftOut(
                    setting=name,
                    value="(a secret: not repeated here)",
                    instead="a secret does not belong in a config file: keep AWS keys in a prefect-aws AwsCredentials "
                    "block (aws_credentials), and other secrets in a Prefect Secret block your program reads",
                )
            )
        else:
            left_out.append(
                LeftOut(
                    setting=name,
                    value=repr(value),
                    instead="not a Distributed-Something setting; if your program needs it, pass it in command "
                    f"(e.g. --{name.lower().replace('_', '-')} {value}) or as a shared key of the job file",
                )
            )
    if "JOB_RETRIES" not in values:
        _put(settings, "queue.job_retries", DS_JOB_RETRIES)
        notes.append(f"no JOB_RETRIES: queue.job_retries is {DS_JOB_RETRIES}, run.py's fixed number of attempts")
    if "DOCKERHUB_TAG" in values:
        notes.append(
            "container.image is DOCKERHUB_TAG's image, which holds your program but not this project's worker: "
            "build worker/Dockerfile FROM it and set container.image to the result"
        )
    given = {"job_file": job_file, "command": command}
    for setting, value in given.items():
        if value is not None:
            settings[setting] = value
    if job_file is None:
        left_out.append(
            LeftOut(setting="job_file", value="(run.py submitJob's argument)", instead="add job_file: your job file")
        )
    if command is None:
        left_out.append(
            LeftOut(
                setting="command",
                value="(in your worker's code)",
                instead="add command: the program each job runs, with {field} placeholders from the job file",
            )
        )
    fleet = settings.setdefault("fleet", {})
    if fleet_file is None:
        left_out.append(
            LeftOut(
                setting="fleet.fleet_file",
                value="(run.py startCluster's argument)",
                instead="fleet.backend is 'local' (workers on this machine); for a Spot Fleet set fleet.backend: "
                "spot-fleet and fleet.fleet_file: your exampleFleet_<region>.json",
            )
        )
    else:
        fleet.update(backend="spot-fleet", fleet_file=fleet_file)
    return DsConversion(kind=kind, settings=settings, carried=carried, left_out=left_out, notes=notes)


def to_yaml(conversion: DsConversion, source: str) -> str:
    """The YAML config, headed by what was not carried and why, as comments."""
    lines = [f"{HEADER} ({conversion.kind}): {source}", "# Not carried, and what to do instead:"]
    lines += [f"#   - {item.setting} = {item.value}: {item.instead}" for item in conversion.left_out]
    if conversion.notes:
        lines.append("# Carried, with a change:")
        lines += [f"#   - {note}" for note in conversion.notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump(conversion.settings, sort_keys=False)


def refused_values(conversion: DsConversion) -> str:
    """What this project's config parser says of the carried values ('' when it takes them): the
    missing job_file and command stood in for, so only the carried values are judged."""
    stand_ins = {"job_file": "jobs.json", "command": "true"}
    try:
        parse_config({**stand_ins, **conversion.settings}, source="the converted config")
    except ConfigError as exc:
        return str(exc)
    return ""


def write_ds_config(
    config_py: Path,
    output: Path | None = None,
    *,
    job_file: Path | None = None,
    command: str | None = None,
    fleet_file: Path | None = None,
) -> tuple[Path, DsConversion]:
    """Convert `config_py` and write the YAML config (default: config.yaml beside it); paths in it are
    made relative to its folder. A file there that this converter did not write is never overwritten.
    """
    if not config_py.is_file():
        raise ConfigError(f"{config_py} is not a file: give the path of your Distributed-Something config.py")
    output = output or config_py.with_suffix(".yaml")
    if output.exists() and not output.read_text().startswith(HEADER):
        raise ConfigError(f"{output} exists and was not written by this converter: remove it or choose another output")

    def relative(path: Path | None) -> str | None:
        return os.path.relpath(path.resolve(), output.resolve().parent) if path else None

    conversion = convert_ds_config(
        config_py.read_text(),
        str(config_py),
        job_file=relative(job_file),
        command=command,
        fleet_file=relative(fleet_file),
    )
    output.write_text(to_yaml(conversion, config_py.name))
    return output, conversion


def main(argv: Sequence[str] | None = None) -> int:
    """`distributed-convert-ds-config config.py [-o config.yaml] [--job-file ...] [--command ...]
    [--fleet-file ...]`: prints the path written, then what was not carried; exit 1 on bad input."""
    parser = argparse.ArgumentParser(
        prog="distributed-convert-ds-config",
        description="Convert a Distributed-Something or Distributed-CellProfiler config.py (read, never run) into "
        "this project's YAML config, and list every setting it could not carry with what to do instead.",
    )
    parser.add_argument("config_py", type=Path, help="the config.py to convert")
    parser.add_argument("-o", "--output", type=Path, help="the YAML config to write (default: beside config.py)")
    parser.add_argument("--job-file", type=Path, help="your job file (run.py submitJob's argument)")
    parser.add_argument("--command", help="the program each job runs, with {field} placeholders")
    parser.add_argument("--fleet-file", type=Path, help="your fleet file (run.py startCluster's argument)")
    args = parser.parse_args(argv)
    try:
        output, conversion = write_ds_config(
            args.config_py, args.output, job_file=args.job_file, command=args.command, fleet_file=args.fleet_file
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(output)
    print(summary(conversion), file=sys.stderr)
    return 0


def summary(conversion: DsConversion) -> str:
    """What a user reads after converting: counts, what was not carried, and values refused here."""
    lines = [
        f"{conversion.kind} config.py: {len(conversion.carried)} setting(s) carried, "
        f"{len(conversion.left_out)} not carried"
    ]
    lines += [f"  - {item.setting} = {item.value}: {item.instead}" for item in conversion.left_out]
    lines += [f"  note: {note}" for note in conversion.notes]
    refused = refused_values(conversion)
    if refused:
        lines.append(f"Fix before running: {refused}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

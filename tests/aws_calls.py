"""Records every AWS operation the code makes during the tests and fails the run if its IAM policy lacks one.

botocore gives every Session the handlers in `botocore.handlers.BUILTIN_HANDLERS`. This module appends
one for `before-parameter-build` when tests/conftest.py registers it as a plugin, before any session
exists, so every client in the test process reports each API call once (pages and waiter polls are
calls; botocore's own retries are not), whichever thread makes it: Prefect task threads included.

Each call is held against the policy of the code that made it, found from the frames of this
repository on the stack:
- any frame in worker/: the workers' ECS task role, task-role-policy.json;
- any frame in core/bootstrap.py: bootstrap-admin-policy.json (checked once that file exists);
- innermost repository frame in tests/, deployments/demo/, benchmarks/ or core/emulator.py: nobody's
  (test fixtures and demo data set-up, not product code);
- otherwise (core/, tasks/, flows/, blocks/): the flow's credentials, flow-user-policy.json.

Workers in other processes (subprocesses, containers) are seen from the emulator's side: the moto
server of the session records every request it answers (`emulator_call_log`), and each request a
worker made (tests/emulator_calls.py) is held against task-role-policy.json. Not seen: anything else
outside this process, such as a flow run in a Prefect worker's subprocess. A call with no
repository frame on its stack (the thread pool behind boto3's upload_file and download_file, or a
library acting on its own) is written to the JSON file with no policy and is not checked.

At the end of the session the recorded calls go to a JSON file (pytest's cache, else the temp dir);
an action that is called but not granted by its policy is listed and fails the run. Under
pytest-xdist each test process hands its calls to the controller, which judges them all. Grants
that nothing called are listed as a note only after a run of the whole suite. `--iam-policies DIR`
judges against the policies of another folder (a copy with a grant removed, say).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import botocore.handlers
import pytest
from botocore.model import OperationModel, ServiceModel

from tests.emulator_calls import worker_calls

REPO = Path(__file__).resolve().parents[1]
IAM_DIR = REPO / "deployments" / "aws" / "iam"

FLOW_USER = "flow-user-policy.json"
TASK_ROLE = "task-role-policy.json"
BOOTSTRAP_ADMIN = "bootstrap-admin-policy.json"
CHECKED_POLICIES = (FLOW_USER, TASK_ROLE, BOOTSTRAP_ADMIN)
UNUSED_GRANTS_JUDGED = (FLOW_USER, TASK_ROLE, BOOTSTRAP_ADMIN)

# Code whose calls are nobody's: test fixtures and demo data set-up.
IGNORED_CALLERS = ("tests/", "deployments/demo/", "benchmarks/", "core/emulator.py")
NO_REPOSITORY_FRAME = "(no frame in this repository)"
SEEN_BY_THE_EMULATOR = "a worker process, seen by the emulator"
CALLER_FRAMES = 3  # how many repository frames name a caller: the innermost and where it was called from

# IAM service prefixes that differ from the service model's signing name.
IAM_PREFIXES = {"monitoring": "cloudwatch"}

# The IAM actions an operation needs where they are not "<prefix>:<operation name>".
IAM_ACTIONS_FOR_OPERATION: dict[str, tuple[str, ...]] = {
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:ListObjectVersions": ("s3:ListBucketVersions",),
    "s3:ListBuckets": ("s3:ListAllMyBuckets",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:CopyObject": ("s3:GetObject", "s3:PutObject"),
    "s3:UploadPartCopy": ("s3:GetObject", "s3:PutObject"),
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "sts:GetCallerIdentity": (),  # allowed to every caller, whatever its policies say
}
# Creating a resource with tags also needs the service's tagging action (<prefix>:TagResource
# unless named here), and handing a role to Spot Fleet or to an ECS task is iam:PassRole.
TAGGING_ACTIONS = {"ec2": "ec2:CreateTags", "sqs": "sqs:TagQueue", "autoscaling": "autoscaling:CreateOrUpdateTags"}
# IAM has no TagResource: each kind of IAM resource has its own tagging action.
IAM_TAGGING_ACTIONS = {
    "CreateRole": "iam:TagRole",
    "CreateInstanceProfile": "iam:TagInstanceProfile",
    "CreatePolicy": "iam:TagPolicy",
}
TAG_PARAMETERS = frozenset({"Tags", "tags", "TagSpecifications"})
ROLE_PARAMETERS = frozenset({"IamFleetRole", "taskRoleArn", "executionRoleArn"})


def iam_prefix(service: ServiceModel) -> str:
    """The service's prefix in IAM action names, e.g. servicequotas for service-quotas."""
    name = service.signing_name or service.endpoint_prefix
    return IAM_PREFIXES.get(name, name)


def _keys_with_values(params: Any) -> Iterator[str]:
    """The names of the non-empty parameters at any depth of an API call's parameters."""
    if isinstance(params, Mapping):
        for key, value in params.items():
            if value:
                yield key
            yield from _keys_with_values(value)
    elif isinstance(params, list):
        for item in params:
            yield from _keys_with_values(item)


def iam_actions(prefix: str, operation: str, params: Mapping[str, Any]) -> frozenset[str]:
    """The IAM actions an API call needs, given the parameters it was made with."""
    actions = set(IAM_ACTIONS_FOR_OPERATION.get(f"{prefix}:{operation}", (f"{prefix}:{operation}",)))
    keys = set(_keys_with_values(params))
    if keys & TAG_PARAMETERS:
        tagging = IAM_TAGGING_ACTIONS.get(operation) if prefix == "iam" else None
        actions.add(tagging or TAGGING_ACTIONS.get(prefix, f"{prefix}:TagResource"))
    if keys & ROLE_PARAMETERS:
        actions.add("iam:PassRole")
    return frozenset(actions)


@cache
def _repository_path(filename: str) -> str | None:
    """A source file's path relative to the repository, or None for library and generated code."""
    if not os.path.isabs(filename):
        return None  # "<string>", "<frozen ...>"
    try:
        relative = Path(filename).resolve().relative_to(REPO)
    except ValueError:
        return None
    if relative.parts[0].startswith(".") or "site-packages" in relative.parts:
        return None  # the virtualenv and tool caches inside the checkout
    return relative.as_posix()


def repository_frames(frame: FrameType | None) -> list[tuple[str, str]]:
    """(path, function) of each frame from this repository on the stack, innermost first."""
    found = []
    while frame is not None:
        path = _repository_path(frame.f_code.co_filename)
        if path is not None:
            found.append((path, frame.f_code.co_name))
        frame = frame.f_back
    return found


def policy_for(paths: Sequence[str]) -> str | None:
    """The policy that must grant a call made with these repository frames (innermost first) on the
    stack; None when no policy is concerned."""
    if any(path.startswith("worker/") for path in paths):
        return TASK_ROLE
    if "core/bootstrap.py" in paths:
        return BOOTSTRAP_ADMIN
    if not paths or paths[0].startswith(IGNORED_CALLERS):
        return None
    return FLOW_USER


@dataclass
class RecordedAction:
    """An IAM action as called under one policy (None: nobody's), how often, and one caller."""

    action: str
    policy: str | None
    # The first call's innermost repository frames, innermost first:
    # "core/aws/clients.py:paginate < core/aws/ecs.py:_has_services < core/aws/ecs.py:delete_cluster_if_empty"
    caller: str
    calls: int = 0


class Recorder:
    """Collects the IAM actions behind every API call; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[tuple[str | None, str], RecordedAction] = {}

    def on_parameter_build(self, params: Mapping[str, Any], model: OperationModel, **kwargs: Any) -> None:
        """botocore's before-parameter-build handler: fires once per API call, in the caller's thread."""
        actions = iam_actions(iam_prefix(model.service_model), model.name, params)
        self.record(actions, repository_frames(sys._getframe(1)))

    def record(self, actions: Iterable[str], frames: Sequence[tuple[str, str]]) -> None:
        policy = policy_for([path for path, _ in frames])
        caller = " < ".join(f"{path}:{function}" for path, function in frames[:CALLER_FRAMES]) or NO_REPOSITORY_FRAME
        self.record_for(policy, actions, caller)

    def record_for(self, policy: str | None, actions: Iterable[str], caller: str, calls: int = 1) -> None:
        """Record calls whose policy is already known (a worker's call seen by the emulator, say)."""
        with self._lock:
            for action in actions:
                entry = self._actions.setdefault((policy, action), RecordedAction(action, policy, caller))
                entry.calls += calls

    def count(self, policy: str | None, action: str) -> int:
        with self._lock:
            entry = self._actions.get((policy, action))
            return entry.calls if entry else 0

    def recorded(self) -> list[RecordedAction]:
        """A snapshot, ordered by policy and action."""
        with self._lock:
            entries = [RecordedAction(**asdict(entry)) for entry in self._actions.values()]
        return sorted(entries, key=lambda entry: (entry.policy or "", entry.action))


def granted_actions(policy: Mapping[str, Any]) -> frozenset[str]:
    """The actions a policy document's Allow statements list (possibly with wildcards)."""
    statements = policy["Statement"]
    if isinstance(statements, Mapping):
        statements = [statements]
    granted: set[str] = set()
    for statement in statements:
        if statement["Effect"] == "Allow":
            listed = statement["Action"]
            granted |= {listed} if isinstance(listed, str) else set(listed)
    return frozenset(granted)


def is_granted(action: str, granted: Iterable[str]) -> bool:
    """IAM action names are case-insensitive and grants may use * and ? wildcards."""
    return any(fnmatchcase(action.lower(), grant.lower()) for grant in granted)


def load_grants(iam_dir: Path) -> dict[str, frozenset[str]]:
    """The grants of each checked policy that exists in `iam_dir`, by file name."""
    return {
        name: granted_actions(json.loads((iam_dir / name).read_text()))
        for name in CHECKED_POLICIES
        if (iam_dir / name).exists()
    }


def not_granted(recorded: Iterable[RecordedAction], grants: Mapping[str, frozenset[str]]) -> list[RecordedAction]:
    """The recorded actions their policy does not grant (policies missing from `grants` are not judged)."""
    return [
        entry for entry in recorded if entry.policy in grants and not is_granted(entry.action, grants[entry.policy])
    ]


def never_called(recorded: Iterable[RecordedAction], grants: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    """By policy, the granted actions that no recorded call used."""
    called: dict[str, set[str]] = {}
    for entry in recorded:
        if entry.policy is not None:
            called.setdefault(entry.policy, set()).add(entry.action)
    unused: dict[str, list[str]] = {}
    for policy in UNUSED_GRANTS_JUDGED:
        actions = called.get(policy, set())
        idle = sorted(grant for grant in grants.get(policy, ()) if not any(is_granted(a, [grant]) for a in actions))
        if idle:
            unused[policy] = idle
    return unused


RECORDER = Recorder()
botocore.handlers.BUILTIN_HANDLERS.append(("before-parameter-build", RECORDER.on_parameter_build))

# The folder of this process's recordings of the emulator (one file per moto server), made on first use.
_EMULATOR_CALL_LOGS: list[Path] = []
_SERVERS = itertools.count()


def emulator_call_log() -> Path:
    """A fresh file for a moto server of this test process to record its requests in
    (core.emulator.moto_server's `call_log`); read back at the end of the session."""
    if not _EMULATOR_CALL_LOGS:
        _EMULATOR_CALL_LOGS.append(Path(tempfile.mkdtemp(prefix="aws-calls-emulator-")))
    return _EMULATOR_CALL_LOGS[0] / f"server-{next(_SERVERS)}.jsonl"


def record_worker_calls_seen_by_the_emulator(recorder: Recorder, recordings: Iterable[Path]) -> int:
    """Hold every worker request in these recordings against the task role; returns the lines that
    could not be read. A request that matches no operation becomes an action no policy grants."""
    seen = worker_calls(recordings)
    for call in seen.calls:
        prefix = IAM_PREFIXES.get(call.service, call.service)
        if call.operation is None:
            actions = frozenset({f"{prefix}:(unknown operation: {call.description})"})
        else:
            actions = iam_actions(prefix, call.operation, call.params)
        recorder.record_for(TASK_ROLE, actions, f"{SEEN_BY_THE_EMULATOR}: {call.description}")
    return seen.unreadable_lines


def _read_emulator_call_logs(recorder: Recorder) -> int:
    if not _EMULATOR_CALL_LOGS:
        return 0
    folder = _EMULATOR_CALL_LOGS.pop()
    unreadable = record_worker_calls_seen_by_the_emulator(recorder, sorted(folder.glob("*.jsonl")))
    shutil.rmtree(folder, ignore_errors=True)
    return unreadable


def merge_recorded(recorder: Recorder, entries: Iterable[Mapping[str, Any]]) -> None:
    """Add another test process's recorded actions (as written by `pytest_sessionfinish`)."""
    for entry in entries:
        recorder.record_for(entry["policy"], [entry["action"]], entry["caller"], entry["calls"])


@dataclass(frozen=True)
class _Verdict:
    recorded: list[RecordedAction]
    missing: list[RecordedAction]
    unchecked: list[str]  # policies with recorded calls and no file
    unused: dict[str, list[str]] | None  # None: the run was narrowed, so unused grants are not judged
    unreadable_lines: int  # lines of the emulator's recordings that could not be read
    iam_dir: Path
    path: Path


_VERDICT = pytest.StashKey[_Verdict]()
_NARROWED = pytest.StashKey[bool]()
_PARTS = pytest.StashKey[Path]()
PARTS_INPUT = "aws_calls_parts"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--iam-policies",
        type=Path,
        default=IAM_DIR,
        help="folder of the IAM policies the recorded AWS calls are held against (default: %(default)s)",
    )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: tell each test process where to leave its recorded calls."""
    config = node.config
    if _PARTS not in config.stash:
        config.stash[_PARTS] = Path(tempfile.mkdtemp(prefix="aws-calls-parts-"))
    node.workerinput[PARTS_INPUT] = str(config.stash[_PARTS])


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    if items:
        items[0].config.stash[_NARROWED] = True


def _ran_whole_suite(session: pytest.Session) -> bool:
    """Every test under testpaths was selected and the run was not cut short."""
    config = session.config
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not config.stash.get(_NARROWED, False)
        and not config.option.collectonly
        and not (session.shouldstop or session.shouldfail)
        and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    )


def _output_path(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is not None:
        return cache.mkdir("aws-calls") / "calls.json"
    return Path(tempfile.gettempdir()) / "prefect-distributed-aws-calls.json"


def _as_json(recorded: Iterable[RecordedAction]) -> str:
    return json.dumps([asdict(entry) for entry in recorded], indent=2) + "\n"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Judge every recorded call against its policy; a call not granted fails the run.

    A pytest-xdist test process only hands its calls (and unreadable lines) to the controller.
    """
    unreadable = _read_emulator_call_logs(RECORDER)
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None:
        part = Path(workerinput[PARTS_INPUT]) / f"{workerinput['workerid']}.json"
        part.write_text(json.dumps({"recorded": [asdict(action) for action in RECORDER.recorded()], "unreadable": unreadable}))
        return
    parts = session.config.stash.get(_PARTS, None)  # only under pytest-xdist
    if parts is not None:
        for part in sorted(parts.glob("*.json")):
            handed = json.loads(part.read_text())
            merge_recorded(RECORDER, handed["recorded"])
            unreadable += handed["unreadable"]
        shutil.rmtree(parts, ignore_errors=True)
    recorded = RECORDER.recorded()
    iam_dir = session.config.getoption("--iam-policies")
    grants = load_grants(iam_dir)
    path = _output_path(session.config)
    path.write_text(_as_json(recorded))
    verdict = _Verdict(
        recorded=recorded,
        missing=not_granted(recorded, grants),
        unchecked=sorted({e.policy for e in recorded if e.policy is not None and e.policy not in grants}),
        unused=never_called(recorded, grants) if _ran_whole_suite(session) else None,
        unreadable_lines=unreadable,
        iam_dir=iam_dir,
        path=path,
    )
    session.config.stash[_VERDICT] = verdict
    if verdict.missing and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    verdict = config.stash.get(_VERDICT, None)
    if verdict is None:
        return
    write = terminalreporter.write_line
    checked = [entry for entry in verdict.recorded if entry.policy is not None]
    if not checked and not verdict.missing:
        return
    terminalreporter.section("AWS calls and IAM policies")
    write(f"IAM actions called by the code: {len(checked)}, not granted: {len(verdict.missing)}; all: {verdict.path}")
    if verdict.missing:
        rows = [(e.action, e.policy or "", e.caller) for e in verdict.missing]
        widths = [max(len(row[i]) for row in [("action", "policy", "called from"), *rows]) for i in range(3)]
        for row in [("action", "policy", "called from"), *rows]:
            write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)), red=True)
        write(f"Add these to the policies in {verdict.iam_dir}/ (the run fails until they are).", red=True)
    if verdict.unreadable_lines:
        write(f"Note: {verdict.unreadable_lines} line(s) of the emulator's recordings could not be read.", yellow=True)
    for policy in verdict.unchecked:
        write(f"Not checked: {policy} does not exist yet, but calls were recorded for it.", yellow=True)
    if verdict.unused:
        for policy, actions in verdict.unused.items():
            note = f"Note: {policy} grants actions no test saw called: {', '.join(actions)}"
            write(textwrap.fill(note, width=120, subsequent_indent="    "))

"""The IAM check itself: a call its policy does not grant fails the run, and the workers' calls are
seen wherever the worker runs (tests/aws_calls.py, tests/emulator_calls.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from prefect_distributed.worker.main import USER_AGENT_EXTRA
from tests.aws_calls import (
    IAM_DIR,
    SEEN_BY_THE_EMULATOR,
    TASK_ROLE,
    Recorder,
    merge_recorded,
    not_granted,
    record_worker_calls_seen_by_the_emulator,
)
from tests.emulator_calls import read_call, rest_operation, worker_calls

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
# The experiment: without these, every job would fail on AWS.
WORKER_GRANTS_REMOVED = ("sqs:SendMessage", "sqs:ChangeMessageVisibility", "s3:GetObject")
WORKER_UA = f"Boto3/1.43 md/Botocore#1.43 ua/2.1 os/linux lang/python#3.11 {USER_AGENT_EXTRA}"
FLOW_UA = "Boto3/1.43 md/Botocore#1.43 ua/2.1 os/linux lang/python#3.11"


def policies_without(folder: Path, actions: tuple[str, ...]) -> Path:
    """A copy of the shipped policies whose task role lacks `actions`."""
    folder.mkdir()
    for path in IAM_DIR.glob("*.json"):
        document = json.loads(path.read_text())
        if path.name == TASK_ROLE:
            for statement in document["Statement"]:
                statement["Action"] = [action for action in statement["Action"] if action not in actions]
        (folder / path.name).write_text(json.dumps(document))
    return folder


def recorded_request(method: str, url: str, user_agent: str, service: str, **headers: str) -> dict:
    """One line of moto's recording, as its recorder writes it."""
    authorization = f"AWS4-HMAC-SHA256 Credential=testing/20261129/us-east-1/{service}/aws4_request, Signature=0"
    return {
        "headers": {"User-Agent": user_agent, "Authorization": authorization, **headers},
        "method": method,
        "url": url,
        "body": "",
        "body_encoded": False,
    }


@pytest.mark.parametrize(
    ("removed", "exit_code"),
    [((), pytest.ExitCode.OK), (("sqs:SendMessage",), pytest.ExitCode.TESTS_FAILED)],
    ids=["granted", "not-granted"],
)
def test_a_call_its_policy_does_not_grant_fails_a_run_whose_tests_all_passed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, removed: tuple[str, ...], exit_code: pytest.ExitCode
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    policies = policies_without(pytester.path / "policies", removed)
    pytester.makepyfile(
        test_worker_call="""
        from tests.aws_calls import RECORDER

        def test_a_worker_dead_letters_a_job():
            RECORDER.record({"sqs:SendMessage"}, [("worker/loop.py", "_fail_permanently")])
        """
    )

    result = pytester.runpytest_subprocess("-p", "tests.aws_calls", f"--iam-policies={policies}")

    result.assert_outcomes(passed=1)
    assert result.ret == exit_code
    if removed:
        result.stdout.fnmatch_lines(
            [
                "*not granted: 1*",
                "*sqs:SendMessage*task-role-policy.json*worker/loop.py:_fail_permanently*",
                f"Add these to the policies in {policies}/*",
            ]
        )
    else:
        result.stdout.fnmatch_lines(["*IAM actions called by the code: 1, not granted: 0*"])


def test_removing_a_grant_the_workers_need_fails_the_worker_tests_run_as_subprocesses(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The issue's experiment, on a copy of the policies: the workers run as `python -m prefect_distributed.worker`, so
    only the emulator's recording sees their calls."""
    policies = policies_without(tmp_path / "policies", WORKER_GRANTS_REMOVED)
    worker_tests = REPO / "tests" / "test_worker_process.py"

    result = pytester.runpytest_subprocess(
        f"{worker_tests}::test_a_program_that_fails_job_retries_times_is_dead_lettered_by_the_worker_with_each_runs_record",
        f"{worker_tests}::test_a_missing_input_is_dead_lettered_at_once_with_the_reason",
        f"--iam-policies={policies}",
        f"--rootdir={REPO}",
        "-o",
        f"cache_dir={tmp_path / 'cache'}",
    )

    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*not granted: 3*"])
    for action in WORKER_GRANTS_REMOVED:
        result.stdout.fnmatch_lines([f"{action} *{TASK_ROLE}*{SEEN_BY_THE_EMULATOR}*"])


@pytest.mark.parametrize(
    ("method", "url", "headers", "operation"),
    [
        ("GET", "http://127.0.0.1:5000/inputs/a/b.txt", {}, "GetObject"),
        ("HEAD", "http://127.0.0.1:5000/inputs/a/b.txt", {}, "HeadObject"),
        ("HEAD", "http://127.0.0.1:5000/inputs", {}, "HeadBucket"),
        ("GET", "http://127.0.0.1:5000/inputs?list-type=2&prefix=a%2F", {}, "ListObjectsV2"),
        ("GET", "http://127.0.0.1:5000/inputs?prefix=a", {}, "ListObjects"),
        ("PUT", "http://127.0.0.1:5000/records/runs/r/outcomes/j.json", {}, "PutObject"),
        ("PUT", "http://127.0.0.1:5000/records/k", {"x-amz-copy-source": "/records/j"}, "CopyObject"),
        ("PUT", "http://127.0.0.1:5000/out/k?partNumber=1&uploadId=u", {}, "UploadPart"),
        ("POST", "http://127.0.0.1:5000/out/k?uploads", {}, "CreateMultipartUpload"),
        ("GET", "http://127.0.0.1:5000/out/k?x-id=GetObject", {}, "GetObject"),
        ("PATCH", "http://127.0.0.1:5000/out/k", {}, None),
    ],
)
def test_a_rest_request_is_read_as_the_s3_operation_botocore_would_have_sent(
    method: str, url: str, headers: dict[str, str], operation: str | None
) -> None:
    assert rest_operation("s3", method, url, headers) == operation


def test_json_and_query_requests_are_read_from_their_target_and_action() -> None:
    body = json.dumps({"logGroupName": "g", "tags": {"run-id": "r"}}).encode()
    logs = recorded_request(
        "POST", "http://127.0.0.1:5000/", WORKER_UA, "logs", **{"X-Amz-Target": "Logs_20140328.CreateLogGroup"}
    )
    logs.update(body=base64.b64encode(body).decode(), body_encoded=True)
    sts = recorded_request(
        "POST", "http://127.0.0.1:5000/", FLOW_UA, "sts", **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    sts["body"] = "Action=GetCallerIdentity&Version=2011-06-15"

    assert (read_call(logs).service, read_call(logs).operation) == ("logs", "CreateLogGroup")
    assert read_call(logs).params == {"logGroupName": "g", "tags": {"run-id": "r"}}
    assert (read_call(sts).service, read_call(sts).operation) == ("sts", "GetCallerIdentity")


def test_only_requests_with_the_workers_user_agent_are_held_against_the_task_role(tmp_path: Path) -> None:
    recording = tmp_path / "server-0.jsonl"
    lines = [
        recorded_request("GET", "http://127.0.0.1:5000/inputs/a.txt", WORKER_UA, "s3"),
        recorded_request("DELETE", "http://127.0.0.1:5000/inputs", FLOW_UA, "s3"),
        recorded_request("PATCH", "http://127.0.0.1:5000/inputs/a.txt", WORKER_UA, "s3"),
    ]
    recording.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"headers": {"User-Ag\n')
    recorder = Recorder()

    unreadable = record_worker_calls_seen_by_the_emulator(recorder, [recording])

    assert unreadable == 1
    assert len(worker_calls([recording]).calls) == 2
    recorded = {(entry.policy, entry.action) for entry in recorder.recorded()}
    assert recorded == {
        (TASK_ROLE, "s3:GetObject"),
        (TASK_ROLE, "s3:(unknown operation: s3 PATCH /inputs/a.txt)"),
    }
    # A request that matches no operation is granted by no policy: it fails the run, it is not skipped.
    [unknown] = not_granted(recorder.recorded(), {TASK_ROLE: frozenset({"s3:*Object"})})
    assert unknown.action.startswith("s3:(unknown operation")


def test_the_calls_of_another_test_process_are_added_to_the_controllers(tmp_path: Path) -> None:
    """Under pytest-xdist each test process hands its recorded calls over as JSON; the counts add up."""
    controller = Recorder()
    controller.record({"sqs:ReceiveMessage"}, [("worker/loop.py", "_receive")])
    handed = [
        {"action": "sqs:ReceiveMessage", "policy": TASK_ROLE, "caller": "elsewhere", "calls": 4},
        {"action": "s3:GetObject", "policy": TASK_ROLE, "caller": "elsewhere", "calls": 2},
    ]

    merge_recorded(controller, handed)

    assert controller.count(TASK_ROLE, "sqs:ReceiveMessage") == 5
    assert controller.count(TASK_ROLE, "s3:GetObject") == 2

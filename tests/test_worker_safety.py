"""Real worker processes against the moto server: whatever a program prints or a job holds, the
worker's memory and every record stay bounded, a big field still reaches the program, and no AWS
secret reaches a program's output, a record, the summary or the manifest.
"""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

from prefect_distributed.worker.core import MAX_OUTPUT_TAIL_CHARS, MAX_REASON_CHARS
from prefect_distributed.worker.output import MAX_LINE_BYTES
from tests.test_worker_process import (  # noqa: F401 - make_stack is a fixture
    OUTPUT_BUCKET,
    RECORDS_BUCKET,
    MakeStack,
    Stack,
    make_stack,
    wait_until,
    write_script,
)

# The documented bound on a worker's peak memory (worker/README.md), whatever its program prints.
WORKER_PEAK_RSS_MIB = 100
LINE_BYTES = 50 * 1024 * 1024
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def wait_until_dead(stack: Stack) -> None:
    """The job is in the dead-letter queue and gone from the job queue: the worker sends it there and
    then deletes it, so for a moment it is in both."""
    wait_until(
        lambda: stack.counts(stack.dlq_url)[0] == 1 and stack.counts() == (0, 0, 0),
        120,
        "the job is in the dead-letter queue and nowhere else",
    )


def test_a_50_mb_line_with_no_newline_keeps_the_workers_memory_and_every_record_bounded(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(job_retries=1)
    stack.send_job("job-loud")
    program = write_script(
        tmp_path,
        "loud.py",
        "import sys",
        "for _ in range(50):",
        "    sys.stdout.write('x' * 1048576)  # 1 MiB at a time, never a newline",
        "sys.exit(1)",
    )
    worker = stack.start_worker(program, idle_exit_s=600, resource_log_s=0)

    wait_until_dead(stack)
    peak = peak_rss_mib(worker.pid)
    worker.send_signal(signal.SIGTERM)
    assert stack.wait_for_exit(worker) == 0

    assert peak < WORKER_PEAK_RSS_MIB
    record = stack.attempt("job-loud")
    assert record["reason"] == "exit status 1"
    cut_line = "x" * MAX_LINE_BYTES + f" [{LINE_BYTES - MAX_LINE_BYTES} more bytes of this line left out]"
    assert record["output_tail"] == cut_line[-MAX_OUTPUT_TAIL_CHARS:]
    # The worker's log holds the cut line once, not the 50 MB.
    assert MAX_LINE_BYTES < len(stack.logs()) < MAX_LINE_BYTES + 10_000
    summary, manifest = stack.summary_and_manifest(["job-loud"])
    [dead] = json.loads(summary.model_dump_json())["failed"]
    assert len(dead["reason"]) == MAX_REASON_CHARS and dead["reason"].startswith("exit status 1: xxx")
    assert len(dead["output_tail"]) <= MAX_OUTPUT_TAIL_CHARS
    assert len(summary.model_dump_json()) < 2 * (MAX_REASON_CHARS + MAX_OUTPUT_TAIL_CHARS)
    assert len(manifest) < 2 * MAX_REASON_CHARS


def test_a_field_too_big_for_the_environment_reaches_the_program_as_a_file(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    big = "A01,A02;" * 25_000  # 200,000 characters: Linux refuses a variable of 128 KiB or more
    stack.send_job("job-big", well="B07", image_list=big)
    program = write_script(
        tmp_path,
        "big.py",
        "import os, pathlib, sys",
        "text = pathlib.Path(os.environ['JOB_IMAGE_LIST_FILE']).read_text()",
        "present = 'JOB_IMAGE_LIST' in os.environ",
        "seen = f\"{len(text)} {text[:8]} {os.environ['JOB_WELL']} {present}\"",
        "pathlib.Path(sys.argv[1], 'seen.txt').write_text(seen)",
    )

    worker = stack.start_worker(f"{program} {{output_dir}}")

    assert stack.wait_for_exit(worker) == 0
    assert stack.outcome("job-big")["status"] == "succeeded"
    assert stack.text(OUTPUT_BUCKET, "results/job-big/seen.txt") == "200000 A01,A02; B07 False"


# The whole environment, the AWS variables last so that the attempt record's tail holds them.
PRINT_ENVIRONMENT = """
import os, sys
for name in sorted(os.environ, key=lambda name: (name.startswith("AWS_"), name)):
    print(f"{name}={os.environ[name]}")
sys.exit(1)
"""


def test_no_aws_key_reaches_the_program_and_a_passed_one_is_masked_in_every_record(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Two jobs print their program's environment and fail: one run without the keys (the default),
    one with `pass_aws_credentials`, where the worker masks the secret in the program's output."""
    stack = make_stack(job_retries=1)
    command = write_script(tmp_path, "printenv.py", PRINT_ENVIRONMENT)
    credentials = {"AWS_ACCESS_KEY_ID": "AKIAWORKERKEY0001", "AWS_SECRET_ACCESS_KEY": SECRET}

    for job_id, passed in (("job-default", "false"), ("job-passed", "true")):
        stack.send_job(job_id)
        worker = stack.start_worker(command, environment=credentials, pass_aws_credentials=passed)
        assert stack.wait_for_exit(worker) == 0

    default_tail = stack.attempt("job-default")["output_tail"].splitlines()
    assert "AWS_REGION=us-east-1" in default_tail  # the program did print its environment
    assert not [line for line in default_tail if line.startswith(("AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="))]
    passed_tail = stack.attempt("job-passed")["output_tail"].splitlines()
    assert "AWS_SECRET_ACCESS_KEY=*****" in passed_tail
    assert "AWS_ACCESS_KEY_ID=AKIAWORKERKEY0001" in passed_tail  # an id, not a secret
    summary, manifest = stack.summary_and_manifest(["job-default", "job-passed"])
    records = [stack.text(RECORDS_BUCKET, key) for key in stack.keys(RECORDS_BUCKET)]
    haystacks = {
        "worker logs": stack.logs(),
        "records": "\n".join(records),
        "summary": summary.model_dump_json(),
        "manifest": manifest,
    }
    for where, text in haystacks.items():
        assert SECRET not in text, f"the secret appeared in the {where}"
    assert "AWS_SECRET_ACCESS_KEY=*****" in summary.model_dump_json()


def test_a_program_told_to_print_a_secret_the_worker_holds_shows_it_masked(make_stack: MakeStack) -> None:
    stack = make_stack(job_retries=1)
    stack.send_job("job-echo", key=SECRET)  # a secret that reached a job some other way

    worker = stack.start_worker(
        f"sh -c {shlex.quote('echo using $0 now; exit 3')} {{key}}", environment={"AWS_SECRET_ACCESS_KEY": SECRET}
    )

    assert stack.wait_for_exit(worker) == 0
    assert stack.attempt("job-echo")["output_tail"] == "using ***** now"
    assert SECRET not in stack.logs()

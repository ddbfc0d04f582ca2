"""When a worker process runs a job's program: with check_if_done off it runs even though the
outputs are there, and a failed attempt is retried after retry_delay_s, not at once (the moto
server, real `python -m prefect_distributed.worker` processes)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.test_worker_process import (
    OUTPUT_BUCKET,
    RECORDS_BUCKET,
    RUN_ID,
    MakeStack,
    make_stack,
    write_script,
)

__all__ = ["make_stack"]  # the fixture, used by name

RETRY_DELAY_S = 3

# Appends its start time (Unix seconds) to the file named by its argument; fails on its first run.
FAILS_ONCE = (
    "import pathlib, sys, time",
    "starts = pathlib.Path(sys.argv[1])",
    "with starts.open('a') as f: f.write(f'{time.time()}\\n')",
    "pathlib.Path(sys.argv[2], 'result.txt').write_text('second try')",
    "sys.exit(1 if len(starts.read_text().split()) == 1 else 0)",
)


@pytest.mark.parametrize("check_if_done", ["false", None], ids=["off", "unset"])
def test_with_check_if_done_off_the_program_runs_although_its_outputs_exist(
    make_stack: MakeStack, tmp_path: Path, check_if_done: str | None
) -> None:
    stack = make_stack()
    stack.put(OUTPUT_BUCKET, "results/job-again/a.csv", "old")
    stack.put(OUTPUT_BUCKET, "results/job-again/b.csv", "old")
    stack.send_job("job-again")
    program = write_script(
        tmp_path, "rewrite.py", "import pathlib, sys", "pathlib.Path(sys.argv[1], 'a.csv').write_text('new')"
    )
    settings = {"expected_number_files": 2, "necessary_string": ".csv"}
    if check_if_done is not None:
        settings["check_if_done"] = check_if_done

    worker = stack.start_worker(program + " {output_dir}", **settings)

    assert stack.wait_for_exit(worker) == 0
    assert stack.outcome("job-again")["status"] == "succeeded"
    assert stack.text(OUTPUT_BUCKET, "results/job-again/a.csv") == "new"
    assert stack.counts() == (0, 0, 0)


def test_a_failed_attempt_is_retried_after_retry_delay_s_not_at_once(make_stack: MakeStack, tmp_path: Path) -> None:
    """The message's visibility, not the queue's (ten minutes here), decides when the next attempt comes."""
    stack = make_stack(max_receive_count=3, visibility_timeout_s=600)
    stack.send_job("job-flaky")
    starts = tmp_path / "starts.txt"
    program = write_script(tmp_path, "flaky.py", *FAILS_ONCE)

    worker = stack.start_worker(
        f"{program} {shlex.quote(str(starts))} {{output_dir}}",
        retry_delay_s=RETRY_DELAY_S,
        visibility_timeout_s=600,
        idle_exit_s=RETRY_DELAY_S + 2,
    )

    assert stack.wait_for_exit(worker) == 0
    first, second = (float(line) for line in starts.read_text().split())
    assert second - first >= RETRY_DELAY_S
    outcome = stack.outcome("job-flaky")
    assert (outcome["status"], outcome["attempt"]) == ("succeeded", 2)
    assert stack.keys(RECORDS_BUCKET, f"runs/{RUN_ID}/attempts/") == [f"runs/{RUN_ID}/attempts/job-flaky.1.json"]
    assert stack.text(OUTPUT_BUCKET, "results/job-flaky/result.txt") == "second try"

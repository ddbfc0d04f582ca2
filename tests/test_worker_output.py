"""The program's output as bounded lines with secrets masked, and the environment it runs in."""

from __future__ import annotations

from prefect_distributed.worker.output import MASK, MAX_LINE_BYTES, OutputLines, mask, secrets_in
from prefect_distributed.worker.program import program_environment

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def lines_of(*chunks: bytes, secrets: tuple[str, ...] = (), max_bytes: int = MAX_LINE_BYTES) -> list[str]:
    output = OutputLines(secrets, max_bytes)
    lines = [line for chunk in chunks for line in output.feed(chunk)]
    return lines + output.close()


def test_newlines_crlf_and_a_progress_bars_carriage_returns_each_end_a_line_across_chunks() -> None:
    assert lines_of(b"one\ntw", b"o\r\nthree\r", b"\nfour\r10%\r", b"20%\rdone") == [
        "one",
        "two",
        "three",
        "four",
        "10%",
        "20%",
        "done",
    ]
    assert lines_of(b"ends with a newline\n") == ["ends with a newline"]
    assert lines_of(b"a\n\nb\n") == ["a", "", "b"]
    assert lines_of() == []


def test_a_line_longer_than_the_limit_is_cut_and_says_how_much_was_left_out() -> None:
    chunks = [b"x" * 1000] * 50 + [b"\nnext line\n"]
    assert lines_of(*chunks, max_bytes=4096) == [
        "x" * 4096 + f" [{50_000 - 4096} more bytes of this line left out]",
        "next line",
    ]
    # A 50 MB line with no newline at all: one cut line, as the chunks come.
    output = OutputLines(max_bytes=MAX_LINE_BYTES)
    assert all(output.feed(b"y" * 65536) == [] for _ in range(800))
    [last] = output.close()
    assert last.startswith("y" * MAX_LINE_BYTES + " [")
    assert len(last) < MAX_LINE_BYTES + 100


def test_a_cut_that_splits_a_character_keeps_the_line_readable() -> None:
    [line] = lines_of("é".encode() * 3, max_bytes=5)
    assert line == "éé\ufffd [1 more bytes of this line left out]"


def test_secrets_are_masked_in_every_line_and_at_the_end_of_a_cut_one() -> None:
    assert lines_of(f"key={SECRET}\n".encode(), f"again {SECRET}".encode(), secrets=(SECRET,)) == [
        f"key={MASK}",
        f"again {MASK}",
    ]
    # The line is cut in the middle of the secret: its first characters are masked too.
    [cut] = lines_of(b"k" * 90 + SECRET.encode(), secrets=(SECRET,), max_bytes=100)
    assert cut == "k" * 90 + MASK + f" [{len(SECRET) - 10} more bytes of this line left out]"
    assert SECRET[:10] not in cut
    # An uncut line that merely ends like a secret starts is left alone.
    assert mask("user wJal", [SECRET]) == "user wJal"


def test_the_secret_key_and_session_token_are_masked_when_long_enough_to_be_keys() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "testing", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE1"}
    assert secrets_in(env) == (SECRET, "testing")
    assert secrets_in({}) == ()
    assert secrets_in({"AWS_SECURITY_TOKEN": SECRET}) == (SECRET,)  # the session token's older name
    # An emulator's "testing" is no real key: masking it would garble ordinary text.
    assert mask(f"testing with {SECRET} and AKIAEXAMPLE1", secrets_in(env)) == f"testing with {MASK} and AKIAEXAMPLE1"


def test_the_program_gets_no_aws_key_unless_the_config_passes_them() -> None:
    worker_env = {
        "PATH": "/usr/bin",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE1",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": "token-0123456789",
        "AWS_REGION": "us-east-1",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/task-role",
    }
    job_env = {"JOB_WELL": "A01", "TMPDIR": "/job/work"}
    assert program_environment(worker_env, job_env, pass_aws_credentials=False) == {
        "PATH": "/usr/bin",
        "AWS_REGION": "us-east-1",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/task-role",  # the task role: no key
        **job_env,
    }
    assert program_environment(worker_env, job_env, pass_aws_credentials=True) == {**worker_env, **job_env}

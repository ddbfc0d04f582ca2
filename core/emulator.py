"""The embedded default: a moto server on loopback that stands in for AWS.

Used by `make demo`, the end-to-end tests and the benchmarks. Each server is its own process, so
in-process `mock_aws` elsewhere cannot wipe its state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Return once `url` answers; raise if `process` (the server behind it) exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with status {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s") from None
            time.sleep(0.1)


@contextmanager
def moto_server(log_path: Path | None = None, call_log: Path | None = None) -> Iterator[str]:
    """Start a moto server on a free 127.0.0.1 port; yield its endpoint URL; stop it.

    With `call_log`, moto's recorder appends every request the server answers to that file, one JSON
    line each (method, URL, headers, body), whichever process sent it: how the tests see the calls of
    worker processes. The lines hold request headers and bodies, so it is for fake credentials only.
    """
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    # AWS's managed policies exist in every account; the bootstrap attaches two of them.
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    if call_log is not None:
        env.update({"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(call_log)})
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{endpoint}/moto-api/", process, STARTUP_TIMEOUT_S, "the AWS emulator")
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()  # type: ignore[union-attr]


def reset(endpoint: str) -> None:
    """Empty the emulator: every queue, bucket and other resource is gone.

    Generous time limit: on a loaded machine, emptying a server that held many resources has taken
    more than ten seconds."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass

"""The embedded default: a moto server on loopback that stands in for AWS.

Used by `make demo`, the end-to-end tests and the benchmarks. Each server is its own process, so
in-process `mock_aws` elsewhere cannot wipe its state.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_distributed.core.bootstrap import EXECUTION_POLICY, FLEET_POLICY, INSTANCE_POLICY

STARTUP_TIMEOUT_S = 30.0
# The AWS managed policies the bootstrap attaches, which every emulated account knows. moto can give
# accounts all of AWS's (about 1,600), but then parses them all again whenever it makes an account's
# IAM, after every reset: most of the emulator's time in the test suite.
MANAGED_POLICIES = tuple(arn_path.rsplit("/", 1)[1] for arn_path in (INSTANCE_POLICY, FLEET_POLICY, EXECUTION_POLICY))


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
    amis = tempfile.TemporaryDirectory(prefix="emulator-")
    env = {
        **os.environ,
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        "MOTO_AMIS_PATH": str(write_default_amis(Path(amis.name) / "amis.json")),
    }
    if call_log is not None:
        env.update({"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(call_log)})
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect_distributed.core.emulator", "-H", "127.0.0.1", "-p", str(port)],
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
        amis.cleanup()
        if log_path:
            log.close()  # type: ignore[union-attr]


def reset(endpoint: str) -> None:
    """Empty the emulator: every queue, bucket and other resource is gone.

    Generous time limit: on a loaded machine, emptying a server that held many resources has taken
    more than ten seconds."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass


@functools.cache
def our_managed_policies() -> str:
    """moto's AWS managed policies data (JSON), narrowed to MANAGED_POLICIES: set it as
    `moto.iam.models.aws_managed_policies_data`, with MOTO_IAM_LOAD_MANAGED_POLICIES=true, before
    IAM's first call. Read once per process: the whole file takes a second of CPU to parse."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    every = json.loads(aws_managed_policies_data)
    return json.dumps({name: every[name] for name in MANAGED_POLICIES})


def write_default_amis(path: Path) -> Path:
    """Write moto's own default AMIs (44) to `path`, for MOTO_AMIS_PATH, which must be set before moto's
    EC2 is imported. Without it, moto also makes the 1,227 ECS-optimized AMIs of the region, each with a
    volume and a snapshot, for every account and region it creates, after every reset. Nothing here
    describes them: the ECS AMI is looked up through SSM, as on AWS, and moto's SSM still knows it."""
    import moto  # its package only: moto.ec2 would read MOTO_AMIS_PATH now

    path.write_bytes(gzip.decompress((Path(moto.__file__).parent / "ec2/resources/amis.json.gz").read_bytes()))
    return path


if __name__ == "__main__":
    # The emulator's own process: moto's server, its accounts knowing our managed policies.
    import logging

    from moto import backends
    from moto.iam import models
    from moto.server import main

    models.aws_managed_policies_data = our_managed_policies()
    # moto's server lists its own package folder (about 150 stat calls) on every request, under the
    # lock that serialises its requests; the folder does not change while it runs.
    moto_modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: moto_modules
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a log line per request
    main(sys.argv[1:])

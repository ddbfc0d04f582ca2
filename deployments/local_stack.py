"""`make serve`: the whole system on this machine, run the way Prefect users run deployments.

Starts an AWS emulator (with the demo's inputs uploaded), a Prefect server (SQLite, loopback),
the `distributed` work pool, the deployments of prefect.yaml, and a Prefect worker whose flow
runs talk to the emulator. Then, in a second terminal:

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect deployment run distributed/run -p config=deployments/demo/config.yaml --watch

It prints the lines to export for a program that runs the flow itself, against the same server and
emulator (deployments/examples/).

Ctrl-C stops everything, worker first (a worker whose server is gone hangs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments.demo.data import CONFIG, upload_inputs  # noqa: E402
from prefect_distributed.core import emulator  # noqa: E402

PREFECT = str(Path(sys.executable).parent / "prefect")
WORK_POOL = "distributed"
# What a program outside the stack (the examples, a test) needs to use its server and its emulator.
CLIENT_VARIABLES = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
)
SERVER_STARTUP_S = 90.0


@dataclass(frozen=True)
class LocalStack:
    api_url: str
    aws_endpoint: str
    environment: dict[str, str]  # what a client of this stack needs: PREFECT_API_URL, the emulator and its keys


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def local_stack(
    home: Path, port: int = 4200, call_log: Path | None = None, startup_s: float = SERVER_STARTUP_S
) -> Iterator[LocalStack]:
    """Everything started, deployments registered; stopped again on exit. `call_log`: see
    core.emulator.moto_server; `startup_s`: how long the Prefect server may take to answer (longer on a
    loaded machine)."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    with ExitStack() as stack:
        endpoint = stack.enter_context(emulator.moto_server(log_path=home / "emulator.log", call_log=call_log))
        environment = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": api_url,
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        upload_inputs(bucket="distributed-demo", endpoint_url=endpoint)

        def start(args: list[str], log_name: str) -> subprocess.Popen[bytes]:
            log = stack.enter_context(open(home / log_name, "ab"))
            # Own sessions: a Ctrl-C reaches only this script, which stops them in order.
            process = subprocess.Popen(
                args, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            stack.callback(_stop, process)
            return process

        server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log")
        emulator.wait_until_up(f"{api_url}/health", server, startup_s, "the Prefect server")
        for args in (
            [PREFECT, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
            [PREFECT, "--no-prompt", "deploy", "--all"],
        ):
            subprocess.run(args, cwd=REPO, env=environment, check=True, capture_output=True)
        # Registered last, so it is stopped first: a worker whose server is gone hangs.
        start([PREFECT, "worker", "start", "--pool", WORK_POOL], "worker.log")
        yield LocalStack(
            api_url=api_url,
            aws_endpoint=endpoint,
            environment={k: environment[k] for k in CLIENT_VARIABLES},
        )


def main() -> None:
    home = REPO / ".demo" / "local-stack"
    port = int(os.environ.get("DISTRIBUTED_PREFECT_PORT", "4200"))
    with local_stack(home, port) as stack:
        exports = "".join(
            f"  export {name}={stack.environment[name]}\n" for name in CLIENT_VARIABLES if name != "PREFECT_HOME"
        )
        print(
            f"Prefect UI: http://127.0.0.1:{port}   AWS emulator: {stack.aws_endpoint}   logs: {home}\n"
            "In another terminal (the emulator accepts these keys):\n"
            f"{exports}"
            f"  .venv/bin/prefect deployment run distributed/run -p config={CONFIG.relative_to(REPO)} --watch\n"
            f"  .venv/bin/python deployments/examples/batch_as_subflow.py {CONFIG.relative_to(REPO)}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        with suppress(KeyboardInterrupt):
            signal.pause()
    print("Stopped.")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()

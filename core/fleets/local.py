"""The `local` fleet: worker processes on this machine, running the very code the container runs.

Each worker is `python -m prefect_distributed.worker` with the run's environment. Its pid and log
live in a state folder per run (like dsub's local provider), so status and stop work from any
process; stopping removes the folder once every worker is gone, unless fleet.keep_local_logs asks
to keep it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect_distributed.core.aws.clients import AwsClients
from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.fleets.base import FleetRequest, ThisMachine, flow_credentials
from prefect_distributed.core.models import FleetHandle, FleetStatus

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
# How long SIGKILLed workers get to be gone before their folder is removed.
KILL_WAIT_S = 2.0


def default_state_root() -> Path:
    return Path(os.environ.get("DISTRIBUTED_LOCAL_STATE", Path(tempfile.gettempdir()) / "prefect-distributed"))


def _is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie; reaps it when it is our child."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    # A pid the system reused for another program is not our worker.
    return state != "Z" and b"worker" in cmdline


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
        os.kill(pid, signum)


def _wait_for_exit(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pids = [pid for pid in pids if _is_running(pid)]
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if _is_running(pid)]
    return pids


class LocalFleet(ThisMachine):
    """Runs workers as processes on this machine; `credentials` is the AWS environment they get."""

    def __init__(
        self,
        credentials: dict[str, str],
        state_root: Path | None = None,
        workdir: Path | None = None,
        workers: int = 1,
        keep_logs: bool = False,
    ) -> None:
        self._credentials = credentials
        self._state_root = state_root or default_state_root()
        self._workdir = workdir or Path.cwd()
        self._workers = workers
        self._keep_logs = keep_logs

    def preflight(self) -> None:
        """Raises ConfigError when the workers' folder does not exist."""
        if not self._workdir.is_dir():
            raise ConfigError(f"fleet.local_workdir: {self._workdir} is not a folder")

    @classmethod
    def from_clients(cls, clients: AwsClients, config: RunConfig | None = None) -> LocalFleet:
        """Workers get the flow's own credentials and endpoint (the process environment, never a log)."""
        environment = flow_credentials(clients)
        if clients.endpoint_url:
            environment["AWS_ENDPOINT_URL"] = clients.endpoint_url
        if config is None:
            return cls(environment)
        fleet = config.fleet
        return cls(
            environment, workdir=fleet.local_workdir, workers=fleet.local_workers, keep_logs=fleet.keep_local_logs
        )

    def handle_for(self, run_id: str, workers: int = 0) -> FleetHandle:
        return FleetHandle(backend="local", id=str(self._state_root / run_id), workers=workers)

    def _pids(self, handle: FleetHandle) -> list[int]:
        return [int(path.read_text()) for path in sorted(Path(handle.id).glob("worker-*.pid"))]

    def start(self, request: FleetRequest) -> FleetHandle:
        handle = self.handle_for(request.run_id, self._workers)
        state_dir = Path(handle.id)
        if state_dir.exists() and any(_is_running(pid) for pid in self._pids(handle)):
            logger.info("Local fleet of run %s is already running", request.run_id)
            return handle
        state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **request.environment,
            **self._credentials,
            # The job's program finds the same Python and tools as the flow.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        for index in range(self._workers):
            with open(state_dir / f"worker-{index}.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "prefect_distributed.worker"],
                    cwd=self._workdir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C meant for the flow reaches workers through cleanup
                )
            (state_dir / f"worker-{index}.pid").write_text(str(process.pid))
        logger.info("Started %d local workers; logs in %s", self._workers, state_dir)
        return handle

    def running_fleets(self) -> list[str]:
        """Run ids whose local workers are alive."""
        if not self._state_root.is_dir():
            return []
        return sorted(
            path.name for path in self._state_root.iterdir() if self.status(self.handle_for(path.name)).running
        )

    def status(self, handle: FleetHandle) -> FleetStatus:
        """Live workers; and once they are gone, the log folder when it is kept on purpose."""
        running = sum(_is_running(pid) for pid in self._pids(handle))
        state_dir = Path(handle.id)
        kept = []
        if self._keep_logs and not running and state_dir.is_dir():
            kept.append(f"local fleet logs {state_dir} (fleet.keep_local_logs)")
        return FleetStatus(target=handle.workers, running=running, kept=kept)

    def stop(self, handle: FleetHandle) -> None:
        """SIGTERM (workers return their job to the queue), then SIGKILL after a grace period; then the
        folder of pid and log files goes too, unless kept by config or a worker outlived its SIGKILL."""
        pids = [pid for pid in self._pids(handle) if _is_running(pid)]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        pids = _wait_for_exit(pids, STOP_GRACE_S)
        for pid in pids:
            logger.warning("Worker %d did not stop within %.0f s; killing it", pid, STOP_GRACE_S)
            _signal(pid, signal.SIGKILL)
        if _wait_for_exit(pids, KILL_WAIT_S):
            return  # status reports them, and a later stop tries again
        state_dir = Path(handle.id)
        if self._keep_logs:
            for path in state_dir.glob("worker-*.pid"):
                path.unlink()
        else:
            shutil.rmtree(state_dir, ignore_errors=True)

"""ECS task scale-in protection: a container running a job asks ECS not to stop it when the service shrinks.

Once no job waits, the control plane lowers the ECS service's desired count to the containers the
running jobs need; ECS then stops only tasks that are not protected. Each worker loop protects its
container when it starts a job, through the ECS agent (`PUT $ECS_AGENT_URI/task-protection/v1/state`),
and renews that while the job runs. Nobody ever removes protection: it simply expires
EXPIRES_IN_MINUTES after the last renewal. So the loops of one container need no shared counter
(each renewal pushes the expiry out for all of them), and an idle container is stoppable at most
that long after its last job. This replaces Distributed-Something's per-machine CloudWatch CPU
alarm, which cost money per machine, leaked when not deleted and terminated machines only after 15
idle minutes.

Renewals run on their own timer rather than with the visibility heartbeat: the heartbeat beats
every half visibility timeout (up to 6 hours), while protection must be renewed well within its
expiry; and every renewal is an ECS API call made by the agent, so it should be rare.

Off ECS (`ECS_AGENT_URI` unset, e.g. the local fleet) nothing is called. A failing endpoint never
fails a job: it is logged once as a warning (later failures at DEBUG), and the job goes on
unprotected, which at worst means ECS stops the container mid-job and the job goes back to the queue.
The task role needs `ecs:UpdateTaskProtection` for the agent to make the call.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

AGENT_URI_VARIABLE = "ECS_AGENT_URI"
STATE_PATH = "/task-protection/v1/state"
EXPIRES_IN_MINUTES = 10
# Renew at half the expiry, so one lost renewal does not let protection lapse mid-job.
RENEW_EVERY_S = EXPIRES_IN_MINUTES * 60 / 2
# The agent forwards the call to the ECS API; a hung agent must not hold a job up for long.
REQUEST_TIMEOUT_S = 5.0
# The agent is on the machine's link-local address: never reached through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TaskProtection:
    """One worker loop's side of its container's scale-in protection; does nothing without an agent URI."""

    def __init__(
        self,
        agent_uri: str | None,
        log: logging.LoggerAdapter[Any],
        *,
        expires_in_minutes: int = EXPIRES_IN_MINUTES,
        renew_every_s: float = RENEW_EVERY_S,
    ) -> None:
        self._url = agent_uri.rstrip("/") + STATE_PATH if agent_uri else None
        self._log = log
        self._body = json.dumps({"ProtectionEnabled": True, "ExpiresInMinutes": expires_in_minutes}).encode()
        self._renew_every_s = renew_every_s
        self._warned = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str], log: logging.LoggerAdapter[Any]) -> TaskProtection:
        """The ECS agent sets ECS_AGENT_URI in every container of an ECS task; elsewhere it is unset."""
        return cls(env.get(AGENT_URI_VARIABLE, "").strip() or None, log)

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def protect(self) -> bool:
        """Protect the container for the next EXPIRES_IN_MINUTES; True when the agent confirmed it."""
        if self._url is None:
            return False
        request = urllib.request.Request(
            self._url, data=self._body, method="PUT", headers={"Content-Type": "application/json"}
        )
        try:
            with _OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
                problem = _refusal(response.read())
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {_refusal(exc.read()) or exc.reason}"
        # URLError and timeouts are OSErrors; a garbled answer is an HTTPException.
        except (OSError, http.client.HTTPException) as exc:
            problem = str(exc)
        if problem is None:
            return True
        if self._warned:
            self._log.debug("task scale-in protection failed again: %s", problem)
        else:
            self._warned = True
            self._log.warning(
                "task scale-in protection failed (%s); jobs go on, but when the service shrinks ECS may stop "
                "this container mid-job, which hands the job back to the queue. The task role needs "
                "ecs:UpdateTaskProtection",
                problem,
            )
        return False

    @contextmanager
    def while_busy(self) -> Iterator[None]:
        """Protect now, then renew every `renew_every_s` until the block ends (protection then expires)."""
        if self._url is None:
            yield
            return
        self.protect()
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self._renew_every_s):
                self.protect()

        thread = threading.Thread(target=renew, name="task-protection", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def _refusal(body: bytes) -> str | None:
    """What the agent's answer says went wrong ({"failure": ...} or {"error": ...}), None when nothing did."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    for key in ("error", "failure"):
        if isinstance(answer.get(key), dict):
            detail = answer[key]
            return f"{key}: {detail.get('Code') or detail.get('Reason') or ''} {detail.get('Message') or ''}".strip()
    return None

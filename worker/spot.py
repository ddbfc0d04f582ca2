"""Watching for an EC2 Spot interruption notice, so the worker stops exactly as it does on SIGTERM.

EC2 announces a Spot interruption about two minutes ahead in the instance metadata (IMDS), at
`/latest/meta-data/spot/instance-action` (404 until there is one). Stopping then hands the running
job back to the queue at once instead of losing it to the visibility timeout when the machine goes.
IMDSv2 only: a session token first (PUT), then the read with that token.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21_600
POLL_INTERVAL_S = 5.0
# IMDS answers in milliseconds; a slow answer must not hold up a worker starting off EC2.
REQUEST_TIMEOUT_S = 2.0
# Renew the token a minute before IMDS would refuse it.
_TOKEN_RENEW_S = TOKEN_TTL_S - 60
# IMDS is never reached through a proxy, whatever HTTP(S)_PROXY says (the AWS SDKs do the same).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class InstanceAction:
    """A notice: what EC2 will do (`terminate`, `stop`, `hibernate`) and when (UTC)."""

    action: str
    time: str


def parse_instance_action(body: bytes) -> InstanceAction:
    """Read a notice's body; one that does not parse is still a notice, of an unknown action."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return InstanceAction(action="unknown", time="unknown")
    return InstanceAction(action=str(data.get("action", "unknown")), time=str(data.get("time", "unknown")))


class SpotWatcher:
    """Polls IMDS for an interruption notice and sets `stop` when there is one."""

    def __init__(self, endpoint: str, stop: threading.Event, log: logging.LoggerAdapter[Any]) -> None:
        self._endpoint = endpoint
        self._stop = stop
        self._log = log
        self._token: str | None = None
        self._token_at = 0.0

    def _request(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(self._endpoint + path, method=method, headers=headers)
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.read()

    def _session_token(self) -> str:
        """The cached IMDSv2 token, renewed before it expires (one PUT per six hours, not per poll)."""
        if self._token is None or time.monotonic() - self._token_at > _TOKEN_RENEW_S:
            body = self._request("PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
            self._token, self._token_at = body.decode("ascii").strip(), time.monotonic()
        return self._token

    def _instance_action(self) -> InstanceAction | None:
        try:
            body = self._request("GET", INSTANCE_ACTION_PATH, {"X-aws-ec2-metadata-token": self._session_token()})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no notice
                return None
            raise
        return parse_instance_action(body)

    def check(self) -> bool:
        """Look once; True when a notice is out, and then the stop event is set.

        Any error (not on EC2, IMDS unreachable, a refused token) counts as no notice: it is logged
        at DEBUG and the next poll tries again with a new token.
        """
        try:
            notice = self._instance_action()
        # URLError, HTTPError and timeouts are OSErrors; a garbled answer is an HTTPException or a
        # ValueError (a token that is not ASCII).
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._token = None
            self._log.debug("spot interruption check failed: %s", exc)
            return False
        if notice is None:
            return False
        self._log.warning("spot interruption notice: %s at %s; stopping", notice.action, notice.time)
        self._stop.set()
        return True

    def run(self) -> None:
        """Poll until a notice comes or the worker stops for another reason (a thread's target)."""
        while not self._stop.wait(POLL_INTERVAL_S):
            if self.check():
                return


def start_spot_watch(endpoint: str, stop: threading.Event, log: logging.LoggerAdapter[Any]) -> None:
    """Watch for a notice: once now, then every POLL_INTERVAL_S in a daemon thread.

    Looking before any job is taken means a worker restarted on a doomed machine takes none.
    """
    watcher = SpotWatcher(endpoint, stop, log)
    if not watcher.check():
        threading.Thread(target=watcher.run, name="spot-watch", daemon=True).start()

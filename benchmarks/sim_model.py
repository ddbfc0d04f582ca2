"""A batch on a fleet, on a simulated clock: jobs, machines, ECS containers, workers, Spot interruptions.

Time moves only from event to event (a heap), so a 100,000-job batch on 1,000 machines that would
take hours on AWS simulates in seconds. The monitor is not modelled here: `sim_monitors.py` runs our
own monitor loop (`core.monitor.wait_for_completion` and its policy) or Distributed-Something's
against this model, through `snapshot()`, `scale_in()`, `hold()` and `spent_usd()`.

What each piece does, and the AWS behaviour it follows (our worker's heartbeat, scale-in
protection and Spot notice; Distributed-Something's one empty poll, its idle alarms and its
visibility timeout; a maintain-type Spot Fleet, an ECS capacity provider with managed scaling,
Fargate's launch rate and billing), is spelled out in benchmarks/README.md, "The simulation".
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from benchmarks.sim_scenario import Scenario, job_durations
from prefect_distributed.core.models import RunSnapshot
from prefect_distributed.worker import protection, spot

Worker = Literal["ours", "ds"]

# Our worker's ECS task scale-in protection: set for 10 minutes, renewed every 5.
PROTECTION_S, PROTECTION_RENEW_S = protection.EXPIRES_IN_MINUTES * 60.0, protection.RENEW_EVERY_S
SPOT_NOTICE_S = 120.0  # EC2's Spot interruption notice
OUR_NOTICE_POLL_S = spot.POLL_INTERVAL_S  # how often our worker reads the notice from IMDS
DS_EMPTY_POLL_S = 20.0  # Distributed-Something's worker: one 20 s long poll, then it exits
DS_ALARM_S = 15 * 60.0  # its idle alarm: CPU max < 1 % for 15 periods of 60 s
DS_ALARM_LAG_S = 5 * 60.0  # basic monitoring sends 5-minute datapoints: the alarm fires up to 5 min late
DS_MAX_RECEIVES = 10  # its dead-letter queue's maxReceiveCount
MANAGED_SCALE_IN_S = 15 * 60.0  # ec2-spot: target tracking's scale-in alarm, 15 one-minute datapoints
MANAGED_SCALE_OUT_S = 60.0  # ec2-spot: its scale-out alarm, one one-minute datapoint
FARGATE_BURST, FARGATE_RATE_PER_S = 100, 20.0  # Fargate's task launch token bucket
FARGATE_MIN_BILLED_S = 60.0


# Machines and containers are plain classes with slots, not models: a batch makes thousands of them
# and the event loop touches them millions of times.
class Machine:
    """A machine (on fargate: one task). Paid from `launched_at` to `ended_at`."""

    __slots__ = ("launched_at", "joined", "ended_at", "containers", "busy", "token", "noticed")

    def __init__(self, launched_at: float) -> None:
        self.launched_at = launched_at
        self.joined, self.noticed = False, False
        self.ended_at: float | None = None
        self.containers: set[Container] = set()
        self.busy = 0
        self.token = 0  # bumps to cancel a pending idle alarm or managed scale-in


class Container:
    """One container with one worker process: one slot."""

    __slots__ = ("machine", "job", "started_at", "protected_until", "alive", "worker_alive", "stopping", "token")

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.job = -1
        self.started_at = 0.0
        self.protected_until = -math.inf
        self.alive = self.worker_alive = True
        self.stopping = False  # ECS is stopping it
        self.token = 0


# Where a job's message is.
VISIBLE, IN_FLIGHT, DONE, DEAD = 0, 1, 2, 3


class Simulation:
    """The batch's state and its event loop; the monitors in sim_monitors.py drive it.

    `stop()` ends it as cleanup does: every machine terminated `shutdown_s` later, jobs not done
    by then left unfinished (listed as such by our summary; Distributed-Something deletes the queue).
    """

    def __init__(self, scenario: Scenario, worker: Worker, durations: list[float] | None = None) -> None:
        if worker == "ds" and scenario.backend != "spot-fleet":
            raise ValueError("Distributed-Something runs on a Spot Fleet only")
        self.s, self.worker = scenario, worker
        self.rng = random.Random(scenario.seed + 1)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.durations = durations if durations is not None else job_durations(scenario)
        if len(self.durations) != scenario.jobs:
            raise ValueError(f"{len(self.durations)} durations for {scenario.jobs} jobs")
        self.job_s = sum(self.durations)
        self._queue: deque[int] = deque(range(scenario.jobs))  # may hold jobs no longer visible: skipped
        self.where = bytearray(scenario.jobs)  # VISIBLE, IN_FLIGHT, DONE or DEAD
        self.visible, self.in_flight, self.done, self.dead = scenario.jobs, 0, 0, 0
        self.receives = [0] * scenario.jobs
        self.delivery = [0] * scenario.jobs  # bumps on every change: a stale timer finds it changed
        self.last_done_at = 0.0
        self.lost_to_interruptions_s = self.duplicate_s = 0.0
        self.interruptions = 0
        self.machines: list[Machine] = []
        self.active = 0  # machines (fargate: tasks) launched and not ended, booting included
        self.per_machine = 1 if scenario.backend == "fargate" else scenario.slots_per_machine
        self.target = scenario.slots if scenario.backend == "fargate" else scenario.machines
        self.capacity = max(1, round(self.target * scenario.capacity_fraction))  # most there can be at once
        self.desired = scenario.slots  # the ECS service's desired count
        self.containers = self.busy = 0
        self.idle: list[Container] = []  # may hold containers no longer idle: checked when taken
        self.stopped = False
        self.timeline: list[tuple[float, int, int]] = []  # (time, busy slots, paid slots)
        self._tokens, self._tokens_at = float(FARGATE_BURST), 0.0
        self._start_fleet()
        self._sample()

    # -- the event loop ------------------------------------------------------------------------
    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action, args))

    def run_until(self, until: float) -> None:
        """Carry out every event up to `until`, then set the clock there."""
        events = self._events
        while events and events[0][0] <= until:
            when, _, action, args = heapq.heappop(events)
            self.now = when
            action(*args)
        self.now = max(self.now, until)

    def run_out(self) -> None:
        """Carry out every event left (after `stop()`, they run out once the last machine is gone)."""
        while self._events:
            self.run_until(self._events[0][0])

    def _sample(self) -> None:
        self.timeline.append((self.now, self.busy, self.active * self.per_machine))
        if not (self.stopped and self.active == 0):
            self.at(self.now + self.s.sample_s, self._sample)

    # -- what the monitors read and do ---------------------------------------------------------
    def snapshot(self) -> RunSnapshot:
        """What GetQueueAttributes of both queues and the fleet's status would say now."""
        machines = None if self.s.backend == "fargate" else self.active
        return RunSnapshot(
            total=self.s.jobs,
            visible=self.visible,
            in_flight=self.in_flight,
            delayed=0,
            dead=self.dead,
            workers_running=self.containers,
            machines_target=None if machines is None else self.target,
            machines_running=machines,
        )

    def spent_usd(self) -> float:
        """Machine time so far at the scenario's price (fargate: per task, one-minute minimum)."""
        return self.spent_usd_until(self.now)

    def spent_usd_until(self, until: float) -> float:
        return self.paid_slot_s(until) / self.per_machine * self._usd_per_s

    @property
    def _usd_per_s(self) -> float:
        per_hour = self.s.usd_per_task_hour if self.s.backend == "fargate" else self.s.usd_per_machine_hour
        return per_hour / 3600

    def paid_slot_s(self, until: float) -> float:
        total = 0.0
        for machine in self.machines:
            end = until if machine.ended_at is None else min(machine.ended_at, until)
            if self.s.backend == "fargate" and machine.ended_at is not None:
                end = max(end, machine.launched_at + FARGATE_MIN_BILLED_S)
            total += max(0.0, end - machine.launched_at)
        return total * self.per_machine

    def scale_in(self, busy_jobs: int) -> None:
        """What our backends' scale_in does: the service down to the running jobs, so ECS stops idle
        containers whose protection has lapsed; on spot-fleet the fleet's target down too, and its
        machines running no container terminated (ec2-spot leaves them to managed scaling)."""
        self.desired = min(self.desired, busy_jobs)
        self._stop_idle_containers()
        if self.s.backend != "spot-fleet":
            return
        self.target = min(self.target, math.ceil(busy_jobs / self.per_machine))
        surplus = self.active - self.target
        for machine in self.machines:
            if surplus <= 0:
                break
            if machine.joined and machine.ended_at is None and not machine.containers and not machine.noticed:
                self._end(machine, self.now)
                surplus -= 1

    def hold(self) -> None:
        """'Cheapest' mode: the fleet's target goes to one machine, so lost machines are replaced only
        when none is left (fargate has no fleet to hold: nothing changes)."""
        if self.s.backend != "fargate":
            self.target = min(self.target, 1)

    def stop(self) -> None:
        """Cleanup: the service deleted, the fleet cancelled with its machines, `shutdown_s` from now."""
        self.stopped = True
        gone_at = self.now + self.s.shutdown_s
        for machine in self.machines:
            if machine.ended_at is None:
                self.at(gone_at, self._end, machine, gone_at)

    @property
    def unfinished(self) -> int:
        return self.s.jobs - self.done - self.dead

    # -- capacity ------------------------------------------------------------------------------
    def _start_fleet(self) -> None:
        s = self.s
        if s.backend == "fargate":
            for _ in range(self.capacity):
                self._launch(self._fargate_launch_at())
            return
        start = MANAGED_SCALE_OUT_S if s.backend == "ec2-spot" else 0.0
        for _ in range(self.capacity):
            self._launch(start + self.rng.uniform(0, s.capacity_delay_s))

    def _fargate_launch_at(self) -> float:
        """Fargate's token bucket: 100 launches at once, then 20 a second."""
        now = max(self.now, self._tokens_at)
        self._tokens = min(FARGATE_BURST, self._tokens + (now - self._tokens_at) * FARGATE_RATE_PER_S)
        self._tokens_at = now
        if self._tokens < 1:
            now += (1 - self._tokens) / FARGATE_RATE_PER_S
            self._tokens, self._tokens_at = 1.0, now
        self._tokens -= 1
        return now

    def _launch(self, when: float) -> None:
        machine = Machine(when)
        self.machines.append(machine)
        self.active += 1
        self.at(when + self.s.boot_s + self.rng.uniform(0, self.s.boot_jitter_s), self._join, machine)
        if self.s.interruptions_per_hour:
            self.at(when + self.rng.expovariate(self.s.interruptions_per_hour / 3600), self._notice, machine)

    def _join(self, machine: Machine) -> None:
        if machine.ended_at is not None or machine.noticed:
            return
        machine.joined = True
        self._place(machine)
        if not machine.containers:
            self._became_empty(machine)

    def _place(self, machine: Machine) -> None:
        """ECS starts containers on the machine while the service has fewer than it wants."""
        placed = 0
        while self.containers < self.desired and len(machine.containers) < self.per_machine and not self.stopped:
            container = Container(machine)
            machine.containers.add(container)
            machine.token += 1  # not empty any more: a pending managed scale-in is off
            self.containers += 1
            placed += 1
            self._take_or_idle(container)
        if placed and self.worker == "ds" and machine.busy == 0:
            self._cpu_idle(machine)  # each container (re)creates its machine's alarm

    def _end(self, machine: Machine, when: float) -> None:
        """The machine is terminated (or the Fargate task stops): paid for until `when`."""
        if machine.ended_at is not None:
            return
        machine.ended_at = when
        self.active -= 1
        for container in list(machine.containers):
            self._container_gone(container, interrupted=machine.noticed)
        self._replace()
        self._fill_service()

    def _replace(self) -> None:
        """A maintain-type fleet (or an Auto Scaling group) launches machines up to its target."""
        if self.stopped or self.s.backend == "fargate":
            return
        while self.active < min(self.target, self.capacity):
            self._launch(self.now)

    def _fill_service(self) -> None:
        """ECS starts containers again while the service has fewer than it wants, where there is room
        (on fargate: new tasks)."""
        if self.stopped or self.containers >= self.desired:
            return
        if self.s.backend == "fargate":
            while self.active < min(self.desired, self.capacity):
                self._launch(self._fargate_launch_at())
            return
        for machine in self.machines:
            if self.containers >= self.desired:
                return
            if machine.joined and machine.ended_at is None and not machine.noticed:
                self._place(machine)

    def _notice(self, machine: Machine) -> None:
        """A Spot interruption notice; the machine is gone two minutes later."""
        if machine.ended_at is not None or self.stopped:
            return
        machine.noticed = True
        self.interruptions += 1
        if self.worker == "ours":  # our worker reads the notice within 5 s and hands its job back
            self.at(self.now + OUR_NOTICE_POLL_S, self._release_all, machine)
        gone_at = self.now + (OUR_NOTICE_POLL_S if self.s.backend == "fargate" else SPOT_NOTICE_S)
        self.at(gone_at, self._end, machine, gone_at)

    def _release_all(self, machine: Machine) -> None:
        for container in list(machine.containers):
            self._container_gone(container, interrupted=True)
        self._fill_service()

    def _container_gone(self, container: Container, interrupted: bool) -> None:
        """The container stops. A job it ran is lost: our worker handed it back (visible at once);
        Distributed-Something's job comes back when its visibility runs out."""
        if not container.alive:
            return
        container.alive = container.worker_alive = False
        machine = container.machine
        machine.containers.discard(container)
        self.containers -= 1
        job = container.job
        if job >= 0:
            elapsed = self.now - container.started_at
            self._unbusy(container)
            if self.where[job] == DONE:  # a second copy, cut short
                self.duplicate_s += elapsed
            elif self.where[job] == IN_FLIGHT:
                if interrupted:
                    self.lost_to_interruptions_s += elapsed
                if self.worker == "ours":
                    self._back_to_queue(job)
        if not machine.containers and machine.ended_at is None and machine.joined:
            self._became_empty(machine)

    def _became_empty(self, machine: Machine) -> None:
        if self.s.backend == "fargate":
            self._end(machine, self.now)
        elif self.s.backend == "ec2-spot" and not self.stopped:
            machine.token += 1
            self.at(self.now + MANAGED_SCALE_IN_S, self._managed_scale_in, machine, machine.token)

    def _managed_scale_in(self, machine: Machine, token: int) -> None:
        """ec2-spot: managed scaling removes a machine that has run no task for its scale-in alarm's time."""
        if machine.token == token and not machine.containers and machine.ended_at is None:
            self.target = max(0, self.target - 1)
            self._end(machine, self.now)

    def _stop_idle_containers(self) -> None:
        """ECS stops idle containers beyond the desired count whose scale-in protection has lapsed, and
        each other idle one when its protection lapses (if the service still has too many then)."""
        for container in self.idle:
            if self.containers <= self.desired:
                return
            if container.alive and container.job < 0 and not container.stopping:
                if container.protected_until <= self.now:
                    self._ecs_stop(container)
                else:
                    self.at(container.protected_until, self._protection_lapses, container, container.token)

    def _protection_lapses(self, container: Container, token: int) -> None:
        if container.token == token and container.alive and container.job < 0 and self.containers > self.desired:
            self._ecs_stop(container)

    def _ecs_stop(self, container: Container) -> None:
        """ECS stops the idle container: its worker gets SIGTERM and exits, `ecs_stop_s` from now."""
        if not container.stopping:
            container.stopping = True
            container.worker_alive = False  # it takes no job any more
            self.at(self.now + self.s.ecs_stop_s, self._container_gone, container, False)

    # -- jobs and workers ----------------------------------------------------------------------
    def _take_or_idle(self, container: Container) -> None:
        if not container.worker_alive or not container.alive:
            return
        queue, where = self._queue, self.where
        while queue:
            job = queue.popleft()
            if where[job] == VISIBLE:
                self._start(container, job)
                return
        container.token += 1
        self.idle.append(container)
        if self.worker == "ds":
            self.at(self.now + DS_EMPTY_POLL_S, self._ds_worker_gives_up, container, container.token)
        elif self.in_flight == 0:
            self.at(self.now + self.s.worker_idle_exit_s, self._our_worker_exits, container, container.token)
        elif self.containers > self.desired:
            self.at(max(self.now, container.protected_until), self._protection_lapses, container, container.token)

    def _start(self, container: Container, job: int) -> None:
        container.job, container.started_at = job, self.now
        container.token += 1
        machine = container.machine
        machine.busy += 1
        machine.token += 1  # busy: a pending idle alarm is off
        self.busy += 1
        self.visible -= 1
        self.in_flight += 1
        self.where[job] = IN_FLIGHT
        self.receives[job] += 1
        self.delivery[job] += 1
        self.at(self.now + self.durations[job], self._finish, container, container.token)
        if self.worker == "ds":
            self.at(self.now + self.s.visibility_s, self._back_to_queue, job, self.delivery[job])

    def _unbusy(self, container: Container) -> None:
        machine = container.machine
        ran = self.now - container.started_at
        # Protection, set as a job starts and renewed every 5 minutes, lapses 10 minutes after the last renewal.
        container.protected_until = container.started_at + PROTECTION_RENEW_S * (ran // PROTECTION_RENEW_S)
        container.protected_until += PROTECTION_S
        if self.s.drop_protection_when_idle:
            container.protected_until = self.now
        container.job = -1
        container.token += 1
        machine.busy -= 1
        self.busy -= 1
        if self.worker == "ds" and machine.busy == 0 and machine.ended_at is None:
            self._cpu_idle(machine)

    def _finish(self, container: Container, token: int) -> None:
        if container.token != token or not container.alive:
            return
        job = container.job
        self._unbusy(container)
        if self.where[job] in (DONE, DEAD):  # another copy (Distributed-Something's redelivery) ended it
            self.duplicate_s += self.durations[job]
        elif self.rng.random() < self.s.failure_rate:
            self._failed(job)
        else:
            self._leave_queue(job, DONE)
            self.last_done_at = self.now
        self._take_or_idle(container)

    def _leave_queue(self, job: int, outcome: int) -> None:
        """The message is deleted (done) or moved to the dead-letter queue, wherever it was."""
        if self.where[job] == IN_FLIGHT:
            self.in_flight -= 1
        elif self.where[job] == VISIBLE:
            self.visible -= 1
        self.where[job] = outcome
        self.delivery[job] += 1
        if outcome == DONE:
            self.done += 1
        else:
            self.dead += 1
        if self.in_flight == 0 and self.worker == "ours":
            self._queue_drained()

    def _queue_drained(self) -> None:
        """Our idle workers exit once the whole queue has been empty `worker_idle_exit_s`."""
        if self.visible:
            return
        for container in self.idle:
            if container.alive and container.job < 0:
                container.token += 1
                self.at(self.now + self.s.worker_idle_exit_s, self._our_worker_exits, container, container.token)

    def _failed(self, job: int) -> None:
        """A failed attempt: visible again after the retry delay (Distributed-Something: 60 s), or dead
        after the last attempt."""
        retries = self.s.job_retries if self.worker == "ours" else DS_MAX_RECEIVES
        if self.receives[job] >= retries:
            self._leave_queue(job, DEAD)
            return
        self.delivery[job] += 1
        delay = self.s.retry_delay_s if self.worker == "ours" else 60.0
        self.at(self.now + delay, self._back_to_queue, job, self.delivery[job])

    def _back_to_queue(self, job: int, delivery: int | None = None) -> None:
        """The message is visible again (released, retried, or its visibility ran out)."""
        if self.where[job] != IN_FLIGHT or (delivery is not None and self.delivery[job] != delivery):
            return
        self.in_flight -= 1
        self.delivery[job] += 1
        if self.worker == "ds" and self.receives[job] >= DS_MAX_RECEIVES:  # the redrive policy
            self.where[job], self.dead = DEAD, self.dead + 1
            return
        self.where[job] = VISIBLE
        self.visible += 1
        self._queue.append(job)
        while self.idle and self.visible:
            container = self.idle.pop()
            if container.alive and container.worker_alive and container.job < 0:
                self._take_or_idle(container)

    def _ds_worker_gives_up(self, container: Container, token: int) -> None:
        if container.token == token and container.job < 0:
            container.worker_alive = False  # the container stays: instance-monitor.py keeps it running

    def _our_worker_exits(self, container: Container, token: int) -> None:
        if container.token == token and container.job < 0 and self.in_flight == 0 and not self.visible:
            self._container_gone(container, interrupted=False)

    def _cpu_idle(self, machine: Machine) -> None:
        """Distributed-Something's alarm: 15 idle minutes (reported up to 5 min late), then terminate."""
        machine.token += 1
        lag = self.rng.uniform(0, DS_ALARM_LAG_S)
        self.at(self.now + DS_ALARM_S + lag, self._alarm, machine, machine.token)

    def _alarm(self, machine: Machine, token: int) -> None:
        if machine.token == token and machine.busy == 0 and machine.ended_at is None and not self.stopped:
            self._end(machine, self.now)

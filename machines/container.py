"""The container state machine: observations in, state changes out. No clock, no I/O.

Time comes only from `obs.at_ns`. The transition table lives in `machines.table`;
this module decides which trigger an observation means and emits the changes.

Ordering rule: an observation older than the current state (`at_ns < since_ns`)
is stale. It never changes state, with one exception: a stop/kill event may still
turn the died it caused into a user stop (podman 5 can log them in either order).
A stale error log line still updates `last_error`, and a stale stop/kill still marks
the next died as user-caused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from machines.observations import ActionObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import UP, State
from machines.table import DICT_ROUTER, HEALTH_STATES, Engine, Router, make_router

_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class StateChange:
    """One move of one container's machine, rendered when it happened."""

    target: str
    container: str
    at_ns: int
    from_state: State
    to_state: State
    cause: str
    obs_kind: str
    contradiction: bool = False  # a snapshot overruled the machine: an event was missed


@dataclass(frozen=True)
class MachineSettings:
    """Crash-loop thresholds and the windows that pair stop/kill events with deaths."""

    crashloop_deaths: int = 3
    crashloop_window_ns: int = 300 * _SECOND
    stable_period_ns: int = 600 * _SECOND
    # `podman stop` waits up to its timeout (10 s by default) before the died.
    user_stop_window_ns: int = 30 * _SECOND
    # How late a stop event may follow the died it caused (podman 5 ordering).
    stop_after_died_ns: int = 2 * _SECOND
    # After this long without a restart, a death under always/unless-stopped was a user stop.
    restart_grace_ns: int = 1 * _SECOND


def format_duration(ns: int) -> str:
    """A duration the way podman and Go print it: 5m0s, 1h0m0s, 2.5s."""
    if ns < _SECOND:
        return f"{ns / 1_000_000:g}ms"
    minutes, seconds = divmod(ns / _SECOND, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{seconds:g}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def _exit_text(code: int | None) -> str:
    """The exit code for a cause; podman 4.x omits ContainerExitCode when it is 0."""
    return str(0 if code is None else code)


class ContainerMachine:
    """What one container (target, name) is doing, derived only from its observations."""

    def __init__(self, target: str, container: str, settings: MachineSettings = MachineSettings(),
                 router: Router = DICT_ROUTER) -> None:
        self.target = target
        self.container = container
        self.settings = settings
        self.since_ns = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.deaths: deque[int] = deque()  # non-user deaths inside the crash-loop window, oldest first
        self._router = router
        self._model = router.attach(State.UNKNOWN)
        self._last_error_ns = -1
        self._proc_up = False  # the main process runs (kept through CRASHLOOPING, unlike `state`)
        self._last_start_ns = 0
        self._health: str | None = None  # last health status since the last start
        self._stop_mark: tuple[int, str] | None = None  # (at_ns, "stop"|"kill") awaiting its died
        self._last_died_ns: int | None = None  # any died, to drop the same one delivered twice
        self._last_death_ns: int | None = None  # a non-user death a late stop event may still claim
        self._death_unrestarted = False
        self._health_from_runs = False  # set once our own `podman healthcheck run` results arrive

    @property
    def state(self) -> State:
        """The current state."""
        return self._model.state

    def __repr__(self) -> str:
        return f"ContainerMachine({self.target!r}, {self.container!r}, state={self.state!s})"

    def close(self) -> None:
        """Release the machine's model from its router (a shared transitions.Machine keeps it alive)."""
        self._router.detach(self._model)

    def feed(self, obs: Observation) -> list[StateChange]:
        """Apply one observation of this container. Raises ValueError for another container's."""
        if obs.target != self.target or obs.container != self.container:
            raise ValueError(f"observation of {obs.target}/{obs.container} fed to {self.target}/{self.container}")
        changes: list[StateChange] = []
        if isinstance(obs, LogObs) and obs.is_error and obs.at_ns >= self._last_error_ns:
            self.last_error, self._last_error_ns = obs.line, obs.at_ns
        if obs.at_ns < self.since_ns:
            if (isinstance(obs, EventObs) and obs.status in ("stop", "kill")) or (
                    isinstance(obs, ActionObs) and obs.action in USER_STOP_ACTIONS and not obs.dry_run):
                _keep(changes, self._on_user_stop(obs))
            return changes
        _keep(changes, self._settle(obs))
        if isinstance(obs, EventObs):
            handler = _EVENT_HANDLERS.get(obs.status)
            if handler is not None:
                _keep(changes, handler(self, obs))
        elif isinstance(obs, SnapshotObs):
            _keep(changes, self._on_snapshot(obs))
        elif isinstance(obs, ProbeObs) and obs.probe_type == "podman-healthcheck":
            _keep(changes, self._on_healthcheck_run(obs))
        elif isinstance(obs, ActionObs) and obs.action in USER_STOP_ACTIONS and not obs.dry_run:
            _keep(changes, self._on_user_stop(obs))
        return changes

    # ------------------------------------------------------------ the one state change

    def _fire(self, trigger: str, obs: Observation, cause: str, contradiction: bool = False) -> StateChange | None:
        """Run `trigger` through the table; a move is recorded and returned as a StateChange."""
        before = self.state
        self._router.fire(self._model, trigger)
        after = self.state
        if after == before:
            return None
        self.since_ns = obs.at_ns
        return StateChange(self.target, self.container, obs.at_ns, before, after, cause,
                           str(obs.kind), contradiction)

    # ------------------------------------------------------------ events

    def _on_create(self, obs: EventObs) -> StateChange | None:
        # A new container under this name: the old one's deaths and marks are not its history.
        self.deaths.clear()
        self._proc_up, self._health, self._stop_mark, self._last_death_ns = False, None, None, None
        self._death_unrestarted = False
        return self._fire("create", obs, "created")

    def _on_start(self, obs: EventObs) -> StateChange | None:
        self._came_up(obs.at_ns)
        return self._fire("start", obs, "started")

    def _on_restart(self, obs: EventObs) -> StateChange | None:
        self._count_restart()
        return self._fire("restart", obs, "restart event")

    def _on_health(self, obs: EventObs) -> StateChange | None:
        value = obs.health_status
        if value not in HEALTH_STATES or self._health_from_runs:
            # podman 4.3's health_status events lag one check behind (podman#19237): once we
            # see the checks' own results, those decide health and the events are only kept.
            return None
        self._health = value
        # Fired on every check: the table makes a repeat a no-op, so only changes show.
        return self._fire(f"health_{value}", obs, f"health_status {value}")

    def _on_died(self, obs: EventObs) -> StateChange | None:
        if obs.at_ns == self._last_died_ns:
            return None  # the same died delivered twice (e.g. a backfill overlap)
        self._last_died_ns = obs.at_ns
        self._proc_up, self._health = False, None
        exit_text = _exit_text(obs.exit_code)
        mark = self._stop_mark
        if mark is not None and 0 <= obs.at_ns - mark[0] <= self.settings.user_stop_window_ns:
            self._stop_mark = None
            return self._fire("user_died", obs, f"died exit={exit_text} after {mark[1]}")
        self._last_death_ns = obs.at_ns
        self._death_unrestarted = True
        if self._record_death(obs.at_ns):
            return self._fire("crashloop", obs, self._crashloop_cause(exit_text))
        return self._fire("died", obs, f"died exit={exit_text}")

    def _on_healthcheck_run(self, obs: ProbeObs) -> StateChange | None:
        """The result of one `podman healthcheck run` (exit 0 healthy, 1 unhealthy, else error)."""
        value = obs.detail if obs.detail in ("healthy", "unhealthy") else None
        if value is None:
            return None  # 125: no check defined, container not running, or podman failed
        self._health_from_runs = True
        if not self._proc_up and self.state is not State.UNKNOWN:
            return None  # a result that raced a death does not revive the container
        self._health = value
        return self._fire(f"health_{value}", obs, f"health check {'passed' if obs.ok else 'failed'}"
                          + (f": {obs.excerpt[-120:]}" if obs.excerpt and not obs.ok else ""))

    def _on_user_stop(self, obs: EventObs | ActionObs) -> StateChange | None:
        what = obs.status if isinstance(obs, EventObs) else obs.action
        death_ns = self._last_death_ns
        if (death_ns is not None and self.state in (State.EXITED, State.CRASHLOOPING)
                and death_ns - self.settings.user_stop_window_ns <= obs.at_ns
                <= death_ns + self.settings.stop_after_died_ns):
            # The died came first but this stop caused it: not a crash, not a crash-loop death.
            self._last_death_ns, self._death_unrestarted = None, False
            if death_ns in self.deaths:
                self.deaths.remove(death_ns)
            return self._fire("user_stop", obs, f"{what} event" if isinstance(obs, EventObs) else what)
        if self._stop_mark is None or obs.at_ns > self._stop_mark[0]:
            self._stop_mark = (obs.at_ns, what)
        return None

    def _on_pause(self, obs: EventObs) -> StateChange | None:
        return self._fire("pause", obs, "paused")

    def _on_unpause(self, obs: EventObs) -> StateChange | None:
        return self._fire("unpause", obs, "unpaused")

    def _on_remove(self, obs: EventObs) -> StateChange | None:
        self._proc_up = False
        return self._fire("remove", obs, "removed")

    # ------------------------------------------------------------ crash loop

    def _record_death(self, at_ns: int) -> bool:
        """Remember a non-user death; True when the deaths in the window reach the threshold."""
        deaths = self.deaths
        if not deaths or at_ns >= deaths[-1]:
            deaths.append(at_ns)
        else:
            # Out of order (older than a death already seen): keep the deque sorted.
            deaths.insert(next(i for i, t in enumerate(deaths) if t > at_ns), at_ns)
        while deaths[0] < deaths[-1] - self.settings.crashloop_window_ns:
            deaths.popleft()
        return len(deaths) >= self.settings.crashloop_deaths

    def _crashloop_cause(self, exit_text: str) -> str:
        window = format_duration(self.settings.crashloop_window_ns)
        return f"{len(self.deaths)} deaths within {window}; last exit={exit_text}"

    def _settle(self, obs: Observation) -> StateChange | None:
        """Leave CRASHLOOPING once the container has stayed up for the stable period."""
        stable = self.settings.stable_period_ns
        if self.state is not State.CRASHLOOPING or not self._proc_up or obs.at_ns < self._last_start_ns + stable:
            return None
        # As Kubernetes resets its back-off: earlier deaths no longer count toward a loop.
        self.deaths.clear()
        self._last_death_ns = None
        return self._fire(f"settle_{self._up_state()}", obs, f"up {format_duration(stable)} since last start")

    def _came_up(self, started_ns: int) -> None:
        self._proc_up = True
        self._last_start_ns = started_ns
        self._health = None  # podman resets health to starting on every start
        self._count_restart()

    def _count_restart(self) -> None:
        # A restart proves the last death was no user stop (podman does not restart those).
        if self._death_unrestarted:
            self.restarts += 1
            self._death_unrestarted = False
        self._last_death_ns = None

    def _up_state(self) -> State:
        return HEALTH_STATES.get(self._health or "", State.RUNNING)

    # ------------------------------------------------------------ snapshots

    def _on_snapshot(self, obs: SnapshotObs) -> StateChange | None:
        current = self.state
        seen = _snapshot_state(obs)
        if seen is None:
            return None  # stopping, removing, an unknown status: nothing firm to compare
        if seen in UP:
            self._snapshot_up(obs)
            seen = self._up_state()
        elif seen is not State.PAUSED:
            self._proc_up = False
        if (seen is State.EXITED and current is State.EXITED and self._death_unrestarted
                and obs.restart_policy in RESTARTING_POLICIES and self._last_death_ns is not None
                and obs.at_ns >= self._last_death_ns + self.settings.restart_grace_ns):
            # podman restarts every death under these policies unless a user stopped the
            # container; 4.3 often writes no `stop` event, so this is how a stop shows.
            death_ns = self._last_death_ns
            self._last_death_ns, self._death_unrestarted = None, False
            if death_ns in self.deaths:
                self.deaths.remove(death_ns)
            return self._fire("user_stop", obs, f"not restarted under restart policy {obs.restart_policy}: "
                              "stopped by a user (podman wrote no stop event)", contradiction=True)
        if seen == current or _compatible(current, seen):
            return None
        what = _snapshot_text(obs)
        if current is State.UNKNOWN:
            return self._fire(f"observe_{seen}", obs, f"inspect says {what}")
        if seen in UP and (current in UP or current is State.RESTARTING):
            # The container is up as believed; only health (or a lagging start event) differs.
            return self._fire(f"observe_{seen}", obs, f"inspect says {what}")
        cause = f"snapshot disagrees: machine said {current}, inspect says {what}"
        if seen is State.EXITED and current in UP | {State.PAUSED}:
            # The died event was missed, but the death still counts toward a crash loop.
            self._death_unrestarted = True
            if self._record_death(obs.at_ns):
                seen = State.CRASHLOOPING
                cause += "; " + self._crashloop_cause(_exit_text(obs.exit_code))
        return self._fire(f"observe_{seen}", obs, cause, contradiction=True)

    def _snapshot_up(self, obs: SnapshotObs) -> None:
        """Take liveness and health from a snapshot that shows the container running."""
        started = obs.started_at_ns if 0 < obs.started_at_ns <= obs.at_ns else obs.at_ns
        if not self._proc_up:
            self._came_up(started)
        elif started > self._last_start_ns:
            self._last_start_ns = started  # restarted behind our back: stability starts over
        self._health = obs.health or None


# podwarden's own actions that stop a container: the next died is the user's, not a crash.
USER_STOP_ACTIONS = frozenset({"podman stop", "podman kill"})
RESTARTING_POLICIES = frozenset({"always", "unless-stopped"})


def _snapshot_state(obs: SnapshotObs) -> State | None:
    """The state `podman inspect` shows, before comparing with the machine; None if unclear."""
    if not obs.exists:
        return State.MISSING
    status = obs.status
    if status == "running":
        return State.RUNNING  # refined by health in the caller
    if status in ("created", "configured", "initialized"):
        return State.CREATED
    if status == "paused":
        return State.PAUSED
    if status in ("exited", "stopped"):
        return State.EXITED
    return None


def _compatible(machine: State, seen: State) -> bool:
    """Whether a snapshot showing `seen` agrees with a machine in `machine` (no move needed)."""
    if seen is State.EXITED:
        # inspect shows "exited" for a user stop, a crash loop between runs and a pending restart alike.
        return machine in (State.STOPPED, State.CRASHLOOPING, State.RESTARTING)
    if seen is State.MISSING:
        return machine is State.REMOVED
    return machine is State.CRASHLOOPING and seen in UP


def _snapshot_text(obs: SnapshotObs) -> str:
    if not obs.exists:
        return "no such container"
    status = obs.status or "?"
    return f"{status} health={obs.health}" if obs.health and status == "running" else status


def _keep(changes: list[StateChange], change: StateChange | None) -> None:
    if change is not None:
        changes.append(change)


_EVENT_HANDLERS: dict[str, Callable[[ContainerMachine, EventObs], StateChange | None]] = {
    "create": ContainerMachine._on_create,
    "start": ContainerMachine._on_start,
    "restart": ContainerMachine._on_restart,
    "health_status": ContainerMachine._on_health,
    "died": ContainerMachine._on_died,
    "stop": ContainerMachine._on_user_stop,
    "kill": ContainerMachine._on_user_stop,
    "pause": ContainerMachine._on_pause,
    "unpause": ContainerMachine._on_unpause,
    "remove": ContainerMachine._on_remove,
    # init, exec, exec_died (health-check execs), cleanup, mount, attach, ... change nothing.
}


class Fleet:
    """All container machines of a run, keyed by (target, container), created on first sight."""

    def __init__(self, settings: MachineSettings = MachineSettings(), engine: Engine = "dict") -> None:
        self.settings = settings
        self.engine = engine
        self._router = make_router(engine)
        self._machines: dict[tuple[str, str], ContainerMachine] = {}

    def feed(self, obs: Observation) -> list[StateChange]:
        """Route one observation to its container's machine; target-level records change nothing."""
        if not obs.container:
            return []
        return self.expect(obs.target, obs.container).feed(obs)

    def expect(self, target: str, container: str) -> ContainerMachine:
        """The machine of (target, container), created in UNKNOWN if it is new."""
        key = (target, container)
        machine = self._machines.get(key)
        if machine is None:
            machine = self._machines[key] = ContainerMachine(target, container, self.settings, self._router)
        return machine

    def get(self, target: str, container: str) -> ContainerMachine | None:
        """The machine of (target, container), or None if nothing was seen of it."""
        return self._machines.get((target, container))

    def machines(self) -> list[ContainerMachine]:
        """Every machine, in the order they were first seen."""
        return list(self._machines.values())

    def forget(self, target: str, container: str) -> None:
        """Drop the machine of (target, container) and release its model."""
        machine = self._machines.pop((target, container), None)
        if machine is not None:
            machine.close()

    def close(self) -> None:
        """Drop every machine."""
        for target, container in list(self._machines):
            self.forget(target, container)

    def __len__(self) -> int:
        return len(self._machines)

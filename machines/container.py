"""The container state machine: observations in, state changes out. No clock, no I/O.

Time comes only from `obs.at_ns`. The transition table lives in `machines.table`;
this module decides which trigger an observation means and emits the changes.

Delivery order is not time order (measured on podman 4.3): podman's writers log
concurrent events up to ~75 ms out of time order; the file events backend is read every
250 ms, so inspect may show a death before its died arrives; a snapshot is stamped when
it was asked for and may arrive after events that happened later; a `podman stop` logs
its stop just before (4.3) or after (5.x) the died it caused, and `podman restart` logs
restart before its died. So the machine keeps a short timeline of podman's own stamps
and judges every observation against it, never against the order it arrived in:

- Starts and deaths are points; the container is up when its newest point is a start.
  Two death stamps with no start between them are one death (a died delivered twice, a
  snapshot's FinishedAt and the died event), so nothing is counted twice.
- A died is never dropped for being older than the state. If podman has started the
  container again since, the death still counts and shows, and the state returns up.
- A snapshot is stale when the machine knows something newer than its content: a death
  after its StartedAt, a start after its FinishedAt. A stale snapshot changes nothing.
  One that shows a change podman stamped moments before it moves the state at once, but
  is no contradiction yet: the change's events are on their way.
- A stop/kill/restart event and our own stop/kill action are marks. A mark pairs with one
  death in its window with no start between, whichever of the two arrives first; the
  restart policy's own restart event proves its death was nobody's doing.
- Every death gets its reason (`machines.deaths.death_reason`), in the change's cause and
  as `last_death`.
- Health is podman's own bookkeeping, replayed from our `podman healthcheck run` results
  with the retries and start period the latest snapshot showed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from machines.deaths import DeathReason, death_reason
from machines.observations import ActionObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import UP, State
from machines.table import DICT_ROUTER, HEALTH_STATES, Engine, Router, make_router

_SECOND = 1_000_000_000
_MS = 1_000_000
# How much history a machine keeps: enough to pair late marks and recognise repeats.
_KEEP_POINTS = 32
_KEEP_MARKS = 8
_KEEP_OOMS = 4
_KEEP_ERRORS = 64
# Counted deaths kept for the crash-loop count (`_history`, `deaths`): they are already cut
# to two crash-loop windows in time, but a container that dies at once on every start is
# restarted ~10 times a second, 6000 deaths in two windows. The newest ones decide a loop
# (crashloop_deaths in a window) and a loop's message counts at most this many.
_KEEP_DEATHS = 1024
_ERROR_CHARS = 300
# A start event is stamped ~5 ms after inspect's StartedAt (measured); two real starts are
# further apart (a restart's start comes ~60-100 ms after its died).
_SAME_START_NS = 50 * _MS


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
    """Crash-loop thresholds and the windows that pair stop/kill/restart marks with deaths."""

    crashloop_deaths: int = 3
    crashloop_window_ns: int = 300 * _SECOND
    stable_period_ns: int = 600 * _SECOND
    # `podman stop` (and `podman restart`) wait up to the stop timeout (10 s by default)
    # before the KILL, so their died may come that long after the mark.
    user_stop_window_ns: int = 30 * _SECOND
    # A kill event is paired only with a death that follows promptly: `podman kill -s HUP`
    # writes the same `kill` event (4.3 names no signal) and the container lives on.
    kill_window_ns: int = 2 * _SECOND
    # How late a stop/kill event may follow the died it caused (podman 5 ordering).
    stop_after_died_ns: int = 2 * _SECOND
    # The restart policy restarts at once (died, restart 1-2 ms later, start ~70 ms later,
    # measured): a restart event this soon after a died is the policy's, and a death left
    # unrestarted this long under always/unless-stopped was a user stop.
    restart_grace_ns: int = 1 * _SECOND
    # The kernel's oom-kill line is logged at the kill; podman's died follows within ms.
    oom_window_ns: int = 5 * _SECOND
    # podman's events trail what inspect already shows (the file backend polls every 250 ms;
    # the died line arrived 171 ms after the kill at the median, measured): a snapshot showing a
    # change podman stamped less than this before it is no sign of a missed event yet.
    event_lag_ns: int = 2 * _SECOND


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


@dataclass(slots=True, eq=False)
class _Death:
    """One death of the container, as far as the machine knows it."""

    at_ns: int  # podman's died stamp, or a snapshot's FinishedAt
    exit_code: int | None  # None: podman did not say (a death seen only through RestartCount)
    by: str | None = None  # the mark that explains it: stop, kill, restart, podman stop, podman kill
    by_evidence: str | None = None  # how `by` is known when no mark says so
    oom: str | None = None  # the kernel's oom-kill line for it
    oom_killed: bool = False  # podman's own OOMKilled (5.x; 4.3 always says false)
    restarted: bool = False  # the restart policy restarted it: podman never restarts a user stop
    counted: bool = False  # died on its own: in `crashes` and the crash-loop count
    first_sight: bool = False  # the container was already down when the machine first saw it
    reason: DeathReason | None = None


def _at(death: _Death) -> int:
    return death.at_ns


class ContainerMachine:
    """What one container (target, name) is doing, derived only from its observations."""

    # a fleet holds thousands: slots keep each machine small and its attributes quick
    __slots__ = (
        "target", "container", "settings", "container_id", "since_ns", "restarts", "crashes", "last_error",
        "last_death", "last_death_ns", "deaths", "_router", "_model", "_changes", "_last_error_ns",
        "_starts", "_ends", "_marks", "_ooms", "_crash_marks", "_kernel_clear", "_history", "_loop_since_ns", "_errors", "_latest_ns",
        "_created_ns", "_paused", "_started_at", "_memory", "_has_check", "_retries",
        "_start_period_ns", "_health", "_streak", "_health_from_runs", "_last_check_ns", "_prev_snapshot",
    )

    def __init__(self, target: str, container: str, settings: MachineSettings = MachineSettings(),
                 router: Router = DICT_ROUTER) -> None:
        self.target = target
        self.container = container
        self.settings = settings
        self.container_id = ""  # the newest podman ID seen under this name (a rename follows it)
        self.since_ns = 0
        self.restarts = 0  # times it came back after a death that was not a user's
        self.crashes = 0  # deaths that were not a user's (crashes, OOM kills, exits of its own)
        self.last_error: str | None = None
        self.last_death: DeathReason | None = None  # why the newest death happened
        self.last_death_ns: int | None = None
        self.deaths: deque[int] = deque()  # non-user deaths inside the crash-loop window, oldest first
        self._router = router
        self._model = router.attach(State.UNKNOWN)
        self._changes: list[StateChange] = []  # what the observation being fed emits
        self._last_error_ns = -1
        self._reset()

    def _reset(self) -> None:
        """Forget the container's history: a new container under this name."""
        self._starts: list[int] = []  # start stamps, sorted
        self._ends: list[_Death] = []  # deaths, sorted by stamp
        self._marks: list[tuple[int, str]] = []  # (at_ns, what) not yet paired with a death
        self._ooms: list[tuple[int, str]] = []  # (at_ns, kernel line) not yet paired
        self._crash_marks: list[tuple[int, str]] = []  # (at_ns, detail) of podwarden's own crash actions
        self._kernel_clear: list[int] = []  # times the kernel log was read and held no OOM kill of it
        self._history: list[int] = []  # counted death stamps since the last settle, sorted
        self._loop_since_ns: int | None = None  # the death that entered the current crash loop
        self.deaths.clear()
        self._errors: deque[tuple[int, str]] = deque(maxlen=_KEEP_ERRORS)
        self._latest_ns = 0  # newest create/start/died/restart/pause/unpause/remove stamp
        self._created_ns = 0
        self._paused = False
        self._started_at = 0  # podman's StartedAt of the current run, once a snapshot said
        # learnt from the latest snapshot
        self._memory = 0
        self._has_check = False
        self._retries = 0
        self._start_period_ns = 0
        # podman's health bookkeeping, as the machine replays it
        self._health: str | None = None  # the current run's status
        self._streak = 0  # FailingStreak: podman keeps it across restarts (measured on 4.3)
        self._health_from_runs = False
        self._last_check_ns = -1
        self._prev_snapshot: tuple[int, int] | None = None  # (at_ns, RestartCount) of the last fresh one

    @property
    def state(self) -> State:
        """The current state."""
        return self._model.state

    @property
    def health(self) -> str | None:
        """podman's health status of the current run as the machine models it (None: no check known)."""
        return self._health

    def __repr__(self) -> str:
        return f"ContainerMachine({self.target!r}, {self.container!r}, state={self.state!s})"

    def close(self) -> None:
        """Release the machine's model from its router (a shared transitions.Machine keeps it alive)."""
        self._router.detach(self._model)

    def feed(self, obs: Observation) -> list[StateChange]:
        """Apply one observation of this container. Raises ValueError for another container's."""
        if obs.container != self.container or obs.target != self.target:
            raise ValueError(f"observation of {obs.target}/{obs.container} fed to {self.target}/{self.container}")
        changes = self._changes = []
        if self._model.state is State.CRASHLOOPING:
            self._settle(obs)
        handler = _KIND_HANDLERS.get(type(obs))
        if handler is not None:
            handler(self, obs)
        return changes

    def _on_event(self, obs: EventObs) -> None:
        if obs.container_id:
            self.container_id = obs.container_id
        handler = _EVENT_HANDLERS.get(obs.status)
        if handler is not None:
            handler(self, obs)

    def _on_log(self, obs: LogObs) -> None:
        if obs.is_error:
            if obs.at_ns >= self._last_error_ns:
                self.last_error, self._last_error_ns = obs.line, obs.at_ns
            self._errors.append((obs.at_ns, obs.line[:_ERROR_CHARS]))

    def _on_probe(self, obs: ProbeObs) -> None:
        if obs.probe_type == "podman-healthcheck":
            self._on_healthcheck_run(obs)
        elif obs.probe_type == "kernel-log" and obs.probe == "oom-kill":
            if not obs.ok:
                self._on_oom_kill(obs)
            else:
                self._kernel_clear = [*self._kernel_clear[-(_KEEP_OOMS - 1):], obs.at_ns]
                self._reexplain_near(obs.at_ns)

    def _on_action(self, obs: ActionObs) -> None:
        if obs.dry_run:
            return
        if obs.action in USER_STOP_ACTIONS:
            self._on_mark(obs.at_ns, obs.action, obs)
        elif obs.action == CRASH_ACTION:
            # our own SIGKILL of the main process: a crash for the policy, but no failure of the container
            self._crash_marks = [*self._crash_marks[-(_KEEP_MARKS - 1):], (obs.at_ns, obs.detail or obs.action)]
            self._reexplain_near(obs.at_ns)

    def _reexplain_near(self, at_ns: int) -> None:
        """News about deaths near at_ns (a kernel verdict, our crash action) arriving after them."""
        window = self.settings.oom_window_ns
        for death in self._ends[-_KEEP_OOMS:]:
            if abs(death.at_ns - at_ns) <= window:
                self._explain(death)

    # ------------------------------------------------------------ the one state change

    def _fire(self, trigger: str, obs: Observation, cause: str, contradiction: bool = False) -> bool:
        """Run `trigger` through the table; a move is recorded as a StateChange. True if it moved."""
        before = self._model.state
        self._router.fire(self._model, trigger)
        after = self._model.state
        if after == before:
            return False
        self.since_ns = obs.at_ns
        if after is not State.CRASHLOOPING and after is not State.STOPPED:
            # the loop is over; a user stop only interrupts it (it may yet prove to be a restart)
            self._loop_since_ns = None
        self._changes.append(StateChange(self.target, self.container, obs.at_ns, before, after, cause,
                                         str(obs.kind), contradiction))
        return True

    # ------------------------------------------------------------ the timeline

    def _up(self) -> bool:
        """Whether the main process runs: the newest point is a start."""
        starts, ends = self._starts, self._ends
        return bool(starts) and (not ends or starts[-1] > ends[-1].at_ns)

    def _start_in(self, lo: int, hi: int) -> bool:
        """Whether a known start lies strictly between lo and hi."""
        starts = self._starts
        i = bisect_right(starts, lo)
        return i < len(starts) and starts[i] < hi

    def _start_before(self, at_ns: int) -> int | None:
        """The newest start at or before at_ns."""
        i = bisect_right(self._starts, at_ns)
        return self._starts[i - 1] if i else None

    def _death_in(self, lo: int, hi: int) -> bool:
        """Whether a known death lies in (lo, hi]."""
        ends = self._ends
        i = bisect_right(ends, lo, key=_at)
        return i < len(ends) and ends[i].at_ns <= hi

    def _same_death(self, at_ns: int) -> _Death | None:
        """A known death with no start between it and at_ns: the same death (a container dies once per run)."""
        ends = self._ends
        i = bisect_right(ends, at_ns, key=_at)
        if i and not self._start_in(ends[i - 1].at_ns, at_ns):
            return ends[i - 1]
        if i < len(ends) and not self._start_in(at_ns, ends[i].at_ns):
            return ends[i]
        return None

    def _add_start(self, at_ns: int) -> bool:
        """Record a start; False if it is already known."""
        starts = self._starts
        i = bisect_right(starts, at_ns)
        if i and starts[i - 1] == at_ns:
            return False
        starts.insert(i, at_ns)
        if len(starts) > _KEEP_POINTS:
            del starts[0]
        self._latest_ns = max(self._latest_ns, at_ns)
        # It came back after a death that was not a user's: one restart (once per death).
        j = bisect_right(self._ends, at_ns, key=_at)
        if j and self._ends[j - 1].counted and not self._start_in(self._ends[j - 1].at_ns, at_ns):
            self.restarts += 1
        return True

    # ------------------------------------------------------------ events

    def _on_create(self, obs: EventObs) -> None:
        if obs.at_ns < self._latest_ns:
            return  # an earlier container's create, delivered late
        # A new container under this name: the old one's deaths and marks are not its history.
        self._reset()
        self._created_ns = self._latest_ns = obs.at_ns
        self._fire("create", obs, "created")

    def _on_start(self, obs: EventObs) -> None:
        at = obs.at_ns
        known = self._starts[-1] if self._up() else None
        if at < self._created_ns or not self._add_start(at):
            return
        if at < self._starts[-1] or (self._ends and self._ends[-1].at_ns > at):
            return  # it has started again or died since: this start is history
        if known is None or at - known > _SAME_START_NS:
            self._begin_run()
        # else: the run a snapshot already showed (its StartedAt), now reported by its start event
        self._fire("start_checked" if self._health == "starting" else "start", obs, "started")

    def _begin_run(self) -> None:
        """A new run: podman resets health to "starting" at every start, but keeps FailingStreak (measured)."""
        self._paused = False
        self._started_at = 0
        self._health = "starting" if self._has_check else None

    def _on_restart(self, obs: EventObs) -> None:
        at = obs.at_ns
        if at < self._created_ns:
            return
        self._latest_ns = max(self._latest_ns, at)
        # `podman restart` writes restart before its died (measured), but the died may arrive first.
        claimed = self._claim(at, "restart")
        if claimed is not None:
            self._claimed(claimed, "restart", obs)
            return
        ends = self._ends
        j = bisect_right(ends, at, key=_at)
        prev = ends[j - 1] if j else None
        if prev is not None and not self._start_in(prev.at_ns, at):
            if at - prev.at_ns <= self.settings.restart_grace_ns and prev.by != "restart":
                self._policy_restart(prev, obs)
                return
            if prev is ends[-1] and not self._up():
                # `podman restart` of a stopped or exited container: restart, init, start (measured).
                self._fire("restart", obs, "restart event")
                return
        # The container is up: a user's `podman restart`, whose died follows.
        self._add_mark(at, "restart")

    def _policy_restart(self, death: _Death, obs: Observation) -> None:
        """The restart policy restarted `death`: it was no user stop, whatever mark it was paired with."""
        death.restarted = True
        newest_down = death is self._ends[-1] and not self._up()
        if death.by is not None and death.by != "restart":
            # e.g. `podman kill -s HUP` just before a crash: the kill event looked like its cause.
            death.by = death.by_evidence = None
            self._count(death)
            self._explain(death)
            if newest_down and self._loop_at(death.at_ns):
                self._enter_loop(death, obs, self._crashloop_cause(death))
        if newest_down:
            self._fire("restart", obs, "restart event")

    def _on_health(self, obs: EventObs) -> None:
        value = obs.health_status
        if value not in HEALTH_STATES:
            return
        self._has_check = True
        if self._health_from_runs:
            # podman 4.3's health_status events lag one check behind (podman#19237, measured): once
            # our own `podman healthcheck run` results arrive, those decide and the events are only kept.
            return
        if (self._starts or self._ends) and (not self._up() or obs.at_ns < self._starts[-1]):
            return  # a check of a run that is over
        self._health = value
        if not self._paused:
            # Fired on every check: the table makes a repeat a no-op, so only changes show.
            self._fire(f"health_{value}", obs, f"health_status {value}")

    def _on_died(self, obs: EventObs) -> None:
        at = obs.at_ns
        if at < self._created_ns:
            return
        exit_code = 0 if obs.exit_code is None else obs.exit_code  # podman 4.x omits a zero exit code
        known = self._same_death(at)
        if known is not None:
            # delivered twice, or a snapshot saw it first
            if known.exit_code is None:
                known.exit_code = exit_code
                self._explain(known)
            return
        self._latest_ns = max(self._latest_ns, at)
        death = self._new_death(at, exit_code)
        if self._starts and self._starts[-1] > at:
            self._show_past_death(death, obs)
            return
        self._paused = False
        self._fire_death(death, obs)

    def _fire_death(self, death: _Death, obs: Observation) -> None:
        """Move for the newest death: stopped, restarting, crash-looping or exited."""
        cause = self._death_cause(death)
        if death.by == "restart":
            self._fire("user_restart", obs, cause)
        elif death.by is not None:
            self._fire("user_died", obs, cause)
        elif death.counted and self._loop_at(death.at_ns):
            self._enter_loop(death, obs, self._crashloop_cause(death))
        else:
            self._fire("died", obs, cause)
        if death.restarted:  # the policy's restart event arrived before this died
            self._fire("restart", obs, "restart event")

    def _show_past_death(self, death: _Death, obs: Observation) -> None:
        """A died that arrived after the start that followed it: it counts, and the state comes back."""
        if not death.counted:
            return
        newest = self._ends[-1]
        if self._loop_at(death.at_ns):
            if self._up() or newest.counted:
                self._enter_loop(death, obs, self._crashloop_cause(death))
            return
        if self._up() and self._fire("died", obs, self._death_cause(death)):
            self._fire_up(obs, "started again (its start event arrived before this died)")

    def _fire_up(self, obs: Observation, cause: str) -> None:
        """Move to the up state the current run is in."""
        self._fire("start_checked" if self._health == "starting" else "start", obs, cause)
        dest = self._up_state()
        if self._model.state in UP and self._model.state is not dest:
            self._fire(f"health_{self._health}", obs, cause)

    def _on_mark(self, at_ns: int, what: str, obs: Observation) -> None:
        """A stop or kill (podman's event or our own action): it explains a death in its window."""
        claimed = self._claim(at_ns, what)
        if claimed is not None:
            self._claimed(claimed, what, obs)
        else:
            self._add_mark(at_ns, what)

    def _on_stop_or_kill(self, obs: EventObs) -> None:
        self._on_mark(obs.at_ns, obs.status, obs)

    def _on_pause(self, obs: EventObs) -> None:
        if obs.at_ns < self._latest_ns:
            return
        self._latest_ns = obs.at_ns
        self._paused = self._up()
        self._fire("pause", obs, "paused")

    def _on_unpause(self, obs: EventObs) -> None:
        if obs.at_ns < self._latest_ns:
            return
        self._latest_ns = obs.at_ns
        self._paused = False
        self._fire("unpause", obs, "unpaused")

    def _on_remove(self, obs: EventObs) -> None:
        if obs.at_ns < self._latest_ns:
            return
        self._latest_ns = obs.at_ns
        self._paused = False
        self._fire("remove", obs, "removed")

    # ------------------------------------------------------------ probes and logs

    def _first_error(self, at_ns: int) -> str | None:
        """The first error line of the run that ended at at_ns (since its start)."""
        start = self._start_before(at_ns)
        lo = -1 if start is None else start
        found = min(((ns, line) for ns, line in self._errors if lo <= ns <= at_ns), default=None)
        return None if found is None else found[1]

    def _on_oom_kill(self, obs: ProbeObs) -> None:
        """The kernel's oom-kill line for this container: evidence for the died (exit 137) that follows."""
        line = obs.excerpt or obs.detail or "kernel oom-kill"
        for death in reversed(self._ends[-_KEEP_OOMS:]):
            if death.oom is None and self._oom_fits(obs.at_ns, death):
                death.oom = line
                self._explain(death)
                return
        self._ooms.append((obs.at_ns, line))
        if len(self._ooms) > _KEEP_OOMS:
            del self._ooms[0]

    def _oom_fits(self, at_ns: int, death: _Death) -> bool:
        s = self.settings
        return (death.exit_code == 137 and at_ns - s.stop_after_died_ns <= death.at_ns <= at_ns + s.oom_window_ns
                and not self._start_in(min(at_ns, death.at_ns), max(at_ns, death.at_ns)))

    def _on_healthcheck_run(self, obs: ProbeObs) -> None:
        """One `podman healthcheck run`, judged the way podman 4.3 updates its health log.

        The exit code alone flaps (it is 1 on any failed run, measured), so: a pass sets
        healthy and FailingStreak 0; a failure inside the start period (the check began
        less than StartPeriod after StartedAt) changes nothing; any other failure adds one
        to FailingStreak and turns the status unhealthy once the streak reaches Retries.
        Retries and the start period come from the latest snapshot (unknown: every
        failure counts as unhealthy).
        """
        outcome = obs.detail
        if outcome not in ("healthy", "unhealthy"):
            return  # 125: no check defined, container not running, podman failed
        self._health_from_runs = self._has_check = True
        began = obs.at_ns - int(obs.latency_ms * _MS)
        start = self._start_before(began)
        current = start is not None and start == self._starts[-1] and self._up()
        started = (self._started_at or start) if current else start
        in_start_period = (started is not None and self._start_period_ns > 0
                           and began - started < self._start_period_ns)
        status = self._health if current else None
        if outcome == "healthy":
            self._streak, status = 0, "healthy"
        elif not in_start_period:
            self._streak += 1
            if self._streak >= max(self._retries, 1):
                status = "unhealthy"
        self._last_check_ns = max(self._last_check_ns, obs.at_ns)
        if not current:
            return  # a result that raced a death does not revive the container
        self._health = status or "starting"
        if self._paused:
            return
        if outcome == "healthy":
            cause = "health check passed"
        else:
            cause = "health check failed"
            if self._health == "unhealthy" and self._retries > 1:
                cause += f" {self._streak} times in a row (retries {self._retries})"
            if obs.excerpt:
                cause += f": {obs.excerpt[-120:]}"
        self._fire(f"health_{self._health}", obs, cause)

    # ------------------------------------------------------------ deaths and marks

    def _new_death(self, at_ns: int, exit_code: int | None, oom_killed: bool = False,
                   stopped_by_user: bool | None = None) -> _Death:
        """Record a death not seen before: pair it with a mark, count it if it was nobody's doing."""
        death = _Death(at_ns, exit_code, oom_killed=oom_killed)
        insort(self._ends, death, key=_at)
        if len(self._ends) > _KEEP_POINTS:
            del self._ends[0]
        self._pair(death)
        if stopped_by_user and death.by is None:
            death.by, death.by_evidence = "stop", _STOPPED_BY_USER
        if death.by is None:
            self._count(death)
        self._explain(death)
        return death

    def _mark_fits(self, mark_ns: int, what: str, death_ns: int) -> bool:
        """Whether a mark can explain a death at death_ns (no start between them, inside its window)."""
        s = self.settings
        if mark_ns > death_ns:
            # `podman restart` writes restart before its died; a restart after a died is the policy's
            return (what != "restart" and mark_ns - death_ns <= s.stop_after_died_ns
                    and not self._start_in(death_ns, mark_ns))
        window = s.kill_window_ns if what == "kill" else s.user_stop_window_ns
        return death_ns - mark_ns <= window and not self._start_in(mark_ns, death_ns)

    def _pair(self, death: _Death) -> None:
        """Give a new death its mark: a restart first, then our own stop/kill, then the nearest event."""
        at, marks, grace = death.at_ns, self._marks, self.settings.restart_grace_ns
        best: tuple[tuple[int, int], int] | None = None
        for i, (ns, what) in enumerate(marks):
            if what == "restart" and at < ns <= at + grace and not self._start_in(at, ns):
                death.restarted = True  # the policy's restart event, delivered before this died
                continue
            if not self._mark_fits(ns, what, at):
                continue
            # a restart's own stop is part of the restart; our own action says more than podman's event
            rank = (0 if what == "restart" else 1 if what in USER_STOP_ACTIONS else 2, abs(at - ns))
            if best is None or rank < best[0]:
                best = (rank, i)
        if death.restarted:
            # podman never restarts a user stop: no mark explains this death
            self._marks = [(ns, what) for ns, what in marks
                           if not (what == "restart" and at < ns <= at + grace)]
        elif best is not None:
            death.by = marks.pop(best[1])[1]
        if death.exit_code == 137:
            for i, (ns, line) in enumerate(self._ooms):
                if self._oom_fits(ns, death):
                    death.oom = line
                    del self._ooms[i]
                    break

    def _add_mark(self, at_ns: int, what: str) -> None:
        self._marks.append((at_ns, what))
        if len(self._marks) > _KEEP_MARKS:
            del self._marks[0]

    def _claim(self, mark_ns: int, what: str) -> _Death | None:
        """A recorded death a late mark explains: not yet a user's (a restart may upgrade a stop or kill)."""
        best: tuple[int, _Death] | None = None
        for death in self._ends[-_KEEP_MARKS:]:
            if death.restarted or not (death.counted or (what == "restart" and death.by not in (None, "restart"))):
                continue
            if self._mark_fits(mark_ns, what, death.at_ns):
                distance = abs(death.at_ns - mark_ns)
                if best is None or distance < best[0]:
                    best = (distance, death)
        return None if best is None else best[1]

    def _claimed(self, death: _Death, what: str, obs: Observation, evidence: str | None = None,
                 prefix: str = "", contradiction: bool = False) -> None:
        """A recorded death turned out to be a user's (`what`): uncount it and move accordingly."""
        death.by, death.by_evidence = what, evidence
        if death.counted:
            self._uncount(death)
        self._explain(death)
        cause = prefix + self._death_cause(death)
        state = self._model.state
        standing = self._loop_since_ns is not None and self._loop_stands_without(death)
        if not standing:
            self._loop_since_ns = None
        if death is self._ends[-1] and not self._up():
            if what != "restart":
                self._fire("user_stop", obs, cause, contradiction)
            elif state is State.CRASHLOOPING:
                if not standing:
                    self._leave_loop(obs, cause, contradiction)
            elif state is State.STOPPED and standing:
                # taken for a stop of a crash-looping container, it was a restart: the loop holds through it
                self._fire("crashloop", obs, cause, contradiction)
            else:
                self._fire("restart", obs, cause, contradiction)
        elif state is State.CRASHLOOPING and not standing:
            self._leave_loop(obs, cause, contradiction)

    def _explain(self, death: _Death) -> None:
        """Give a death its reason; the newest death's is the machine's `last_death`."""
        s = self.settings
        crashed_by = next((detail for ns, detail in reversed(self._crash_marks)
                           if 0 <= death.at_ns - ns <= s.kill_window_ns and not self._start_in(ns, death.at_ns)), None)
        clear = any(abs(death.at_ns - ns) <= s.oom_window_ns for ns in self._kernel_clear)
        death.reason = death_reason(
            death.exit_code, user_action=death.by, user_evidence=death.by_evidence, oom_evidence=death.oom,
            oom_killed=death.oom_killed, memory=self._memory,
            first_error=None if death.by else self._first_error(death.at_ns), crashed_by=crashed_by,
            kernel_clear=clear)
        if death is self._ends[-1]:
            self.last_death, self.last_death_ns = death.reason, death.at_ns

    def _death_cause(self, death: _Death) -> str:
        return f"died: {death.reason.text}" if death.reason else "died"

    # ------------------------------------------------------------ crash loop

    def _count(self, death: _Death) -> None:
        """A death nobody asked for: it counts toward a crash loop."""
        death.counted = True
        self.crashes += 1
        at, history, window = death.at_ns, self._history, self.settings.crashloop_window_ns
        i = bisect_right(self._starts, at)
        if i < len(self._starts) and not self._death_in(at, self._starts[i]):
            self.restarts += 1  # its restart arrived first (see `_add_start` for the usual order)
        insort(history, at)
        while history[0] < history[-1] - 2 * window or len(history) > _KEEP_DEATHS:
            del history[0]
        deaths = self.deaths
        if not deaths or at >= deaths[-1]:
            deaths.append(at)
        else:
            # Out of order (older than a death already seen): keep the deque sorted.
            deaths.insert(next(i for i, t in enumerate(deaths) if t > at), at)
        while deaths[0] < deaths[-1] - window or len(deaths) > _KEEP_DEATHS:
            deaths.popleft()

    def _uncount(self, death: _Death) -> None:
        death.counted = False
        self.crashes -= 1
        if death.at_ns in self._history:
            self._history.remove(death.at_ns)
        if death.at_ns in self.deaths:
            self.deaths.remove(death.at_ns)

    def _loop_at(self, at_ns: int) -> bool:
        """Whether crashloop_deaths counted deaths, the one at at_ns among them, fit in one window."""
        history, window, need = self._history, self.settings.crashloop_window_ns, self.settings.crashloop_deaths
        first, last = bisect_left(history, at_ns), bisect_right(history, at_ns) - 1
        if last < first:
            return False
        # `need` consecutive deaths that include this one and span no more than the window
        for i in range(max(0, first - need + 1), min(last, len(history) - need) + 1):
            if history[i + need - 1] - history[i] <= window:
                return True
        return False

    def _enter_loop(self, death: _Death, obs: Observation, cause: str, contradiction: bool = False,
                    trigger: str = "crashloop") -> None:
        if self._fire(trigger, obs, cause, contradiction):
            self._loop_since_ns = death.at_ns

    def _loop_stands_without(self, death: _Death) -> bool:
        """Whether the crash loop holds now that `death` is known to be a user's."""
        since = self._loop_since_ns
        if since is not None and since < death.at_ns:
            return True  # entered by an earlier death: a loop ends only by staying up
        for at in self._history:
            if at >= death.at_ns and self._loop_at(at):
                self._loop_since_ns = at
                return True
        return False

    def _leave_loop(self, obs: Observation, cause: str, contradiction: bool = False) -> None:
        """Leave CRASHLOOPING for what the container is doing now."""
        self._loop_since_ns = None
        if self._up():
            dest = self._up_state()
        else:
            newest = self._ends[-1]
            if newest.by is not None and newest.by != "restart":
                self._fire("user_stop", obs, cause, contradiction)
                return
            dest = State.RESTARTING if newest.by == "restart" or newest.restarted else State.EXITED
        self._fire(f"settle_{dest}", obs, cause, contradiction)

    def _crashloop_cause(self, death: _Death) -> str:
        window = format_duration(self.settings.crashloop_window_ns)
        lo = death.at_ns - self.settings.crashloop_window_ns
        history = self._history
        count = max(bisect_right(history, death.at_ns) - bisect_left(history, lo), self.settings.crashloop_deaths)
        last = death.reason.text if death.reason else "?"
        return f"{count} deaths within {window}; last: {last}"

    def _settle(self, obs: Observation) -> None:
        """Leave CRASHLOOPING once the container has stayed up for the stable period."""
        at = obs.at_ns
        stable = self.settings.stable_period_ns
        start = self._start_before(at)
        if start is None or at - start < stable or self._death_in(start, at):
            return
        # As Kubernetes resets its back-off: deaths up to now no longer count toward a loop.
        self._history = [t for t in self._history if t > at]
        while self.deaths and self.deaths[0] <= at:
            self.deaths.popleft()
        for later in self._history:  # deaths delivered before this (older-stamped) observation
            if self._loop_at(later):
                self._loop_since_ns = later
                return
        self._leave_loop(obs, f"up {format_duration(stable)} since last start")

    def _up_state(self) -> State:
        return HEALTH_STATES.get(self._health or "", State.RUNNING)

    # ------------------------------------------------------------ snapshots

    def _on_snapshot(self, obs: SnapshotObs) -> None:
        if obs.container_id:
            self.container_id = obs.container_id
        if not obs.exists:
            self._snapshot_missing(obs)
            return
        if obs.at_ns < self._created_ns:
            return
        self._learn(obs)
        seen = _snapshot_state(obs)
        if seen is State.RUNNING:
            self._snapshot_running(obs)
        elif seen is State.EXITED:
            self._snapshot_exited(obs)
        elif seen is not None:
            self._snapshot_other(obs, seen)

    def _learn(self, obs: SnapshotObs) -> None:
        """Configuration from the latest snapshot: what podman's restart policy and health rules use."""
        self._memory = obs.memory
        self._has_check = obs.health is not None
        self._retries = obs.health_retries
        self._start_period_ns = obs.health_start_period_ns

    def _resync_health(self, obs: SnapshotObs) -> None:
        """podman's own status and FailingStreak, unless our own later check result knows better."""
        if obs.at_ns >= self._last_check_ns:
            # only podman's own words: anything else (a newer podman's status) leaves health unknown
            self._health = obs.health if obs.health in HEALTH_STATES else None
            self._streak = obs.health_failing_streak

    def _snapshot_missing(self, obs: SnapshotObs) -> None:
        current = self._model.state
        if obs.at_ns < self._latest_ns or current in (State.REMOVED, State.MISSING):
            return
        self._paused = False
        if current is State.UNKNOWN:
            self._fire("observe_missing", obs, "inspect says no such container")
        else:
            self._fire("observe_missing", obs,
                       f"snapshot disagrees: machine said {current}, inspect says no such container", True)

    def _snapshot_running(self, obs: SnapshotObs) -> None:
        started = obs.started_at_ns
        bound = started if started > 0 else obs.at_ns  # the run it shows began no later than this
        if self._ends and self._ends[-1].at_ns >= bound:
            return  # stale: the run it shows has died since
        current = self._model.state
        what = _snapshot_text(obs)
        first_sight = not self._starts and not self._ends
        missed = [] if first_sight else self._missed_deaths(obs, bound)
        if self._up() and not missed:
            # The run the machine knows: podman's StartedAt and health bookkeeping refine it.
            self._started_at = started
            self._resync_health(obs)
            self._prev_snapshot = (obs.at_ns, obs.restart_count)
            if current is State.CRASHLOOPING:
                return
            contradiction = self._paused or current not in UP | {State.UNKNOWN, State.RESTARTING}
            self._paused = False
            dest = self._up_state()
            if current is not dest:
                cause = (f"snapshot disagrees: machine said {current}, inspect says {what}" if contradiction
                         else f"inspect says {what}")
                self._fire(f"observe_{dest}", obs, cause, contradiction)
            return
        # It came up again since the newest death the machine knows, maybe after deaths it never saw.
        self._add_start(bound)
        self._begin_run()
        self._started_at = started
        self._resync_health(obs)
        self._prev_snapshot = (obs.at_ns, obs.restart_count)
        dest = self._up_state()
        if missed:
            last = missed[-1]
            late = self._events_on_the_way(obs, last.at_ns)
            cause = (f"inspect says {what} since a restart; its events are on the way" if late else
                     f"snapshot disagrees: machine said {current}, inspect says {what} since a restart: "
                     f"{len(missed)} death(s) missed")
            if self._loop_at(last.at_ns):
                if current is not State.CRASHLOOPING:
                    self._enter_loop(last, obs, f"{cause}; {self._crashloop_cause(last)}", not late,
                                     "observe_crashlooping")
                return
            if current is State.CRASHLOOPING:
                return
            self._fire("observe_exited", obs, f"{cause}; {self._death_cause(last)}", not late)
            self._fire(f"observe_{dest}", obs, f"inspect says {what}", not late)
            return
        if current is State.CRASHLOOPING:
            return  # a crash loop holds through restarts
        if (first_sight or current in (State.RESTARTING, State.UNKNOWN)
                or (started > 0 and self._events_on_the_way(obs, started))):
            # first sight, or the start event is still on its way
            self._fire(f"observe_{dest}", obs, f"inspect says {what}")
        else:
            self._fire(f"observe_{dest}", obs, f"snapshot disagrees: machine said {current}, inspect says {what}",
                       True)

    def _events_on_the_way(self, obs: SnapshotObs, changed_ns: int) -> bool:
        """Whether podman's events for a change the snapshot shows may simply not have arrived yet."""
        return obs.at_ns - changed_ns <= self.settings.event_lag_ns

    def _missed_deaths(self, obs: SnapshotObs, bound: int) -> list[_Death]:
        """Deaths a running snapshot shows that the machine never saw, recorded and counted.

        FinishedAt after the newest point the machine knows means at least one; RestartCount
        rising by more than the deaths seen since the previous snapshot means more (podman 4.3
        counts policy restarts since the last manual start or restart, measured).
        """
        finished = obs.finished_at_ns
        known = max(self._starts[-1] if self._starts else 0, self._ends[-1].at_ns if self._ends else 0)
        if finished <= known or finished > bound:
            return []
        count = 1
        prev = self._prev_snapshot
        if prev is not None and obs.restart_count > prev[1]:
            seen = sum(1 for d in self._ends if d.by is None and prev[0] < d.at_ns <= bound)
            count = max(1, obs.restart_count - prev[1] - seen)
        return [self._new_death(finished, None) for _ in range(count)]

    def _snapshot_exited(self, obs: SnapshotObs) -> None:
        finished = obs.finished_at_ns if obs.finished_at_ns > 0 else obs.at_ns
        if self._starts and self._starts[-1] > finished:
            return  # stale: it has started again since
        current = self._model.state
        what = _snapshot_text(obs)
        death = self._same_death(finished)
        self._prev_snapshot = (obs.at_ns, obs.restart_count)
        if death is None and not self._starts and not self._ends:
            # First sight of a container that was already down: not a death we saw, so not counted.
            death = _Death(finished, obs.exit_code, oom_killed=obs.oom_killed, first_sight=True)
            self._ends.append(death)
            if obs.stopped_by_user or (obs.at_ns - finished >= self.settings.restart_grace_ns
                                       and _policy_restarts(obs, obs.exit_code)):
                # podman restarts every death under this policy but a user's stop: it was stopped
                # (before we looked; 4.3 says so nowhere else)
                evidence = (_STOPPED_BY_USER if obs.stopped_by_user
                            else f"not restarted under restart policy {obs.restart_policy}")
                death.by, death.by_evidence = "stop", evidence
                self._explain(death)
                self._fire("observe_stopped", obs, f"inspect says {what}; {evidence}: stopped by a user "
                                                   "before podwarden looked")
                return
            self._explain(death)
            self._fire("observe_exited", obs, f"inspect says {what}")
            return
        if death is None:
            # A death the machine has not seen: it believed the container up.
            death = self._new_death(finished, obs.exit_code, oom_killed=obs.oom_killed,
                                    stopped_by_user=obs.stopped_by_user)
            self._paused = False
            missed = not (obs.finished_at_ns > 0 and self._events_on_the_way(obs, finished))
            cause = (f"snapshot disagrees: machine said {current}, inspect says {what}; " if missed
                     else f"inspect says {what} (its died event is on the way); ")
            if current is State.CRASHLOOPING and death.by in (None, "restart"):
                return  # a crash loop holds through deaths and restarts
            if death.by == "restart":
                self._fire("observe_restarting", obs, cause + self._death_cause(death), missed)
            elif death.by is not None:
                self._fire("observe_stopped", obs, cause + self._death_cause(death), missed)
            elif self._loop_at(death.at_ns):
                self._enter_loop(death, obs, cause + self._crashloop_cause(death), missed, "observe_crashlooping")
            else:
                self._fire("observe_exited", obs, cause + self._death_cause(death), missed)
            return
        # The death the machine knows.
        if (obs.oom_killed and not death.oom_killed) or death.exit_code is None:
            death.oom_killed = death.oom_killed or obs.oom_killed
            if death.exit_code is None:
                death.exit_code = obs.exit_code
            self._explain(death)
        grace = self.settings.restart_grace_ns
        newest_down = (death is self._ends[-1] and (death.counted or (death.first_sight and death.by is None))
                       and not death.restarted and not self._up())
        if newest_down and obs.stopped_by_user:
            # podman 5 says so itself
            self._claimed(death, "stop", obs, evidence=_STOPPED_BY_USER, contradiction=True,
                          prefix="inspect says StoppedByUser (podman wrote no stop event we saw); ")
        elif (newest_down and obs.at_ns - death.at_ns >= grace and _policy_restarts(obs, death.exit_code)):
            # podman restarts every such death unless a user stopped the container; 4.3 often
            # writes no `stop` event (about half of `podman stop`s, measured), so this is how a stop shows.
            policy = obs.restart_policy
            self._claimed(death, "stop", obs, evidence=f"not restarted under restart policy {policy}",
                          prefix=f"not restarted under restart policy {policy}: "
                                 "stopped by a user (podman wrote no stop event); ",
                          contradiction=True)
        elif current is State.UNKNOWN:
            self._fire("observe_exited", obs, f"inspect says {what}")

    def _snapshot_other(self, obs: SnapshotObs, seen: State) -> None:
        """A snapshot showing created or paused."""
        current = self._model.state
        bound = obs.started_at_ns if obs.started_at_ns > 0 else obs.at_ns
        if seen is current or (self._ends and self._ends[-1].at_ns > bound):
            return
        if seen is State.CREATED and self._starts and self._starts[-1] > obs.at_ns:
            return  # stale: started since
        if seen is State.PAUSED:
            if not self._up():
                self._add_start(bound)
            self._paused = True
        what = _snapshot_text(obs)
        if current is State.UNKNOWN:
            self._fire(f"observe_{seen}", obs, f"inspect says {what}")
        else:
            self._fire(f"observe_{seen}", obs, f"snapshot disagrees: machine said {current}, inspect says {what}",
                       True)


_STOPPED_BY_USER = "podman inspect: State.StoppedByUser=true"
# podwarden's own actions that stop a container: the next died is the user's, not a crash.
USER_STOP_ACTIONS = frozenset({"podman stop", "podman kill"})
# podwarden's crash experiment: SIGKILL of the main process from the host (not a user stop)
CRASH_ACTION = "crash"
RESTARTING_POLICIES = frozenset({"always", "unless-stopped"})


def _policy_restarts(obs: SnapshotObs, exit_code: int | None) -> bool:
    """Whether podman's restart policy would restart a death with this exit code by itself."""
    policy = obs.restart_policy
    if policy in RESTARTING_POLICIES:
        return True
    if policy == "on-failure":
        # on-failure:N gives up once RestartCount reaches N
        return exit_code not in (0, None) and (obs.restart_max_retries <= 0
                                               or obs.restart_count < obs.restart_max_retries)
    return False


def _snapshot_state(obs: SnapshotObs) -> State | None:
    """The state `podman inspect` shows, before comparing with the machine; None if unclear."""
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


def _snapshot_text(obs: SnapshotObs) -> str:
    if not obs.exists:
        return "no such container"
    status = obs.status or "?"
    return f"{status} health={obs.health}" if obs.health and status == "running" else status


_KIND_HANDLERS: dict[type, Callable[[ContainerMachine, Any], None]] = {
    EventObs: ContainerMachine._on_event,
    LogObs: ContainerMachine._on_log,
    SnapshotObs: ContainerMachine._on_snapshot,
    ProbeObs: ContainerMachine._on_probe,
    ActionObs: ContainerMachine._on_action,
    # agent records change nothing
}

_EVENT_HANDLERS: dict[str, Callable[[ContainerMachine, EventObs], None]] = {
    "create": ContainerMachine._on_create,
    "start": ContainerMachine._on_start,
    "restart": ContainerMachine._on_restart,
    "health_status": ContainerMachine._on_health,
    "died": ContainerMachine._on_died,
    "stop": ContainerMachine._on_stop_or_kill,
    "kill": ContainerMachine._on_stop_or_kill,
    "pause": ContainerMachine._on_pause,
    "unpause": ContainerMachine._on_unpause,
    "remove": ContainerMachine._on_remove,
    # init, exec, exec_died (health-check execs), cleanup, mount, attach, ... change nothing;
    # rename is the Fleet's business (the machine moves to the new name).
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
        if type(obs) is EventObs and obs.status == "rename":
            self._renamed(obs)
        return self.expect(obs.target, obs.container).feed(obs)

    def _renamed(self, obs: EventObs) -> None:
        """Move the machine of the renamed container to its new name.

        podman 4.3's rename event carries only the new name and the container ID (measured:
        `{"ID": ..., "Name": "<new name>", "Status": "rename", "Attributes": {}}`), so the
        machine that last saw that ID under another name is the one renamed. A machine
        already under the new name (an expected name not yet present) is replaced; the old
        name keeps no machine, so nothing claims a live container there.
        """
        if not obs.container_id:
            return
        for (target, name), machine in self._machines.items():
            if target == obs.target and name != obs.container and machine.container_id == obs.container_id:
                break
        else:
            return
        del self._machines[(target, name)]
        replaced = self._machines.pop((target, obs.container), None)
        if replaced is not None:
            replaced.close()
        machine.container = obs.container
        self._machines[(target, obs.container)] = machine

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
        """Every machine, in the order they were first seen (a renamed one moves to the end)."""
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

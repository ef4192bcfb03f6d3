"""The container machine against a model of podman 4.3 for one container.

Hypothesis draws what happens on the node (the truth): crashes with exit codes, OOM kills,
a user's stop / kill / restart and our own stop / kill, `podman kill -s HUP` that kills
nothing, health checks passing and failing under retries and a start period, user starts,
log lines and quiet periods, each step possibly repeated many times. The model renders
what podwarden sees of it, with the quirks measured on podman 4.3 here:

- `podman stop` writes its `stop` event only sometimes (never, for a container that traps
  TERM; about half the time with a KILL), just before the died; `podman kill` writes `kill`
  (with no signal named, so `kill -s HUP` looks the same and the container lives on);
- `podman restart` writes restart, sometimes stop, died, init, start (RestartCount resets);
  the restart policy writes died, restart 1-2 ms later, init, start ~70 ms later
  (RestartCount + 1); `podman start` resets RestartCount;
- a health check writes exec, health_status (the status from *before* this check), exec_died;
  our `podman healthcheck run` exits 1 on any failure while podman's status follows
  FailingStreak, Retries and the start period (FailingStreak survives restarts, the status
  resets to starting at every start);
- the kernel logs its oom-kill line at the kill, ms before podman's died (exit 137);
  inspect's OOMKilled stays false;
- events are written up to 100 ms out of time order, carrying their true stamps, and read
  by the file backend's 250 ms poll (the died arrived 171 ms late at the median, measured);
  a snapshot's content is as of the moment it is stamped, and it is delivered 150-900 ms
  later: after events that happened meanwhile, or before events still waiting for the
  poll; the watcher reconciles 2 s after a death.

The machine, fed in delivery order, must end in the truth's state with the truth's count of
deaths nobody asked for (so the same crash-loop verdict) and the truth's reason kind for the
last death. One thing is not knowable and the model says so instead of hiding it: under
restart policy `no`, a user's `podman stop` that podman wrote no stop event for leaves no
trace (inspect 4.3 has no StoppedByUser), so it is expected to count as a death of its own.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass

from hypothesis import given, note, settings
from hypothesis import strategies as st

from machines.container import Fleet, MachineSettings
from machines.deaths import USER_KINDS
from machines.observations import ActionObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import State
from machines.table import HEALTH_STATES

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000
MS = 1_000_000
TARGET, NAME, CID = "node1", "lnd", "0d335cab5320355d"
MEMORY = 16 * 1024 * 1024
POLL = 250 * MS  # podman's file events backend reads events.log every 250 ms
MACHINE = MachineSettings()  # 3 deaths in 5 min, 10 min stable


@dataclass(frozen=True)
class Setup:
    """The container as created, and what the watcher can see on this node."""

    policy: str
    check: bool
    retries: int
    start_period_ns: int
    memory: int
    our_checks: bool  # no systemd timers: podwarden runs `podman healthcheck run` itself
    kernel_log: bool  # the watcher can read the kernel's oom-kill lines
    final_snapshot: bool


@dataclass(frozen=True)
class Step:
    """One happening on the node, `gap_ns` after the previous one ended."""

    kind: str
    gap_ns: int
    variant: int  # exit code, stop duration, check outcome
    stop_event: bool  # podman wrote the stop event this time
    error_line: bool  # the container printed an error line before it
    raced: bool  # a health check was running when the container died
    snapshot: tuple[int, int] | None  # (offset from the step, delivery delay) of a snapshot racing it


KINDS = ["crash", "crash", "oom", "stop", "our-stop", "kill", "our-kill", "restart", "hup",
         "check", "check", "check", "start", "log", "quiet"]
CRASH_EXITS = [1, 2, 139, 134, 0, 255]
GAPS_S = [3, 4, 10, 30, 90, 200, 400, 650]

setups = st.builds(
    Setup,
    policy=st.sampled_from(["always", "unless-stopped", "on-failure", "no"]),
    check=st.booleans(),
    retries=st.integers(1, 3),
    start_period_ns=st.sampled_from([0, 5 * S, 60 * S]),
    memory=st.sampled_from([0, MEMORY]),
    our_checks=st.booleans(),
    kernel_log=st.booleans(),
    final_snapshot=st.booleans(),
)
steps = st.builds(
    Step,
    kind=st.sampled_from(KINDS),
    gap_ns=st.builds(lambda s, ms: s * S + ms * MS, st.sampled_from(GAPS_S), st.integers(0, 999)),
    variant=st.integers(0, 5),
    stop_event=st.booleans(),
    error_line=st.booleans(),
    raced=st.booleans(),
    snapshot=st.none() | st.tuples(st.sampled_from([-200, -50, 10, 50, 500]).map(lambda ms: ms * MS),
                                   st.integers(150, 900).map(lambda ms: ms * MS)),
)
# Repeats: the same step (same gap, same outcome) several times in a row.
scripts = st.lists(st.tuples(steps, st.integers(1, 6)), max_size=12).map(
    lambda pairs: [step for step, times in pairs for _ in range(times)])


@dataclass(frozen=True)
class Death:
    """A death as the truth knows it (`counted`: nobody asked for it, as far as can be known)."""

    at_ns: int
    counted: bool
    kind: str
    first_error: str | None


class Podman:
    """The truth for one container, and what podwarden sees of it."""

    def __init__(self, setup: Setup, rnd: random.Random) -> None:
        self.setup = setup
        self.rnd = rnd
        self.delivered: list[tuple[int, int, int, Observation]] = []  # (arrives, written, seq, obs)
        self.content: list[tuple[int, dict]] = []  # (from when, what inspect shows)
        self.starts: list[int] = []  # start event stamps
        self.deaths: list[Death] = []
        self.up = False
        self.started_at = 0
        self.finished_at = 0
        self.exit_code = 0
        self.restart_count = 0
        self.health: str | None = None
        self.streak = 0
        self.first_error: str | None = None  # of the current run

    # ------------------------------------------------------------ what podwarden sees

    def _deliver(self, obs: Observation, at_ns: int, then: int = 0) -> None:
        self.delivered.append((at_ns, then, len(self.delivered), obs))

    def event(self, status: str, at_ns: int, **fields: object) -> None:
        # podman's writers reorder concurrent events by up to ~75 ms (100 ms here); the file
        # backend's reader picks up what was written at its next 250 ms poll
        written = at_ns + self.rnd.randint(0, 100) * MS
        self._deliver(EventObs(TARGET, NAME, at_ns, CID, status, **fields), (written // POLL + 1) * POLL, written)

    def log(self, at_ns: int, line: str, is_error: bool) -> None:
        if is_error and self.up and self.first_error is None:
            self.first_error = line
        self._deliver(LogObs(TARGET, NAME, at_ns, line, "stderr" if is_error else "stdout", is_error),
                      at_ns + self.rnd.randint(0, 100) * MS)

    def probe(self, obs: ProbeObs) -> None:
        self._deliver(obs, obs.at_ns)

    def action(self, what: str, at_ns: int) -> None:
        self._deliver(ActionObs(TARGET, NAME, at_ns, what, "experiment step"), at_ns)

    def snapshot(self, at_ns: int, delay_ns: int) -> None:
        """What inspect showed at at_ns, delivered delay_ns later."""
        stamps = [when for when, _ in self.content]
        shown = self.content[bisect_right(stamps, at_ns) - 1][1]
        setup = self.setup
        obs = SnapshotObs(
            TARGET, NAME, at_ns, True, CID, shown["status"], shown["health"], shown["exit_code"],
            pid=4242 if shown["status"] == "running" else 0, restart_count=shown["restart_count"],
            started_at_ns=shown["started_at"], finished_at_ns=shown["finished_at"], restart_policy=setup.policy,
            memory=setup.memory, image="localhost/expbb:1", health_failing_streak=shown["streak"],
            health_retries=setup.retries if setup.check else 0,
            health_start_period_ns=setup.start_period_ns if setup.check else 0)
        self._deliver(obs, at_ns + delay_ns)

    def _shown_from(self, at_ns: int) -> None:
        self.content.append((at_ns, {
            "status": "running" if self.up else "exited", "health": self.health,
            "exit_code": 0 if self.up else self.exit_code,  # inspect shows 0 once restarted (measured)
            "restart_count": self.restart_count, "started_at": self.started_at,
            "finished_at": self.finished_at, "streak": self.streak}))

    # ------------------------------------------------------------ podman's own rules

    def restarts(self, exit_code: int) -> bool:
        """Whether the restart policy restarts a death it was not told about."""
        return self.setup.policy in ("always", "unless-stopped") or (
            self.setup.policy == "on-failure" and exit_code != 0)

    def reason_kind(self, exit_code: int, oom: bool) -> str:
        """The kind of reason a death nobody asked for has, from what podwarden can see."""
        if oom and self.setup.kernel_log:
            return "oom-kill"
        if exit_code == 137 and self.setup.memory:
            return "oom-likely"
        if 129 <= exit_code <= 192:
            return "signal"
        return "exit"

    def start_run(self, started_at: int, manual: bool) -> None:
        """podman starts the main process: start event ~5 ms after StartedAt."""
        self.up = True
        self.started_at = started_at
        self.restart_count = 0 if manual else self.restart_count + 1
        if self.setup.check:
            self.health = "starting"  # reset at every start; FailingStreak is kept (measured)
        self.first_error = None
        self.starts.append(started_at + 5 * MS)
        self._shown_from(started_at)
        self.event("start", started_at + 5 * MS)

    def die(self, died_ns: int, exit_code: int, counted: bool, kind: str) -> None:
        """The main process ends: FinishedAt ~25 ms before podman's died event."""
        self.up = False
        self.finished_at = died_ns - 25 * MS
        self.exit_code = exit_code
        self._shown_from(self.finished_at)
        self.deaths.append(Death(died_ns, counted, kind, self.first_error if counted else None))
        self.event("died", died_ns, exit_code=exit_code)

    # ------------------------------------------------------------ happenings

    def boot(self) -> int:
        self.event("create", T0)
        self.event("init", T0 + 110 * MS)
        self.start_run(T0 + 115 * MS, manual=True)
        self.snapshot(T0 + 500 * MS, 200 * MS)  # the watcher's first reconcile
        return T0 + 500 * MS

    def happen(self, step: Step, at: int) -> int:
        """Render one step starting at `at`; returns when it is over."""
        kind = step.kind
        if not self.up and kind in ("crash", "oom", "stop", "our-stop", "kill", "our-kill", "hup", "check"):
            kind = "start"  # the container is down: someone starts it again
        if self.up and kind == "start":
            kind = "quiet"
        if kind in ("crash", "oom"):
            exit_code = 137 if kind == "oom" else CRASH_EXITS[step.variant]
            if step.error_line:
                self.log(at - 500 * MS, f"fatal: LOCK: Permission denied (run {len(self.starts)})", True)
            if kind == "oom" and self.setup.kernel_log:
                self.probe(ProbeObs(TARGET, NAME, at - 20 * MS, "oom-kill", "kernel-log", False,
                                    excerpt=f"Memory cgroup out of memory: Killed process 2003 (sh) in libpod-{CID}",
                                    detail="oom-kill"))
            if step.raced and self.setup.check:
                # a check that ran into the death: podman logs its health_status just after the died
                self.event("health_status", at + 30 * MS, health_status=self.health)
                if self.setup.our_checks:
                    self.probe(ProbeObs(TARGET, NAME, at + 40 * MS, "healthcheck", "podman-healthcheck", False,
                                        40.0, "container is not running", "error"))
            self.die(at, exit_code, True, self.reason_kind(exit_code, kind == "oom"))
            end = self._after_death(at, exit_code)
        elif kind in ("stop", "our-stop"):
            duration = [50 * MS, 2 * S, 10 * S][step.variant % 3]
            exit_code = 143 if duration < S else 137  # the app traps TERM, or the KILL after the timeout
            ours = kind == "our-stop"
            if ours:
                self.action("podman stop", at)
            died = at + duration
            if step.stop_event:
                self.event("stop", died - 40 * MS)  # stamped at the end of the stop, just before the died
            knowable = ours or step.stop_event or self.restarts(exit_code)
            if knowable:
                self.die(died, exit_code, False, "podwarden" if ours else "user-stop")
            else:
                self.die(died, exit_code, True, self.reason_kind(exit_code, False))
            end = self._after_death(died, None)
        elif kind in ("kill", "our-kill"):
            ours = kind == "our-kill"
            if ours:
                self.action("podman kill", at - 5 * MS)
            self.event("kill", at)
            self.die(at + 40 * MS, 137, False, "podwarden" if ours else "user-kill")
            end = self._after_death(at + 40 * MS, None)
        elif kind == "restart":
            self.event("restart", at)
            if self.up:
                if step.stop_event:
                    self.event("stop", at + 8 * MS)
                self.die(at + 30 * MS, 137, False, "user-restart")
                self.event("init", at + 230 * MS)
                self.start_run(at + 245 * MS, manual=True)
                self.snapshot(at + 30 * MS + 2 * S, 400 * MS)
                end = at + 30 * MS + 2 * S
            else:
                self.event("init", at + 110 * MS)
                self.start_run(at + 115 * MS, manual=True)
                end = at + 200 * MS
        elif kind == "hup":
            self.event("kill", at)  # podman kill -s HUP: the container lives on
            end = at
        elif kind == "check":
            end = self._check(step, at)
        elif kind == "start":
            self.event("init", at)
            self.start_run(at + 5 * MS, manual=True)
            end = at + 20 * MS
        elif kind == "log":
            self.log(at, "peer disconnected: timeout" if step.error_line else "block 812345 processed",
                     step.error_line)
            end = at
        else:
            end = at
        if step.snapshot is not None:
            offset, delay = step.snapshot
            self.snapshot(at + offset, delay)
        return end

    def _after_death(self, died: int, exit_code: int | None) -> int:
        """The restart policy (for a death nobody asked for), then the watcher's reconcile 2 s later."""
        if exit_code is not None and self.restarts(exit_code):
            self.event("restart", died + 1_500_000)
            self.event("init", died + 60 * MS)
            self.start_run(died + 65 * MS, manual=False)
        else:
            self.event("cleanup", died + 130 * MS)
        self.snapshot(died + 2 * S, 100 * MS + self.rnd.randint(0, 800) * MS)
        return died + 2 * S

    def _check(self, step: Step, at: int) -> int:
        """One health check: podman's updateHealthCheckLog (libpod/healthcheck.go, 4.3)."""
        if not self.setup.check:
            return at
        began, period = at, self.setup.start_period_ns
        if period and abs(began - (self.started_at + period)) < 20 * MS:
            # StartedAt and the start event differ by ~5 ms: keep clear of the period's edge
            began = self.started_at + period + 20 * MS
        passed = step.variant % 2 == 0
        self.event("exec", began + MS)
        self.event("health_status", began + 5 * MS, health_status=self.health)  # lags one check (4.3)
        if passed:
            self.streak, self.health = 0, "healthy"
        elif not (period and began - self.started_at < period):
            self.streak += 1
            if self.streak >= self.setup.retries:
                self.health = "unhealthy"
        self._shown_from(began + 20 * MS)
        self.event("exec_died", began + 20 * MS, exit_code=0 if passed else 1)
        if self.setup.our_checks:
            self.probe(ProbeObs(TARGET, NAME, began + 30 * MS, "healthcheck", "podman-healthcheck", passed, 30.0,
                                "" if passed else "unhealthy", "healthy" if passed else "unhealthy"))
        return began + 30 * MS

    # ------------------------------------------------------------ the verdict

    def observations(self) -> list[Observation]:
        """Everything podwarden saw, in the order it arrived."""
        return [obs for *_, obs in sorted(self.delivered, key=lambda item: item[:3])]

    def expected(self, stamps: list[int]) -> tuple[State, int, bool]:
        """The state, the count of deaths nobody asked for, and whether it is crash-looping.

        The crash-loop rule is podwarden's own (3 deaths within 5 min, over after 10 min up),
        applied to the truth in time order; time passes only with observations.
        """
        window, need, stable = MACHINE.crashloop_window_ns, MACHINE.crashloop_deaths, MACHINE.stable_period_ns
        timeline: list[tuple[int, int, object]] = [(ns, 0, None) for ns in stamps]
        timeline += [(ns, 1, None) for ns in self.starts]
        timeline += [(death.at_ns, 1, death) for death in self.deaths]
        timeline.sort(key=lambda item: (item[0], item[1], item[2] is not None))
        looping, up, last_start, history = False, False, 0, []
        for ns, order, death in timeline:
            if order == 0:
                if looping and up and ns - last_start >= stable:
                    looping, history = False, [t for t in history if t > ns]
            elif death is None:
                up, last_start = True, ns
            else:
                up = False
                if death.counted:
                    history.append(ns)
                    if sum(1 for t in history if ns - window <= t <= ns) >= need:
                        looping = True
                elif death.kind not in ("user-restart",):
                    looping = False  # a user stopped it
        if looping:
            state = State.CRASHLOOPING
        elif self.up:
            state = HEALTH_STATES.get(self.health or "", State.RUNNING)
        elif self.deaths[-1].kind in USER_KINDS:
            state = State.STOPPED
        else:
            state = State.EXITED
        return state, sum(1 for death in self.deaths if death.counted), looping


def render(setup: Setup, script: list[Step], seed: int) -> Podman:
    podman = Podman(setup, random.Random(seed))
    at = podman.boot()
    for step in script:
        at = podman.happen(step, at + step.gap_ns)
    if setup.final_snapshot or not setup.our_checks:
        # health from lagging events alone is one check behind: the next reconcile settles it
        at += 30 * S
        podman.snapshot(at, 300 * MS)
    return podman


def describe(observations: list[Observation]) -> str:
    lines = []
    for obs in observations:
        at = (obs.at_ns - T0) / S
        if isinstance(obs, EventObs):
            extra = f" exit={obs.exit_code}" if obs.status in ("died", "exec_died") else ""
            extra += f" {obs.health_status}" if obs.health_status else ""
            lines.append(f"{at:12.3f} event {obs.status}{extra}")
        elif isinstance(obs, SnapshotObs):
            lines.append(f"{at:12.3f} snapshot {obs.status} health={obs.health} streak={obs.health_failing_streak} "
                         f"rc={obs.restart_count} started={(obs.started_at_ns - T0) / S:.3f} "
                         f"finished={(obs.finished_at_ns - T0) / S if obs.finished_at_ns else 0:.3f}")
        elif isinstance(obs, ProbeObs):
            lines.append(f"{at:12.3f} probe {obs.probe_type} {obs.detail}")
        elif isinstance(obs, ActionObs):
            lines.append(f"{at:12.3f} action {obs.action}")
        else:
            lines.append(f"{at:12.3f} log {obs.line}")
    return "\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(setups, scripts, st.integers(0, 2**32 - 1))
def test_machine_ends_where_podman_is(setup: Setup, script: list[Step], seed: int) -> None:
    podman = render(setup, script, seed)
    observations = podman.observations()
    fleet = Fleet(MACHINE)
    changes = []
    for obs in observations:
        changes.extend(fleet.feed(obs))
    machine = fleet.get(TARGET, NAME)
    assert machine is not None
    note(describe(observations))
    note("\n".join(f"{(c.at_ns - T0) / S:12.3f} {c.from_state} -> {c.to_state}: {c.cause}" for c in changes))
    state, crashes, looping = podman.expected([obs.at_ns for obs in observations])
    assert machine.state is state
    assert machine.crashes == crashes
    assert (machine.state is State.CRASHLOOPING) == looping
    if podman.deaths:
        last = podman.deaths[-1]
        assert machine.last_death is not None and machine.last_death.kind == last.kind
        if last.first_error and last.kind in ("exit", "signal"):
            assert f"first error: {last.first_error}" in machine.last_death.evidence
    # no event is lost here, so the only finding is the stop podman really did not write
    for change in changes:
        assert not change.contradiction or "podman wrote no stop event" in change.cause, change
    # every death's change says why
    for change in changes:
        if change.to_state in (State.EXITED, State.STOPPED) and change.from_state not in (State.EXITED, State.STOPPED):
            assert "died: " in change.cause, change

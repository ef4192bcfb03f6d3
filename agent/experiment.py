"""`podwarden experiment`: the seed's cycle C3, automated, with timed verdicts.

- `restart NAME... | --all [--how crash|stop|kill]`: make a container die, prove it comes
  back in its expected state within its deadline, its probes pass afterwards, and it
  logs no error line that was not there before. `crash` SIGKILLs the main process from
  the host (`podman unshare kill -9` rootless), so the restart policy applies; `stop` and
  `kill` go through podman, which sets StoppedByUser and so suppresses the restart
  policy (measured on podman 4.3, root and rootless): the verdict says so, and names what
  brought the container back, if anything did.
- `cascade UPSTREAM`: stop the upstream, hold while every container depending on it
  (directly or not) must not end dead for good, start it again, and prove everything is
  back, probes pass and each dependent reconnected (its `reconnect` log pattern; without
  one, no new error line after recovery).
- `service NAME`: the service's kill command (the seed's `systemctl kill -s SIGKILL`),
  then it must be active again within its deadline, its probes pass (the health URL's
  JSON), and no container change state meanwhile.

Every experiment runs inside a watch of its target (`Lab`): the same event stream,
logs, snapshots and machines as `podwarden watch`, recorded in the same store, so each
wait ends the moment the machines reach the expected state (or at its deadline), every
time in a verdict is podman's own, and a stored experiment run replays like any other.
Before acting it checks the steady state and refuses to start without it. Whatever it
stopped or killed is started again if it ends early (Ctrl-C, SIGTERM, a lost link), and
the run is stored as interrupted. It acts only on configured containers and services,
through the target's own podman; `--dry-run` prints the steps and changes nothing.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

import anyio

from agent import podman
from agent.check import plan_probes
from agent.config import Config, ServiceConfig, TargetConfig, format_duration
from agent.errors import TargetUnreachable, TransportError, UsageError
from agent.probes import execute_probe, probe_name
from agent.recent_logs import read_logs
from agent.recording import Recording, recording
from agent.transport import RunResult, Transport, make_transport
from agent.watcher import TargetWatcher
from agent.watch import watchers_for
from machines.container import ContainerMachine, StateChange
from machines.deaths import DeathReason
from machines.drift import error_key
from machines.observations import ActionObs, LogObs, Observation
from machines.states import State
from store.errors import StoreError

HOWS = ("crash", "stop", "kill")
_S = 1_000_000_000
T = TypeVar("T")
# The states that meet an expectation (an expected `healthy` needs healthy; `running` any up state).
EXPECTED_STATES = {"healthy": frozenset({State.HEALTHY}),
                   "running": frozenset({State.RUNNING, State.HEALTHY, State.STARTING})}
RESTARTING_POLICIES = frozenset({"always", "unless-stopped"})


def _quiet(_: str) -> None:
    pass


class ExperimentInterrupted(Exception):
    """Ctrl-C or SIGTERM asked the experiment to stop (internal: it rolls back, then ends)."""


def clock(ns: int | None) -> str:
    """A node time as an operator reads it in a verdict: 02:14:07.120 (UTC)."""
    if not ns:
        return "?"
    text = podman.format_time_ns(ns)
    return text[11:23]


# ---------------------------------------------------------------- results


@dataclass
class Step:
    """One step of an experiment: what it did or waited for, when, and whether it went right."""

    name: str
    container: str
    started_ns: int
    ended_ns: int | None = None
    ok: bool | None = None
    detail: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "container": self.container, "started": self.started_ns,
                "ended": self.ended_ns, "ok": self.ok, "detail": self.detail, **self.timings}


@dataclass
class ExperimentResult:
    """One experiment: its kind, subject, steps and verdict."""

    kind: str
    subject: str
    started_ns: int
    steps: list[Step] = field(default_factory=list)
    ended_ns: int | None = None
    verdict: str = "fail"
    summary: str = ""
    experiment_id: int | None = None
    dry_run: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "verdict": self.verdict, "summary": self.summary,
                "started": self.started_ns, "ended": self.ended_ns, "dry_run": self.dry_run,
                "steps": [step.to_json() for step in self.steps]}


@dataclass
class ExperimentOutcome:
    """What `podwarden experiment` did: one or more experiments in one recorded run."""

    run_id: int | None
    target: str
    experiments: list[ExperimentResult]

    @property
    def verdict(self) -> str:
        return "pass" if self.experiments and all(e.passed for e in self.experiments) else "fail"

    def to_json(self) -> dict[str, Any]:
        steps = [step.to_json() for e in self.experiments for step in e.steps]
        return {"verdict": self.verdict, "run_id": self.run_id, "target": self.target,
                "experiments": [e.to_json() for e in self.experiments], "steps": steps}


# ---------------------------------------------------------------- the lab: a watch to act within


class Lab:
    """One target watched for the length of an experiment (a TargetWatcher recording into the
    run), a link of its own for the actions, and waits that end when the machines say so."""

    def __init__(self, rec: Recording, target: TargetConfig, watcher: TargetWatcher, transport: Transport,
                 stop: asyncio.Event, progress: Callable[[str], None], dry_run: bool) -> None:
        self.rec = rec
        self.config = rec.config
        self.target = target
        self.name = watcher.name
        self.watcher = watcher
        self.transport = transport
        self.stop = stop
        self.progress = progress
        self.dry_run = dry_run
        self.podman = list(target.podman) or ["podman"]
        self._wake = asyncio.Event()
        rec.sink.on_observation.append(self._observed)
        self.stopped: dict[str, str] = {}  # containers we stopped and must start again -> how
        self.killed_services: set[str] = set()
        self.logs: list[LogObs] = []  # every log line seen, bounded per experiment
        self.actions: list[ActionObs] = []  # every action recorded (ours, and a hook's)
        self.observed_from_ns = 0
        self.transport_opened = transport  # the link `lab()` opened (and closes)

    def _observed(self, obs: Observation) -> None:
        if isinstance(obs, LogObs) and obs.at_ns >= self.observed_from_ns and len(self.logs) < 100_000:
            self.logs.append(obs)
        elif isinstance(obs, ActionObs) and len(self.actions) < 10_000:
            self.actions.append(obs)
        self._wake.set()

    def now_ns(self) -> int:
        return self.watcher.now_ns()

    def machine(self, container: str) -> ContainerMachine:
        return self.rec.fleet.expect(self.name, container)

    def changes_of(self, container: str, since_ns: int) -> list[StateChange]:
        return [c for c in self.rec.sink.changes if c.container == container and c.at_ns >= since_ns]

    # -- acting -------------------------------------------------------------------------

    def record(self, container: str, action: str, detail: str, ok: bool = True) -> None:
        """An action observation: what podwarden does (or, dry-run, would do), when."""
        try:
            self.rec.sink.put(ActionObs(self.name, container, self.now_ns(), action, detail, self.dry_run, ok))
        except StoreError as exc:  # the action itself must still happen (a roll-back above all)
            self.progress(f"could not record {action}: {exc}")

    async def act(self, container: str, action: str, argv: list[str], why: str) -> RunResult | None:
        """Record then run one command on the node; None with --dry-run (nothing runs)."""
        self.record(container, action, f"{why}: {shlex.join(argv)}")
        if self.dry_run:
            self.progress(f"(dry run) would run: {shlex.join(argv)}")
            return None
        try:
            result = await self.transport.run(argv, timeout=60)
        except TransportError as exc:
            self.record(container, f"{action} failed", exc.reason, ok=False)
            raise
        if not result.ok:
            self.record(container, f"{action} failed",
                        f"exit {result.exit_status}: {(result.stderr or result.stdout).strip()[-300:]}", ok=False)
        return result

    async def start_container(self, container: str, why: str) -> bool:
        result = await self.act(container, "podman start", podman.start_cmd(self.podman, container), why)
        self.stopped.pop(container, None)
        return result is None or result.ok

    async def inspect(self, container: str) -> podman.InspectFacts | None:
        result = await self.transport.run(podman.inspect_cmd(self.podman, [container]), timeout=30)
        facts = podman.parse_inspect(result.stdout, self.name, self.now_ns())
        if isinstance(facts, podman.ParseError) or not facts:
            return None
        return facts[0]

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(self, what: str, predicate: Callable[[], T | None], deadline_s: float,
                       *, poll: Callable[[], Any] | None = None, poll_every_s: float = 1.0) -> T | None:
        """The predicate's first true value, evaluated now and after every observation; None at
        the deadline. `poll` (e.g. an on-demand health check) runs every `poll_every_s`.
        A progress line says what it waits for and how long so far. Raises ExperimentInterrupted."""
        started = time.monotonic()
        deadline = started + deadline_s
        shown = polled = 0.0
        while True:
            if self.stop.is_set():
                raise ExperimentInterrupted(what)
            value = predicate()
            if value:
                return value
            now = time.monotonic()
            if now >= deadline:
                return None
            if now - shown >= 1.0:
                self.progress(f"waiting for {what} ({format_duration(now - started)} / {format_duration(deadline_s)})")
                shown = now
            if poll is not None and now - polled >= poll_every_s:
                polled = now
                await poll()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(0.25, max(0.0, deadline - now)))
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def hold(self, seconds: float, what: str) -> None:
        """Keep the experiment's condition for `seconds` (the cascade's hold), watching meanwhile."""
        await self.wait_for(what, lambda: None, seconds)

    def death_after(self, container: str, since_ns: int) -> tuple[int, DeathReason | None] | None:
        """The machine's newest death of `container` at or after since_ns: (podman's time, reason)."""
        machine = self.machine(container)
        death_ns = machine.last_death_ns
        if death_ns is not None and death_ns >= since_ns:
            return death_ns, machine.last_death
        return None

    def back_since(self, container: str, since_ns: int, expected: str) -> StateChange | None:
        """The change that brought `container` into its expected state after since_ns, if it is there now."""
        states = EXPECTED_STATES.get(expected, EXPECTED_STATES["running"])
        if self.machine(container).state not in states:
            return None
        for change in reversed(self.changes_of(container, since_ns)):
            if change.to_state in states:
                return change
        return None

    async def health_nudge(self, container: str) -> None:
        """Run the health check now when the container is up but not yet healthy."""
        machine = self.machine(container)
        if machine.state in (State.STARTING, State.RUNNING, State.UNHEALTHY) and not self.dry_run:
            await self.watcher.check_health_now(container)

    # -- checks -------------------------------------------------------------------------

    async def probes_of(self, owner: str, *, skip_logs: bool = False) -> list[tuple[str, bool, str]]:
        """Run every probe of a container or service now (as check would); (name, ok, detail) each.
        `skip_logs`: leave out `logs` probes (after an outage the experiment caused, the errors it
        made are expected: the experiment judges log lines itself)."""
        facts = self.watcher.facts
        plan = [p for p in plan_probes(self.config, facts, True) if p.owner == owner and not p.skip_reason
                and not (skip_logs and p.probe.type == "logs")]
        results = await asyncio.gather(*(execute_probe(
            self.transport, self.podman, p.owner, p.probe, error_patterns=p.error_patterns,
            ignore_patterns=p.ignore_patterns, now_ns=self.now_ns()) for p in plan))
        out = []
        for planned, result in zip(plan, results):
            self.rec.sink.put(result.obs)
            out.append((probe_name(planned.probe), result.obs.ok, result.obs.detail or result.obs.excerpt[:120]))
        return out

    async def error_baseline(self, container: str) -> set[str]:
        """The error lines (by shape: digits ignored) already in the container's last 100 lines."""
        own = self.config.containers.get(container)
        patterns = [re.compile(p) for p in self.config.error_patterns(container)]
        ignores = [re.compile(p) for p in (own.log_ignore if own else [])]
        try:
            read = await read_logs(self.transport, self.podman, container, tail=100, timeout=30)
        except TransportError:
            return set()
        return {error_key(line) for line in read.lines
                if any(p.search(line) for p in patterns) and not any(p.search(line) for p in ignores)}

    def new_errors(self, container: str, since_ns: int, baseline: set[str]) -> list[LogObs]:
        return [obs for obs in self.logs if obs.container == container and obs.is_error and obs.at_ns >= since_ns
                and error_key(obs.line) not in baseline]

    def steady(self, containers: Iterable[str]) -> list[str]:
        """Why the steady state does not hold for `containers` (none: it holds)."""
        problems = []
        for name in containers:
            own = self.config.containers.get(name)
            expected = own.expected_state if own else "running"
            if expected not in EXPECTED_STATES:
                continue
            state = self.machine(name).state
            if state not in EXPECTED_STATES[expected]:
                problems.append(f"{name} is {state}, expected {expected}")
        return problems


@asynccontextmanager
async def lab(rec: Recording, target: TargetConfig, stop: asyncio.Event, progress: Callable[[str], None],
              dry_run: bool) -> AsyncIterator[Lab]:
    """A watch of `target` recording into `rec`, ready (connected, first snapshot in), and a
    link for actions. On any exit, whatever the experiment stopped is started again."""
    [watcher] = await watchers_for(rec, [target])
    watch_stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(watch_stop), name=f"watch {watcher.name}")
    try:
        async with make_transport(target) as transport:
            ready = asyncio.ensure_future(watcher.ready.wait())
            done, _ = await asyncio.wait({ready, task}, timeout=target.connect_timeout + 60,
                                         return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                raise TargetUnreachable(watcher.name, f"the watch did not come up: {watcher.view.detail or 'timeout'}")
            room = Lab(rec, target, watcher, transport, stop, progress, dry_run)
            try:
                yield room
            finally:
                with anyio.CancelScope(shield=True):
                    await _roll_back(room)
    finally:
        watch_stop.set()
        with anyio.CancelScope(shield=True):
            try:
                await asyncio.wait_for(task, 30)
            except (asyncio.TimeoutError, TimeoutError):
                task.cancel()


async def _roll_back(room: Lab) -> None:
    """Start again whatever the experiment stopped, crashed or killed and did not bring back.

    Runs on a link of its own when the experiment's dropped (a lost link is one way an
    experiment ends early), tries a few times, and never lets one failed step (or a
    store that cannot record it) keep the others from running.
    """
    if room.dry_run or not (room.stopped or room.killed_services):
        return
    transport = room.transport
    for attempt in range(3):
        if transport.connected:
            break
        try:
            transport = make_transport(room.target)
            await transport.connect()
        except TargetUnreachable as exc:
            room.progress(f"roll-back: {exc.reason}; trying again ({attempt + 1}/3)")
            await asyncio.sleep(5)
    if not transport.connected:
        room.progress(f"roll-back impossible, the target is unreachable: start {', '.join(room.stopped)} "
                      f"{', '.join(room.killed_services)} by hand")
        return
    room.transport = transport
    for container in list(room.stopped):
        try:
            facts = await room.inspect(container)
            if facts is not None and facts.running:
                room.stopped.pop(container, None)
                continue
            room.progress(f"rolling back: podman start {container}")
            await room.start_container(container, "roll back: the experiment ended before it was back")
        except Exception as exc:  # each step on its own: the next container still gets its start
            room.progress(f"could not start {container} again: {exc}")
    for name in list(room.killed_services):
        service = room.config.services.get(name)
        try:
            if service is not None and service.start_command and not (await _service_active(room, service))[0]:
                room.progress(f"rolling back: starting {name}")
                await room.act(name, "service start", list(service.start_command),
                               "roll back: the experiment ended with the service down")
        except Exception as exc:
            room.progress(f"could not start {name} again: {exc}")
        room.killed_services.discard(name)
    if transport is not room.watcher.transport and transport is not room.transport_opened:
        await transport.close()


# ---------------------------------------------------------------- restart


def dependency_order(config: Config, names: Iterable[str]) -> list[str]:
    """`names` with upstreams before their dependents (the node before lightning before its UI)."""
    wanted = list(dict.fromkeys(names))
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path:
            return
        own = config.containers.get(name)
        for upstream in (own.depends_on if own else []):
            visit(upstream, path + (name,))
        seen.add(name)
        if name in wanted:
            order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def dependents_of(config: Config, upstream: str) -> list[str]:
    """Every configured container that depends on `upstream`, directly or not, upstreams first."""
    found: set[str] = set()
    frontier = [upstream]
    while frontier:
        current = frontier.pop()
        for name, own in config.containers.items():
            if current in own.depends_on and name not in found and name != upstream:
                found.add(name)
                frontier.append(name)
    return dependency_order(config, sorted(found))


def _expected(config: Config, name: str) -> str:
    own = config.containers.get(name)
    return own.expected_state if own else "running"


def _deadline(config: Config, name: str) -> float:
    own = config.containers.get(name)
    return (own.restart_deadline if own and own.restart_deadline else None) or config.experiments.restart_deadline


async def restart_one(room: Lab, container: str, how: str, deadline_s: float | None = None) -> ExperimentResult:
    """Make one container die (`how`) and prove it recovers within `deadline_s` (default: its config)."""
    config = room.config
    result = ExperimentResult("restart", container, room.now_ns())
    expected = _expected(config, container)
    deadline = deadline_s or _deadline(config, container)
    steady = Step("steady state", container, room.now_ns())
    problems = room.steady([container])
    steady.ended_ns, steady.ok = room.now_ns(), not problems
    steady.detail = "; ".join(problems) or f"{container} is {room.machine(container).state}, as expected"
    result.steps.append(steady)
    if problems:
        result.summary = f"refused: the steady state does not hold: {steady.detail}"
        return _end(room, result)
    baseline = await room.error_baseline(container)

    act = Step(f"{how}", container, room.now_ns())
    result.steps.append(act)
    before_ns = room.now_ns()
    if how == "crash":
        # the pid of this very moment (a snapshot's may be stale: a restart since, a reused pid)
        facts = await room.inspect(container)
        pid = facts.pid if facts is not None and facts.running else 0
        if pid <= 1:
            act.ok, act.ended_ns = False, room.now_ns()
            act.detail = f"{container} has no main process to kill (pid {pid}, {facts.status if facts else 'gone'})"
            result.summary = act.detail
            return _end(room, result)
        argv = podman.kill_main_process_cmd(room.podman, pid, room.watcher.rootless)
        room.stopped[container] = how  # started again at the end if its policy does not bring it back
        killed = await room.act(container, "crash", argv, f"SIGKILL the main process (pid {pid}) from the host: a crash")
        if killed is not None and not killed.ok:
            act.ok, act.ended_ns = False, room.now_ns()
            act.detail = f"the kill failed: exit {killed.exit_status}: {(killed.stderr or killed.stdout).strip()[-200:]}"
            result.summary = act.detail
            room.stopped.pop(container, None)
            return _end(room, result)
    elif how == "stop":
        room.stopped[container] = how
        await room.act(container, "podman stop", podman.stop_cmd(room.podman, container), "podman stop")
    else:
        room.stopped[container] = how
        await room.act(container, "podman kill", podman.kill_cmd(room.podman, container), "podman kill")
    act.ended_ns = room.now_ns()
    if room.dry_run:
        act.ok, act.detail = True, "dry run: nothing was done"
        result.verdict, result.summary, result.dry_run = "pass", "dry run", True
        return _end(room, result)

    died = await room.wait_for(f"{container} to die", lambda: room.death_after(container, before_ns - _S),
                               config.experiments.death_deadline)
    if died is None:
        act.ok = False
        act.detail = f"no death of {container} seen within {format_duration(config.experiments.death_deadline)}"
        result.summary = act.detail
        return _end(room, result)
    died_ns, reason = died
    act.ok = True
    act.timings["died"] = died_ns
    act.detail = f"died {clock(died_ns)}" + (f": {reason.text}" if reason else "")

    back_step = Step(f"back {expected}", container, room.now_ns())
    result.steps.append(back_step)
    back = await room.wait_for(f"{container} back {expected}", lambda: room.back_since(container, died_ns, expected),
                               deadline, poll=lambda: room.health_nudge(container), poll_every_s=0.3)
    back_step.ended_ns = room.now_ns()
    if back is None:
        back_step.ok = False
        back_step.detail = await _why_not_back(room, container, how, died_ns, deadline)
        result.summary = back_step.detail
        if container in room.stopped:
            await room.start_container(container, "roll back: it was not back after the experiment")
            await room.wait_for(f"{container} back after the roll-back",
                                lambda: room.back_since(container, died_ns, expected), deadline,
                                poll=lambda: room.health_nudge(container))
        return _end(room, result)
    running = next((c.at_ns for c in room.changes_of(container, died_ns)
                    if c.to_state in (State.RUNNING, State.STARTING, State.HEALTHY)), back.at_ns)
    back_step.ok = True
    back_step.timings.update(died=died_ns, running=running, back=back.at_ns,
                             recovered_s=round((running - died_ns) / _S, 3))
    back_step.detail = (f"died {clock(died_ns)}, running {clock(running)}"
                        + (f", {expected} {clock(back.at_ns)}" if back.at_ns != running else "")
                        + f": recovered in {(running - died_ns) / _S:.2f} s")
    if how != "crash":
        starter = _who_started(room, container, died_ns)
        back_step.detail += f" ({starter})"
    room.stopped.pop(container, None)

    probes_step = Step("probes", container, room.now_ns())
    result.steps.append(probes_step)
    probes = await room.probes_of(container)
    probes_step.ended_ns = room.now_ns()
    failed = [f"{name}: {detail}" for name, ok, detail in probes if not ok]
    probes_step.ok = not failed
    probes_step.detail = "; ".join(failed) or (f"{len(probes)} probe(s) pass" if probes else "no probes configured")

    errors_step = Step("no new error lines", container, room.now_ns())
    result.steps.append(errors_step)
    fresh = room.new_errors(container, back.at_ns, baseline)
    errors_step.ended_ns, errors_step.ok = room.now_ns(), not fresh
    errors_step.detail = (f"{len(fresh)} new error line(s) after recovery, first {clock(fresh[0].at_ns)}: "
                          f"{fresh[0].line[:200]}") if fresh else "none since it was back"
    ok = all(step.ok for step in result.steps)
    result.verdict = "pass" if ok else "fail"
    result.summary = back_step.detail if ok else next(s.detail for s in result.steps if not s.ok)
    return _end(room, result)


def _who_started(room: Lab, container: str, died_ns: int) -> str:
    """What brought back a container stopped through podman (whose restart policy it suppresses)."""
    ours = [a for a in room.actions if a.container == container and a.at_ns >= died_ns
            and a.action.endswith("start") and not a.dry_run]
    if ours:
        return f"started by podwarden: {ours[0].action} ({ours[0].detail[:80]})"
    return ("started by something outside podwarden and the restart policy, which podman stop/kill suppress "
            "(a user, podman-restart, a supervisor)")


async def _why_not_back(room: Lab, container: str, how: str, died_ns: int, deadline: float) -> str:
    """The verdict for a container that did not come back: in podman's terms."""
    facts = await room.inspect(container)
    state = room.machine(container).state
    policy = facts.restart_policy if facts is not None else "?"
    text = f"not back within {format_duration(deadline)} (now {state})"
    if how in ("stop", "kill"):
        text += (f": podman {how} sets StoppedByUser, so the restart policy ({policy or 'no'}) does not "
                 "restart it, and nothing else started it (the seed's known limitation: a container stopped "
                 "through podman stays down until something starts it, e.g. a remediation hook)")
    elif facts is not None and policy not in RESTARTING_POLICIES:
        text += f": its restart policy is {policy or 'no'}, which does not restart this death"
    if facts is not None and facts.restart_policy == "on-failure" and facts.restart_max_retries:
        text += f" (on-failure:{facts.restart_max_retries}, {facts.restart_count} restarts so far)"
    return text


def _end(room: Lab, result: ExperimentResult) -> ExperimentResult:
    result.ended_ns = room.now_ns()
    store = room.rec.store
    if store is not None:
        result.experiment_id = store.add_experiment(
            room.rec.run_id, kind=result.kind, subject=result.subject, started_ns=result.started_ns,
            steps=[s.to_json() for s in result.steps], verdict=result.verdict, ended_ns=result.ended_ns)
    room.progress(f"{result.kind} {result.subject}: {result.verdict.upper()}: {result.summary}")
    return result


# ---------------------------------------------------------------- cascade


async def cascade(room: Lab, upstream: str, hold_s: float, recovery_s: float) -> ExperimentResult:
    """Stop `upstream`, hold, start it; its dependents must survive, recover and reconnect."""
    config = room.config
    result = ExperimentResult("cascade", upstream, room.now_ns())
    dependents = dependents_of(config, upstream)
    involved = [upstream, *dependents]
    steady = Step("steady state", upstream, room.now_ns())
    result.steps.append(steady)
    problems = room.steady(involved)
    steady.ended_ns, steady.ok = room.now_ns(), not problems
    steady.detail = "; ".join(problems) or f"{', '.join(involved)} as expected"
    if problems:
        result.summary = f"refused: the steady state does not hold: {steady.detail}"
        return _end(room, result)
    if not dependents:
        steady.detail += f"; nothing depends on {upstream} (depends_on in config)"
    baselines = {name: await room.error_baseline(name) for name in dependents}

    stop_step = Step("stop upstream", upstream, room.now_ns())
    result.steps.append(stop_step)
    before = room.now_ns()
    room.stopped[upstream] = "stop"
    await room.act(upstream, "podman stop", podman.stop_cmd(room.podman, upstream), "cascade: the upstream goes")
    if room.dry_run:
        stop_step.ok, stop_step.ended_ns, stop_step.detail = True, room.now_ns(), "dry run: nothing was done"
        room.record(upstream, "hold", f"would hold {format_duration(hold_s)}, then podman start {upstream}")
        result.verdict, result.summary, result.dry_run = "pass", "dry run", True
        return _end(room, result)
    died = await room.wait_for(f"{upstream} to stop", lambda: room.death_after(upstream, before - _S),
                               config.experiments.death_deadline)
    stop_step.ended_ns = room.now_ns()
    stop_step.ok = died is not None
    down_ns = died[0] if died else room.now_ns()
    stop_step.timings["stopped"] = down_ns
    stop_step.detail = f"stopped {clock(down_ns)}" if died else "no stop seen"

    hold_step = Step(f"hold {format_duration(hold_s)}", upstream, room.now_ns())
    result.steps.append(hold_step)
    await room.hold(hold_s, f"{upstream} down, watching {', '.join(dependents) or 'nothing'}")
    hold_step.ended_ns = room.now_ns()
    dead: dict[str, str] = {}
    doings: dict[str, str] = {}
    for name in dependents:
        changes = room.changes_of(name, down_ns)
        facts = await room.inspect(name)
        verdict = _dead_for_good(facts, room.machine(name))
        what = "; ".join(f"{c.to_state} {clock(c.at_ns)}" for c in changes[:6]) or "stayed " + str(room.machine(name).state)
        if len(changes) > 6:
            what += f"; ... {len(changes) - 6} more changes"
        doings[name] = what
        if verdict:
            dead[name] = f"{what}; dead for good: {verdict}"
    hold_step.ok = not dead
    hold_step.detail = ("; ".join(f"{n}: {d}" for n, d in dead.items()) if dead else
                        "; ".join(f"{n}: {d}" for n, d in doings.items()) or "no dependents")

    start_step = Step("start upstream", upstream, room.now_ns())
    result.steps.append(start_step)
    back_from = room.now_ns()
    await room.start_container(upstream, "cascade: the upstream comes back")
    back = await room.wait_for(f"{upstream} back", lambda: room.back_since(upstream, back_from, _expected(config, upstream)),
                               recovery_s, poll=lambda: room.health_nudge(upstream))
    start_step.ended_ns = room.now_ns()
    start_step.ok = back is not None
    # dependents reconnect as soon as the upstream runs, before it reports healthy
    up_again = next((c.at_ns for c in room.changes_of(upstream, back_from)
                     if c.to_state in (State.STARTING, State.RUNNING, State.HEALTHY)), None)
    upstream_back_ns = up_again or (back.at_ns if back else room.now_ns())
    start_step.detail = (f"{_expected(config, upstream)} {clock(back.at_ns)}" if back else
                         f"{upstream} not back within {format_duration(recovery_s)}")

    recover = Step("dependents recover", upstream, room.now_ns())
    result.steps.append(recover)
    waiting_from = time.monotonic()
    reports: dict[str, str] = {}
    failures: list[str] = []
    for name in dependents:
        if name in dead:
            failures.append(f"{name}: dead for good")
            continue
        left = max(1.0, recovery_s - (time.monotonic() - waiting_from))
        expected = _expected(config, name)
        pattern = config.containers[name].reconnect if name in config.containers else None

        def reconnected(name: str = name, pattern: str | None = pattern) -> LogObs | None:
            if pattern is None:
                return None
            regex = re.compile(pattern)
            return next((o for o in room.logs if o.container == name and o.at_ns >= upstream_back_ns
                         and regex.search(o.line)), None)

        ready = await room.wait_for(
            f"{name} back {expected}" + (" and reconnected" if pattern else ""),
            lambda name=name, expected=expected, reconnected=reconnected: (
                (room.back_since(name, down_ns, expected) or room.back_since(name, 0, expected))
                and (reconnected() if pattern else True)),
            left, poll=lambda name=name: room.health_nudge(name))
        if not ready:
            state = room.machine(name).state
            seen = reconnected()
            failures.append(f"{name}: not back within {format_duration(recovery_s)} (now {state}"
                            + ("" if not pattern or seen else f", no '{pattern}' in its log since {clock(upstream_back_ns)}")
                            + ")")
            continue
        line = reconnected()
        reports[name] = doings.get(name, "") + (f"; reconnected {clock(line.at_ns)} ({line.line[:120]})" if line
                                                 else "; back")
    recover.ended_ns = room.now_ns()
    recovered_ns = room.now_ns()
    if config.experiments.settle and not failures:
        await room.hold(config.experiments.settle, "the dependents to settle")
    for name in dependents:
        if name in dead or any(f.startswith(f"{name}:") for f in failures):
            continue
        has_pattern = bool(config.containers.get(name) and config.containers[name].reconnect)
        fresh = room.new_errors(name, recovered_ns if has_pattern else upstream_back_ns, baselines[name])
        if fresh and not has_pattern:
            failures.append(f"{name}: {len(fresh)} new error line(s) after recovery: {fresh[0].line[:160]}")
    probe_failures = []
    for name in [upstream, *dependents]:
        if name in dead:
            continue
        for probe, ok, detail in await room.probes_of(name, skip_logs=True):
            if not ok:
                probe_failures.append(f"{name}/{probe}: {detail}")
    recover.ok = not failures and not probe_failures
    recover.detail = "; ".join(failures + probe_failures) or "; ".join(f"{n}: {r}" for n, r in reports.items())
    ok = all(step.ok for step in result.steps)
    result.verdict = "pass" if ok else "fail"
    result.summary = (f"{len(dependents)} dependent(s) survived {upstream}'s loss and recovered" if ok
                      else next(s.detail for s in result.steps if not s.ok))
    return _end(room, result)


def _dead_for_good(facts: podman.InspectFacts | None, machine: ContainerMachine) -> str:
    """Why a container will not come back by itself ('' when it is up or a restart is coming)."""
    if facts is None:
        return "it no longer exists"
    if facts.running:
        return ""
    policy = facts.restart_policy or "no"
    death = machine.last_death.text if machine.last_death else f"exit {facts.exit_code}"
    if facts.stopped_by_user or machine.state is State.STOPPED:
        return f"stopped ({death}); podman does not restart a stopped container"
    if policy in RESTARTING_POLICIES:
        return ""  # podman restarts it at once
    if policy == "on-failure":
        if facts.exit_code == 0:
            return f"{death}; no restart coming (policy on-failure restarts only non-zero exits)"
        if facts.restart_max_retries and facts.restart_count >= facts.restart_max_retries:
            return f"{death}; podman gave up after {facts.restart_count} restarts (on-failure:{facts.restart_max_retries})"
        return ""
    return f"{death}; no restart coming (policy {policy})"


# ---------------------------------------------------------------- service


async def _service_identity(room: Lab, service: ServiceConfig) -> str:
    """What tells one run of the service from the next: its status output (the testbed's names
    the pid), and for a systemd unit checked the default way, MainPID and NRestarts (systemd
    restarts a unit in ~100 ms: a poll may never see it down)."""
    _, output = await _service_active(room, service)
    if service.status_command:
        return output
    try:
        shown = await room.transport.run(["systemctl", "show", "-p", "MainPID", "-p", "NRestarts", "--value",
                                          service.name], timeout=15)
    except TransportError:
        return output
    return output + " " + shown.stdout.strip().replace("\n", " ")


async def _service_active(room: Lab, service: ServiceConfig) -> tuple[bool, str]:
    command = service.status_command or ["systemctl", "is-active", service.name]
    try:
        result = await room.transport.run(list(command), timeout=15)
    except TransportError as exc:
        if not room.transport.connected:
            raise
        return False, exc.reason
    return result.ok, (result.stdout + result.stderr).strip()[-200:]


async def service(room: Lab, name: str, deadline_s: float | None = None) -> ExperimentResult:
    """Kill a host service hard; it must be back within its deadline and no container may notice."""
    config = room.config
    own = config.services[name]
    deadline = deadline_s or own.restart_deadline
    result = ExperimentResult("service", name, room.now_ns())
    steady = Step("steady state", name, room.now_ns())
    result.steps.append(steady)
    active, output = await _service_active(room, own)
    problems = ([] if active else [f"{name} is not active: {output}"]) + room.steady(
        [c for c, own_c in config.containers.items() if own_c.expected_state in EXPECTED_STATES])
    steady.ended_ns, steady.ok = room.now_ns(), not problems
    steady.detail = "; ".join(problems) or f"{name} active ({output[:80]}); containers as expected"
    if problems:
        result.summary = f"refused: the steady state does not hold: {steady.detail}"
        return _end(room, result)
    if not own.kill_command:
        steady.ok = False
        steady.detail = f"services.{name} has no kill_command: set the command that kills it (e.g. systemctl kill -s SIGKILL {name})"
        result.summary = steady.detail
        return _end(room, result)

    kill = Step("kill", name, room.now_ns())
    result.steps.append(kill)
    identity = await _service_identity(room, own)
    killed_ns = room.now_ns()
    room.killed_services.add(name)
    killed = await room.act("", "service kill", list(own.kill_command), f"kill {name} hard")
    kill.ended_ns = room.now_ns()
    kill.ok = killed is None or killed.ok
    kill.detail = (f"killed {clock(killed_ns)}" if kill.ok else
                   f"the kill command failed: exit {killed.exit_status}: "  # type: ignore[union-attr]
                   f"{(killed.stderr or killed.stdout).strip()[-200:]}")  # type: ignore[union-attr]
    if not kill.ok:
        result.summary = kill.detail
        room.killed_services.discard(name)
        return _end(room, result)
    if room.dry_run:
        result.verdict, result.summary, result.dry_run = "pass", "dry run", True
        room.killed_services.discard(name)
        return _end(room, result)

    back = Step("active again", name, room.now_ns())
    result.steps.append(back)
    seen_down: list[bool] = [False]
    state: dict[str, Any] = {}

    async def poll() -> None:
        ok, out = await _service_active(room, own)
        if not ok:
            seen_down[0] = True
            return
        # active: a new run of it (seen down, or another pid / restart count than before the kill)
        if seen_down[0] or await _service_identity(room, own) != identity:
            state["back"] = room.now_ns()
            state["output"] = out

    again = await room.wait_for(f"{name} active again", lambda: state.get("back"), deadline, poll=poll,
                                poll_every_s=0.25)
    back.ended_ns = room.now_ns()
    if again is None:
        back.ok = False
        _, now_output = await _service_active(room, own)
        back.detail = (f"not active again within {format_duration(deadline)}: nothing restarted it "
                       f"(status: {now_output[:160] or 'no output'})")
        result.summary = back.detail
    else:
        back.ok = True
        back.timings["back"] = again
        back.detail = f"active again {clock(again)}: back in {(again - killed_ns) / _S:.2f} s ({state['output'][:100]})"
        room.killed_services.discard(name)

    probes_step = Step("probes", name, room.now_ns())
    result.steps.append(probes_step)
    probes = await room.probes_of(name) if again is not None else []
    probes_step.ended_ns = room.now_ns()
    failed = [f"{p}: {d}" for p, ok, d in probes if not ok]
    probes_step.ok = again is not None and not failed
    probes_step.detail = "; ".join(failed) or (f"{len(probes)} probe(s) pass" if again is not None else "not run")

    calm = Step("no container noticed", name, room.now_ns())
    result.steps.append(calm)
    moved = [c for c in room.rec.sink.changes if c.at_ns >= killed_ns and c.container in config.containers]
    calm.ended_ns, calm.ok = room.now_ns(), not moved
    calm.detail = ("; ".join(f"{c.container} {c.from_state} -> {c.to_state} {clock(c.at_ns)} ({c.cause[:80]})"
                             for c in moved[:5]) or "no container changed state")
    ok = all(step.ok for step in result.steps)
    result.verdict = "pass" if ok else "fail"
    result.summary = back.detail if ok else next(s.detail for s in result.steps if not s.ok)
    return _end(room, result)


# ---------------------------------------------------------------- the verb


def restart_subjects(config: Config, names: Iterable[str], all_containers: bool) -> list[str]:
    """The containers `experiment restart` acts on, in dependency order; raises UsageError."""
    names = list(names)
    if all_containers and names:
        raise UsageError("experiment restart: give container names or --all, not both")
    if all_containers:
        names = [n for n, c in config.containers.items() if c.expected_state in EXPECTED_STATES]
        if not names:
            raise UsageError("experiment restart --all: the config expects no running container")
    if not names:
        raise UsageError("experiment restart: name a container, or --all (e.g. podwarden experiment restart tb-node)")
    unknown = [n for n in names if n not in config.containers]
    if unknown:
        raise UsageError(f"experiment restart: {', '.join(unknown)} not in the config's [containers] "
                         f"(experiments act only on configured containers: {', '.join(config.containers) or 'none'})")
    return dependency_order(config, names)


async def run_experiments(config: Config, target: TargetConfig, db: str | None, kind: str, subjects: list[str], *,
                          how: str = "crash", hold_s: float | None = None, recovery_s: float | None = None,
                          deadline_s: float | None = None, dry_run: bool = False, stop: asyncio.Event | None = None,
                          progress: Callable[[str], None] = _quiet) -> ExperimentOutcome:
    """`podwarden experiment KIND SUBJECT...`: one recorded run, one watch, the experiments in order.

    Raises TargetUnreachable when the target cannot be reached or the link drops.
    """
    async with recording(config, "experiment", [target.name], db) as rec:
        outcome = await experiments_in(rec, target, [(kind, subject) for subject in subjects], how=how, hold_s=hold_s,
                                       recovery_s=recovery_s, deadline_s=deadline_s, dry_run=dry_run, stop=stop,
                                       progress=progress)
        rec.verdict = outcome.verdict
    return outcome


async def experiments_in(rec: Recording, target: TargetConfig, plan: list[tuple[str, str]], *, how: str = "crash",
                         hold_s: float | None = None, recovery_s: float | None = None,
                         deadline_s: float | None = None, dry_run: bool = False, stop: asyncio.Event | None = None,
                         progress: Callable[[str], None] = _quiet, fail_fast: bool = False) -> ExperimentOutcome:
    """The experiments of `plan` ((kind, subject) in order) within one watch of `target`, recorded into
    `rec` (a `podwarden run` records its stages into one run). A refused experiment (no steady
    state) ends the plan. Raises TargetUnreachable, ExperimentInterrupted (after rolling back)."""
    config = rec.config
    stop = stop or asyncio.Event()
    outcome = ExperimentOutcome(rec.run_id, target.name, [])
    try:
        async with lab(rec, target, stop, progress, dry_run) as room:
            room.observed_from_ns = room.now_ns()
            for kind, subject in plan:
                if kind == "restart":
                    outcome.experiments.append(await restart_one(room, subject, how, deadline_s))
                elif kind == "cascade":
                    outcome.experiments.append(await cascade(room, subject, hold_s or config.experiments.cascade_hold,
                                                             recovery_s or config.experiments.cascade_recovery))
                elif kind == "service":
                    outcome.experiments.append(await service(room, subject, deadline_s))
                else:
                    raise ValueError(f"unknown experiment kind {kind!r}")
                last = outcome.experiments[-1]
                if not last.passed and (last.summary.startswith("refused") or fail_fast):
                    break
    except ExperimentInterrupted:
        rec.verdict = "interrupted"
        raise
    except TransportError as exc:
        raise TargetUnreachable(target.name, f"link lost during the experiment: {exc.reason}") from None
    return outcome

"""Remediation hooks: when a watched container enters a state and stays there, drifts, or gets
a finding, act on it, within guards, and record every firing.

- Triggers: a state entered and held (`when.state`, `when.held`), a drift kind
  (`when.drift`), a finding rule (`when.finding`), on the hook's containers or roles (all
  configured containers when it names none).
- Actions (`do`): `start`, `restart`, `healthcheck` through the target's own podman; `exec`
  a command on the node; `local` a command on this machine, with the event as JSON on
  stdin; `webhook` POST the event as JSON (e.g. to ntfy).
- Guards, per hook and container: at most `max_actions` firings within `window`; a
  back-off between attempts (`backoff_initial` doubling to `backoff_max`), reset once the
  container has been back where it should be for `stable`; after `give_up_after`
  attempts that did not last, the hook gives up on it with a finding, so a container
  that dies on every start cannot make a loop.
- The built-in hook (`[remediation] start_stopped`, on by default) is the seed's reconcile
  script: it starts again an expected-up container left `stopped` whose restart policy is
  always or unless-stopped, which rootless podman does not restart after a `podman stop`.
- A hook waits for the reconcile before acting on `exited`: a `podman stop` shows `exited`
  for about 2 s before the machine learns it was a stop.

Hooks act only on configured containers, only through the target's own podman (never a
different user's podman: the seed's container-doctor killed live conmons that way), and
with --dry-run they record what they would have done without doing it. Every firing is an
`action` observation with its outcome; a failing hook is recorded and never stops the watch.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from loguru import logger

from agent import podman
from agent.config import Config, HookConfig
from agent.diagnosis import Finding
from agent.errors import TransportError
from agent.watcher import TargetWatcher
from machines.container import StateChange
from machines.drift import Drift
from machines.observations import ActionObs, Observation, SnapshotObs
from machines.states import GOOD

_S = 1_000_000_000
BUILTIN = "start-stopped"
RESTARTING_POLICIES = frozenset({"always", "unless-stopped"})
# The reconcile comes 2 s after a death; an `exited` is trusted once a snapshot this much later confirms it.
EXITED_CONFIRM_NS = 1_000_000_000


@dataclass
class Trigger:
    """Something a hook may answer: what happened to which container, since when."""

    hook: str
    container: str
    kind: str  # state | drift | finding
    what: str  # the state, drift kind or finding rule
    since_ns: int
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "since": self.since_ns, "detail": self.detail}


@dataclass
class Guard:
    """One hook's record for one container: its attempts, back-off and whether it gave up."""

    attempts: deque[int] = field(default_factory=deque)  # firing times within the window
    tries: int = 0  # attempts since the container last stayed where it should be
    next_ok_ns: int = 0
    backoff_ns: int = 0
    gave_up: bool = False
    good_since_ns: int | None = None
    last: Trigger | None = None  # what the last attempt answered


@dataclass
class _Hook:
    """A configured hook, or the built-in one, as the remediator runs it."""

    name: str
    do: str
    states: frozenset[str]
    held_ns: int
    drifts: frozenset[str]
    findings: frozenset[str]
    containers: frozenset[str]  # empty: every configured container
    roles: frozenset[str]
    max_actions: int
    window_ns: int
    backoff_initial_ns: int
    backoff_max_ns: int
    stable_ns: int
    give_up_after: int
    timeout_s: float
    command: tuple[str, ...] = ()
    url: str | None = None

    @classmethod
    def of(cls, hook: HookConfig) -> "_Hook":
        return cls(hook.name, hook.do, frozenset(hook.when.state), int(hook.when.held * _S),
                   frozenset(hook.when.drift), frozenset(hook.when.finding), frozenset(hook.containers),
                   frozenset(hook.roles), hook.max_actions, int(hook.window * _S), int(hook.backoff_initial * _S),
                   int(hook.backoff_max * _S), int(hook.stable * _S), hook.give_up_after, hook.timeout,
                   tuple(hook.command or ()), hook.url)


class Remediator:
    """The hooks of one watched target: fed the same stream as the machines, firing from `run`."""

    def __init__(self, config: Config, watcher: TargetWatcher, *, dry_run: bool = False,
                 progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.watcher = watcher
        self.sink = watcher.sink
        self.target = watcher.name
        self.dry_run = dry_run
        self._progress = progress
        self.hooks = [_Hook.of(hook) for hook in config.hooks]
        remediation = config.remediation
        self.builtin: _Hook | None = None
        if remediation.start_stopped:
            self.builtin = _Hook(BUILTIN, "start", frozenset({"stopped"}), int(remediation.start_stopped_after * _S),
                                 frozenset(), frozenset(), frozenset(), frozenset(), remediation.max_actions,
                                 3600 * _S, 10 * _S, 300 * _S, 600 * _S, remediation.give_up_after, 60.0)
        self._pending: dict[tuple[str, str], Trigger] = {}
        self._guards: dict[tuple[str, str], Guard] = {}
        self._snapshots: dict[str, SnapshotObs] = {}
        self._busy: set[tuple[str, str]] = set()
        self.fired: list[ActionObs] = []

    # -- what happens -------------------------------------------------------------------

    def _all_hooks(self) -> list[_Hook]:
        return [*self.hooks, *([self.builtin] if self.builtin else [])]

    def _applies(self, hook: _Hook, container: str) -> bool:
        own = self.config.containers.get(container)
        if own is None:
            return False  # hooks act only on configured containers
        if hook.name == BUILTIN:
            if own.expected_state not in ("running", "healthy"):
                return False
            snapshot = self._snapshots.get(container)
            return snapshot is not None and snapshot.restart_policy in RESTARTING_POLICIES
        if hook.containers or hook.roles:
            return container in hook.containers or (own.role in hook.roles if own.role else False)
        return True

    def on_fed(self, obs: Observation, changes: list[StateChange], obs_id: int | None) -> None:
        """Every observation of the target with the changes it made (sink.on_fed)."""
        if obs.target != self.target:
            return
        if isinstance(obs, SnapshotObs) and obs.exists:
            self._snapshots[obs.container] = obs
        for change in changes:
            self._on_change(change)

    def _on_change(self, change: StateChange) -> None:
        state = str(change.to_state)
        for hook in self._all_hooks():
            key = (hook.name, change.container)
            if state in hook.states and self._applies(hook, change.container):
                self._pending.setdefault(key, Trigger(hook.name, change.container, "state", state, change.at_ns,
                                                      change.cause))
            elif hook.states and key in self._pending and self._pending[key].kind == "state":
                del self._pending[key]
            guard = self._guards.get(key)
            if guard is not None:
                guard.good_since_ns = change.at_ns if change.to_state in GOOD else None

    def on_drift(self, drift: Drift) -> None:
        """A drift the watch's detector found (hooks with `when.drift`)."""
        if drift.target != self.target:
            return
        for hook in self.hooks:
            if str(drift.kind) in hook.drifts and self._applies(hook, drift.container):
                self._pending.setdefault((hook.name, drift.container), Trigger(
                    hook.name, drift.container, "drift", str(drift.kind), drift.at_ns, drift.reason))

    def on_finding(self, finding: Finding) -> None:
        """A finding recorded in the run (hooks with `when.finding`)."""
        if finding.target != self.target:
            return
        for hook in self.hooks:
            if finding.rule in hook.findings and self._applies(hook, finding.container):
                self._pending.setdefault((hook.name, finding.container), Trigger(
                    hook.name, finding.container, "finding", finding.rule, self.watcher.now_ns(), finding.message))

    # -- acting -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, tick_s: float = 0.5) -> None:
        """Fire what is due until `stop`; never raises for an operational failure."""
        while not stop.is_set():
            await self.fire_due()
            try:
                await asyncio.wait_for(stop.wait(), tick_s)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def fire_due(self) -> None:
        """Fire every pending trigger whose hook may act now; give up where the last allowed
        attempt did not bring the container back (it may end in another bad state, such as a
        crash loop, that no longer triggers the hook)."""
        now = self.watcher.now_ns()
        hooks = {hook.name: hook for hook in self._all_hooks()}
        for (name, container), guard in self._guards.items():
            hook = hooks.get(name)
            if (hook is None or guard.gave_up or not guard.tries or not guard.attempts or guard.last is None
                    or (name, container) in self._pending or now - guard.attempts[-1] < guard.backoff_ns):
                continue
            self._settle(guard, hook, now)
            machine = self.sink.fleet.get(self.target, container)
            if guard.tries and (machine is None or machine.state not in GOOD):
                # the last attempt did not bring it back, and nothing this hook answers is left
                # (it may be crash-looping now): say so once, instead of waiting for ever
                self._give_up(hook, guard.last, guard, now)
        for key, trigger in list(self._pending.items()):
            hook = hooks.get(trigger.hook)
            if hook is None or key in self._busy:
                continue
            guard = self._guards.setdefault(key, Guard(backoff_ns=hook.backoff_initial_ns))
            self._settle(guard, hook, now)
            if guard.gave_up:
                del self._pending[key]
                continue
            if not self._due(hook, trigger, now) or now < guard.next_ok_ns:
                continue
            while guard.attempts and guard.attempts[0] < now - hook.window_ns:
                guard.attempts.popleft()
            if len(guard.attempts) >= hook.max_actions:
                continue  # at most max_actions per window: wait for the window to move on
            if guard.tries >= hook.give_up_after:
                self._give_up(hook, trigger, guard, now)
                del self._pending[key]
                continue
            del self._pending[key]
            guard.attempts.append(now)
            guard.tries += 1
            guard.last = trigger
            guard.next_ok_ns = now + guard.backoff_ns
            guard.backoff_ns = min(guard.backoff_ns * 2, hook.backoff_max_ns)
            guard.good_since_ns = None
            self._busy.add(key)
            try:
                await self._fire(hook, trigger, guard.tries, now)
            finally:
                self._busy.discard(key)

    def _settle(self, guard: Guard, hook: _Hook, now: int) -> None:
        """Back where it should be for `stable`: the hook's record of this container starts over."""
        if guard.good_since_ns is not None and now - guard.good_since_ns >= hook.stable_ns and guard.tries:
            guard.tries, guard.backoff_ns, guard.gave_up = 0, hook.backoff_initial_ns, False
            guard.attempts.clear()

    def _due(self, hook: _Hook, trigger: Trigger, now: int) -> bool:
        if trigger.kind != "state":
            return True
        machine = self.sink.fleet.get(self.target, trigger.container)
        if machine is None or str(machine.state) != trigger.what:
            return False
        if now - trigger.since_ns < hook.held_ns:
            return False
        if trigger.what == "exited":
            # a `podman stop` shows `exited` until the reconcile after it proves no restart came
            snapshot = self._snapshots.get(trigger.container)
            return snapshot is not None and snapshot.at_ns >= trigger.since_ns + EXITED_CONFIRM_NS
        return True

    def _give_up(self, hook: _Hook, trigger: Trigger, guard: Guard, now: int) -> None:
        guard.gave_up = True
        machine = self.sink.fleet.get(self.target, trigger.container)
        now_state = str(machine.state) if machine is not None else trigger.what
        detail = (f"gave up on {trigger.container} after {guard.tries} attempt(s) that did not last "
                  f"(back-off reached {guard.backoff_ns // _S} s); it is {now_state}")
        self._record(trigger.container, f"hook {hook.name}: gave up", detail, ok=False, at_ns=now)
        self.sink.add_finding(Finding(
            self.target, trigger.container, "hook-gave-up", "error",
            f"hook {hook.name} gave up on {trigger.container}: {guard.tries} attempts did not bring it back "
            f"(it is {now_state})",
            f"every {hook.do} was followed by another failure: what makes it fail is not fixed by {hook.do}",
            f"read the container's log and its last death's reason (podwarden query changes --container "
            f"{trigger.container}); the hook starts over once it stays up {hook.stable_ns // _S} s",
            {"hook": hook.name, "attempts": guard.tries, "trigger": trigger.to_json()}), now)
        self._say(f"hook {hook.name} gave up on {trigger.container} after {guard.tries} attempts")

    async def _fire(self, hook: _Hook, trigger: Trigger, attempt: int, at_ns: int) -> None:
        container = trigger.container
        why = f"{trigger.kind} {trigger.what} since {podman.format_time_ns(trigger.since_ns)[11:23]}"
        event = {"hook": hook.name, "do": hook.do, "target": self.target, "container": container,
                 "trigger": trigger.to_json(), "at": at_ns, "attempt": attempt, "dry_run": self.dry_run}
        action = f"hook {hook.name}: {hook.do}"
        if self.dry_run:
            self._record(container, action, f"would {hook.do} {container} ({why}; attempt {attempt})", True, at_ns)
            self._say(f"(dry run) hook {hook.name} would {hook.do} {container}")
            return
        self._say(f"hook {hook.name}: {hook.do} {container} ({why}, attempt {attempt})")
        try:
            ok, outcome = await self._act(hook, container, event)
        except Exception as exc:  # a failing hook is recorded and never stops the watch
            ok, outcome = False, f"{type(exc).__name__}: {exc}"
            logger.bind(target=self.target, container=container).warning("hook {} failed: {}", hook.name, outcome)
        self._record(container, action, f"{why}; attempt {attempt}: {outcome}", ok, at_ns)

    async def _act(self, hook: _Hook, container: str, event: dict[str, Any]) -> tuple[bool, str]:
        if hook.do == "local":
            return await _local(_argv(hook.command, container, self.target), event, hook.timeout_s)
        if hook.do == "webhook":
            return await asyncio.to_thread(_post, hook.url or "", event, hook.timeout_s)
        transport = self.watcher.transport
        if transport is None or not transport.connected:
            return False, "not done: the link to the target is down"
        podman_cmd = list(self.watcher.target.podman) or ["podman"]
        if hook.do == "healthcheck":
            await self.watcher.check_health_now(container)
            return True, "ran the health check"
        if hook.do == "start":
            argv = podman.start_cmd(podman_cmd, container)
        elif hook.do == "restart":
            argv = podman.restart_cmd(podman_cmd, container)
        else:
            argv = _argv(hook.command, container, self.target)
        try:
            result = await transport.run(argv, timeout=hook.timeout_s)
        except TransportError as exc:
            return False, f"{' '.join(argv)}: {exc.reason}"
        text = (result.stdout + result.stderr).strip()[-200:]
        return result.ok, f"{' '.join(argv)}: exit {result.exit_status}" + (f": {text}" if text else "")

    def _record(self, container: str, action: str, detail: str, ok: bool, at_ns: int) -> None:
        obs = ActionObs(self.target, container, at_ns, action, detail[:1000], self.dry_run, ok)
        self.fired.append(obs)
        if len(self.fired) > 1000:
            del self.fired[0]
        self.sink.put(obs)

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)


def _argv(command: tuple[str, ...], container: str, target: str) -> list[str]:
    """A hook's command with {container} and {target} filled in (each stays one argument)."""
    return [arg.replace("{container}", container).replace("{target}", target) for arg in command]


async def _local(argv: list[str], event: dict[str, Any], timeout_s: float) -> tuple[bool, str]:
    """Run a command on this machine with the event as JSON on stdin."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(json.dumps(event).encode()), timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        proc.kill()
        await proc.wait()
        return False, f"{argv[0]}: timed out after {timeout_s:g}s"
    text = out.decode("utf-8", "replace").strip()[-200:]
    return proc.returncode == 0, (f"{argv[0]}: exit {proc.returncode} in {time.monotonic() - started:.2f}s"
                                  + (f": {text}" if text else ""))


def _post(url: str, event: dict[str, Any], timeout_s: float) -> tuple[bool, str]:
    """POST the event as JSON; (ok, what happened). Runs in a thread."""
    request = urllib.request.Request(url, data=json.dumps(event).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "podwarden"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (the user's own URL)
            return 200 <= response.status < 300, f"POST {url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"POST {url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return False, f"POST {url}: {getattr(exc, 'reason', exc)}"

"""Drift: what went wrong during a soak window, judged against the state at its start. No clock, no I/O.

A `DriftDetector` is fed the same observations as the `Fleet`, right after it, together
with the state changes each one produced there. It has no other input (no clock, no
store, no patterns): `soak` feeds it live and `replay` feeds it the stored sequence, so
both find the same drifts (`run_window` is that loop, for replay and tests).

The window opens at `start(fleet, at_ns)`: what the fleet believes then is the baseline
(each expected container's state, health, restart count, restart policy and image).
Observations fed before `start` only teach the detector the baseline's policy, image and
link state. The window closes at `finish(at_ns)`.

What is drift (`DriftKind`), for a container `expected` running, healthy, stopped or absent:

- state / health: a state change that takes the container out of its expected state, or
  moves it from one state outside it to another that is not on the way back. Precisely,
  a change `a -> b` is drift iff `b` does not meet the expectation and (`a` meets it, or
  `b` is not one of RESTARTING, STARTING, RUNNING, HEALTHY). So a crash is one drift
  (running -> exited), not four (the policy's exited -> restarting -> starting -> healthy
  are its recovery), while exited -> crashlooping or restarting -> exited (died again) are
  new drifts. Arriving at the expected state is never drift: first sight of a healthy
  container, a start period ending (starting -> healthy). `health` when the process stays
  alive (both states up, or the change is into unhealthy), else `state`.
  A change that only relabels a death already known (exited <-> stopped: a late stop
  event, podman 4.3's missing stop shown by the restart policy's silence) is no new drift:
  the drift that reported that death gets the better reason (see "amended" below).
- restart: the machine's restart count grew (the container came back after a death that
  was not a user's). A crash with its restart is two drifts, a death and a recovery; in a
  crash loop, where the state holds, only the restarts show each further death.
- error: an error line (`LogObs.is_error`, decided by the container's error and ignore
  patterns before it got here) stamped inside the window. One drift per distinct line,
  digits ignored ("block 942975" and "block 942976" are one line), so a flood is one drift;
  its repeats are counted and reported once, at `finish`.
- probe: a failed probe (`ok=False`), one drift per failure streak of one probe: a probe
  failing on every run is one outage, a pass in between starts a new one. Not a probe
  failure: `kernel-log` (the kernel's OOM line, evidence the machine folds into the death's
  reason) and `podman-healthcheck` (podman's health bookkeeping: the machine applies
  podman's retries and start period, and a failure that turns the container unhealthy
  shows as a health drift; one failure within the retries is no drift, podman itself still
  says healthy).
- policy / image: a snapshot whose restart policy ("" and "no" are the same) or image
  differs from the last one known, the baseline's at first.
- link: the link to a target was lost (AgentObs "lost" or "unreachable") for longer than
  `link_lost_max_ns` inside the window, until "connected" or the end of the window.
- unmet: at `finish`, an expected container not in its expected state (or never seen).
  A soak passes only if nothing left its expected state and everything ended in it.

Not drift: repeated health_status events of an unchanged state, snapshots that agree,
passing probes, podwarden's own actions (their effects on containers are), agent records
other than a link loss, containers without an expectation (unless `others` gives one).

Each drift carries the reason of the death behind it (`death`, from the machine's
`last_death`) where there is one. Later knowledge about that death (the kernel's OOM line,
a late stop event) amends the drifts that carry it: `drifts` holds the amended values,
while `feed` returned them as they were first known.

Bounded: at most `max_per_kind` drifts per (target, container, kind); the rest are counted
and reported by `finish` as one drift per (target, container, kind) with their count. The
detector's memory is bounded by the containers, probes and targets it sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Literal

from machines.container import Fleet, MachineSettings, StateChange, format_duration
from machines.deaths import DeathReason
from machines.observations import AgentObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import UP, State

_SECOND = 1_000_000_000

ExpectedState = Literal["running", "healthy", "stopped", "absent"]

# The states that meet each expectation. "running" accepts a start period still in progress
# (the process runs); "healthy" only a passed health check; "stopped" any container that exists
# and does not run; "absent" a container that does not exist.
EXPECTED: dict[str, frozenset[State]] = {
    "running": frozenset({State.STARTING, State.RUNNING, State.HEALTHY}),
    "healthy": frozenset({State.HEALTHY}),
    "stopped": frozenset({State.CREATED, State.STOPPED, State.EXITED}),
    "absent": frozenset({State.MISSING, State.REMOVED}),
}
# Steps on the way back up: from outside the expected state, moving here is recovery, not news.
RECOVERING = frozenset({State.RESTARTING, State.STARTING, State.RUNNING, State.HEALTHY})
# States a death leads to: a drift into one of them carries the death's reason.
DEATH_STATES = frozenset({State.EXITED, State.STOPPED, State.CRASHLOOPING, State.RESTARTING})
# A change between these with no new death only relabels the death the machine already knew.
_RELABEL_FROM = frozenset({State.EXITED, State.STOPPED, State.CRASHLOOPING})
_RELABEL_TO = frozenset({State.EXITED, State.STOPPED})
# Probe types that are not checks of their own (see the module docstring).
NOT_PROBE_FAILURES = frozenset({"kernel-log", "podman-healthcheck"})
# Agent records that mean the link is down, and the one that means it is back.
LINK_DOWN = frozenset({"lost", "unreachable"})
LINK_UP = "connected"
_ERROR_KEY_CHARS = 200
_EXAMPLES = 3


class DriftKind(StrEnum):
    """What drifted."""

    STATE = "state"
    HEALTH = "health"
    RESTART = "restart"
    ERROR = "error"
    PROBE = "probe"
    POLICY = "policy"
    IMAGE = "image"
    LINK = "link"
    UNMET = "unmet"


@dataclass(frozen=True)
class DriftSettings:
    """How long a link may be lost before it is drift, and how many drifts of a kind are listed one by one."""

    link_lost_max_ns: int = 30 * _SECOND
    max_per_kind: int = 20


def meets(expected: str, state: State) -> bool:
    """Whether a container expected `expected` is where it should be in `state`.

    Raises ValueError for an unknown expectation.
    """
    try:
        return state in EXPECTED[expected]
    except KeyError:
        raise ValueError(f"unknown expected state {expected!r}: use one of {', '.join(EXPECTED)}") from None


def is_drift(expected: str, from_state: State, to_state: State) -> bool:
    """Whether a state change of a container expected `expected` is drift (the rule in the module docstring)."""
    if meets(expected, to_state):
        return False
    return meets(expected, from_state) or to_state not in RECOVERING


def change_kind(from_state: State, to_state: State) -> DriftKind:
    """`health` when the process stays alive (or turns unhealthy), else `state`."""
    if to_state is State.UNHEALTHY or (from_state in UP and to_state in UP):
        return DriftKind.HEALTH
    return DriftKind.STATE


def error_key(line: str) -> str:
    """What makes two error lines the same: the text with every run of digits as one '#'."""
    out: list[str] = []
    in_digits = False
    for char in line.strip()[:_ERROR_KEY_CHARS * 2]:
        if char.isdigit():
            if not in_digits:
                out.append("#")
            in_digits = True
        else:
            out.append(char)
            in_digits = False
    return "".join(out)[:_ERROR_KEY_CHARS]


def normal_policy(policy: str) -> str:
    """podman's restart policy name; "" (none given) is "no"."""
    return policy or "no"


def format_stamp(at_ns: int) -> str:
    """A podman timestamp as UTC RFC 3339 with milliseconds (pure: no clock is read)."""
    moment = datetime.fromtimestamp(at_ns // _SECOND, tz=timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{at_ns % _SECOND // 1_000_000:03d}Z"


def _death_json(death: DeathReason | None) -> dict[str, Any] | None:
    if death is None:
        return None
    return {"kind": death.kind, "text": death.text, "evidence": list(death.evidence)}


@dataclass(frozen=True, slots=True)
class Drift:
    """One drift: which container, what kind, when (podman's clock), why, and the evidence."""

    target: str
    container: str  # "" for the link to a target
    kind: DriftKind
    at_ns: int
    reason: str
    evidence: tuple[str, ...] = ()
    death: DeathReason | None = None  # the death behind it, where there is one
    death_ns: int | None = None
    expected: str = ""
    from_state: State | None = None
    to_state: State | None = None
    count: int = 1  # occurrences it stands for: restarts seen at once, or an aggregate written by `finish`
    obs_id: int | None = None  # the observation it came from, when the caller gave its id

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys."""
        return {
            "target": self.target, "container": self.container, "kind": str(self.kind), "at_ns": self.at_ns,
            "at": format_stamp(self.at_ns), "reason": self.reason, "evidence": list(self.evidence),
            "death": _death_json(self.death), "death_ns": self.death_ns, "expected": self.expected or None,
            "from_state": None if self.from_state is None else str(self.from_state),
            "to_state": None if self.to_state is None else str(self.to_state),
            "count": self.count, "obs_id": self.obs_id,
        }


@dataclass(frozen=True, slots=True)
class Baseline:
    """One expected container as the window found it."""

    target: str
    container: str
    expected: str
    state: State
    health: str | None
    restarts: int  # the machine's count of restarts after deaths that were not a user's
    restart_count: int | None  # podman's RestartCount in the latest snapshot (None: no snapshot yet)
    restart_policy: str | None
    image: str | None

    @property
    def met(self) -> bool:
        """Whether it was in its expected state when the window opened."""
        return meets(self.expected, self.state)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys."""
        return {"target": self.target, "container": self.container, "expected": self.expected,
                "state": str(self.state), "health": self.health, "met": self.met, "restarts": self.restarts,
                "restart_count": self.restart_count, "restart_policy": self.restart_policy, "image": self.image}


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    """The drifts of one container (or of a target's link: container "")."""

    target: str
    container: str
    drifts: int  # drift records
    occurrences: int  # what they stand for (an aggregate counts its every occurrence)
    kinds: tuple[tuple[str, int], ...]  # (kind, occurrences), in DriftKind order
    first_ns: int
    last_ns: int
    last_death: DeathReason | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys."""
        return {"target": self.target, "container": self.container, "drifts": self.drifts,
                "occurrences": self.occurrences, "kinds": dict(self.kinds), "first_ns": self.first_ns,
                "last_ns": self.last_ns, "last_death": _death_json(self.last_death)}


def verdict(drifts: Iterable[Drift]) -> str:
    """"pass" when there is no drift, else "fail"."""
    return "fail" if any(True for _ in drifts) else "pass"


def summarize(drifts: Iterable[Drift]) -> list[ContainerSummary]:
    """One summary per (target, container) with drift, sorted by target and container."""
    groups: dict[tuple[str, str], list[Drift]] = {}
    for drift in drifts:
        groups.setdefault((drift.target, drift.container), []).append(drift)
    summaries = []
    for (target, container), group in sorted(groups.items()):
        kinds = tuple((str(kind), n) for kind in DriftKind
                      if (n := sum(d.count for d in group if d.kind is kind)))
        deaths = [d for d in group if d.death is not None]
        last = max(deaths, key=lambda d: (d.death_ns or 0, d.at_ns)).death if deaths else None
        summaries.append(ContainerSummary(target, container, len(group), sum(d.count for d in group), kinds,
                                          min(d.at_ns for d in group), max(d.at_ns for d in group), last))
    return summaries


@dataclass(slots=True)
class _Track:
    """What the detector remembers of one expected container."""

    expected: str
    policy: str | None = None
    image: str | None = None
    restart_count: int | None = None
    snapshot_ns: int = -1
    restarts: int = 0  # the machine's restarts, as of the last observation
    seen_death_ns: int | None = None  # the machine's last_death_ns, as of the last observation
    # the newest death reported on drifts, its reason as reported, and those drifts' places
    death_ns: int | None = None
    death: DeathReason | None = None
    death_drifts: list[int] = field(default_factory=list)
    error_keys: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Overflow:
    """Drifts of one (target, container, kind) not listed one by one."""

    count: int = 0  # past the limit
    repeats: int = 0  # error lines already listed, seen again
    first_ns: int | None = None
    last_ns: int | None = None
    examples: list[str] = field(default_factory=list)

    def add(self, at_ns: int, example: str, count: int = 1, repeat: bool = False) -> None:
        if repeat:
            self.repeats += count
        else:
            self.count += count
        self.first_ns = at_ns if self.first_ns is None else min(self.first_ns, at_ns)
        self.last_ns = at_ns if self.last_ns is None else max(self.last_ns, at_ns)
        if len(self.examples) < _EXAMPLES and example not in self.examples:
            self.examples.append(example)


class DriftDetector:
    """Drift in one window, from the observations and the state changes the fleet made of them."""

    def __init__(self, expected: Mapping[tuple[str, str], str], settings: DriftSettings = DriftSettings(),
                 *, others: str | None = None) -> None:
        """`expected`: (target, container) -> running | healthy | stopped | absent. `others`: the
        expectation of every other container seen (None: they cannot drift, except by their probes).

        Raises ValueError for an unknown expectation.
        """
        for value in [*expected.values(), *([others] if others is not None else [])]:
            meets(value, State.UNKNOWN)  # raises for an unknown one
        self.settings = settings
        self._expected = dict(expected)
        self._others = others
        self._fleet: Fleet | None = None
        self._start_ns: int | None = None
        self._end_ns: int | None = None
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._down: dict[str, tuple[int, str]] = {}  # target -> (lost at, detail) while its link is down
        self._failing: set[tuple[str, str, str]] = set()  # (target, container, probe) failing now
        self._drifts: list[Drift] = []
        self._listed: dict[tuple[str, str, DriftKind], int] = {}
        self._overflow: dict[tuple[str, str, DriftKind], _Overflow] = {}
        self._baselines: list[Baseline] = []

    # ------------------------------------------------------------ the window

    @property
    def started(self) -> bool:
        """Whether the window is open or over."""
        return self._start_ns is not None

    @property
    def finished(self) -> bool:
        """Whether `finish` has closed the window."""
        return self._end_ns is not None

    @property
    def drifts(self) -> tuple[Drift, ...]:
        """Every drift so far, in the order found, with later knowledge of their deaths applied."""
        return tuple(self._drifts)

    @property
    def baselines(self) -> tuple[Baseline, ...]:
        """The expected containers as the window found them."""
        return tuple(self._baselines)

    def verdict(self) -> str:
        """"pass" when there is no drift so far, else "fail"."""
        return verdict(self._drifts)

    def expected_state(self, target: str, container: str) -> str | None:
        """The expectation of (target, container), None when it has none."""
        return self._expected.get((target, container), self._others)

    def start(self, fleet: Fleet, at_ns: int) -> None:
        """Open the window at `at_ns`: the fleet's belief now is the baseline. Raises RuntimeError if already open.

        Call it at the same place in the sequence in replay as live (record that place).
        """
        if self.started:
            raise RuntimeError("the drift window is already open")
        self._fleet, self._start_ns = fleet, at_ns
        keys = list(self._expected)
        if self._others is not None:
            keys += [(m.target, m.container) for m in fleet.machines() if (m.target, m.container) not in self._expected]
        for target, container in keys:
            expected = self.expected_state(target, container)
            assert expected is not None
            track = self._track(target, container, expected)
            machine = fleet.get(target, container)
            if machine is not None:
                track.restarts, track.seen_death_ns = machine.restarts, machine.last_death_ns
            self._baselines.append(Baseline(
                target, container, expected, machine.state if machine else State.UNKNOWN,
                machine.health if machine else None, track.restarts, track.restart_count,
                track.policy, track.image))

    def feed(self, obs: Observation, changes: Sequence[StateChange] = (), obs_id: int | None = None) -> list[Drift]:
        """Take one observation and the changes the fleet made of it; the drifts it shows, in order.

        Before `start` it only learns the baseline. Raises RuntimeError after `finish`.
        """
        if self.finished:
            raise RuntimeError("the drift window is closed: start a new detector")
        found: list[Drift] = []
        if isinstance(obs, AgentObs):
            self._on_agent(obs, found, obs_id)
            return found
        if isinstance(obs, ProbeObs) and self.started:
            self._on_probe(obs, found, obs_id)
        expected = self.expected_state(obs.target, obs.container) if obs.container else None
        if expected is None:
            return found
        track = self._track(obs.target, obs.container, expected)
        if not self.started:
            if isinstance(obs, SnapshotObs):
                self._learn(track, obs)
            return found
        assert self._fleet is not None
        machine = self._fleet.get(obs.target, obs.container)
        death_ns = death = None
        new_death = False
        if machine is not None:
            death_ns, death = machine.last_death_ns, machine.last_death
            new_death = death_ns is not None and death_ns != track.seen_death_ns
        for change in changes:
            self._on_change(track, change, obs, new_death, death_ns, death, found, obs_id)
        if machine is not None:
            if machine.restarts > track.restarts:
                self._on_restart(track, machine.restarts, obs, death_ns, death, found, obs_id)
            track.restarts = machine.restarts
            track.seen_death_ns = death_ns
            if death is not None and death_ns == track.death_ns and death != track.death:
                self._amend(track, death)
        if isinstance(obs, SnapshotObs):
            self._on_snapshot(track, obs, found, obs_id)
        elif isinstance(obs, LogObs) and obs.is_error:
            self._on_error(track, obs, found, obs_id)
        return found

    def finish(self, at_ns: int) -> list[Drift]:
        """Close the window at `at_ns`: links still lost, containers not where expected, and the counts
        of drifts not listed one by one. Raises RuntimeError unless the window is open."""
        if not self.started or self.finished:
            raise RuntimeError("finish needs an open drift window")
        assert self._fleet is not None and self._start_ns is not None
        found: list[Drift] = []
        for target, (lost_ns, detail) in sorted(self._down.items()):
            self._link_gap(target, lost_ns, detail, at_ns, "still lost when the window closed", found, None)
        closing = [drift for key, track in self._tracks.items() if (drift := self._unmet(key, track, at_ns))]
        closing += [self._aggregate(target, container, kind, over)
                    for (target, container, kind), over in self._overflow.items()]
        self._drifts.extend(closing)
        found.extend(closing)
        self._end_ns = at_ns
        return found

    # ------------------------------------------------------------ state, restarts and deaths

    def _on_change(self, track: _Track, change: StateChange, obs: Observation, new_death: bool,
                   death_ns: int | None, death: DeathReason | None, found: list[Drift], obs_id: int | None) -> None:
        a, b = change.from_state, change.to_state
        if not is_drift(track.expected, a, b):
            return
        if a in _RELABEL_FROM and b in _RELABEL_TO and not new_death:
            # the death the machine knew, relabelled: the drift that reported it says so instead
            if death_ns is not None and death_ns == track.death_ns:
                self._relabel(track, b, change)
            return
        assert self._start_ns is not None
        carries = (b in DEATH_STATES and death is not None and death_ns is not None
                   and (new_death or death_ns >= self._start_ns))
        evidence = [f"cause: {change.cause}", f"{change.obs_kind} observation at {format_stamp(change.at_ns)}"]
        if change.contradiction:
            evidence.append("a snapshot overruled the machine: podman's events missed a change")
        drift = Drift(change.target, change.container, change_kind(a, b), change.at_ns,
                      _state_reason(a, b, track.expected, death if carries else None, change.cause),
                      tuple(evidence), death if carries else None, death_ns if carries else None,
                      track.expected, a, b, obs_id=obs_id)
        self._emit(drift, found, track)

    def _on_restart(self, track: _Track, restarts: int, obs: Observation, death_ns: int | None,
                    death: DeathReason | None, found: list[Drift], obs_id: int | None) -> None:
        came_back = restarts - track.restarts
        after = f" after: {death.text}" if death else ""
        reason = (f"restarted{after}" if came_back == 1 else f"restarted {came_back} times{after}")
        evidence = (f"restarts {track.restarts} -> {restarts} since the machine started counting",
                    f"{obs.kind} observation at {format_stamp(obs.at_ns)}")
        self._emit(Drift(obs.target, obs.container, DriftKind.RESTART, obs.at_ns, reason, evidence, death,
                         death_ns if death else None, track.expected, count=came_back, obs_id=obs_id), found, track)

    def _relabel(self, track: _Track, to_state: State, change: StateChange) -> None:
        """The death state drifts reported is now known as `to_state` (exited <-> stopped)."""
        for index in track.death_drifts:
            old = self._drifts[index]
            if old.kind is DriftKind.STATE and old.to_state in _RELABEL_TO and old.to_state is not to_state:
                assert old.from_state is not None
                self._drifts[index] = replace(
                    old, to_state=to_state,
                    reason=_state_reason(old.from_state, to_state, old.expected, old.death, change.cause),
                    evidence=(*old.evidence, f"then {change.from_state} -> {to_state}: {change.cause}"))

    def _amend(self, track: _Track, death: DeathReason) -> None:
        """The machine knows more about the death drifts already carry: give them the better reason."""
        track.death = death
        for index in track.death_drifts:
            old = self._drifts[index]
            if old.kind is DriftKind.RESTART:
                reason = old.reason.split(" after: ", 1)[0] + f" after: {death.text}"
            else:
                assert old.from_state is not None and old.to_state is not None
                reason = _state_reason(old.from_state, old.to_state, old.expected, death, "")
            self._drifts[index] = replace(old, death=death, reason=reason)

    # ------------------------------------------------------------ snapshots, logs, probes, link

    def _learn(self, track: _Track, obs: SnapshotObs) -> tuple[str | None, str | None] | None:
        """Take the policy and image of a snapshot; the previous (policy, image), None for a stale snapshot."""
        if not obs.exists or obs.at_ns < track.snapshot_ns:
            return None
        before = (track.policy, track.image)
        track.snapshot_ns = obs.at_ns
        track.policy = normal_policy(obs.restart_policy)
        track.restart_count = obs.restart_count
        if obs.image:
            track.image = obs.image
        return before

    def _on_snapshot(self, track: _Track, obs: SnapshotObs, found: list[Drift], obs_id: int | None) -> None:
        before = self._learn(track, obs)
        if before is None:
            return
        old_policy, old_image = before
        seen = f"podman inspect at {format_stamp(obs.at_ns)}"
        if old_policy is not None and track.policy != old_policy:
            self._emit(Drift(obs.target, obs.container, DriftKind.POLICY, obs.at_ns,
                             f"restart policy changed: {old_policy} -> {track.policy}",
                             (f"{seen}: HostConfig.RestartPolicy.Name={obs.restart_policy!r}",
                              f"container id {obs.container_id}"), expected=track.expected, obs_id=obs_id),
                       found, track)
        if old_image is not None and track.image != old_image:
            self._emit(Drift(obs.target, obs.container, DriftKind.IMAGE, obs.at_ns,
                             f"image changed: {old_image} -> {track.image}",
                             (f"{seen}: Config.Image={obs.image!r}", f"container id {obs.container_id}"),
                             expected=track.expected, obs_id=obs_id), found, track)

    def _on_error(self, track: _Track, obs: LogObs, found: list[Drift], obs_id: int | None) -> None:
        assert self._start_ns is not None
        if obs.at_ns < self._start_ns:
            return  # printed before the window (a resumed tail re-reading it): not new
        key = error_key(obs.line)
        example = obs.line[:300]
        if key in track.error_keys:
            self._over(obs.target, obs.container, DriftKind.ERROR).add(obs.at_ns, example, repeat=True)
            return
        drift = Drift(obs.target, obs.container, DriftKind.ERROR, obs.at_ns, f"new error line: {example}",
                      (obs.line[:500], f"{obs.stream} line {obs.seq} at {format_stamp(obs.at_ns)}"),
                      expected=track.expected, obs_id=obs_id)
        if self._emit(drift, found, track):
            track.error_keys.add(key)

    def _on_probe(self, obs: ProbeObs, found: list[Drift], obs_id: int | None) -> None:
        if obs.probe_type in NOT_PROBE_FAILURES:
            return
        key = (obs.target, obs.container, obs.probe)
        if obs.ok:
            self._failing.discard(key)
            return
        if key in self._failing:
            return  # the same outage
        self._failing.add(key)
        what = obs.detail or "failed"
        evidence = tuple(x for x in (f"{obs.probe_type} probe {obs.probe!r} at {format_stamp(obs.at_ns)}, "
                                     f"{obs.latency_ms:g} ms: {what}", obs.excerpt[:500]) if x)
        expected = self.expected_state(obs.target, obs.container) if obs.container else None
        self._emit(Drift(obs.target, obs.container, DriftKind.PROBE, obs.at_ns,
                         f"probe {obs.probe} ({obs.probe_type}) failed: {what}", evidence,
                         expected=expected or "", obs_id=obs_id), found, None)

    def _on_agent(self, obs: AgentObs, found: list[Drift], obs_id: int | None) -> None:
        if obs.what in LINK_DOWN:
            self._down.setdefault(obs.target, (obs.at_ns, obs.detail))
        elif obs.what == LINK_UP:
            lost = self._down.pop(obs.target, None)
            if lost is not None and self.started:
                self._link_gap(obs.target, lost[0], lost[1], obs.at_ns,
                               f"connected again at {format_stamp(obs.at_ns)}: {obs.detail}", found, obs_id)

    def _link_gap(self, target: str, lost_ns: int, detail: str, back_ns: int, how: str, found: list[Drift],
                  obs_id: int | None) -> None:
        assert self._start_ns is not None
        since = max(lost_ns, self._start_ns)  # what the window could not see
        if back_ns - since <= self.settings.link_lost_max_ns:
            return
        limit = format_duration(self.settings.link_lost_max_ns)
        self._emit(Drift(target, "", DriftKind.LINK, since,
                         f"link lost for {format_duration(back_ns - since)} (limit {limit})",
                         (f"lost at {format_stamp(lost_ns)}: {detail}", how), obs_id=obs_id), found, None)

    def _unmet(self, key: tuple[str, str], track: _Track, at_ns: int) -> Drift | None:
        """The drift of a container not in its expected state when the window closes, if it is not."""
        assert self._fleet is not None
        machine = self._fleet.get(*key)
        state = machine.state if machine is not None else State.UNKNOWN
        if meets(track.expected, state):
            return None
        death = machine.last_death if machine is not None and state in DEATH_STATES else None
        since = f" since {format_stamp(machine.since_ns)}" if machine is not None and machine.since_ns else ""
        what = "never observed" if state is State.UNKNOWN else f"{state}{since}"
        reason = f"{what} when the window closed, expected {track.expected}" + (f": {death.text}" if death else "")
        return Drift(key[0], key[1], DriftKind.UNMET, at_ns, reason,
                     (f"machine state {state} at {format_stamp(at_ns)}",), death,
                     machine.last_death_ns if death and machine else None, track.expected, to_state=state)

    # ------------------------------------------------------------ listing and counting

    def _track(self, target: str, container: str, expected: str) -> _Track:
        track = self._tracks.get((target, container))
        if track is None:
            track = self._tracks[(target, container)] = _Track(expected)
        return track

    def _over(self, target: str, container: str, kind: DriftKind) -> _Overflow:
        key = (target, container, kind)
        over = self._overflow.get(key)
        if over is None:
            over = self._overflow[key] = _Overflow()
        return over

    def _emit(self, drift: Drift, found: list[Drift], track: _Track | None) -> bool:
        """List a drift, or count it past the limit of its (target, container, kind). True if listed."""
        key = (drift.target, drift.container, drift.kind)
        listed = self._listed.get(key, 0)
        if listed >= self.settings.max_per_kind:
            self._over(*key).add(drift.at_ns, drift.reason, drift.count)
            return False
        self._listed[key] = listed + 1
        if track is not None and drift.death is not None and drift.death_ns is not None:
            if drift.death_ns != track.death_ns:
                track.death_ns, track.death_drifts = drift.death_ns, []
            track.death = drift.death
            track.death_drifts.append(len(self._drifts))
        self._drifts.append(drift)
        found.append(drift)
        return True

    def _aggregate(self, target: str, container: str, kind: DriftKind, over: _Overflow) -> Drift:
        assert over.first_ns is not None and over.last_ns is not None
        parts = []
        if over.repeats:
            parts.append(f"{over.repeats} repeats of error lines listed")
        if over.count:
            parts.append(f"{over.count} more past the limit of {self.settings.max_per_kind}")
        evidence = (f"from {format_stamp(over.first_ns)} to {format_stamp(over.last_ns)}",
                    *(f"e.g. {example}" for example in over.examples))
        return Drift(target, container, kind, over.first_ns, f"{kind} drift not listed one by one: "
                     + ", ".join(parts), evidence, expected=self.expected_state(target, container) or "",
                     count=over.count + over.repeats)


def _state_reason(a: State, b: State, expected: str, death: DeathReason | None, cause: str) -> str:
    why = death.text if death is not None else cause
    return f"{a} -> {b} (expected {expected})" + (f": {why}" if why else "")


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What one window came to: the changes, the drifts and the baseline."""

    changes: tuple[StateChange, ...]
    drifts: tuple[Drift, ...]
    baselines: tuple[Baseline, ...]

    @property
    def verdict(self) -> str:
        """"pass" when there is no drift, else "fail"."""
        return verdict(self.drifts)


def run_window(before: Iterable[Observation], window: Iterable[Observation],
               expected: Mapping[tuple[str, str], str], start_ns: int, end_ns: int, *,
               settings: DriftSettings = DriftSettings(), machine_settings: MachineSettings = MachineSettings(),
               others: str | None = None) -> WindowResult:
    """Feed a fresh fleet and detector `before` (the baseline), open the window at `start_ns`,
    feed `window`, close it at `end_ns`: what `soak` found live, re-derived (`replay`)."""
    fleet = Fleet(machine_settings)
    detector = DriftDetector(expected, settings, others=others)
    changes: list[StateChange] = []
    try:
        for obs in before:
            detector.feed(obs, fleet.feed(obs))
        detector.start(fleet, start_ns)
        for obs in window:
            made = fleet.feed(obs)
            changes.extend(made)
            detector.feed(obs, made)
        detector.finish(end_ns)
        return WindowResult(tuple(changes), detector.drifts, detector.baselines)
    finally:
        fleet.close()

"""The one way in: every observation any verb makes is redacted once, stored, then fed to
the machines, and the changes they make are stored and passed on.

Because the store receives exactly what the machines were fed, in the same order,
everything podwarden concludes is a pure function of the stored observations: replaying
a run (agent/replay.py) gives back its stored changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from machines.container import Fleet, StateChange
from machines.observations import AgentObs, Kind, Observation

ChangeCallback = Callable[[StateChange], None]
ObsCallback = Callable[[Observation], None]
# (observation, the changes it made, its stored id): what drift and hooks are fed
FedCallback = Callable[[Observation, list[StateChange], "int | None"], None]
FindingCallback = Callable[[Any], None]
# A flood may queue this many rows before a producer waits for the store: the writer's queue
# is the biggest thing a watch holds in memory (~500 bytes a row: ~2.5 MB; at 20,000 it
# was 10 MB, for no more throughput: the writer commits 1000 rows a batch).
BACKPRESSURE_ROWS = 5_000
# Redaction time-outs reported as agent records at most this many times a run, then every 1000th.
TIMEOUT_REPORTS = 10
ACTIONS_KEPT = 100  # per container
# State changes kept in memory (~350 bytes each: ~1.4 MB). Every change is in the store; in
# memory they are read only by an experiment looking back over its own minutes
# (agent/experiment.py), and counted (the dashboard, the end of a watch), so a night of
# crash loops and health flaps must not keep them all.
CHANGES_KEPT = 4096


class ChangeLog:
    """The state changes of a run: how many were made, and the newest CHANGES_KEPT of them.

    `len()` (and `count`) is every change made so far; iterating gives the kept ones, oldest
    first; `dropped` says how many fell out. Read a whole run's changes from the store.
    """

    __slots__ = ("_recent", "count")

    def __init__(self, keep: int | None = None) -> None:
        self._recent: deque[StateChange] = deque(maxlen=keep if keep is not None else CHANGES_KEPT)
        self.count = 0

    def append(self, change: StateChange) -> None:
        self._recent.append(change)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[StateChange]:
        return iter(self._recent)

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def dropped(self) -> int:
        """Changes made but no longer kept in memory (the oldest)."""
        return self.count - len(self._recent)

    @property
    def kept(self) -> int:
        return len(self._recent)


def causes_death(action: str) -> bool:
    """An action of podwarden's that ends the container's run: an experiment's crash, a stop,
    kill or restart (through podman or a hook)."""
    return action == "crash" or any(word in action for word in ("stop", "kill", "restart"))


@dataclass
class Sink:
    """Where observations go: redaction (once), the store (if any), the machines, callbacks.

    Text is redacted here, before anything sees it (the store, the machines, the
    dashboard), and exactly once: a pattern that is not idempotent would otherwise make
    the stored text differ from what the machines saw.
    """

    fleet: Fleet
    store: object | None = None  # store.StoreWriter
    run_id: int | None = None
    on_change: list[ChangeCallback] = field(default_factory=list)
    on_observation: list[ObsCallback] = field(default_factory=list)
    on_fed: list[FedCallback] = field(default_factory=list)
    on_finding: list[FindingCallback] = field(default_factory=list)
    redactor: object | None = None  # store.Redactor; defaults to the store's
    # every change made, counted; the newest CHANGES_KEPT kept in memory, in order (ChangeLog)
    changes: ChangeLog = field(default_factory=ChangeLog)
    # podwarden's own recent death-causing actions per (target, container): their times (a check
    # tells the deaths they caused from the container's own)
    actions: dict[tuple[str, str], deque[int]] = field(default_factory=dict)
    _timeouts_seen: int = 0

    def __post_init__(self) -> None:
        if self.redactor is None and self.store is not None:
            self.redactor = self.store.redactor  # type: ignore[attr-defined]

    async def backpressure(self) -> None:
        """Wait for the store when a flood has queued more than it should hold in memory."""
        if self.store is not None and self.store.pending > BACKPRESSURE_ROWS:  # type: ignore[attr-defined]
            await self.store.flush()  # type: ignore[attr-defined]

    def put(self, obs: Observation) -> list[StateChange]:
        """Redact, record one observation, feed it to the machines, and pass on the changes."""
        if self.redactor:
            obs = self.redactor.observation(obs)  # type: ignore[attr-defined]
            self._report_timeouts(obs)
        obs_id = (self.store.add(obs, self.run_id, redacted=True)  # type: ignore[attr-defined]
                  if self.store is not None else None)
        if obs.kind == Kind.ACTION and not obs.dry_run:  # type: ignore[union-attr]
            self.remember_action(obs.target, obs.container, obs.at_ns, obs.action)  # type: ignore[union-attr]
        changes = self.fleet.feed(obs)
        for change in changes:
            self.changes.append(change)
            if self.store is not None:
                self.store.add_change(change, obs_id, self.run_id)  # type: ignore[attr-defined]
            for callback in self.on_change:
                callback(change)
        for callback in self.on_observation:
            callback(obs)
        for fed in self.on_fed:
            fed(obs, changes, obs_id)
        return changes

    def remember_action(self, target: str, container: str, at_ns: int, action: str) -> None:
        """Keep the time of one of podwarden's own actions that ends a container's run (bounded)."""
        if container and causes_death(action):
            self.actions.setdefault((target, container), deque(maxlen=ACTIONS_KEPT)).append(at_ns)

    def add_finding(self, finding: Any, at_ns: int) -> None:
        """Store a finding (shaped like agent.diagnosis.Finding) with the run, and pass it on (hooks)."""
        if self.store is not None:
            self.store.add_finding(self.run_id, target=finding.target, container=finding.container,  # type: ignore[attr-defined]
                                   rule=finding.rule, severity=finding.severity, message=finding.message,
                                   cause=finding.cause, fix=finding.fix, evidence=finding.evidence, at_ns=at_ns)
        for callback in self.on_finding:
            callback(finding)

    def _report_timeouts(self, obs: Observation) -> None:
        """A user's redaction pattern that ran out of time on a line: the line was stored as
        `[REDACTED: redaction timed out]`; say which pattern, so the user can fix it."""
        count = getattr(self.redactor, "timeouts", 0)
        if count <= self._timeouts_seen or isinstance(obs, AgentObs):
            return
        self._timeouts_seen = count
        if count <= TIMEOUT_REPORTS or count % 1000 == 0:
            slow = getattr(self.redactor, "timeouts_by_pattern", {}) or {}
            worst = max(slow, key=slow.get) if slow else "?"
            self.put(AgentObs(obs.target, "", obs.at_ns, "redaction-timed-out",
                              f"{count} text(s) so far ran past the redaction time budget and were stored "
                              f"fully redacted; slowest pattern: {worst!r} (last in {obs.container or 'the target'})"))

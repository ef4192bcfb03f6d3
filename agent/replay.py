"""`podwarden replay`: stored observations, in the order they arrived, through fresh machines.

The store keeps exactly what the machines were fed, in that order (agent/sink.py), so a
replay of a run gives back the run's stored state changes. This is the one invariant made
checkable: `podwarden replay --run ID --verify` and the tests compare the two, change by
change. A window (`--since/--until`, e.g. a soak's) that starts inside a run is replayed
from the newest snapshot of each container before it (the machines' warm-up, its changes
not shown) and then every observation in it; such a replay shows what happened in the
window, but only a whole run can be verified (the live machines knew the run's past).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agent.config import Config
from agent.windows import WINDOW_END, WINDOW_START, drift_detector
from machines.container import Fleet, MachineSettings, StateChange
from store import ChangeRecord, ObservationRecord, StoreReader

_S = 1_000_000_000


def settings_of(config: dict[str, Any]) -> MachineSettings:
    """The machine settings a run was recorded with (its stored config), for an exact replay."""
    machine = config.get("machine") or {}
    defaults = MachineSettings()
    return MachineSettings(
        crashloop_deaths=int(machine.get("crashloop_deaths", defaults.crashloop_deaths)),
        crashloop_window_ns=int(float(machine.get("crashloop_window", defaults.crashloop_window_ns / _S)) * _S),
        stable_period_ns=int(float(machine.get("stable_period", defaults.stable_period_ns / _S)) * _S),
    )


@dataclass(frozen=True)
class Replayed:
    """One change the replay made: which stored observation made it, and the change."""

    observation_id: int
    change: StateChange

    def key(self) -> tuple:
        c = self.change
        return (self.observation_id, c.target, c.container, c.at_ns, str(c.from_state), str(c.to_state),
                c.cause, c.contradiction)


def stored_key(record: ChangeRecord) -> tuple:
    """A stored change in the shape of `Replayed.key`."""
    return (record.observation_id, record.target, record.container, record.at_ns, record.from_state,
            record.to_state, record.cause, record.contradiction)


def replay(records: Iterable[ObservationRecord], settings: MachineSettings,
           warm_up: Iterable[ObservationRecord] = (), on_change: Callable[[Replayed], None] | None = None,
           counter: list[int] | None = None,
           on_fed: Callable[[Fleet, ObservationRecord, list[StateChange]], None] | None = None) -> list[Replayed]:
    """Feed `warm_up` then `records` (in the order given) to fresh machines; every change the
    records make (the warm-up's are not kept), each passed to `on_change` as it is made, and
    each record with the fleet and its changes to `on_fed` (drift is fed there, as live)."""
    fleet = Fleet(settings)
    made: list[Replayed] = []
    try:
        for record in warm_up:
            fleet.feed(record.obs)
        for record in records:
            if counter is not None:
                counter[0] += 1
            changes = fleet.feed(record.obs)
            for change in changes:
                item = Replayed(record.id, change)
                made.append(item)
                if on_change is not None:
                    on_change(item)
            if on_fed is not None:
                on_fed(fleet, record, changes)
    finally:
        fleet.close()
    return made


def replay_run(reader: StoreReader, run_id: int) -> tuple[list[Replayed], list[ChangeRecord]]:
    """A run replayed with its own settings, and the changes stored live, both in the order made."""
    run = reader.run(run_id)
    replayed = replay(reader.arrival_records(run_id=run_id, lean_logs=True), settings_of(run.config))
    stored = sorted(reader.changes(run_id=run_id), key=lambda record: record.id)
    return replayed, stored


def first_difference(replayed: list[Replayed], stored: list[ChangeRecord]) -> str | None:
    """None when the replay made exactly the stored changes, else the first difference, in words."""
    for index, (again, live) in enumerate(zip(replayed, stored)):
        if again.key() != stored_key(live):
            return f"change {index}: replay made {again.key()}, stored {stored_key(live)}"
    if len(replayed) != len(stored):
        longer, which = (replayed, "replay made") if len(replayed) > len(stored) else (stored, "stored")
        extra = longer[min(len(replayed), len(stored))]
        shown = extra.key() if isinstance(extra, Replayed) else stored_key(extra)
        return f"{which} {abs(len(replayed) - len(stored))} more change(s), first {shown}"
    return None


# ---------------------------------------------------------------- the verb


@dataclass
class ReplayOutcome:
    """What a replay did: its scope, how much it read, the changes it made, and the verification."""

    run_id: int | None
    since_ns: int | None
    until_ns: int | None
    target: str | None
    observations: int = 0
    warm_up: int = 0
    changes: list[Replayed] = field(default_factory=list)
    drifts: list[Any] = field(default_factory=list)  # machines.drift.Drift, with the config of now
    actions: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    stored: int | None = None  # the stored changes compared (with --verify)
    difference: str | None = None

    @property
    def verified(self) -> bool | None:
        return None if self.stored is None else self.difference is None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "since": self.since_ns, "until": self.until_ns, "target": self.target,
                "observations": self.observations, "warm_up_snapshots": self.warm_up,
                "verified": self.verified, "stored_changes": self.stored, "difference": self.difference,
                "changes": [change_json(item) for item in self.changes],
                "drifts": [drift.to_json() for drift in self.drifts], "actions": self.actions,
                "findings": self.findings}


def change_json(item: Replayed) -> dict[str, Any]:
    c = item.change
    return {"observation_id": item.observation_id, "target": c.target, "container": c.container, "at_ns": c.at_ns,
            "from_state": str(c.from_state), "to_state": str(c.to_state), "cause": c.cause,
            "contradiction": c.contradiction}


def _settings_for(reader: StoreReader, run_id: int | None, until_ns: int | None) -> MachineSettings:
    """The machine settings of the run (or of the newest run started before the window's end)."""
    if run_id is not None:
        return settings_of(reader.run(run_id).config)
    runs = [run for run in reader.runs() if until_ns is None or run.started_ns < until_ns]
    return settings_of(runs[-1].config) if runs else MachineSettings()


def scope(reader: StoreReader, run_id: int | None, soak_run: int | None, since_ns: int | None,
          until_ns: int | None) -> tuple[int | None, int | None, int | None]:
    """What to replay, as (run_id, since_ns, until_ns): the given run or window, the soak window
    of `soak_run`, or else the newest run. Raises ValueError (bad combination, no soak, no run)
    and NoRun."""
    if soak_run is not None:
        if since_ns is not None or until_ns is not None or run_id is not None:
            raise ValueError("--soak RUN: the window is the soak's; drop --run, --since and --until")
        reader.run(soak_run)  # NoRun names it
        soaks = [e for e in reader.experiments(run_id=soak_run) if e.kind == "soak"]
        if not soaks:
            raise ValueError(f"--soak {soak_run}: run {soak_run} has no soak "
                             "(`podwarden query experiments --kind soak` lists them)")
        ended = soaks[-1].ended_ns
        return None, soaks[-1].started_ns, None if ended is None else ended + 1  # the window's end record in it
    if run_id is not None and (since_ns is not None or until_ns is not None):
        raise ValueError("--run or --since/--until, not both")
    if run_id is None and since_ns is None and until_ns is None:
        last = reader.last_run()
        if last is None:
            raise ValueError(f"{reader.path} holds no run yet")
        return last.id, None, None
    return run_id, since_ns, until_ns


MAX_LISTED = 10_000  # drifts, actions and findings a replay lists (changes: all)


def replay_verb(reader: StoreReader, *, run_id: int | None = None, since_ns: int | None = None,
                until_ns: int | None = None, target: str | None = None, verify: bool = False,
                speed: float | None = None, on_change: Callable[[Replayed], None] | None = None,
                progress: Callable[[str], None] | None = None, config: Config | None = None,
                on_item: Callable[[str, int, Any], None] | None = None) -> ReplayOutcome:
    """Replay a run (`run_id`) or a window (`since_ns`..`until_ns`, either open) of the store.

    The machines run with the settings the run was recorded with. With `config` (the config
    of now), drift is found again in every window the store marks (a watch's, a soak's),
    with today's expectations: new rules apply to old nights. podwarden's actions and the
    stored findings come in the timeline too; `on_item(kind, at_ns, item)` gets each
    (`change`, `drift`, `action`, `finding`) in order. `speed`: pace them at N times the
    speed they happened (gaps capped at 5 s of wall time); None replays at once. `verify`
    (a run only, whole): compare the changes with the stored ones. Raises NoRun,
    StoreError, ValueError (verify without a run).
    """
    if verify and (run_id is None or since_ns is not None or until_ns is not None or target is not None):
        raise ValueError("--verify needs a whole run (--run ID without --since, --until or --target): only a run's "
                         "replay starts where its live machines started")
    outcome = ReplayOutcome(run_id, since_ns, until_ns, target)
    settings = _settings_for(reader, run_id, until_ns)
    warm_up: list[ObservationRecord] = []
    if run_id is None and since_ns is not None:
        warm_up = reader.last_snapshots_before(since_ns, target)
        outcome.warm_up = len(warm_up)
    counter = [0]
    last_at: list[int | None] = [None]
    shown = [time.monotonic()]
    made = [0]
    windowed = run_id is not None or since_ns is not None or until_ns is not None
    findings = sorted((f for f in reader.findings(run_id=run_id) if windowed
                       and (target is None or f.target == target)
                       and (since_ns is None or f.at_ns >= since_ns) and (until_ns is None or f.at_ns < until_ns)),
                      key=lambda f: f.at_ns)
    pending = list(reversed(findings))

    def emit(kind: str, at: int, item: Any) -> None:
        """One timeline item, paced, after the stored findings made before it."""
        while kind != "finding" and pending and pending[-1].at_ns <= at:
            finding = pending.pop()
            emit("finding", finding.at_ns, finding)
        if speed:
            if last_at[0] is not None and at > last_at[0]:
                time.sleep(min((at - last_at[0]) / _S / speed, 5.0))
        last_at[0] = at if last_at[0] is None else max(at, last_at[0])
        if kind == "finding" and len(outcome.findings) < MAX_LISTED:
            outcome.findings.append({"target": item.target, "container": item.container, "at_ns": item.at_ns,
                                     "rule": item.rule, "severity": item.severity, "message": item.message})
        if on_item is not None:
            on_item(kind, at, item)

    def paced(item: Replayed) -> None:
        made[0] += 1
        emit("change", item.change.at_ns, item)
        if on_change is not None:
            on_change(item)
        if progress is not None and time.monotonic() - shown[0] >= 5.0:
            shown[0] = time.monotonic()
            progress(f"replayed {counter[0]} observations, {made[0]} changes so far")

    detector: list[Any] = [None]
    targets = [target] if target else sorted({t for run in reader.runs() for t in run.targets})

    def fed(fleet: Fleet, record: ObservationRecord, changes: list[StateChange]) -> None:
        obs = record.obs
        if obs.kind == "action" and len(outcome.actions) < MAX_LISTED:
            outcome.actions.append({"target": obs.target, "container": obs.container, "at_ns": obs.at_ns,
                                    "action": obs.action, "detail": obs.detail, "ok": obs.ok, "dry_run": obs.dry_run})
            emit("action", obs.at_ns, obs)
        if config is None:
            return
        if obs.kind == "agent" and obs.what == WINDOW_START and (detector[0] is None or detector[0].finished):
            detector[0] = drift_detector(config, targets)
            detector[0].start(fleet, obs.at_ns)
            return
        window = detector[0]
        if window is None or not window.started or window.finished:
            return
        found = list(window.feed(obs, changes, record.id))
        if obs.kind == "agent" and obs.what == WINDOW_END:
            found += window.finish(obs.at_ns)
        for drift in found:
            if len(outcome.drifts) < MAX_LISTED:
                outcome.drifts.append(drift)
            emit("drift", drift.at_ns, drift)

    records = reader.arrival_records(run_id=run_id, since_ns=since_ns, until_ns=until_ns, target=target,
                                     lean_logs=True)
    outcome.changes = replay(records, settings, warm_up, paced, counter, fed)
    if detector[0] is not None and not detector[0].finished:
        # a window still open where the replay ends (a soak cut short): it closes there
        for drift in detector[0].finish(last_at[0] or 0):
            if len(outcome.drifts) < MAX_LISTED:
                outcome.drifts.append(drift)
            emit("drift", drift.at_ns, drift)
    while pending:
        finding = pending.pop()
        emit("finding", finding.at_ns, finding)
    outcome.observations = counter[0]
    if verify and run_id is not None:
        stored = sorted(reader.changes(run_id=run_id), key=lambda record: record.id)
        outcome.stored = len(stored)
        outcome.difference = first_difference(outcome.changes, stored)
    return outcome

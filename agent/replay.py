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
           counter: list[int] | None = None) -> list[Replayed]:
    """Feed `warm_up` then `records` (in the order given) to fresh machines; every change the
    records make (the warm-up's are not kept), each passed to `on_change` as it is made."""
    fleet = Fleet(settings)
    made: list[Replayed] = []
    try:
        for record in warm_up:
            fleet.feed(record.obs)
        for record in records:
            if counter is not None:
                counter[0] += 1
            for change in fleet.feed(record.obs):
                item = Replayed(record.id, change)
                made.append(item)
                if on_change is not None:
                    on_change(item)
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
    stored: int | None = None  # the stored changes compared (with --verify)
    difference: str | None = None

    @property
    def verified(self) -> bool | None:
        return None if self.stored is None else self.difference is None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "since": self.since_ns, "until": self.until_ns, "target": self.target,
                "observations": self.observations, "warm_up_snapshots": self.warm_up,
                "verified": self.verified, "stored_changes": self.stored, "difference": self.difference,
                "changes": [change_json(item) for item in self.changes]}


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
        return None, soaks[-1].started_ns, soaks[-1].ended_ns
    if run_id is not None and (since_ns is not None or until_ns is not None):
        raise ValueError("--run or --since/--until, not both")
    if run_id is None and since_ns is None and until_ns is None:
        last = reader.last_run()
        if last is None:
            raise ValueError(f"{reader.path} holds no run yet")
        return last.id, None, None
    return run_id, since_ns, until_ns


def replay_verb(reader: StoreReader, *, run_id: int | None = None, since_ns: int | None = None,
                until_ns: int | None = None, target: str | None = None, verify: bool = False,
                speed: float | None = None, on_change: Callable[[Replayed], None] | None = None,
                progress: Callable[[str], None] | None = None) -> ReplayOutcome:
    """Replay a run (`run_id`) or a window (`since_ns`..`until_ns`, either open) of the store.

    `speed`: pace the changes at N times the speed they happened (gaps capped at 5 s of
    wall time); None replays at once. `verify` (a run only, whole): compare with the
    stored changes. Raises NoRun, StoreError, ValueError (verify without a run).
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

    def paced(item: Replayed) -> None:
        made[0] += 1
        if speed:
            at = item.change.at_ns
            if last_at[0] is not None and at > last_at[0]:
                time.sleep(min((at - last_at[0]) / _S / speed, 5.0))
            last_at[0] = at
        if on_change is not None:
            on_change(item)
        if progress is not None and time.monotonic() - shown[0] >= 5.0:
            shown[0] = time.monotonic()
            progress(f"replayed {counter[0]} observations, {made[0]} changes so far")

    records = reader.arrival_records(run_id=run_id, since_ns=since_ns, until_ns=until_ns, target=target,
                                     lean_logs=True)
    outcome.changes = replay(records, settings, warm_up, paced, counter)
    outcome.observations = counter[0]
    if verify and run_id is not None:
        stored = sorted(reader.changes(run_id=run_id), key=lambda record: record.id)
        outcome.stored = len(stored)
        outcome.difference = first_difference(outcome.changes, stored)
    return outcome

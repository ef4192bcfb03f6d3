"""Replay: a stored run's observations, in the order they were stored, through fresh machines.

The store keeps exactly what the machines were fed, in that order (agent/sink.py), so a
replay gives back the run's stored state changes. This is the one invariant made
checkable: `podwarden replay --verify` (later) and the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

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


def replay(records: Iterable[ObservationRecord], settings: MachineSettings) -> list[Replayed]:
    """Feed `records` (in the order given) to fresh machines; every change they make."""
    fleet = Fleet(settings)
    made: list[Replayed] = []
    try:
        for record in records:
            made.extend(Replayed(record.id, change) for change in fleet.feed(record.obs))
    finally:
        fleet.close()
    return made


def replay_run(reader: StoreReader, run_id: int) -> tuple[list[Replayed], list[ChangeRecord]]:
    """A run replayed with its own settings, and the changes stored live, both in the order made."""
    run = reader.run(run_id)
    records = sorted(reader.observation_records(run_id=run_id), key=lambda record: record.id)
    replayed = replay(records, settings_of(run.config))
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

"""Rows read back from the store, as frozen values (JSON columns already parsed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from machines.observations import Observation


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One podwarden command run that recorded into the store."""

    id: int
    command: str
    targets: tuple[str, ...]
    started_ns: int
    ended_ns: int | None
    verdict: str | None
    config: dict[str, Any]
    pid: int | None


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """A stored observation with its row id and run."""

    id: int
    run_id: int | None
    obs: Observation


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """A stored state change of one container."""

    id: int
    observation_id: int | None
    run_id: int | None
    target: str
    container: str
    at_ns: int
    from_state: str
    to_state: str
    cause: str
    contradiction: bool
    obs_kind: str | None


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """A stored finding: what is wrong, why, and how to fix it."""

    id: int
    run_id: int | None
    target: str
    container: str
    rule: str
    severity: str
    message: str
    cause: str
    fix: str
    evidence: Any
    at_ns: int


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """A stored experiment with its steps."""

    id: int
    run_id: int | None
    kind: str
    subject: str
    started_ns: int
    ended_ns: int | None
    verdict: str | None
    steps: Any


@dataclass(frozen=True, slots=True)
class ContainerCounts:
    """What happened to one container in a window, counted for the report."""

    target: str
    container: str
    deaths: int  # podman `died` events
    changes: int  # state changes
    error_lines: int  # log lines that matched the error patterns

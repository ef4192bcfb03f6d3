"""Observation types: frozen values rendered when they happened, stored exactly as sent.

Every observation has a target, a container name ("" for target-level records) and
`at_ns`, nanoseconds since the epoch, taken from podman's own timestamp where there
is one. Machines consume observations; the store keeps them; replay rebuilds them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Mapping


class Kind(StrEnum):
    """The kind of an observation, as stored in `observations.kind`."""

    EVENT = "event"
    LOG = "log"
    SNAPSHOT = "snapshot"
    PROBE = "probe"
    ACTION = "action"
    AGENT = "agent"


_COMMON = ("target", "container", "at_ns")
# Fields the store keeps in columns of their own, not in the `data` JSON.
COLUMN_FIELDS = ("seq",)
_NOT_DATA = frozenset(_COMMON + COLUMN_FIELDS)
# Rarely set fields, left out of `data` when None (a missing key reads back as None).
OMITTED_WHEN_NONE = frozenset({"resume"})


@dataclass(frozen=True, slots=True)
class EventObs:
    """One podman event of a container (create, start, died, health_status, ...)."""

    kind: ClassVar[Kind] = Kind.EVENT
    target: str
    container: str
    at_ns: int
    container_id: str
    status: str
    exit_code: int | None = None
    health_status: str | None = None
    image: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LogObs:
    """One line a container printed; `is_error` says whether its error patterns matched."""

    kind: ClassVar[Kind] = Kind.LOG
    target: str
    container: str
    at_ns: int
    line: str
    stream: str = "stdout"
    is_error: bool = False
    # The line's place in its source, its identity (two identical lines in one stamp are two
    # lines): the byte offset of its first record in conmon's log file when read from there,
    # else its index among the lines sharing its timestamp.
    seq: int = 0
    # Where a resumed follow may start again when `seq` is no such place (the other stream had
    # a line open when this one began): the last offset before it at which no line was open.
    resume: int | None = None


@dataclass(frozen=True, slots=True)
class SnapshotObs:
    """The state of one container as `podman inspect` (or its absence) showed it."""

    kind: ClassVar[Kind] = Kind.SNAPSHOT
    target: str
    container: str
    at_ns: int
    exists: bool
    container_id: str = ""
    status: str = ""  # podman's State.Status: created, running, exited, paused, stopped, ...
    health: str | None = None  # podman's State.Health.Status, None without a health check
    exit_code: int | None = None
    pid: int = 0
    restart_count: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    restart_policy: str = ""
    memory: int = 0
    image: str = ""
    oom_killed: bool = False
    # podman's health bookkeeping (Config.Healthcheck and State.Health): the machine judges a
    # failed check the way podman does (failures inside the start period do not count; the
    # state turns unhealthy only when FailingStreak reaches Retries)
    health_failing_streak: int = 0
    health_retries: int = 0
    health_start_period_ns: int = 0
    stopped_by_user: bool | None = None  # podman 5.x only; None when podman does not say
    # HostConfig.RestartPolicy.MaximumRetryCount (on-failure:N; 0 = no limit): once RestartCount
    # reaches it podman stops restarting, so an unrestarted death is then no sign of a user stop
    restart_max_retries: int = 0


@dataclass(frozen=True, slots=True)
class ProbeObs:
    """The result of one check (exec, http, tcp, healthcheck, service, logs)."""

    kind: ClassVar[Kind] = Kind.PROBE
    target: str
    container: str
    at_ns: int
    probe: str
    probe_type: str
    ok: bool
    latency_ms: float = 0.0
    excerpt: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ActionObs:
    """Something podwarden did or would do (experiment step, remediation, hook)."""

    kind: ClassVar[Kind] = Kind.ACTION
    target: str
    container: str
    at_ns: int
    action: str
    detail: str = ""
    dry_run: bool = False
    ok: bool = True


@dataclass(frozen=True, slots=True)
class AgentObs:
    """A lifecycle record of podwarden itself: connected, lost, reconnecting, backfilled."""

    kind: ClassVar[Kind] = Kind.AGENT
    target: str
    container: str
    at_ns: int
    what: str
    detail: str = ""


Observation = EventObs | LogObs | SnapshotObs | ProbeObs | ActionObs | AgentObs

_CLASSES: dict[Kind, type] = {
    Kind.EVENT: EventObs,
    Kind.LOG: LogObs,
    Kind.SNAPSHOT: SnapshotObs,
    Kind.PROBE: ProbeObs,
    Kind.ACTION: ActionObs,
    Kind.AGENT: AgentObs,
}


def obs_data(obs: Observation) -> dict[str, Any]:
    """The kind-specific fields of an observation (those the store keeps in `data`), as a JSON-ready dict."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(obs):
        if field.name in _NOT_DATA:
            continue
        value = getattr(obs, field.name)
        if value is None and field.name in OMITTED_WHEN_NONE:
            continue
        if field.name == "attributes":
            value = dict(value)
        data[field.name] = value
    return data


def obs_to_json(obs: Observation) -> str:
    """The kind-specific fields as compact JSON (what the store keeps in `data`)."""
    return json.dumps(obs_data(obs), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def obs_from_record(kind: str, target: str, container: str, at_ns: int,
                    data: Mapping[str, Any] | str, seq: int | None = None) -> Observation:
    """Rebuild an observation from its stored parts (inverse of `obs_data` plus the `seq` column).

    Raises ValueError for an unknown kind and TypeError for fields that do not fit.
    """
    cls = _CLASSES[Kind(kind)]
    fields = json.loads(data) if isinstance(data, str) else dict(data)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in fields.items() if k in known and k not in _NOT_DATA}
    if seq is not None and "seq" in known:
        kwargs["seq"] = int(seq)
    if "attributes" in kwargs:
        kwargs["attributes"] = tuple(sorted((str(k), str(v)) for k, v in dict(kwargs["attributes"]).items()))
    return cls(target=target, container=container, at_ns=int(at_ns), **kwargs)

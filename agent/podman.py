"""The podman vocabulary: argv builders for podman commands and total parsers of their output.

Builders return argv lists (the transport quotes them); every container name is checked
against CONTAINER_NAME_RE first and refused with InvalidContainerName. Parsers never raise
on bad input: they return a `ParseError` value for the caller to record.

podman 4.x / 5.x differences handled here (4.3.1 measured on this machine; 5.x read from
containers/podman's `cmd/podman/system/events.go`, `libpod/events/events.go`,
`libpod/events.go`, `libpod/define/container_inspect.go`):

- events, time: 4.x `"Time"` is an RFC3339Nano string in the node's zone; 5.x has
  `"time"` (seconds) and `"timeNano"` (ns). We prefer timeNano, then Time, then time.
- events, exit code: 4.x omits `ContainerExitCode` when it is 0 (so a `died` or
  `exec_died` without it means 0); 5.x sets it (a pointer, `omitempty`) on died,
  exec_died and remove, 0 included, and leaves it out elsewhere; a null reads as unknown.
- events, health: both spell it `health_status` (top-level). 4.3 reports the status
  *before* the check that fired the event (one behind; podman#19237), 5.x the result.
- events: 4.3 writes a `stop` event for `podman stop` only sometimes (3 of 6 stops of a
  --stop-signal KILL container, 0 of 6 of one that traps TERM), stamped ~40 ms before
  the died; it writes every `exec_died` twice, a few ms apart (two keys, both stored:
  the store keeps podman's record as it is).
- ps: 4.3 has no `Restarts` (inspect's RestartCount has it); 5.x has it.
- inspect: 4.x always has `State.Health` (Status "" without a health check), so whether
  a check exists is decided by `Config.Healthcheck`; 5.x omits Health without one.
  `State.StoppedByUser` exists only in 5.x and is omitted there when false (pass the
  version to `parse_inspect` to read its absence as False).
  `--cap-drop ALL` shows as the explicit list of dropped default caps, not "ALL";
  EffectiveCaps/BoundingCaps show what is left.
- inspect of several names where one is missing: exit 125, stdout still a JSON array
  of the found ones (in order), one "no such container NAME" line per missing name on
  stderr. Use `missing_containers` to name the absent ones.
- logs: `podman logs --timestamps` prefixes `TIME ` (RFC3339Nano, always 9 digits); with
  more than one container `NAME TIME ` (`--names`; without it the 12-char id). With one
  container `--names` adds nothing. TIME always has nine fraction digits
  (`...T10:13:05.969260880Z`, trailing zero kept). A line printed without a trailing newline is glued
  to the next record (`split_glued_log_line`). Container stderr goes to podman's
  stderr. One missing name makes the whole command fail (125) with no output. A
  followed container that exits (a restart too) drops out of `logs -f` for good while
  the others continue.
- `--since` (events and logs) is strictly after the given time; `--until` in the past
  returned no events at all on 4.3 with the file events logger.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, NamedTuple, Sequence

from agent.names import CONTAINER_NAME_RE
from agent.errors import InvalidContainerName
from machines.observations import EventObs, SnapshotObs

NS_PER_S = 1_000_000_000
EXCERPT_CHARS = 200
# Go's int and UnixNano are 64-bit, and so are SQLite integers: nothing wider gets through.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ---------------------------------------------------------------- parse errors


@dataclass(frozen=True, slots=True)
class ParseError:
    """Output podman gave us that we could not read: recorded, never raised."""

    source: str  # "event", "ps", "inspect", "log", "version", "info"
    reason: str
    excerpt: str


def _excerpt(text: Any) -> str:
    return str(text)[:EXCERPT_CHARS]


class _Bad(Exception):
    """Internal: a field of the input has the wrong shape (turned into ParseError here)."""


# ---------------------------------------------------------------- time

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(Z|z|[+-]\d{2}:?\d{2})",
    re.ASCII,
)
_TIME_PATTERN = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
# The first and last instants `format_time_ns` can write (years 0001..9999, UTC).
MIN_TIME_NS = (_dt.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400 * NS_PER_S
MAX_TIME_NS = (_dt.date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * 86400 * NS_PER_S - 1


def parse_time_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC3339(Nano) time with any offset; exact.

    More than 9 fraction digits are truncated. Raises ValueError for anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a time string: {text!r:.80}")
    match = _RFC3339_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC3339 time: {text!r:.80}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    date = _dt.date(year, month, day)  # raises ValueError for 2026-02-30
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time of day out of range: {text!r:.80}")
    offset_s = 0
    if zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:])
        if off_h > 23 or off_m > 59:
            raise ValueError(f"zone offset out of range: {text!r:.80}")
        offset_s = (off_h * 3600 + off_m * 60) * (-1 if zone[0] == "-" else 1)
    seconds = (date.toordinal() - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_s) * NS_PER_S + int(fraction[:9].ljust(9, "0"))


def format_time_ns(ns: int) -> str:
    """RFC3339Nano in UTC with all 9 fraction digits, as `--since` takes it.

    Raises ValueError outside years 0001..9999 (MIN_TIME_NS..MAX_TIME_NS).
    """
    if isinstance(ns, bool) or not isinstance(ns, int):
        raise TypeError(f"nanoseconds must be an int, not {type(ns).__name__}")
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise ValueError(f"{ns} ns is outside years 0001..9999")
    seconds, fraction = divmod(ns, NS_PER_S)
    days, second_of_day = divmod(seconds, 86400)
    date = _dt.date.fromordinal(_EPOCH_ORDINAL + days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    return f"{date.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}.{fraction:09d}Z"


def _time_or_zero(value: Any, what: str) -> int:
    """ns of an optional time string; Go's zero time (year 0001) and "" mean unset (0)."""
    if value is None or value == "":
        return 0
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a time string")
    if value.startswith("0001-01-01"):
        return 0
    return _checked_ns(value, what)


def _checked_ns(text: str, what: str) -> int:
    """parse_time_ns within int64, or _Bad."""
    try:
        ns = parse_time_ns(text)
    except ValueError as exc:
        raise _Bad(f"{what}: {exc}") from None
    if not INT64_MIN <= ns <= INT64_MAX:
        raise _Bad(f"{what} is outside the years 1678..2262 that fit in int64 ns")
    return ns


# ---------------------------------------------------------------- command builders


def _name(name: str) -> str:
    if not isinstance(name, str) or CONTAINER_NAME_RE.fullmatch(name) is None:
        raise InvalidContainerName(str(name))
    return name


def _names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):  # a bare string would be iterated per character
        names = [names]
    checked = [_name(n) for n in names]
    if not checked:
        raise ValueError("at least one container name is required")
    return checked


def ps_cmd(podman: Sequence[str]) -> list[str]:
    """`podman ps -a --format json`: every container, running or not."""
    return [*podman, "ps", "-a", "--format", "json"]


def inspect_cmd(podman: Sequence[str], names: Iterable[str]) -> list[str]:
    """`podman container inspect NAME...`; raises InvalidContainerName.

    With a missing name podman 4.3 exits 125 but still prints the others as a JSON
    array: parse stdout whatever the exit status, then call `missing_containers`.
    """
    return [*podman, "container", "inspect", *_names(names)]


def events_cmd(podman: Sequence[str], since_ns: int | None = None, until_ns: int | None = None,
               containers: Iterable[str] = (), follow: bool = True) -> list[str]:
    """`podman events` of containers as JSON lines; raises InvalidContainerName.

    `since_ns`: events strictly after it (podman's --since is exclusive: to resume
    without loss pass the last stored at_ns minus 1 and let the store drop the repeat).
    With `follow` podman replays from since and keeps streaming; without it, it exits
    at the end of the log. `until_ns` in the past returned nothing on 4.3 with the file
    logger: for a backfill prefer follow=False without until and cut by at_ns.
    Several `containers` are OR-ed by podman.
    """
    argv = [*podman, "events", "--format", "json", "--filter", "type=container"]
    for name in ([containers] if isinstance(containers, str) else containers):
        argv += ["--filter", f"container={_name(name)}"]
    if since_ns is not None:
        argv += ["--since", format_time_ns(since_ns)]
    if until_ns is not None:
        argv += ["--until", format_time_ns(until_ns)]
    if not follow:
        argv.append("--stream=false")
    return argv


def logs_cmd(podman: Sequence[str], names: Iterable[str], since_ns: int | None = None,
             tail: int | None = None, follow: bool = False, timestamps: bool = True) -> list[str]:
    """`podman logs` of one or several containers on one channel; raises InvalidContainerName.

    With several names `--names` is added so each line starts `NAME TIME ` (see
    `parse_log_line`); with one, lines start `TIME `. `since_ns` is exclusive, like
    podman's --since: pass the last stored line's at_ns to resume without a repeat.
    Container stderr arrives on podman's stderr, not stdout.
    """
    checked = _names(names)
    argv = [*podman, "logs"]
    if timestamps:
        argv.append("--timestamps")
    if len(checked) > 1:
        argv.append("--names")
    if since_ns is not None:
        argv += ["--since", format_time_ns(since_ns)]
    if tail is not None:
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"tail must be a non-negative int, not {tail!r}")
        argv += ["--tail", str(tail)]
    if follow:
        argv.append("--follow")
    return argv + checked


def healthcheck_cmd(podman: Sequence[str], name: str) -> list[str]:
    """`podman healthcheck run NAME` (0 healthy, 1 unhealthy, else error); raises InvalidContainerName."""
    return [*podman, "healthcheck", "run", _name(name)]


def version_cmd(podman: Sequence[str]) -> list[str]:
    """`podman version --format json`."""
    return [*podman, "version", "--format", "json"]


def info_cmd(podman: Sequence[str]) -> list[str]:
    """`podman info --format json`."""
    return [*podman, "info", "--format", "json"]


def kill_main_process_cmd(podman: Sequence[str], pid: int, rootless: bool) -> list[str]:
    """SIGKILL a container's main process from the host: a crash, not a user stop.

    Rootless needs the user namespace (`podman unshare kill -9 PID`) to signal processes
    running as a sub-uid. Raises ValueError for a pid that is not an int > 1.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise ValueError(f"refusing to kill pid {pid!r}: need a container's main pid (> 1)")
    if rootless:
        return [*podman, "unshare", "kill", "-9", str(pid)]
    return ["kill", "-9", str(pid)]


def stop_cmd(podman: Sequence[str], name: str, timeout_s: int | None = None) -> list[str]:
    """`podman stop [--time N] NAME` (sets StoppedByUser); raises InvalidContainerName."""
    argv = [*podman, "stop"]
    if timeout_s is not None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 0:
            raise ValueError(f"stop timeout must be a non-negative int, not {timeout_s!r}")
        argv += ["--time", str(timeout_s)]
    return argv + [_name(name)]


def start_cmd(podman: Sequence[str], name: str) -> list[str]:
    """`podman start NAME`; raises InvalidContainerName."""
    return [*podman, "start", _name(name)]


def restart_cmd(podman: Sequence[str], name: str) -> list[str]:
    """`podman restart NAME` (writes `restart` before its `died`); raises InvalidContainerName."""
    return [*podman, "restart", _name(name)]


_SIGNAL_RE = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+-]*|\d{1,2}", re.ASCII | re.IGNORECASE)


def kill_cmd(podman: Sequence[str], name: str, signal: str = "KILL") -> list[str]:
    """`podman kill --signal SIG NAME` (sets StoppedByUser); raises InvalidContainerName, ValueError."""
    if not isinstance(signal, str) or _SIGNAL_RE.fullmatch(signal) is None:
        raise ValueError(f"invalid signal {signal!r}: use a name like KILL or TERM, or a number")
    return [*podman, "kill", "--signal", signal, _name(name)]


def exec_cmd(podman: Sequence[str], name: str, argv: Sequence[str]) -> list[str]:
    """`podman exec NAME ARGV...`; raises InvalidContainerName, ValueError for an empty argv."""
    if isinstance(argv, str) or not argv:
        raise ValueError("exec needs a non-empty argv list, e.g. ['cat', '/etc/hostname']")
    return [*podman, "exec", _name(name), *(str(a) for a in argv)]


# ---------------------------------------------------------------- JSON helpers


def _load_json(text: Any) -> Any:
    """Decoded JSON, or _Bad. Bytes are decoded with errors='replace'."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise _Bad(f"expected text, got {type(text).__name__}")
    if not text.strip():
        raise _Bad("empty output")
    try:
        return json.loads(text)
    except RecursionError:
        raise _Bad("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and int-too-long
        raise _Bad(f"not JSON: {exc}") from None


_MISSING = object()


def _field(obj: Any, key: str, kind: type | tuple[type, ...], default: Any = _MISSING,
           where: str = "") -> Any:
    """obj[key] checked against `kind`; missing or null gives `default` (or _Bad if none)."""
    label = f"{where}{key}"
    if not isinstance(obj, dict):
        raise _Bad(f"{where.rstrip('.') or 'document'} is not an object")
    value = obj.get(key)
    if value is None:
        if default is _MISSING:
            raise _Bad(f"{label} is missing")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise _Bad(f"{label} should be {'/'.join(k.__name__ for k in kinds)}, not bool")
    if not isinstance(value, kinds):
        raise _Bad(f"{label} should be {'/'.join(k.__name__ for k in kinds)}, not {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise _Bad(f"{label} does not fit in 64 bits")
    return value


def _str_list(value: Any, label: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{label} should be a list of strings")
    return tuple(value)


def _str_pairs(value: Any, label: str) -> tuple[tuple[str, str], ...]:
    """A {str: str} object as sorted pairs (labels, attributes, tmpfs)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _Bad(f"{label} should be an object")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _Bad(f"{label}.{key} should be a string")
    return tuple(sorted(value.items()))


# ---------------------------------------------------------------- events

_EXIT_STATUSES = frozenset({"died", "exec_died"})


def parse_event(line: str, target: str) -> EventObs | ParseError | None:
    """One `podman events --format json` line as an EventObs.

    None for a blank line or a non-container event (image pull, volume, ...).
    """
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", errors="replace")
    if isinstance(line, str) and not line.strip():
        return None
    try:
        data = _load_json(line)
        if not isinstance(data, dict):
            raise _Bad("event is not a JSON object")
        if _field(data, "Type", str) != "container":
            return None
        return _event_from(data, target)
    except _Bad as bad:
        return ParseError("event", str(bad), _excerpt(line))


def _event_from(data: dict[str, Any], target: str) -> EventObs:
    status = _field(data, "Status", str)
    if not status:
        raise _Bad("Status is empty")
    name = _field(data, "Name", str)
    container_id = _field(data, "ID", str, "")
    is_5x = "timeNano" in data or "time" in data
    time_nano = _field(data, "timeNano", int, None)
    time_text = _field(data, "Time", str, None)
    if time_nano is not None:
        at_ns = time_nano
    elif time_text is not None:
        at_ns = _checked_ns(time_text, "Time")
    else:
        seconds = _field(data, "time", int, None)
        if seconds is None:
            raise _Bad("no timeNano, Time or time")
        at_ns = seconds * NS_PER_S
        if not INT64_MIN <= at_ns <= INT64_MAX:
            raise _Bad("time does not fit in 64-bit ns")
    exit_code = _field(data, "ContainerExitCode", int, None)
    if exit_code is None and not is_5x and "ContainerExitCode" not in data and status in _EXIT_STATUSES:
        exit_code = 0  # 4.x omits a zero exit code (omitempty on an int)
    health = _field(data, "health_status", str, None) or None
    return EventObs(
        target=target,
        container=name,
        at_ns=at_ns,
        container_id=container_id,
        status=status,
        exit_code=exit_code,
        health_status=health,
        image=_field(data, "Image", str, ""),
        attributes=_str_pairs(data.get("Attributes"), "Attributes"),
    )


def parse_events(text: str, target: str) -> list[EventObs | ParseError]:
    """Every container event in a batch of JSON lines (a backfill's stdout)."""
    results = (parse_event(line, target) for line in str(text).splitlines())
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- ps


@dataclass(frozen=True, slots=True)
class PsEntry:
    """One container as `podman ps -a --format json` lists it."""

    name: str
    names: tuple[str, ...]
    id: str
    image: str
    state: str  # running, exited, created, paused, ...
    status: str  # human text: "Up 2 minutes (healthy)", "Exited (137) 5 seconds ago"
    exit_code: int
    exited: bool
    pid: int
    created_s: int  # epoch seconds
    started_s: int
    ports: tuple[str, ...]  # "127.0.0.1:8081->80/tcp"
    labels: tuple[tuple[str, str], ...] = ()
    restarts: int | None = None  # 5.x only; 4.3 has no Restarts (inspect's RestartCount has)


def render_port(host_ip: str, host_port: int, container_port: int, protocol: str, count: int = 1) -> str:
    """A port mapping as podman ps shows it: `127.0.0.1:8081->80/tcp`."""
    host = host_ip or "0.0.0.0"
    if count > 1:
        return (f"{host}:{host_port}-{host_port + count - 1}->"
                f"{container_port}-{container_port + count - 1}/{protocol or 'tcp'}")
    return f"{host}:{host_port}->{container_port}/{protocol or 'tcp'}"


def _ps_ports(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("Ports should be a list")
    ports = []
    for item in value:
        where = "Ports[]."
        ports.append(render_port(
            _field(item, "host_ip", str, "", where),
            _field(item, "host_port", int, 0, where),
            _field(item, "container_port", int, 0, where),
            _field(item, "protocol", str, "tcp", where),
            _field(item, "range", int, 1, where),
        ))
    return tuple(ports)


def parse_ps(text: str) -> list[PsEntry] | ParseError:
    """The containers in `podman ps -a --format json` output."""
    try:
        data = _load_json(text)
        if data is None:
            return []
        if not isinstance(data, list):
            raise _Bad("ps output is not a JSON array")
        return [_ps_entry(item) for item in data]
    except _Bad as bad:
        return ParseError("ps", str(bad), _excerpt(text))


def _ps_entry(item: Any) -> PsEntry:
    if not isinstance(item, dict):
        raise _Bad("ps entry is not an object")
    names = _str_list(item.get("Names"), "Names")
    if not names:
        raise _Bad("ps entry without Names")
    return PsEntry(
        name=names[0],
        names=names,
        id=_field(item, "Id", str),
        image=_field(item, "Image", str, ""),
        state=_field(item, "State", str, ""),
        status=_field(item, "Status", str, ""),
        exit_code=_field(item, "ExitCode", int, 0),
        exited=_field(item, "Exited", bool, False),
        pid=_field(item, "Pid", int, 0),
        created_s=_field(item, "Created", int, 0),
        started_s=_field(item, "StartedAt", int, 0),
        ports=_ps_ports(item.get("Ports")),
        labels=_str_pairs(item.get("Labels"), "Labels"),
        restarts=_field(item, "Restarts", int, None),
    )


# ---------------------------------------------------------------- inspect


@dataclass(frozen=True, slots=True)
class HealthLogEntry:
    """One health check run as inspect's State.Health.Log keeps it (the last few)."""

    start_ns: int
    end_ns: int
    exit_code: int  # 0 healthy, 1 unhealthy, -1 timed out (4.3)
    output: str


@dataclass(frozen=True, slots=True)
class MountFacts:
    """One bind or volume mount of a container."""

    type: str
    source: str
    destination: str
    rw: bool


@dataclass(frozen=True, slots=True)
class InspectFacts:
    """What `podman container inspect` says about one container, for every later check."""

    target: str
    at_ns: int  # when we asked (inspect has no timestamp of its own)
    name: str
    id: str
    image: str  # as configured (Config.Image / ImageName), not the image id
    image_id: str
    status: str  # State.Status: created, running, exited, paused, stopped, ...
    running: bool
    pid: int
    exit_code: int
    oom_killed: bool
    started_at_ns: int  # 0 if never
    finished_at_ns: int  # 0 if never
    created_at_ns: int
    restart_count: int  # restarts by the restart policy since the last manual start
    restart_policy: str  # "", "no", "always", "on-failure", "unless-stopped"
    restart_max_retries: int
    health: str | None  # None without a health check; else starting/healthy/unhealthy
    health_failing_streak: int
    health_log: tuple[HealthLogEntry, ...]
    healthcheck_test: tuple[str, ...]  # e.g. ("CMD-SHELL", "wget ...")
    healthcheck_interval_ns: int
    healthcheck_timeout_ns: int
    healthcheck_retries: int
    memory: int  # bytes, 0 = no limit
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]  # --cap-drop ALL shows as the list of dropped default caps
    effective_caps: tuple[str, ...] | None  # what the process keeps; None if not reported
    read_only: bool
    tmpfs: tuple[tuple[str, str], ...]  # (destination, options)
    mounts: tuple[MountFacts, ...]
    network_mode: str
    ports: tuple[str, ...]  # "127.0.0.1:8081->80/tcp"
    user: str
    labels: tuple[tuple[str, str], ...]
    stopped_by_user: bool | None  # 5.x only; None when podman does not say (4.x)
    log_driver: str = ""
    log_path: str = ""
    healthcheck_start_period_ns: int = 0

    def snapshot(self) -> SnapshotObs:
        """The observation the store keeps and the machines consume."""
        return SnapshotObs(
            target=self.target,
            container=self.name,
            at_ns=self.at_ns,
            exists=True,
            container_id=self.id,
            status=self.status,
            health=self.health,
            exit_code=self.exit_code,
            pid=self.pid,
            restart_count=self.restart_count,
            started_at_ns=self.started_at_ns,
            finished_at_ns=self.finished_at_ns,
            restart_policy=self.restart_policy,
            memory=self.memory,
            image=self.image,
            oom_killed=self.oom_killed,
            health_failing_streak=self.health_failing_streak,
            health_retries=self.healthcheck_retries if self.health is not None else 0,
            health_start_period_ns=self.healthcheck_start_period_ns if self.health is not None else 0,
            stopped_by_user=self.stopped_by_user,
            restart_max_retries=self.restart_max_retries,
        )


def missing_snapshot(target: str, name: str, at_ns: int) -> SnapshotObs:
    """The observation that a container was looked for and is not there."""
    return SnapshotObs(target=target, container=name, at_ns=at_ns, exists=False)


_HEX_RE = re.compile(r"[0-9a-f]+")


def missing_containers(requested: Iterable[str], facts: Sequence[InspectFacts]) -> list[str]:
    """The requested names (or ids) that inspect did not return, in request order."""
    found: set[str] = set()
    for fact in facts:
        found.add(fact.name)
        found.add(fact.id)
    requested = [requested] if isinstance(requested, str) else list(requested)
    ids = [fact.id for fact in facts]
    # podman also accepts a unique prefix of an id
    return [name for name in requested
            if name not in found and not (_HEX_RE.fullmatch(name) and any(i.startswith(name) for i in ids))]


def podman_major(version: str) -> int | None:
    """The major number of a podman version string ("4.3.1" -> 4), None if unreadable."""
    match = re.match(r"\s*v?(\d+)\.", str(version))
    return int(match.group(1)) if match else None


def parse_inspect(text: str, target: str, at_ns: int, podman_version: str = "") -> list[InspectFacts] | ParseError:
    """Every container in `podman container inspect` output (stdout even when exit is 125).

    `podman_version` (e.g. NodeInfo.version) lets a missing StoppedByUser on 5.x read as
    False; on 4.x, or when unknown, it stays None.
    """
    try:
        data = _load_json(text)
        if data is None:
            return []
        if not isinstance(data, list):
            raise _Bad("inspect output is not a JSON array")
        major = podman_major(podman_version)
        return [_inspect_one(item, target, at_ns, major) for item in data]
    except _Bad as bad:
        return ParseError("inspect", str(bad), _excerpt(text))


def _health_log(value: Any) -> tuple[HealthLogEntry, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("State.Health.Log should be a list")
    entries = []
    for item in value:
        where = "State.Health.Log[]."
        entries.append(HealthLogEntry(
            start_ns=_time_or_zero(_field(item, "Start", str, "", where), where + "Start"),
            end_ns=_time_or_zero(_field(item, "End", str, "", where), where + "End"),
            exit_code=_field(item, "ExitCode", int, 0, where),
            output=_field(item, "Output", str, "", where),
        ))
    return tuple(entries)


def _inspect_ports(network: dict[str, Any], host: dict[str, Any]) -> tuple[str, ...]:
    bindings = network.get("Ports") or host.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise _Bad("NetworkSettings.Ports should be an object")
    ports = []
    for key, hosts in sorted(bindings.items()):
        port, _, protocol = key.partition("/")
        if hosts is None:  # exposed, not published
            continue
        if not isinstance(hosts, list):
            raise _Bad(f"Ports[{key}] should be a list")
        for binding in hosts:
            host_port = _field(binding, "HostPort", str, "", f"Ports[{key}].")
            host_ip = _field(binding, "HostIp", str, "", f"Ports[{key}].")
            ports.append(f"{host_ip or '0.0.0.0'}:{host_port}->{port}/{protocol or 'tcp'}")
    return tuple(ports)


def _mounts(value: Any) -> tuple[MountFacts, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("Mounts should be a list")
    return tuple(
        MountFacts(
            type=_field(item, "Type", str, "", "Mounts[]."),
            source=_field(item, "Source", str, "", "Mounts[]."),
            destination=_field(item, "Destination", str, "", "Mounts[]."),
            rw=_field(item, "RW", bool, True, "Mounts[]."),
        )
        for item in value
    )


def _inspect_one(item: Any, target: str, at_ns: int, major: int | None) -> InspectFacts:
    if not isinstance(item, dict):
        raise _Bad("inspect entry is not an object")
    state = _field(item, "State", dict)
    config = _field(item, "Config", dict, {})
    host = _field(item, "HostConfig", dict, {})
    network = _field(item, "NetworkSettings", dict, {})

    healthcheck = _field(config, "Healthcheck", dict, {}, "Config.")
    test = _str_list(healthcheck.get("Test"), "Config.Healthcheck.Test")
    has_check = bool(test) and test[0] != "NONE"
    # 4.x always has State.Health, so only Config.Healthcheck says whether a check exists;
    # podman 2.x-3.x called it State.Healthcheck
    health_state = _field(state, "Health", dict, None, "State.")
    if health_state is None:
        health_state = _field(state, "Healthcheck", dict, {}, "State.")
    health = _field(health_state, "Status", str, "", "State.Health.") or None

    policy = _field(host, "RestartPolicy", dict, {}, "HostConfig.")
    stopped_by_user = _field(state, "StoppedByUser", bool, None, "State.")
    if stopped_by_user is None and major is not None and major >= 5:
        stopped_by_user = False  # 5.x omits it when false
    effective = item.get("EffectiveCaps")
    log_config = _field(host, "LogConfig", dict, {}, "HostConfig.")
    name = _field(item, "Name", str)
    if not name:
        raise _Bad("Name is empty")

    return InspectFacts(
        target=target,
        at_ns=at_ns,
        name=name,
        id=_field(item, "Id", str),
        image=_field(config, "Image", str, "", "Config.") or _field(item, "ImageName", str, ""),
        image_id=_field(item, "Image", str, ""),
        status=_field(state, "Status", str, "", "State."),
        running=_field(state, "Running", bool, False, "State."),
        pid=_field(state, "Pid", int, 0, "State."),
        exit_code=_field(state, "ExitCode", int, 0, "State."),
        oom_killed=_field(state, "OOMKilled", bool, False, "State."),
        started_at_ns=_time_or_zero(state.get("StartedAt"), "State.StartedAt"),
        finished_at_ns=_time_or_zero(state.get("FinishedAt"), "State.FinishedAt"),
        created_at_ns=_time_or_zero(item.get("Created"), "Created"),
        restart_count=_field(item, "RestartCount", int, 0),
        restart_policy=_field(policy, "Name", str, "", "HostConfig.RestartPolicy."),
        restart_max_retries=_field(policy, "MaximumRetryCount", int, 0, "HostConfig.RestartPolicy."),
        health=health if has_check else None,
        health_failing_streak=_field(health_state, "FailingStreak", int, 0, "State.Health.") if has_check else 0,
        health_log=_health_log(health_state.get("Log")) if has_check else (),
        healthcheck_test=test if has_check else (),
        healthcheck_interval_ns=_field(healthcheck, "Interval", int, 0, "Config.Healthcheck."),
        healthcheck_timeout_ns=_field(healthcheck, "Timeout", int, 0, "Config.Healthcheck."),
        healthcheck_retries=_field(healthcheck, "Retries", int, 0, "Config.Healthcheck."),
        memory=_field(host, "Memory", int, 0, "HostConfig."),
        cap_add=_str_list(host.get("CapAdd"), "HostConfig.CapAdd"),
        cap_drop=_str_list(host.get("CapDrop"), "HostConfig.CapDrop"),
        effective_caps=None if effective is None else _str_list(effective, "EffectiveCaps"),
        read_only=_field(host, "ReadonlyRootfs", bool, False, "HostConfig."),
        tmpfs=_str_pairs(host.get("Tmpfs"), "HostConfig.Tmpfs"),
        mounts=_mounts(item.get("Mounts")),
        network_mode=_field(host, "NetworkMode", str, "", "HostConfig."),
        ports=_inspect_ports(network, host),
        user=_field(config, "User", str, "", "Config."),
        labels=_str_pairs(config.get("Labels"), "Config.Labels"),
        stopped_by_user=stopped_by_user,
        log_driver=_field(log_config, "Type", str, "", "HostConfig.LogConfig."),
        log_path=_field(log_config, "Path", str, "", "HostConfig.LogConfig."),
        healthcheck_start_period_ns=_field(healthcheck, "StartPeriod", int, 0, "Config.Healthcheck."),
    )


# ---------------------------------------------------------------- logs


class LogLine(NamedTuple):
    """One line of `podman logs --timestamps` output."""

    container: str
    at_ns: int
    text: str


_NAME_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"
_LOG_SINGLE_RE = re.compile(rf"({_TIME_PATTERN})(?: (.*))?", re.ASCII | re.DOTALL)
_LOG_MULTI_RE = re.compile(rf"({_NAME_PATTERN}) ({_TIME_PATTERN})(?: (.*))?", re.ASCII | re.DOTALL)


def parse_log_line(line: str, container: str | None = None,
                   names: Iterable[str] = ()) -> LogLine | ParseError:
    """A `podman logs --timestamps` line: `TIME text` for one `container`, else `NAME TIME text`.

    In multi mode (container None) a non-empty `names` restricts which prefixes count.
    """
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", errors="replace")
    if not isinstance(line, str):
        return ParseError("log", f"expected text, got {type(line).__name__}", _excerpt(line))
    if container is not None:
        match = _LOG_SINGLE_RE.fullmatch(line)
        if match is None:
            return ParseError("log", "no leading timestamp", _excerpt(line))
        name, stamp, text = container, match.group(1), match.group(2)
    else:
        match = _LOG_MULTI_RE.fullmatch(line)
        if match is None:
            return ParseError("log", "no leading `NAME TIME ` prefix", _excerpt(line))
        name, stamp, text = match.groups()
        allowed = set([names] if isinstance(names, str) else names)
        if allowed and name not in allowed:
            return ParseError("log", f"container {name!r} was not asked for", _excerpt(line))
    try:
        at_ns = _checked_ns(stamp, "timestamp")
    except _Bad as bad:
        return ParseError("log", str(bad), _excerpt(line))
    return LogLine(name, at_ns, text or "")


# ---------------------------------------------------------------- version / info


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What podman says about itself and its host."""

    version: str
    api_version: str = ""
    rootless: bool | None = None  # only `podman info` says
    cgroup_manager: str = ""
    cgroup_version: str = ""
    events_logger: str = ""
    log_driver: str = ""
    runtime: str = ""
    os: str = ""
    arch: str = ""
    kernel: str = ""
    hostname: str = ""
    # A guess: the systemd cgroup manager means a systemd session, and without one podman
    # runs no health check timers (the check stays `starting`).
    has_systemd: bool | None = None

    @property
    def major(self) -> int | None:
        return podman_major(self.version)


def parse_version(text: str) -> NodeInfo | ParseError:
    """`podman version --format json`: the server side if remote, else the client."""
    try:
        data = _load_json(text)
        if not isinstance(data, dict):
            raise _Bad("version output is not a JSON object")
        side = _field(data, "Server", dict, None) or _field(data, "Client", dict)
        version = _field(side, "Version", str, "", "Client.")
        if not version:
            raise _Bad("no Version")
        os_arch = _field(side, "OsArch", str, "", "Client.")
        os_name, _, arch = os_arch.partition("/")
        return NodeInfo(version=version, api_version=_field(side, "APIVersion", str, "", "Client."),
                        os=_field(side, "Os", str, "", "Client.") or os_name, arch=arch)
    except _Bad as bad:
        return ParseError("version", str(bad), _excerpt(text))


def parse_info(text: str) -> NodeInfo | ParseError:
    """`podman info --format json`: version, rootless, cgroups, events logger, runtime."""
    try:
        data = _load_json(text)
        if not isinstance(data, dict):
            raise _Bad("info output is not a JSON object")
        host = _field(data, "host", dict)
        version_block = _field(data, "version", dict, {})
        version = _field(version_block, "Version", str, "", "version.")
        if not version:
            raise _Bad("no version.Version")
        security = _field(host, "security", dict, {}, "host.")
        runtime = _field(host, "ociRuntime", dict, {}, "host.")
        cgroup_manager = _field(host, "cgroupManager", str, "", "host.")
        return NodeInfo(
            version=version,
            api_version=_field(version_block, "APIVersion", str, "", "version."),
            rootless=_field(security, "rootless", bool, None, "host.security."),
            cgroup_manager=cgroup_manager,
            cgroup_version=_field(host, "cgroupVersion", str, "", "host."),
            events_logger=_field(host, "eventLogger", str, "", "host."),
            log_driver=_field(host, "logDriver", str, "", "host."),
            runtime=_field(runtime, "name", str, "", "host.ociRuntime."),
            os=_field(host, "os", str, "", "host."),
            arch=_field(host, "arch", str, "", "host."),
            kernel=_field(host, "kernel", str, "", "host."),
            hostname=_field(host, "hostname", str, "", "host."),
            has_systemd=(cgroup_manager == "systemd") if cgroup_manager else None,
        )
    except _Bad as bad:
        return ParseError("info", str(bad), _excerpt(text))


# ---------------------------------------------------------------- health check


HealthOutcome = Literal["healthy", "unhealthy", "error"]


def healthcheck_outcome(exit_status: int) -> HealthOutcome:
    """What `podman healthcheck run` meant: 0 healthy, 1 unhealthy, anything else an error.

    125 covers: no health check defined, container not running, no such container, and
    a check that ran past its timeout (which podman 4.3 does not cut short).
    """
    if exit_status == 0:
        return "healthy"
    if exit_status == 1:
        return "unhealthy"
    return "error"

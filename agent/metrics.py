"""Prometheus metrics while a verb watches: `watch|soak|run --metrics 127.0.0.1:9464`.

The endpoint is a small HTTP/1.1 server on the verb's own asyncio loop. A scrape copies
what it shows out of the live objects on the loop (`Exporter.snapshot`: no lock anywhere,
about 2 ms for 1000 containers) and makes the text from that copy in a worker thread, so
a big fleet's scrape never holds the loop (the event stream keeps its latency):

- read at scrape time: every machine of the run's `Fleet` (state, health, restarts, the
  last change and death), the watchers (link, events and log lines ingested, reconnects),
  the drift windows (drift counts), the store writer (`pending`, and how far commits lag
  behind, measured by a `flush` every few seconds);
- fed by the sink's callbacks: deaths by the kind of their reason, state changes, probe
  results, lost event windows. A log line (the flood: ~25k obs/s) costs one dict lookup.

The endpoint listens on loopback unless `--metrics-any-address` is given: the metrics name
every container and its state. `Endpoint.open` binds (`soak` and `run` bind before their
run starts, so a bad address or a port in use is exit 2 with nothing recorded);
`serving(rec, endpoint)` serves for as long as the block runs and frees the port after;
the verbs nested inside (`soak_in`, `experiments_in`) register their watchers and windows
with the exporter already serving the recording (`register`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from loguru import logger

from agent.errors import ConfigError, UsageError
from machines.container import StateChange
from machines.deaths import USER_KINDS
from machines.drift import EXPECTED
from machines.observations import AgentObs, EventObs, Observation, ProbeObs, SnapshotObs
from machines.states import State

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from agent.config import Config
    from agent.recording import Recording
    from agent.watch import Window
    from agent.watcher import TargetWatcher

DEFAULT_PORT = 9464  # Prometheus's registry of default ports: 9464 is the OpenTelemetry exporter's
OFF = frozenset({"off", "none", "no", "false", ""})
# How a death came about (machines/deaths.py `DeathReason.kind`): the fixed set of label values
DEATH_KINDS = ("exit", "signal", "oom-kill", "oom-likely", "unknown", "experiment", "podwarden",
               "user-stop", "user-kill", "user-restart")
HEALTH_VALUES = ("starting", "healthy", "unhealthy", "none")
LINK_UP = "up"
# probe types that are no check of their own: the kernel log's OOM verdict is a death's evidence
NOT_PROBES = frozenset({"kernel-log"})
LAG_EVERY_S = 2.0  # how often the store's commit lag is measured
REQUEST_LIMIT = 16 * 1024  # bytes of request line and headers a scrape may send
REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- the address


def parse_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (loopback), `HOST` (port 9464); `off`: None.

    HOST is an IP address or `localhost` (127.0.0.1). Raises ValueError saying what is wrong.
    """
    text = text.strip()
    if text.lower() in OFF:
        return None
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("write an IPv6 address in brackets, then the port: [::1]:9464")
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif text.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets, then the port: [::1]:9464")
    elif ":" in text:
        host, _, port_text = text.partition(":")
        host = host or "127.0.0.1"
    else:
        host, port_text = text, str(DEFAULT_PORT)
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (give one, or localhost): e.g. 127.0.0.1:9464") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, not {port_text!r}")
    return str(ip), int(port_text)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1."""
    return ipaddress.ip_address(host).is_loopback


@dataclass
class Endpoint:
    """A listening socket, bound and not yet served (`serving` serves it, and closes it)."""

    sock: socket.socket
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.sock.close()

    @classmethod
    def open(cls, config: Config, option: str | None, *, any_address: bool = False) -> Endpoint | None:
        """Bind the metrics endpoint: `--metrics` (`option`), else `[watch] metrics`; None when off.

        Raises UsageError (a bad --metrics: exit 2) or ConfigError (a bad [watch] metrics): the
        address malformed, not loopback without `any_address`, in use, or not this machine's.
        """
        if option is not None:
            text = option

            def fail(problem: str) -> Exception:
                return UsageError(f"--metrics {option}: {problem}")
        elif config.watch.metrics is not None:
            text = config.watch.metrics

            def fail(problem: str) -> Exception:
                return ConfigError(config.path or "<config>", "watch.metrics", problem)
        else:
            return None
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if address is None:
            return None
        host, port = address
        if not any_address and not is_loopback(host):
            raise fail(f"{host} is not a loopback address, and the metrics name every container and its state: "
                       "serve on 127.0.0.1 (and let Prometheus scrape through a tunnel or proxy), or pass "
                       "--metrics-any-address to serve on it on purpose")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
            if exc.errno == errno.EADDRINUSE:
                problem = (f"{where} is in use (another podwarden, or another exporter): pick another port, "
                           "or --metrics off")
            elif exc.errno == errno.EADDRNOTAVAIL:
                problem = f"{host} is no address of this machine"
            elif exc.errno == errno.EACCES:
                problem = f"port {port} needs privileges: pick one above 1023"
            else:
                problem = f"cannot listen on {where}: {exc.strerror or exc}"
            raise fail(problem) from None
        bound_host, bound_port = sock.getsockname()[:2]
        return cls(sock, bound_host, bound_port)


# ---------------------------------------------------------------- what is served


@dataclass(slots=True)
class _Probe:
    runs: int = 0
    failures: int = 0
    ok: bool = True
    seconds: float = 0.0
    at_ns: int = 0


class _StoreLag:
    """How far the store's commits lag behind what was queued: the time a `flush` takes,
    measured every LAG_EVERY_S (a flush still waiting counts as it grows)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.seconds = 0.0
        self._since: float | None = None

    def value(self) -> float:
        since = self._since
        return max(self.seconds, time.monotonic() - since) if since is not None else self.seconds

    async def run(self) -> None:
        from store import StoreError

        while True:
            self._since = time.monotonic()
            try:
                await self.store.flush()
            except StoreError:
                return  # the writer reports its own failure; the gauge keeps growing
            self.seconds = time.monotonic() - self._since
            self._since = None
            await asyncio.sleep(LAG_EVERY_S)


def _expected(config: Config, container: str) -> str | None:
    own = config.containers.get(container)
    if own is not None:
        return own.expected_state
    return None if config.containers else "running"  # as the drift window expects them (agent/windows.py)


class Exporter:
    """What the endpoint serves for one recording (a prometheus_client collector)."""

    def __init__(self, rec: Recording) -> None:
        from agent.recording import podwarden_version

        self.rec = rec
        self.version = podwarden_version()
        self.watchers: list[TargetWatcher] = []  # every watcher of the run, in order (counters add up)
        self.windows: list[Window] = []
        self.lag = _StoreLag(rec.store) if rec.store is not None else None
        self._deaths: dict[tuple[str, str, str], int] = {}
        self._death_seen: dict[tuple[str, str], tuple[int | None, int]] = {}
        self._changes: dict[tuple[str, str, str], int] = {}
        self._probes: dict[tuple[str, str, str, str], _Probe] = {}
        self._lost_windows: dict[str, int] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            EventObs: self._on_container, SnapshotObs: self._on_container, ProbeObs: self._on_probe,
            AgentObs: self._on_agent}

    # ------------------------------------------------------------ registration

    def attach(self) -> None:
        self.rec.sink.on_observation.append(self._observed)
        self.rec.sink.on_change.append(self._changed)

    def detach(self) -> None:
        sink = self.rec.sink
        if self._observed in sink.on_observation:
            sink.on_observation.remove(self._observed)
        if self._changed in sink.on_change:
            sink.on_change.remove(self._changed)

    def add(self, watchers: Iterable[TargetWatcher] = (), window: Window | None = None) -> None:
        for watcher in watchers:
            if not any(w is watcher for w in self.watchers):
                self.watchers.append(watcher)
        if window is not None and not any(w is window for w in self.windows):
            self.windows.append(window)

    # ------------------------------------------------------------ the sink's callbacks (hot path)

    def _observed(self, obs: Observation) -> None:
        handler = self._handlers.get(type(obs))
        if handler is not None:
            handler(obs)

    def _changed(self, change: StateChange) -> None:
        key = (change.target, change.container, str(change.to_state))
        self._changes[key] = self._changes.get(key, 0) + 1

    def _on_container(self, obs: EventObs | SnapshotObs) -> None:
        """Count the deaths this observation made the machine learn, by the kind of their reason."""
        machine = self.rec.fleet.get(obs.target, obs.container)
        if machine is None:
            return
        key = (obs.target, obs.container)
        death_ns, crashes = machine.last_death_ns, machine.crashes
        seen = self._death_seen.get(key)
        if seen == (death_ns, crashes):
            return
        self._death_seen[key] = (death_ns, crashes)
        if seen is None:
            if death_ns is None or type(obs) is SnapshotObs:
                return  # first sight of a container already down: no death podwarden saw (as the machine counts)
            seen = (None, 0)
        counted = crashes - seen[1]  # deaths that were nobody's doing, since the last look
        if death_ns is not None and death_ns != seen[0]:
            reason = machine.last_death
            kind = reason.kind if reason is not None and reason.kind in DEATH_KINDS else "unknown"
            self._death(obs.target, obs.container, kind)
            counted -= 0 if kind in USER_KINDS else 1  # the machine counts every death but a user's
        for _ in range(max(0, counted)):
            # more deaths than the newest (a RestartCount jump, an older death delivered late)
            self._death(obs.target, obs.container, "unknown")

    def _death(self, target: str, container: str, kind: str) -> None:
        key = (target, container, kind)
        self._deaths[key] = self._deaths.get(key, 0) + 1

    def _on_probe(self, obs: ProbeObs) -> None:
        if obs.probe_type in NOT_PROBES:
            return
        key = (obs.target, obs.container, obs.probe, obs.probe_type)
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = _Probe()
        probe.runs += 1
        probe.failures += not obs.ok
        if obs.at_ns >= probe.at_ns:
            probe.ok, probe.seconds, probe.at_ns = obs.ok, obs.latency_ms / 1000, obs.at_ns

    def _on_agent(self, obs: AgentObs) -> None:
        if obs.what == "lost-window":
            self._lost_windows[obs.target] = self._lost_windows.get(obs.target, 0) + 1

    # ------------------------------------------------------------ a scrape

    def snapshot(self) -> Snapshot:
        """Copy what a scrape shows out of the live objects: cheap, on the event loop (the
        text is made from the copy in a thread, so the loop is never held for long)."""
        rec, config = self.rec, self.rec.config
        facts: dict[tuple[str, str], int] = {}
        totals: dict[str, tuple[int, ...]] = {}
        links: dict[str, bool] = {}
        for watcher in self.watchers:
            for name, fact in list(watcher.facts.items()):
                facts[(watcher.name, name)] = fact.restart_count
            view = watcher.view
            before = totals.get(watcher.name, (0, 0, 0, 0, 0))
            totals[watcher.name] = tuple(a + b for a, b in zip(before, (
                view.events, view.logs, view.errors, view.reconnects, view.parse_errors)))
            links.pop(watcher.name, None)  # the newest watcher of a target says
            if view.link != "stopped":
                links[watcher.name] = view.link == LINK_UP
        machines = [(m.target, m.container, str(m.state), m.health if m.health in HEALTH_VALUES else "none",
                     _expected(config, m.container), m.restarts, m.since_ns, m.last_death_ns,
                     facts.get((m.target, m.container))) for m in rec.fleet.machines()]
        drifts: dict[tuple[str, str, str], int] = {}
        window_open = False
        for window in self.windows:
            detector = window.detector
            window_open = window_open or (detector.started and not detector.finished)
            for drift in detector.drifts:
                key = (drift.target, drift.container, str(drift.kind))
                drifts[key] = drifts.get(key, 0) + drift.count
        store = (rec.store.pending, self.lag.value()) if rec.store is not None and self.lag is not None else None
        return Snapshot(
            command=rec.command, version=self.version, run_id=rec.run_id, started_ns=rec.started_ns,
            machines=machines, deaths=dict(self._deaths), changes=dict(self._changes),
            probes=[(key, p.runs, p.failures, p.ok, p.seconds, p.at_ns) for key, p in list(self._probes.items())],
            drifts=drifts, window_open=window_open, links=links, totals=totals,
            lost_windows={name: self._lost_windows.get(name, 0) for name in totals.keys() | self._lost_windows.keys()},
            store=store)

    def collect(self) -> Iterator[Any]:
        """The metric families, now (a prometheus_client collector)."""
        return iter(families(self.snapshot()))


@dataclass
class Snapshot:
    """What one scrape shows, copied from the live objects."""

    command: str
    version: str
    run_id: int | None
    started_ns: int
    # (target, container, state, health, expected, restarts, last change ns, last death ns, podman's RestartCount)
    machines: list[tuple[str, str, str, str, str | None, int, int, int | None, int | None]]
    deaths: dict[tuple[str, str, str], int]
    changes: dict[tuple[str, str, str], int]
    probes: list[tuple[tuple[str, str, str, str], int, int, bool, float, int]]
    drifts: dict[tuple[str, str, str], int]
    window_open: bool
    links: dict[str, bool]
    totals: dict[str, tuple[int, ...]]  # events, log lines, error lines, reconnects, parse errors
    lost_windows: dict[str, int]
    store: tuple[int, float] | None  # rows pending, commit lag in seconds


def families(snap: Snapshot) -> list[Any]:
    """The metric families of one snapshot (pure: safe in a thread)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    out: list[Any] = []
    tc = ["target", "container"]
    info = InfoMetricFamily("podwarden", "The podwarden agent serving these metrics.")
    info.add_metric([], {"version": snap.version, "command": snap.command})
    out.append(info)
    if snap.run_id is not None:
        out.append(GaugeMetricFamily("podwarden_run_id", "The id of the run in the store this process records.",
                                     value=snap.run_id))
    out.append(GaugeMetricFamily("podwarden_run_start_timestamp_seconds", "When the run started (Unix time).",
                                 value=snap.started_ns / 1e9))

    # containers
    state = GaugeMetricFamily("podwarden_container_state",
                              "1 for the state podwarden's machine has the container in, 0 for the others.",
                              labels=[*tc, "state"])
    health = GaugeMetricFamily("podwarden_container_health",
                               "1 for podman's health status of the current run (none: no health check).",
                               labels=[*tc, "health"])
    expected = GaugeMetricFamily("podwarden_container_expected_state",
                                 "1 for the state the config expects (running, healthy, stopped, absent).",
                                 labels=[*tc, "expected"])
    met = GaugeMetricFamily("podwarden_container_in_expected_state",
                            "1 when the container is in its expected state, else 0.", labels=tc)
    restarts = CounterMetricFamily("podwarden_container_restarts",
                                   "Times the container came back after a death that was not a user's.", labels=tc)
    changed = GaugeMetricFamily("podwarden_container_last_change_timestamp_seconds",
                                "When the container's state last changed (podman's clock, Unix time).", labels=tc)
    died = GaugeMetricFamily("podwarden_container_last_death_timestamp_seconds",
                             "When the container last died (podman's clock, Unix time).", labels=tc)
    podman_restarts = GaugeMetricFamily("podwarden_container_podman_restarts",
                                        "podman's RestartCount in the newest inspect.", labels=tc)
    states = [str(value) for value in State]
    for target, container, current, now, want, count, since_ns, death_ns, podman_count in snap.machines:
        labels = [target, container]
        for value in states:
            state.add_metric([target, container, value], 1.0 if value == current else 0.0)
        for value in HEALTH_VALUES:
            health.add_metric([target, container, value], 1.0 if value == now else 0.0)
        if want in EXPECTED:
            expected.add_metric([target, container, want], 1.0)
            met.add_metric(labels, 1.0 if current in EXPECTED[want] else 0.0)
        restarts.add_metric(labels, count)
        if since_ns:
            changed.add_metric(labels, since_ns / 1e9)
        if death_ns:
            died.add_metric(labels, death_ns / 1e9)
        if podman_count is not None:
            podman_restarts.add_metric(labels, podman_count)
    out += [state, health, expected, met, restarts, changed, died, podman_restarts]
    deaths = CounterMetricFamily("podwarden_container_deaths",
                                 "Deaths podwarden saw, by the kind of their reason as first known "
                                 f"({', '.join(DEATH_KINDS)}).", labels=[*tc, "kind"])
    for key, count in snap.deaths.items():
        deaths.add_metric(list(key), count)
    changes = CounterMetricFamily("podwarden_container_state_changes",
                                  "State changes of the container's machine, by the state entered.",
                                  labels=[*tc, "to_state"])
    for key, count in snap.changes.items():
        changes.add_metric(list(key), count)
    out += [deaths, changes]

    # drift: every window of the run (a closed one keeps its count)
    drifts = CounterMetricFamily("podwarden_drifts", "Drifts found in the run's drift windows, by kind (container "
                                 "empty for a target's link).", labels=[*tc, "kind"])
    for key, count in snap.drifts.items():
        drifts.add_metric(list(key), count)
    out.append(drifts)
    out.append(GaugeMetricFamily("podwarden_drift_window_open", "1 while a drift window (a watch's, a soak's) is open.",
                                 value=1.0 if snap.window_open else 0.0))

    # probes
    labels4 = [*tc, "probe", "type"]
    success = GaugeMetricFamily("podwarden_probe_success", "1 if the probe's newest run passed, else 0.",
                                labels=labels4)
    duration = GaugeMetricFamily("podwarden_probe_duration_seconds", "How long the probe's newest run took.",
                                 labels=labels4)
    last = GaugeMetricFamily("podwarden_probe_last_run_timestamp_seconds",
                             "When the probe last ran (podman's clock, Unix time).", labels=labels4)
    runs = CounterMetricFamily("podwarden_probe_runs", "Runs of the probe.", labels=labels4)
    failures = CounterMetricFamily("podwarden_probe_failures", "Failed runs of the probe.", labels=labels4)
    for key, count, failed, ok, seconds, at_ns in snap.probes:
        labels = list(key)
        success.add_metric(labels, 1.0 if ok else 0.0)
        duration.add_metric(labels, seconds)
        last.add_metric(labels, at_ns / 1e9)
        runs.add_metric(labels, count)
        failures.add_metric(labels, failed)
    out += [success, duration, last, runs, failures]

    # targets (a run watches a target anew in each stage: the counts add up)
    link = GaugeMetricFamily("podwarden_target_link_up", "1 while the SSH link to the target is up, 0 while "
                             "connecting or lost (absent between a run's watching stages).", labels=["target"])
    for name, up in snap.links.items():
        link.add_metric([name], 1.0 if up else 0.0)
    out.append(link)
    totals = [
        CounterMetricFamily("podwarden_target_events", "podman events ingested (new, of watched containers).",
                            labels=["target"]),
        CounterMetricFamily("podwarden_target_log_lines", "Container log lines ingested.", labels=["target"]),
        CounterMetricFamily("podwarden_target_error_log_lines", "Ingested log lines the error patterns matched.",
                            labels=["target"]),
        CounterMetricFamily("podwarden_target_reconnects", "Times the link to the target was lost and reconnected.",
                            labels=["target"]),
        CounterMetricFamily("podwarden_target_parse_errors", "Event or log records podwarden could not parse.",
                            labels=["target"]),
    ]
    for name, values in snap.totals.items():
        for family, count in zip(totals, values):
            family.add_metric([name], count)
    out += totals
    lost = CounterMetricFamily("podwarden_target_lost_windows",
                               "Windows of events podman no longer held when podwarden came to read them.",
                               labels=["target"])
    for name, count in snap.lost_windows.items():
        lost.add_metric([name], count)
    out.append(lost)

    # the store (one per process)
    if snap.store is not None:
        pending, lag = snap.store
        out.append(GaugeMetricFamily("podwarden_store_pending_rows",
                                     "Rows queued for the store, not yet in a transaction.", value=pending))
        out.append(GaugeMetricFamily("podwarden_store_commit_lag_seconds",
                                     "How long the newest queued rows took (or are taking) to be committed.",
                                     value=lag))
    return out


class _Frozen:
    """A collector of one snapshot's families."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Any]:
        return iter(families(self.snap))


class _Registries:
    """A registry per scrape: the snapshot, and the process's own metrics (memory, CPU, fds, GC)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

        scratch = CollectorRegistry(auto_describe=False)  # they insist on registering somewhere
        self.process = [ProcessCollector(registry=scratch), PlatformCollector(registry=scratch),
                        GCCollector(registry=scratch)]

    def of(self, snap: Snapshot) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Frozen(snap))  # type: ignore[arg-type]
        for collector in self.process:
            registry.register(collector)
        return registry


# ---------------------------------------------------------------- serving


def exporter_of(rec: Recording) -> Exporter | None:
    """The exporter serving `rec`, if any (found by its callback on the run's sink)."""
    for callback in rec.sink.on_observation:
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, Exporter) and owner.rec is rec:
            return owner
    return None


def register(rec: Recording, watchers: Iterable[TargetWatcher] = (), window: Window | None = None) -> None:
    """Let the exporter serving `rec` (if any) read these watchers and this window."""
    exporter = exporter_of(rec)
    if exporter is not None:
        exporter.add(watchers, window)


class _Http:
    """GET /metrics (and HEAD), one request a connection; nothing else."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.registries = _Registries()
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body, method = await self.respond(head)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    async def respond(self, head: bytes) -> tuple[str, str, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n", ""
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET /metrics\n", method
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        path = urlsplit(target).path
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(headers.get("accept", ""))
            registry = self.registries.of(self.exporter.snapshot())
            # the text from the copy, in a thread: a big fleet's scrape never holds the loop
            return "200 OK", content_type, await asyncio.to_thread(encoder, registry), method
        if path == "/":
            return ("200 OK", "text/html; charset=utf-8",
                    b'<html><body><a href="/metrics">podwarden metrics</a></body></html>\n', method)
        return "404 Not Found", "text/plain; charset=utf-8", b"not found: try /metrics\n", method


@asynccontextmanager
async def serving(rec: Recording, endpoint: Endpoint | None,
                  progress: Callable[[str], None] | None = None) -> AsyncIterator[Exporter | None]:
    """Serve `rec`'s metrics on `endpoint` while the block runs; then stop and free the port.

    With no endpoint, the exporter already serving `rec` (a nested verb), or None.
    """
    if endpoint is None:
        yield exporter_of(rec)
        return
    exporter = Exporter(rec)
    http = _Http(exporter)
    server: asyncio.AbstractServer | None = None
    lag: asyncio.Task | None = None
    try:
        server = await asyncio.start_server(http.handle, sock=endpoint.sock, limit=REQUEST_LIMIT)
        exporter.attach()
        if exporter.lag is not None:
            lag = asyncio.create_task(exporter.lag.run(), name="metrics: store lag")
        logger.info("serving Prometheus metrics at {}", endpoint.url)
        if progress is not None:
            progress(f"metrics: {endpoint.url}")
        yield exporter
    finally:
        exporter.detach()
        if lag is not None:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
        if server is not None:
            server.close()
            for writer in list(http.writers):
                writer.close()
            with suppress(Exception):
                await server.wait_closed()
        endpoint.close()

"""Watch targets: podman events, log follows, reconcile snapshots and health checks,
turned into observations that go to the store and the state machines.

Per target, one task group holds the event stream, the log follow, the reconcile
loop, the health-check runner and a link watch. Any of them failing (a dropped link,
a podman error) ends the group; the target loop records the gap as an `agent`
observation, reconnects with capped back-off and backfills with `--since`, so the
store ends up holding every event podman recorded, none twice.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from loguru import logger

from agent import podman
from agent.config import DEFAULT_ERROR_PATTERNS, DEFAULT_ERROR_WORDS, Config, TargetConfig
from agent.errors import TargetUnreachable, TransportError
from agent.transport import Transport, make_transport
from machines.container import Fleet, StateChange
from machines.observations import AgentObs, LogObs, Observation, ProbeObs, SnapshotObs

ChangeCallback = Callable[[StateChange], None]
ObsCallback = Callable[[Observation], None]

# podman's writers log concurrent events out of time order (up to ~75 ms seen on 4.3), and
# `--since` filters each event by its time: resuming at the newest event seen would skip one
# written after it with an older time. Resume this much earlier; the seen keys drop repeats.
RESUME_OVERLAP_NS = 5_000_000_000


class LinkLost(Exception):
    """The link to a target dropped while we were watching (internal signal)."""


@dataclass
class TargetView:
    """What the dashboard shows of one target besides its machines."""

    name: str
    link: str = "connecting"
    since_ns: int = 0
    detail: str = ""
    events: int = 0
    logs: int = 0
    errors: int = 0
    reconnects: int = 0
    parse_errors: int = 0


class LogMatcher:
    """Tells error lines from noise with a container's patterns."""

    def __init__(self, errors: Iterable[str], ignore: Iterable[str]) -> None:
        errors = list(errors)
        self._errors = [re.compile(p) for p in errors]
        self._ignore = [re.compile(p) for p in ignore]
        # the default pattern costs ~5 µs a line; most lines hold none of its words
        self._words = DEFAULT_ERROR_WORDS if errors == DEFAULT_ERROR_PATTERNS else None

    def is_error(self, line: str) -> bool:
        """True when an error pattern matches and no ignore pattern does."""
        if self._words is not None and line.isascii():
            # (non-ASCII lines skip this: (?i) folds e.g. 'ſ' to 's', lower() does not)
            low = line.lower()
            if not any(word in low for word in self._words):
                return False
        return any(p.search(line) for p in self._errors) and not any(p.search(line) for p in self._ignore)


class RecentKeys:
    """A bounded set of recently seen keys, for dropping replayed duplicates."""

    def __init__(self, limit: int = 200_000) -> None:
        self._keys: set[tuple] = set()
        self._order: deque[tuple] = deque()
        self._limit = limit

    def add(self, key: tuple) -> bool:
        """Remember `key`; False if it was already there."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._limit:
            self._keys.discard(self._order.popleft())
        return True


@dataclass
class Sink:
    """Where observations go: the store (if any), the machines, and callbacks."""

    fleet: Fleet
    store: object | None = None  # store.StoreWriter
    run_id: int | None = None
    on_change: list[ChangeCallback] = field(default_factory=list)
    on_observation: list[ObsCallback] = field(default_factory=list)

    def redact(self, text: str) -> str:
        """`text` as the store will keep it (so live and stored lines compare equal)."""
        return self.store.redactor.text(text) if self.store is not None else text  # type: ignore[attr-defined]

    async def backpressure(self) -> None:
        """Wait for the store when a flood has queued more than it should hold in memory."""
        if self.store is not None and self.store.pending > 20_000:  # type: ignore[attr-defined]
            await self.store.flush()  # type: ignore[attr-defined]

    def put(self, obs: Observation) -> list[StateChange]:
        """Record one observation, feed it to the machines, and pass on the changes."""
        obs_id = self.store.add(obs, self.run_id) if self.store is not None else None  # type: ignore[attr-defined]
        changes = self.fleet.feed(obs)
        for change in changes:
            if self.store is not None:
                self.store.add_change(change, obs_id, self.run_id)  # type: ignore[attr-defined]
            for callback in self.on_change:
                callback(change)
        for callback in self.on_observation:
            callback(obs)
        return changes


class TargetWatcher:
    """Keeps one target watched until `stop` is set: connect, stream, reconnect, backfill."""

    def __init__(self, target: TargetConfig, config: Config, sink: Sink, *,
                 start_ns: int | None = None, last_event_ns: int | None = None,
                 seen_events: set[tuple] | None = None, last_log_ns: int | None = None,
                 seen_logs: set[tuple] | None = None) -> None:
        self.target = target
        self.config = config
        self.sink = sink
        self.name = target.name or target.describe()
        self.view = TargetView(self.name)
        self.log = logger.bind(target=self.name)
        self._podman = list(target.podman)
        self._watch = config.watch
        self._start_ns = start_ns if start_ns is not None else time.time_ns()
        self._last_event_ns = last_event_ns
        self._last_log_ns: int | None = last_log_ns
        seen_events = seen_events or set()
        seen_logs = seen_logs or set()
        # sized so that the keys seeded from the store are never evicted before use
        self._seen_events = RecentKeys(200_000 + len(seen_events))
        for key in seen_events:
            self._seen_events.add(key)
        self._seen_logs = RecentKeys(50_000 + len(seen_logs))
        for key in seen_logs:
            self._seen_logs.add(key)
        self._matchers = {
            name: LogMatcher(config.error_patterns(name), c.log_ignore)
            for name, c in config.containers.items()
        }
        self._rootless = False
        self._run_healthchecks = False
        self._healthchecks: dict[str, float] = {}  # container -> interval seconds
        self._log_restart = asyncio.Event()
        self._recheck: set[str] = set()
        self._recheck_wake = asyncio.Event()
        self._clock_offset_ns = 0  # node clock minus ours, so our records share podman's clock
        for name in config.containers:
            sink.fleet.expect(self.name, name)

    # ------------------------------------------------------------ the target loop

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set; operational failures are recorded, never raised."""
        backoff = self._watch.backoff_initial
        lost_at: int | None = None
        last_reason = ""
        while not stop.is_set():
            transport = make_transport(self.target)
            try:
                self.view.link = "connecting"
                await transport.connect()
            except TargetUnreachable as exc:
                self._agent("unreachable", exc.reason)
                if exc.reason != last_reason:
                    self.log.warning("target unreachable, retrying with back-off: {}", exc.reason)
                    last_reason = exc.reason
                self.view.link, self.view.detail = "unreachable", exc.reason
                if await _wait(stop, backoff):
                    break
                backoff = min(backoff * 2, self._watch.backoff_max)
                continue
            last_reason = ""
            connected_at = time.monotonic()
            gap = f"; gap since {podman.format_time_ns(lost_at)}" if lost_at else ""
            self._agent("connected", f"{transport.name}{gap}")
            self.view.link, self.view.detail, self.view.since_ns = "up", "", time.time_ns()
            try:
                await self._watch_connected(transport, stop)
            except* (LinkLost, TransportError) as group:
                reason = "; ".join(str(e) for e in group.exceptions)[:500]
                lost_at = time.time_ns()
                self.view.reconnects += 1
                self.view.link, self.view.detail = "lost", reason
                self._agent("lost", reason)
                self.log.warning("link lost: {}", reason)
            finally:
                await transport.close()
            # a link that keeps dropping right after login must not reconnect in a tight loop
            if time.monotonic() - connected_at > self._watch.backoff_max:
                backoff = self._watch.backoff_initial
            else:
                backoff = min(backoff * 2, self._watch.backoff_max)
            if not stop.is_set() and await _wait(stop, backoff):
                break
        self.view.link = "stopped"
        self._agent("stopped", "watch ended")

    async def _watch_connected(self, transport: Transport, stop: asyncio.Event) -> None:
        await self._learn_node(transport)
        # the gap's events first, then a snapshot: a snapshot fed before them would
        # overrule the machine at "now" and make the backfilled deaths look stale
        await self._backfill_events(transport)
        await self._reconcile(transport)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._follow_events(transport), name="events"),
                group.create_task(self._follow_logs(transport), name="logs"),
                group.create_task(self._reconcile_loop(transport), name="reconcile"),
                group.create_task(self._healthcheck_loop(transport), name="healthchecks"),
            ]
            link = group.create_task(self._link_watch(transport), name="link")
            stopper = group.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait([link, stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in [link, stopper, *tasks]:
                if task not in done:
                    task.cancel()
            for task in done:
                if task.exception() is None and task.get_name() in ("events", "logs", "reconcile", "healthchecks"):
                    raise LinkLost(f"{task.get_name()} ended")

    async def _link_watch(self, transport: Transport) -> None:
        await transport.wait_closed()
        raise LinkLost("connection closed")

    async def _learn_node(self, transport: Transport) -> None:
        before = time.time_ns()
        clock = await transport.run(["date", "+%s%N"], timeout=15)
        after = time.time_ns()
        if clock.ok and clock.stdout.strip().isdigit():
            self._clock_offset_ns = int(clock.stdout.strip()) - (before + after) // 2
        info_result = await transport.run(podman.info_cmd(self._podman), timeout=30)
        info = podman.parse_info(info_result.stdout) if info_result.ok else None
        if isinstance(info, podman.NodeInfo):
            self._rootless = info.rootless
        mode = self._watch.run_healthchecks
        if mode == "auto":
            probe = await transport.run(["test", "-d", "/run/systemd/system"], timeout=15)
            # no systemd: podman runs no health-check timers, so we run them ourselves
            self._run_healthchecks = not probe.ok or self._rootless
        else:
            self._run_healthchecks = mode == "always"
        self.log.info("node: rootless={} run_healthchecks={} clock_offset_ms={:.1f}", self._rootless,
                      self._run_healthchecks, self._clock_offset_ns / 1e6)

    # ------------------------------------------------------------ events

    def _events_since(self) -> int:
        if self._last_event_ns is not None:
            return self._last_event_ns - RESUME_OVERLAP_NS
        return self._start_ns + self._clock_offset_ns

    async def _backfill_events(self, transport: Transport) -> None:
        """Read what podman recorded since our last event, then return (no follow)."""
        if self._last_event_ns is None:
            return
        argv = podman.events_cmd(self._podman, since_ns=self._events_since() - 1, follow=False)
        result = await transport.run(argv, timeout=120)
        count = 0
        for line in result.stdout.splitlines():
            before = self.view.events
            self._on_event_line(line)
            count += self.view.events - before
        if not result.ok:
            self._agent("backfill-problem", f"podman events exited {result.exit_status}: {result.stderr[-200:]}")
        self._agent("backfilled", f"{count} events since {podman.format_time_ns(self._events_since())}")

    async def _follow_events(self, transport: Transport) -> None:
        """Follow `podman events`, resuming with a backfill whenever the stream ends.

        With the file events backend, podman ends the stream (exit 0) when it rotates
        events.log at 1 MB: the link is fine, so only the stream is started again.
        """
        restarts = 0
        while True:
            since = self._events_since()
            # podman's --since is strictly after: step back 1 ns, the dedupe drops the repeats
            argv = podman.events_cmd(self._podman, since_ns=since - 1, follow=True)
            async with transport.stream(argv) as lines:
                async for line in lines:
                    self._on_event_line(line)
                    await self.sink.backpressure()
                status = lines.exit_status
            if not transport.connected:
                raise LinkLost(f"podman events ended with the link (exit {status})")
            restarts += 1
            self._agent("events-restarted", f"podman events ended (exit {status}): {lines.stderr[-200:]}")
            # a podman that keeps failing at once must not spin: back off a little
            await asyncio.sleep(min(0.1 * restarts, self._watch.backoff_max))

    def _on_event_line(self, line: str) -> None:
        if not line.strip():
            return
        parsed = podman.parse_event(line, self.name)
        if parsed is None:
            return
        if isinstance(parsed, podman.ParseError):
            self.view.parse_errors += 1
            self._agent("parse-error", f"event: {parsed.reason}: {parsed.excerpt}")
            return
        if not self._wanted(parsed.container):
            return
        if not self._seen_events.add((parsed.container_id, parsed.status, parsed.at_ns)):
            return
        if self._last_event_ns is None or parsed.at_ns > self._last_event_ns:
            self._last_event_ns = parsed.at_ns
        self.view.events += 1
        self.sink.put(parsed)
        if parsed.status == "start" and parsed.container in self.config.containers:
            self._log_restart.set()
        if parsed.status == "died" and parsed.container in self.config.containers:
            # podman 4.3 often writes no `stop` event: inspect soon to tell a stop from a crash
            self._recheck.add(parsed.container)
            self._recheck_wake.set()

    # ------------------------------------------------------------ logs

    async def _follow_logs(self, transport: Transport) -> None:
        """Follow every expected container's log on one channel (MaxSessions is 10)."""
        while True:
            # cleared before looking, so a start during `ps` is not forgotten
            self._log_restart.clear()
            names = await self._present_expected(transport)
            if not names:
                # nothing to follow yet (or ps failed): look again on a start or a while later
                await _wait(self._log_restart, self._watch.reconcile_interval)
                continue
            # resume a little early (lines of several containers interleave out of time
            # order); the seen keys drop what was already stored
            if self._last_log_ns is not None:
                since = self._last_log_ns - RESUME_OVERLAP_NS
            else:
                since = self._start_ns + self._clock_offset_ns
            # a restarted container drops out of `logs -f`: each start restarts the follow
            argv = podman.logs_cmd(self._podman, names, since_ns=since - 1, follow=True, timestamps=True)
            # container stderr comes out on podman's stderr: merge, so no line is lost
            merged = ["sh", "-c", f"exec {_quote(argv)} 2>&1"]
            async with transport.stream(merged) as lines:
                reader = asyncio.ensure_future(self._read_logs(lines, names))
                restart = asyncio.ensure_future(self._log_restart.wait())
                try:
                    await asyncio.wait({reader, restart}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    restart.cancel()
                    if not reader.done():
                        reader.cancel()
                    await asyncio.gather(reader, restart, return_exceptions=True)
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
            if not self._log_restart.is_set():
                # the follow ended by itself (containers gone): wait for a start, then resume
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(0.5)  # let podman settle the new container's log file

    async def _read_logs(self, lines: object, names: list[str]) -> None:
        assembler = podman.LogAssembler(names)
        try:
            async for raw in lines:  # type: ignore[attr-defined]
                for parsed in assembler.feed(raw):
                    self._on_log_line(parsed)
                await self.sink.backpressure()
        finally:
            for parsed in assembler.flush():
                self._on_log_line(parsed)

    def _on_log_line(self, parsed: "podman.LogLine | podman.ParseError") -> None:
        if isinstance(parsed, podman.ParseError):
            if parsed.excerpt.strip():
                self.view.parse_errors += 1
            return
        container, at_ns, raw_text = parsed
        # redacted before anything sees it: the dashboard, the machines and the store
        # then hold the same text, and replay reproduces live exactly
        text = self.sink.redact(raw_text)
        if not self._seen_logs.add((container, at_ns, text)):
            return
        if self._last_log_ns is None or at_ns > self._last_log_ns:
            self._last_log_ns = at_ns
        matcher = self._matchers.get(container)
        is_error = matcher.is_error(raw_text) if matcher else False
        self.view.logs += 1
        self.view.errors += int(is_error)
        self.sink.put(LogObs(self.name, container, at_ns, text, "merged", is_error))

    async def _present_expected(self, transport: Transport) -> list[str]:
        result = await transport.run(podman.ps_cmd(self._podman), timeout=60)
        entries = podman.parse_ps(result.stdout) if result.ok else []
        if isinstance(entries, podman.ParseError):
            return []
        present = {e.name for e in entries if e.name}
        return sorted(n for n in present if self._wanted(n))

    # ------------------------------------------------------------ reconcile and health

    async def _reconcile_loop(self, transport: Transport) -> None:
        while True:
            woken = await _wait(self._recheck_wake, self._watch.reconcile_interval)
            if woken:
                # give a restart policy its moment before looking
                await asyncio.sleep(2.0)
                self._recheck_wake.clear()
                self._recheck.clear()
            await self._reconcile(transport)

    def now_ns(self) -> int:
        """Now on the node's clock (podman's timestamps are the node's)."""
        return time.time_ns() + self._clock_offset_ns

    async def _reconcile(self, transport: Transport) -> None:
        """Snapshot every expected and present container from ps/inspect."""
        from agent.status import inspect_all

        facts, problems = await inspect_all(transport, self._podman, clock=self.now_ns)
        if problems:
            # podman did not answer: absence here proves nothing, so no snapshot at all
            for problem in problems:
                self._agent("reconcile-problem", problem)
            return
        at_ns = self.now_ns()
        facts = [f for f in facts if self._wanted(f.name)]
        by_name = {f.name: f for f in facts}
        healthchecks: dict[str, float] = {}
        for fact in facts:
            self.sink.put(fact.snapshot())
            if fact.status == "running" and fact.health is not None:
                interval = self._interval_for(fact)
                healthchecks[fact.name] = interval
        for name in self.config.containers:
            if name not in by_name:
                self.sink.put(SnapshotObs(self.name, name, at_ns, exists=False))
        self._healthchecks = healthchecks

    def _interval_for(self, fact: "podman.InspectFacts") -> float:
        own = self.config.containers.get(fact.name)
        if own is not None and own.healthcheck_interval:
            return own.healthcheck_interval
        if fact.healthcheck_interval_ns:
            return fact.healthcheck_interval_ns / 1e9
        return self._watch.healthcheck_interval

    async def _healthcheck_loop(self, transport: Transport) -> None:
        """Run `podman healthcheck run` on each container's interval where podman would not."""
        if not self._run_healthchecks:
            await asyncio.Event().wait()
        due: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for name, interval in list(self._healthchecks.items()):
                if due.get(name, 0.0) <= now:
                    due[name] = now + interval
                    await self._run_healthcheck(transport, name, interval)
            await asyncio.sleep(1.0)

    async def _run_healthcheck(self, transport: Transport, name: str, interval: float) -> None:
        """One `podman healthcheck run`, recorded as a probe (4.3's health events lag a check)."""
        try:
            result = await transport.run(podman.healthcheck_cmd(self._podman, name), timeout=max(interval, 30))
        except TransportError as exc:
            if not transport.connected:
                raise
            self._agent("healthcheck-problem", f"{name}: {exc}")
            return
        outcome = podman.healthcheck_outcome(result.exit_status)
        output = self.sink.redact((result.stdout + result.stderr).strip())
        self.sink.put(ProbeObs(self.name, name, self.now_ns(), "healthcheck", "podman-healthcheck",
                               outcome == "healthy", result.duration_s * 1000, output[-500:], str(outcome)))

    # ------------------------------------------------------------ helpers

    def _wanted(self, container: str) -> bool:
        """Only the configured containers are watched; with none configured, every container."""
        return not self.config.containers or container in self.config.containers

    def _agent(self, what: str, detail: str = "") -> None:
        self.sink.put(AgentObs(self.name, "", self.now_ns(), what, detail))


def _quote(argv: list[str]) -> str:
    from agent.transport import quote_argv

    return quote_argv(argv)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False

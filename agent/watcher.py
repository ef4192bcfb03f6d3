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
import sys
import time
from dataclasses import dataclass
from typing import Any, Coroutine

from loguru import logger

from agent import podman
from agent.config import Config, TargetConfig
from agent.diagnosis import Finding
from agent.errors import TargetUnreachable, TransportError
from agent.kernel import oom_kills
from agent.log_follow import LogFollow, RecentKeys
from agent.node import inspect_all
from agent.sink import Sink
from agent.transport import Transport, make_transport, quote_argv
from machines.observations import AgentObs, EventObs, ProbeObs, SnapshotObs


# podman's writers log concurrent events out of time order (up to ~75 ms seen on 4.3), and
# `--since` filters each event by its time: resuming at the newest event seen would skip one
# written after it with an older time. Resume this much earlier; the seen keys drop repeats.
RESUME_OVERLAP_NS = 5_000_000_000
# How far apart the kernel's oom-kill line and podman's died may be (0.5 s measured).
OOM_SLACK_NS = 10_000_000_000
RECHECK_DELAY_S = 2.0  # after a death with no start yet, a reconcile this much later (a stop or a crash?)
KERNEL_LOG_RETRY_S = 600.0  # an unreadable kernel log is tried again this much later
# Event identities kept for dropping repeats. A repeat can only come from a stream that
# resumes RESUME_OVERLAP_NS before the newest event (a backfill, a restarted `podman
# events`), so keys older than twice that are dropped; the count bound holds when a node
# writes more than EVENT_KEYS_KEPT events in that span (it never did: ~10 a second at most).
# A repeat that gets past is still dropped by the store's unique key.
EVENT_KEYS_SPAN_NS = 2 * RESUME_OVERLAP_NS
EVENT_KEYS_KEPT = 20_000
# What the watcher asks of a node at connect besides podman: where perl is (the log follower)
# and whether systemd runs (podman's health-check timers need it).
_NODE_PROBE = ('p=$(command -v perl) && echo "perl=$p"; '
               'if test -d /run/systemd/system; then echo systemd=yes; else echo systemd=no; fi')
# How podman says a requested container does not exist (`podman container inspect`, 4.3 and 5).
_NO_SUCH_CONTAINER = re.compile(r"no such (?:container|object)", re.IGNORECASE)
_PODMAN_WARNING = re.compile(r"^(?:time=\S+ )?level=warning |^WARN\[")


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


class TargetWatcher:
    """Keeps one target watched until `stop` is set: connect, stream, reconnect, backfill."""

    def __init__(self, target: TargetConfig, config: Config, sink: Sink, *,
                 start_ns: int | None = None, last_event_ns: int | None = None,
                 seen_events: set[tuple] | None = None, resume_ns: int | None = None) -> None:
        """`last_event_ns`/`seen_events`: the store's newest event of the target and the
        keys it holds from RESUME_OVERLAP_NS before it. `resume_ns`: where the store's
        knowledge of the target ends when it holds no event (the last watch's end), so a
        quiet previous run still gets its gap backfilled."""
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
        self._resume_ns = resume_ns
        # the keys seeded from the store stay until newer events push them out of the span;
        # seeded once the node's clock is known (`_seed_store_events`)
        self._seen_events = RecentKeys(EVENT_KEYS_KEPT)
        self._store_events = set(seen_events or ())
        self._rootless = False
        self._run_healthchecks = False
        self._healthchecks: dict[str, float] = {}  # container -> interval seconds
        self._recheck: dict[str, int] = {}  # container -> a death not yet followed by a start
        self._recheck_wake = asyncio.Event()
        self._clock_offset_ns = 0  # node clock minus ours, so our records share podman's clock
        # how far off that may be: the whole round trip of the `date` that measured it (a
        # channel is opened before date runs: measured +228 ms on a loaded local node)
        self._clock_error_ns = 0
        self._log_since_set = False
        self.ready = asyncio.Event()  # set once connected and the first reconcile is in
        self.facts: dict[str, podman.InspectFacts] = {}  # the latest inspect of the watched containers
        self._kernel_log: bool | None = None  # False: the node's kernel log could not be read
        self._kernel_log_retry_at = 0.0
        self._transport_now: Transport | None = None
        self.logs = LogFollow(self.name, config, sink, podman_cmd=self._podman, now_ns=self.now_ns,
                              agent=self._agent, view=self.view, wanted=self._wanted)
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
                # a node that answers slowly (a command taking its whole timeout while the link
                # comes up) must not hold the watch's end up: `stop` cancels the whole connection
                await _until_stopped(stop, self._watch_connected(transport, stop))
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
        self._transport_now = transport
        await self._learn_node(transport)
        if not self._log_since_set:
            # a container the store holds no line of is read from here (where events resume)
            self.logs.set_since(self._events_since())
            self._log_since_set = True
        # the gap's events first, then a snapshot: a snapshot fed before them would
        # overrule the machine at "now" and make the backfilled deaths look stale
        await self._backfill_events(transport)
        await self._reconcile(transport)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._follow_events(transport), name="events"),
                group.create_task(self.logs.run(transport), name="logs"),
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

    def _began_on_node(self) -> int:
        """This run's start on the node's clock, as early as the offset's error allows."""
        return self._start_ns + self._clock_offset_ns - self._clock_error_ns

    def _seed_store_events(self) -> None:
        """Know the store's events from before this run began (the previous run's, which the
        resume re-reads), so they are not fed again. An event at or after the run's start on
        the node's clock is this run's to see even when the store has it: another run
        recording the same target at the same time stored it first (this run's writer then
        links that row to this run); dropping it here lost a death from a soak beside a watch."""
        began = self._began_on_node()
        self._seen_events.seed({key for key in self._store_events if key[2] < began}, order=_event_time)
        self._store_events = set()

    async def _learn_node(self, transport: Transport) -> None:
        before = time.time_ns()
        clock = await transport.run(["date", "+%s%N"], timeout=15)
        after = time.time_ns()
        if clock.ok and clock.stdout.strip().isdigit():
            self._clock_offset_ns = int(clock.stdout.strip()) - (before + after) // 2
            self._clock_error_ns = after - before
        self._seed_store_events()
        info_result = await transport.run(podman.info_cmd(self._podman), timeout=30)
        info = podman.parse_info(info_result.stdout) if info_result.ok else None
        if isinstance(info, podman.NodeInfo):
            self._rootless = info.rootless
        # one command for both questions (every command is a channel, a shell and a fork on the node)
        probe = await transport.run(["sh", "-c", _NODE_PROBE], timeout=15)
        answers = probe.stdout.split()
        self.logs.perl = probe.ok and any(a.startswith("perl=/") for a in answers)
        systemd = probe.ok and "systemd=yes" in answers
        mode = self._watch.run_healthchecks
        if mode == "auto":
            # no systemd: podman runs no health-check timers, so we run them ourselves; rootless
            # podman has them only where the user's systemd takes them, so we run them too
            self._run_healthchecks = not systemd or self._rootless
        else:
            self._run_healthchecks = mode == "always"
        self.log.info("node: rootless={} run_healthchecks={} perl={} clock_offset_ms={:.1f}", self._rootless,
                      self._run_healthchecks, self.logs.perl, self._clock_offset_ns / 1e6)

    # ------------------------------------------------------------ events

    def _events_since(self) -> int:
        """Where the event stream resumes: the store's newest event (minus the overlap for
        podman's out-of-order writes), else the end of the last watch of this target (a
        quiet run stores no event, but what happened after it must still be read), else
        this run's start."""
        if self._last_event_ns is not None:
            return self._last_event_ns - RESUME_OVERLAP_NS
        if self._resume_ns is not None:
            return self._resume_ns
        # as early as the clock's error allows: a death just after the start must be read (an
        # offset measured 228 ms late once put a kill 241 ms after the start out of the stream)
        return self._began_on_node()

    async def _backfill_events(self, transport: Transport) -> None:
        """Read what podman recorded since the store's last knowledge, then return (no follow)."""
        if self._last_event_ns is None and self._resume_ns is None:
            return
        since = self._events_since()
        argv = podman.events_cmd(self._podman, since_ns=since - 1, follow=False)
        result = await transport.run(argv, timeout=120)
        count = 0
        # split on newlines only: str.splitlines() also splits inside a JSON string at
        # U+0085 or U+2028 (a container label may hold one) and would lose that event
        for line in result.stdout.split("\n"):
            if await self._on_event_line(line):
                count += 1
        if not result.ok:
            self._agent("backfill-problem", f"podman events exited {result.exit_status}: {result.stderr[-200:]}")
        self.sink.put(AgentObs(self.name, "", since, "backfilled",
                               f"{count} events from {podman.format_time_ns(since)} "
                               f"to {podman.format_time_ns(self.now_ns())}"))
        await self._check_lost_window(transport, since)

    async def _check_lost_window(self, transport: Transport, since: int) -> None:
        """podman's file events backend drops the older half of events.log at 1 MB (lost on a
        reboot when rootless): when its oldest event is newer than where the backfill had to
        begin, the events between are gone. Record that window, never skip it silently."""
        argv = ["sh", "-c", f"{quote_argv(podman.events_cmd(self._podman, follow=False))} | head -n 1"]
        try:
            result = await transport.run(argv, timeout=60)
        except TransportError:
            if not transport.connected:
                raise
            return
        first = podman.parse_event(result.stdout.split("\n", 1)[0], self.name)
        if not isinstance(first, EventObs) or first.at_ns <= since:
            return
        detail = (f"podman's event log begins at {podman.format_time_ns(first.at_ns)}, after where the backfill "
                  f"had to begin ({podman.format_time_ns(since)}): events in between are lost (the file events "
                  "backend keeps about 1 MB; a rootless log is lost on reboot)")
        self.sink.put(AgentObs(self.name, "", since, "lost-window", detail))
        self.sink.add_finding(Finding(
            self.name, "", "events-lost", "warning",
            f"{self.name}: events from {podman.format_time_ns(since)} to {podman.format_time_ns(first.at_ns)} "
            "are lost: podman no longer holds them",
            "podman's events log was truncated (events.log keeps about 1 MB) or reset (a reboot) while no "
            "watch ran, so deaths and stops in that window cannot be known from events",
            "keep a watch running (or run one more often than the log fills); the state at the window's end "
            "comes from the first snapshot", {"lost_from_ns": since, "lost_to_ns": first.at_ns}), self.now_ns())

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
                    await self._on_event_line(line)
                    await self.sink.backpressure()
                status = lines.exit_status
            if not transport.connected:
                raise LinkLost(f"podman events ended with the link (exit {status})")
            restarts += 1
            self._agent("events-restarted", f"podman events ended (exit {status}): {lines.stderr[-200:]}")
            # a podman that keeps failing at once must not spin: back off a little
            await asyncio.sleep(min(0.1 * restarts, self._watch.backoff_max))

    async def _on_event_line(self, line: str) -> bool:
        """Take one line of `podman events`; True if it was a new event of a wanted container."""
        if not line.strip():
            return False
        parsed = podman.parse_event(line, self.name)
        if parsed is None:
            return False
        if isinstance(parsed, podman.ParseError):
            self.view.parse_errors += 1
            self._agent("parse-error", f"event: {parsed.reason}: {parsed.excerpt}")
            return False
        self.logs.note_event(parsed)  # run boundaries of partial log lines, even of others
        if not self._wanted(parsed.container) and not self._renamed_away(parsed):
            return False
        # interned: the keys of one container's events share one id string
        key = (_intern(parsed.container_id), _intern(parsed.status), parsed.at_ns)
        if key in self._seen_events:
            return False
        await self._before_event(parsed)
        # the key is remembered only once the event is stored: a cancellation while the kernel
        # log was read leaves it unseen, and the backfill after a reconnect brings it again
        self.sink.put(parsed)
        self._seen_events.add(key)
        if self._last_event_ns is None or parsed.at_ns > self._last_event_ns:
            self._last_event_ns = parsed.at_ns
            cutoff = parsed.at_ns - EVENT_KEYS_SPAN_NS
            self._seen_events.drop_while(lambda seen: seen[2] < cutoff)
        self.view.events += 1
        if parsed.container in self.config.containers:
            if parsed.status == "died":
                # podman 4.3 often writes no `stop` event: inspect soon to tell a stop from a crash
                self._recheck[parsed.container] = max(parsed.at_ns, self._recheck.get(parsed.container, 0))
                self._recheck_wake.set()
            elif parsed.status == "start" and parsed.at_ns > self._recheck.get(parsed.container, parsed.at_ns):
                # started again since (the restart policy, a user's restart): no stop to tell
                del self._recheck[parsed.container]
        return True

    async def _before_event(self, event: EventObs) -> None:
        """Evidence an event needs before the machines see it: the kernel's OOM kill.

        podman 4.3 reports `OOMKilled=false` even for a real OOM kill and writes only a
        `died` with exit 137, so for such a death the kernel log is read (about 20 ms)
        and the kill it names goes to the store and the machine first, stamped at the
        kernel's time (it came before the died). Where the log cannot be read (rootless:
        dmesg_restrict), that is recorded once and the machine says "likely".
        """
        if event.status != "died" or event.exit_code != 137 or not event.container_id:
            return
        if self._kernel_log is False and time.monotonic() < self._kernel_log_retry_at:
            return
        try:
            scan = await oom_kills(self._transport_now, [event.container_id], event.at_ns - OOM_SLACK_NS)
        except TransportError:
            return  # the link went: the event is still stored, without the kernel's word
        if not scan.available:
            if self._kernel_log is not False:
                self._agent("kernel-log-unavailable", f"OOM kills cannot be confirmed: {scan.reason}")
            self._kernel_log = False
            self._kernel_log_retry_at = time.monotonic() + KERNEL_LOG_RETRY_S  # it may have been passing
            return
        self._kernel_log = True
        kill = scan.near(event.container_id, event.at_ns, OOM_SLACK_NS)
        if kill is None:
            # read, and no OOM kill of it: the SIGKILL came from outside (not a likely OOM kill)
            self.sink.put(ProbeObs(self.name, event.container, event.at_ns - 1, "oom-kill", "kernel-log", True,
                                   0.0, "", f"no oom-kill of this container in the kernel log ({scan.source})"))
        else:
            self.sink.put(ProbeObs(self.name, event.container, min(kill.at_ns, event.at_ns - 1), "oom-kill",
                                   "kernel-log", False, 0.0, kill.evidence[:500],
                                   f"killed by the kernel's OOM killer: {kill.task} (pid {kill.pid}), "
                                   f"{'its own memory limit' if kill.by_own_limit else 'the node ran out of memory'}"))

    # ------------------------------------------------------------ reconcile and health

    async def _reconcile_loop(self, transport: Transport) -> None:
        """Reconcile every reconcile_interval, and RECHECK_DELAY_S after a death no start followed.

        The interval is kept on a fixed due time: a container dying and restarting more often
        than the interval wakes the loop at every death, and must not put the regular
        reconcile off for ever (snapshots, health-check lists, new log files depend on it)."""
        interval = self._watch.reconcile_interval
        due = time.monotonic() + interval
        while True:
            woken = await _wait(self._recheck_wake, max(0.0, due - time.monotonic()))
            if woken:
                # give a restart policy its moment before looking
                await asyncio.sleep(RECHECK_DELAY_S)
                self._recheck_wake.clear()
                if not self._recheck and time.monotonic() < due:
                    continue  # every death was followed by its start: the events said it all
                self._recheck.clear()
            await self._reconcile(transport)
            due = time.monotonic() + interval

    @property
    def transport(self) -> Transport | None:
        """The link of the current connection (None before the first; check `connected`)."""
        return self._transport_now

    @property
    def rootless(self) -> bool:
        """podman on the node runs rootless (learned at connect)."""
        return self._rootless

    def now_ns(self) -> int:
        """Now on the node's clock (podman's timestamps are the node's)."""
        return time.time_ns() + self._clock_offset_ns

    async def _inspect(self, transport: Transport) -> tuple[list[podman.InspectFacts], list[str]]:
        """The watched containers' inspect, and problems met (then the facts are no picture).

        With containers configured, one `podman container inspect` of their names: one podman
        process a reconcile instead of two (ps, then inspect), and only the watched containers'
        JSON. A name podman does not know is reported on stderr and left out of stdout (exit
        125): absent; podman's warnings are no failure. Any other failure, and no names
        configured: every container (ps + inspect), whose problems are reported.
        """
        names = sorted(self.config.containers)
        if not names:
            return await inspect_all(transport, self._podman, clock=self.now_ns)
        result = await transport.run(podman.inspect_cmd(self._podman, names), timeout=60)
        facts = podman.parse_inspect(result.stdout, transport.name, self.now_ns())
        if isinstance(facts, podman.ParseError) or not (result.ok or _only_absent(result.stderr, facts, names)):
            # anything else (a name podman took for an ambiguous id prefix, a podman that failed):
            # ask as with no names configured, ps then inspect, which says what went wrong
            return await inspect_all(transport, self._podman, clock=self.now_ns)
        return facts, []

    async def _reconcile(self, transport: Transport) -> None:
        """Snapshot every expected and present container from inspect."""
        facts, problems = await self._inspect(transport)
        if problems:
            # podman did not answer: absence here proves nothing, so no snapshot at all
            for problem in problems:
                self._agent("reconcile-problem", problem)
            return
        facts = [f for f in facts if self._wanted(f.name)]
        at_ns = self.now_ns()
        self.logs.note_facts(facts)
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
        self.facts = by_name
        self.ready.set()

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

    async def check_health_now(self, name: str) -> None:
        """Run the container's health check once, now, over the watcher's link (an experiment
        waiting for `healthy` need not wait for the next interval). No-op while disconnected."""
        transport = self._transport_now
        if transport is None or not transport.connected:
            return
        await self._run_healthcheck(transport, name, 30.0)

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
        output = (result.stdout + result.stderr).strip()
        self.sink.put(ProbeObs(self.name, name, self.now_ns(), "healthcheck", "podman-healthcheck",
                               outcome == "healthy", result.duration_s * 1000, output[-500:], str(outcome)))

    # ------------------------------------------------------------ helpers

    def _renamed_away(self, event: EventObs) -> bool:
        """A rename of a watched container to a name the config does not know: its machine
        must hear it (the event names only the new name) or it would claim a live container."""
        return event.status == "rename" and any(
            machine.container_id == event.container_id for machine in self.sink.fleet.machines()
            if machine.target == self.name)

    def _wanted(self, container: str) -> bool:
        """Only the configured containers are watched; with none configured, every container."""
        return not self.config.containers or container in self.config.containers

    def _agent(self, what: str, detail: str = "") -> None:
        self.sink.put(AgentObs(self.name, "", self.now_ns(), what, detail))


async def _until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends (raising what it raised) or `stop` is set (then cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        task.result()


def _only_absent(stderr: str, facts: list[podman.InspectFacts], names: list[str]) -> bool:
    """Whether a failed `podman container inspect NAMES` failed only for names that do not exist.

    Podman's warnings (`level=warning msg=...`, `WARN[0000] ...`; rootless over SSH often
    warns that no systemd user session is available) are not failures."""
    unexplained = [line for line in stderr.splitlines() if line.strip() and not _NO_SUCH_CONTAINER.search(line)
                   and not _PODMAN_WARNING.search(line)]
    return not unexplained and len({f.name for f in facts} & set(names)) < len(names)


def _intern(text: str) -> str:
    return sys.intern(text) if type(text) is str else text


def _event_time(key: tuple) -> int:
    """An event identity's time (its key is (container id, status, at_ns))."""
    return key[2]


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False

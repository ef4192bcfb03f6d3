"""Following the containers' logs of one target: every line once, exactly as written.

Two readers, chosen per target when the link comes up:
- conmon's own k8s-file logs, followed by a small Perl program on the node
  (`agent.container_logs.FOLLOWER`): exact. Each line's identity is the byte offset of its
  first record, the resume point of each container is its own offset, and a restart does
  not interrupt the follow (every run appends to the same file). Used when the node has
  perl and every followed container logs to k8s-file (podman 4.3's default on Debian).
- `podman logs -f --timestamps --names` otherwise: identity by place within a stamp,
  resume per container by its own last stamp, glues recognised in podman's exact format
  only (`PodmanLogsParser`); a restarted container drops out of `logs -f`, so each start
  restarts it.

Lines are deduplicated per container (a bounded set of recent identities each, so one
container's backlog never evicts another's), matched against the container's error
patterns, and handed to the sink (which redacts once, stores, then feeds the machines).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import regex
from agent import podman
from agent.config import DEFAULT_ERROR_PATTERNS, DEFAULT_ERROR_WORDS, Config
from agent.container_logs import (
    FollowerLine,
    Line,
    LogJoiner,
    PodmanLogsParser,
    follower_argv,
    parse_follower_line,
    parse_k8s_record,
)
from agent.errors import TransportError
from agent.transport import Transport, quote_argv
from machines.observations import EventObs, LogObs

_S = 1_000_000_000
# How long a line may wait for the event stream to say whether a restart came between its
# partial records (podman's file events backend polls every 250 ms; the link adds some).
BOUNDARY_WAIT_NS = 2 * _S
# After this much work in one go the reader yields, so events are never held up by a flood.
YIELD_AFTER_S = 0.01
PATTERN_TIMEOUT_S = 0.05  # a user's error pattern that runs longer on one line is skipped for it
K8S_DRIVERS = frozenset({"k8s-file", "json-file"})  # podman maps json-file to k8s-file
# Line identities remembered per followed container (~190 bytes each: ~50 KB a container).
# A live follow never reads a line twice (it resumes at its own offset); duplicates come
# only from a re-read: a resume from the store (its identities are seeded, however many),
# or podman logs' re-read of a container's last stamp (a flood puts ~70 lines in one). A
# duplicate past this is still dropped by the store's unique key.
LOG_KEYS_KEPT = 256
# Containers whose run boundaries (died/init times) are kept: every container of the node,
# watched or not, has its events seen; names that come and go (one-off jobs) must not
# pile up. The least recently updated is forgotten first: a container with a partial line
# open and no event since needs nothing older than its next init.
BOUNDARY_CONTAINERS = 1024
BOUNDARY_TIMES = 64  # per container


class RecentKeys:
    """A bounded set of recently seen keys, for dropping re-read duplicates.

    At most `limit` keys, the oldest (first added) evicted first. `seed` adds keys that must
    all stay until they are used (the identities a resume reads from the store): the limit
    grows to hold them all, each key added after evicts one (the oldest), and once as many
    new keys came in as were seeded the set is cut back to `limit`. `drop_while` drops the oldest keys a
    predicate rejects (a bound in time rather than in count).
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._keys: set = set()
        self._order: deque = deque()
        self._base = limit
        self._limit = limit
        self._grace = 0  # keys still to be added before a seeded surplus is given up

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: object) -> bool:
        """Remember `key`; False if it was already there."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if self._grace:
            self._grace -= 1  # a seeded surplus: one out for one in, until as many came in as were seeded
            if not self._grace:
                self._limit = self._base
        while len(self._order) > self._limit:
            self._keys.discard(self._order.popleft())
        return True

    def seed(self, keys: Iterable, order: Callable[[Any], Any] | None = None) -> None:
        """Add `keys` (oldest first by `order`, if given), growing the limit to hold them all."""
        fresh = [key for key in (sorted(keys, key=order) if order is not None else keys) if key not in self._keys]
        self._limit = max(self._limit, len(self._order) + len(fresh))
        if self._limit > self._base:
            self._grace = max(self._grace, len(fresh))
        for key in fresh:
            self._keys.add(key)
            self._order.append(key)

    def drop_while(self, stale: Callable[[Any], bool]) -> None:
        """Forget the oldest keys while `stale(oldest)` is true."""
        order = self._order
        while order and stale(order[0]):
            self._keys.discard(order.popleft())

    @property
    def limit(self) -> int:
        return self._limit

    def __len__(self) -> int:
        return len(self._keys)


class LogMatcher:
    """Tells error lines from noise with a container's patterns.

    Patterns run on the `regex` engine with a time limit per line: a user's pattern that
    backtracks catastrophically on a hostile line gives up on that line (counted in
    `timeouts`) instead of stalling the agent.
    """

    def __init__(self, errors: Iterable[str], ignore: Iterable[str]) -> None:
        errors = list(errors)
        self._errors = [regex.compile(p) for p in errors]
        self._ignore = [regex.compile(p) for p in ignore]
        # the default pattern costs ~5 us a line; most lines hold none of its words
        self._words = DEFAULT_ERROR_WORDS if errors == list(DEFAULT_ERROR_PATTERNS) else None
        self.timeouts = 0

    def _any(self, patterns: list, line: str) -> bool:
        for pattern in patterns:
            try:
                if pattern.search(line, timeout=PATTERN_TIMEOUT_S):
                    return True
            except TimeoutError:
                self.timeouts += 1
        return False

    def is_error(self, line: str) -> bool:
        """True when an error pattern matches and no ignore pattern does."""
        if self._words is not None and line.isascii():
            # (non-ASCII lines skip this: (?i) folds e.g. 'ſ' to 's', lower() does not)
            low = line.lower()
            if not any(word in low for word in self._words):
                return False
        return self._any(self._errors, line) and not self._any(self._ignore, line)


@dataclass
class Source:
    """One followed container: where its log is and how far it has been read."""

    name: str
    container_id: str
    path: str
    created_ns: int
    joiner: LogJoiner
    keys: RecentKeys = field(default_factory=lambda: RecentKeys(LOG_KEYS_KEPT))
    next_offset: int | None = None  # bytes of the file read so far (None: not started)
    start: str = "0"  # where a first read begins: an offset, or t<ns>
    keys_pending: bool = False  # resumed from the store: load its identities at the first record


class LogFollow:
    """Follows every wanted container's log on one target; owned by a TargetWatcher."""

    def __init__(self, target: str, config: Config, sink: object, *, podman_cmd: list[str],
                 now_ns: Callable[[], int], agent: Callable[[str, str], None], view: object,
                 wanted: Callable[[str], bool]) -> None:
        self.target = target
        self.config = config
        self.sink = sink
        self._podman = podman_cmd
        self._now_ns = now_ns
        self._agent = agent
        self._view = view
        self._wanted = wanted
        self._matchers = {name: LogMatcher(config.error_patterns(name), c.log_ignore)
                          for name, c in config.containers.items()}
        self._default_matcher: LogMatcher | None = None
        self._sources: dict[str, Source] = {}  # by container name
        self._facts: dict[str, podman.InspectFacts] = {}
        self._boundaries: dict[str, deque[int]] = {}  # container -> recent start/died times
        self._watermark_ns = 0  # the newest event time seen: events before it have arrived
        self._since_ns = 0  # where a container never stored begins (the backfill start)
        self._restart = asyncio.Event()
        self._resume_loaded: set[str] = set()  # container ids whose store position is known
        # podman-logs mode: container -> the last line handed on, (stamp, its place in the stamp)
        self._fallback_last: dict[str, tuple[int, int]] = {}
        self._fallback_names: set[str] = set()
        self.mode = "unknown"  # "conmon" | "podman-logs"
        self.perl = False

    # ------------------------------------------------------------ what the watcher tells us

    def set_since(self, since_ns: int) -> None:
        """Where a container with nothing stored begins: the run's backfill start."""
        self._since_ns = since_ns

    def note_event(self, obs: EventObs) -> None:
        """An event of this target: run boundaries for partial lines, and new log files."""
        if obs.at_ns > self._watermark_ns:
            self._watermark_ns = obs.at_ns
        # A run's records all come before its `died`, and the next run's after its `init`;
        # `start` (and inspect's StartedAt) are stamped after the new run may already have
        # written (measured: its first record ~0.7 ms before the start event), and a user's
        # `restart` is written while the old run can still write: neither is a boundary.
        if obs.status in ("died", "init"):
            self._boundary(obs.container).append(obs.at_ns)
        if not self._wanted(obs.container):
            return
        if obs.status in ("create", "remove", "rename"):
            self._restart.set()  # a new or gone log file: the follow must learn it
        elif obs.status == "start" and self.mode == "podman-logs":
            self._restart.set()  # podman logs -f drops a container that restarted

    def note_facts(self, facts: Iterable[podman.InspectFacts]) -> None:
        """The latest inspect of the target: log paths, ids, and run starts we missed."""
        current = {f.name: f for f in facts if self._wanted(f.name)}
        for name, fact in current.items():
            # a death the events did not show (FinishedAt comes after the dead run's records)
            if fact.finished_at_ns and not fact.running:
                times = self._boundaries.get(name)
                if times is None or fact.finished_at_ns not in times:
                    self._boundary(name).append(fact.finished_at_ns)
        if self.mode == "podman-logs":
            running = {n for n, f in current.items() if f.running}
            if running != self._fallback_names:
                self._restart.set()
        elif self.mode == "conmon":
            if set(self._sources) != set(current) or any(
                    self._sources[n].container_id != f.id for n, f in current.items() if n in self._sources):
                self._restart.set()
        self._facts = current

    def _boundary(self, container: str) -> deque[int]:
        """The container's run boundaries, moved to the newest end (BOUNDARY_CONTAINERS kept)."""
        times = self._boundaries.pop(container, None)
        if times is None:
            times = deque(maxlen=BOUNDARY_TIMES)
            while len(self._boundaries) >= BOUNDARY_CONTAINERS:
                del self._boundaries[next(iter(self._boundaries))]
        self._boundaries[container] = times
        return times

    def started_between(self, container: str, after_ns: int, upto_ns: int) -> bool | None:
        """Whether a run of the container ended (died) or a new one began (init) in
        (after_ns, upto_ns]; None while the event stream has not yet reached upto_ns."""
        for at in self._boundaries.get(container, ()):
            if after_ns < at <= upto_ns:
                return True
        if self._watermark_ns >= upto_ns + 200_000_000 or self._now_ns() >= upto_ns + BOUNDARY_WAIT_NS:
            return False
        return None

    # ------------------------------------------------------------ the follow loop

    async def run(self, transport: Transport) -> None:
        """Follow until cancelled; raises TransportError when the link drops."""
        failures = 0
        while True:
            self._restart.clear()
            facts = [f for f in self._facts.values() if self._wanted(f.name)]
            if not facts:
                await _wait(self._restart, self.config.watch.reconcile_interval)
                continue
            if self.perl and failures < 3 and all(f.log_driver in K8S_DRIVERS and f.log_path for f in facts):
                self.mode = "conmon"
                try:
                    await self._follow_conmon(transport, facts)
                    failures = 0
                except _StreamEnded as ended:
                    if not transport.connected:
                        raise TransportError(self.target, ["perl", "follower"], "link lost") from None
                    failures += 1
                    self._agent("log-follower-ended", f"the log follower on the node ended: {ended}"
                                + ("; falling back to podman logs" if failures >= 3 else "; starting it again"))
                    await asyncio.sleep(min(failures, 5))
            else:
                if self.mode != "podman-logs":
                    why = "no perl on the node" if not self.perl else "a container does not log to k8s-file"
                    self._agent("log-reader", f"podman logs ({why}): a partial line may be misread")
                self.mode = "podman-logs"
                await self._follow_podman_logs(transport, facts)

    async def _sources_for(self, facts: list[podman.InspectFacts]) -> list[Source]:
        sources = []
        for fact in sorted(facts, key=lambda f: f.name):
            source = self._sources.get(fact.name)
            if source is not None and source.container_id != fact.id:
                for line in source.joiner.flush():  # the old container's unfinished lines
                    self._emit(line)
                source = None
            if source is None:
                source = Source(fact.name, fact.id, fact.log_path, fact.created_at_ns,
                                LogJoiner(fact.name, self.started_between))
                await self._load_position(source)
                self._sources[fact.name] = source
            source.path = fact.log_path
            sources.append(source)
        for gone in set(self._sources) - {f.name for f in facts}:
            for line in self._sources.pop(gone).joiner.flush():
                self._emit(line)
        return sources

    async def _load_position(self, source: Source) -> None:
        """Resume where the store's lines of this very container end, else from `since`."""
        store = getattr(self.sink, "store", None)
        position = await store.log_resume(self.target, source.name) if store is not None else None
        if position is not None and position[1] >= source.created_ns:
            # re-read from the oldest line still unfinished when the last one was stored;
            # the identities already stored drop what is read twice
            source.start = str(position[0])
            source.keys_pending = True
        elif source.created_ns >= self._since_ns:
            source.start = "0"  # created since: all of it is new
        else:
            source.start = f"t{self._since_ns}"

    async def _load_keys(self, source: Source, first_ns: int) -> None:
        """The identities the store holds from the first re-read record on (minus a margin
        for stdout and stderr records a little out of time order). The flag drops only once
        they are in: a follow cut short while loading loads them again."""
        store = getattr(self.sink, "store", None)
        if store is not None:
            source.keys.seed(await store.log_keys(self.target, source.name, first_ns - _S), order=_in_place)
        source.keys_pending = False

    async def _follow_conmon(self, transport: Transport, facts: list[podman.InspectFacts]) -> None:
        sources = await self._sources_for(facts)
        specs = [(index, str(s.next_offset) if s.next_offset is not None else s.start, s.path)
                 for index, s in enumerate(sources)]
        async with transport.stream(follower_argv(specs), errors="surrogateescape") as lines:
            reader = asyncio.ensure_future(self._read_conmon(lines, sources))
            try:
                await self._until_restart(reader)
            except _StreamEnded:
                raise _StreamEnded(f"exit {lines.exit_status}: {lines.stderr[-300:]}") from None
        for source in sources:
            for line in source.joiner.release():
                self._emit(line)

    async def _read_conmon(self, lines: object, sources: list[Source]) -> None:
        yielded = time.monotonic()
        async for raw in lines:  # type: ignore[attr-defined]
            parsed = parse_follower_line(raw)
            if isinstance(parsed, podman.ParseError):
                self._parse_error(parsed)
                continue
            if not 0 <= parsed.index < len(sources):
                continue
            source = sources[parsed.index]
            if source.keys_pending and parsed.what == "R":
                record = parse_k8s_record(parsed.record)
                if not isinstance(record, podman.ParseError):
                    await self._load_keys(source, record.at_ns)
            self._on_follower_line(source, parsed)
            if time.monotonic() - yielded > YIELD_AFTER_S:
                await self._pause()
                yielded = time.monotonic()
            await self.sink.backpressure()  # type: ignore[attr-defined]
        raise _Ended()

    def _on_follower_line(self, source: Source, line: FollowerLine) -> None:
        if line.what == "R":
            source.next_offset = line.offset + line.length
            record = parse_k8s_record(line.record)
            if isinstance(record, podman.ParseError):
                self._parse_error(record)
                return
            for whole in source.joiner.feed(line.offset, record, line.offset + line.length):
                self._emit(whole)
        elif line.what == "T":
            source.next_offset = 0
            self._agent("log-truncated", f"{source.name}: {source.path} shrank to {line.offset} bytes; "
                                         "reading it again from the start")
        elif line.what == "N":
            source.next_offset = 0
            self._agent("log-replaced", f"{source.name}: {source.path} was replaced; reading the new file")
        elif line.what == "M":
            self._agent("log-missing", f"{source.name}: no log file at {source.path} yet")

    async def _until_restart(self, reader: asyncio.Future) -> None:
        restart = asyncio.ensure_future(self._restart.wait())
        releaser = asyncio.ensure_future(self._release_loop())
        try:
            await asyncio.wait({reader, restart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (restart, releaser, reader):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reader, restart, releaser, return_exceptions=True)
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is not None and not isinstance(exc, _Ended):
                raise exc
            if isinstance(exc, _Ended):
                raise _StreamEnded()

    async def _release_loop(self) -> None:
        """Lines held for the event stream: decide them as soon as the answer is known."""
        while True:
            await asyncio.sleep(0.25)
            for source in list(self._sources.values()):
                if source.joiner.holding:
                    for line in source.joiner.release():
                        self._emit(line)

    # ------------------------------------------------------------ the podman logs fallback

    async def _follow_podman_logs(self, transport: Transport, facts: list[podman.InspectFacts]) -> None:
        names = sorted(f.name for f in facts if f.running)
        self._fallback_names = set(names)
        present = {f.name for f in facts}
        for gone in [name for name in self._fallback_last if name not in present]:
            del self._fallback_last[gone]  # removed: a container made again under the name logs anew
        if not names:
            await _wait(self._restart, self.config.watch.reconcile_interval)
            return
        for name in names:
            if name not in self._fallback_last:
                self._fallback_last[name] = (await self._fallback_start(name), -1)
        since = min(self._fallback_last[name][0] for name in names)
        argv = podman.logs_cmd(self._podman, names, since_ns=since - 1, follow=True, timestamps=True)
        merged = ["sh", "-c", f"exec {quote_argv(argv)} 2>&1"]  # container stderr is podman's stderr
        parser = PodmanLogsParser(names, self._now_ns)
        async with transport.stream(merged) as lines:
            reader = asyncio.ensure_future(self._read_podman_logs(lines, parser))
            try:
                await self._until_restart(reader)
            except _StreamEnded:
                if not transport.connected:
                    raise TransportError(self.target, ["podman", "logs"], "link lost") from None
                await _wait(self._restart, 1.0)  # every container stopped: wait for a start
        for line in parser.flush():
            self._emit_fallback(line)

    async def _fallback_start(self, name: str) -> int:
        """A container's own resume stamp: its newest stored line's (re-read whole), else `since`."""
        store = getattr(self.sink, "store", None)
        position = await store.log_resume(self.target, name) if store is not None else None
        if position is None:
            return self._since_ns
        last = position[1]
        self._source_keys(name).seed(await store.log_keys(self.target, name, last), order=_in_place)
        return last

    def _source_keys(self, name: str) -> RecentKeys:
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = Source(name, "", "", 0, LogJoiner(name))
        return source.keys

    async def _read_podman_logs(self, lines: object, parser: PodmanLogsParser) -> None:
        yielded = time.monotonic()
        async for raw in lines:  # type: ignore[attr-defined]
            for parsed in parser.feed(raw):
                if isinstance(parsed, podman.ParseError):
                    if parsed.excerpt.strip():
                        self._parse_error(parsed)
                    continue
                self._emit_fallback(parsed)
            if time.monotonic() - yielded > YIELD_AFTER_S:
                await self._pause()
                yielded = time.monotonic()
            await self.sink.backpressure()  # type: ignore[attr-defined]
        raise _Ended()

    def _emit_fallback(self, line: Line) -> None:
        # A restarted `podman logs -f` re-reads each container's last stamp whole (a flood puts
        # thousands of lines in one stamp, more than the identities kept): the lines up to the
        # last one handed on are dropped by place, the rest (and a resume's stored ones) by key.
        place = (line.at_ns, line.seq)
        if place <= self._fallback_last.get(line.container, (0, -1)):
            return
        self._fallback_last[line.container] = place
        self._emit(line)

    # ------------------------------------------------------------ one line

    def _emit(self, line: Line) -> None:
        keys = self._source_keys(line.container)
        if not keys.add((line.at_ns, line.seq)):
            return
        matcher = self._matchers.get(line.container)
        if matcher is None:
            if self._default_matcher is None:
                self._default_matcher = LogMatcher(self.config.error_patterns(line.container), ())
            matcher = self._default_matcher
        is_error = matcher.is_error(line.text)
        self._view.logs += 1  # type: ignore[attr-defined]
        self._view.errors += int(is_error)  # type: ignore[attr-defined]
        self.sink.put(LogObs(self.target, line.container, line.at_ns, line.text, line.stream,  # type: ignore[attr-defined]
                             is_error, line.seq, line.resume))

    def _parse_error(self, error: podman.ParseError) -> None:
        self._view.parse_errors += 1  # type: ignore[attr-defined]
        if self._view.parse_errors <= 20 or self._view.parse_errors % 1000 == 0:  # type: ignore[attr-defined]
            self._agent("parse-error", f"log: {error.reason}: {error.excerpt}")

    @staticmethod
    async def _pause() -> None:
        await asyncio.sleep(0)


def _in_place(key: tuple[int, int]) -> tuple[int, int]:
    """A line identity's order: (at_ns, seq), the order a re-read meets them."""
    return key


class _Ended(Exception):
    """The follow's output ended by itself (internal)."""


class _StreamEnded(Exception):
    """The follow command exited by itself (internal)."""


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False


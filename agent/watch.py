"""`podwarden watch`: one watcher per target, recording into one run until stopped or for a duration.

Besides the watchers, a watch runs the remediation hooks of every target (agent/hooks.py)
and a drift detector over the whole watch (machines/drift.py), both fed the same stream
as the machines (the sink's `on_fed`). The drift window opens once every target is
watched (connected, first snapshot in), marked in the store by a `window-start` agent
record so a replay opens it at the same place. `soak` is a watch with a window of its own.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from loguru import logger

from agent import metrics as prometheus
from agent.config import TargetConfig
from agent.hooks import Remediator
from agent.recording import Recording
from agent.watcher import RESUME_OVERLAP_NS, TargetWatcher
from agent.windows import WINDOW_END, WINDOW_START, drift_detector  # noqa: F401 (drift_detector: re-exported)
from machines.container import StateChange
from machines.observations import AgentObs, Observation

_S = 1_000_000_000
# Runs that follow a target's events: their end is where the store's knowledge of it ends.
WATCHING_COMMANDS = ("watch", "soak", "run", "experiment")
# How much earlier than the last watch's end a quiet run's backfill begins (clock offset, lag).
RESUME_MARGIN_NS = 60 * _S


async def watchers_for(rec: Recording, targets: list[TargetConfig]) -> list[TargetWatcher]:
    """A watcher per target, each resuming where the store's knowledge of its target ends."""
    watchers = []
    store = rec.store
    for target in targets:
        last = seen = resume = None
        if store is not None:
            last = await store.last_event_ns(target.name)
            # the watcher resumes RESUME_OVERLAP_NS before `last`: know what it will replay
            seen = (await store.event_keys_since(target.name, last - RESUME_OVERLAP_NS)
                    if last is not None else set())
            # a previous watch that stored no event still watched: resume at its end, a margin
            # early (its end is stamped on this machine's clock, podman's events on the node's)
            resume = await store.last_run_end_ns(target.name, WATCHING_COMMANDS)
            if resume is not None:
                resume -= RESUME_MARGIN_NS
        watchers.append(TargetWatcher(target, rec.config, rec.sink, start_ns=rec.started_ns,
                                      last_event_ns=last, seen_events=seen, resume_ns=resume))
    prometheus.register(rec, watchers)  # the metrics endpoint serving the run, if any, reads them
    return watchers


class Window:
    """The drift window of a watch or a soak, and the hooks, fed what the machines are fed."""

    def __init__(self, rec: Recording, watchers: list[TargetWatcher], *, dry_run: bool = False,
                 progress: Callable[[str], None] | None = None, hooks: bool = True) -> None:
        self.rec = rec
        self.watchers = watchers
        self.detector = drift_detector(rec.config, [w.name for w in watchers])
        self.remediators = [Remediator(rec.config, w, dry_run=dry_run, progress=progress) for w in watchers] \
            if hooks else []
        self.started_ns: int | None = None
        self.ended_ns: int | None = None
        self.opened = asyncio.Event()
        rec.sink.on_fed.append(self._fed)
        rec.sink.on_finding.append(self._finding)
        prometheus.register(rec, window=self)

    def _fed(self, obs: Observation, changes: list[StateChange], obs_id: int | None) -> None:
        for remediator in self.remediators:
            remediator.on_fed(obs, changes, obs_id)
        if self.detector.started and not self.detector.finished:
            for drift in self.detector.feed(obs, changes, obs_id):
                for remediator in self.remediators:
                    remediator.on_drift(drift)

    def _finding(self, finding: object) -> None:
        for remediator in self.remediators:
            remediator.on_finding(finding)  # type: ignore[arg-type]

    def now_ns(self) -> int:
        return self.watchers[0].now_ns() if self.watchers else 0

    async def open_when_ready(self, stop: asyncio.Event, detail: str = "") -> None:
        """Open the window once every watcher is ready (or `stop`), marked in the store."""
        waits = [asyncio.ensure_future(w.ready.wait()) for w in self.watchers]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([asyncio.gather(*waits), stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            for wait in waits:
                wait.cancel()
        if stop.is_set() and not all(w.ready.is_set() for w in self.watchers):
            return
        self.started_ns = self.now_ns()
        for watcher in self.watchers:
            self.rec.sink.put(AgentObs(watcher.name, "", self.started_ns, WINDOW_START, detail))
        self.detector.start(self.rec.fleet, self.started_ns)
        self.opened.set()

    def close(self, detail: str = "") -> None:
        """Close the window (the drift of links still lost, expectations unmet), marked in the store."""
        if self.detector.started and not self.detector.finished:
            self.ended_ns = self.now_ns()
            for watcher in self.watchers:
                self.rec.sink.put(AgentObs(watcher.name, "", self.ended_ns, WINDOW_END, detail))
            for drift in self.detector.finish(self.ended_ns):
                for remediator in self.remediators:
                    remediator.on_drift(drift)
        # a run may hold several windows (the stages of `podwarden run`): this one hears no more
        if self._fed in self.rec.sink.on_fed:
            self.rec.sink.on_fed.remove(self._fed)
        if self._finding in self.rec.sink.on_finding:
            self.rec.sink.on_finding.remove(self._finding)


async def watch(rec: Recording, watchers: list[TargetWatcher], stop: asyncio.Event, duration: float | None,
                *, on_tick: Callable[[], None] | None = None, tick_s: float = 0.5, window: Window | None = None,
                also: list[Callable[[asyncio.Event], object]] = (), metrics: str | None = None,
                metrics_any_address: bool = False) -> None:
    """Run every watcher (and the window's hooks) until `stop` is set or `duration` seconds pass;
    `on_tick` every `tick_s` (the live dashboard); `also`: more tasks given `stop` (a soak's probes).
    Operational failures are recorded by the watchers, never raised.

    `metrics`: serve Prometheus metrics on this HOST:PORT while watching (default `[watch]
    metrics`, `off`: none; loopback only unless `metrics_any_address`). Raises UsageError or
    ConfigError (exit 2) for a bad address or a port in use. A watch inside a verb that already
    serves the run's metrics (`soak`, `run`) is served by that endpoint."""
    endpoint = None
    if prometheus.exporter_of(rec) is None:
        endpoint = prometheus.Endpoint.open(rec.config, metrics, any_address=metrics_any_address)
    async with prometheus.serving(rec, endpoint) as exporter:
        if exporter is not None:
            exporter.add(watchers, window)
        await _watch(rec, watchers, stop, duration, on_tick=on_tick, tick_s=tick_s, window=window, also=also)


async def _watch(rec: Recording, watchers: list[TargetWatcher], stop: asyncio.Event, duration: float | None,
                 *, on_tick: Callable[[], None] | None, tick_s: float, window: Window | None,
                 also: list[Callable[[asyncio.Event], object]]) -> None:

    async def until_done() -> None:
        if duration is not None:
            try:
                await asyncio.wait_for(stop.wait(), duration)
            except (asyncio.TimeoutError, TimeoutError):
                stop.set()
        else:
            await stop.wait()

    async def ticking() -> None:
        while not stop.is_set():
            on_tick()  # type: ignore[misc]
            await asyncio.sleep(tick_s)
        on_tick()  # type: ignore[misc]

    async with asyncio.TaskGroup() as group:
        for watcher in watchers:
            group.create_task(watcher.run(stop), name=f"watch {watcher.name}")
        group.create_task(until_done(), name="duration")
        if window is not None:
            group.create_task(window.open_when_ready(stop), name="window")
            for remediator in window.remediators:
                group.create_task(remediator.run(stop), name=f"hooks {remediator.target}")
        for task in also:
            group.create_task(task(stop), name="also")  # type: ignore[arg-type]
        if on_tick is not None:
            group.create_task(ticking(), name="dashboard")
    if window is not None:
        window.close()
    logger.bind(run=rec.run_id).info("recorded {} state changes", len(rec.sink.changes))

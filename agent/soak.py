"""`podwarden soak`: the seed's cycle C5: hold a window and prove zero drift, or say exactly what drifted.

A soak is a watch (events, logs, snapshots, health checks, hooks: agent/watch.py) with a
window of its own: it opens once every target is watched, lasts `--for`, re-runs every
probe of every expected container and host service each `probe_interval`, and ends PASS
(no drift) or FAIL with the list: each drift names the container, its kind, podman's time,
the reason (the death behind it) and the evidence (machines/drift.py). The window's start
and end are agent records in the store, and the verdict with its drifts an `experiments`
row of kind `soak`, so the morning report and a replay find both.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agent import metrics as prometheus
from agent.check import plan_probes
from agent.config import Config, TargetConfig, format_duration
from agent.errors import TargetUnreachable, TransportError
from agent.probes import execute_probe
from agent.recording import Recording, recording
from agent.transport import make_transport
from agent.watch import Window, watch, watchers_for
from agent.watcher import TargetWatcher
from machines.drift import Drift, summarize


def _quiet(_: str) -> None:
    pass


@dataclass
class SoakOutcome:
    """One soak: its window, verdict and drifts."""

    run_id: int | None
    targets: list[str]
    duration_s: float
    started_ns: int | None = None
    ended_ns: int | None = None
    drifts: list[Drift] = field(default_factory=list)
    baselines: list[Any] = field(default_factory=list)
    probes_run: int = 0

    @property
    def verdict(self) -> str:
        return "pass" if self.started_ns is not None and not self.drifts else "fail"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "run_id": self.run_id, "targets": self.targets,
                "window": {"start": self.started_ns, "end": self.ended_ns, "duration_s": self.duration_s},
                "drifts": [drift.to_json() for drift in self.drifts],
                "containers": [summary.to_json() for summary in summarize(self.drifts)],
                "baselines": [baseline.to_json() for baseline in self.baselines], "probes_run": self.probes_run}


async def _probe_loop(config: Config, watcher: TargetWatcher, every_s: float, counter: list[int],
                      stop: asyncio.Event) -> None:
    """Every probe of the target's expected containers and services, again each `every_s`,
    through the sink (a failing probe is drift). Operational failures are failed probes."""
    await _wait(watcher.ready, stop)
    try:
        async with make_transport(watcher.target) as transport:
            podman_cmd = list(watcher.target.podman) or ["podman"]
            while not stop.is_set():
                plan = [p for p in plan_probes(config, watcher.facts, True) if not p.skip_reason]
                results = await asyncio.gather(*(execute_probe(
                    transport, podman_cmd, p.owner, p.probe, error_patterns=p.error_patterns,
                    ignore_patterns=p.ignore_patterns, now_ns=watcher.now_ns()) for p in plan))
                for result in results:
                    watcher.sink.put(result.obs)
                counter[0] += len(results)
                try:
                    await asyncio.wait_for(stop.wait(), every_s)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
    except (TargetUnreachable, TransportError):
        return  # the watcher records the link's loss; the soak's drift says how long


async def _wait(event: asyncio.Event, stop: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def soak(config: Config, targets: list[TargetConfig], db: str | None, duration_s: float, *,
               dry_run: bool = False, stop: asyncio.Event | None = None, progress: Callable[[str], None] = _quiet,
               on_tick: Callable[[Window], None] | None = None, metrics: str | None = None,
               metrics_any_address: bool = False) -> SoakOutcome:
    """Soak `targets` for `duration_s` once they are watched; the drift found, in one recorded run.

    `metrics`: serve Prometheus metrics on HOST:PORT meanwhile (default [watch] metrics; see
    agent/metrics.py). Raises UsageError or ConfigError for a bad metrics address or a port in
    use (before anything is recorded), TargetUnreachable when a target cannot be reached at the start.
    """
    endpoint = prometheus.Endpoint.open(config, metrics, any_address=metrics_any_address)
    try:
        async with recording(config, "soak", [t.name for t in targets], db) as rec:
            async with prometheus.serving(rec, endpoint, progress):
                outcome = await soak_in(rec, targets, duration_s, dry_run=dry_run, stop=stop, progress=progress,
                                        on_tick=on_tick)
            rec.verdict = "interrupted" if stop is not None and stop.is_set() else outcome.verdict
    finally:
        if endpoint is not None:
            endpoint.close()
    return outcome


async def soak_in(rec: Recording, targets: list[TargetConfig], duration_s: float, *, dry_run: bool = False,
                  stop: asyncio.Event | None = None, progress: Callable[[str], None] = _quiet,
                  on_tick: Callable[[Window], None] | None = None) -> SoakOutcome:
    """A soak of `targets` recorded into `rec` (its own run, or a stage of `podwarden run`).

    Raises TargetUnreachable when a target cannot be reached at the start.
    """
    config = rec.config
    stop = stop or asyncio.Event()
    names = [t.name for t in targets]
    # reach every target first: an unreachable one is exit 3, not a soak of nothing
    for target in targets:
        async with make_transport(target):
            pass
    watchers = await watchers_for(rec, targets)
    window = Window(rec, watchers, dry_run=dry_run, progress=progress)
    outcome = SoakOutcome(rec.run_id, names, duration_s)
    probes_run = [0]
    soak_stop = asyncio.Event()

    async def timing(outer: asyncio.Event) -> None:
        """Start the clock when the window opens; end the soak `duration_s` later (or on Ctrl-C)."""
        await _wait(window.opened, outer)
        started = time.monotonic()
        shown = 0.0
        while not outer.is_set():
            left = duration_s - (time.monotonic() - started)
            if left <= 0:
                break
            if time.monotonic() - shown >= 10.0 or shown == 0.0:
                shown = time.monotonic()
                drift = len(window.detector.drifts)
                progress(f"soak {format_duration(duration_s - left)} / {format_duration(duration_s)}: "
                         f"{drift} drift{'s' if drift != 1 else ''} so far")
            if on_tick is not None:
                on_tick(window)
            try:
                await asyncio.wait_for(outer.wait(), min(1.0, left))
            except (asyncio.TimeoutError, TimeoutError):
                pass
        soak_stop.set()

    async def relay(_: asyncio.Event) -> None:
        # Ctrl-C (the outer stop) ends the soak early, as a failed (incomplete) window
        await _wait(stop, soak_stop)
        soak_stop.set()

    probe_loops = [lambda event, w=w: _probe_loop(config, w, config.soak.probe_interval, probes_run, event)
                   for w in watchers]
    # metrics: the verb around (soak, run) serves the run's, if asked
    await watch(rec, watchers, soak_stop, None, window=window,
                also=[lambda event: timing(stop), relay, *probe_loops], metrics="off")
    outcome.started_ns, outcome.ended_ns = window.started_ns, window.ended_ns
    outcome.drifts = list(window.detector.drifts)
    outcome.baselines = list(window.detector.baselines)
    outcome.probes_run = probes_run[0]
    interrupted = stop.is_set()
    if rec.store is not None and outcome.started_ns is not None:
        rec.store.add_experiment(rec.run_id, kind="soak", subject=",".join(names), started_ns=outcome.started_ns,
                                 steps=[d.to_json() for d in outcome.drifts],
                                 verdict="interrupted" if interrupted else outcome.verdict,
                                 ended_ns=outcome.ended_ns)
    return outcome

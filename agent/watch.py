"""A recording session: the store, the machines and one watcher per target, run until stopped."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from loguru import logger
from rich.console import Console
from rich.live import Live

from agent.config import Config, TargetConfig
from agent.dashboard import render
from agent.watcher import RESUME_OVERLAP_NS, Sink, TargetWatcher
from machines.container import Fleet, MachineSettings, StateChange
from machines.observations import AgentObs, Observation, obs_data
from store import StoreWriter

_S = 1_000_000_000


def machine_settings(config: Config) -> MachineSettings:
    """Crash-loop thresholds from config."""
    return MachineSettings(
        crashloop_deaths=config.machine.crashloop_deaths,
        crashloop_window_ns=int(config.machine.crashloop_window * _S),
        stable_period_ns=int(config.machine.stable_period * _S),
    )


def change_json(change: StateChange) -> dict:
    """A state change as a JSON-ready dict with stable keys."""
    return {"type": "change", "target": change.target, "container": change.container, "at_ns": change.at_ns,
            "from": str(change.from_state), "to": str(change.to_state), "cause": change.cause,
            "contradiction": change.contradiction}


@dataclass
class Session:
    """Everything one recording run holds open."""

    config: Config
    store: StoreWriter
    run_id: int
    fleet: Fleet
    sink: Sink
    started_ns: int
    watchers: list[TargetWatcher] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)


@asynccontextmanager
async def open_session(config: Config, targets: list[TargetConfig], db_path: str, command: str
                       ) -> AsyncIterator[Session]:
    """Open the store, start a run and build the machines; always flushes and closes the store."""
    store = await StoreWriter.open(db_path, config.redaction.patterns, flush_interval=config.watch.flush_interval)
    try:
        run_id = await store.start_run(command, [t.name for t in targets],
                                       json.loads(config.model_dump_json(exclude={"path"})))
        fleet = Fleet(machine_settings(config))
        sink = Sink(fleet, store, run_id)
        session = Session(config, store, run_id, fleet, sink, time.time_ns())
        sink.on_change.append(session.changes.append)
        for target in targets:
            last = await store.last_event_ns(target.name)
            # the watcher resumes RESUME_OVERLAP_NS before `last`: know what it will replay
            seen = (await store.event_keys_since(target.name, last - RESUME_OVERLAP_NS)
                    if last is not None else set())
            last_log = await store.last_log_ns(target.name)
            seen_logs = (await store.log_keys_since(target.name, last_log - RESUME_OVERLAP_NS)
                         if last_log is not None else set())
            session.watchers.append(TargetWatcher(target, config, sink, start_ns=session.started_ns,
                                                  last_event_ns=last, seen_events=seen,
                                                  last_log_ns=last_log, seen_logs=seen_logs))
        verdict: str | None = None
        try:
            yield session
            verdict = "recorded"
        finally:
            await asyncio.shield(store.end_run(run_id, verdict or "interrupted"))
            fleet.close()
    finally:
        await asyncio.shield(store.close())


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set `stop` (a clean, flushed stop), a second one cancels; returns an undo."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    installed = []

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            # a second Ctrl-C: the clean stop is stuck (a frozen node), cut it short
            main_task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return undo


async def record(session: Session, stop: asyncio.Event, duration: float | None, *,
                 dashboard: bool, json_lines: bool, console: Console | None = None) -> None:
    """Run every watcher until `stop` or `duration`, showing a dashboard or JSON lines."""
    if json_lines:
        def emit_change(change: StateChange) -> None:
            sys.stdout.write(json.dumps(change_json(change)) + "\n")
            sys.stdout.flush()

        def emit_agent(obs: Observation) -> None:
            if isinstance(obs, AgentObs):
                sys.stdout.write(json.dumps({"type": "agent", "target": obs.target, "at_ns": obs.at_ns,
                                             **obs_data(obs)}) + "\n")
                sys.stdout.flush()

        session.sink.on_change.append(emit_change)
        session.sink.on_observation.append(emit_agent)

    async def until_done() -> None:
        if duration is not None:
            try:
                await asyncio.wait_for(stop.wait(), duration)
            except (asyncio.TimeoutError, TimeoutError):
                stop.set()
        else:
            await stop.wait()

    async def refresh(live: Live) -> None:
        while not stop.is_set():
            live.update(render(session.fleet, [w.view for w in session.watchers], session.started_ns,
                               len(session.changes)))
            await asyncio.sleep(0.5)

    async with asyncio.TaskGroup() as group:
        for watcher in session.watchers:
            group.create_task(watcher.run(stop), name=f"watch {watcher.name}")
        group.create_task(until_done(), name="duration")
        if dashboard:
            live = Live(render(session.fleet, [], session.started_ns, 0), console=console,
                        refresh_per_second=2, transient=False)
            with live:
                await refresh(live)
                live.update(render(session.fleet, [w.view for w in session.watchers], session.started_ns,
                                   len(session.changes)))
    logger.bind(run=session.run_id).info("recorded {} state changes", len(session.changes))

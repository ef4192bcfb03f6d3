"""`podwarden watch`: one watcher per target, recording into one run until stopped or for a duration."""

from __future__ import annotations

import asyncio
from typing import Callable

from loguru import logger

from agent.config import TargetConfig
from agent.recording import Recording
from agent.watcher import RESUME_OVERLAP_NS, TargetWatcher

# Runs that follow a target's events: their end is where the store's knowledge of it ends.
WATCHING_COMMANDS = ("watch", "soak", "run", "experiment")


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
            # a previous watch that stored no event still watched: resume at its end
            resume = await store.last_run_end_ns(target.name, WATCHING_COMMANDS)
        watchers.append(TargetWatcher(target, rec.config, rec.sink, start_ns=rec.started_ns,
                                      last_event_ns=last, seen_events=seen, resume_ns=resume))
    return watchers


async def watch(rec: Recording, watchers: list[TargetWatcher], stop: asyncio.Event, duration: float | None,
                *, on_tick: Callable[[], None] | None = None, tick_s: float = 0.5) -> None:
    """Run every watcher until `stop` is set or `duration` seconds pass; `on_tick` every `tick_s`
    (the live dashboard). Operational failures are recorded by the watchers, never raised."""

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
        if on_tick is not None:
            group.create_task(ticking(), name="dashboard")
    rec.verdict = rec.verdict or "recorded"
    logger.bind(run=rec.run_id).info("recorded {} state changes", len(rec.sink.changes))

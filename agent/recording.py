"""The run-recording helper every verb uses: one store, one run, one verdict, always closed.

    async with recording(config, "check", ["node1"], db) as rec:
        ...                      # observations go through rec.sink (store first, then machines)
        rec.verdict = "pass"     # or "fail", "recorded"; left unset, the run ends "error"

The store is opened once, the run started with the config as given (and the podwarden
version), and on any exit the run gets an end and a verdict: the one set, else
`interrupted` (Ctrl-C, SIGTERM, cancellation), `unreachable` (the target went away) or
`error`; the writer is flushed and closed, shielded from cancellation. With `db` None
nothing is stored, but the machines still run (the same code path as a stored run).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, AsyncIterator

import anyio
from loguru import logger

from agent.config import Config
from agent.errors import TargetUnreachable
from agent.sink import Sink
from machines.container import Fleet, MachineSettings
from store import Redactor, StoreError, StoreWriter

_S = 1_000_000_000


def machine_settings(config: Config) -> MachineSettings:
    """Crash-loop thresholds from config."""
    return MachineSettings(
        crashloop_deaths=config.machine.crashloop_deaths,
        crashloop_window_ns=int(config.machine.crashloop_window * _S),
        stable_period_ns=int(config.machine.stable_period * _S),
    )


def podwarden_version() -> str:
    """The installed podwarden's version ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("podwarden")
    except metadata.PackageNotFoundError:
        return "unknown"


def config_snapshot(config: Config) -> dict[str, Any]:
    """The config as the run stores it: as given (no redaction: it is the user's own), with the version."""
    return {**json.loads(config.model_dump_json(exclude={"path"})), "podwarden_version": podwarden_version()}


@dataclass
class Recording:
    """What a verb records into: the store (None with --no-store), its run, the machines and the sink."""

    config: Config
    command: str
    targets: list[str]
    store: StoreWriter | None
    run_id: int | None
    fleet: Fleet
    sink: Sink
    started_ns: int
    verdict: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def add_finding(self, finding: Any, at_ns: int) -> None:
        """Store a finding (anything shaped like agent.diagnosis.Finding) with this run."""
        self.sink.add_finding(finding, at_ns)

    async def flush(self) -> None:
        """Wait until everything recorded so far is committed."""
        if self.store is not None:
            await self.store.flush()


async def _maintain(store: StoreWriter, keep_ns: int) -> None:
    """The store's upkeep while a verb records: the text index of new log lines, and
    retention ([podwarden] keep), in the writer's idle time. A failed step is logged, never
    fatal to the verb (the writer reports its own failures)."""
    try:
        await store.maintain(keep_ns)
    except StoreError as exc:
        logger.warning("store upkeep stopped: {}", exc)


async def _recall_actions(rec: Recording) -> None:
    """The sink learns podwarden's recent actions on the run's targets from earlier runs, so a
    check tells the deaths an earlier experiment caused from the node's own (as far back as a
    check reads deaths: the crash-loop window and the stable period, and the stop timeout)."""
    machine = rec.config.machine
    since = rec.started_ns - int((machine.crashloop_window + machine.stable_period + 300) * _S)
    for target in rec.targets:
        for container, at_ns, action, dry_run in await rec.store.actions_since(target, since):  # type: ignore[union-attr]
            if not dry_run:
                rec.sink.remember_action(target, container, at_ns, action)


@asynccontextmanager
async def recording(config: Config, command: str, targets: list[str], db: str | None,
                    *, flush_interval: float | None = None) -> AsyncIterator[Recording]:
    """Open the store (unless `db` is None), start a run, and always end and close it.

    Raises the store's errors (NotAStore, StoreVersionError, ...) before the run starts; another
    verb writing the same file is no error (the writers share it).
    """
    store = None
    if db is not None:
        store = await StoreWriter.open(db, config.redaction.patterns,
                                       flush_interval=flush_interval or config.watch.flush_interval)
    run_id = None
    upkeep: asyncio.Task | None = None
    try:
        if store is not None:
            run_id = await store.start_run(command, targets, config_snapshot(config))
            upkeep = asyncio.create_task(_maintain(store, int(config.podwarden.keep * _S)), name="store upkeep")
        fleet = Fleet(machine_settings(config))
        redactor = store.redactor if store is not None else Redactor(config.redaction.patterns)
        rec = Recording(config, command, list(targets), store, run_id, fleet,
                        Sink(fleet, store, run_id, redactor=redactor), time.time_ns())
        if store is not None:
            await _recall_actions(rec)
        ending = "error"
        try:
            yield rec
            ending = rec.verdict or "recorded"
        except (KeyboardInterrupt, asyncio.CancelledError):
            ending = "interrupted"
            raise
        except TargetUnreachable:
            ending = rec.verdict or "unreachable"
            raise
        except BaseException as exc:
            if rec.verdict == "interrupted":  # the verb saw the stop request and wound down itself
                ending = "interrupted"
            # an error group from a task group: one that carries an interruption is one
            elif isinstance(exc, BaseExceptionGroup) and exc.subgroup((KeyboardInterrupt, asyncio.CancelledError)):
                ending = "interrupted"
            elif isinstance(exc, BaseExceptionGroup) and exc.subgroup(TargetUnreachable):
                ending = "unreachable"
            raise
        finally:
            fleet.close()
            if upkeep is not None:
                upkeep.cancel()  # each of its steps is shielded: no transaction is left open
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(upkeep, return_exceptions=True)
            if store is not None and run_id is not None:
                with anyio.CancelScope(shield=True):  # a Ctrl-C must not leave the run without an end
                    await store.end_run(run_id, ending)
    finally:
        if store is not None:
            await store.close()  # completes even when cancelled (StoreWriter.close)

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

from agent.config import Config
from agent.errors import TargetUnreachable
from agent.sink import Sink
from machines.container import Fleet, MachineSettings
from store import Redactor, StoreWriter

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


@asynccontextmanager
async def recording(config: Config, command: str, targets: list[str], db: str | None,
                    *, flush_interval: float | None = None) -> AsyncIterator[Recording]:
    """Open the store (unless `db` is None), start a run, and always end and close it.

    Raises the store's errors (StoreLocked, NotAStore, ...) before the run starts.
    """
    store = None
    if db is not None:
        store = await StoreWriter.open(db, config.redaction.patterns,
                                       flush_interval=flush_interval or config.watch.flush_interval)
    run_id = None
    try:
        if store is not None:
            run_id = await store.start_run(command, targets, config_snapshot(config))
        fleet = Fleet(machine_settings(config))
        redactor = store.redactor if store is not None else Redactor(config.redaction.patterns)
        rec = Recording(config, command, list(targets), store, run_id, fleet,
                        Sink(fleet, store, run_id, redactor=redactor), time.time_ns())
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
            if store is not None and run_id is not None:
                with anyio.CancelScope(shield=True):  # a Ctrl-C must not leave the run without an end
                    await store.end_run(run_id, ending)
    finally:
        if store is not None:
            await store.close()  # completes even when cancelled (StoreWriter.close)

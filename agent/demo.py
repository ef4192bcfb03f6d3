"""`podwarden demo`: the testbed up on the target, then the whole plan against it (`podwarden
run`, with short windows so it takes about two minutes), and the report it wrote."""

from __future__ import annotations

import asyncio
from typing import Callable

from agent import testbed as tb
from agent.config import Config, TargetConfig
from agent.errors import TargetUnreachable, TransportError
from agent.run import RunOutcome, run
from agent.transport import make_transport

# the demo's windows: long enough to see each stage work, short enough to wait for
DEMO_SOAK_S = 20.0
DEMO_HOLD_S = 5.0
DEMO_RECOVERY_S = 60.0


def _quiet(_: str) -> None:
    pass


async def demo(config: Config, target: TargetConfig, db: str, faults: tuple[str, ...] = (),
               progress: Callable[[str], None] = _quiet, *, soak_s: float = DEMO_SOAK_S,
               report_dir: str | None = None, stop: asyncio.Event | None = None) -> RunOutcome:
    """Bring the testbed up (with `faults`), then run the plan against it, recorded as one run.

    Raises TargetUnreachable, TestbedError, ExperimentInterrupted.
    """
    async with make_transport(target) as transport:
        progress(f"testbed up on {transport.name}" + (f" with faults {', '.join(faults)}" if faults else ""))
        try:
            await tb.up(transport, config.testbed, faults, progress=progress)
        except TransportError as exc:
            raise TargetUnreachable(target.name, f"link lost: {exc.reason}") from None
    return await run(config, target, db, soak_s=soak_s, hold_s=DEMO_HOLD_S, recovery_s=DEMO_RECOVERY_S,
                     report_dir=report_dir, stop=stop, progress=progress)

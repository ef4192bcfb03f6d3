"""`podwarden demo`: the testbed up on the target, the baseline check against it (recorded), its status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from agent import testbed as tb
from agent.check import CheckReport, run_check
from agent.config import Config, TargetConfig
from agent.errors import TargetUnreachable, TransportError
from agent.node import NodeStatus, gather_status
from agent.recording import recording
from agent.transport import make_transport


def _quiet(_: str) -> None:
    pass


@dataclass
class DemoOutcome:
    """What the demo did: the check's report, the final status, and where it was stored."""

    run_id: int | None
    report: CheckReport
    node: NodeStatus


async def demo(config: Config, target: TargetConfig, db: str | None, faults: tuple[str, ...] = (),
               progress: Callable[[str], None] = _quiet) -> DemoOutcome:
    """Bring the testbed up (with `faults`), check it into one recorded run, and look at it.

    Raises TargetUnreachable, TestbedError.
    """
    async with recording(config, "demo", [target.name], db) as rec:
        async with make_transport(target) as transport:
            progress(f"testbed up on {transport.name}" + (f" with faults {', '.join(faults)}" if faults else ""))
            await tb.up(transport, config.testbed, faults, progress=progress)
            progress("baseline check")
            try:
                report = await run_check(transport, config, target, rec=rec, progress=progress)
                node = await gather_status(transport, config, target.podman)
            except TransportError as exc:
                raise TargetUnreachable(target.name, f"link lost: {exc.reason}") from None
        rec.verdict = report.verdict
    return DemoOutcome(rec.run_id, report, node)

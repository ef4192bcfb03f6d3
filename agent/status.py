"""`podwarden status`: one look at a node: every expected and present container, and the host services."""

from __future__ import annotations

from agent.config import Config, TargetConfig
from agent.errors import TargetUnreachable, TransportError
from agent.node import NodeStatus, gather_status
from agent.transport import make_transport


async def status(config: Config, target: TargetConfig) -> NodeStatus:
    """The node's containers and services as they are now.

    Raises TargetUnreachable when the target cannot be reached or the link drops.
    """
    async with make_transport(target) as transport:
        try:
            return await gather_status(transport, config, target.podman)
        except TransportError as exc:
            lost = "link lost" if not transport.connected else "podman did not answer"
            raise TargetUnreachable(target.name, f"{lost}: {exc.reason}") from None

"""What every verb asks of a node: its containers (ps + inspect), podman itself, the host services."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


from agent import podman
from agent.config import Config, ServiceConfig
from agent.errors import CommandTimeout, TransportError
from agent.http import http_get
from agent.transport import Transport


@dataclass(frozen=True)
class ContainerStatus:
    """What `podman inspect` says of one container (or that it is missing)."""

    name: str
    expected: bool
    role: str
    state: str
    health: str | None
    restarts: int
    restart_policy: str
    memory: int
    image: str
    ports: list[str]
    exit_code: int | None = None


@dataclass(frozen=True)
class ServiceStatus:
    """A host service: whether its status command says active and its /health answer."""

    name: str
    active: bool | None
    health: str
    detail: str = ""


@dataclass
class NodeStatus:
    """The whole picture of one target."""

    target: str
    podman_version: str = ""
    rootless: bool | None = None
    containers: list[ContainerStatus] = field(default_factory=list)
    services: list[ServiceStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "podman_version": self.podman_version,
            "rootless": self.rootless,
            "containers": [asdict(c) for c in self.containers],
            "services": [asdict(s) for s in self.services],
            "problems": self.problems,
        }


async def node_info(transport: Transport, config_podman: list[str]) -> podman.NodeInfo | None:
    """podman's version and rootlessness on the target, or None if podman does not answer."""
    try:
        result = await transport.run(podman.info_cmd(config_podman), timeout=30)
    except TransportError:
        return None
    if not result.ok:
        return None
    info = podman.parse_info(result.stdout)
    return None if isinstance(info, podman.ParseError) else info


async def inspect_all(transport: Transport, podman_cmd: list[str],
                      clock: "Callable[[], int]" = time.time_ns) -> tuple[list[podman.InspectFacts], list[str]]:
    """Inspect every container on the node; returns facts and problems met on the way.

    Non-empty problems mean podman could not be asked: the facts are then not a picture
    of the node (an empty list is not "no containers"). Facts are stamped with `clock()`
    after inspect answered, so they are never older than events podman wrote meanwhile.
    """
    problems: list[str] = []
    ps = await transport.run(podman.ps_cmd(podman_cmd), timeout=60)
    if not ps.ok:
        return [], [f"podman ps failed ({ps.exit_status}): {ps.stderr.strip()[-300:]}"]
    entries = podman.parse_ps(ps.stdout)
    if isinstance(entries, podman.ParseError):
        return [], [f"cannot read podman ps: {entries.reason}"]
    names = sorted({entry.name for entry in entries if entry.name})
    if not names:
        return [], problems
    inspected = await transport.run(podman.inspect_cmd(podman_cmd, names), timeout=60)
    # a name removed between ps and inspect makes inspect exit 125 but print the others
    facts = podman.parse_inspect(inspected.stdout, transport.name, clock())
    if isinstance(facts, podman.ParseError):
        return [], [f"cannot read podman inspect: {facts.reason}"]
    return facts, problems


async def service_status(transport: Transport, service: ServiceConfig) -> ServiceStatus:
    """Run a service's status command and fetch its health URL (through the link)."""
    active: bool | None = None
    details: list[str] = []
    if service.status_command:
        try:
            result = await transport.run(service.status_command, timeout=15)
            active = result.ok
            if not result.ok:
                details.append(f"status command exited {result.exit_status}")
        except CommandTimeout:
            active = False
            details.append("status command timed out")
        except TransportError as exc:
            if not transport.connected:
                raise
            active = False
            details.append(f"status command could not run: {exc.reason}")
    health = "n/a"
    if service.health_url:
        try:
            response = await http_get(transport, service.health_url, timeout=5)
            health = "ok" if response.status == 200 else f"http {response.status}"
            try:
                body = json.loads(response.text())
                if isinstance(body, dict) and "status" in body and body["status"] != "ok":
                    health = f"status {body['status']}"
            except ValueError:
                pass
        except (OSError, TimeoutError, ValueError) as exc:
            if not transport.connected:
                raise TransportError(transport.name, ["GET", service.health_url], f"link lost: {exc}") from None
            health = "down"
            details.append(f"{service.health_url}: {exc or type(exc).__name__}")
    return ServiceStatus(service.name, active, health, "; ".join(details))


async def gather_status(transport: Transport, config: Config, podman_cmd: list[str]) -> NodeStatus:
    """Everything `podwarden status` shows for one target; raises TransportError if the link fails."""
    status = NodeStatus(transport.name)
    info = await node_info(transport, podman_cmd)
    if info is None:
        status.problems.append("podman does not answer on the target")
    else:
        status.podman_version = info.version
        status.rootless = info.rootless
    facts, problems = await inspect_all(transport, podman_cmd)
    status.problems.extend(problems)
    by_name = {f.name: f for f in facts}
    for name in sorted(set(config.containers) | set(by_name)):
        expected = config.containers.get(name)
        fact = by_name.get(name)
        if fact is None:
            # when podman could not be asked, absence proves nothing
            state = "unknown" if problems else "missing"
            status.containers.append(ContainerStatus(
                name, True, expected.role if expected else "", state, None, 0, "", 0, "", []))
            continue
        status.containers.append(ContainerStatus(
            name=name, expected=expected is not None, role=expected.role if expected else "",
            state=fact.status, health=fact.health, restarts=fact.restart_count,
            restart_policy=fact.restart_policy, memory=fact.memory, image=fact.image,
            ports=list(fact.ports), exit_code=fact.exit_code,
        ))
    for service in config.services.values():
        status.services.append(await service_status(transport, service))
    return status

"""Remediation hooks, decided on a clock the test holds: held states, the reconcile wait on
`exited`, back-off, give-up with a finding, dry-run. The node is a fake (named FakeNode): it
records the commands a hook sends instead of running them; the end-to-end tests
(tests/test_e2e_soak_hooks.py) run the same hooks against real podman."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from agent.config import config_from_dict
from agent.errors import ConfigError
from agent.hooks import Remediator
from agent.recording import machine_settings
from agent.sink import Sink
from agent.transport import RunResult
from machines.container import Fleet
from machines.observations import ActionObs, EventObs, SnapshotObs

T0 = 1_796_000_000_000_000_000
S = 1_000_000_000
CID = "c" * 64


@dataclass
class FakeTransport:
    """A link that records commands and answers them all with success (a fake: no node here)."""

    commands: list[list[str]] = field(default_factory=list)
    connected: bool = True

    async def run(self, argv, timeout: float = 60.0, input: bytes | None = None, check: bool = False) -> RunResult:
        self.commands.append(list(argv))
        return RunResult(tuple(argv), 0, "", "", 0.01)


class FakeNode:
    """What a Remediator needs of a TargetWatcher: a name, a sink, a clock, a link (a fake)."""

    def __init__(self, sink: Sink) -> None:
        self.name = "node1"
        self.sink = sink
        self.clock = T0
        self.transport = FakeTransport()
        self.target = type("Target", (), {"podman": ["podman"]})()

    def now_ns(self) -> int:
        return self.clock

    async def check_health_now(self, name: str) -> None:
        self.transport.commands.append(["healthcheck", name])


def setup(extra: dict | None = None, dry_run: bool = False) -> tuple[FakeNode, Remediator, list]:
    config = config_from_dict({"containers": {"lnd": {"role": "lightning"}, "ui": {"role": "ui"}}, **(extra or {})})
    findings: list = []
    sink = Sink(Fleet(machine_settings(config)))
    sink.on_finding.append(findings.append)
    node = FakeNode(sink)
    remediator = Remediator(config, node, dry_run=dry_run)  # type: ignore[arg-type]
    sink.on_fed.append(remediator.on_fed)
    return node, remediator, findings


def snapshot(node: FakeNode, name: str, status: str, *, at: float, policy: str = "unless-stopped",
             finished: float = 0.0, started: float = 0.0, exit_code: int = 0) -> None:
    node.sink.put(SnapshotObs(node.name, name, T0 + int(at * S), True, CID, status, None, exit_code,
                              0 if status != "running" else 42, 0, T0 + int(started * S),
                              T0 + int(finished * S) if finished else 0, policy))


def tick(node: FakeNode, remediator: Remediator, at: float) -> None:
    node.clock = T0 + int(at * S)
    asyncio.run(remediator.fire_due())


def starts(node: FakeNode) -> list[list[str]]:
    return [c for c in node.transport.commands if c[1:2] == ["start"]]


def test_the_builtin_hook_starts_a_stopped_container_after_its_delay() -> None:
    node, remediator, _ = setup()
    snapshot(node, "lnd", "running", at=1, started=0.5)
    node.sink.put(ActionObs(node.name, "lnd", T0 + 2 * S, "podman stop", "a user"))  # known stop
    node.sink.put(EventObs(node.name, "lnd", T0 + 2 * S + 50_000_000, CID, "died", exit_code=137))
    assert node.sink.fleet.get("node1", "lnd").state == "stopped"
    tick(node, remediator, 4)
    assert starts(node) == []  # held 5 s first
    tick(node, remediator, 7.2)
    assert starts(node) == [["podman", "start", "lnd"]]
    fired = [a for a in remediator.fired if a.action == "hook start-stopped: start"]
    assert fired and fired[0].ok and not fired[0].dry_run


def test_no_builtin_start_under_a_policy_that_does_not_restart() -> None:
    node, remediator, _ = setup()
    snapshot(node, "lnd", "running", at=1, started=0.5, policy="on-failure")
    node.sink.put(ActionObs(node.name, "lnd", T0 + 2 * S, "podman stop", "a user"))
    node.sink.put(EventObs(node.name, "lnd", T0 + 2 * S + 50_000_000, CID, "died", exit_code=0))
    tick(node, remediator, 20)
    assert starts(node) == []


def test_dry_run_records_the_would_be_action_and_runs_nothing() -> None:
    node, remediator, _ = setup(dry_run=True)
    snapshot(node, "lnd", "running", at=1, started=0.5)
    node.sink.put(ActionObs(node.name, "lnd", T0 + 2 * S, "podman stop", "a user"))
    node.sink.put(EventObs(node.name, "lnd", T0 + 2 * S + 50_000_000, CID, "died", exit_code=137))
    tick(node, remediator, 8)
    assert node.transport.commands == []
    [would] = remediator.fired
    assert would.dry_run and would.detail.startswith("would start lnd")


def test_exited_waits_for_the_reconcile_that_confirms_it() -> None:
    hooks = [{"name": "revive", "containers": ["ui"], "when": {"state": ["exited"], "held": "0s"}, "do": "start"}]
    node, remediator, _ = setup({"hooks": hooks, "remediation": {"start_stopped": False}})
    snapshot(node, "ui", "running", at=1, started=0.5, policy="no")
    node.sink.put(EventObs(node.name, "ui", T0 + 10 * S, CID, "died", exit_code=1))
    tick(node, remediator, 10.5)
    assert starts(node) == []  # a podman stop looks the same for ~2 s
    snapshot(node, "ui", "exited", at=12, policy="no", finished=10, started=0.5, exit_code=1)
    tick(node, remediator, 12.1)
    assert starts(node) == [["podman", "start", "ui"]]


def _dies_on_every_start(extra: dict) -> tuple[list[float], list]:
    hooks = [{"name": "revive", "roles": ["ui"], "when": {"state": ["exited"], "held": "0s"}, "do": "start",
              "backoff_initial": "10s", "backoff_max": "40s", "give_up_after": 3}]
    node, remediator, findings = setup({"hooks": hooks, "remediation": {"start_stopped": False}, **extra})
    snapshot(node, "ui", "running", at=1, started=0.5, policy="no")
    fired_at: list[float] = []
    now = 10.0
    for _ in range(8):
        # it dies at once after every start
        node.sink.put(EventObs(node.name, "ui", T0 + int(now * S), CID, "died", exit_code=1))
        snapshot(node, "ui", "exited", at=now + 2, policy="no", finished=now, exit_code=1)
        for step in range(200):
            t = now + 2 + step * 0.5
            before = len(starts(node))
            tick(node, remediator, t)
            if len(starts(node)) > before:
                fired_at.append(t)
                now = t + 0.3
                node.sink.put(EventObs(node.name, "ui", T0 + int((t + 0.1) * S), CID, "start"))
                break
            if findings:
                return fired_at, findings
        else:
            break
    return fired_at, findings


def test_a_hook_backs_off_then_gives_up_after_its_tries_with_a_finding() -> None:
    fired_at, findings = _dies_on_every_start({"machine": {"crashloop_deaths": 100}})
    assert len(fired_at) == 3, fired_at  # then it gave up: no loop
    assert fired_at[2] - fired_at[1] > fired_at[1] - fired_at[0] >= 10  # backed off, doubling
    [finding] = findings
    assert finding.rule == "hook-gave-up" and finding.container == "ui" and "3 attempts" in finding.message


def test_a_hook_gives_up_when_the_container_ends_in_a_state_it_does_not_answer() -> None:
    # the third death makes a crash loop, which this hook does not answer: it gives up once
    # its back-off has passed, with a finding, and never loops
    fired_at, findings = _dies_on_every_start({})
    assert len(fired_at) == 2, fired_at
    [finding] = findings
    assert finding.rule == "hook-gave-up" and "2 attempts" in finding.message and "crashlooping" in finding.message


def test_hooks_act_only_on_configured_containers() -> None:
    with pytest.raises(ConfigError, match="hooks act only on containers in"):
        config_from_dict({"containers": {"lnd": {}}, "hooks": [{"name": "x", "containers": ["grafana"],
                                                                 "when": {"state": ["exited"]}}]})
    with pytest.raises(ConfigError, match="needs `url`"):
        config_from_dict({"hooks": [{"name": "x", "when": {"state": ["exited"]}, "do": "webhook"}]})
    with pytest.raises(ConfigError, match="unknown drift kind"):
        config_from_dict({"hooks": [{"name": "x", "when": {"drift": ["stat"]}, "do": "healthcheck"}]})


# ---------------------------------------------------------------- a lost window is a finding


def test_a_backfill_that_begins_after_podmans_oldest_event_records_the_lost_window() -> None:
    from agent.config import TargetConfig
    from agent.podman import format_time_ns
    from agent.watcher import TargetWatcher

    config = config_from_dict({"containers": {"lnd": {}}})
    sink = Sink(Fleet())
    findings: list = []
    agent_records: list = []
    sink.on_finding.append(findings.append)
    sink.on_observation.append(lambda obs: agent_records.append(obs) if obs.kind == "agent" else None)
    watcher = TargetWatcher(TargetConfig(name="node1", transport="local"), config, sink, start_ns=T0)

    class OldestEvent(FakeTransport):
        """Answers `podman events | head -n 1` with an event stamped at `oldest` (a fake)."""

        def __init__(self, oldest: int) -> None:
            super().__init__()
            self.oldest = oldest

        async def run(self, argv, timeout: float = 60.0, input: bytes | None = None, check: bool = False) -> RunResult:
            line = ('{"ID":"%s","Image":"i","Name":"lnd","Status":"start","Time":"%s","Type":"container"}\n'
                    % (CID, format_time_ns(self.oldest)))
            return RunResult(tuple(argv), 0, line, "", 0.01)

    asyncio.run(watcher._check_lost_window(OldestEvent(T0 - 10 * S), T0))  # the log reaches back: nothing lost
    assert findings == []
    asyncio.run(watcher._check_lost_window(OldestEvent(T0 + 3600 * S), T0))
    [finding] = findings
    assert finding.rule == "events-lost" and finding.evidence == {"lost_from_ns": T0, "lost_to_ns": T0 + 3600 * S}
    assert [r.what for r in agent_records] == ["lost-window"]

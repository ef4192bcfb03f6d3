"""Properties of the container machines over arbitrary observation sequences (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machines.container import Fleet, MachineSettings, StateChange
from machines.observations import ActionObs, AgentObs, EventObs, LogObs, Observation, ProbeObs, SnapshotObs
from machines.states import State
from machines.table import DICT_ROUTER, TRIGGERS, TransitionsRouter

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000

STATUSES = ["create", "init", "start", "health_status", "exec", "exec_died", "died", "stop", "kill",
            "restart", "cleanup", "remove", "pause", "unpause", "mount", "unmount", "attach",
            "checkpoint", "restore", "sync", "rename"]
# Weighted toward the statuses that move the machine, so sequences reach deep states.
MOVERS = ["start", "start", "died", "died", "died", "restart", "stop", "kill", "health_status", "health_status", "create"]
SNAPSHOT_STATUSES = ["running", "exited", "stopped", "created", "paused", "configured", "initialized",
                     "stopping", "removing", ""]
HEALTH = st.sampled_from(["starting", "healthy", "unhealthy"]) | st.none() | st.text(max_size=6)

# Mostly one container, so sequences per machine are long enough to reach deep states.
keys = st.sampled_from([("node1", "lnd")] * 4 + [("node1", "electrs"), ("node2", "lnd"), ("node1", "")])
# Steps between observations: bursts (same ns, ms apart) up to minutes, so crash-loop
# windows and stable periods open and close within one sequence.
steps = st.sampled_from([0, 1, 50_000_000, S, 2 * S, 30 * S, 100 * S, 400 * S]) | st.integers(0, 400 * S)
exit_codes = st.sampled_from([None, 0, 1, 137]) | st.integers(0, 255)


def container_id(name: str) -> str:
    """One podman ID per name, as podman gives (a shared ID would make every rename event move a machine)."""
    return f"id-{name}"


@st.composite
def events(draw: st.DrawFn, at_ns: int) -> EventObs:
    status = draw(st.sampled_from(MOVERS) | st.sampled_from(STATUSES) | st.text(max_size=8))
    target, container = draw(keys)
    return EventObs(target, container, at_ns, container_id(container), status,
                    exit_code=draw(exit_codes) if status == "died" else None,
                    health_status=draw(HEALTH) if status == "health_status" else None)


@st.composite
def snapshots(draw: st.DrawFn, at_ns: int) -> SnapshotObs:
    target, container = draw(keys)
    if draw(st.integers(0, 4)) == 0:
        return SnapshotObs(target, container, at_ns, False)
    status = draw(st.sampled_from(SNAPSHOT_STATUSES) | st.text(max_size=8))
    return SnapshotObs(target, container, at_ns, True, container_id(container), status, draw(HEALTH),
                       exit_code=draw(exit_codes),
                       started_at_ns=draw(st.sampled_from([0, at_ns]) | st.integers(at_ns - 900 * S, at_ns + S)),
                       finished_at_ns=draw(st.sampled_from([0, at_ns]) | st.integers(at_ns - 900 * S, at_ns)),
                       restart_count=draw(st.integers(0, 5)),
                       restart_policy=draw(st.sampled_from(["", "no", "always", "unless-stopped", "on-failure"])),
                       memory=draw(st.sampled_from([0, 16 << 20])), oom_killed=draw(st.booleans()),
                       health_failing_streak=draw(st.integers(0, 4)), health_retries=draw(st.integers(0, 3)),
                       health_start_period_ns=draw(st.sampled_from([0, 5 * S, 60 * S])),
                       stopped_by_user=draw(st.sampled_from([None, False, True])),
                       restart_max_retries=draw(st.sampled_from([0, 3])))


@st.composite
def others(draw: st.DrawFn, at_ns: int) -> Observation:
    target, container = draw(keys)
    kind = draw(st.sampled_from(["log", "log", "probe", "healthcheck", "healthcheck", "oom", "action", "agent"]))
    if kind == "log":
        return LogObs(target, container, at_ns, "line", is_error=draw(st.booleans()))
    if kind == "probe":
        return ProbeObs(target, container, at_ns, "rpc", "exec", ok=False)
    if kind == "healthcheck":
        detail = draw(st.sampled_from(["healthy", "unhealthy", "error", ""]))
        return ProbeObs(target, container, at_ns, "healthcheck", "podman-healthcheck", detail == "healthy",
                        draw(st.sampled_from([0.0, 30.0, 2500.0])), "unhealthy", detail)
    if kind == "oom":
        return ProbeObs(target, container, at_ns, "oom-kill", "kernel-log", False, excerpt="oom-kill:task=sh")
    if kind == "action":
        return ActionObs(target, container, at_ns, draw(st.sampled_from(["podman stop", "podman kill", "restart"])),
                         dry_run=draw(st.booleans()))
    return AgentObs(target, container, at_ns, "lost")


@st.composite
def sequences(draw: st.DrawFn) -> list[Observation]:
    observations: list[Observation] = []
    at_ns = T0
    for _ in range(draw(st.integers(0, 60))):
        at_ns += draw(steps)
        # Now and then an observation delivered late, stamped before those already fed.
        stamp = at_ns - draw(st.sampled_from([0] * 9 + [5 * S, 60 * S]))
        make = draw(st.sampled_from([events, events, events, snapshots, others]))
        observations.append(draw(make(stamp)))
    return observations


machine_settings = st.builds(
    MachineSettings,
    crashloop_deaths=st.integers(1, 4),
    crashloop_window_ns=st.integers(10, 400).map(lambda s: s * S),
    stable_period_ns=st.integers(5, 700).map(lambda s: s * S),
)


def run(observations: list[Observation], config: MachineSettings, engine: str = "dict") -> tuple[list[StateChange], list[Any]]:
    """Feed a fresh fleet; the changes and a summary of every machine at the end."""
    fleet = Fleet(config, engine=engine)  # type: ignore[arg-type]
    changes = [change for obs in observations for change in fleet.feed(obs)]
    summary = [(m.target, m.container, m.state, m.since_ns, m.restarts, list(m.deaths), m.last_error, m.crashes,
                m.last_death, m.last_death_ns, m.health) for m in fleet.machines()]
    fleet.close()
    return changes, summary


@settings(max_examples=250, deadline=None)
@given(sequences(), machine_settings)
def test_every_machine_stays_in_a_declared_state_and_changes_chain(
        observations: list[Observation], config: MachineSettings) -> None:
    fleet = Fleet(config)
    last: dict[tuple[str, str], StateChange] = {}
    restarts: dict[tuple[str, str], int] = {}
    for obs in observations:
        for change in fleet.feed(obs):
            key = (change.target, change.container)
            assert key == (obs.target, obs.container)
            assert isinstance(change.to_state, State) and isinstance(change.from_state, State)
            assert change.from_state != change.to_state
            previous = last.get(key)
            assert change.from_state == (previous.to_state if previous else State.UNKNOWN)
            assert change.at_ns == obs.at_ns and change.obs_kind == str(obs.kind)
            assert not change.contradiction or change.obs_kind == "snapshot"
            assert change.to_state is not State.UNKNOWN
            last[key] = change
        for machine in fleet.machines():
            key = (machine.target, machine.container)
            assert machine.restarts >= restarts.get(key, 0)
            restarts[key] = machine.restarts
            deaths = list(machine.deaths)
            assert deaths == sorted(deaths)
            assert machine.crashes >= len(deaths), "the window holds only counted deaths"
            assert not deaths or deaths[-1] - deaths[0] <= config.crashloop_window_ns
    for machine in fleet.machines():
        assert machine.container, "target-level records make no machine"
        assert isinstance(machine.state, State)
        change = last.get((machine.target, machine.container))
        assert machine.state == (change.to_state if change else State.UNKNOWN)
        assert machine.since_ns == (change.at_ns if change else 0)


@settings(max_examples=60, deadline=None)
@given(sequences(), machine_settings)
def test_same_sequence_same_changes(observations: list[Observation], config: MachineSettings) -> None:
    assert run(observations, config) == run(observations, config)


@settings(max_examples=250, deadline=None)
@given(sequences(), machine_settings)
def test_dict_and_transitions_engines_agree(observations: list[Observation], config: MachineSettings) -> None:
    assert run(observations, config, "dict") == run(observations, config, "transitions")


@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_engines_agree_on_every_trigger_from_every_state(trigger: str) -> None:
    router = TransitionsRouter()
    for state in State:
        by_dict, by_transitions = DICT_ROUTER.attach(state), router.attach(state)
        DICT_ROUTER.fire(by_dict, trigger)
        router.fire(by_transitions, trigger)
        assert by_dict.state == by_transitions.state, (trigger, state)
        router.detach(by_transitions)
    assert router.machine.models == []

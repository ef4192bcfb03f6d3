"""The watch dashboard renders each machine's state, age, restarts and last error line."""

from __future__ import annotations

from rich.console import Console

from agent.dashboard import in_trouble, render
from agent.watcher import TargetView
from machines.container import Fleet
from machines.observations import EventObs, LogObs
from machines.states import State

T0 = 1_764_000_000_000_000_000
S = 1_000_000_000


def test_dashboard_shows_states_restarts_and_last_error():
    fleet = Fleet()
    for obs in (
        EventObs("node1", "lnd", T0, "c1", "start"),
        EventObs("node1", "lnd", T0 + 5 * S, "c1", "died", exit_code=137),
        EventObs("node1", "lnd", T0 + 5 * S + 1000, "c1", "restart"),
        EventObs("node1", "lnd", T0 + 5 * S + 2000, "c1", "start"),
        LogObs("node1", "electrumx", T0 + 6 * S, "[ERR] IOError: utxo/LOCK: Permission denied [/x]", is_error=True),
        EventObs("node1", "electrumx", T0 + 6 * S, "c2", "died", exit_code=1),
    ):
        fleet.feed(obs)
    view = TargetView("node1", link="lost", events=6, logs=1, errors=1, reconnects=2, detail="connection closed")
    console = Console(record=True, width=200)
    console.print(render(fleet, [view], started_ns=T0, changes=4, now_ns=T0 + 65 * S))
    text = console.export_text()
    lnd = next(line for line in text.splitlines() if " lnd " in line)
    assert "running" in lnd and "1m ago" in lnd and " 1 " in lnd
    electrumx = next(line for line in text.splitlines() if "electrumx" in line)
    assert "exited" in electrumx and "utxo/LOCK: Permission denied" in electrumx
    assert "link lost" in text and "reconnects 2" in text and "1 in trouble" in text


def _row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if f" {name} " in line)


def test_dashboard_counts_containers_not_in_their_expected_state_as_trouble():
    fleet = Fleet()
    for obs in (
        EventObs("node1", "lnd", T0, "c1", "start"),
        EventObs("node1", "lnd", T0 + S, "c1", "stop"),
        EventObs("node1", "lnd", T0 + S + 40_000_000, "c1", "died", exit_code=143),  # a user stop
        EventObs("node1", "old-ui", T0, "c3", "start"),
        EventObs("node1", "old-ui", T0 + S, "c3", "stop"),
        EventObs("node1", "old-ui", T0 + S + 40_000_000, "c3", "died", exit_code=143),
        EventObs("node1", "bitcoin", T0, "c4", "start"),
        EventObs("node1", "bitcoin", T0 + S, "c4", "health_status", health_status="healthy"),
        EventObs("node1", "electrs", T0, "c5", "start"),  # running, but expected healthy
    ):
        fleet.feed(obs)
    expected = {("node1", "lnd"): "running", ("node1", "old-ui"): "stopped", ("node1", "bitcoin"): "healthy",
                ("node1", "electrs"): "healthy", ("node1", "tor"): "running"}
    console = Console(record=True, width=200)
    console.print(render(fleet, [], started_ns=T0, changes=7, now_ns=T0 + 65 * S, expected=expected, drifts=3))
    text = console.export_text()
    assert "stopped !" in _row(text, "lnd"), "a stopped container expected running is trouble"
    assert "!" not in _row(text, "old-ui") and "stopped" in _row(text, "old-ui"), "expected stopped: fine"
    assert "!" not in _row(text, "bitcoin")
    assert "running !" in _row(text, "electrs")
    tor = _row(text, "tor")
    assert "unknown" in tor and "!" not in tor, "not seen yet is shown, and is no trouble"
    assert "5 containers, 2 in trouble, 1 not seen yet" in text
    assert "7 state changes, 3 drifts" in text
    header = next(line for line in text.splitlines() if "container" in line and "state" in line)
    assert "expected" in header


def test_without_expectations_a_stopped_container_is_no_trouble_as_before():
    fleet = Fleet()
    for obs in (EventObs("node1", "lnd", T0, "c1", "start"), EventObs("node1", "lnd", T0 + S, "c1", "stop"),
                EventObs("node1", "lnd", T0 + S + 1000, "c1", "died", exit_code=143)):
        fleet.feed(obs)
    console = Console(record=True, width=200)
    console.print(render(fleet, [], started_ns=T0, changes=2, now_ns=T0 + 5 * S))
    text = console.export_text()
    assert "1 containers, 0 in trouble" in text and "drifts" not in text and "!" not in text


def test_in_trouble():
    assert in_trouble(State.STOPPED, "running") and not in_trouble(State.STOPPED, "stopped")
    assert in_trouble(State.RUNNING, "absent") and not in_trouble(State.MISSING, "absent")
    assert in_trouble(State.UNHEALTHY, "running") and in_trouble(State.STARTING, "healthy")
    assert not in_trouble(State.UNKNOWN, "running")
    assert in_trouble(State.EXITED, None) and not in_trouble(State.STOPPED, None)

"""The watch dashboard renders each machine's state, age, restarts and last error line."""

from __future__ import annotations

from rich.console import Console

from agent.dashboard import render
from agent.watcher import TargetView
from machines.container import Fleet
from machines.observations import EventObs, LogObs

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

"""The live terminal dashboard of `podwarden watch`: a row per container, link and counts."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.config import format_duration
from machines.container import Fleet
from machines.drift import meets
from machines.states import BAD, GOOD, State

_STYLE = {State.CRASHLOOPING: "bold red", State.UNHEALTHY: "red", State.EXITED: "red",
          State.MISSING: "red", State.REMOVED: "red", State.STOPPED: "yellow",
          State.RESTARTING: "yellow", State.STARTING: "cyan", State.UNKNOWN: "dim"}
# Marks a container that is not where it is expected to be.
TROUBLE_MARK = "!"


def _ago(at_ns: int, now_ns: int) -> str:
    if not at_ns:
        return "-"
    return format_duration(max(0, now_ns - at_ns) / 1e9) + " ago"


def in_trouble(state: State, expected: str | None) -> bool:
    """Whether a container needs an operator: not in its expected state (stopped ones included),
    or, with no expectation, in a state that is trouble for any container. Not yet seen is no trouble."""
    if state is State.UNKNOWN:
        return False
    if expected is None:
        return state in BAD
    return not meets(expected, state)


def _state_text(state: State, expected: str | None, trouble: bool) -> Text:
    if trouble:
        style = _STYLE.get(state, "red")
        return Text(f"{state.value} {TROUBLE_MARK}", style=style if style not in ("cyan", "dim") else "red")
    if expected is not None and meets(expected, state):
        return Text(state.value, style="green")
    return Text(state.value, style=_STYLE.get(state, "green" if state in GOOD else ""))


def render(fleet: Fleet, views: list, started_ns: int, changes: int, now_ns: int | None = None, *,
           expected: Mapping[tuple[str, str], str] | None = None, drifts: int | None = None) -> Group:
    """One frame of the dashboard.

    `expected`: (target, container) -> the expected state from config (running, healthy,
    stopped, absent); a container not in it is judged by its state alone. `drifts`: the
    soak's drift count so far, shown when given.
    """
    now_ns = now_ns or time.time_ns()
    expectations = dict(expected or {})
    title = f"podwarden watch — {format_duration((now_ns - started_ns) / 1e9)} elapsed, {changes} state changes"
    if drifts is not None:
        title += f", {drifts} drifts"
    table = Table(expand=True, title=title)
    columns: list[tuple[str, dict]] = [("target", {}), ("container", {})]
    if expected is not None:
        columns.append(("expected", {}))
    columns += [("state", {}), ("since", {}), ("restarts", {"justify": "right"}),
                ("last error", {"overflow": "ellipsis", "ratio": 1})]
    for column, kwargs in columns:
        table.add_column(column, no_wrap=True, **kwargs)
    seen = {(m.target, m.container): m for m in fleet.machines()}
    # expected containers nothing was seen of yet get a row too: the operator expects them
    keys = sorted(set(seen) | set(expectations))
    trouble = unseen = 0
    for key in keys:
        machine = seen.get(key)
        state = machine.state if machine is not None else State.UNKNOWN
        own = expectations.get(key)
        bad = in_trouble(state, own)
        trouble += bad
        unseen += state is State.UNKNOWN
        last_error = (machine.last_error if machine is not None else None) or ""
        cells: list = [key[0], key[1]]
        if expected is not None:
            cells.append(Text(own or "-", style="dim"))
        cells += [_state_text(state, own, bad), _ago(machine.since_ns if machine else 0, now_ns),
                  str(machine.restarts if machine else 0),
                  Text(last_error[-200:])]  # log text is never markup: "[ERR] ..." is common
        table.add_row(*cells)
    links = Table.grid(padding=(0, 2))
    for view in views:
        style = {"up": "green", "lost": "red", "unreachable": "red"}.get(view.link, "yellow")
        links.add_row(Text(view.name, style="bold"), Text(f"link {view.link}", style=style),
                      f"events {view.events}", f"log lines {view.logs}", f"error lines {view.errors}",
                      f"reconnects {view.reconnects}", Text(view.detail[:120], style="dim"))
    counts = f"{len(keys)} containers, {trouble} in trouble"
    if expected is not None and unseen:
        counts += f", {unseen} not seen yet"
    footer = Text(f"{counts}. Ctrl-C stops and flushes the store.", style="dim")
    return Group(table, links, footer)

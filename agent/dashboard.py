"""The live terminal dashboard of `podwarden watch`: a row per container, link and counts."""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.config import format_duration
from machines.container import Fleet
from machines.states import BAD, GOOD, State

_STYLE = {State.CRASHLOOPING: "bold red", State.UNHEALTHY: "red", State.EXITED: "red",
          State.MISSING: "red", State.REMOVED: "red", State.STOPPED: "yellow",
          State.RESTARTING: "yellow", State.STARTING: "cyan", State.UNKNOWN: "dim"}


def _ago(at_ns: int, now_ns: int) -> str:
    if not at_ns:
        return "-"
    return format_duration(max(0, now_ns - at_ns) / 1e9) + " ago"


def render(fleet: Fleet, views: list, started_ns: int, changes: int, now_ns: int | None = None) -> Group:
    """One frame of the dashboard."""
    now_ns = now_ns or time.time_ns()
    table = Table(expand=True, title=f"podwarden watch — {format_duration((now_ns - started_ns) / 1e9)} elapsed, "
                                      f"{changes} state changes")
    for column, kwargs in (("target", {}), ("container", {}), ("state", {}), ("since", {}),
                           ("restarts", {"justify": "right"}), ("last error", {"overflow": "ellipsis", "ratio": 1})):
        table.add_column(column, no_wrap=True, **kwargs)
    for machine in sorted(fleet.machines(), key=lambda m: (m.target, m.container)):
        state = machine.state
        last_error = machine.last_error or ""
        table.add_row(machine.target, machine.container,
                      Text(state.value, style=_STYLE.get(state, "green" if state in GOOD else "")),
                      _ago(machine.since_ns, now_ns), str(machine.restarts),
                      Text(last_error[-200:]))  # log text is never markup: "[ERR] ..." is common
    links = Table.grid(padding=(0, 2))
    for view in views:
        style = {"up": "green", "lost": "red", "unreachable": "red"}.get(view.link, "yellow")
        links.add_row(Text(view.name, style="bold"), Text(f"link {view.link}", style=style),
                      f"events {view.events}", f"log lines {view.logs}", f"error lines {view.errors}",
                      f"reconnects {view.reconnects}", Text(view.detail[:120], style="dim"))
    bad = sum(1 for m in fleet.machines() if m.state in BAD)
    footer = Text(f"{len(fleet)} containers, {bad} in trouble. Ctrl-C stops and flushes the store.", style="dim")
    return Group(table, links, footer)

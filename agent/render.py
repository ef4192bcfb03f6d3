"""Terminal rendering of every verb's result: rich tables and lines, never read as markup.

Verbs return values (reports, statuses, verdicts); the CLI hands them here. Text from
the node (log lines, probe output) is always wrapped in `Text`, so `[/v1/getinfo]` or
`[bold]` in a container's output is printed as it is.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.check import RUNNING_STATES, CheckReport


def memory(value: int) -> str:
    """A memory limit as podman's flag would take it: 16m, 1g; `none` for no limit."""
    if value <= 0:
        return "none"
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return str(value)


# ---------------------------------------------------------------- check


def check_report(report: CheckReport) -> Any:
    """A rich renderable of a report: containers, probes, findings and the verdict."""
    containers = Table(title=f"containers on {report.target}", title_justify="left")
    for column in ("container", "expected", "state", "health", "restarts", "policy", "memory", "image"):
        containers.add_column(column)
    for entry in report.containers:
        style = "red" if entry.state in ("missing", "unknown") or (entry.expected_state in RUNNING_STATES
                                                     and entry.state != "running") else ""
        containers.add_row(Text(entry.name), Text(entry.expected_state or "-"), Text(entry.state, style=style),
                           Text(entry.health or "-"), Text(str(entry.restarts)), Text(entry.restart_policy or "-"),
                           Text(memory(entry.memory)), Text(entry.image or "-"))

    probes = Table(title="probes", title_justify="left")
    for column in ("container", "probe", "type", "result", "ms", "detail"):
        probes.add_column(column, overflow="fold")
    for obs in report.probes:
        # plain Text everywhere: log lines like `[/v1/getinfo]` are not rich markup
        probes.add_row(Text(obs.container), Text(obs.probe), Text(obs.probe_type),
                       Text("ok", style="green") if obs.ok else Text("FAIL", style="bold red"),
                       Text(f"{obs.latency_ms:.0f}"), Text(obs.detail or ""))

    findings = Table(title="findings", title_justify="left")
    for column in ("severity", "container", "rule", "message", "fix"):
        findings.add_column(column, overflow="fold")
    colours = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for finding in report.findings:
        findings.add_row(Text(finding.severity, style=colours.get(finding.severity, "")),
                         Text(finding.container or "-"), Text(finding.rule), Text(finding.message), Text(finding.fix))

    verdict = Text(f"verdict: {report.verdict.upper()}  ({len(report.findings)} findings, "
                   f"{len(report.failed_probes)} of {len(report.probes)} probes failed)",
                   style="bold green" if report.passed else "bold red")
    parts: list[Any] = [containers, probes]
    if report.findings:
        parts.append(findings)
    if report.unanswered:
        parts.append(Text(f"podman did not answer: {report.unanswered}", style="bold red"))
    parts.extend(Text(f"note: {note}", style="dim") for note in report.notes)
    parts.append(verdict)
    return Group(*parts)


# ---------------------------------------------------------------- status


def node_status(node: Any) -> list[Any]:
    """The `status` tables: containers, then host services."""
    table = Table(title=f"{node.target}  podman {node.podman_version or '?'}"
                        f"{'  rootless' if node.rootless else ''}")
    for column in ("container", "role", "state", "health", "restarts", "policy", "memory", "image", "ports"):
        table.add_column(column)
    for c in node.containers:
        style = "red" if c.state in ("missing", "exited") or c.health == "unhealthy" else ""
        table.add_row(Text.assemble(c.name, (" (unexpected)" if not c.expected else "", "dim")), Text(c.role),
                      c.state, c.health or "-", str(c.restarts), c.restart_policy or "-",
                      memory(c.memory), Text(c.image or "-"), Text(", ".join(c.ports) or "-"), style=style)
    parts: list[Any] = [table]
    if node.services:
        services = Table(title="host services")
        for column in ("service", "active", "health", "detail"):
            services.add_column(column)
        for s in node.services:
            active = "-" if s.active is None else ("yes" if s.active else "no")
            services.add_row(s.name, active, Text(s.health), Text(s.detail),
                             style="" if s.active is not False and s.health in ("ok", "n/a") else "red")
        parts.append(services)
    return parts


# ---------------------------------------------------------------- testbed


def testbed_status(state: Any) -> list[Any]:
    """The testbed's containers, backend and faults."""
    table = Table(title=f"testbed {state.prefix}  faults: {', '.join(state.faults) or 'none'}")
    for column in ("container", "state", "health", "image"):
        table.add_column(column)
    for c in state.containers:
        table.add_row(c.name, c.state, c.health or "-", c.image)
    backend = Text(f"backend: {'up' if state.backend_up else 'down'}"
                   f"{f' (pid {state.backend_pid})' if state.backend_pid else ''}")
    return [table, backend]


def testbed_faults(faults: dict[str, str]) -> Table:
    """The fault switches `testbed up --fault NAME` accepts."""
    table = Table(title="testbed faults")
    table.add_column("fault")
    table.add_column("what it reproduces")
    for name, description in faults.items():
        table.add_row(name, description)
    return table


def steps(title: str, planned: list[str]) -> Group:
    """A --dry-run's plan: what would be done, one step a line."""
    return Group(Text(title, style="bold"), *(Text(f"  {i}. {step}") for i, step in enumerate(planned, 1)))


# ---------------------------------------------------------------- watch (--json lines)


def change_line(change: Any) -> dict[str, Any]:
    """A state change as one `watch --json` line: stable keys."""
    return {"type": "change", "target": change.target, "container": change.container, "at_ns": change.at_ns,
            "from": str(change.from_state), "to": str(change.to_state), "cause": change.cause,
            "contradiction": change.contradiction}


def agent_line(obs: Any) -> dict[str, Any]:
    """An agent record (connected, lost, backfilled, ...) as one `watch --json` line."""
    return {"type": "agent", "target": obs.target, "at_ns": obs.at_ns, "what": obs.what, "detail": obs.detail}


# ---------------------------------------------------------------- experiments


def experiments(outcome: Any) -> Group:
    """Every experiment's steps and its verdict, then the run's verdict."""
    parts: list[Any] = []
    for result in outcome.experiments:
        table = Table(title=f"experiment {result.kind} {result.subject}", title_justify="left")
        for column in ("step", "container", "result", "detail"):
            table.add_column(column, overflow="fold")
        for step in result.steps:
            mark = Text("-", style="dim") if step.ok is None else (
                Text("ok", style="green") if step.ok else Text("FAIL", style="bold red"))
            table.add_row(Text(step.name), Text(step.container or "-"), mark, Text(step.detail))
        parts.append(table)
        style = "bold green" if result.passed else "bold red"
        parts.append(Text(f"{result.kind} {result.subject}: {result.verdict.upper()}: {result.summary}", style=style))
    verdict = outcome.verdict
    parts.append(Text(f"verdict: {verdict.upper()} ({sum(e.passed for e in outcome.experiments)} of "
                      f"{len(outcome.experiments)} experiments passed)",
                      style="bold green" if verdict == "pass" else "bold red"))
    return Group(*parts)


# ---------------------------------------------------------------- soak


def soak(outcome: Any) -> Group:
    """The soak's verdict, its drifts (container, kind, time, reason) and the containers' summary."""
    from agent.podman import format_time_ns

    parts: list[Any] = []
    if outcome.drifts:
        table = Table(title=f"drift during the soak ({len(outcome.drifts)})", title_justify="left")
        for column in ("time", "target", "container", "kind", "reason"):
            table.add_column(column, overflow="fold")
        for drift in outcome.drifts:
            count = f" (x{drift.count})" if getattr(drift, "count", 1) > 1 else ""
            table.add_row(Text(format_time_ns(drift.at_ns)[11:23]), Text(drift.target), Text(drift.container or "-"),
                          Text(str(drift.kind)), Text(drift.reason + count))
        parts.append(table)
    window = ""
    if outcome.started_ns and outcome.ended_ns:
        window = (f" over {(outcome.ended_ns - outcome.started_ns) / 1e9:.0f}s "
                  f"({format_time_ns(outcome.started_ns)[11:19]} to {format_time_ns(outcome.ended_ns)[11:19]} UTC)")
    elif not outcome.started_ns:
        window = ": the window never opened (no target was watched)"
    text = (f"soak: {outcome.verdict.upper()}{window}: {len(outcome.drifts)} drift(s), "
            f"{outcome.probes_run} probe runs")
    parts.append(Text(text, style="bold green" if outcome.verdict == "pass" else "bold red"))
    return Group(*parts)


# ---------------------------------------------------------------- run


def run_outcome(outcome: Any) -> Group:
    """`podwarden run`: the experiments and soak as their verbs show them, then a table of the
    stages, the verdict and where the report is."""
    parts: list[Any] = []
    if outcome.experiments is not None and outcome.experiments.experiments:
        parts.append(experiments(outcome.experiments))
    if outcome.soak is not None:
        parts.append(soak(outcome.soak))
    table = Table(title=f"run {outcome.run_id} on {outcome.target}", title_justify="left")
    for column in ("stage", "verdict", "took", "summary"):
        table.add_column(column, overflow="fold")
    colours = {"pass": "green", "fail": "red", "skipped": "dim", "interrupted": "yellow"}
    for stage in outcome.stages:
        took = f"{(stage.ended_ns - stage.started_ns) / 1e9:.1f}s" if stage.verdict != "skipped" else "-"
        table.add_row(Text(stage.name), Text(stage.verdict.upper(), style=colours.get(stage.verdict, "")),
                      Text(took), Text(stage.summary))
    parts.append(table)
    parts.append(Text(f"run: {outcome.verdict.upper()}", style="bold green" if outcome.verdict == "pass"
                      else "bold red"))
    for path in outcome.reports:
        parts.append(Text(f"report: {path}"))
    return Group(*parts)


# ---------------------------------------------------------------- replay


def replayed_change(item: Any) -> Text:
    """One change a replay made: time, target/container, from -> to, cause."""
    from agent.podman import format_time_ns

    c = item.change
    text = Text.assemble((format_time_ns(c.at_ns)[11:23] + " ", "dim"), f"{c.target}/{c.container} ",
                         (f"{c.from_state} -> {c.to_state}", "bold"), f"  {c.cause}")
    if c.contradiction:
        text.append("  (contradiction)", style="yellow")
    return text


def replayed_item(kind: str, at_ns: int, item: Any) -> Text:
    """One timeline item of a replay: a change, a drift, an action or a finding, with its time."""
    from agent.podman import format_time_ns

    if kind == "change":
        return replayed_change(item)
    stamp = (format_time_ns(at_ns)[11:23] + " ", "dim") if at_ns else ("", "")
    if kind == "drift":
        count = f" (x{item.count})" if getattr(item, "count", 1) > 1 else ""
        return Text.assemble(stamp, f"{item.target}/{item.container or '-'} ", (f"DRIFT {item.kind}", "magenta"),
                             f"  {item.reason}{count}")
    if kind == "action":
        how = "would " if item.dry_run else ("" if item.ok else "FAILED ")
        return Text.assemble(stamp, f"{item.target}/{item.container or '-'} ", (f"ACTION {how}{item.action}", "blue"),
                             f"  {item.detail[:200]}")
    return Text.assemble(stamp, f"{item.target}/{item.container or '-'} ",
                         (f"FINDING {item.severity} {item.rule}", "yellow"), f"  {item.message[:300]}")


def replay_summary(outcome: Any) -> Text:
    """How much was replayed and, with --verify, whether it matched the stored changes."""
    scope = f"run {outcome.run_id}" if outcome.run_id is not None else "the window"
    text = (f"replayed {scope}: {outcome.observations} observations, {len(outcome.changes)} changes, "
            f"{len(outcome.drifts)} drift(s), {len(outcome.actions)} action(s), {len(outcome.findings)} finding(s)")
    if outcome.warm_up:
        text += f" (machines warmed up from {outcome.warm_up} snapshot(s) before the window)"
    if outcome.verified is True:
        return Text(text + f"; verified: identical to the {outcome.stored} changes stored live", style="bold green")
    if outcome.verified is False:
        return Text(text + f"; DIFFERS from the {outcome.stored} stored changes: {outcome.difference}", style="bold red")
    return Text(text)


# ---------------------------------------------------------------- query


def query_table(subject: str, columns: list[str], rows: list[list[str]], more: bool) -> Table:
    """Rows of `podwarden query` as a table (cells already text), noting when more were left out."""
    note = f" (the first {len(rows)}; --limit 0 for all)" if more else ""
    table = Table(title=f"{subject}: {len(rows)} row(s){note}", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


# ---------------------------------------------------------------- init


def init_outcome(outcome: Any) -> Group:
    """What `podwarden init` found on the node, what it wrote and where, and what it accepted as found."""
    table = Table(title=f"{outcome.target}: {len(outcome.containers)} container(s)", title_justify="left")
    for column in ("container", "now", "expected", "probes", "guess", "notes"):
        table.add_column(column, overflow="fold")
    for c in outcome.containers:
        now = c.state + (f" ({c.health})" if c.health else "")
        probes = ", ".join(p.name for p in c.probes if p.written) or "-"
        guess = ", ".join(part for part in (c.role_guess and f"role {c.role_guess}",
                                            c.depends_on_guess and f"needs {', '.join(c.depends_on_guess)}") if part)
        table.add_row(Text(c.name), Text(now), Text(c.expected_state), Text(probes), Text(guess or "-"),
                      Text("; ".join(c.notes) or "-", style="yellow" if c.notes else ""))
    parts: list[Any] = [table]
    for container, what in outcome.accepted:
        parts.append(Text.assemble(("accepted as found: ", "yellow"), f"{container}: {what}"))
    for note in outcome.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    verb = "replaced" if outcome.replaced else "wrote"
    parts.append(Text(f"{verb} {outcome.path}: {len(outcome.containers)} container(s), {len(outcome.probes)} probe(s) "
                      f"for target {outcome.target}; next: podwarden check --config {outcome.path}", style="bold"))
    return Group(*parts)

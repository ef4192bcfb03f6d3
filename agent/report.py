"""`podwarden report`: the morning report of a run, in the seed's own terms.

One document, built from the store alone (nothing is asked of the node): the Issue Log
(findings per container with cause, fix and evidence), the health-check table (each
probe's last result), every experiment's verdict with its timings, the soak's verdict
with its drift, the remediation actions, the final state of every container, and a
timeline: a lane per container coloured by state over the run, deaths, drift, actions
and findings marked on it. Markdown reads well in a terminal and on a forge; the HTML is
one self-contained file (inline CSS and SVG, no script, no font, no network) whose
timeline marks carry their evidence as hover text; JSON is the same data.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agent.podman import format_time_ns
from agent.replay import settings_of
from machines.container import Fleet
from agent.errors import UsageError
from store import StoreReader

_S = 1_000_000_000
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_ACTIONS = 2000  # actions listed in a report (the store keeps them all: `podwarden query actions`)
# Lane colours by state: what an operator reads at a glance.
STATE_COLOURS = {
    "healthy": "#2e9d4f", "running": "#63c27a", "starting": "#9fd8ad", "unhealthy": "#e0a030",
    "restarting": "#f2c94c", "exited": "#d64541", "crashlooping": "#8e1b1b", "stopped": "#7f8c8d",
    "missing": "#5a5a5a", "removed": "#3d3d3d", "created": "#b3c7e6", "paused": "#8fa8c8", "unknown": "#d9d9d9",
}


def stamp(ns: int | None) -> str:
    """A node time as the report shows it: 2026-11-30 14:56:39.087 UTC."""
    if not ns:
        return "-"
    text = format_time_ns(ns)
    return f"{text[:10]} {text[11:23]} UTC"


def clock(ns: int | None) -> str:
    return format_time_ns(ns)[11:23] if ns else "-"


@dataclass
class Lane:
    """One container's states over the run: (from ns, state) spans, and marks on it."""

    target: str
    container: str
    spans: list[tuple[int, str, str]] = field(default_factory=list)  # (at_ns, state, cause)
    marks: list[dict[str, Any]] = field(default_factory=list)  # kind death|drift|action|finding, at_ns, text


@dataclass
class Report:
    """Everything the morning report says about one run."""

    run: dict[str, Any]
    findings: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    experiments: list[dict[str, Any]]
    soak: dict[str, Any] | None
    checks: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    final: list[dict[str, Any]]
    lanes: list[Lane]
    start_ns: int
    end_ns: int

    @property
    def verdict(self) -> str:
        return self.run.get("verdict") or "unfinished"

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "verdict": self.verdict, "findings": self.findings, "probes": self.probes,
                "experiments": self.experiments, "soak": self.soak, "checks": self.checks, "actions": self.actions, "final": self.final,
                "timeline": {"start": self.start_ns, "end": self.end_ns,
                             "lanes": [{"target": lane.target, "container": lane.container,
                                        "spans": [{"at": at, "state": st, "cause": cause} for at, st, cause in lane.spans],
                                        "marks": lane.marks} for lane in self.lanes]}}


def default_run(reader: StoreReader) -> int:
    """The newest `run` that was not a rehearsal (--dry-run), else the newest run of any kind.
    Raises UsageError when the store holds none."""
    runs = reader.runs()
    real = [r for r in runs if r.command in ("run", "demo") and r.verdict != "dry-run"]
    chosen = (real or runs)[-1:]
    if not chosen:
        raise UsageError(f"store {reader.path}: no run recorded yet; `podwarden run` (or watch, check, soak) "
                         "records one")
    return chosen[0].id


def load(db: str | Path, run_id: int | None = None) -> Report:
    """The report of a run in the store file `db` (see `build`)."""
    with StoreReader(db) as reader:
        return build(reader, run_id)


def build(reader: StoreReader, run_id: int | None = None) -> Report:
    """The report of run `run_id` (default: `default_run`). Raises NoRun.

    One pass over the run's observations in arrival order but for the log lines that are no
    errors (they change no machine's state): a night's report reads a tenth of its rows, and
    its memory grows with the containers, probes and actions, not with the log lines. The
    timeline spans the run's first to last observation, log lines included.
    """
    if run_id is None:
        run_id = default_run(reader)
    run = reader.run(run_id)
    changes = sorted(reader.changes(run_id=run_id), key=lambda c: (c.at_ns, c.id))
    findings = reader.findings(run_id=run_id)
    experiments = reader.experiments(run_id=run_id)

    lanes: dict[tuple[str, str], Lane] = {}

    def lane(target: str, container: str) -> Lane:
        key = (target, container)
        if key not in lanes:
            lanes[key] = Lane(target, container)
        return lanes[key]

    probes: dict[tuple[str, str], dict[str, Any]] = {}
    actions: list[dict[str, Any]] = []
    snapshots: dict[tuple[str, str], Any] = {}
    first_ns, last_ns = reader.time_bounds(run_id)
    first_ns, last_ns = first_ns or 0, last_ns or 0
    fleet = Fleet(settings_of(run.config))
    try:
        for record in reader.arrival_records(run_id=run_id, quiet_logs=False):
            obs = record.obs
            fleet.feed(obs)
            first_ns = min(first_ns, obs.at_ns) if first_ns else obs.at_ns  # a shared one may come first
            last_ns = max(last_ns, obs.at_ns)
            if obs.kind == "snapshot":
                snapshots[(obs.target, obs.container)] = obs
            elif obs.kind == "probe" and obs.probe_type != "kernel-log":
                probes[(obs.container, obs.probe)] = {
                    "container": obs.container, "probe": obs.probe, "type": obs.probe_type, "ok": obs.ok,
                    "at": obs.at_ns, "latency_ms": obs.latency_ms, "detail": (obs.detail or obs.excerpt)[:300]}
            elif obs.kind == "action" and len(actions) < MAX_ACTIONS:
                actions.append({"container": obs.container, "at": obs.at_ns, "action": obs.action,
                                "detail": obs.detail[:500], "ok": obs.ok, "dry_run": obs.dry_run})
                if obs.container:
                    lane(obs.target, obs.container).marks.append(
                        {"kind": "action", "at": obs.at_ns, "text": f"{obs.action}: {obs.detail}"[:300]})
        # the final state: the machines at the run's end, as a replay of its observations leaves them
        final = _final_states(fleet, snapshots, probes.values())
    finally:
        fleet.close()

    for change in changes:
        item = lane(change.target, change.container)
        if item.spans and item.spans[-1][1] == change.to_state:
            continue  # a change of cause only (e.g. a second health_status): the lane shows states
        item.spans.append((change.at_ns, change.to_state, change.cause))
        if change.to_state in ("exited", "crashlooping", "stopped") or "died" in change.cause:
            item.marks.append({"kind": "death", "at": change.at_ns, "text": f"{change.to_state}: {change.cause}"})

    finding_rows = []
    for f in sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.container, f.rule)):
        finding_rows.append({"container": f.container, "rule": f.rule, "severity": f.severity, "message": f.message,
                             "cause": f.cause, "fix": f.fix, "evidence": f.evidence, "at": f.at_ns})
        if f.container:
            lane(f.target, f.container).marks.append({"kind": "finding", "at": f.at_ns,
                                                      "text": f"{f.severity} {f.rule}: {f.message}"[:300]})

    experiment_rows, soak, checks = [], None, []
    for e in experiments:
        row = {"kind": e.kind, "subject": e.subject, "verdict": e.verdict, "started": e.started_ns,
               "ended": e.ended_ns, "steps": e.steps}
        if e.kind == "check":  # a stage of `podwarden run`: its findings are in the Issue Log
            checks.append(row)
        elif e.kind == "soak":
            soak = row
            for drift in e.steps or []:
                if isinstance(drift, dict) and drift.get("container"):
                    lane(drift.get("target", ""), drift["container"]).marks.append(
                        {"kind": "drift", "at": drift.get("at_ns", 0),
                         "text": f"drift {drift.get('kind')}: {drift.get('reason', '')}"[:300]})
        else:
            experiment_rows.append(row)

    for lane_item in lanes.values():
        lane_item.marks.sort(key=lambda m: m["at"])
    ordered = sorted(lanes.values(), key=lambda item: (item.target, item.container))
    # the timeline's axis is the node's clock (every span and mark is a node time); the run's own
    # start and end are this machine's, and may be skewed from it
    start = first_ns or run.started_ns
    end = max([last_ns, *(c.at_ns for c in changes[-1:]), *(f.at_ns for f in findings)]) if last_ns else (
        run.ended_ns or start)
    return Report({"id": run.id, "command": run.command, "targets": list(run.targets), "started": run.started_ns,
                   "ended": run.ended_ns, "verdict": run.verdict},
                  finding_rows, sorted(probes.values(), key=lambda p: (p["container"], p["probe"])),
                  experiment_rows, soak, checks, actions, final, ordered, start, max(end, start + 1))


def _final_states(fleet: Fleet, snapshots: dict[tuple[str, str], Any], probes: Iterable[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Each container's state as the replayed machines end the run; a host service (no
    snapshot, only probes) by its last probes: `up` when they all passed, else `failing`."""
    services: dict[str, list[bool]] = {}
    for probe in probes:
        services.setdefault(probe["container"], []).append(bool(probe["ok"]))
    rows = []
    for machine in sorted(fleet.machines(), key=lambda m: (m.target, m.container)):
        snap = snapshots.get((machine.target, machine.container))
        if snap is None and str(machine.state) == "unknown" and machine.container in services:
            rows.append({"target": machine.target, "container": machine.container,
                         "state": "up" if all(services[machine.container]) else "failing", "restarts": 0,
                         "crashes": 0, "last_death": None, "restart_policy": "(host service)", "image": ""})
            continue
        rows.append({"target": machine.target, "container": machine.container, "state": str(machine.state),
                     "restarts": machine.restarts, "crashes": machine.crashes,
                     "last_death": machine.last_death.text if machine.last_death else None,
                     "restart_policy": snap.restart_policy if snap else "", "image": snap.image if snap else ""})
    return rows


# ---------------------------------------------------------------- markdown


def _md(text: Any, limit: int | None = None) -> str:
    """Text from the node (or anyone) as inert Markdown: no HTML, no table break, one line."""
    value = str(text)[:limit] if limit else str(text)
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("`", "'").replace("\r", " ").replace("\n", " "))


def markdown(report: Report) -> str:
    """The report as Markdown: headings and tables, readable as plain text too."""
    run = report.run
    out = [f"# podwarden report: run {run['id']} ({run['command']})", "",
           f"- **Verdict: {report.verdict.upper()}**",
           f"- Targets: {', '.join(run['targets'])}",
           f"- From {stamp(run['started'])} to {stamp(run['ended'])}", ""]
    out += ["## Issue Log", ""]
    if report.findings:
        by_container: dict[str, list[dict[str, Any]]] = {}
        for finding in report.findings:
            by_container.setdefault(finding["container"] or "(the target)", []).append(finding)
        for container, items in by_container.items():
            out.append(f"### {_md(container)}")
            out.append("")
            for item in items:
                out.append(f"- **{item['severity']} `{_md(item['rule'])}`**: {_md(item['message'])}")
                if item["cause"]:
                    out.append(f"  - Cause: {_md(item['cause'])}")
                if item["fix"]:
                    out.append(f"  - Fix: {_md(item['fix'])}")
                evidence = _evidence_lines(item["evidence"])
                if evidence:
                    out.append(f"  - Evidence: {_md('; '.join(evidence[:4]))}")
            out.append("")
    else:
        out += ["No findings.", ""]
    out += ["## Health checks", "", "| container | probe | type | result | when | detail |", "|---|---|---|---|---|---|"]
    for probe in report.probes:
        out.append(f"| {_md(probe['container'])} | {_md(probe['probe'])} | {probe['type']} | "
                   f"{'ok' if probe['ok'] else '**FAIL**'} | {clock(probe['at'])} | {_md(probe['detail'], 160)} |")
    if not report.probes:
        out.append("| - | - | - | - | - | no probes ran |")
    if report.checks:
        out += ["", "## Checks", "", "| check | verdict | findings |", "|---|---|---|"]
        for c in report.checks:
            found = [f"{f.get('severity')} {f.get('container')} {f.get('rule')}" for f in c["steps"] or []
                     if isinstance(f, dict)]
            out.append(f"| {_md(c['subject'])} | {_verdict_md(c['verdict'])} | {_md(', '.join(found) or 'none')} |")
    out += ["", "## Experiments", ""]
    if report.experiments:
        out += ["| experiment | verdict | what happened |", "|---|---|---|"]
        for e in report.experiments:
            steps = [s for s in e["steps"] or [] if isinstance(s, dict)]
            key = next((s for s in steps if str(s.get("name", "")).startswith("back")), None) or \
                next((s for s in steps if not s.get("ok")), None) or (steps[-1] if steps else {})
            out.append(f"| {e['kind']} {_md(e['subject'])} | {_verdict_md(e['verdict'])} "
                       f"| {_md(key.get('detail', ''), 240)} |")
    else:
        out.append("No experiments in this run.")
    out += ["", "## Soak", ""]
    if report.soak is not None:
        drifts = [d for d in report.soak["steps"] or [] if isinstance(d, dict)]
        ended = report.soak["ended"]
        window = (f"over {(ended - report.soak['started']) / _S:.0f} s ({stamp(report.soak['started'])} to "
                  f"{stamp(ended)})" if ended else f"from {stamp(report.soak['started'])}, unfinished")
        out.append(f"**{str(report.soak['verdict']).upper()}** {window}: {len(drifts)} drift(s)")
        if drifts:
            out += ["", "| time | container | kind | reason |", "|---|---|---|---|"]
            for d in drifts:
                out.append(f"| {clock(d.get('at_ns'))} | {_md(d.get('container') or '-')} | {d.get('kind')} | "
                           f"{_md(d.get('reason', ''), 200)} |")
    else:
        out.append("No soak in this run.")
    out += ["", "## Remediation and actions", ""]
    if report.actions:
        out += ["| time | container | action | outcome |", "|---|---|---|---|"]
        for a in report.actions:
            outcome = ("would (dry run)" if a["dry_run"] else "ok" if a["ok"] else "**failed**")
            out.append(f"| {clock(a['at'])} | {_md(a['container'] or '-')} | {_md(a['action'])} | "
                       f"{outcome}: {_md(a['detail'], 160)} |")
    else:
        out.append("No actions.")
    out += ["", "## Final state", "", "| container | state | restarts | last death | policy |", "|---|---|---|---|---|"]
    for row in report.final:
        out.append(f"| {_md(row['container'])} | {row['state']} | {row['restarts']} | "
                   f"{_md(row['last_death'] or '-', 120)} | {row['restart_policy'] or '-'} |")
    out += ["", "## Timeline", ""]
    for lane in report.lanes:
        changes = " -> ".join(f"{state} {clock(at)}" for at, state, _ in lane.spans[:12])
        more = f" (+{len(lane.spans) - 12} more)" if len(lane.spans) > 12 else ""
        out.append(f"- **{_md(lane.container)}**: {changes or 'no change'}{more}")
    out.append("")
    return "\n".join(out)


def _verdict_md(verdict: Any) -> str:
    return "PASS" if verdict == "pass" else f"**{str(verdict).upper()}**"


def _evidence_lines(evidence: Any) -> list[str]:
    if isinstance(evidence, dict):
        lines = []
        for key, value in evidence.items():
            if isinstance(value, list):
                lines.extend(f"{key}: {v}" for v in value[:3])
            elif not isinstance(value, dict):
                lines.append(f"{key}: {value}")
        return [line[:200] for line in lines]
    if isinstance(evidence, list):
        return [str(v)[:200] for v in evidence]
    return [str(evidence)[:200]] if evidence else []


# ---------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d1d1d;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}
.pass{color:#1e7d3c;font-weight:bold}.fail{color:#b3261e;font-weight:bold}.muted{color:#777}
.sev-error{color:#b3261e;font-weight:bold}.sev-warning{color:#9a6700;font-weight:bold}.sev-info{color:#2f6fb3}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-2px}svg text{font-family:system-ui,sans-serif;font-size:11px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def timeline_svg(report: Report, width: int = 1100) -> str:
    """The timeline: a lane per container coloured by state, marks for deaths, drift, actions, findings."""
    left, lane_h, top = 190, 26, 30
    span = max(report.end_ns - report.start_ns, 1)
    inner = width - left - 20
    height = top + lane_h * max(len(report.lanes), 1) + 30

    def x(at: int) -> float:
        return left + inner * min(max(at - report.start_ns, 0), span) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for i in range(6):
        at = report.start_ns + span * i // 5
        parts.append(f'<line x1="{x(at):.1f}" y1="{top - 6}" x2="{x(at):.1f}" y2="{height - 24}" stroke="#eee"/>'
                     f'<text x="{x(at):.1f}" y="{top - 10}" text-anchor="middle" fill="#666">{_e(clock(at)[:8])}</text>')
    for index, lane in enumerate(report.lanes):
        y = top + index * lane_h
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" fill="#222">{_e(lane.container)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{inner}" height="{lane_h - 8}" fill="{STATE_COLOURS["unknown"]}"/>')
        spans = lane.spans
        for j, (at, state, cause) in enumerate(spans):
            until = spans[j + 1][0] if j + 1 < len(spans) else report.end_ns
            x0, x1 = x(at), x(until)
            colour = STATE_COLOURS.get(state, "#cccccc")
            parts.append(f'<rect class="span" data-state="{_e(state)}" x="{x0:.1f}" y="{y + 4}" '
                         f'width="{max(x1 - x0, 2):.1f}" height="{lane_h - 8}" fill="{colour}">'
                         f'<title>{_e(lane.container)}: {_e(state)} from {_e(clock(at))}: {_e(cause)}</title></rect>')
        for mark in lane.marks:
            mx = x(mark["at"])
            kind = mark["kind"]
            title = f"<title>{_e(clock(mark['at']))} {_e(kind)}: {_e(mark['text'])}</title>"
            if kind == "death":
                parts.append(f'<path class="mark death" d="M{mx - 5:.1f},{y + 2} L{mx + 5:.1f},{y + 2} L{mx:.1f},{y + 11} Z" '
                             f'fill="#111">{title}</path>')
            elif kind == "drift":
                parts.append(f'<circle class="mark drift" cx="{mx:.1f}" cy="{y + lane_h - 5}" r="5" fill="#7b2cbf" '
                             f'stroke="#fff">{title}</circle>')
            elif kind == "action":
                parts.append(f'<rect class="mark action" x="{mx - 4:.1f}" y="{y + lane_h - 9}" width="8" height="8" '
                             f'fill="#1f6feb" stroke="#fff">{title}</rect>')
            else:
                parts.append(f'<path class="mark finding" d="M{mx:.1f},{y + 4} L{mx + 5:.1f},{y + 13} L{mx - 5:.1f},{y + 13} Z" '
                             f'fill="#f08c00" stroke="#fff">{title}</path>')
    parts.append("</svg>")
    return "".join(parts)


def html_report(report: Report) -> str:
    """The report as one self-contained HTML file (inline CSS and SVG; no script, font or network)."""
    run = report.run
    verdict_class = "pass" if report.verdict == "pass" else "fail"
    legend = "".join(f'<span><i style="background:{c}"></i>{s}</span>' for s, c in STATE_COLOURS.items())
    legend += ('<span>▼ death</span><span style="color:#7b2cbf">● drift</span>'
               '<span style="color:#1f6feb">■ action</span><span style="color:#f08c00">▲ finding</span>')
    body = [f"<h1>podwarden report: run {run['id']} ({_e(run['command'])})</h1>",
            f'<p>Verdict: <span class="{verdict_class}">{_e(report.verdict.upper())}</span> &middot; '
            f"targets {_e(', '.join(run['targets']))} &middot; {_e(stamp(run['started']))} to {_e(stamp(run['ended']))}</p>",
            "<h2>Timeline</h2>", f'<div class="legend">{legend}</div>', timeline_svg(report),
            "<h2>Issue Log</h2>"]
    if report.findings:
        body.append("<table><tr><th>severity</th><th>container</th><th>rule</th><th>message</th><th>cause</th>"
                    "<th>fix</th><th>evidence</th></tr>")
        for f in report.findings:
            body.append(f'<tr><td class="sev-{_e(f["severity"])}">{_e(f["severity"])}</td><td>{_e(f["container"] or "-")}</td>'
                        f"<td>{_e(f['rule'])}</td><td>{_e(f['message'])}</td><td>{_e(f['cause'])}</td><td>{_e(f['fix'])}</td>"
                        f"<td>{'<br>'.join(_e(line) for line in _evidence_lines(f['evidence'])[:5])}</td></tr>")
        body.append("</table>")
    else:
        body.append('<p class="muted">No findings.</p>')
    body.append("<h2>Health checks</h2><table><tr><th>container</th><th>probe</th><th>type</th><th>result</th>"
                "<th>when</th><th>detail</th></tr>")
    for p in report.probes:
        result = '<span class="pass">ok</span>' if p["ok"] else '<span class="fail">FAIL</span>'
        body.append(f"<tr><td>{_e(p['container'])}</td><td>{_e(p['probe'])}</td><td>{_e(p['type'])}</td><td>{result}</td>"
                    f"<td>{_e(clock(p['at']))}</td><td>{_e(p['detail'])}</td></tr>")
    body.append("</table>")
    if report.checks:
        body.append("<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>findings</th></tr>")
        for c in report.checks:
            cls = "pass" if c["verdict"] == "pass" else "fail"
            found = [f"{f.get('severity')} {f.get('container')} {f.get('rule')}" for f in c["steps"] or []
                     if isinstance(f, dict)]
            body.append(f"<tr><td>{_e(c['subject'])}</td><td class='{cls}'>{_e(str(c['verdict']).upper())}</td>"
                        f"<td>{_e(', '.join(found) or 'none')}</td></tr>")
        body.append("</table>")
    body.append("<h2>Experiments</h2>")
    if report.experiments:
        for e in report.experiments:
            cls = "pass" if e["verdict"] == "pass" else "fail"
            body.append(f"<h3>{_e(e['kind'])} {_e(e['subject'])}: <span class='{cls}'>{_e(str(e['verdict']).upper())}</span></h3>"
                        "<table><tr><th>step</th><th>container</th><th>result</th><th>detail</th></tr>")
            for s in [s for s in e["steps"] or [] if isinstance(s, dict)]:
                ok = s.get("ok")
                result = "-" if ok is None else ('<span class="pass">ok</span>' if ok else '<span class="fail">FAIL</span>')
                body.append(f"<tr><td>{_e(s.get('name'))}</td><td>{_e(s.get('container') or '-')}</td><td>{result}</td>"
                            f"<td>{_e(s.get('detail', ''))}</td></tr>")
            body.append("</table>")
    else:
        body.append('<p class="muted">No experiments in this run.</p>')
    body.append("<h2>Soak</h2>")
    if report.soak is not None:
        drifts = [d for d in report.soak["steps"] or [] if isinstance(d, dict)]
        cls = "pass" if report.soak["verdict"] == "pass" else "fail"
        body.append(f"<p><span class='{cls}'>{_e(str(report.soak['verdict']).upper())}</span>: {len(drifts)} drift(s), "
                    f"{_e(stamp(report.soak['started']))} to {_e(stamp(report.soak['ended']))}</p>")
        if drifts:
            body.append("<table><tr><th>time</th><th>container</th><th>kind</th><th>reason</th></tr>")
            for d in drifts:
                body.append(f"<tr><td>{_e(clock(d.get('at_ns')))}</td><td>{_e(d.get('container') or '-')}</td>"
                            f"<td>{_e(d.get('kind'))}</td><td>{_e(d.get('reason', ''))}</td></tr>")
            body.append("</table>")
    else:
        body.append('<p class="muted">No soak in this run.</p>')
    body.append("<h2>Remediation and actions</h2>")
    if report.actions:
        body.append("<table><tr><th>time</th><th>container</th><th>action</th><th>outcome</th><th>detail</th></tr>")
        for a in report.actions:
            outcome = "would (dry run)" if a["dry_run"] else ("ok" if a["ok"] else "failed")
            body.append(f"<tr><td>{_e(clock(a['at']))}</td><td>{_e(a['container'] or '-')}</td><td>{_e(a['action'])}</td>"
                        f"<td>{_e(outcome)}</td><td>{_e(a['detail'])}</td></tr>")
        body.append("</table>")
    else:
        body.append('<p class="muted">No actions.</p>')
    body.append("<h2>Final state</h2><table><tr><th>container</th><th>state</th><th>restarts</th><th>last death</th>"
                "<th>policy</th><th>image</th></tr>")
    for row in report.final:
        colour = STATE_COLOURS.get(row["state"], "#ccc")
        body.append(f"<tr><td>{_e(row['container'])}</td><td><i style='display:inline-block;width:10px;height:10px;"
                    f"background:{colour};margin-right:4px'></i>{_e(row['state'])}</td><td>{row['restarts']}</td>"
                    f"<td>{_e(row['last_death'] or '-')}</td><td>{_e(row['restart_policy'] or '-')}</td>"
                    f"<td>{_e(row['image'] or '-')}</td></tr>")
    body.append("</table>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>podwarden report: run {run['id']}</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def render(report: Report, fmt: str) -> str:
    """The report in `fmt` (md, html or json)."""
    if fmt == "md":
        return markdown(report)
    if fmt == "html":
        return html_report(report)
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, default=str) + "\n"
    raise ValueError(f"unknown format {fmt!r}: use md, html or json")


def write(report: Report, fmt: str, path: str | Path) -> Path:
    """Write the report to `path` (0644: a report holds no secret the store did not redact)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(report, fmt), encoding="utf-8")
    return target

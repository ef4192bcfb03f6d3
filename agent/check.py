"""`podwarden check`: the baseline of one target, as the seed's C1 and C4 ran it by hand.

Inventory (every expected container present?), every probe of every container and
host service, every spec policy, recent log errors, and diagnosis of known failures,
ending in one CheckReport whose verdict is `fail` when any finding has severity
error or warning, or any probe failed (`info` findings never fail a check).

It tells the present truth: podman's own health judgement after our health check
run (start period and retries), log lines split at the container's current start
(earlier runs are history, reported once as a recovered incident), and a reason for
every death (podman's events for a user's stop, kill or restart; the kernel log for
the OOM killer, which podman 4.3 does not report; the signal or exit code and the
first error line otherwise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from agent import podman
from agent.config import Config, ContainerConfig, HealthcheckProbe, HttpProbe, Probe, ServiceProbe, TargetConfig
from agent.diagnosis import (
    OOM_SLACK_NS,
    SEVERITIES,
    Death,
    Evidence,
    Finding,
    HealthRecord,
    Rule,
    Timing,
    deaths_from_events,
    diagnose,
    rules_for,
)
from agent.errors import TransportError
from agent.kernel import OomScan, oom_kills
from agent.policies import check_missing, check_policies
from agent.probes import ProbeResult, execute_probe, probe_name
from agent.recent_logs import LogRead, read_logs, without_podman_noise
from agent.errors import TargetUnreachable
from agent.node import inspect_all
from agent.recording import Recording, machine_settings, recording
from agent.sink import Sink
from agent.transport import Transport, make_transport
from machines.container import Fleet
from machines.observations import ProbeObs

MAX_CONCURRENT = 4  # OpenSSH MaxSessions is 10 and the SSH transport caps channels at 8
LOG_TAIL = 100
LOG_TIMEOUT_S = 30.0
EVENTS_TIMEOUT_S = 30.0
RUNNING_STATES = ("running", "healthy")
# the podman events that tell how a container died (a user's stop, kill or restart, or the policy's restart)
DEATH_EVENTS = ("init", "start", "died", "stop", "kill", "restart")

T = TypeVar("T")


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ContainerEntry:
    """One container of the inventory: expected by config, present on the node, or both."""

    name: str
    expected: bool
    expected_state: str | None
    role: str
    state: str  # podman's State.Status; "missing", or "unknown" when podman did not answer
    health: str | None
    restarts: int
    restart_policy: str
    memory: int
    image: str
    exit_code: int | None

    @classmethod
    def of(cls, name: str, own: ContainerConfig | None, facts: podman.InspectFacts | None,
           inventory_ok: bool = True) -> "ContainerEntry":
        if facts is None:
            # when podman could not be asked, absence proves nothing
            return cls(name, own is not None, own.expected_state if own else None, own.role if own else "",
                       "missing" if inventory_ok else "unknown", None, 0, "", 0, "", None)
        return cls(name, own is not None, own.expected_state if own else None, own.role if own else "",
                   facts.status, facts.health, facts.restart_count, facts.restart_policy, facts.memory,
                   facts.image, facts.exit_code)


@dataclass
class CheckReport:
    """Everything one check found on one target."""

    target: str
    started_ns: int
    ended_ns: int = 0
    containers: list[ContainerEntry] = field(default_factory=list)
    probes: list[ProbeObs] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # evidence that could not be read, and why
    unanswered: str = ""  # why podman did not answer ps/inspect: the node could not be checked

    @property
    def failed_probes(self) -> list[ProbeObs]:
        return [p for p in self.probes if not p.ok]

    @property
    def verdict(self) -> str:
        """`fail` when podman did not answer, a finding is an error or warning, or a probe failed; else `pass`."""
        if self.unanswered or self.failed_probes or any(f.fails for f in self.findings):
            return "fail"
        return "pass"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_json(self) -> dict[str, Any]:
        """The `podwarden check --json` document."""
        return {
            "target": self.target,
            "verdict": self.verdict,
            "started_ns": self.started_ns,
            "ended_ns": self.ended_ns,
            "findings": [f.to_json() for f in self.findings],
            "probes": [
                {"container": p.container, "probe": p.probe, "type": p.probe_type, "ok": p.ok,
                 "latency_ms": p.latency_ms, "detail": p.detail, "excerpt": p.excerpt}
                for p in self.probes
            ],
            "containers": [asdict(c) for c in self.containers],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _PlannedProbe:
    owner: str  # container or service name
    probe: Probe
    error_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    skip_reason: str = ""  # set: not run, reported as failed with this detail


def implicit_healthcheck(facts: podman.InspectFacts) -> HealthcheckProbe:
    """A `podman healthcheck run` probe for a container whose check nobody configured.

    Without systemd podman runs no health check timers (health stays `starting`),
    so the check runs the container's own health check once itself.
    """
    timeout_s = facts.healthcheck_timeout_ns / 1e9 if facts.healthcheck_timeout_ns else 10.0
    return HealthcheckProbe(type="podman-healthcheck", name="healthcheck", timeout=min(max(timeout_s, 5.0), 60.0))


def implicit_service_probes(service_name: str, health_url: str | None,
                            status_command: list[str] | None) -> list[Probe]:
    """Probes for a host service that configures none: its health URL and its status command."""
    probes: list[Probe] = []
    if health_url:
        probes.append(HttpProbe(type="http", name="health", url=health_url))
    probes.append(ServiceProbe(type="service", name="active", command=status_command))
    return probes


def plan_probes(config: Config, facts_by_name: dict[str, podman.InspectFacts], inventory_ok: bool) -> list[_PlannedProbe]:
    plan: list[_PlannedProbe] = []
    for name, own in config.containers.items():
        if own.expected_state not in RUNNING_STATES:
            continue
        facts = facts_by_name.get(name)
        errors = tuple(config.error_patterns(name))
        ignores = tuple(own.log_ignore)
        skip = ("not run: the container is missing" if inventory_ok else
                "not run: podman did not answer") if facts is None else ""
        probes: list[Probe] = list(own.probes)
        if facts is not None and facts.healthcheck_test and not any(p.type == "podman-healthcheck" for p in probes):
            probes.append(implicit_healthcheck(facts))
        plan.extend(_PlannedProbe(name, probe, errors, ignores, skip) for probe in probes)
    for name, service in config.services.items():
        probes = list(service.probes) or implicit_service_probes(name, service.health_url, service.status_command)
        plan.extend(_PlannedProbe(name, probe) for probe in probes)
    return plan


def _health_record(result: ProbeResult) -> HealthRecord | None:
    """What one of our health check runs adds to the evidence; None when the check did not run."""
    obs = result.obs
    if obs.ok:
        return HealthRecord(0, result.output, "probe")
    if result.exit_status is None:  # cut off by our timeout (podman's own marks that -1)
        return HealthRecord(-1, obs.detail, "probe") if obs.detail.startswith("timed out") else None
    if result.exit_status == 125:  # no check ran: container not running, no check defined
        return None
    return HealthRecord(result.exit_status, result.output or obs.detail, "probe")


def judge_health_probe(result: ProbeResult, facts: podman.InspectFacts | None) -> ProbeObs:
    """A health check run as podman judges it: a failure podman does not count (inside
    `--health-start-period`) or does not count yet (fewer than `--health-retries` in a row)
    leaves the container `starting` or `healthy`, and so passes here.

    `facts` is inspect after the run: `podman healthcheck run` exits 1 on any failed run,
    while its State.Health follows the start period and retries (measured, podman 4.3).
    """
    obs = result.obs
    if (obs.probe_type != "podman-healthcheck" or obs.ok or facts is None or facts.health is None
            or facts.health == "unhealthy" or result.exit_status in (None, 125)):
        return obs
    streak = facts.health_failing_streak
    if streak <= 0:
        why = "a failure inside the start period does not count"
    else:
        why = f"{streak} failure{'s' if streak != 1 else ''} in a row of the {facts.healthcheck_retries} it allows"
    return dataclasses.replace(obs, ok=True, detail=f"podman still says {facts.health} ({why}); the run: {obs.detail}")


async def node_clock_offset_ns(transport: Transport) -> int:
    """The node's clock minus ours (one `date +%s%N` round trip), 0 when it cannot be read."""
    before = time.time_ns()
    try:
        result = await transport.run(["date", "+%s%N"], timeout=10)
    except TransportError:
        if not transport.connected:
            raise
        return 0
    after = time.time_ns()
    text = result.stdout.strip()
    return int(text) - (before + after) // 2 if result.ok and text.isdigit() else 0


async def read_deaths(transport: Transport, podman_cmd: list[str], ids: list[str],
                      since_ns: int) -> tuple[dict[str, list[Death]], str]:
    """The deaths of containers (by id) since `since_ns` from podman's events, and a note if unread."""
    argv = podman.events_cmd(podman_cmd, since_ns=since_ns, containers=ids, follow=False)
    for status in DEATH_EVENTS:
        argv += ["--filter", f"event={status}"]
    try:
        result = await transport.run(argv, timeout=EVENTS_TIMEOUT_S)
    except TransportError as exc:
        if not transport.connected:
            raise
        return {}, f"podman events could not be read: {exc.reason}"
    if not result.ok:
        reason = without_podman_noise(result.stderr).strip()[:200] or f"exit {result.exit_status}"
        return {}, f"podman events could not be read: {reason}"
    events = [e for e in podman.parse_events(result.stdout, transport.name) if not isinstance(e, podman.ParseError)]
    return deaths_from_events(events), ""


def _death_window_start(facts: podman.InspectFacts, timing: Timing) -> int | None:
    """Where the deaths that explain a container's present begin; None when it has none."""
    if not facts.started_at_ns or facts.status == "created":
        return None
    if not facts.running:
        return facts.started_at_ns - timing.crashloop_window_ns
    if facts.restart_count >= 1 or facts.finished_at_ns:
        return min(facts.finished_at_ns or facts.started_at_ns, facts.started_at_ns) - timing.crashloop_window_ns
    return None


async def run_check(transport: Transport, config: Config, target: TargetConfig, *, rec: Recording | None = None,
                    progress: Callable[[str], None] = _quiet, rules: list[Rule] | None = None) -> CheckReport:
    """Check one target: inventory, probes, policies, log errors and diagnosis.

    Snapshots and probe results go through the recording's sink like any watched
    observation (stored first, then fed to the machines), findings into its store.
    Without `rec` nothing is stored. Probes run at most MAX_CONCURRENT at a time. Operational failures become
    failed probes, findings and notes; when podman does not answer ps/inspect, the
    report says so in `unanswered` and expected containers are `unknown`. Raises
    TransportError only when the link to the target is lost during the check.
    """
    name = transport.name
    podman_cmd = list(target.podman) or ["podman"]
    rules = rules_for(config) if rules is None else rules
    timing = Timing.of(config)
    report = CheckReport(name, time.time_ns())
    findings: list[Finding] = []
    offset_ns = await node_clock_offset_ns(transport)
    sink = rec.sink if rec is not None else Sink(Fleet(machine_settings(config)))

    def node_now() -> int:
        return time.time_ns() + offset_ns

    progress(f"{name}: inventory (podman ps, inspect)")
    try:
        facts_list, problems = await inspect_all(transport, podman_cmd, clock=node_now)
    except TransportError as exc:
        if not transport.connected:
            raise
        facts_list, problems = [], [f"inventory failed: {exc.reason}"]
    inventory_ok = not problems
    facts_by_name = {facts.name: facts for facts in facts_list}
    expected = {n: c for n, c in config.containers.items() if c.expected_state != "absent"}
    if problems:
        report.unanswered = "; ".join(problems)
    for problem in problems:
        findings.append(Finding(name, "", "inventory-failed", "error", f"{name}: {problem}",
                                "podman on the target did not answer ps/inspect as expected",
                                "run `podman ps -a` on the target and fix what it reports", {"problem": problem}))
    missing = [n for n in expected if n not in facts_by_name]
    progress(f"{name}: {len(facts_by_name)} containers present, {len(expected)} expected"
             + (f", missing: {', '.join(missing)}" if missing and inventory_ok else "")
             + ("" if inventory_ok else f", podman did not answer: {report.unanswered}"))
    for facts in facts_list:
        sink.put(facts.snapshot())
    if inventory_ok:
        for container in missing:
            sink.put(podman.missing_snapshot(name, container, node_now()))
    if inventory_ok:
        findings.extend(check_missing(name, config, facts_by_name))

    plan = plan_probes(config, facts_by_name, inventory_ok)
    limit = asyncio.Semaphore(MAX_CONCURRENT)

    async def bounded(make: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await make()

    async def probe_task(planned: _PlannedProbe) -> ProbeResult:
        if planned.skip_reason:
            obs = ProbeObs(name, planned.owner, node_now(), probe_name(planned.probe), planned.probe.type,
                           False, 0.0, "", planned.skip_reason)
            return ProbeResult(obs)
        return await bounded(lambda: execute_probe(
            transport, podman_cmd, planned.owner, planned.probe, error_patterns=planned.error_patterns,
            ignore_patterns=planned.ignore_patterns, now_ns=node_now()))

    async def logs_task(container: str) -> LogRead:
        try:
            read = await bounded(lambda: read_logs(transport, podman_cmd, container, tail=LOG_TAIL,
                                                   timeout=LOG_TIMEOUT_S))
        except TransportError as exc:
            if not transport.connected:
                raise
            read = LogRead((), False, f"podman logs failed: {exc.reason}")
        if not read.ok:
            progress(f"{container}: {read.detail}")
        return read

    present = [container for container in expected if container in facts_by_name]
    progress(f"{name}: {sum(1 for p in plan if not p.skip_reason)} probes (at most {MAX_CONCURRENT} at once)")
    async with asyncio.TaskGroup() as group:
        probe_tasks = [group.create_task(probe_task(planned)) for planned in plan]
    results = [task.result() for task in probe_tasks]
    if not transport.connected:
        raise TransportError(name, ["check"], "the link to the target was lost during the check")

    # Read the rest in causal order, so each read covers what the one before refers to: the
    # state after our probes (a health check run moves podman's health state), then the
    # events of the deaths that state implies, then the log lines of those deaths.
    if present:
        facts_by_name.update(await _reinspect(transport, podman_cmd, present, sink, node_now))
    runs = results  # as they ran: what podman's health log got from us
    results = [dataclasses.replace(r, obs=judge_health_probe(r, facts_by_name.get(r.obs.container)))
               for r in results]
    skipped = {(p.owner, probe_name(p.probe)) for p in plan if p.skip_reason}
    for result in results:
        obs = result.obs
        if (obs.container, obs.probe) not in skipped:
            progress(f"{obs.container}/{obs.probe} ({obs.probe_type}): "
                     + (f"ok in {obs.latency_ms:.0f} ms" if obs.ok else f"FAILED: {obs.detail}"))
        sink.put(obs)
    report.probes = [result.obs for result in results]
    for container in sorted(set(config.containers) | set(facts_by_name)):
        report.containers.append(ContainerEntry.of(container, config.containers.get(container),
                                                   facts_by_name.get(container), inventory_ok))

    # how the containers died: podman's events, and the kernel's OOM killer
    windows = {c: w for c in present if (w := _death_window_start(facts_by_name[c], timing)) is not None}
    deaths: dict[str, list[Death]] = {}
    deaths_unread = False
    oom: OomScan | None = None
    if windows:
        since = min(windows.values())
        ids = [facts_by_name[c].id for c in windows]
        progress(f"{name}: how {', '.join(sorted(windows))} died (podman events, kernel log)")
        deaths, note = await read_deaths(transport, podman_cmd, ids, since)
        if note:
            report.notes.append(note)
            deaths_unread = True
        oom = await oom_kills(transport, ids, since - OOM_SLACK_NS)
        if not oom.available:
            report.notes.append(f"kernel log unavailable, OOM kills can only be likely: {oom.reason}")

    progress(f"{name}: logs of {len(present)} containers")
    async with asyncio.TaskGroup() as group:
        log_tasks = {container: group.create_task(logs_task(container)) for container in present}
    logs = {container: task.result() for container, task in log_tasks.items()}
    if not transport.connected:
        raise TransportError(name, ["check"], "the link to the target was lost during the check")

    progress(f"{name}: policies and diagnosis")
    now_ns = time.time_ns() + offset_ns
    for container, own in expected.items():
        facts = facts_by_name.get(container)
        if facts is None:
            continue
        evidence = Evidence.build(
            name, container, facts, expected_state=own.expected_state,
            records=logs[container].records, error_patterns=config.error_patterns(container),
            ignore_patterns=own.log_ignore,
            health_runs=[record for r in runs if r.obs.container == container
                         and r.obs.probe_type == "podman-healthcheck" and (record := _health_record(r)) is not None],
            probes=[r.obs for r in results if r.obs.container == container], deaths=deaths.get(facts.id, ()),
            oom=oom if container in windows else None, now_ns=now_ns, timing=timing,
            deaths_read=container in windows and not deaths_unread,
            caused=tuple(rec.sink.actions.get((name, container), ())) if rec is not None else (),
        )
        prior = check_policies(facts, config, evidence.lines, failing=evidence.failing)
        findings.extend(diagnose(evidence, rules, prior))
    for service in config.services:
        evidence = Evidence.build(name, service, None, probes=[r.obs for r in results if r.obs.container == service])
        findings.extend(diagnose(evidence, rules))

    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    report.findings = sorted(findings, key=lambda f: (order.get(f.severity, len(order)), f.container, f.rule))
    report.ended_ns = time.time_ns()
    if rec is not None:
        for finding in report.findings:
            rec.add_finding(finding, report.ended_ns)
        await rec.flush()
    failed = len(report.failed_probes)
    progress(f"{name}: {report.verdict}: {len(report.findings)} finding(s), {failed} failed probe(s) "
             f"of {len(report.probes)}")
    return report


async def _reinspect(transport: Transport, podman_cmd: list[str], names: list[str], sink: Sink,
                     clock: Callable[[], int]) -> dict[str, podman.InspectFacts]:
    """Fresh inspect facts of `names` (those podman still has); empty when inspect fails."""
    try:
        result = await transport.run(podman.inspect_cmd(podman_cmd, names), timeout=60)
    except TransportError:
        if not transport.connected:
            raise
        return {}
    facts = podman.parse_inspect(result.stdout, transport.name, clock())
    if isinstance(facts, podman.ParseError):
        return {}
    for fact in facts:
        sink.put(fact.snapshot())
    return {fact.name: fact for fact in facts}


# ---------------------------------------------------------------- the verb


@dataclass
class CheckOutcome:
    """One `podwarden check` over one or more targets: a report (or why there is none) per target."""

    run_id: int | None
    results: list[tuple[TargetConfig, CheckReport | None, TargetUnreachable | None]]

    @property
    def failures(self) -> list[TargetUnreachable]:
        return [failure for _, _, failure in self.results if failure is not None]

    @property
    def verdict(self) -> str:
        passed = not self.failures and all(r is not None and r.passed for _, r, _ in self.results)
        return "pass" if passed else "fail"


async def check(config: Config, targets: list[TargetConfig], db: str | None,
                progress: Callable[[str], None] = _quiet) -> CheckOutcome:
    """`podwarden check`: every target checked in one recorded run (nothing stored with db None).

    A target that cannot be reached, or whose podman does not answer, is reported with
    its TargetUnreachable; the run then ends `unreachable`.
    """
    async with recording(config, "check", [t.name for t in targets], db) as rec:
        outcome = CheckOutcome(rec.run_id, [])
        for target in targets:
            outcome.results.append((target, *await _check_target(config, target, rec, progress)))
        rec.verdict = "unreachable" if outcome.failures else outcome.verdict
    return outcome


async def _check_target(config: Config, target: TargetConfig, rec: Recording, progress: Callable[[str], None]
                        ) -> tuple[CheckReport | None, TargetUnreachable | None]:
    try:
        async with make_transport(target) as transport:
            report = await run_check(transport, config, target, rec=rec, progress=progress)
    except TargetUnreachable as exc:
        return None, exc
    except TransportError as exc:
        return None, TargetUnreachable(target.name, f"link lost during the check: {exc.reason}")
    if report.unanswered:
        return report, TargetUnreachable(target.name, f"podman did not answer: {report.unanswered}")
    return report, None

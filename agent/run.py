"""`podwarden run`: the whole overnight plan as one recorded run, and its morning report.

The seed's plan, in its order, against one target: the baseline check (C1/C2), the
experiments (C3: every expected-up container crashed and back, a cascade for every
container others depend on, a hard kill of every host service that has a kill_command),
the check again (did the experiments leave anything behind?), the soak (C5), the final
status; then the report (Markdown and HTML) written into [podwarden] reports. Every
stage records into the one run (store first, then machines), so `podwarden replay --run`
and `podwarden report --run` see the night as one. Each stage is also a row of the
run's experiments table (kind `check`, `restart`, `cascade`, `service`, `soak`), so the
report and `query experiments` say how each ended.

A stage that cannot start (the target unreachable) ends the run `unreachable`; a failed
stage does not stop the plan unless --fail-fast, because the morning wants to know
everything that broke, not the first thing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent import metrics as prometheus
from agent.check import CheckReport, run_check
from agent.config import Config, TargetConfig, format_duration
from agent.errors import TargetUnreachable, TransportError, UsageError
from agent.experiment import (
    EXPECTED_STATES,
    ExperimentInterrupted,
    ExperimentOutcome,
    dependency_order,
    dependents_of,
    experiments_in,
)
from agent.node import NodeStatus, gather_status
from agent.recording import Recording, recording
from agent.soak import SoakOutcome, soak_in
from agent.transport import make_transport

STAGES = ("baseline", "experiments", "check", "soak", "status")
SKIPPABLE = ("experiments", "check", "soak")


def _quiet(_: str) -> None:
    pass


def plan_experiments(config: Config, kinds: tuple[str, ...] = ("restart", "cascade", "service")
                     ) -> list[tuple[str, str]]:
    """The experiments of the plan, in order: a crash of every container the config expects up
    (dependency order), a cascade of every such container another one depends on, a hard
    kill of every service with a kill_command."""
    up = dependency_order(config, [n for n, c in config.containers.items() if c.expected_state in EXPECTED_STATES])
    plan: list[tuple[str, str]] = []
    if "restart" in kinds:
        plan += [("restart", name) for name in up]
    if "cascade" in kinds:
        plan += [("cascade", name) for name in up if dependents_of(config, name)]
    if "service" in kinds:
        plan += [("service", name) for name, service in config.services.items() if service.kill_command]
    return plan


@dataclass
class StageResult:
    """How one stage of the plan ended."""

    name: str
    verdict: str  # pass, fail, skipped, interrupted
    summary: str
    started_ns: int
    ended_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "verdict": self.verdict, "summary": self.summary,
                "started": self.started_ns, "ended": self.ended_ns}


@dataclass
class RunOutcome:
    """What `podwarden run` did: each stage, the outcome objects behind them, the report files."""

    run_id: int | None
    target: str
    stages: list[StageResult] = field(default_factory=list)
    baseline: CheckReport | None = None
    experiments: ExperimentOutcome | None = None
    after: CheckReport | None = None
    soak: SoakOutcome | None = None
    status: NodeStatus | None = None
    reports: list[Path] = field(default_factory=list)
    report_error: str | None = None
    interrupted: bool = False
    unreachable: TargetUnreachable | None = None
    dry_run: bool = False

    @property
    def verdict(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.unreachable is not None:
            return "unreachable"
        if self.dry_run:
            return "dry-run"  # a rehearsal proves nothing: `report` does not take it for the night
        ran = [s for s in self.stages if s.verdict != "skipped"]
        return "pass" if ran and all(s.verdict == "pass" for s in ran) else "fail"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "run_id": self.run_id, "target": self.target,
                "stages": [s.to_json() for s in self.stages],
                "baseline": self.baseline.to_json() if self.baseline else None,
                "experiments": self.experiments.to_json() if self.experiments else None,
                "check": self.after.to_json() if self.after else None,
                "soak": self.soak.to_json() if self.soak else None,
                "status": self.status.to_json() if self.status else None,
                "reports": [str(p) for p in self.reports], "report_error": self.report_error,
                **({"error": {"kind": "unreachable", "exit_code": 3, "target": self.unreachable.target,
                              "reason": self.unreachable.reason, "message": self.unreachable.message}}
                   if self.unreachable is not None else {})}


class Progress:
    """One progress line per step, prefixed with the stage (n/N) and the time since the start."""

    def __init__(self, sink: Callable[[str], None], stages: list[str]) -> None:
        self.sink = sink
        self.stages = stages
        self.stage = ""
        self.started = time.monotonic()

    def enter(self, stage: str) -> None:
        self.stage = stage
        self("start")

    def __call__(self, message: str) -> None:
        index = self.stages.index(self.stage) + 1 if self.stage in self.stages else 0
        elapsed = format_duration(round(time.monotonic() - self.started))
        self.sink(f"[{index}/{len(self.stages)} {self.stage} {elapsed}] {message}")


def _check_summary(report: CheckReport) -> str:
    return (f"{report.verdict}: {len(report.findings)} finding(s), {len(report.failed_probes)} failed probe(s) "
            f"of {len(report.probes)}")


async def run(config: Config, target: TargetConfig, db: str, *, soak_s: float | None = None,
              skip: tuple[str, ...] = (), kinds: tuple[str, ...] = ("restart", "cascade", "service"),
              hold_s: float | None = None, recovery_s: float | None = None, fail_fast: bool = False,
              dry_run: bool = False, report_dir: str | None = None, stop: asyncio.Event | None = None,
              progress: Callable[[str], None] = _quiet, metrics: str | None = None,
              metrics_any_address: bool = False) -> RunOutcome:
    """The plan against `target`, recorded as one run in `db`, and its report written.

    A target lost at a stage ends the plan there: the stage is `unreachable`, the rest
    skipped, the run stored as unreachable (`outcome.unreachable`), its report written.
    Raises ExperimentInterrupted (Ctrl-C during an experiment: rolled back, the run stored
    as interrupted, its report written). A Ctrl-C in any other stage ends the plan there:
    the run is stored as interrupted and its report still written.

    `metrics`: serve Prometheus metrics on HOST:PORT for the whole plan (default [watch]
    metrics; see agent/metrics.py); a bad address or a port in use raises UsageError or
    ConfigError before anything is recorded.
    """
    unknown = [s for s in skip if s not in SKIPPABLE]
    if unknown:
        raise UsageError(f"run --skip: {', '.join(unknown)} is not a stage that can be skipped "
                         f"({', '.join(SKIPPABLE)})")
    stop = stop or asyncio.Event()
    soak_s = soak_s or config.soak.duration
    plan = plan_experiments(config, kinds) if "experiments" not in skip else []
    shown = Progress(progress, list(STAGES))
    outcome = RunOutcome(None, target.name, dry_run=dry_run)
    endpoint = prometheus.Endpoint.open(config, metrics, any_address=metrics_any_address)
    try:
        async with recording(config, "run", [target.name], db) as rec:
            outcome.run_id = rec.run_id
            try:
                async with prometheus.serving(rec, endpoint, progress):
                    await _stages(rec, outcome, target, plan, soak_s, skip, hold_s, recovery_s, fail_fast,
                                  dry_run, stop, shown)
            except ExperimentInterrupted:
                outcome.interrupted = True
                rec.verdict = "interrupted"
                raise
            outcome.interrupted = outcome.interrupted or stop.is_set()
            rec.verdict = outcome.verdict
    finally:
        if endpoint is not None:
            endpoint.close()
        # whatever happened, the night so far gets its report
        outcome.reports, outcome.report_error = write_reports(db, outcome.run_id,
                                                              report_dir or config.podwarden.reports, progress)
    return outcome


def _record_stage(rec: Recording, outcome: RunOutcome, stage: StageResult, steps: Any = ()) -> None:
    outcome.stages.append(stage)
    if rec.store is not None and stage.name in ("baseline", "check"):
        # the checks are rows of the run's experiments too: the report lists every stage's verdict
        rec.store.add_experiment(rec.run_id, kind="check", subject=f"{'baseline' if stage.name == 'baseline' else 'after the experiments'} on {outcome.target}",
                                 started_ns=stage.started_ns, ended_ns=stage.ended_ns, verdict=stage.verdict,
                                 steps=steps)


async def _check_stage(rec: Recording, outcome: RunOutcome, target: TargetConfig, name: str,
                       shown: Progress) -> CheckReport:
    shown.enter(name)
    started = time.time_ns()
    try:
        async with make_transport(target) as transport:
            report = await run_check(transport, rec.config, target, rec=rec, progress=shown)
    except TransportError as exc:
        raise TargetUnreachable(target.name, f"link lost during the {name} check: {exc.reason}") from None
    if report.unanswered:
        raise TargetUnreachable(target.name, f"podman did not answer: {report.unanswered}")
    _record_stage(rec, outcome, StageResult(name, report.verdict, _check_summary(report), started, time.time_ns()),
                  steps=[{"container": f.container, "rule": f.rule, "severity": f.severity, "message": f.message}
                         for f in report.findings])
    return report


async def _stages(rec: Recording, outcome: RunOutcome, target: TargetConfig, plan: list[tuple[str, str]],
                  soak_s: float, skip: tuple[str, ...], hold_s: float | None, recovery_s: float | None,
                  fail_fast: bool, dry_run: bool, stop: asyncio.Event, shown: Progress) -> None:
    try:
        await _plan(rec, outcome, target, plan, soak_s, skip, hold_s, recovery_s, fail_fast, dry_run, stop, shown)
    except TargetUnreachable as exc:
        now = time.time_ns()
        outcome.unreachable = exc
        done = {s.name for s in outcome.stages}
        lost = next(name for name in STAGES if name not in done)
        outcome.stages.append(StageResult(lost, "unreachable", exc.message, now, now))
        for name in STAGES[STAGES.index(lost) + 1:]:
            outcome.stages.append(StageResult(name, "skipped", f"{target.name} unreachable", now, now))


async def _plan(rec: Recording, outcome: RunOutcome, target: TargetConfig, plan: list[tuple[str, str]],
                soak_s: float, skip: tuple[str, ...], hold_s: float | None, recovery_s: float | None,
                fail_fast: bool, dry_run: bool, stop: asyncio.Event, shown: Progress) -> None:
    def failed() -> bool:
        return stop.is_set() or (fail_fast and any(s.verdict == "fail" for s in outcome.stages))

    def skipped(name: str, why: str) -> None:
        now = time.time_ns()
        outcome.stages.append(StageResult(name, "skipped", why, now, now))

    outcome.baseline = await _check_stage(rec, outcome, target, "baseline", shown)

    if "experiments" in skip or not plan:
        skipped("experiments", "--skip experiments" if "experiments" in skip else "the config plans none")
    elif failed():
        skipped("experiments", "--fail-fast: an earlier stage failed" if not stop.is_set() else "interrupted")
    else:
        shown.enter("experiments")
        shown(f"{len(plan)} experiment(s): " + ", ".join(f"{kind} {subject}" for kind, subject in plan))
        started = time.time_ns()
        outcome.experiments = await experiments_in(rec, target, plan, hold_s=hold_s, recovery_s=recovery_s,
                                                   dry_run=dry_run, stop=stop, progress=shown, fail_fast=fail_fast)
        done = outcome.experiments.experiments
        passed = sum(1 for e in done if e.passed)
        summary = f"{passed}/{len(plan)} passed" + (f" ({len(plan) - len(done)} not run)" if len(done) < len(plan)
                                                    else "")
        failures = [f"{e.kind} {e.subject}: {e.summary}" for e in done if not e.passed]
        outcome.stages.append(StageResult("experiments", outcome.experiments.verdict if len(done) == len(plan)
                                          else "fail", "; ".join([summary, *failures])[:500], started,
                                          time.time_ns()))

    if "check" in skip:
        skipped("check", "--skip check")
    elif failed():
        skipped("check", "--fail-fast: an earlier stage failed" if not stop.is_set() else "interrupted")
    else:
        outcome.after = await _check_stage(rec, outcome, target, "check", shown)

    if "soak" in skip:
        skipped("soak", "--skip soak")
    elif failed():
        skipped("soak", "--fail-fast: an earlier stage failed" if not stop.is_set() else "interrupted")
    else:
        shown.enter("soak")
        started = time.time_ns()
        outcome.soak = await soak_in(rec, [target], soak_s, dry_run=dry_run, stop=stop, progress=shown)
        drifts = len(outcome.soak.drifts)
        outcome.stages.append(StageResult(
            "soak", "interrupted" if stop.is_set() else outcome.soak.verdict,
            f"{format_duration(soak_s)}: {drifts} drift(s)" + "".join(
                f"; {d.container} {d.kind}: {d.reason}" for d in outcome.soak.drifts[:5]), started, time.time_ns()))

    shown.enter("status")
    started = time.time_ns()
    try:
        async with make_transport(target) as transport:
            outcome.status = await gather_status(transport, rec.config, target.podman)
    except TransportError as exc:
        raise TargetUnreachable(target.name, f"link lost during the final status: {exc.reason}") from None
    problems = outcome.status.problems + off_expectation(rec.config, outcome.status)
    outcome.stages.append(StageResult("status", "fail" if problems else "pass",
                                      "; ".join(problems) or "every expected container as expected", started,
                                      time.time_ns()))


def off_expectation(config: Config, status: NodeStatus) -> list[str]:
    """Each configured container or service not in its expected state at the end."""
    problems = []
    for item in status.containers:
        want = config.containers.get(item.name)
        if want is None:
            continue
        if want.expected_state in ("running", "healthy") and item.state != "running":
            problems.append(f"{item.name} is {item.state}, expected {want.expected_state}")
        elif want.expected_state == "healthy" and item.health not in ("healthy", None, ""):
            problems.append(f"{item.name} is {item.health}, expected healthy")
        elif want.expected_state == "stopped" and item.state == "running":
            problems.append(f"{item.name} is running, expected stopped")
        elif want.expected_state == "absent" and item.state not in ("missing", "unknown"):
            problems.append(f"{item.name} is present ({item.state}), expected absent")
    for service in status.services:
        if service.active is False:
            problems.append(f"service {service.name} is not active")
    return problems


def write_reports(db: str, run_id: int | None, directory: str, progress: Callable[[str], None] = _quiet
                  ) -> tuple[list[Path], str | None]:
    """The run's report as Markdown and HTML in `directory` (made if missing): run-<id>.md/.html,
    and why it could not be written (a folder that is a file, a full disk), if it could not."""
    from agent import report as morning
    from store import StoreError

    if run_id is None:
        return [], None
    folder = Path(directory)
    try:
        built = morning.load(db, run_id)
        paths = [morning.write(built, fmt, folder / f"run-{run_id}.{fmt}") for fmt in ("md", "html")]
    except (OSError, StoreError) as exc:
        problem = f"the report could not be written to {folder}: {exc}; `podwarden report --run {run_id}` " \
                  "makes it again"
        progress(problem)
        return [], problem
    progress(f"report: {', '.join(str(p) for p in paths)}")
    return paths, None

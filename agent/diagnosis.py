"""Diagnosis: a table of rules (data) that turns evidence into findings with cause and fix.

Evidence about one container is its inspect facts, its recent log lines (each with
podman's timestamp), its health check records (inspect's State.Health.Log and our own
runs), its probe results, and why it last died. A rule matches when any of its `match`
alternatives holds; an alternative holds when every condition in it holds. Built-in
rules cover every root cause in the seed's Issue Log; `[[rules]]` in the config add
rules or replace a built-in one of the same name.

The present is not the past. Lines from before the container's current start
(`State.StartedAt`) are history: a fault counts as current only when the present state
shows it (the container is down, crash-looping, or podman counts its health check as
failing), and a past one is reported once, as an `info` recovered incident saying when
and why. A crash loop is current while the container has not yet stayed up for the
stable period (`[machine]`, 10 min by default); the lines of the runs that died within
the crash-loop window before the current start belong to it.

Rules run in order:
- ordinary rules, each judged alone; one whose `superseded_by` names a finding that
  was made for the same container (by a rule or a policy) is dropped;
- fallback rules, judged afterwards, skipped when another finding for the container
  already explains one of their topics (`explains`: state, health, logs). The
  `log_errors` condition holds for error lines that no finding explained;
- generic findings (`crash-loop`, `not-running`) then become evidence of the specific
  finding that explains the same container's state, if there is one: one finding per
  root cause.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from agent.config import Config, RuleConfig, RuleMatchConfig
from agent.kernel import OomScan
from agent.podman import InspectFacts, LogLine
from machines.deaths import DeathReason, death_reason, signal_name
from machines.observations import EventObs, ProbeObs

SEVERITIES = ("error", "warning", "info")
# A finding of these severities fails a check; `info` findings are reported only.
FAILING_SEVERITIES = frozenset({"error", "warning"})
EVIDENCE_LINES = 5
DAC_OVERRIDE = "CAP_DAC_OVERRIDE"
NS_PER_S = 1_000_000_000
# The kernel stamps its log from the boot clock: measured here 0.5 s before podman's `died`
# (and before the `start` of the run it killed). A kill this close to a death is that death.
OOM_SLACK_NS = 5 * NS_PER_S
# podman's stop/kill event and the `died` it causes are written within a second of each other.
USER_ACTION_SLACK_NS = NS_PER_S
# conmon can stamp a run's first line before podman's State.StartedAt (measured, 4.3: by ~1 ms)
RUN_START_SLACK_NS = NS_PER_S
RUNNING_EXPECTED = ("running", "healthy")
STOP_EXIT_CODES = (0, 137, 143)  # a stop: a clean shutdown on SIGTERM, or killed by TERM or KILL


# ---------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a container (or service), why, and what to do."""

    target: str
    container: str
    rule: str
    severity: str
    message: str
    cause: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)
    explains: frozenset[str] = frozenset()  # topics this finding accounts for (state, health, logs)
    explained_lines: frozenset[str] = field(default=frozenset(), repr=False)  # log lines it accounts for

    @property
    def fails(self) -> bool:
        return self.severity in FAILING_SEVERITIES

    def to_json(self) -> dict[str, Any]:
        return {"container": self.container, "rule": self.rule, "severity": self.severity,
                "message": self.message, "cause": self.cause, "fix": self.fix, "evidence": self.evidence}


@dataclass(frozen=True)
class HealthRecord:
    """One run of a container's health check: its exit status and what it printed."""

    exit_code: int | None
    output: str
    source: str = "inspect"  # "inspect" (State.Health.Log) or "probe" (our own run)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0


# ---------------------------------------------------------------- time


@dataclass(frozen=True)
class Timing:
    """When a crash loop counts, and when it is over: the `[machine]` settings."""

    crashloop_deaths: int = 3
    crashloop_window_ns: int = 300 * NS_PER_S
    stable_period_ns: int = 600 * NS_PER_S

    @classmethod
    def of(cls, config: Config | None) -> "Timing":
        if config is None:
            return cls()
        machine = config.machine
        return cls(machine.crashloop_deaths, int(machine.crashloop_window * NS_PER_S),
                   int(machine.stable_period * NS_PER_S))


def format_when(at_ns: int) -> str:
    """A node time as people read it: `2026-11-30 13:58:42 UTC`."""
    moment = _dt.datetime.fromtimestamp(at_ns / NS_PER_S, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_span(seconds: float) -> str:
    """A length of time, short: `4s`, `12m`, `3h 5m`, `2d 4h`."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _times(count: int) -> str:
    return "once" if count == 1 else "twice" if count == 2 else f"{count} times"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _health_exit(code: int | None) -> str:
    return {None: "no exit code", -1: "it timed out", 126: "exit 126: not executable",
            127: "exit 127: command not found", 137: "exit 137: killed"}.get(code, f"exit {code}")


# ---------------------------------------------------------------- deaths


@dataclass(frozen=True, slots=True)
class Death:
    """One death of a container: when, its exit code, and what a user did just before, if anything."""

    at_ns: int
    exit_code: int | None
    user_action: str | None = None  # "stop" | "kill" | "restart": a podman event of a user's command
    run_started_ns: int = 0  # the start (podman's `init`) of the run that died, when known
    restarted: bool = False  # the restart policy restarted it (its `restart` event follows the `died`)


# a death at most this long after one of podwarden's own death-causing actions on the container
# (a crash, a stop, a kill, a restart) can be that action's: a stop waits out the container's stop
# timeout first (bitcoind's can be minutes)
OWN_ACTION_LIMIT_NS = 300 * NS_PER_S


def ours(deaths: Sequence[Death], caused: Sequence[int]) -> set[int]:
    """The times of the deaths podwarden's own actions caused: each action (its time, in
    `caused`) claims the first death after it that no earlier action claimed, within
    OWN_ACTION_LIMIT_NS. One action, one death: a loop that follows is the container's own."""
    claimed: set[int] = set()
    times = sorted(d.at_ns for d in deaths)
    for at in sorted(caused):
        death = next((t for t in times if t >= at and t not in claimed), None)
        if death is not None and death - at <= OWN_ACTION_LIMIT_NS:
            claimed.add(death)
    return claimed


def deaths_from_events(events: Iterable[EventObs]) -> dict[str, list[Death]]:
    """Every death in podman's events, by container id, oldest first.

    A `stop` or `kill` event between a run's start and its `died` (or within a second
    after it) is a user's command; so is a `restart` written before the `died`. The
    restart policy writes its `restart` after the `died` (measured, podman 4.3), and that
    is not a user's.
    """
    by_id: dict[str, list[EventObs]] = {}
    for event in events:
        by_id.setdefault(event.container_id, []).append(event)
    deaths: dict[str, list[Death]] = {}
    for container_id, own in by_id.items():
        own.sort(key=lambda e: e.at_ns)
        found: list[Death] = []
        pending: str | None = None  # a user's command waiting for the death it causes
        started = 0  # podman's `init` (else `start`) of the current run
        for event in own:
            previous_death = found[-1].at_ns if found else 0
            if event.status in ("init", "start"):
                pending = None
                # a run begins at `init`: its first lines can be stamped before podman writes `start`
                if event.status == "init" or started <= previous_death:
                    started = event.at_ns
            elif event.status in ("stop", "kill", "restart"):
                if not found or previous_death < started:
                    pending = pending or event.status
                elif event.status == "restart":
                    # the restart policy's `restart`, written after the `died`
                    found[-1] = dataclasses.replace(found[-1], restarted=True)
                elif found[-1].user_action is None and event.at_ns - previous_death <= USER_ACTION_SLACK_NS:
                    found[-1] = dataclasses.replace(found[-1], user_action=event.status)  # stamped after its died
            elif event.status == "died":
                found.append(Death(event.at_ns, event.exit_code, pending, started if started > previous_death else 0))
                pending = None
        deaths[container_id] = found
    return deaths


def present_death(facts: InspectFacts, deaths: Sequence[Death] = ()) -> Death | None:
    """The death that explains the present: why a stopped container is down, or the death
    just before a running container's current start; None when there is none.

    `deaths` are the container's deaths from podman's events (oldest first). Without
    them, inspect's FinishedAt and ExitCode stand in (on 4.3 FinishedAt can be the
    death before the last one, and ExitCode of a running container is 0, measured).
    """
    if facts.status == "created" or not facts.started_at_ns:
        return None
    if not facts.running:
        recent = [d for d in deaths if d.at_ns >= facts.started_at_ns - USER_ACTION_SLACK_NS]
        if recent:
            death = recent[-1]
            return dataclasses.replace(death, exit_code=facts.exit_code if death.exit_code is None else death.exit_code)
        at_ns = max(facts.finished_at_ns, facts.started_at_ns)
        return Death(at_ns, facts.exit_code, "stop" if facts.stopped_by_user else None, facts.started_at_ns)
    before = [d for d in deaths if d.at_ns <= facts.started_at_ns]
    if before:
        return before[-1]
    if facts.restart_count >= 1 and 0 < facts.finished_at_ns <= facts.started_at_ns:
        return Death(facts.finished_at_ns, None)
    return None


def stop_inferred(facts: InspectFacts, death: Death) -> bool:
    """A podman 4 user stop told by the restart policy: always/unless-stopped restarts every
    death but a user's stop, and a stop ends in 0, 137 or 143."""
    return (not facts.running and facts.status == "exited" and facts.stopped_by_user is None
            and death.user_action is None and (facts.restart_policy or "no") in ("always", "unless-stopped")
            and facts.exit_code in STOP_EXIT_CODES)


def explain_death(facts: InspectFacts, death: Death, *, oom: OomScan | None = None,
                  first_error: str | None = None) -> DeathReason:
    """Why one death happened, with its evidence (see machines/deaths.py for the order).

    `oom` is the kernel log's OOM kills (None: not read). When the kernel log was read
    and holds no kill of this container near the death, a memory limit points at
    nothing: exit 137 is then a plain SIGKILL, not a likely OOM kill.
    """
    kill = oom.near(facts.id, death.at_ns, OOM_SLACK_NS) if oom is not None and oom.available else None
    user_action, user_evidence = death.user_action, None
    if kill is None and stop_inferred(facts, death):
        user_action = "stop"
        user_evidence = (f"not restarted under restart policy {facts.restart_policy}, which restarts every other "
                         "death (podman 4 writes no stop event for some stops)")
    kernel_read = oom is not None and oom.available
    reason = death_reason(death.exit_code, user_action=user_action, user_evidence=user_evidence,
                          oom_evidence=kill.evidence if kill is not None else None, oom_killed=facts.oom_killed,
                          memory=0 if kernel_read and kill is None else facts.memory, first_error=first_error)
    extra: tuple[str, ...] = ()
    if reason.kind == "oom-likely":
        extra = ((f"kernel log unavailable: {oom.reason}",) if oom is not None
                 else ("kernel log not read",))
    elif kernel_read and kill is None and death.exit_code == 137 and facts.memory:
        extra = (f"{oom.source}: no OOM kill of this container",)
    return dataclasses.replace(reason, evidence=reason.evidence + extra) if extra else reason


# ---------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    """Everything known about one container for diagnosis; build it with `Evidence.build`."""

    target: str
    container: str
    facts: InspectFacts | None
    expected_state: str | None = None  # from config; None for a container config does not name
    lines: tuple[str, ...] = ()  # the present's log lines, oldest first, ignore patterns already applied
    error_lines: tuple[str, ...] = ()  # the subset the container's error patterns match
    health: tuple[HealthRecord, ...] = ()  # oldest first
    probes: tuple[ProbeObs, ...] = ()
    earlier: tuple[LogLine, ...] = ()  # lines of runs before the current start (history), stamped
    earlier_errors: tuple[LogLine, ...] = ()
    death: DeathReason | None = None  # why it is down, or why it died before its current start
    death_at_ns: int = 0
    death_exit_code: int | None = None
    death_lines: tuple[str, ...] = ()  # the lines of the run that died, oldest first
    death_first_error: str | None = None  # its first error line
    now_ns: int = 0  # the node's time of the check; 0 when unknown
    timing: Timing = Timing()
    past: bool = False  # the evidence of an earlier run that died (see `recovered_incident`)
    # deaths no user asked for within the crash-loop window before now (None: podman's events unread)
    recent_deaths: int | None = None
    death_ours: bool = False  # the death before the present was caused by podwarden's own action (an experiment)
    past_deaths: int | None = None  # deaths in podman's events read (not podwarden's); None: unread

    @classmethod
    def build(cls, target: str, container: str, facts: InspectFacts | None, *, expected_state: str | None = None,
              lines: Iterable[str] = (), records: Iterable[LogLine] = (), error_patterns: Iterable[str] = (),
              ignore_patterns: Iterable[str] = (), health_runs: Iterable[HealthRecord] = (),
              probes: Iterable[ProbeObs] = (), deaths: Sequence[Death] = (), oom: OomScan | None = None,
              now_ns: int = 0, timing: Timing = Timing(), deaths_read: bool = False,
              caused: Sequence[int] = ()) -> "Evidence":
        """Evidence with ignore patterns applied, the present told from history, and the last death explained.

        `records` are stamped log lines (podman's times); plain `lines` count as present.
        `deaths` are the container's deaths from podman's events, `oom` the kernel log's
        OOM kills; `now_ns` is the node's clock.
        """
        ignores = [re.compile(p) for p in ignore_patterns]
        errors = [re.compile(p) for p in error_patterns]

        def kept(text: str) -> bool:
            return not any(p.search(text) for p in ignores)

        def is_error(text: str) -> bool:
            return any(p.search(text) for p in errors)

        stamped = [r for r in records if kept(r.text)]
        plain = [line for line in lines if kept(line)]
        death = present_death(facts, deaths) if facts is not None else None
        run_since = cls._run_since(facts, death)
        present_since = run_since
        if facts is not None and facts.restart_count >= 1 and not (
                facts.running and now_ns and now_ns - facts.started_at_ns >= timing.stable_period_ns):
            # a crash loop in progress (or ended in a death): its earlier runs are part of it
            present_since = run_since - timing.crashloop_window_ns
        present = [r.text for r in stamped if r.at_ns >= present_since] + plain
        earlier = tuple(r for r in stamped if r.at_ns < run_since)
        recorded = tuple(HealthRecord(entry.exit_code, entry.output) for entry in (facts.health_log if facts else ()))

        reason, death_lines, first_error = None, (), None
        if death is not None and facts is not None:
            upto = death.at_ns + USER_ACTION_SLACK_NS
            if death.run_started_ns:
                since = death.run_started_ns
            elif not facts.running:
                since = run_since
            else:
                since = upto - timing.crashloop_window_ns
            death_lines = tuple(r.text for r in stamped if since <= r.at_ns <= upto) or (
                tuple(plain) if not facts.running else ())
            first_error = next((text for text in death_lines if is_error(text)), None)
            reason = explain_death(facts, death, oom=oom, first_error=first_error)
        return cls(target, container, facts, expected_state, tuple(present),
                   tuple(line for line in present if is_error(line)), recorded + tuple(health_runs), tuple(probes),
                   earlier, tuple(r for r in earlier if is_error(r.text)), reason,
                   death.at_ns if death is not None else 0, death.exit_code if death is not None else None,
                   death_lines, first_error, now_ns, timing,
                   recent_deaths=cls._recent_deaths(deaths, now_ns, timing, caused) if deaths_read else None,
                   death_ours=death is not None and death.at_ns in ours(deaths, caused),
                   past_deaths=(len(deaths) - len(ours(deaths, caused))) if deaths_read else None)

    @staticmethod
    def _recent_deaths(deaths: Sequence[Death], now_ns: int, timing: Timing, caused: Sequence[int] = ()) -> int | None:
        """The deaths of a loop in the crash-loop window before now: each restarted by the
        restart policy, none a user's command, none caused by podwarden's own action
        (`caused`: the times of its actions on this container, e.g. a crash experiment).

        RestartCount cannot say this: podman counts every restart since the container was
        created (measured, podman 4.3: three crashes 40 minutes earlier and one now read 4) and
        `podman start` sets it to 0 (measured), so old deaths beside a healthy present would
        make a crash loop of today. A user's `podman stop` under a restarting policy has no
        `restart` after its `died` (podman 4 writes no stop event for some stops).
        """
        if not now_ns:
            return None

        mine = ours(deaths, caused)
        return sum(1 for d in deaths if d.restarted and d.user_action is None and d.at_ns not in mine
                   and d.at_ns >= now_ns - timing.crashloop_window_ns)

    @staticmethod
    def _run_since(facts: InspectFacts | None, death: Death | None) -> int:
        """Where the current run's lines begin (the lines before are history).

        Not State.StartedAt itself: conmon can stamp a run's first line before it (by ~1 ms,
        measured, podman 4.3). A running container's run begins after the death
        before it (or FinishedAt, a user's stop); a stopped one's at podman's `init` of
        its last run, else StartedAt less a second.
        """
        if facts is None or not facts.started_at_ns:
            return 0
        if facts.running:
            ends = [t for t in (facts.finished_at_ns, death.at_ns if death is not None else 0)
                    if 0 < t <= facts.started_at_ns]
            return max(ends) + 1 if ends else 0
        if death is not None and death.run_started_ns:
            return death.run_started_ns
        return facts.started_at_ns - RUN_START_SLACK_NS

    # -- the present state, as podman and the [machine] settings judge it

    @property
    def running(self) -> bool:
        return self.facts is not None and self.facts.running and not self.past

    @property
    def stable(self) -> bool:
        """Up for at least the stable period: a crash loop before it is over."""
        facts = self.facts
        return (self.running and bool(self.now_ns) and facts is not None and facts.started_at_ns > 0
                and self.now_ns - facts.started_at_ns >= self.timing.stable_period_ns)

    @property
    def crash_looping(self) -> bool:
        """Died crashloop_deaths times or more within the crash-loop window (podman's events; without
        them, restarted that often) and not yet up for the stable period."""
        if self.facts is None or self.stable:
            return False
        if self.recent_deaths is not None:
            return self.recent_deaths >= self.timing.crashloop_deaths
        return self.facts.restart_count >= self.timing.crashloop_deaths

    @property
    def failing(self) -> bool:
        """The present state shows a fault: down when it should run, crash-looping, or unhealthy."""
        if self.facts is None:
            return False
        if self.past:
            return True
        down = not self.facts.running and (self.expected_state is None or self.expected_state in RUNNING_EXPECTED)
        return down or self.crash_looping or self.facts.health == "unhealthy"

    @property
    def health_failures(self) -> tuple[HealthRecord, ...]:
        """The failing health runs since the last passing one that podman counts.

        podman does not count failures inside `--health-start-period` (it says `starting`
        with FailingStreak 0): those are no failures here either.
        """
        facts = self.facts
        if self.past or (facts is not None and facts.health != "unhealthy" and facts.health_failing_streak <= 0):
            return ()
        failing: list[HealthRecord] = []
        for record in reversed(self.health):
            if not record.failed:
                break
            failing.append(record)
        return tuple(reversed(failing))

    def fact(self, name: str) -> Any:
        """A fact a rule can test (see RuleMatchConfig.FACTS); None when unknown."""
        if name == "expected_state":
            return self.expected_state
        facts = self.facts
        if facts is None:
            return None
        derived = {
            "running": lambda: self.running,
            "status": lambda: "exited" if self.past else facts.status,
            "exit_code": lambda: self.death_exit_code if self.past else facts.exit_code,
            "health": lambda: None if self.past else facts.health,
            "stable": lambda: self.stable,
            "crash_looping": lambda: self.crash_looping,
            "failing": lambda: self.failing,
            "death_kind": lambda: self.death.kind if self.death is not None else None,
            "has_mount": lambda: bool(writable_mounts(facts)),
            "has_ro_mount": lambda: bool(read_only_mounts(facts)),
            "dac_override": lambda: keeps_dac_override(facts),
            "has_healthcheck": lambda: bool(facts.healthcheck_test),
            "image_tag": lambda: image_tag(facts.image),
        }
        if name in derived:
            return derived[name]()
        return getattr(facts, name)


def writable_mounts(facts: InspectFacts) -> list[str]:
    """The container's writable bind and volume mounts as `SOURCE -> DESTINATION`."""
    return [f"{m.source} -> {m.destination}" for m in facts.mounts if m.type in ("bind", "volume") and m.rw]


def read_only_mounts(facts: InspectFacts) -> list[str]:
    """The container's read-only bind and volume mounts as `SOURCE -> DESTINATION`."""
    return [f"{m.source} -> {m.destination}" for m in facts.mounts if m.type in ("bind", "volume") and not m.rw]


def keeps_dac_override(facts: InspectFacts) -> bool:
    """Whether the container's process keeps CAP_DAC_OVERRIDE.

    EffectiveCaps says so directly; podman 4.3 writes `null` there for an empty set
    (`--cap-drop ALL`), and then CapDrop (the explicit list of dropped caps) decides.
    """
    added = {_cap(c) for c in facts.cap_add}
    if DAC_OVERRIDE in added or "ALL" in added:
        return True
    if facts.effective_caps:
        return DAC_OVERRIDE in {_cap(c) for c in facts.effective_caps}
    dropped = {_cap(c) for c in facts.cap_drop}
    return not (DAC_OVERRIDE in dropped or "ALL" in dropped or
                (facts.effective_caps is not None and not facts.effective_caps))


def _cap(name: str) -> str:
    name = name.strip().upper()
    return name if name == "ALL" or name.startswith("CAP_") else f"CAP_{name}"


def image_tag(image: str) -> str:
    """The tag or digest an image reference pins: `sha256:...`, `1.2.3`, or `latest` when none."""
    if "@" in image:
        return image.split("@", 1)[1]
    if re.fullmatch(r"(sha256:)?[0-9a-f]{64}", image):
        return image  # an image id pins exactly
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def restart_policy_spelled(facts: InspectFacts) -> str:
    """The restart policy as podman's --restart takes it: `no`, `on-failure:3`, `always`, ..."""
    policy = facts.restart_policy or "no"
    if policy == "on-failure" and facts.restart_max_retries:
        return f"on-failure:{facts.restart_max_retries}"
    return policy


def restart_policy_means(facts: InspectFacts) -> str:
    """What a restart policy does, as a verb phrase: `never restarts it`, ..."""
    policy = facts.restart_policy or "no"
    if policy == "no":
        return "never restarts it"
    if policy == "on-failure":
        limit = f", {facts.restart_max_retries} times at most" if facts.restart_max_retries else ""
        return f"restarts it only after a failure (a non-zero exit){limit}"
    if policy == "always":
        return "restarts it after every exit, a clean one too"
    if policy == "unless-stopped":
        return "restarts it after every exit, unless a user stopped it"
    return f"restarts it as policy {policy} says"


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Match:
    """One compiled match alternative of a rule."""

    log: re.Pattern[str] | None = None
    health_output: re.Pattern[str] | None = None
    health_exit_code: frozenset[int] | None = None
    exit_code: frozenset[int] | None = None
    probe: str | None = None
    probe_output: re.Pattern[str] | None = None
    probe_failed: bool = True
    log_errors: bool = False
    facts: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, match: RuleMatchConfig) -> "Match":
        return cls(
            log=re.compile(match.log) if match.log else None,
            health_output=re.compile(match.health_output) if match.health_output else None,
            health_exit_code=frozenset(match.health_exit_code) if match.health_exit_code else None,
            exit_code=frozenset(match.exit_code) if match.exit_code else None,
            probe=match.probe,
            probe_output=re.compile(match.probe_output) if match.probe_output else None,
            probe_failed=match.probe_failed,
            log_errors=match.log_errors,
            facts=tuple(match.facts.items()),
        )

    def regexes(self) -> list[re.Pattern[str]]:
        return [p for p in (self.log, self.health_output, self.probe_output) if p is not None]


@dataclass(frozen=True)
class Rule:
    """A diagnosis rule compiled from a RuleConfig (built-in or from the config file)."""

    name: str
    severity: str
    matches: tuple[Match, ...]
    message: str
    cause: str
    fix: str
    explains: frozenset[str] = frozenset()
    fallback: bool = False
    superseded_by: frozenset[str] = frozenset()
    containers: frozenset[str] = frozenset()
    source: str = "builtin"
    generic: bool = False

    @classmethod
    def from_config(cls, rule: RuleConfig, source: str = "config") -> "Rule":
        return cls(
            name=rule.name, severity=rule.severity, matches=tuple(Match.from_config(m) for m in rule.match),
            message=rule.message, cause=rule.cause, fix=rule.fix, explains=frozenset(rule.explains),
            fallback=rule.fallback, superseded_by=frozenset(rule.superseded_by),
            containers=frozenset(rule.containers), source=source, generic=rule.generic,
        )

    def applies_to(self, container: str) -> bool:
        return not self.containers or container in self.containers

    @property
    def fails(self) -> bool:
        return self.severity in FAILING_SEVERITIES


PERMISSION_DENIED = r"(?i)permission denied|\bEACCES\b"
READ_ONLY_FS = r"(?i)read-only file system|\bEROFS\b"
HEALTH_FAILED_CODES = [1, -1, 126, 127, 137]
_RUNNING_EXPECTED = list(RUNNING_EXPECTED)

# The built-in rule table. Each entry is exactly what a `[[rules]]` table in config.toml
# holds, validated by the same model. Message placeholders: see MESSAGE_FIELDS. A rule
# about a cause needs the state that cause produces (`failing`: down, crash-looping or
# unhealthy), not one log line on a healthy container.
BUILTIN_RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "volume-permission-denied",
        "severity": "error",
        "match": [{"log": PERMISSION_DENIED, "facts": {"has_mount": True, "dac_override": False, "failing": True}}],
        "message": "{container} cannot write its volume ({mount}) with DAC_OVERRIDE dropped: {first_match}",
        "cause": "--cap-drop=ALL removed CAP_DAC_OVERRIDE, so root in the container can no longer write a "
                 "volume owned by another uid (rootless: a subuid the container's root does not map to)",
        "fix": "add --cap-add=DAC_OVERRIDE to the container spec (the seed's fix), or give the volume to the "
               "uid the container runs as (rootless: `podman unshare chown -R 0:0 SOURCE`, or --userns=keep-id) "
               "so no capability is needed",
        "explains": ["state"],
        "superseded_by": ["caps"],
    },
    {
        "name": "volume-owner-mismatch",
        "severity": "error",
        "match": [{"log": PERMISSION_DENIED, "facts": {"has_mount": True, "dac_override": True, "failing": True}}],
        "message": "{container} is refused access to a file on its volume ({mount}): {first_match}",
        "cause": "the volume (or a stale file on it, such as a LOCK left by an earlier run) belongs to a uid the "
                 "container's user does not map to: rootless podman maps container uids to subuids",
        "fix": "chown the volume to the container user as mapped (`podman unshare chown -R UID:GID SOURCE`) or run "
               "with --userns=keep-id; remove stale files owned by another uid",
        "explains": ["state"],
    },
    {
        "name": "healthcheck-needs-credentials",
        "severity": "error",
        "match": [{"health_output": r"(?i)expected \d+ macaroons?, got 0|\bunauthori[sz]ed\b|"
                                    r"returned error:? (HTTP/[\d.]+ )?401\b|verification failed"}],
        "message": "{container}'s health check is refused for lack of credentials: {health_output}",
        "cause": "the health check calls an authenticated API without credentials (LND's REST API wants a "
                 "macaroon): the daemon may be fine, the check itself is wrong",
        "fix": "check with an authenticated client (e.g. `lncli --macaroonpath .../readonly.macaroon getinfo`) "
               "or an endpoint that needs no credentials",
        "explains": ["health"],
    },
    {
        "name": "healthcheck-missing-binary",
        "severity": "error",
        "match": [
            {"health_output": r"(?im)executable file not found|command not found|"
                              r"^\S*sh: (\d+: )?\S+: not found$|attempted to invoke a command that was not found"},
            {"health_exit_code": [127]},
        ],
        "message": "{container}'s health check runs a program the image lacks: {health_output}",
        "cause": "the health check command (e.g. curl) is not installed in the image, so every check fails "
                 "however healthy the service is",
        "fix": "use a tool the image has (the app's own CLI, busybox wget, a python3 socket check) "
               "or add the binary to the image",
        "explains": ["health"],
    },
    {
        "name": "data-newer-than-image",
        "severity": "error",
        "match": [{"log": r"(?i)version of the data \([^)]*\) is higher than the (docker )?image version|"
                          r"data version \S+ > image version|downgrading is not supported|cannot downgrade",
                   "facts": {"failing": True}}],
        "message": "{container} refuses to start: its data is newer than its image: {first_match}",
        "cause": "the data volume was written by a newer version of the app than the image now running "
                 "(an older or re-pinned tag), and the app cannot downgrade its data",
        "fix": "run an image at least as new as the data (pin that version's tag or digest); "
               "never point an older image at upgraded data",
        "explains": ["state"],
    },
    {
        "name": "read-only-path-unwritable",
        "severity": "error",
        "match": [
            {"log": READ_ONLY_FS, "facts": {"read_only": True, "failing": True}},
            {"log": r"(?i)is not writable|unable to open database file|can't create|cannot create",
             "facts": {"read_only": True, "failing": True}},
        ],
        "message": "{container} cannot write a path on its read-only root filesystem: {first_match}",
        "cause": "the container runs with --read-only and the app writes to a path that has no tmpfs or "
                 "volume mounted on it (the seed's grafana: GF_PATHS_DATA, /tmp, /var/log/grafana)",
        "fix": "mount a tmpfs (--tmpfs /tmp --tmpfs /var/log/APP) or a volume on every path the app writes, "
               "or drop --read-only",
        "explains": ["state"],
    },
    {
        "name": "read-only-mount-unwritable",
        "severity": "error",
        "match": [{"log": READ_ONLY_FS, "facts": {"read_only": False, "has_ro_mount": True, "failing": True}}],
        "message": "{container} cannot write to a read-only mount ({ro_mount}): {first_match}",
        "cause": "a volume or bind mount is mounted read-only (`:ro`) and the app writes to it",
        "fix": "mount it read-write (drop `:ro`) if the app must write there, or point the app's writes at a "
               "writable path (a tmpfs or another volume)",
        "explains": ["state"],
    },
    {
        "name": "oom-killed",
        "severity": "error",
        "match": [{"facts": {"death_kind": ["oom-kill", "oom-likely"], "failing": True}}],
        "message": "{container} died: {death}",
        "cause": "its processes needed more memory than its limit ({memory_limit}), and the kernel's OOM killer "
                 "ended one ({oom_proof})",
        "fix": "raise --memory above its peak need (`podman stats` shows it) and recreate the container, or find "
               "what keeps growing in it (a leak, an unbounded cache or queue)",
        "explains": ["state", "health"],
    },
    {
        "name": "crash-loop",
        "severity": "error",
        "generic": True,
        "match": [
            {"facts": {"crash_looping": True}},
            {"facts": {"running": False, "exit_code": "!=0", "restart_count": ">=1"}},
        ],
        "message": "{container} is crash-looping: {loop_deaths} (now {status}); "
                   "its last death: {death}",
        "cause": "the main process dies each time it starts, and its restart policy ({restart_policy}) "
                 "{restart_policy_means}; the last death: {death}",
        "fix": "fix what the last death shows (its first error line, or the other findings for {container}), "
               "then `podman start {container}` or let the restart policy bring it back",
        "explains": ["state", "health"],
    },
    {
        "name": "stopped-not-restarted",
        "severity": "error",
        "match": [
            # podman 5 says so
            {"facts": {"status": "exited", "restart_policy": ["always", "unless-stopped"],
                       "stopped_by_user": True, "expected_state": _RUNNING_EXPECTED}},
            # podman 4 does not: a stop ends in 0 (clean shutdown on SIGTERM), 143 (TERM) or 137 (KILL)
            {"facts": {"status": "exited", "restart_policy": ["always", "unless-stopped"],
                       "death_kind": ["user-stop", "user-kill"], "expected_state": _RUNNING_EXPECTED}},
        ],
        "message": "{container} is exited (code {exit_code}) and was not restarted although its restart "
                   "policy is {restart_policy}: {death}",
        "cause": "`podman stop`/`podman kill` mark a container stopped by the user, and podman then does not "
                 "apply its restart policy; rootless podman (no podman-restart.service) also does not bring it "
                 "back after a reboot: the seed's known limitation",
        "fix": "`podman start {container}`; for unattended recovery add a podwarden hook (when = [\"exited\", "
               "\"stopped\"], action = \"start\") or a reconcile timer, and test crashes by killing the main "
               "process (kill -9 State.Pid), not with podman stop",
        "explains": ["state", "health"],
        "superseded_by": ["crash-loop"],
    },
    {
        "name": "exited-not-restarted",
        "severity": "error",
        "match": [{"facts": {"status": "exited", "exit_code": 0, "restart_policy": ["on-failure", "no", ""],
                             "expected_state": _RUNNING_EXPECTED}}],
        "message": "{container} exited cleanly (code 0) and stays down: its restart policy ({restart_policy}) "
                   "{restart_policy_means}",
        "cause": "the process shut down with status 0 (a dependent that exits when its upstream goes away), "
                 "and a restart policy of {restart_policy} does not restart a clean exit",
        "fix": "use --restart=unless-stopped (or always), and let the daemon wait and reconnect "
               "instead of exiting when its upstream is down",
        "explains": ["state", "health"],
    },
    {
        "name": "no-healthcheck",
        "severity": "warning",
        "match": [{"facts": {"expected_state": "healthy", "has_healthcheck": False}}],
        "message": "{container} is expected healthy but has no health check",
        "cause": "without a health check podman cannot tell healthy from merely running",
        "fix": "add --health-cmd (a command the image has) to the container spec, or expect `running`",
        "explains": ["health"],
    },
    {
        "name": "not-running",
        "severity": "error",
        "fallback": True,
        "generic": True,
        "match": [{"facts": {"running": False, "expected_state": _RUNNING_EXPECTED}}],
        "message": "{container} is {status}, expected running: {death}",
        "cause": "{death_cause}",
        "fix": "read `podman logs --tail 100 {container}` up to the death, fix what it shows, "
               "then `podman start {container}`",
        "explains": ["state", "health"],
    },
    {
        "name": "healthcheck-failing",
        "severity": "error",
        "fallback": True,
        "match": [{"health_exit_code": HEALTH_FAILED_CODES, "facts": {"health": "unhealthy"}}],
        "message": "{container} fails its health check: {health_output}",
        "cause": "the health check command fails ({health_exit}), and podman marks the container unhealthy "
                 "after {health_retries}",
        "fix": "run the check by hand (`podman healthcheck run {container}`, `podman exec {container} CMD`) and "
               "fix the service or the check",
        "explains": ["health"],
    },
    {
        "name": "healthcheck-retrying",
        "severity": "info",
        "fallback": True,
        "match": [{"health_exit_code": HEALTH_FAILED_CODES, "facts": {"health": ["starting", "healthy"]}}],
        "message": "{container}'s health check failed {health_failures}, and podman still says {health} "
                   "(it says unhealthy after {health_retries}): {health_output}",
        "cause": "podman marks a container unhealthy only when --health-retries checks in a row fail",
        "fix": "nothing yet; if the check keeps failing, run it by hand (`podman healthcheck run {container}`) "
               "and fix the service or the check",
        "explains": ["health"],
    },
    {
        "name": "log-errors",
        "severity": "warning",
        "fallback": True,
        "match": [{"log_errors": True}],
        "message": "{container} logged {error_lines} that no rule explains; first: {first_match}",
        "cause": "error lines in the recent log (the container's log_errors patterns, minus log_ignore)",
        "fix": "read the lines in the evidence; fix the cause, or add a log_ignore pattern if they are noise",
    },
)

MESSAGE_FIELDS = (
    "container", "status", "exit_code", "restart_count", "loop_deaths", "restart_policy", "restart_policy_means", "image",
    "mount", "ro_mount", "memory_limit", "first_match", "first_error", "last_error", "last_line", "error_count",
    "error_lines", "health", "health_output", "health_exit", "health_failures", "health_retries", "probe_detail",
    "death", "death_cause", "oom_proof",
)
RECOVERED_INCIDENT = "recovered-incident"


def builtin_rules() -> list[Rule]:
    """The built-in rule table, compiled."""
    return [Rule.from_config(RuleConfig.model_validate(entry), source="builtin") for entry in BUILTIN_RULES]


def rules_for(config: Config | None) -> list[Rule]:
    """Built-in rules with the config's `[[rules]]` added (a same-named one replaces the built-in)."""
    own = [Rule.from_config(rule) for rule in (config.rules if config is not None else [])]
    replaced = {rule.name for rule in own}
    return [rule for rule in builtin_rules() if rule.name not in replaced] + own


# ---------------------------------------------------------------- evaluation

_COMPARE = {">=": operator.ge, "<=": operator.le, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_COMPARISON_RE = re.compile(r"\s*(>=|<=|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*")


def fact_holds(actual: Any, expected: Any) -> bool:
    """Whether a fact value meets a rule's expectation: equal, one of a list, or `>=N`-style."""
    if isinstance(expected, list):
        return any(fact_holds(actual, item) for item in expected)
    if isinstance(expected, str):
        comparison = _COMPARISON_RE.fullmatch(expected)
        if comparison:
            if isinstance(actual, bool) or not isinstance(actual, (int, float)):
                return False
            return _COMPARE[comparison.group(1)](actual, float(comparison.group(2)))
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None or actual is None:
        return actual is expected
    return actual == expected


@dataclass
class _Hit:
    lines: list[str] = field(default_factory=list)
    health: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def _evaluate(match: Match, ev: Evidence, unexplained: Sequence[str]) -> _Hit | None:
    hit = _Hit()
    for name, expected in match.facts:
        actual = ev.fact(name)
        if not fact_holds(actual, expected):
            return None
        hit.facts[name] = actual
    if match.exit_code is not None:
        code = ev.fact("exit_code")
        if ev.facts is None or ev.running or code not in match.exit_code:
            return None
        hit.facts["exit_code"] = code
    if match.log is not None:
        hit.lines = [line for line in ev.lines if match.log.search(line)]
        if not hit.lines:
            return None
    if match.health_output is not None or match.health_exit_code is not None:
        records = [r for r in ev.health_failures
                   if (match.health_output is None or match.health_output.search(r.output))
                   and (match.health_exit_code is None or r.exit_code in match.health_exit_code)]
        if not records:
            return None
        hit.health = _unique(r.output.strip() or f"(no output, exit {r.exit_code})" for r in records)
    if match.probe is not None or match.probe_output is not None:
        probes = [p for p in ev.probes
                  if (not match.probe_failed or not p.ok)
                  and (match.probe is None or p.probe == match.probe)
                  and (match.probe_output is None or match.probe_output.search(f"{p.excerpt}\n{p.detail}"))]
        if not probes:
            return None
        hit.probes = [f"{p.probe}: {p.detail or p.excerpt}"[:500] for p in probes]
    if match.log_errors:
        if not unexplained:
            return None
        hit.lines = list(unexplained)
    return hit


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def _mib(memory: int) -> str:
    if memory >= 1 << 30 and memory % (1 << 30) == 0:
        return f"{memory >> 30} GiB"
    if memory >= 1 << 20:
        return f"{memory / (1 << 20):g} MiB"
    return f"{memory} bytes" if memory else "none set"


def _quote(text: str, limit: int = 300) -> str:
    return text.strip()[:limit]


def death_sentence(ev: Evidence) -> str:
    """Why the container last died, citing its log: never silent when lines exist."""
    facts = ev.facts
    if ev.death is None:
        if facts is not None and facts.status == "created":
            return "it was never started"
        return "podman recorded no death for it" + (f"; its last line: {_quote(ev.lines[-1])}" if ev.lines else "")
    text = ev.death.text
    if "first error:" not in text and not ev.death.by_user:
        if ev.death_first_error:
            text += f"; first error: {_quote(ev.death_first_error)}"
        elif ev.death_lines and ev.death.kind in ("exit", "signal", "unknown", "oom-likely"):
            text += f"; its last line: {_quote(ev.death_lines[-1])}"
    return text


def death_cause(ev: Evidence) -> str:
    """The death as a cause: `the main process exited with code 2; first error: ...`."""
    sentence = death_sentence(ev)
    if ev.death is None:
        return sentence
    subject = {"exit": "the main process ", "signal": "the main process was ", "oom-kill": "the main process was ",
               "oom-likely": "the main process was ", "unknown": "the main process "}.get(ev.death.kind, "it was ")
    return subject + sentence


def _message_fields(ev: Evidence, hit: _Hit, unexplained: Sequence[str]) -> dict[str, Any]:
    facts = ev.facts
    mounts = writable_mounts(facts) if facts else []
    ro_mounts = read_only_mounts(facts) if facts else []
    last_line = _quote(ev.lines[-1]) if ev.lines else ""
    no_error = (f"no error line (its last line: {last_line})" if last_line else "nothing in the recent log")
    failures = ev.health_failures
    count = max(facts.health_failing_streak if facts else 0, 1)
    retries = max(facts.healthcheck_retries if facts else 0, 1)
    return _Fields(
        container=ev.container,
        status=ev.fact("status") if facts else "missing",
        exit_code=ev.fact("exit_code") if facts else "?",
        restart_count=facts.restart_count if facts else 0,
        loop_deaths=(f"died {_times(ev.recent_deaths)} in {format_span(ev.timing.crashloop_window_ns / NS_PER_S)}"
                     if ev.recent_deaths is not None else
                     f"restarted {_times(facts.restart_count)}" if facts else "?"),
        restart_policy=restart_policy_spelled(facts) if facts else "?",
        restart_policy_means=restart_policy_means(facts) if facts else "?",
        image=facts.image if facts else "?",
        mount=", ".join(mounts) or "no writable mount",
        ro_mount=", ".join(ro_mounts) or "no read-only mount",
        memory_limit=_mib(facts.memory) if facts else "?",
        first_match=_quote(hit.lines[0] if hit.lines else hit.health[0] if hit.health else
                           hit.probes[0] if hit.probes else ""),
        first_error=_quote(ev.error_lines[0]) if ev.error_lines else no_error,
        last_error=_quote(ev.error_lines[-1]) if ev.error_lines else no_error,
        last_line=last_line or "nothing in the recent log",
        error_count=len(unexplained),
        error_lines=_plural(len(unexplained), "error line"),
        health=(facts.health or "no health check") if facts else "?",
        health_output=_quote(hit.health[-1] if hit.health else ""),
        health_exit=_health_exit(failures[-1].exit_code if failures else None),
        health_failures=_times(count) + (" in a row" if count > 1 else ""),
        health_retries=(f"{retries} failures in a row" if retries > 1 else "one failure"),
        probe_detail=_quote(hit.probes[0] if hit.probes else ""),
        death=death_sentence(ev),
        death_cause=death_cause(ev),
        oom_proof=("likely: the kernel log could not prove it, see the evidence"
                   if ev.death is not None and ev.death.kind == "oom-likely" else
                   "the kernel log names it; podman 4.3 still reports OOMKilled=false"),
    )


def _fill(template: str, fields: Mapping[str, Any]) -> str:
    try:
        return template.format_map(fields)
    except (ValueError, IndexError, AttributeError, KeyError):  # a config template with odd fields
        return template


def _death_evidence(ev: Evidence) -> dict[str, Any]:
    if ev.death is None:
        return {}
    out: dict[str, Any] = {"kind": ev.death.kind, "reason": ev.death.text, "evidence": list(ev.death.evidence)}
    if ev.death_at_ns:
        out["at"] = format_when(ev.death_at_ns)
        out["at_ns"] = ev.death_at_ns
    if ev.death.kind in ("exit", "signal", "unknown") and signal_name(ev.fact("exit_code") or 0):
        out["signal"] = signal_name(ev.fact("exit_code") or 0)
    return out


def _finding(rule: Rule, ev: Evidence, hit: _Hit, unexplained: Sequence[str]) -> Finding:
    fields = _message_fields(ev, hit, unexplained)
    evidence: dict[str, Any] = {}
    if hit.lines:
        evidence["log_lines"] = [line[:500] for line in hit.lines[:EVIDENCE_LINES]]
        if len(hit.lines) > EVIDENCE_LINES:
            evidence["log_lines_total"] = len(hit.lines)
    if hit.health:
        evidence["health_output"] = [text[:500] for text in hit.health[-EVIDENCE_LINES:]]
    if hit.probes:
        evidence["probes"] = hit.probes[:EVIDENCE_LINES]
    if ev.facts is not None:
        evidence["facts"] = {
            "status": ev.fact("status"), "exit_code": ev.fact("exit_code"),
            "restart_count": ev.facts.restart_count, "restart_policy": restart_policy_spelled(ev.facts),
            **{k: v for k, v in hit.facts.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }
        if ev.death is not None and ("state" in rule.explains or "death_kind" in hit.facts):
            evidence["death"] = _death_evidence(ev)
        if rule.generic and ev.error_lines:
            evidence["first_error"] = ev.error_lines[0][:500]
    # a rule accounts for every recent line its regexes match, not only the lines shown
    patterns = [p for m in rule.matches for p in m.regexes()]
    explained = frozenset(line for line in ev.lines if any(p.search(line) for p in patterns))
    if any(m.log_errors for m in rule.matches):
        explained |= frozenset(unexplained)
    if rule.generic:
        # a death's own error lines (a crash loop's: every present one) are its evidence, not loose errors
        errors = frozenset(ev.error_lines)
        explained |= errors if ev.crash_looping else errors & frozenset(ev.death_lines)
    message = _fill(rule.message, fields) if rule.message else f"{ev.container}: {rule.name}"
    return Finding(ev.target, ev.container, rule.name, rule.severity, message,
                   _fill(rule.cause, fields), _fill(rule.fix, fields), evidence, rule.explains, explained)


def _judge(rule: Rule, ev: Evidence, unexplained: Sequence[str] = ()) -> Finding | None:
    for match in rule.matches:
        hit = _evaluate(match, ev, unexplained)
        if hit is not None:
            return _finding(rule, ev, hit, unexplained)
    return None


def _state_summary(ev: Evidence) -> str:
    facts = ev.facts
    if facts is None:
        return ""
    if facts.restart_count:
        return f"restarted {_times(facts.restart_count)}, now {facts.status}"
    return f"now {facts.status}" + (f", exit code {facts.exit_code}" if not facts.running else "")


def _fold(findings: list[Finding], generic: set[str], ev: Evidence) -> list[Finding]:
    """Generic findings become evidence of the specific finding that explains the same state."""
    hosts = [f for f in findings if f.rule not in generic and "state" in f.explains and f.fails]
    if not hosts:
        return findings
    host = hosts[0]
    folded = [f for f in findings if f.rule in generic]
    if not folded:
        return findings
    evidence = dict(host.evidence)
    for finding in folded:
        evidence[finding.rule] = {"message": finding.message, "cause": finding.cause, **finding.evidence}
    if ev.death is not None and "death" not in evidence:
        evidence["death"] = _death_evidence(ev)
    summary = _state_summary(ev)
    merged = dataclasses.replace(
        host, message=f"{host.message} ({summary})" if summary else host.message, evidence=evidence,
        explains=host.explains.union(*(f.explains for f in folded)),
        explained_lines=host.explained_lines.union(*(f.explained_lines for f in folded)))
    return [merged if f is host else f for f in findings if f.rule not in generic]


def diagnose(ev: Evidence, rules: Sequence[Rule], prior: Sequence[Finding] = ()) -> list[Finding]:
    """Every finding about one container: `prior` ones (policies), then the rules', one per root cause.

    `prior` are findings already made for this container (policies): they can supersede
    rules, explain topics for fallback rules, explain log lines, and take a generic
    finding as their evidence. A container that is fine now but died before its
    current start gets a recovered incident (info).
    """
    applicable = [rule for rule in rules if rule.applies_to(ev.container)]
    found = [f for f in (_judge(rule, ev) for rule in applicable if not rule.fallback) if f is not None]
    made = {f.rule for f in [*prior, *found]}
    by_name = {rule.name: rule for rule in applicable}
    superseded = [f for f in found if by_name[f.rule].superseded_by & made]
    kept = [f for f in found if f not in superseded]
    explained_lines = set().union(*(f.explained_lines for f in [*prior, *kept]))
    for rule in (rule for rule in applicable if rule.fallback):
        topics = set().union(*(f.explains for f in [*prior, *kept]))
        if rule.explains & topics:
            continue
        unexplained = [line for line in ev.error_lines if line not in explained_lines]
        finding = _judge(rule, ev, unexplained)
        if finding is not None:
            kept.append(finding)
            explained_lines |= finding.explained_lines
    generic = {rule.name for rule in applicable if rule.generic}
    result = _fold([*prior, *kept], generic, ev)
    incident = recovered_incident(ev, applicable)
    return result + ([incident] if incident is not None else [])


# ---------------------------------------------------------------- history


def _about_a_cause(rule: Rule) -> bool:
    """A rule that names why a container died: from its log lines or the death's kind."""
    return "state" in rule.explains and any(
        match.log is not None or any(name == "death_kind" for name, _ in match.facts) for match in rule.matches)


def recovered_incident(ev: Evidence, rules: Sequence[Rule]) -> Finding | None:
    """An `info` finding for a container that is fine now but died before its current start.

    Deaths are counted by the restart policy's restarts; the cause is the first specific
    rule that matches the earlier runs' lines (as if the container were down), else the
    death's own reason. Returns None while the container is failing (the present
    findings say it), when nothing happened, or when podwarden's own action caused the death.
    """
    facts = ev.facts
    if facts is None or not ev.running or ev.failing:
        return None
    if ev.death_ours:
        return None  # podwarden's own experiment: its verdict reports the death and the recovery
    past = dataclasses.replace(ev, lines=tuple(r.text for r in ev.earlier),
                               error_lines=tuple(r.text for r in ev.earlier_errors),
                               health=(), probes=(), past=True)
    cause_rule, cause = None, None
    for rule in rules:
        if rule.fallback or rule.generic or not rule.fails or not _about_a_cause(rule):
            continue
        finding = _judge(rule, past)
        if finding is not None:
            cause_rule, cause = rule, finding
            break
    # deaths as podman's events tell them (RestartCount adds up every run since creation, and
    # `podman start` sets it to 0); without the events, RestartCount stands in
    deaths = ev.past_deaths if ev.past_deaths is not None else facts.restart_count
    if deaths < 1 and cause is None:
        return None
    stamps = [r.at_ns for r in ev.earlier_errors] or ([ev.death_at_ns] if ev.death_at_ns else [])
    if not stamps and ev.earlier:
        stamps = [ev.earlier[-1].at_ns]
    if deaths:
        what = f"it died {_times(deaths)}"
    else:
        what = "it failed"
    when = ""
    if stamps:
        first, last = min(stamps), max(stamps)
        when = f" between {format_when(first)} and {format_when(last)}" if last - first >= NS_PER_S \
            else f" at {format_when(first)}"
    why_line = (cause.evidence.get("log_lines") or [None])[0] if cause is not None else None
    if why_line is None and ev.earlier_errors:
        why_line = ev.earlier_errors[0].text
    if why_line:
        why = f" ({_quote(why_line)})"
    elif ev.death is not None and ev.death.kind != "unknown":
        why = f" ({ev.death.text})"
    else:
        why = ""
    since = f" and has been up since {format_when(facts.started_at_ns)}"
    if ev.now_ns and ev.now_ns >= facts.started_at_ns:
        since += f" ({format_span((ev.now_ns - facts.started_at_ns) / NS_PER_S)})"
    health = f", {facts.health}" if facts.health else ""
    message = f"{ev.container} recovered: {what}{when}{why}{since}{health}"
    if cause is not None:
        reason = f"before its current start: {cause.cause}"
        fix = f"nothing now; to keep it from coming back: {cause.fix}"
    elif ev.death is not None and ev.death.kind != "unknown":
        reason = f"before its current start, {death_cause(past)}"
        fix = "nothing now; if it comes back, read the lines in the evidence and fix what they show"
    else:
        reason = ("before its current start the container died (podman kept no exit code of it) and its restart "
                  "policy brought it back")
        fix = "nothing now; if it comes back, read `podman logs` around the deaths"
    incident: dict[str, Any] = {"deaths": deaths}
    if stamps:
        incident.update({"from": format_when(min(stamps)), "to": format_when(max(stamps)),
                         "from_ns": min(stamps), "to_ns": max(stamps)})
    if cause_rule is not None:
        incident["rule"] = cause_rule.name
    lines = (cause.evidence.get("log_lines") if cause is not None else None) or \
        [r.text[:500] for r in ev.earlier_errors[:EVIDENCE_LINES]]
    if lines:
        incident["log_lines"] = lines
    if ev.death is not None:
        incident["death"] = _death_evidence(ev)
    evidence = {"incident": incident, "running_since": format_when(facts.started_at_ns),
                "running_since_ns": facts.started_at_ns, "health": facts.health}
    return Finding(ev.target, ev.container, RECOVERED_INCIDENT, "info", message, reason, fix, evidence,
                   frozenset(), frozenset(r.text for r in ev.earlier))

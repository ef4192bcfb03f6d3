"""Diagnosis: a table of rules (data) that turns evidence into findings with cause and fix.

Evidence about one container is its inspect facts, its recent log lines, its health
check records (inspect's State.Health.Log and our own runs) and its probe results.
A rule matches when any of its `match` alternatives holds; an alternative holds when
every condition in it holds. Built-in rules cover every root cause in the seed's Issue
Log; `[[rules]]` in the config add rules or replace a built-in one of the same name.

Two kinds of rules run in order:
- ordinary rules, each judged alone; one whose `superseded_by` names a finding that
  was made for the same container (by a rule or a policy) is dropped;
- fallback rules, judged afterwards, skipped when another finding for the container
  already explains one of their topics (`explains`: state, health, logs). The
  `log_errors` condition holds for error lines that no finding explained.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from agent.config import Config, RuleConfig, RuleMatchConfig
from agent.podman import InspectFacts
from machines.observations import ProbeObs

SEVERITIES = ("error", "warning", "info")
# A finding of these severities fails a check; `info` findings are reported only.
FAILING_SEVERITIES = frozenset({"error", "warning"})
EVIDENCE_LINES = 5
DAC_OVERRIDE = "CAP_DAC_OVERRIDE"


# ---------------------------------------------------------------- findings and evidence


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


@dataclass(frozen=True)
class Evidence:
    """Everything known about one container for diagnosis; build it with `Evidence.build`."""

    target: str
    container: str
    facts: InspectFacts | None
    expected_state: str | None = None  # from config; None for a container config does not name
    lines: tuple[str, ...] = ()  # recent log lines, oldest first, ignore patterns already applied
    error_lines: tuple[str, ...] = ()  # the subset the container's error patterns match
    health: tuple[HealthRecord, ...] = ()  # oldest first
    probes: tuple[ProbeObs, ...] = ()

    @classmethod
    def build(cls, target: str, container: str, facts: InspectFacts | None, *, expected_state: str | None = None,
              lines: Iterable[str] = (), error_patterns: Iterable[str] = (), ignore_patterns: Iterable[str] = (),
              health_runs: Iterable[HealthRecord] = (), probes: Iterable[ProbeObs] = ()) -> "Evidence":
        """Evidence with ignore patterns applied and inspect's health log before our own runs."""
        ignores = [re.compile(p) for p in ignore_patterns]
        errors = [re.compile(p) for p in error_patterns]
        kept = tuple(line for line in lines if not any(p.search(line) for p in ignores))
        error_lines = tuple(line for line in kept if any(p.search(line) for p in errors))
        recorded = tuple(HealthRecord(entry.exit_code, entry.output) for entry in (facts.health_log if facts else ()))
        return cls(target, container, facts, expected_state, kept, error_lines,
                   recorded + tuple(health_runs), tuple(probes))

    @property
    def health_failures(self) -> tuple[HealthRecord, ...]:
        """The failing health runs since the last passing one (none if the latest passed)."""
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
        if name == "has_mount":
            return bool(writable_mounts(facts))
        if name == "dac_override":
            return keeps_dac_override(facts)
        if name == "has_healthcheck":
            return bool(facts.healthcheck_test)
        if name == "image_tag":
            return image_tag(facts.image)
        return getattr(facts, name)


def writable_mounts(facts: InspectFacts) -> list[str]:
    """The container's writable bind and volume mounts as `SOURCE -> DESTINATION`."""
    return [f"{m.source} -> {m.destination}" for m in facts.mounts if m.type in ("bind", "volume") and m.rw]


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

    @classmethod
    def from_config(cls, rule: RuleConfig, source: str = "config") -> "Rule":
        return cls(
            name=rule.name, severity=rule.severity, matches=tuple(Match.from_config(m) for m in rule.match),
            message=rule.message, cause=rule.cause, fix=rule.fix, explains=frozenset(rule.explains),
            fallback=rule.fallback, superseded_by=frozenset(rule.superseded_by),
            containers=frozenset(rule.containers), source=source,
        )

    def applies_to(self, container: str) -> bool:
        return not self.containers or container in self.containers


PERMISSION_DENIED = r"(?i)permission denied|\bEACCES\b"
_RUNNING_EXPECTED = ["running", "healthy"]

# The built-in rule table. Each entry is exactly what a `[[rules]]` table in config.toml
# holds, validated by the same model. Message placeholders: see MESSAGE_FIELDS.
BUILTIN_RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "volume-permission-denied",
        "severity": "error",
        "match": [{"log": PERMISSION_DENIED, "facts": {"has_mount": True, "dac_override": False}}],
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
        "match": [{"log": PERMISSION_DENIED, "facts": {"has_mount": True, "dac_override": True}}],
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
                          r"data version \S+ > image version|downgrading is not supported|cannot downgrade"}],
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
            {"log": r"(?i)read-only file system|\bEROFS\b"},
            {"log": r"(?i)is not writable|unable to open database file|can't create|cannot create",
             "facts": {"read_only": True}},
        ],
        "message": "{container} cannot write a path on its read-only root filesystem: {first_match}",
        "cause": "the container runs with --read-only and the app writes to a path that has no tmpfs or "
                 "volume mounted on it (the seed's grafana: GF_PATHS_DATA, /tmp, /var/log/grafana)",
        "fix": "mount a tmpfs (--tmpfs /tmp --tmpfs /var/log/APP) or a volume on every path the app writes, "
               "or drop --read-only",
        "explains": ["state"],
    },
    {
        "name": "crash-loop",
        "severity": "error",
        "match": [
            {"facts": {"restart_count": ">=3"}},
            {"facts": {"running": False, "exit_code": "!=0", "restart_count": ">=1"}},
        ],
        "message": "{container} is crash-looping: restarted {restart_count} times (now {status}); "
                   "first error: {first_error}",
        "cause": "the main process keeps dying and the restart policy ({restart_policy}) keeps restarting it; "
                 "the first error line in its log is the likely reason",
        "fix": "fix what the first error line reports (see the other findings for this container), then "
               "`podman start` it or let the policy bring it back",
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
                       "stopped_by_user": None, "exit_code": [0, 137, 143], "expected_state": _RUNNING_EXPECTED}},
        ],
        "message": "{container} is exited (code {exit_code}) and was not restarted although its restart "
                   "policy is {restart_policy}",
        "cause": "`podman stop`/`podman kill` mark a container stopped by the user, and podman then does not "
                 "apply its restart policy; rootless podman (no podman-restart.service) also does not bring it "
                 "back after a reboot: the seed's known limitation",
        "fix": "`podman start NAME`; for unattended recovery add a podwarden hook (when = [\"exited\", "
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
        "message": "{container} exited cleanly (code 0) and stays down: restart policy {restart_policy} "
                   "restarts only failures",
        "cause": "the process shut down with status 0 (a dependent that exits when its upstream goes away) "
                 "and a restart policy of on-failure or no does not restart a clean exit",
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
        "match": [{"facts": {"running": False, "expected_state": _RUNNING_EXPECTED}}],
        "message": "{container} is {status} (exit code {exit_code}), expected running; last error: {last_error}",
        "cause": "the container is not running and no rule recognised why",
        "fix": "read `podman logs --tail 100 NAME`, fix the cause, then `podman start NAME`",
        "explains": ["state", "health"],
    },
    {
        "name": "healthcheck-failing",
        "severity": "error",
        "fallback": True,
        "match": [{"health_exit_code": [1, -1, 126, 127, 137]}],
        "message": "{container} fails its health check: {health_output}",
        "cause": "the health check command fails (or timed out: -1) and no rule recognised why",
        "fix": "run the check by hand (`podman healthcheck run NAME`, `podman exec NAME CMD`) and fix the "
               "service or the check",
        "explains": ["health"],
    },
    {
        "name": "log-errors",
        "severity": "warning",
        "fallback": True,
        "match": [{"log_errors": True}],
        "message": "{container} logged {error_count} error line(s) that no rule explains; first: {first_match}",
        "cause": "error lines in the recent log (the container's log_errors patterns, minus log_ignore)",
        "fix": "read the lines in the evidence; fix the cause, or add a log_ignore pattern if they are noise",
    },
)

MESSAGE_FIELDS = (
    "container", "status", "exit_code", "restart_count", "restart_policy", "image", "mount",
    "first_match", "first_error", "last_error", "error_count", "health_output", "probe_detail",
)


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
        if ev.facts is None or ev.facts.running or ev.facts.exit_code not in match.exit_code:
            return None
        hit.facts["exit_code"] = ev.facts.exit_code
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


def _message_fields(ev: Evidence, hit: _Hit, unexplained: Sequence[str]) -> dict[str, Any]:
    facts = ev.facts
    mounts = writable_mounts(facts) if facts else []
    return _Fields(
        container=ev.container,
        status=facts.status if facts else "missing",
        exit_code=facts.exit_code if facts else "?",
        restart_count=facts.restart_count if facts else 0,
        restart_policy=(facts.restart_policy or "none") if facts else "?",
        image=facts.image if facts else "?",
        mount=", ".join(mounts) or "no writable mount",
        first_match=(hit.lines[0] if hit.lines else hit.health[0] if hit.health else
                     hit.probes[0] if hit.probes else "")[:300],
        first_error=(ev.error_lines[0][:300] if ev.error_lines else "none in the recent log"),
        last_error=(ev.error_lines[-1][:300] if ev.error_lines else "none in the recent log"),
        error_count=len(unexplained),
        health_output=(hit.health[-1] if hit.health else "")[:300],
        probe_detail=(hit.probes[0] if hit.probes else "")[:300],
    )


def _fill(template: str, fields: Mapping[str, Any]) -> str:
    try:
        return template.format_map(fields)
    except (ValueError, IndexError, AttributeError, KeyError):  # a config template with odd fields
        return template


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
            "status": ev.facts.status, "exit_code": ev.facts.exit_code,
            "restart_count": ev.facts.restart_count, "restart_policy": ev.facts.restart_policy,
            **{k: v for k, v in hit.facts.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }
        if rule.name in ("crash-loop", "not-running") and ev.error_lines:
            evidence["first_error"] = ev.error_lines[0][:500]
    # a rule accounts for every recent line its regexes match, not only the lines shown
    patterns = [p for m in rule.matches for p in m.regexes()]
    explained = frozenset(line for line in ev.lines if any(p.search(line) for p in patterns))
    if any(m.log_errors for m in rule.matches):
        explained |= frozenset(unexplained)
    message = _fill(rule.message, fields) if rule.message else f"{ev.container}: {rule.name}"
    return Finding(ev.target, ev.container, rule.name, rule.severity, message,
                   _fill(rule.cause, fields), _fill(rule.fix, fields), evidence, rule.explains, explained)


def _judge(rule: Rule, ev: Evidence, unexplained: Sequence[str] = ()) -> Finding | None:
    for match in rule.matches:
        hit = _evaluate(match, ev, unexplained)
        if hit is not None:
            return _finding(rule, ev, hit, unexplained)
    return None


def diagnose(ev: Evidence, rules: Sequence[Rule], prior: Sequence[Finding] = ()) -> list[Finding]:
    """The findings the rules make from one container's evidence.

    `prior` are findings already made for this container (policies): they can
    supersede rules, explain topics for fallback rules, and explain log lines.
    """
    applicable = [rule for rule in rules if rule.applies_to(ev.container)]
    found = [f for f in (_judge(rule, ev) for rule in applicable if not rule.fallback) if f is not None]
    made = {f.rule for f in [*prior, *found]}
    by_name = {rule.name: rule for rule in applicable}
    superseded = [f for f in found if by_name[f.rule].superseded_by & made]
    kept = [f for f in found if f not in superseded]
    explained_lines = set().union(*(f.explained_lines for f in [*prior, *found]))
    for rule in (rule for rule in applicable if rule.fallback):
        topics = set().union(*(f.explains for f in [*prior, *kept]))
        if rule.explains & topics:
            continue
        unexplained = [line for line in ev.error_lines if line not in explained_lines]
        finding = _judge(rule, ev, unexplained)
        if finding is not None:
            kept.append(finding)
            explained_lines |= finding.explained_lines
    return kept

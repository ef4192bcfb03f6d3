"""Load and validate config.toml into typed objects.

Every problem becomes one ConfigError naming the file, the key and what to do.
Durations read as `30s`, `5m`, `8h`, `1h30m`, `250ms` or a bare number of seconds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError, UsageError
from agent.names import CONTAINER_NAME_RE
from store.redact import DEFAULT_PATTERNS as DEFAULT_REDACTION_PATTERNS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds in a duration such as `30s`, `5m`, `8h`, `1h30m`; raises ValueError."""
    hint = f"invalid duration {value!r}: use a number with s, m or h, like 30s, 5m, 8h"
    if isinstance(value, bool):
        raise ValueError(hint)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if text and re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+", text):
        return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))
    raise ValueError(hint)


def format_duration(seconds: float) -> str:
    """The shortest readable form of a duration: 90 -> '1m30s'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def validate_regexes(patterns: list[str] | None) -> list[str] | None:
    """Return `patterns` if each compiles; raises ValueError naming the bad one."""
    for pattern in patterns or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return patterns


def validate_regex(pattern: str | None) -> str | None:
    """Return `pattern` if it compiles (None passes); raises ValueError naming it."""
    if pattern is not None:
        validate_regexes([pattern])
    return pattern


RESTART_POLICY_RE = re.compile(r"no|always|unless-stopped|on-failure(?::\d+)?")


def validate_restart_policies(policies: list[str] | None) -> list[str] | None:
    """Return `policies` if each is spelled as podman's --restart takes it; raises ValueError."""
    for policy in policies or []:
        if not isinstance(policy, str) or RESTART_POLICY_RE.fullmatch(policy) is None:
            raise ValueError(f"unknown restart policy {policy!r}: use podman's spellings: no, on-failure, "
                             "on-failure:N (N restarts at most), always, unless-stopped")
    return policies


def validate_container_name(name: str) -> str:
    """Return `name` if podman would accept it as a container name; raises ValueError."""
    if not isinstance(name, str) or CONTAINER_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid container name {name!r}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return name


Duration = Annotated[float, BeforeValidator(parse_duration)]
ContainerName = Annotated[str, BeforeValidator(validate_container_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- targets

class TargetConfig(_Strict):
    """How to reach one node."""

    name: str = ""
    transport: Literal["local", "ssh"] = "ssh"
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    insecure_skip_host_key_check: bool = False
    # a `Host` alias of an OpenSSH client config, instead of host: HostName, User, Port,
    # IdentityFile, ProxyJump, UserKnownHostsFile and ServerAlive* come from there, for every hop
    # (agent/transport.py); user, port, identity and known_hosts given here override it
    ssh_alias: str | None = None
    # that OpenSSH client config (default: $PODWARDEN_SSH_CONFIG, else ~/.ssh/config)
    ssh_config: str | None = None
    podman: list[str] = Field(default_factory=lambda: ["podman"])
    connect_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    # zero would turn dead-link detection off: DESIGN wants keepalives on
    keepalive_interval: Annotated[Duration, Field(gt=0)] = 10.0
    keepalive_count_max: int = Field(default=3, ge=1)
    max_channels: int = Field(default=8, ge=1, le=64)

    @field_validator("podman", mode="before")
    @classmethod
    def _split_podman(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.split()
        return value

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> "TargetConfig":
        if self.transport == "ssh" and not self.host and not self.ssh_alias:
            raise ValueError("an ssh target needs `host` (with `port`, `user`), or `ssh_alias` naming a "
                             "`Host` of your OpenSSH client config")
        if self.host and self.ssh_alias:
            raise ValueError("give `host` or `ssh_alias`, not both: with `ssh_alias` the ssh config's HostName "
                             "says where the node is")
        if self.transport == "local" and (self.ssh_alias or self.ssh_config):
            raise ValueError("`ssh_alias` and `ssh_config` need transport = \"ssh\"")
        return self

    def describe(self) -> str:
        """A short human name: `local`, `user@host:port`, or `user@alias` for an ssh config alias."""
        if self.transport == "local":
            return "local"
        user = f"{self.user}@" if self.user else ""
        if self.ssh_alias and not self.host:
            return f"{user}{self.ssh_alias}"
        return f"{user}{self.host}:{self.port}"


# ---------------------------------------------------------------- probes

class _Probe(_Strict):
    name: str | None = None
    # zero would fail every run before it starts: a probe needs time to answer
    timeout: Annotated[Duration, Field(gt=0)] = 10.0

    # compiled at load, so a bad pattern is a config error naming its key, not a crash mid-check
    _expect_regex = field_validator("expect_regex", check_fields=False)(validate_regex)


class ExecProbe(_Probe):
    """A command inside the container, with expectations on its exit and output."""

    type: Literal["exec"]
    command: list[str] = Field(min_length=1)
    expect_exit: int = 0
    expect_json: dict[str, Any] = Field(default_factory=dict)
    expect_json_keys: list[str] = Field(default_factory=list)
    expect_regex: str | None = None


class HttpProbe(_Probe):
    """A URL on the node, fetched through the target's link (no curl needed there).

    https:// is verified against the system CA store, or `ca_file` (a PEM file on this
    machine, e.g. a copy of lnd's tls.cert), or a pinned `cert_sha256`; only
    `insecure_skip_verify = true` turns verification off.
    """

    type: Literal["http"]
    url: str
    expect_status: int = 200
    expect_json: dict[str, Any] = Field(default_factory=dict)
    expect_regex: str | None = None
    ca_file: str | None = None
    cert_sha256: str | None = None
    insecure_skip_verify: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid url {value!r}: use http://HOST:PORT/PATH or https://HOST:PORT/PATH")
        return value

    @field_validator("cert_sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        from agent.http import normalize_fingerprint  # agent.http imports nothing from the project

        return None if value is None else normalize_fingerprint(value)

    @model_validator(mode="after")
    def _tls_keys_need_https(self) -> "HttpProbe":
        tls_keys = [key for key in ("ca_file", "cert_sha256") if getattr(self, key)]
        if self.insecure_skip_verify:
            tls_keys.append("insecure_skip_verify")
        if tls_keys and urlsplit(self.url).scheme != "https":
            raise ValueError(f"{', '.join(tls_keys)} only apply to https:// URLs, not {self.url!r}")
        if self.insecure_skip_verify and len(tls_keys) > 1:
            raise ValueError("insecure_skip_verify = true turns verification off: drop ca_file/cert_sha256, "
                             "or drop insecure_skip_verify to verify with them")
        return self


class TcpProbe(_Probe):
    """A port on the node accepts a connection."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class HealthcheckProbe(_Probe):
    """`podman healthcheck run NAME`: 0 healthy, 1 unhealthy, 125 error."""

    type: Literal["podman-healthcheck"]


class ServiceProbe(_Probe):
    """A host service is active (`systemctl is-active NAME` or the configured command)."""

    type: Literal["service"]
    command: list[str] | None = None


class LogsProbe(_Probe):
    """No error lines in the last N lines (or the last T) of the container's log."""

    type: Literal["logs"]
    lines: int = Field(default=100, ge=1)
    since: Duration | None = None


Probe = Annotated[
    Union[ExecProbe, HttpProbe, TcpProbe, HealthcheckProbe, ServiceProbe, LogsProbe],
    Field(discriminator="type"),
]

# An error word, except
# - on a line that ends by reporting success (`permission denied for anonymous, retrying as
#   user: ok`): the line tells of an error already handled;
# - as the key of a zero, number, false or null value (`error=0`, `timeout=30s`,
#   `failed=false`, `"error": null`): a counter or a setting, not an error.
DEFAULT_ERROR_PATTERNS = [
    r"(?i)^(?!.*[:=]\s*(?:ok|okay|succeeded|success|recovered)\W*$).*?"
    r"\b(error|fail(ed|ure)?|panic|fatal|crash|unable|refused|timeout|permission denied)\b"
    r"(?!\s*=\s*(?:[-+]?\d|false\b|none\b|nil\b|null\b|<nil>|\"\"|'')|\"\s*:\s*(?:[-+]?\d|false\b|null\b))"
]
# Words one of which every match of DEFAULT_ERROR_PATTERNS contains (lower-cased): a cheap prefilter.
DEFAULT_ERROR_WORDS = ("error", "fail", "panic", "fatal", "crash", "unable", "refused", "timeout", "permission denied")


# ---------------------------------------------------------------- containers and services

POLICY_RULES = (
    "restart-policy",
    "memory-limit",
    "image-pinned",
    "caps",
    "read-only-rootfs",
    "missing",
)


class ContainerConfig(_Strict):
    """One container the node is expected to run."""

    name: str = ""
    role: str = ""
    depends_on: list[ContainerName] = Field(default_factory=list)
    expected_state: Literal["running", "healthy", "stopped", "absent"] = "running"
    probes: list[Probe] = Field(default_factory=list)
    log_errors: list[str] | None = None
    log_ignore: list[str] = Field(default_factory=list)
    policies: dict[str, bool] = Field(default_factory=dict)
    restart_policies: list[str] | None = None
    healthcheck_interval: Annotated[Duration, Field(gt=0)] | None = None
    # experiments: how long it may take to be back after a crash (default [experiments]),
    # and the log line that shows it reconnected to its upstream after a cascade
    restart_deadline: Annotated[Duration, Field(gt=0)] | None = None
    reconnect: str | None = None

    _regexes = field_validator("log_errors", "log_ignore")(validate_regexes)
    _reconnect = field_validator("reconnect")(validate_regex)
    _restart_policies = field_validator("restart_policies")(validate_restart_policies)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, value: dict[str, bool]) -> dict[str, bool]:
        for key in value:
            if key not in POLICY_RULES:
                raise ValueError(f"unknown policy {key!r}: known policies are {', '.join(POLICY_RULES)}")
        return value


class ServiceConfig(_Strict):
    """A host service the containers live beside (the seed's backend)."""

    name: str = ""
    health_url: str | None = None
    status_command: list[str] | None = None
    kill_command: list[str] | None = None
    start_command: list[str] | None = None
    restart_deadline: Annotated[Duration, Field(gt=0)] = 30.0
    probes: list[Probe] = Field(default_factory=list)


# ---------------------------------------------------------------- behaviour

class MachineConfig(_Strict):
    """Crash-loop detection thresholds for the container state machines."""

    crashloop_deaths: int = Field(default=3, ge=1, le=1024)  # machines keep the newest 1024 deaths
    crashloop_window: Annotated[Duration, Field(gt=0)] = 300.0
    stable_period: Duration = 600.0


class WatchConfig(_Strict):
    """How the watcher polls, runs health checks and reconnects."""

    reconcile_interval: Annotated[Duration, Field(gt=0)] = 30.0
    healthcheck_interval: Annotated[Duration, Field(gt=0)] = 30.0
    run_healthchecks: Literal["auto", "always", "never"] = "auto"
    backoff_initial: Annotated[Duration, Field(gt=0)] = 1.0
    backoff_max: Annotated[Duration, Field(gt=0)] = 30.0
    flush_interval: Annotated[Duration, Field(gt=0)] = 0.05  # bench_latency: p50 +46 ms over a bare reader (0.1: +72)
    # serve Prometheus metrics on this HOST:PORT while watching (None: off); loopback unless told otherwise
    metrics: str | None = None


class SoakConfig(_Strict):
    """The zero-drift soak window."""

    duration: Annotated[Duration, Field(gt=0)] = 300.0
    probe_interval: Annotated[Duration, Field(gt=0)] = 30.0  # every probe again this often
    link_lost_max: Annotated[Duration, Field(gt=0)] = 30.0  # a longer link loss is drift
    max_per_kind: int = Field(default=20, ge=1)  # drifts listed per container and kind; more are counted


class ExperimentsConfig(_Strict):
    """Deadlines of the resilience experiments (the seed's cycle C3)."""

    restart_deadline: Annotated[Duration, Field(gt=0)] = 30.0  # back in its expected state after a crash
    death_deadline: Annotated[Duration, Field(gt=0)] = 15.0  # the death an action causes is seen
    cascade_hold: Annotated[Duration, Field(gt=0)] = 60.0  # the upstream stays down this long
    cascade_recovery: Annotated[Duration, Field(gt=0)] = 120.0  # then everything is back within this
    # cascade: quiet after recovery in which a dependent without a `reconnect` pattern may log no new error
    settle: Annotated[Duration, Field(ge=0)] = 3.0


class HookWhen(_Strict):
    """What fires a hook: a state entered and held, a drift kind, or a finding rule (any one)."""

    state: list[str] = Field(default_factory=list)  # e.g. ["stopped", "exited"]
    held: Annotated[Duration, Field(ge=0)] = 5.0  # the state must last this long first
    drift: list[str] = Field(default_factory=list)  # e.g. ["state", "error"]
    finding: list[str] = Field(default_factory=list)  # rule names, e.g. ["crash-loop"]

    @field_validator("state")
    @classmethod
    def _states(cls, value: list[str]) -> list[str]:
        known = ("missing", "created", "starting", "running", "healthy", "unhealthy", "stopped", "exited",
                 "restarting", "crashlooping", "paused", "removed")
        for state in value:
            if state not in known:
                raise ValueError(f"unknown state {state!r}: use {', '.join(known)}")
        return value

    @field_validator("drift")
    @classmethod
    def _drift_kinds(cls, value: list[str]) -> list[str]:
        from machines.drift import DriftKind  # machines/ is below config: no cycle

        known = [kind.value for kind in DriftKind]
        for kind in value:
            if kind not in known:
                raise ValueError(f"unknown drift kind {kind!r}: use {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _something(self) -> "HookWhen":
        if not (self.state or self.drift or self.finding):
            raise ValueError("a hook's `when` needs state, drift or finding")
        return self


class HookConfig(_Strict):
    """A remediation hook: `when` something happens to the named containers (or roles), `do` an action.

    Guards: at most `max_actions` firings per container within `window`, `backoff_initial`
    doubling to `backoff_max` between attempts (reset after `stable` with the container
    back where it should be), and after `give_up_after` attempts that did not last, the hook
    gives up on that container with a finding.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    when: HookWhen
    containers: list[ContainerName] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    do: Literal["start", "restart", "healthcheck", "exec", "local", "webhook"] = "start"
    command: list[str] | None = None  # exec: argv on the node; local: argv on this machine ({container}, {target})
    url: str | None = None  # webhook: POST the event as JSON here
    timeout: Annotated[Duration, Field(gt=0)] = 30.0
    max_actions: int = Field(default=5, ge=1)
    window: Annotated[Duration, Field(gt=0)] = 3600.0
    backoff_initial: Annotated[Duration, Field(gt=0)] = 10.0
    backoff_max: Annotated[Duration, Field(gt=0)] = 300.0
    stable: Annotated[Duration, Field(gt=0)] = 600.0
    give_up_after: int = Field(default=5, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _older_spelling(cls, data: Any) -> Any:
        # `when = ["stopped"]` and `action = "start"` (the first spelling of this table) still read
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("when"), list):
                data["when"] = {"state": data["when"]}
            if "action" in data and "do" not in data:
                action = data.pop("action")
                data["do"] = "exec" if action == "command" else action
            if "cooldown" in data:
                cooldown = data.pop("cooldown")
                data.setdefault("backoff_initial", cooldown)
        return data

    @model_validator(mode="after")
    def _needs(self) -> "HookConfig":
        if self.do in ("exec", "local") and not self.command:
            raise ValueError(f"do = \"{self.do}\" needs `command` (an argv list)")
        if self.do == "webhook":
            parts = urlsplit(self.url or "")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("do = \"webhook\" needs `url` = \"http://HOST:PORT/PATH\" (or https)")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must not be less than backoff_initial")
        return self


class RemediationConfig(_Strict):
    """The built-in hook: start again a container left stopped (the seed's reconcile script).

    Rootless podman does not restart a container stopped through podman, whatever its
    policy (StoppedByUser). On by default for expected-up containers whose restart policy
    is always or unless-stopped; `--dry-run` records what it would do.
    """

    start_stopped: bool = True
    start_stopped_after: Annotated[Duration, Field(ge=0)] = 5.0
    max_actions: int = Field(default=5, ge=1)
    give_up_after: int = Field(default=5, ge=1)


class RuleMatchConfig(_Strict):
    """One way a diagnosis rule matches: every condition given must hold (at least one)."""

    # Facts a rule can test: InspectFacts fields plus derived ones (see agent/diagnosis.py).
    FACTS: ClassVar[tuple[str, ...]] = (
        "status", "running", "exit_code", "restart_count", "restart_policy", "health", "memory",
        "image", "image_tag", "read_only", "oom_killed", "user", "network_mode", "stopped_by_user",
        "has_mount", "has_ro_mount", "dac_override", "has_healthcheck", "expected_state",
        # the present state as podman and [machine] judge it (agent/diagnosis.py)
        "stable", "crash_looping", "failing", "death_kind", "health_failing_streak",
    )

    log: str | None = None
    health_output: str | None = None
    health_exit_code: list[int] | None = None
    exit_code: list[int] | None = None
    probe: str | None = None
    probe_output: str | None = None
    probe_failed: bool = True
    log_errors: bool = False
    facts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("log", "health_output", "probe_output")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @field_validator("facts")
    @classmethod
    def _known_facts(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, expected in value.items():
            if key not in cls.FACTS:
                raise ValueError(f"unknown fact {key!r}: known facts are {', '.join(cls.FACTS)}")
            if isinstance(expected, str) and re.match(r"\s*(>=|<=|!=|>|<)", expected):
                if not re.fullmatch(r"\s*(>=|<=|!=|>|<)\s*-?\d+(\.\d+)?\s*", expected):
                    raise ValueError(f"invalid comparison {expected!r} for fact {key!r}: use a number after the operator, like \">=3\"")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> "RuleMatchConfig":
        if not (self.log or self.health_output or self.health_exit_code or self.exit_code or self.probe
                or self.probe_output or self.log_errors or self.facts):
            raise ValueError("a match needs at least one condition: log, health_output, health_exit_code, "
                             "exit_code, probe, probe_output, log_errors or facts")
        return self


class RuleConfig(_Strict):
    """A diagnosis rule: evidence it matches, and the finding it makes (cause and fix)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    severity: Literal["error", "warning", "info"] = "error"
    containers: list[str] = Field(default_factory=list)
    match: list[RuleMatchConfig] = Field(min_length=1)
    message: str = ""
    cause: str
    fix: str
    explains: list[Literal["state", "health", "logs"]] = Field(default_factory=list)
    fallback: bool = False
    # a generic finding (a crash loop, a container down) becomes evidence of a specific finding
    # that explains the same container's state, instead of a second error
    generic: bool = False
    superseded_by: list[str] = Field(default_factory=list)

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("message", "cause", "fix")
    @classmethod
    def _template(cls, value: str) -> str:
        class Blank(dict):  # any placeholder name is fine here; agent/diagnosis.py fills the known ones
            def __missing__(self, key: str) -> str:
                return ""

        try:
            value.format_map(Blank())
        except (ValueError, IndexError, AttributeError, KeyError) as exc:
            raise ValueError(f"invalid placeholder in {value!r}: {exc}; write {{{{ and }}}} for literal braces") from None
        return value

    @model_validator(mode="after")
    def _log_errors_only_in_fallback(self) -> "RuleConfig":
        if any(m.log_errors for m in self.match) and not self.fallback:
            raise ValueError("`log_errors = true` needs `fallback = true` (it looks at lines no other rule explained)")
        return self


class RedactionConfig(_Strict):
    """Regexes whose matches are replaced before anything reaches the store."""

    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REDACTION_PATTERNS)
    )

    _regexes = field_validator("patterns")(validate_regexes)


class TestbedConfig(_Strict):
    """The miniature stack `podwarden testbed` builds."""

    __test__ = False  # not a pytest test class

    prefix: str = "tb-"
    port_base: int = Field(default=18330, ge=1024, le=65000)
    home: str = ".podwarden-testbed"
    late_unhealthy_after: Duration = 90.0


class DefaultsConfig(_Strict):
    """What every container gets unless it sets its own."""

    log_errors: list[str] | None = None
    restart_policies: list[str] | None = None

    _regexes = field_validator("log_errors")(validate_regexes)
    _restart_policies = field_validator("restart_policies")(validate_restart_policies)


class GeneralConfig(_Strict):
    """Top-level settings."""

    default_target: str = "local"
    db: str = "podwarden.db"
    reports: str = "reports"
    # retention: observations, changes and ended runs older than this are deleted while recording
    keep: Annotated[Duration, Field(gt=0)] = 30 * 86400.0


class Config(_Strict):
    """The whole validated config."""

    podwarden: GeneralConfig = Field(default_factory=GeneralConfig)
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    containers: dict[str, ContainerConfig] = Field(default_factory=dict)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    machine: MachineConfig = Field(default_factory=MachineConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    soak: SoakConfig = Field(default_factory=SoakConfig)
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig)
    hooks: list[HookConfig] = Field(default_factory=list)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    rules: list[RuleConfig] = Field(default_factory=list)
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    testbed: TestbedConfig = Field(default_factory=TestbedConfig)

    path: str = ""

    @field_validator("containers")
    @classmethod
    def _container_names(cls, value: dict[str, ContainerConfig]) -> dict[str, ContainerConfig]:
        for name in value:
            validate_container_name(name)
        return value

    @model_validator(mode="before")
    @classmethod
    def _name_entries(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for section in ("targets", "containers", "services"):
            entries = data.get(section)
            if isinstance(entries, dict):
                data[section] = {
                    key: ({**entry, "name": key} if isinstance(entry, dict) else entry)
                    for key, entry in entries.items()
                }
        return data

    @model_validator(mode="after")
    def _references(self) -> "Config":
        for index, hook in enumerate(self.hooks):
            # hooks act only on configured containers
            unknown = [name for name in hook.containers if name not in self.containers]
            if unknown:
                raise ValueError(f"hooks[{index}] ({hook.name}).containers names {', '.join(map(repr, unknown))}, "
                                 "not a configured container: hooks act only on containers in [containers]")
        for name, container in self.containers.items():
            for dep in container.depends_on:
                if dep not in self.containers:
                    raise ValueError(
                        f"containers.{name}.depends_on names {dep!r}, which is not a configured container"
                    )
        return self

    def error_patterns(self, container: str) -> list[str]:
        """The error regexes of a container (its own, else the defaults)."""
        own = self.containers[container].log_errors if container in self.containers else None
        if own is not None:
            return own
        return list(self.defaults.log_errors if self.defaults.log_errors is not None else DEFAULT_ERROR_PATTERNS)

    def restart_policies(self, container: str) -> list[str]:
        """The restart policies a container may have."""
        own = self.containers[container].restart_policies if container in self.containers else None
        if own is not None:
            return own
        if self.defaults.restart_policies is not None:
            return list(self.defaults.restart_policies)
        return ["always", "unless-stopped"]


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        text = str(item)
        # pydantic names union members by their tag; they are noise for a person.
        if text in ("exec", "http", "tcp", "podman-healthcheck", "service", "logs") and parts and parts[-1].isdigit():
            continue
        if text.startswith("function-") or text.endswith("]"):
            continue
        parts.append(text)
    return ".".join(parts)


def _explain(error: dict[str, Any], model: type[BaseModel] | None = None) -> tuple[str, str]:
    key = _loc(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return key, "unknown key: remove it or check its spelling (see the README's configuration reference)"
    if kind == "missing":
        return key, "missing required field: add it"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return key, f"unknown probe type {tag!r}: use exec, http, tcp, podman-healthcheck, service or logs"
    if kind == "union_tag_not_found":
        return key, "probe without `type`: add type = exec, http, tcp, podman-healthcheck, service or logs"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return key, message


def config_from_dict(data: dict[str, Any], path: str = "<config>") -> Config:
    """Validate an already parsed config; raises ConfigError."""
    try:
        config = Config.model_validate({**data, "path": path})
    except ValidationError as exc:
        errors = exc.errors()
        key, problem = _explain(errors[0])
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ConfigError(path, key, problem) from None
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming file, key and fix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found: pass --config PATH, or run from the project folder that holds config.toml") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    return config_from_dict(data, str(path))


_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^:/@]+)(?::(?P<port>\d+))?/?$")

SSH_CONFIG_ENV = "PODWARDEN_SSH_CONFIG"


def ssh_config_path(path: str | None = None) -> Path:
    """The OpenSSH client config ssh aliases come from: `path`, else $PODWARDEN_SSH_CONFIG, else
    ~/.ssh/config (the one `ssh` reads)."""
    import os

    return Path(os.path.expanduser(path or os.environ.get(SSH_CONFIG_ENV) or "~/.ssh/config"))


def ssh_config_names(path: Path, alias: str) -> bool:
    """Whether a `Host` line of the OpenSSH client config at `path` (or of a file it Includes)
    names `alias`: one of its patterns matches it and is more than wildcards (`Host *` applies to
    every host but names none), and no negated pattern (`!alias`) on that line excludes it.

    Patterns match as asyncssh and ssh match them (`*`, `?`). The values themselves are read by
    asyncssh (agent/transport.py); this only answers "is it ours to resolve". Raises OSError.
    """
    return _ssh_config_names(path, alias, 0)


_SSH_CONFIG_LINE = re.compile(r"^([A-Za-z]+)(?:\s*=\s*|\s+)(.*)$")


def _ssh_config_names(path: Path, alias: str, depth: int) -> bool:
    import glob
    import os
    import shlex

    for raw in path.read_text(errors="replace").splitlines():
        line = _SSH_CONFIG_LINE.match(raw.strip())
        if line is None:
            continue
        try:
            args = shlex.split(line[2])
        except ValueError:
            continue  # asyncssh reports the line when it reads the file
        keyword = line[1].lower()
        if keyword == "host":
            if _host_patterns_name([p for arg in args for p in arg.split(",") if p], alias):
                return True
        elif keyword == "include" and depth < 16:
            for pattern in args:
                full = os.path.expanduser(pattern)
                if not os.path.isabs(full):  # relative Includes of a user config are under ~/.ssh
                    full = os.path.join(os.path.expanduser("~/.ssh"), full)
                for included in sorted(glob.glob(full)):
                    if os.path.isfile(included) and _ssh_config_names(Path(included), alias, depth + 1):
                        return True
    return False


def _host_patterns_name(patterns: list[str], alias: str) -> bool:
    from fnmatch import fnmatchcase

    def matches(pattern: str) -> bool:
        return fnmatchcase(alias, "".join("[[]" if c == "[" else "[]]" if c == "]" else c for c in pattern))

    if any(p.startswith("!") and matches(p[1:]) for p in patterns):
        return False
    return any(not p.startswith("!") and p.strip("*?") and matches(p) for p in patterns)


def ssh_alias_missing(path: Path, alias: str) -> str | None:
    """Why the ssh config at `path` does not name `alias` (None: a `Host` line names it)."""
    if not path.is_file():
        return f"{path} not found"
    try:
        if not ssh_config_names(path, alias):
            return f"no `Host` line of {path} names it"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def ssh_config_unusable(path: Path, alias: str) -> str | None:
    """What asyncssh, reading `path` as ssh would for `alias`, refuses in it (None: nothing)."""
    import asyncssh  # here only: most commands never read an ssh config

    try:
        asyncssh.SSHClientConnectionOptions(config=[str(path)], host=alias, client_keys=None, known_hosts=None)
    except (ValueError, OSError, asyncssh.Error) as exc:
        text = str(exc)
        return text if str(path) in text else f"{path}: {text}"
    return None


def resolve_target(config: Config, spec: str | None, identity: str | None = None,
                   known_hosts: str | None = None) -> TargetConfig:
    """The target a command should talk to: a config name, `local`, `ssh://user@host:port`, or a
    `Host` alias of the OpenSSH client config (ssh_config_path()).

    Raises UsageError for an unknown name or a malformed URL, ConfigError for a config target
    whose ssh_alias the ssh config does not name.
    """
    spec = spec or config.podwarden.default_target
    overrides: dict[str, Any] = {}
    if identity:
        overrides["identity"] = identity
    if known_hosts:
        overrides["known_hosts"] = known_hosts
    if spec in config.targets:
        target = config.targets[spec]
        if target.transport == "ssh" and target.ssh_alias:
            path = ssh_config_path(target.ssh_config)
            missing = ssh_alias_missing(path, target.ssh_alias)
            if missing is not None:
                raise ConfigError(config.path, f"targets.{spec}.ssh_alias",
                                  f"{target.ssh_alias!r} is not an ssh config alias: {missing}; add a "
                                  f"`Host {target.ssh_alias}` block there, or set targets.{spec}.ssh_config = PATH")
            unusable = ssh_config_unusable(path, target.ssh_alias)
            if unusable is not None:
                raise ConfigError(config.path, f"targets.{spec}.ssh_alias", f"the ssh config: {unusable}")
            overrides["ssh_config"] = str(path)
    elif spec == "local":
        target = TargetConfig(name="local", transport="local")
    elif spec.startswith("ssh://"):
        match = _SSH_URL.match(spec)
        if match is None:
            raise UsageError(f"invalid --target {spec!r}: use ssh://user@host:port")
        port = int(match["port"] or 22)
        if not 1 <= port <= 65535:
            raise UsageError(f"invalid --target {spec!r}: port must be 1-65535")
        target = TargetConfig(name=spec, transport="ssh", host=match["host"].strip("[]"),
                              port=port, user=match["user"])
    else:
        path = ssh_config_path()
        missing = ssh_alias_missing(path, spec)
        if missing is not None:
            known = ", ".join(sorted(config.targets)) or "none configured"
            where = "no config file" if config.path.startswith("<") else config.path
            raise UsageError(
                f"unknown target {spec!r}: not in [targets] of {where} ({known}), and not an ssh config "
                f"alias: {missing}; use a configured target, a `Host` of your ssh config "
                f"(${SSH_CONFIG_ENV} names another file), local, or ssh://user@host:port")
        unusable = ssh_config_unusable(path, spec)
        if unusable is not None:
            raise UsageError(f"--target {spec!r} (a Host of the ssh config): {unusable}")
        target = TargetConfig(name=spec, transport="ssh", ssh_alias=spec, ssh_config=str(path))
    if overrides:
        target = target.model_copy(update=overrides)
    return target

"""Diagnosis rules on real evidence: the seed's log lines and captures from podman 4.3 here."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent import podman
from agent.config import DEFAULT_ERROR_PATTERNS, config_from_dict
from agent.diagnosis import (
    BUILTIN_RULES,
    NS_PER_S,
    Death,
    Evidence,
    Finding,
    HealthRecord,
    Timing,
    builtin_rules,
    deaths_from_events,
    diagnose,
    fact_holds,
    image_tag,
    keeps_dac_override,
    recovered_incident,
    rules_for,
)
from agent.errors import ConfigError
from agent.kernel import OomScan, parse_oom_kills
from agent.policies import check_caps
from machines.observations import ProbeObs

DATA = Path(__file__).parent / "data"
LOGS = DATA / "logs"
RULES = builtin_rules()


def facts(capture: str, /, **changes: object) -> podman.InspectFacts:
    """The first container of a captured `podman container inspect`, optionally varied."""
    folder = LOGS if (LOGS / f"{capture}.json").exists() else DATA / "podman"
    parsed = podman.parse_inspect((folder / f"{capture}.json").read_text(), "node1", 1)
    assert not isinstance(parsed, podman.ParseError), parsed
    return dataclasses.replace(parsed[0], **changes)


def lines(name: str) -> list[str]:
    """A log excerpt's lines, without podman's `--timestamps` prefix where it has one."""
    out = []
    for line in (LOGS / name).read_text().splitlines():
        parsed = podman.parse_log_line(line, "c")
        out.append(line if isinstance(parsed, podman.ParseError) else parsed.text)
    return out


def records(name: str, container: str = "c") -> list[podman.LogLine]:
    """A captured `podman logs --timestamps` excerpt as stamped records."""
    out = []
    for line in (LOGS / name).read_text().split("\n"):
        parsed = podman.parse_log_line(line, container)
        if not isinstance(parsed, podman.ParseError):
            out.append(parsed)
    return out


def evidence(container_facts: podman.InspectFacts | None, log: list[str] = (), *, name: str = "",
             expected_state: str = "running", health_runs: list[HealthRecord] = (),
             ignore: list[str] = (), probes: list[ProbeObs] = (), stamped: list[podman.LogLine] = (),
             deaths: list[Death] = (), oom: OomScan | None = None, now_ns: int = 0,
             timing: Timing = Timing()) -> Evidence:
    return Evidence.build("node1", name or (container_facts.name if container_facts else "gone"), container_facts,
                          expected_state=expected_state, lines=log, records=stamped,
                          error_patterns=DEFAULT_ERROR_PATTERNS, ignore_patterns=ignore, health_runs=health_runs,
                          probes=probes, deaths=deaths, oom=oom, now_ns=now_ns, timing=timing)


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


# ---------------------------------------------------------------- one case per built-in rule

def case_volume_permission_denied():
    indexer = facts("inspect-tbc-indexer-allfaults")  # --cap-drop ALL, bind volume, crash loop
    return evidence(indexer, lines("tbc-indexer-lock-permission.log")), "volume-permission-denied"


def case_volume_permission_denied_seed():
    # the seed's electrumx line, on a container shaped like the seed's (cap-drop ALL, a volume)
    electrumx = facts("inspect-tbc-indexer-allfaults", name="electrumx", restart_count=130)
    return evidence(electrumx, lines("seed-electrumx.log")), "volume-permission-denied"


def case_volume_owner_mismatch():
    # DAC_OVERRIDE kept (the seed's fix applied) and still refused: the uid mapping is wrong
    electrumx = facts("inspect-tbc-indexer-allfaults", name="electrumx", cap_add=("CAP_DAC_OVERRIDE",))
    return evidence(electrumx, lines("seed-electrumx.log")), "volume-owner-mismatch"


def case_credentials():
    lightning = facts("inspect-tbc-lightning-allfaults")  # State.Health.Log holds the 401 body
    return evidence(lightning, lines("tbc-lightning-health-credentials.log")), "healthcheck-needs-credentials"


def case_credentials_seed():
    lnd = facts("inspect-tbc-lightning-allfaults", name="lnd", health_log=())
    runs = [HealthRecord(1, (LOGS / "seed-lnd-health.txt").read_text(), "probe")]
    return evidence(lnd, health_runs=runs), "healthcheck-needs-credentials"


def case_missing_binary_exec():
    # CMD-form check: 4.3 records "" in the health log; our `podman exec` re-run shows why
    indexer = facts("inspect-tbc-indexer-health-missing-binary")
    runs = [HealthRecord(127, (LOGS / "tbc-indexer-health-missing-binary.exec.txt").read_text(), "probe")]
    return evidence(indexer, health_runs=runs), "healthcheck-missing-binary"


def case_missing_binary_shell():
    # CMD-SHELL check: the shell's own message is in State.Health.Log
    return evidence(facts("inspect-pwc-health-missing-binary-shell")), "healthcheck-missing-binary"


def case_data_newer_than_image():
    nextcloud = facts("inspect-pwc-stopped-by-user", name="nextcloud", status="exited", running=False,
                      exit_code=1, restart_policy="unless-stopped")
    return evidence(nextcloud, lines("seed-nextcloud.log")), "data-newer-than-image"


def case_read_only_rootfs_capture():
    # the captured container kept running; the rule needs the death the cause produces
    ro = facts("inspect-pwc-read-only-no-tmpfs", status="exited", running=False, exit_code=1)
    return evidence(ro, lines("pwc-read-only-rootfs.log")), "read-only-path-unwritable"


def case_read_only_mount():
    # the same EROFS on a container without --read-only: a read-only volume is the cause
    ro = facts("inspect-pwc-read-only-no-tmpfs", status="exited", running=False, exit_code=1, read_only=False,
               mounts=(podman.MountFacts("bind", "/srv/grafana", "/var/lib/grafana", False),))
    return evidence(ro, lines("pwc-read-only-rootfs.log")), "read-only-mount-unwritable"


def oom_capture() -> tuple[podman.InspectFacts, list[podman.LogLine], OomScan]:
    """The container killed past --memory 16m here, its log, and the kernel's lines about it."""
    killed = facts("inspect-chk-oom-killed")
    kills = parse_oom_kills((LOGS / "dmesg-chk-oom-killed.txt").read_text(), [killed.id])
    return killed, records("chk-oom-killed.log", killed.name), OomScan(True, "dmesg --time-format iso", "", kills)


def case_oom_killed():
    killed, log, scan = oom_capture()
    return evidence(killed, stamped=log, oom=scan), "oom-killed"


def case_healthcheck_retrying():
    # healthy, then one failure of the three podman allows (captured: FailingStreak 1, Retries 3)
    return evidence(facts("inspect-chk-health-retrying")), "healthcheck-retrying"


def case_read_only_grafana_seed():
    grafana = facts("inspect-pwc-read-only-no-tmpfs", name="grafana", status="exited", running=False, exit_code=1)
    return evidence(grafana, lines("seed-grafana.log")), "read-only-path-unwritable"


def case_crash_loop():
    # the indexer's loop without its volume: no specific rule explains it, so the loop stands alone
    indexer = facts("inspect-tbc-indexer-allfaults", mounts=())
    return evidence(indexer, lines("tbc-indexer-lock-permission.log")), "crash-loop"


def case_stopped_not_restarted():
    node = facts("inspect-tbc-node-stopped-by-user")
    return evidence(node, lines("tbc-node-stopped-by-user.log"), expected_state="healthy"), "stopped-not-restarted"


def case_exited_not_restarted():
    lightning = facts("inspect-tbc-lightning-dependent-died")
    return evidence(lightning, lines("tbc-lightning-dependent-dies.log")), "exited-not-restarted"


def case_no_healthcheck():
    return evidence(facts("inspect-4.3-no-healthcheck"), expected_state="healthy"), "no-healthcheck"


def case_healthcheck_failing():
    node_ui = facts("inspect-tbc-node-ui-allfaults")  # late-unhealthy: wget gets a 404
    return evidence(node_ui, lines("tbc-node-ui-late-unhealthy.log")), "healthcheck-failing"


def case_not_running():
    crashed = facts("inspect-pwc-stopped-by-user", status="exited", running=False, exit_code=2,
                    restart_policy="on-failure")
    return evidence(crashed, lines("tbc-node-stopped-by-user.log")), "not-running"


def case_log_errors():
    # the dependent's log after its upstream went: an error no other rule explains
    lightning = facts("inspect-tbc-lightning-dependent-died", health_log=())
    return evidence(lightning, lines("tbc-lightning-dependent-dies.log"), expected_state="stopped"), "log-errors"


CASES = [
    case_volume_permission_denied, case_volume_permission_denied_seed, case_volume_owner_mismatch,
    case_credentials, case_credentials_seed, case_missing_binary_exec, case_missing_binary_shell,
    case_data_newer_than_image, case_read_only_rootfs_capture, case_read_only_grafana_seed, case_read_only_mount,
    case_oom_killed, case_crash_loop, case_stopped_not_restarted, case_exited_not_restarted, case_no_healthcheck,
    case_healthcheck_failing, case_healthcheck_retrying, case_not_running, case_log_errors,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_rule_finds_its_cause_in_real_evidence(case):
    ev, rule = case()
    found = by_rule(diagnose(ev, RULES))
    assert rule in found, f"{rule} not among {sorted(found)}"
    finding = found[rule]
    assert finding.container == ev.container and finding.target == "node1"
    assert finding.severity == next(r["severity"] for r in BUILTIN_RULES if r["name"] == rule)
    assert finding.cause and finding.fix and finding.message
    assert "?" not in finding.message.split(":")[0], finding.message  # placeholders filled


def test_every_builtin_rule_has_a_real_case():
    covered = {case()[1] for case in CASES}
    assert covered == {rule["name"] for rule in BUILTIN_RULES}


# ---------------------------------------------------------------- what each finding says

def test_lock_permission_names_dac_override_and_uid_mapping():
    ev, _ = case_volume_permission_denied()
    finding = by_rule(diagnose(ev, RULES))["volume-permission-denied"]
    assert "utxo/LOCK: Permission denied" in finding.message
    assert "/data" in finding.message
    assert "DAC_OVERRIDE" in finding.cause and "DAC_OVERRIDE" in finding.fix
    assert "podman unshare chown" in finding.fix
    assert any("utxo/LOCK: Permission denied" in line for line in finding.evidence["log_lines"])


def test_caps_policy_supersedes_the_diagnosis_rule_and_explains_the_lines():
    ev, _ = case_volume_permission_denied()
    caps = check_caps(ev.facts, ev.lines, failing=ev.failing)
    assert caps is not None and caps.rule == "caps"
    found = by_rule(diagnose(ev, RULES, prior=[caps]))
    assert "volume-permission-denied" not in found
    assert "log-errors" not in found  # every Permission denied line is accounted for
    # one finding per root cause: the crash loop is the permission finding's evidence (it was a second error)
    assert set(found) == {"caps"}
    loop = found["caps"].evidence["crash-loop"]
    assert "restarted 119 times" in loop["message"] and loop["facts"]["restart_count"] == 119
    assert "restarted 119 times, now stopped" in found["caps"].message


def test_crash_loop_cites_the_first_error_line():
    ev, _ = case_crash_loop()
    finding = by_rule(diagnose(ev, RULES))["crash-loop"]
    assert "restarted 119 times" in finding.message
    assert finding.message.endswith("exited with code 1; first error: touch: /data/utxo/LOCK: Permission denied")
    assert finding.evidence["first_error"] == "touch: /data/utxo/LOCK: Permission denied"
    assert finding.evidence["facts"]["restart_count"] == 119


def test_credentials_rule_quotes_the_401_and_explains_the_log_line():
    ev, _ = case_credentials()
    found = by_rule(diagnose(ev, RULES))
    finding = found["healthcheck-needs-credentials"]
    assert "expected 1 macaroon, got 0" in finding.message
    assert "macaroon" in finding.cause and "lncli" in finding.fix
    # the daemon's own [ERR] line about the refused request is explained, not a loose log error
    assert "log-errors" not in found
    assert "healthcheck-failing" not in found


def test_missing_binary_is_not_a_404():
    ev, _ = case_healthcheck_failing()
    found = by_rule(diagnose(ev, RULES))
    assert "healthcheck-missing-binary" not in found
    assert "404 Not Found" in found["healthcheck-failing"].message


def test_missing_binary_names_curl():
    ev, _ = case_missing_binary_exec()
    finding = by_rule(diagnose(ev, RULES))["healthcheck-missing-binary"]
    assert "executable file not found" in finding.message and '"curl"' in finding.message


def test_stopped_by_user_is_the_known_limitation():
    ev, _ = case_stopped_not_restarted()
    found = by_rule(diagnose(ev, RULES))
    finding = found["stopped-not-restarted"]
    assert "code 137" in finding.message and "unless-stopped" in finding.message
    assert "podman stop" in finding.cause and "known limitation" in finding.cause
    assert "not-running" not in found  # the fallback stays quiet once a rule explained it


def test_stopped_by_user_false_on_podman5_is_not_the_limitation():
    node = facts("inspect-tbc-node-stopped-by-user", stopped_by_user=False)
    found = by_rule(diagnose(evidence(node, lines("tbc-node-stopped-by-user.log"), expected_state="healthy"), RULES))
    assert "stopped-not-restarted" not in found
    # exit 137, no stop or kill, a 32 MiB limit and no kernel log read: a likely OOM kill (was "not-running",
    # which said no rule recognised why)
    assert "likely killed by the kernel's OOM killer" in found["oom-killed"].message
    assert "kernel log not read" in found["oom-killed"].evidence["death"]["evidence"]


def test_data_newer_than_image_quotes_versions_and_suppresses_not_running():
    ev, _ = case_data_newer_than_image()
    found = by_rule(diagnose(ev, RULES))
    assert "29.0.16.1" in found["data-newer-than-image"].message
    # exit 1 under unless-stopped is no `podman stop` (that ends in 0, 137 or 143)
    assert set(found) == {"data-newer-than-image"}


def test_grafana_gets_read_only_and_volume_findings():
    grafana = facts("inspect-pwc-read-only-no-tmpfs", name="grafana", status="exited", running=False, exit_code=1,
                    cap_drop=("ALL",), effective_caps=None,
                    mounts=(podman.MountFacts("volume", "/var/lib/archipelago/grafana", "/var/lib/grafana", True),))
    found = by_rule(diagnose(evidence(grafana, lines("seed-grafana.log")), RULES))
    assert {"read-only-path-unwritable", "volume-permission-denied"} <= set(found)


def test_healthy_container_with_clean_log_has_no_findings():
    node = facts("inspect-tbc-node-allfaults")
    log = ["2026-11-27 10:25:23 init message: Done loading", "UpdateTip: new best=00ab height=7"]
    assert diagnose(evidence(node, log, expected_state="healthy"), RULES) == []


def test_a_missing_container_matches_no_rule():
    assert diagnose(evidence(None, name="lnd"), RULES) == []


def test_rules_only_see_current_health_failures():
    # the captured web container failed twice, then passed: that is history, not a finding
    web = facts("inspect-4.3-web-healthy")
    assert [r.exit_code for r in evidence(web).health] == [0, 1, 1, 0]
    assert diagnose(evidence(web), RULES) == []


# ---------------------------------------------------------------- ignore patterns

def test_ignore_patterns_suppress_log_errors():
    ev, _ = case_log_errors()
    assert "log-errors" in by_rule(diagnose(ev, RULES))
    quiet, _ = case_log_errors()
    quiet = evidence(quiet.facts, lines("tbc-lightning-dependent-dies.log"), expected_state="stopped",
                     ignore=[r"unable to reach node backend"])
    assert "log-errors" not in by_rule(diagnose(quiet, RULES))


def test_ignore_patterns_keep_lines_from_every_rule():
    indexer = facts("inspect-tbc-indexer-allfaults")
    ev = evidence(indexer, lines("tbc-indexer-lock-permission.log"), ignore=[r"LOCK: Permission denied"])
    found = by_rule(diagnose(ev, RULES))
    assert "volume-permission-denied" not in found
    assert check_caps(indexer, ev.lines) is None


# ---------------------------------------------------------------- config rules

CONFIG_RULES = '''
[[rules]]
name = "upstream-lost"
severity = "warning"
containers = ["tbc-lightning"]
match = { log = "unable to reach node backend", facts = { restart_policy = ["on-failure", "no"] } }
message = "{container} lost its upstream: {first_match}"
cause = "the node went away and {container} gave up"
fix = "restart the node first, then {container}"
explains = ["logs"]

[[rules]]
name = "many-restarts"
match = [{ facts = { restart_count = ">=100" } }, { exit_code = [137] }]
cause = "restarted a lot"
fix = "look"

[[rules]]
name = "healthcheck-failing"
severity = "info"
fallback = true
match = { health_exit_code = [1] }
cause = "replaced"
fix = "replaced"
explains = ["health"]
'''


def config_rules():
    return rules_for(config_from_dict(tomllib.loads(CONFIG_RULES)))


def test_config_rule_matches_real_log_and_fills_its_message():
    ev, _ = case_log_errors()
    found = by_rule(diagnose(ev, config_rules()))
    finding = found["upstream-lost"]
    assert finding.severity == "warning"
    assert finding.message == ("tbc-lightning lost its upstream: 2026-11-27 10:32:35 [ERR] LNWL: unable to reach "
                               "node backend: connection refused")
    assert finding.fix == "restart the node first, then tbc-lightning"
    assert "log-errors" not in found  # the config rule explained the line


def test_config_rule_is_limited_to_its_containers():
    ev, _ = case_log_errors()
    assert "upstream-lost" in by_rule(diagnose(ev, config_rules()))
    other = dataclasses.replace(ev, container="someone-else")
    assert "upstream-lost" not in by_rule(diagnose(other, config_rules()))


def test_config_rule_alternatives_and_comparisons():
    ev, _ = case_crash_loop()  # 119 restarts
    assert "many-restarts" in by_rule(diagnose(ev, config_rules()))
    ev, _ = case_stopped_not_restarted()  # exited 137
    assert "many-restarts" in by_rule(diagnose(ev, config_rules()))
    ev, _ = case_no_healthcheck()
    assert "many-restarts" not in by_rule(diagnose(ev, config_rules()))


def test_config_rule_replaces_a_builtin_of_the_same_name():
    rules = config_rules()
    assert [r.name for r in rules].count("healthcheck-failing") == 1
    ev, _ = case_healthcheck_failing()
    finding = by_rule(diagnose(ev, rules))["healthcheck-failing"]
    assert (finding.severity, finding.cause) == ("info", "replaced")
    assert not finding.fails


def test_config_rule_on_a_passing_probe():
    config = config_from_dict(tomllib.loads('''
[[rules]]
name = "backend-unsupervised"
severity = "warning"
match = { probe = "active", probe_output = "supervisor=-", probe_failed = false }
message = "{container} runs without a supervisor: {probe_detail}"
cause = "nothing restarts it"
fix = "run it under systemd"
'''))
    probe = ProbeObs("node1", "backend", 1, "active", "service", True,
                     excerpt="active pid=42 supervisor=- mode=unsupervised port=20338")
    found = by_rule(diagnose(evidence(None, name="backend", probes=[probe]), rules_for(config)))
    assert found["backend-unsupervised"].message == (
        "backend runs without a supervisor: active: active pid=42 supervisor=- mode=unsupervised port=20338")


@pytest.mark.parametrize("rule, problem", [
    ({"name": "x", "match": {"facts": {"colour": "red"}}, "cause": "c", "fix": "f"}, "unknown fact 'colour'"),
    ({"name": "x", "match": {"log": "("}, "cause": "c", "fix": "f"}, "invalid regular expression"),
    ({"name": "x", "match": {}, "cause": "c", "fix": "f"}, "at least one condition"),
    ({"name": "x", "match": {"log_errors": True}, "cause": "c", "fix": "f"}, "needs `fallback = true`"),
    ({"name": "x", "match": {"log": "a"}, "cause": "c", "fix": "f {"}, "literal braces"),
    ({"name": "x", "match": {"facts": {"restart_count": ">= many"}}, "cause": "c", "fix": "f"}, "invalid comparison"),
    ({"name": "Bad Name", "match": {"log": "a"}, "cause": "c", "fix": "f"}, "rules.0.name"),
])
def test_bad_config_rules_name_key_and_fix(rule, problem):
    with pytest.raises(ConfigError, match="rules") as info:
        config_from_dict({"rules": [rule]}, "podwarden.toml")
    assert problem in str(info.value)
    assert str(info.value).startswith("podwarden.toml: rules.0")


# ---------------------------------------------------------------- small helpers

@pytest.mark.parametrize("actual, expected, holds", [
    (3, ">=3", True), (2, ">=3", False), (1, "!=0", True), (0, "!=0", False), (True, ">=1", False),
    ("exited", ["exited", "stopped"], True), (None, [True, None], True), (False, [True, None], False),
    (0, False, False), (1, True, False), (True, True, True), ("", "", True),
])
def test_fact_holds(actual, expected, holds):
    assert fact_holds(actual, expected) is holds


@pytest.mark.parametrize("image, tag", [
    ("docker.io/library/nginx:1.25", "1.25"), ("nginx", "latest"), ("localhost:5000/app", "latest"),
    ("localhost:5000/app:2", "2"), ("quay.io/x/y@sha256:" + "a" * 64, "sha256:" + "a" * 64),
    ("a" * 64, "a" * 64), ("localhost/podwarden-testbed:latest", "latest"),
])
def test_image_tag(image, tag):
    assert image_tag(image) == tag


def test_dac_override_from_captures():
    assert keeps_dac_override(facts("inspect-tbc-node-allfaults"))  # podman's default caps
    assert not keeps_dac_override(facts("inspect-tbc-indexer-allfaults"))  # cap-drop ALL: EffectiveCaps null
    assert not keeps_dac_override(facts("inspect-4.3-web-healthy"))  # cap-drop ALL + NET_BIND_SERVICE
    assert keeps_dac_override(facts("inspect-tbc-indexer-allfaults", cap_add=("DAC_OVERRIDE",)))


def test_every_configurable_fact_is_answered():
    from agent.config import RuleMatchConfig

    ev = evidence(facts("inspect-tbc-indexer-allfaults"), expected_state="healthy")
    answers = {name: ev.fact(name) for name in RuleMatchConfig.FACTS}
    assert answers["has_mount"] is True and answers["dac_override"] is False
    assert answers["image_tag"] == "f1ef07d239d4" and answers["expected_state"] == "healthy"
    assert answers["restart_count"] == 119 and answers["stopped_by_user"] is None


# ---------------------------------------------------------------- the present is not the past

LOCK_LOG = "tbc-indexer-lock-permission.log"


def recovered_indexer(up_for_s: float, timing: Timing = Timing()) -> Evidence:
    """The captured crash-looping indexer, as if it came up for good just after its last captured line."""
    log = records(LOCK_LOG, "tbc-indexer")
    started = log[-1].at_ns + NS_PER_S
    indexer = facts("inspect-tbc-indexer-allfaults", status="running", running=True, exit_code=0, restart_count=3,
                    started_at_ns=started, finished_at_ns=started - NS_PER_S // 2, health="healthy",
                    health_failing_streak=0, health_log=())
    return evidence(indexer, stamped=log, now_ns=started + int(up_for_s * NS_PER_S), timing=timing)


def test_a_crash_loop_that_recovered_is_an_incident_not_an_error():
    ev = recovered_indexer(11 * 60)  # up longer than the 10 min stable period
    assert not ev.failing and ev.stable and ev.lines == () and len(ev.earlier) == 40
    found = diagnose(ev, RULES)
    assert [(f.rule, f.severity) for f in found] == [("recovered-incident", "info")]
    incident = found[0]
    assert incident.message == (
        "tbc-indexer recovered: it died 3 times between 2026-11-27 10:27:39 UTC and 2026-11-27 10:27:50 UTC "
        "(touch: /data/utxo/LOCK: Permission denied) and has been up since 2026-11-27 10:27:51 UTC (11m), healthy")
    assert "DAC_OVERRIDE" in incident.cause and incident.cause.startswith("before its current start")
    assert incident.fix.startswith("nothing now; to keep it from coming back: add --cap-add=DAC_OVERRIDE")
    assert incident.evidence["incident"]["rule"] == "volume-permission-denied"
    assert incident.evidence["incident"]["deaths"] == 3
    assert check_caps(ev.facts, ev.lines, failing=ev.failing) is None


def test_a_crash_loop_is_current_until_the_stable_period_ends():
    ev = recovered_indexer(30)  # restarted 3 times, up for 30 s: still looping as the machine sees it
    assert ev.crash_looping and ev.failing
    found = by_rule(diagnose(ev, RULES))
    assert set(found) == {"volume-permission-denied"}  # the loop is its evidence
    assert "crash-loop" in found["volume-permission-denied"].evidence
    # a short stable period (config [machine] stable_period) ends it sooner
    short = recovered_indexer(30, Timing(stable_period_ns=20 * NS_PER_S))
    assert [f.rule for f in diagnose(short, RULES)] == ["recovered-incident"]


def test_benign_lines_on_a_healthy_container_are_no_finding():
    # captured: a volume, `permission denied ... retrying as user: ok`, `error=0`, `timeout=30s`, and a health
    # check failing inside its --health-start-period (podman: starting, FailingStreak 0)
    benign = facts("inspect-chk-benign-start-period")
    assert (benign.health, benign.health_failing_streak, [e.exit_code for e in benign.health_log]) == \
        ("starting", 0, [1])
    assert benign.mounts
    log = records("chk-benign.log", benign.name)
    run = [HealthRecord(1, "", "probe")]
    for shape in (benign, dataclasses.replace(benign, cap_drop=("ALL",), effective_caps=None)):
        ev = evidence(shape, stamped=log, health_runs=run, expected_state="healthy")
        assert ev.error_lines == () and ev.health_failures == ()
        assert diagnose(ev, RULES) == [], shape.cap_drop
        assert check_caps(shape, ev.lines, failing=ev.failing) is None


def test_a_permission_line_still_counts_when_the_container_dies_of_it():
    benign = facts("inspect-chk-benign-start-period", status="exited", running=False, exit_code=1,
                   cap_drop=("ALL",), effective_caps=None)
    found = by_rule(diagnose(evidence(benign, ["open /data/LOCK: permission denied"]), RULES))
    assert "volume-permission-denied" in found


@pytest.mark.parametrize("line", ["error=0", "timeout=30s", "stats: error=0 warnings=0", "failed=false",
                                  '{"error":null}', "permission denied for anonymous, retrying as user: ok"])
def test_counters_settings_and_handled_errors_are_not_error_lines(line):
    node = facts("inspect-tbc-node-allfaults")
    assert diagnose(evidence(node, [line], expected_state="healthy"), RULES) == []


def test_read_only_rule_needs_read_only():
    # EROFS on a container without --read-only (e.g. /proc/sys) must not tell anyone to drop --read-only
    died = facts("inspect-tbc-node-allfaults", status="exited", running=False, exit_code=1)
    found = by_rule(diagnose(evidence(died, ["sysctl: /proc/sys/net/core/somaxconn: Read-only file system"]),
                             RULES))
    assert "read-only-path-unwritable" not in found and "read-only-mount-unwritable" not in found
    assert "drop --read-only" not in " ".join(f.fix for f in found.values())
    assert "not-running" in found


def test_read_only_rootfs_capture_that_kept_running_is_no_error():
    ro = facts("inspect-pwc-read-only-no-tmpfs")  # running: the writes failed and it carried on
    assert "read-only-path-unwritable" not in by_rule(diagnose(evidence(ro, lines("pwc-read-only-rootfs.log")), RULES))


# ---------------------------------------------------------------- health as podman judges it

def test_a_start_period_failure_is_no_failure():
    benign = facts("inspect-chk-benign-start-period")
    ev = evidence(benign, health_runs=[HealthRecord(1, "", "probe")], expected_state="healthy")
    assert ev.health_failures == () and not ev.failing
    assert diagnose(ev, RULES) == []


def test_a_failure_below_retries_is_info():
    ev, _ = case_healthcheck_retrying()
    found = diagnose(ev, RULES)
    assert [(f.rule, f.severity) for f in found] == [("healthcheck-retrying", "info")]
    assert not found[0].fails and "connection refused" in found[0].message


# ---------------------------------------------------------------- a reason for every death

EVENTS = DATA / "logs" / "events-chk-deaths.jsonl"


def captured_deaths() -> dict[str, list[Death]]:
    parsed = podman.parse_events(EVENTS.read_text(), "node1")
    return deaths_from_events(e for e in parsed if not isinstance(e, podman.ParseError))


def test_deaths_from_real_events_tell_users_from_crashes():
    # chk-ev: podman kill, podman stop, podman restart, then kill -9 of its main process from the host
    # (restarted by unless-stopped); chk-rc: exit 3 under on-failure:2, restarted twice
    deaths = captured_deaths()
    ev_id = "4b48df7c2e4b071954fcbdf7ebc49361bc74dd86281ef26d9e86037394361a08"
    rc_id = "517f0894ad1a88f67c428b71eab1fe232ee8a0d9855bdfd3015223100f861383"
    assert [(d.exit_code, d.user_action) for d in deaths[ev_id]] == [
        (137, "kill"), (137, "stop"), (137, "restart"), (137, None)]
    assert [(d.exit_code, d.user_action) for d in deaths[rc_id]] == [(3, None)] * 3
    assert all(d.run_started_ns and d.run_started_ns < d.at_ns for d in deaths[ev_id])
    # the restart policy's `restart` follows the deaths it restarted, and only those
    assert [d.restarted for d in deaths[ev_id]] == [False, False, False, True]
    assert [d.restarted for d in deaths[rc_id]] == [True, True, False]


def test_a_crash_loop_counts_the_policy_restarts_in_the_window_not_ours_nor_old_ones():
    node = facts("inspect-tbc-indexer-allfaults", status="running", running=True, restart_count=9)
    now = node.started_at_ns + 1_000_000_000
    window = Timing().crashloop_window_ns
    crash = [Death(now - i * 10_000_000_000, 1, None, restarted=True) for i in range(1, 4)]
    old = [Death(now - window - i * 1_000_000_000, 1, None, restarted=True) for i in range(1, 6)]
    stops = [Death(now - i * 5_000_000_000, 137, None, restarted=False) for i in range(1, 4)]

    def looping(deaths: list[Death], caused: tuple[int, ...] = ()) -> bool:
        return Evidence.build("node1", node.name, node, deaths=deaths, now_ns=now, deaths_read=True,
                              caused=caused).crash_looping

    assert looping(crash)
    assert not looping(old + crash[:2]), "old deaths outside the window are history"
    assert not looping(stops + crash[:2]), "a death nothing restarted is no loop"
    assert not looping(crash, caused=(crash[0].at_ns - 1_000_000,)), "a death podwarden caused is not the loop's"
    # one action, one death: the loop that follows our crash is the container's own
    four = [*crash, Death(now - 40_000_000_000, 1, None, restarted=True)]
    assert looping(four, caused=(four[-1].at_ns - 1_000_000,))
    assert looping(four, caused=(four[-1].at_ns - 400_000_000_000,)), "a death long after an action is not ours"
    # the death before the present start was ours: no recovered incident of it
    ours = Evidence.build("node1", node.name, node, deaths=crash[:1], now_ns=now, deaths_read=True,
                          caused=(crash[0].at_ns - 1_000_000,))
    assert ours.death_ours and recovered_incident(ours, RULES) is None
    # podman's events unread: RestartCount stands in
    assert Evidence.build("node1", node.name, node, now_ns=now).crash_looping


def test_a_user_kill_is_named_and_is_not_an_oom_kill():
    node = facts("inspect-tbc-node-stopped-by-user")  # exited 137, unless-stopped, 32 MiB limit
    kill = Death(node.finished_at_ns, 137, "kill", node.started_at_ns)
    found = by_rule(diagnose(evidence(node, expected_state="healthy", deaths=[kill]), RULES))
    assert "oom-killed" not in found
    assert "killed by a user (podman kill), exit 137" in found["stopped-not-restarted"].message


def test_exit_139_is_sigsegv():
    crashed = facts("inspect-pwc-stopped-by-user", status="exited", running=False, exit_code=139,
                    restart_policy="no")
    finding = by_rule(diagnose(evidence(crashed, ["fetching the index"]), RULES))["not-running"]
    assert "killed by SIGSEGV (exit 139): a segmentation fault" in finding.message
    assert finding.cause.startswith("the main process was killed by SIGSEGV")
    assert "its last line: fetching the index" in finding.message
    assert "no rule recognised" not in finding.cause


def test_oom_kill_cites_the_kernel():
    ev, _ = case_oom_killed()
    finding = by_rule(diagnose(ev, RULES))["oom-killed"]
    assert finding.message == "chk-oom died: killed by the kernel's OOM killer (memory limit 16 MiB), exit 137"
    kernel = finding.evidence["death"]["evidence"][0]
    assert "oom-kill:constraint=CONSTRAINT_MEMCG" in kernel and f"libpod-{ev.facts.id}" in kernel
    assert "Memory cgroup out of memory: Killed process" in kernel
    assert "not-running" not in by_rule(diagnose(ev, RULES))  # one finding: the OOM kill explains the state


def test_oom_kill_is_likely_when_the_kernel_log_cannot_be_read():
    killed, log, _ = oom_capture()
    unreadable = OomScan(False, reason="dmesg: read kernel buffer failed: Operation not permitted")
    finding = by_rule(diagnose(evidence(killed, stamped=log, oom=unreadable), RULES))["oom-killed"]
    assert finding.message.startswith("chk-oom died: likely killed by the kernel's OOM killer: SIGKILL (exit 137)")
    assert finding.evidence["death"]["evidence"] == [
        "exit 137 = 128 + SIGKILL", "no podman stop/kill event or podwarden action", "HostConfig.Memory = 16777216",
        "kernel log unavailable: dmesg: read kernel buffer failed: Operation not permitted"]


def test_exit_137_without_a_kernel_kill_is_a_plain_sigkill():
    killed, log, scan = oom_capture()
    nothing = OomScan(True, scan.source, "", {})
    found = by_rule(diagnose(evidence(killed, stamped=log, oom=nothing), RULES))
    assert "oom-killed" not in found
    assert "killed by SIGKILL (exit 137)" in found["not-running"].message
    assert "dmesg --time-format iso: no OOM kill of this container" in found["not-running"].evidence["death"]["evidence"]


def test_a_fallback_never_says_no_rule_recognised_beside_a_config_rule():
    ev, _ = case_not_running()
    rules = rules_for(config_from_dict(tomllib.loads('''
[[rules]]
name = "node-tip"
match = { log = "UpdateTip" }
cause = "c"
fix = "f"
''')))
    found = by_rule(diagnose(ev, rules))
    assert {"node-tip", "not-running"} <= set(found)
    assert "no rule recognised" not in found["not-running"].cause
    assert found["not-running"].cause.startswith("the main process exited with code 2")

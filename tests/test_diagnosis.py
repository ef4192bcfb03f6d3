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
    Evidence,
    Finding,
    HealthRecord,
    builtin_rules,
    diagnose,
    fact_holds,
    image_tag,
    keeps_dac_override,
    rules_for,
)
from agent.errors import ConfigError
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


def evidence(container_facts: podman.InspectFacts | None, log: list[str] = (), *, name: str = "",
             expected_state: str = "running", health_runs: list[HealthRecord] = (),
             ignore: list[str] = (), probes: list[ProbeObs] = ()) -> Evidence:
    return Evidence.build("node1", name or (container_facts.name if container_facts else "gone"), container_facts,
                          expected_state=expected_state, lines=log, error_patterns=DEFAULT_ERROR_PATTERNS,
                          ignore_patterns=ignore, health_runs=health_runs, probes=probes)


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
    ro = facts("inspect-pwc-read-only-no-tmpfs")
    return evidence(ro, lines("pwc-read-only-rootfs.log")), "read-only-path-unwritable"


def case_read_only_grafana_seed():
    grafana = facts("inspect-pwc-read-only-no-tmpfs", name="grafana", status="exited", running=False, exit_code=1)
    return evidence(grafana, lines("seed-grafana.log")), "read-only-path-unwritable"


def case_crash_loop():
    return evidence(facts("inspect-tbc-indexer-allfaults"), lines("tbc-indexer-lock-permission.log")), "crash-loop"


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
    case_data_newer_than_image, case_read_only_rootfs_capture, case_read_only_grafana_seed, case_crash_loop,
    case_stopped_not_restarted, case_exited_not_restarted, case_no_healthcheck, case_healthcheck_failing,
    case_not_running, case_log_errors,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_rule_finds_its_cause_in_real_evidence(case):
    ev, rule = case()
    found = by_rule(diagnose(ev, RULES))
    assert rule in found, f"{rule} not among {sorted(found)}"
    finding = found[rule]
    assert finding.container == ev.container and finding.target == "node1"
    assert finding.severity in ("error", "warning")
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
    caps = check_caps(ev.facts, ev.lines)
    assert caps is not None and caps.rule == "caps"
    found = by_rule(diagnose(ev, RULES, prior=[caps]))
    assert "volume-permission-denied" not in found
    assert "log-errors" not in found  # every Permission denied line is accounted for
    assert "crash-loop" in found


def test_crash_loop_cites_the_first_error_line():
    ev, _ = case_crash_loop()
    finding = by_rule(diagnose(ev, RULES))["crash-loop"]
    assert "restarted 119 times" in finding.message
    assert finding.message.endswith("touch: /data/utxo/LOCK: Permission denied")
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
    ev, _ = case_stopped_not_restarted()
    ev = dataclasses.replace(ev, facts=dataclasses.replace(ev.facts, stopped_by_user=False))
    found = by_rule(diagnose(ev, RULES))
    assert "stopped-not-restarted" not in found
    assert "not-running" in found


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

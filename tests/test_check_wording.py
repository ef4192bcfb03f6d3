"""Every message, cause and fix a rule or policy can produce, run through a real case and read.

The cases are the captures of tests/test_diagnosis.py (one per built-in rule, and the
deaths, OOM kills and recovered incidents) and the policy captures of
tests/test_policies.py. Each text must read as finished prose: no placeholder left, no
empty phrase, no "none in the recent log" when the log holds lines, no policy sentence
that says nothing ("only never").
"""

from __future__ import annotations

import re

import pytest

from agent.config import config_from_dict
from agent.diagnosis import BUILTIN_RULES, MESSAGE_FIELDS, Finding, diagnose
from agent.kernel import OomScan
from agent.policies import (
    check_caps,
    check_image_pinned,
    check_memory_limit,
    check_missing,
    check_read_only_rootfs,
    check_restart_policy,
)
from tests import test_diagnosis as cases
from tests.test_diagnosis import RULES, Death, evidence, facts, oom_capture, recovered_indexer


def rule_findings() -> list[tuple[str, Finding, tuple[str, ...]]]:
    """(case, finding, the log lines the case had) for every built-in rule's cases and the death cases."""
    out = []
    for case in cases.CASES:
        ev, _ = case()
        out += [(case.__name__, f, ev.lines + tuple(r.text for r in ev.earlier)) for f in diagnose(ev, RULES)]
    extra = {
        "recovered": recovered_indexer(11 * 60),
        "still-looping": recovered_indexer(30),
        "likely-oom": evidence(oom_capture()[0], stamped=oom_capture()[1],
                               oom=OomScan(False, reason="dmesg: read kernel buffer failed: Operation not permitted")),
        "sigsegv": evidence(facts("inspect-pwc-stopped-by-user", status="exited", running=False, exit_code=139,
                                  restart_policy="no"), ["fetching the index"]),
        "sigsegv-silent": evidence(facts("inspect-pwc-stopped-by-user", status="exited", running=False,
                                         exit_code=139, restart_policy="no")),
        "user-kill": evidence(facts("inspect-tbc-node-stopped-by-user"), expected_state="healthy",
                              deaths=[Death(facts("inspect-tbc-node-stopped-by-user").finished_at_ns, 137, "kill")]),
        "policy-no-clean-exit": evidence(facts("inspect-tbc-lightning-dependent-died", restart_policy="no")),
        "never-started": evidence(facts("inspect-pwc-stopped-by-user", status="created", running=False,
                                        started_at_ns=0, restart_policy="no")),
    }
    for name, ev in extra.items():
        out += [(name, f, ev.lines + tuple(r.text for r in ev.earlier)) for f in diagnose(ev, RULES)]
    return out


def policy_findings() -> list[tuple[str, Finding, tuple[str, ...]]]:
    lock = tuple(cases.lines("tbc-indexer-lock-permission.log"))
    found: list[tuple[str, Finding | None, tuple[str, ...]]] = [
        ("restart-no", check_restart_policy(facts("inspect-tbc-indexer-ui-allfaults")), ()),
        ("restart-empty", check_restart_policy(facts("inspect-pwc-read-only-no-tmpfs")), ()),
        ("restart-on-failure", check_restart_policy(facts("inspect-tbc-lightning-allfaults")), ()),
        ("restart-on-failure-3", check_restart_policy(facts("inspect-4.3-web-healthy")), ()),
        ("restart-always-not-allowed", check_restart_policy(facts("inspect-4.3-no-healthcheck"), ["on-failure:5"]),
         ()),
        ("memory", check_memory_limit(facts("inspect-tbc-node-ui-allfaults")), ()),
        ("latest", check_image_pinned(facts("inspect-tbc-lightning-ui-allfaults")), ()),
        ("no-tag", check_image_pinned(facts("inspect-tbc-node-allfaults", image="docker.io/lightninglabs/lnd")), ()),
        ("caps", check_caps(facts("inspect-tbc-indexer-allfaults"), lock), lock),
        ("read-only-rootfs", check_read_only_rootfs(facts("inspect-pwc-read-only-no-tmpfs")), ()),
    ]
    config = config_from_dict({"containers": {"lnd": {"role": "lightning"}, "electrumx": {}}})
    found += [("missing", f, ()) for f in check_missing("node1", config, [])]
    return [(name, f, log) for name, f, log in found if f is not None]


ALL = rule_findings() + policy_findings()

BAD_PHRASES = [
    (re.compile(r"\{[a-z_]*\}"), "a placeholder left"),
    (re.compile(r"(^|[\s(:=])\?($|[\s),;:.])"), "an unknown field shown as ?"),
    (re.compile(r" {2,}"), "a double space"),
    (re.compile(r"\(\s*\)"), "empty parentheses"),
    (re.compile(r"[:;,]\s*[;,)]|[:;,]\s*$|:\s*:"), "an empty phrase after a colon, comma or semicolon"),
    (re.compile(r"\bonly never\b|restarts only failures|no restarts only|under policy no\b"), "a policy that says nothing"),
    (re.compile(r"no rule recognised"), "a fallback that shrugs"),
    (re.compile(r"\bline\(s\)|\btime\(s\)"), "a (s) plural"),
    (re.compile(r"\bonce in a row\b"), "once in a row"),
    (re.compile(r"\bthat should have$|\bthe\s*$|\band\s*$|\bor\s*$"), "a dangling end"),
]


def _without_quotes(text: str, log: tuple[str, ...], finding: Finding) -> str:
    """The text minus what it quotes from the container (log lines, health output), which may hold anything."""
    quoted = list(log) + [str(v) for v in finding.evidence.get("health_output", [])]
    quoted += [line for line in finding.evidence.get("log_lines", [])]
    for item in sorted((q.strip()[:300] for q in quoted if q.strip()), key=len, reverse=True):
        text = text.replace(item, "«quote»")
    return text


def test_every_rule_and_policy_is_read():
    rules = {f.rule for _, f, _ in ALL}
    assert {r["name"] for r in BUILTIN_RULES} | {"recovered-incident", "restart-policy", "memory-limit",
                                                "image-pinned", "caps", "read-only-rootfs", "missing"} <= rules


@pytest.mark.parametrize("case, finding, log", ALL, ids=[f"{c}:{f.rule}" for c, f, _ in ALL])
def test_wording_is_finished_prose(case, finding, log):
    for part in ("message", "cause", "fix"):
        text = getattr(finding, part)
        assert text.strip() == text and text, f"{part} is empty or padded: {text!r}"
        plain = _without_quotes(text, log, finding)
        for pattern, what in BAD_PHRASES:
            assert not pattern.search(plain), f"{part} has {what}: {text!r}"
        if any(line.strip() for line in log):
            assert "none in the recent log" not in text and "nothing in the recent log" not in text, text
        if part != "message":
            assert "{" not in plain, f"{part} has a brace: {text!r}"


def test_message_fields_are_all_filled_for_a_real_case():
    from agent.diagnosis import _Hit, _message_fields

    ev, _ = cases.case_crash_loop()
    fields = _message_fields(ev, _Hit(lines=["x"]), ["x"])
    assert set(MESSAGE_FIELDS) <= set(fields)
    assert not [name for name in MESSAGE_FIELDS if fields[name] == "?"]
    # what a health or probe condition matched is empty when the rule matched none
    assert [name for name in MESSAGE_FIELDS if fields[name] == ""] == ["health_output", "probe_detail"]

"""Spec policies on captured `podman container inspect` output and hand-varied facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent import podman
from agent.config import config_from_dict
from agent.policies import (
    check_caps,
    check_image_pinned,
    check_memory_limit,
    check_missing,
    check_policies,
    check_read_only_rootfs,
    check_restart_policy,
    policy_enabled,
)

DATA = Path(__file__).parent / "data"


def facts(capture: str, /, **changes: object) -> podman.InspectFacts:
    folder = DATA / "logs" if (DATA / "logs" / f"{capture}.json").exists() else DATA / "podman"
    parsed = podman.parse_inspect((folder / f"{capture}.json").read_text(), "node1", 1)
    assert not isinstance(parsed, podman.ParseError), parsed
    return dataclasses.replace(parsed[0], **changes)


def log(name: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in (DATA / "logs" / name).read_text().splitlines()]


def rules(findings) -> set[str]:
    return {f.rule for f in findings}


# ---------------------------------------------------------------- restart policy

@pytest.mark.parametrize("capture, policy, ok", [
    ("inspect-4.3-no-healthcheck", "always", True),
    ("inspect-tbc-node-allfaults", "unless-stopped", True),
    ("inspect-4.3-web-healthy", "on-failure", False),  # on-failure:3
    ("inspect-tbc-indexer-ui-allfaults", "no", False),  # restart-no fault
    ("inspect-tbc-lightning-allfaults", "on-failure", False),  # dependent-dies fault
    ("inspect-pwc-read-only-no-tmpfs", "no", False),  # no --restart at all: "" reads as no
])
def test_restart_policy_from_captures(capture, policy, ok):
    finding = check_restart_policy(facts(capture))
    assert (finding is None) is ok
    if finding is not None:
        assert finding.rule == "restart-policy" and finding.severity == "error"
        assert f"restart policy {policy}" in finding.message
        assert "--restart=always" in finding.fix


def test_restart_policy_on_failure_mentions_clean_exits_and_retries():
    finding = check_restart_policy(facts("inspect-4.3-web-healthy"))
    assert "max 3 retries" in finding.message
    assert "clean exit" in finding.cause


@pytest.mark.parametrize("allowed, ok", [
    (["on-failure"], True), (["on-failure:3"], True), (["on-failure:5"], False), (["always"], False),
])
def test_restart_policy_in_podman_spellings(allowed, ok):
    web = facts("inspect-4.3-web-healthy")  # on-failure:3
    assert (check_restart_policy(web, allowed) is None) is ok


@pytest.mark.parametrize("capture, changes, says", [
    ("inspect-tbc-indexer-ui-allfaults", {}, "podman never restarts this container: a crash, a clean exit and "
                                              "a reboot all leave it down"),
    ("inspect-tbc-lightning-allfaults", {}, "podman restarts this container only after a non-zero exit: a clean "
                                            "exit (status 0) stays down"),
    ("inspect-4.3-web-healthy", {}, "podman restarts this container only after a non-zero exit, and gives up "
                                    "after 3 restarts: a clean exit (status 0) stays down"),
])
def test_restart_policy_cause_reads_right(capture, changes, says):
    finding = check_restart_policy(facts(capture, **changes))
    assert finding.cause == says
    assert "only never" not in finding.cause


def test_restart_policy_allowed_set_comes_from_config():
    config = config_from_dict({"containers": {"pwp-web": {"restart_policies": ["on-failure"]}},
                               "defaults": {"restart_policies": ["unless-stopped"]}})
    web = facts("inspect-4.3-web-healthy")
    assert check_restart_policy(web, config.restart_policies("pwp-web")) is None
    always = facts("inspect-4.3-no-healthcheck")
    finding = check_restart_policy(always, config.restart_policies("pwp-log3"))
    assert finding is not None and "allowed: unless-stopped" in finding.message


# ---------------------------------------------------------------- memory, image

def test_memory_limit():
    assert check_memory_limit(facts("inspect-tbc-node-allfaults")) is None  # 32m
    finding = check_memory_limit(facts("inspect-tbc-node-ui-allfaults"))  # no-memory-limit fault
    assert finding is not None and finding.evidence == {"memory": 0}
    assert "--memory" in finding.fix


@pytest.mark.parametrize("image, ok", [
    ("localhost/podwarden-testbed:f1ef07d239d4", True),
    ("localhost/podwarden-testbed:latest", False),
    ("docker.io/lightninglabs/lnd", False),  # no tag is latest
    ("localhost:5000/lnd", False),  # a registry port is not a tag
    ("localhost:5000/lnd:v0.18.3-beta", True),
    ("docker.io/lightninglabs/lnd@sha256:" + "0" * 64, True),
])
def test_image_pinned(image, ok):
    finding = check_image_pinned(facts("inspect-tbc-node-allfaults", image=image))
    assert (finding is None) is ok
    if finding is not None:
        assert finding.severity == "warning" and "pin" in finding.fix


def test_image_latest_from_capture():
    finding = check_image_pinned(facts("inspect-tbc-lightning-ui-allfaults"))  # latest-tag fault
    assert finding is not None and finding.evidence["image"] == "localhost/podwarden-testbed:latest"


# ---------------------------------------------------------------- caps

def test_caps_needs_dac_override_with_volume_and_permission_denied():
    indexer = facts("inspect-tbc-indexer-allfaults")
    finding = check_caps(indexer, log("tbc-indexer-lock-permission.log"))
    assert finding is not None and finding.rule == "caps" and finding.severity == "error"
    assert "needs DAC_OVERRIDE" in finding.message and "utxo/LOCK: Permission denied" in finding.message
    assert "--cap-add=DAC_OVERRIDE" in finding.fix
    assert "rootless uid mapping" in finding.fix and "podman unshare chown" in finding.fix
    assert finding.evidence["mounts"] == ["/root/.podwarden-testbed/tbc-/indexer -> /data"]
    assert "CAP_DAC_OVERRIDE" in finding.evidence["cap_drop"]
    assert finding.evidence["log_lines_total"] == sum("Permission denied" in line
                                                      for line in log("tbc-indexer-lock-permission.log"))


def test_caps_seed_line():
    finding = check_caps(facts("inspect-tbc-indexer-allfaults"),
                         ["plyvel._plyvel.IOError: b'IO error: utxo/LOCK: Permission denied'"])
    assert finding is not None


@pytest.mark.parametrize("why, changes, lines", [
    ("no permission error", {}, ["INFO:DB:opened utxo database"]),
    ("DAC_OVERRIDE added back (the seed's fix)", {"cap_add": ("CAP_DAC_OVERRIDE",)}, None),
    ("no writable mount", {"mounts": ()}, None),
    ("read-only mount only", {"mounts": (podman.MountFacts("bind", "/srv", "/data", False),)}, None),
    ("default capabilities", {"cap_drop": ("CAP_AUDIT_WRITE", "CAP_MKNOD", "CAP_NET_RAW"),
                              "effective_caps": ("CAP_CHOWN", "CAP_DAC_OVERRIDE")}, None),
])
def test_caps_quiet_when_a_condition_is_missing(why, changes, lines):
    indexer = facts("inspect-tbc-indexer-allfaults", **changes)
    assert check_caps(indexer, lines if lines is not None else log("tbc-indexer-lock-permission.log")) is None, why


def test_caps_from_effective_caps_of_the_captured_web_container():
    # cap-drop ALL + cap-add NET_BIND_SERVICE, a read-only bind mount: no writable volume
    web = facts("inspect-4.3-web-healthy")
    assert check_caps(web, ["open /data/x: permission denied"], failing=True) is None
    writable = dataclasses.replace(web, mounts=(podman.MountFacts("volume", "webdata", "/data", True),))
    assert check_caps(writable, ["open /data/x: permission denied"], failing=True) is not None


def test_caps_needs_a_fault_now_not_one_line_on_a_healthy_container():
    # the web container runs healthy: one permission line (was an error) is no cause of anything
    web = facts("inspect-4.3-web-healthy", mounts=(podman.MountFacts("volume", "webdata", "/data", True),))
    assert check_caps(web, ["open /data/x: permission denied"]) is None
    died = dataclasses.replace(web, status="exited", running=False, exit_code=1)
    assert check_caps(died, ["open /data/x: permission denied"]) is not None


# ---------------------------------------------------------------- read-only rootfs

def test_read_only_rootfs():
    assert check_read_only_rootfs(facts("inspect-4.3-web-healthy")) is None  # --read-only --tmpfs /tmp
    assert check_read_only_rootfs(facts("inspect-tbc-node-allfaults")) is None  # writable rootfs
    finding = check_read_only_rootfs(facts("inspect-pwc-read-only-no-tmpfs"))  # --read-only-tmpfs=false
    assert finding is not None and finding.severity == "warning"
    assert "--tmpfs /tmp" in finding.fix and finding.evidence["tmpfs"] == []


def test_read_only_rootfs_with_a_volume_on_tmp():
    ro = facts("inspect-pwc-read-only-no-tmpfs",
               mounts=(podman.MountFacts("volume", "scratch", "/tmp/", True),))
    assert check_read_only_rootfs(ro) is None


# ---------------------------------------------------------------- missing, switches

def test_missing_containers():
    config = config_from_dict({"containers": {
        "bitcoin-knots": {}, "lnd": {"role": "lightning"}, "old": {"expected_state": "absent"},
        "electrumx": {"policies": {"missing": False}},
    }})
    findings = check_missing("node1", config, ["bitcoin-knots", "unrelated"])
    assert [(f.container, f.rule, f.severity) for f in findings] == [("lnd", "missing", "error")]
    assert "lnd (lightning) is expected but does not exist on node1" == findings[0].message


def test_check_policies_on_the_all_faults_testbed():
    config = config_from_dict({"containers": {name: {} for name in (
        "tbc-node", "tbc-lightning", "tbc-indexer", "tbc-node-ui", "tbc-lightning-ui", "tbc-indexer-ui")}})
    expected = {
        "tbc-node": set(),
        "tbc-lightning": {"restart-policy"},
        "tbc-indexer": {"caps"},
        "tbc-node-ui": {"memory-limit"},
        "tbc-lightning-ui": {"image-pinned"},
        "tbc-indexer-ui": {"restart-policy"},
    }
    for name, want in expected.items():
        lines = log("tbc-indexer-lock-permission.log") if name == "tbc-indexer" else []
        assert rules(check_policies(facts(f"inspect-{name}-allfaults"), config, lines)) == want, name


def test_policies_switch_off_per_container():
    config = config_from_dict({"containers": {"tbc-lightning-ui": {"policies": {"image-pinned": False}},
                                              "tbc-indexer": {"policies": {"caps": False, "memory-limit": True}}}})
    assert check_policies(facts("inspect-tbc-lightning-ui-allfaults"), config) == []
    indexer = check_policies(facts("inspect-tbc-indexer-allfaults"), config, log("tbc-indexer-lock-permission.log"))
    assert indexer == []
    assert policy_enabled(config.containers["tbc-indexer"], "memory-limit")
    with pytest.raises(ValueError, match="unknown policy"):
        policy_enabled(None, "colour")


def test_unknown_policy_is_a_config_error():
    from agent.errors import ConfigError
    with pytest.raises(ConfigError, match="containers.x.policies: unknown policy 'pinned'"):
        config_from_dict({"containers": {"x": {"policies": {"pinned": False}}}})

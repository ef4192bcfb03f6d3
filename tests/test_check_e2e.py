"""`run_check` end to end: the testbed on real podman, reached through a real sshd as root.

The testbed (prefix `tbc-`, port_base 20330) is brought up clean (the check passes),
with `health-missing-binary` alone (on its own because with `indexer-lock-permission`
the indexer crash-loops and its check rarely gets to run), with `indexer-lock-permission`
alone (one finding for the indexer: the permission cause, its crash loop the evidence),
and with every fault on
plus `podman stop` of the node (so `dependent-dies` and the stop limitation show).
Each fault must yield its finding, for the right container, with the right cause.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
import tomllib
from typing import Any

import pytest

from tests.waiting import wait_for

from agent import testbed
from agent.check import run_check
from agent.recording import recording
from agent.config import TargetConfig, TestbedConfig, config_from_dict
from agent.transport import LocalTransport, make_transport

pytestmark = pytest.mark.e2e

PREFIX = "tbc-"
PORT_BASE = 20330
LATE_AFTER = 3.0
NAMES = testbed.container_names(PREFIX)
NODE, LIGHTNING, INDEXER = NAMES["node"], NAMES["lightning"], NAMES["indexer"]
NODE_UI, LIGHTNING_UI, INDEXER_UI = NAMES["node-ui"], NAMES["lightning-ui"], NAMES["indexer-ui"]
BACKEND = f"{PREFIX}backend"
TESTBED = TestbedConfig(prefix=PREFIX, port_base=PORT_BASE, late_unhealthy_after=LATE_AFTER)

def config():
    # the example config carries the backend-unsupervised rule (a config-defined rule)
    text = testbed.example_config(prefix=PREFIX, port_base=PORT_BASE)
    return config_from_dict(tomllib.loads(text), "tbc-config.toml")


def podman_json(*argv: str) -> Any:
    result = subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def state(name: str) -> dict[str, Any]:
    return podman_json("container", "inspect", name)[0]


@pytest.fixture(scope="module")
def testbed_down():
    """Take the tbc- testbed down at the end, whatever happened."""
    yield
    async def down():
        async with LocalTransport(TargetConfig(name="local", transport="local")) as transport:
            await testbed.down(transport, TESTBED)
    asyncio.run(down())


def up_and_check(target: TargetConfig, faults: list[str], *, before_check=None, db: str | None = None):
    """Bring the testbed up with `faults`, run `before_check()`, then check it over SSH."""
    cfg = config()
    messages: list[str] = []

    async def go():
        async with make_transport(target) as transport:
            await testbed.up(transport, TESTBED, faults)
            if before_check is not None:
                await asyncio.to_thread(before_check)
            if db is None:
                return await run_check(transport, cfg, target, progress=messages.append), None
            async with recording(cfg, "check", [transport.name], str(db)) as rec:
                report = await run_check(transport, cfg, target, rec=rec, progress=messages.append)
                rec.verdict = report.verdict
                return report, rec.run_id

    started = time.monotonic()
    report, run_id = asyncio.run(go())
    return report, run_id, messages, time.monotonic() - started


def findings_by(report) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["container"], f["rule"]): f for f in report.to_json()["findings"]}


# ---------------------------------------------------------------- clean


def test_clean_testbed_passes(root_target, testbed_down):
    report, _, messages, took = up_and_check(root_target, [])
    document = report.to_json()
    assert document["findings"] == [], document["findings"]
    assert [p for p in document["probes"] if not p["ok"]] == []
    assert document["verdict"] == "pass"
    assert document["target"] == root_target.name
    probes = {(p["container"], p["probe"]) for p in document["probes"]}
    # configured probes, plus the health checks of containers whose probes do not run one
    assert {(NODE, "rpc"), (NODE, "rpc-port"), (NODE, "healthcheck"), (LIGHTNING, "healthcheck"),
            (INDEXER, "port"), (NODE_UI, "http"), (BACKEND, "health"), (BACKEND, "active")} <= probes
    inventory = {c["name"]: c for c in document["containers"]}
    assert all(inventory[name]["state"] == "running" and inventory[name]["expected"] for name in NAMES.values())
    assert any(m.endswith(": logs of 6 containers") for m in messages) and messages[-1].endswith("0 failed probe(s) of 14")
    assert took < 90


# ---------------------------------------------------------------- one fault alone


def test_health_check_calling_a_missing_binary(root_target, testbed_down):
    report, _, _, _ = up_and_check(root_target, ["health-missing-binary"])
    found = findings_by(report)
    finding = found[INDEXER, "healthcheck-missing-binary"]
    assert "executable file not found" in finding["message"] and '"curl"' in finding["message"]
    assert "not installed in the image" in finding["cause"]
    assert set(found) == {(INDEXER, "healthcheck-missing-binary")}
    failed = [(p["container"], p["probe"]) for p in report.to_json()["probes"] if not p["ok"]]
    assert failed == [(INDEXER, "healthcheck")]
    assert report.verdict == "fail"


def test_a_crash_loop_on_a_locked_volume_is_one_finding(root_target, testbed_down):
    def looping() -> None:
        wait_for(lambda: state(INDEXER)["RestartCount"] >= 3, 30, "the indexer to crash-loop")

    report, _, _, took = up_and_check(root_target, ["indexer-lock-permission"], before_check=looping)
    indexer = {key[1]: f for key, f in findings_by(report).items() if key[0] == INDEXER}
    assert list(indexer) == ["caps"], {rule: f["message"] for rule, f in indexer.items()}
    caps = indexer["caps"]
    assert "utxo/LOCK: Permission denied" in caps["message"] and "restarted" in caps["message"]
    loop = caps["evidence"]["crash-loop"]
    assert loop["facts"]["restart_count"] >= 3 and "Permission denied" in loop["message"]
    assert caps["evidence"]["death"]["kind"] == "exit"
    assert took < 60


# ---------------------------------------------------------------- every fault at once


def _late_and_stopped() -> None:
    """Let node-ui's /healthz expire and the indexer loop, then `podman stop` the node."""
    wait_for(lambda: state(INDEXER)["RestartCount"] >= 3, 30, "the indexer to crash-loop")
    time.sleep(LATE_AFTER + 0.5)
    subprocess.run(["podman", "stop", NODE], capture_output=True, timeout=60, check=True)
    wait_for(lambda: state(LIGHTNING)["State"]["Status"] == "exited", 30, "lightning to die with its node")


def test_every_fault_is_diagnosed(root_target, testbed_down, tmp_path):
    db = str(tmp_path / "check.db")
    report, run_id, _, took = up_and_check(root_target, list(testbed.FAULTS), before_check=_late_and_stopped, db=db)
    document = report.to_json()
    assert document["verdict"] == "fail"
    found = findings_by(report)

    # indexer-lock-permission: the seed's electrumx, cause and both fixes
    caps = found[INDEXER, "caps"]
    assert "utxo/LOCK: Permission denied" in caps["message"]
    assert "DAC_OVERRIDE" in caps["cause"] and "--cap-add=DAC_OVERRIDE" in caps["fix"]
    assert "rootless uid mapping" in caps["fix"]
    assert (INDEXER, "volume-permission-denied") not in found  # the policy supersedes the rule
    # one finding per root cause: the crash loop is the permission finding's evidence, not a second error
    # (its health check calling curl, the health-missing-binary fault, is another cause when a run gets in)
    assert [key for key, f in found.items() if key[0] == INDEXER and f["severity"] == "error"
            and key[1] != "healthcheck-missing-binary"] == [(INDEXER, "caps")]
    loop = caps["evidence"]["crash-loop"]
    assert loop["facts"]["restart_count"] >= 3 and "Permission denied" in loop["message"]

    # health-needs-credentials: the seed's lnd
    credentials = found[LIGHTNING, "healthcheck-needs-credentials"]
    assert "expected 1 macaroon, got 0" in credentials["message"] and "macaroon" in credentials["cause"]

    # dependent-dies: on-failure policy, and it stayed down after its node went
    assert "restart policy on-failure" in found[LIGHTNING, "restart-policy"]["message"]
    assert "exited cleanly (code 0)" in found[LIGHTNING, "exited-not-restarted"]["message"]

    # podman stop of the node: the seed's known limitation
    stopped = found[NODE, "stopped-not-restarted"]
    assert "unless-stopped" in stopped["message"] and "known limitation" in stopped["cause"]

    # policy faults
    assert found[NODE_UI, "memory-limit"]["severity"] == "error"  # no-memory-limit
    assert found[LIGHTNING_UI, "image-pinned"]["evidence"]["image"].endswith(":latest")  # latest-tag
    assert "restart policy no" in found[INDEXER_UI, "restart-policy"]["message"]  # restart-no

    # late-unhealthy: the UI's health check turned into a 404
    assert "404 Not Found" in found[NODE_UI, "healthcheck-failing"]["message"]

    # backend-unsupervised: a config-defined rule on the service probe's output
    assert "supervisor=-" in found[BACKEND, "backend-unsupervised"]["message"]

    # nothing blamed on containers that have no fault of their own
    assert not [key for key in found if key[0] in (NODE_UI, LIGHTNING_UI, INDEXER_UI)
                and key[1] not in ("memory-limit", "image-pinned", "restart-policy", "healthcheck-failing")]

    # what went to the store: snapshots, every probe that ran, every finding
    with sqlite3.connect(db) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM observations WHERE run_id = ? GROUP BY kind",
                                  (run_id,)).fetchall())
        stored = {(c, r) for c, r in conn.execute("SELECT container, rule FROM findings WHERE run_id = ?",
                                                  (run_id,))}
        verdict = conn.execute("SELECT verdict FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    assert kinds["probe"] == len(document["probes"]) and kinds["snapshot"] >= 6
    assert stored == set(found) and verdict == "fail"
    assert took < 120

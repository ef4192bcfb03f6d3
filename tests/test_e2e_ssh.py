"""End to end over a real sshd on 127.0.0.1: the testbed and `status`, as root and rootless;
fault switches seen through `status` and the logs; a crash loop seen by `watch`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from agent.testbed import example_config
from tests.agent_process import Node, podwarden
from tests.sshd import ROOTLESS_USER

pytestmark = pytest.mark.e2e

STACK = ["node", "lightning", "indexer", "node-ui", "lightning-ui", "indexer-ui"]


@pytest.fixture(scope="module")
def root_node(sshd, tmp_path_factory):
    node = Node(sshd, "root", "tbs-", 23330, tmp_path_factory.mktemp("root"))
    yield node
    node.run("testbed", "down")


@pytest.fixture(scope="module")
def rootless_node(sshd, tmp_path_factory):
    node = Node(sshd, ROOTLESS_USER, "tbr-", 24330, tmp_path_factory.mktemp("rootless"))
    yield node
    node.run("testbed", "down")


def _assert_whole_stack(node: Node, rootless: bool) -> None:
    status = node.status()
    assert status["rootless"] is rootless
    containers = {c["name"]: c for c in status["containers"]}
    for role in STACK:
        entry = containers[node.prefix + role]
        assert entry["expected"] and entry["state"] == "running", entry
        assert entry["restart_policy"] in ("always", "unless-stopped")
        assert ":latest" not in entry["image"] and "podwarden-testbed:" in entry["image"]
    assert containers[node.prefix + "node"]["health"] == "healthy"
    [backend] = status["services"]
    assert backend["name"] == node.prefix + "backend" and backend["active"] is True and backend["health"] == "ok"


def test_root_testbed_and_status_over_ssh(root_node):
    root_node.ok("testbed", "up")
    _assert_whole_stack(root_node, rootless=False)
    table = root_node.ok("status")
    assert "tbs-node" in table and "tbs-backend" in table


def test_rootless_testbed_and_status_over_ssh(rootless_node):
    rootless_node.ok("testbed", "up")
    _assert_whole_stack(rootless_node, rootless=True)


def _logs(node: Node, name: str) -> str:
    # podman logs through the same SSH link, the way a person would run it
    result = subprocess.run(["ssh", "-i", node.target[5], "-o", f"UserKnownHostsFile={node.target[7]}",
                             "-o", "BatchMode=yes", "-p", node.target[3].rsplit(":", 1)[1], "root@127.0.0.1",
                             "podman", "logs", name], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def test_fault_switches_change_status_and_logs(root_node):
    faults = ["indexer-lock-permission", "health-needs-credentials", "no-memory-limit", "latest-tag",
              "restart-no", "backend-unsupervised"]
    root_node.ok("testbed", "up", *[arg for f in faults for arg in ("--fault", f)])
    p = root_node.prefix
    deadline = time.monotonic() + 60
    while True:
        containers = root_node.containers()
        if containers[p + "indexer"]["restarts"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert containers[p + "indexer"]["restarts"] >= 2  # a real crash loop under restart=always
    assert "utxo/LOCK: Permission denied" in _logs(root_node, p + "indexer")
    assert containers[p + "lightning"]["health"] == "unhealthy"
    assert containers[p + "node-ui"]["memory"] == 0
    assert containers[p + "lightning-ui"]["image"].endswith(":latest")
    assert containers[p + "indexer-ui"]["restart_policy"] == "no"
    testbed = json.loads(root_node.ok("testbed", "status", "--json"))
    assert sorted(testbed["faults"]) == sorted(faults)


def test_watch_sees_the_crash_loop(root_node, tmp_path):
    root_node.ok("testbed", "up", "--fault", "indexer-lock-permission")
    db = tmp_path / "watch.db"
    out = root_node.ok("watch", "--for", "15s", "--json", "--db", str(db), timeout=120)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    indexer = [l for l in lines if l["type"] == "change" and l["container"] == root_node.prefix + "indexer"]
    assert any(l["to"] == "crashlooping" for l in indexer), indexer
    crash = next(l for l in indexer if l["to"] == "crashlooping")
    assert "deaths within" in crash["cause"]
    assert db.stat().st_mode & 0o777 == 0o600


def test_stored_changes_are_a_pure_function_of_stored_observations(root_node, tmp_path):
    """The one invariant, per run kind: replaying a stored run into fresh machines gives its stored changes."""
    from agent.replay import first_difference, replay_run
    from store import StoreReader

    root_node.ok("testbed", "up", "--fault", "indexer-lock-permission")
    db = tmp_path / "replay.db"
    root_node.ok("watch", "--for", "10s", "--json", "--db", str(db), timeout=120)
    checked = root_node.run("check", "--json", "--db", str(db), timeout=180)
    assert checked.returncode == 1, checked.stderr  # the fault fails the check
    with StoreReader(db) as reader:
        runs = {run.command: run.id for run in reader.runs()}
        assert set(runs) == {"watch", "check"}
        for command, run_id in runs.items():
            replayed, stored = replay_run(reader, run_id)
            assert len(stored) > (5 if command == "watch" else 3), (command, stored)
            assert first_difference(replayed, stored) is None, command


def test_watch_several_targets_at_once(sshd, root_node, tmp_path):
    """One config, two SSH targets (root and rootless), one `watch --all-targets`."""
    root_node.ok("testbed", "up")
    targets = "".join(
        f'\n[targets.{name}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "{user}"\n'
        f'identity = "{sshd.identity}"\nknown_hosts = "{sshd.known_hosts}"\n'
        for name, user in (("rootnode", "root"), ("rootlessnode", ROOTLESS_USER)))
    config = tmp_path / "two.toml"
    config.write_text(example_config(prefix="tbs-", port_base=23330, target_name="rootnode", extra_targets=targets))
    db = tmp_path / "two.db"
    result = podwarden(["watch", "--all-targets", "--for", "8s", "--json", "--config", str(config), "--db", str(db)])
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    connected = {l["target"] for l in lines if l["type"] == "agent" and l["what"] == "connected"}
    assert connected == {"local", "rootnode", "rootlessnode"}  # the example config also has local
    final = {}
    for l in lines:
        if l["type"] == "change":
            final[(l["target"], l["container"])] = l["to"]
    assert final[("rootnode", "tbs-node")] in ("running", "healthy", "starting")
    assert final[("rootlessnode", "tbs-node")] == "missing"


def test_demo_brings_the_testbed_up_and_runs_the_plan(tmp_path):
    """The README's main job, on local podman (what scripts/demo.sh runs after set-up)."""
    config = tmp_path / "config.toml"
    config.write_text(example_config(prefix="tbd-", port_base=26330))
    db, reports = tmp_path / "demo.db", tmp_path / "reports"
    try:
        result = podwarden(["demo", "--json", "--soak-for", "5s", "--config", str(config), "--db", str(db),
                            "--report-dir", str(reports)], timeout=600)
        assert result.stdout.strip(), result.stderr[-3000:]
        document = json.loads(result.stdout)
        assert result.returncode == 0, [(s["stage"], s["verdict"], s["summary"]) for s in document["stages"]]
        assert document["verdict"] == "pass" and document["db"] == str(db)
        assert [s["stage"] for s in document["stages"]] == ["baseline", "experiments", "check", "soak", "status"]
        names = {c["name"] for c in document["status"]["containers"] if c["expected"]}
        assert names == {"tbd-" + role for role in STACK}
        assert db.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in reports.iterdir()) == [f"run-{document['run_id']}.html",
                                                             f"run-{document['run_id']}.md"]
    finally:
        podwarden(["testbed", "down", "--config", str(config)])

"""Experiments end to end over the real sshd, on the real testbed: the seed's cycle C3.

`experiment restart --all --how crash` passes on the clean testbed, root and rootless;
`--how stop` tells the restart-policy truth on both; `cascade` of the node passes clean
and fails with the `dependent-dies` fault, naming the lightning daemon, what it did and
when; `service` passes and fails with `backend-unsupervised`; a SIGINT half-way through a
cascade leaves every container as it was; and a stored experiment run replays to exactly
its stored changes. Short holds and deadlines keep it quick (the defaults are the seed's).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from agent.replay import first_difference, replay_run
from store import StoreReader
from tests.agent_process import Node
from tests.sshd import ROOTLESS_USER
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

STACK = ("node", "lightning", "indexer", "node-ui", "lightning-ui", "indexer-ui")


def experiment(node: Node, *args: str, timeout: float = 300) -> tuple[int, dict]:
    result = node.run("experiment", *args, "--json", timeout=timeout)
    assert result.stdout.strip(), f"no JSON document (exit {result.returncode}): {result.stderr[-2000:]}"
    return result.returncode, json.loads(result.stdout)


def failing(result: dict) -> str:
    """The failed experiments of a result, whole (the assertion message)."""
    failed = [e for e in result.get("experiments", []) if e.get("verdict") != "pass"]
    return json.dumps(failed or result, indent=1)[-6000:]


def podman_state(node: Node, name: str, user: str) -> str:
    argv = ["podman", "inspect", "--format", "{{.State.Status}}", name]
    if user != "root":
        argv = ["su", "-", user, "-c", " ".join(argv)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def root_bed(sshd, tmp_path_factory):
    node = Node(sshd, "root", "tbx-", 27330, tmp_path_factory.mktemp("exp-root"))
    node.ok("testbed", "up", timeout=300)
    yield node
    node.run("testbed", "down")


@pytest.fixture(scope="module")
def rootless_bed(sshd, tmp_path_factory):
    node = Node(sshd, ROOTLESS_USER, "tby-", 28330, tmp_path_factory.mktemp("exp-rootless"))
    node.ok("testbed", "up", timeout=300)
    yield node
    node.run("testbed", "down")


@pytest.mark.parametrize("bed", ["root_bed", "rootless_bed"])
def test_restart_all_by_crash_passes_on_the_clean_testbed(bed, request, tmp_path):
    node = request.getfixturevalue(bed)
    db = tmp_path / "pw.db"
    code, result = experiment(node, "restart", "--all", "--how", "crash", "--db", str(db))
    assert code == 0, failing(result)
    assert result["verdict"] == "pass"
    subjects = [e["subject"] for e in result["experiments"]]
    # dependency order: the node first, the UIs last; every expected container, UIs included
    assert subjects == [node.prefix + s for s in ("node", "lightning", "indexer", "node-ui", "lightning-ui",
                                                  "indexer-ui")]
    for e in result["experiments"]:
        crash = next(s for s in e["steps"] if s["name"] == "crash")
        back = next(s for s in e["steps"] if s["name"].startswith("back"))
        assert "crash experiment" in crash["detail"]  # the death's reason is ours, not an OOM guess
        assert back["died"] < back["running"] <= back["back"]  # podman's own clock
        assert "recovered in" in back["detail"]
    with StoreReader(db) as reader:
        [run] = reader.runs()
        assert run.command == "experiment" and run.verdict == "pass"
        assert len(reader.experiments(run_id=run.id)) == 6
        replayed, stored = replay_run(reader, run.id)
        assert stored and first_difference(replayed, stored) is None  # the invariant, for an experiment run


@pytest.mark.parametrize("bed, user", [("root_bed", "root"), ("rootless_bed", ROOTLESS_USER)])
def test_stop_tells_the_restart_policy_truth_and_rolls_back(bed, user, request, tmp_path):
    node = request.getfixturevalue(bed)
    ui = node.prefix + "lightning-ui"
    code, result = experiment(node, "restart", ui, "--how", "stop", "--deadline", "3s", "--db", str(tmp_path / "pw.db"))
    assert code == 1, result
    [e] = result["experiments"]
    back = next(s for s in e["steps"] if s["name"].startswith("back"))
    assert back["ok"] is False
    assert "podman stop sets StoppedByUser" in back["detail"] and "restart policy (unless-stopped)" in back["detail"]
    assert "nothing else started it" in back["detail"]
    wait_for(lambda: podman_state(node, ui, user) == "running", 30, f"{ui} started again by the roll-back")


def test_cascade_of_the_node_passes_clean(root_bed, tmp_path):
    code, result = experiment(root_bed, "cascade", root_bed.prefix + "node", "--hold", "5s", "--recovery", "60s",
                              "--db", str(tmp_path / "pw.db"))
    assert code == 0, failing(result)
    [e] = result["experiments"]
    recover = next(s for s in e["steps"] if s["name"] == "dependents recover")
    for name in ("lightning", "indexer"):
        assert f"{root_bed.prefix}{name}: " in recover["detail"] and "reconnected" in recover["detail"]


def test_service_crash_passes(root_bed, tmp_path):
    code, result = experiment(root_bed, "service", root_bed.prefix + "backend", "--db", str(tmp_path / "pw.db"))
    assert code == 0, failing(result)
    [e] = result["experiments"]
    assert next(s for s in e["steps"] if s["name"] == "no container noticed")["ok"] is True
    assert "back in" in next(s for s in e["steps"] if s["name"] == "active again")["detail"]


def test_a_sigint_half_way_through_a_cascade_leaves_every_container_as_it_was(root_bed, tmp_path):
    upstream = root_bed.prefix + "node"
    db = tmp_path / "pw.db"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "experiment", "cascade", upstream, "--hold", "60s",
                             "--db", str(db), *root_bed.target], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        wait_for(lambda: podman_state(root_bed, upstream, "root") in ("exited", "stopped"), 60,
                 "the cascade to stop the node")
        time.sleep(1.0)  # well inside the hold: no condition to wait for, the test wants "half-way"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "rolled back" in err
    for role in STACK:
        wait_for(lambda role=role: podman_state(root_bed, root_bed.prefix + role, "root") == "running", 60,
                 f"{role} running again")
    with StoreReader(db) as reader:
        [run] = reader.runs()
        assert run.verdict == "interrupted" and run.ended_ns is not None
        starts = [o for o in reader.observations(kind="action", container=upstream) if o.action == "podman start"]
        assert starts and "roll back" in starts[0].detail


def test_cascade_fails_when_a_dependent_dies_for_good_and_service_without_supervisor(root_bed, tmp_path):
    root_bed.ok("testbed", "up", "--fault", "dependent-dies", timeout=300)
    try:
        code, result = experiment(root_bed, "cascade", root_bed.prefix + "node", "--hold", "5s", "--recovery", "30s",
                                  "--db", str(tmp_path / "pw.db"))
        assert code == 1, result
        [e] = result["experiments"]
        hold = next(s for s in e["steps"] if s["name"].startswith("hold"))
        lightning = root_bed.prefix + "lightning"
        assert hold["ok"] is False and f"{lightning}: " in hold["detail"]
        assert "dead for good" in hold["detail"] and "exited" in hold["detail"]
        assert "on-failure restarts only non-zero exits" in hold["detail"]
        # the lightning daemon is dead for good now: a service experiment would refuse (steady state)
        root_bed.ok("testbed", "up", "--fault", "backend-unsupervised", timeout=300)
        code, result = experiment(root_bed, "service", root_bed.prefix + "backend", "--deadline", "5s",
                                  "--db", str(tmp_path / "pw.db"))
        assert code == 1, result
        back = next(s for s in result["experiments"][0]["steps"] if s["name"] == "active again")
        assert back["ok"] is False and "nothing restarted it" in back["detail"] and "supervisor=-" in back["detail"]
    finally:
        root_bed.ok("testbed", "up", timeout=300)  # the clean stack for whatever runs next

"""Several verbs, one store, end to end: `check` while `watch` writes the same --db.

On the real testbed (prefix `tmw-`, port_base 36330) over the real sshd: a `watch` records,
a `check` started meanwhile on the same file succeeds with its normal verdict (the clean
testbed passes), `query` during both returns rows consistent with what is stored at that
moment, and afterwards both runs replay to exactly their stored changes (`replay --verify`).
A check stores no events (it reads deaths from podman's events without storing them), so
a second test makes a death while a `soak` and a `watch` follow the same node: one run
stores the event, the other links it, and both still replay exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from tests.agent_process import Agent, Node, podwarden, read_db
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bed(sshd, tmp_path_factory):
    node = Node(sshd, "root", "tmw-", 36330, tmp_path_factory.mktemp("shared-store"))
    node.ok("testbed", "up", timeout=300)
    yield node
    node.run("testbed", "down")


def _query_is_consistent(bed: Node, db, run_id: int) -> int:
    """`query observations --run` between two plain reads: it holds at least the rows stored
    before it and only rows stored by its end, each as stored. Returns how many it listed."""
    before = read_db(db, "SELECT count(*) FROM observations WHERE run_id = ?", (run_id,))[0][0]
    result = podwarden(["query", "observations", "--run", str(run_id), "--json", "--limit", "0",
                        "--config", str(bed.config), "--db", str(db)], timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    stored = {row[0]: row[1:] for row in read_db(
        db, "SELECT id, kind, at_ns, container FROM observations WHERE run_id = ?", (run_id,))}
    assert before <= len(rows) <= len(stored)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert stored[row["id"]] == (row["kind"], row["at_ns"], row["container"]), row
    return len(rows)


def _replays_exactly(bed: Node, db, run_id: int) -> None:
    replayed = podwarden(["replay", "--run", str(run_id), "--verify", "--json",
                          "--config", str(bed.config), "--db", str(db)], timeout=60)
    assert replayed.returncode == 0, (run_id, replayed.stdout[-2000:], replayed.stderr[-2000:])


def _start_watch(bed: Node, sshd, agents, db) -> tuple[Agent, int]:
    watch = Agent(sshd, bed.config, db, "watch")
    agents.append(watch.start())
    watch.wait_connected(60)
    wait_for(lambda: db.exists() and read_db(db, "SELECT count(*) FROM observations")[0][0] > 0, 30,
             "the watch's first rows")
    ((watch_run,),) = read_db(db, "SELECT id FROM runs WHERE command = 'watch'")
    return watch, watch_run


def test_check_while_watch_writes_the_same_store(bed, sshd, agents, tmp_path):
    db = tmp_path / "shared.db"
    watch, watch_run = _start_watch(bed, sshd, agents, db)

    checked: dict = {}
    check = threading.Thread(target=lambda: checked.update(
        result=bed.run("check", "--json", "--db", str(db), timeout=120)))
    started = time.monotonic()
    check.start()
    listed = []
    while check.is_alive():
        listed.append(_query_is_consistent(bed, db, watch_run))
        time.sleep(0.5)
    check.join()
    result = checked["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StoreLocked" not in result.stderr and "already being written" not in result.stderr
    assert watch.alive(), watch.stderr()
    assert listed and listed == sorted(listed)  # the watch kept writing during the check

    runs = dict(read_db(db, "SELECT command, id FROM runs"))
    assert set(runs) == {"watch", "check"}
    assert read_db(db, "SELECT verdict FROM runs WHERE id = ?", (runs["check"],)) == [("pass",)]
    _query_is_consistent(bed, db, runs["check"])
    watch_rows = read_db(db, "SELECT count(*) FROM observations WHERE run_id = ?", (watch_run,))[0][0]
    time.sleep(2)  # the watch goes on writing after the check has closed its writer
    assert read_db(db, "SELECT count(*) FROM observations WHERE run_id = ?", (watch_run,))[0][0] >= watch_rows
    assert watch.terminate() == 0, watch.stderr()
    assert time.monotonic() - started < 60

    for run_id in (runs["check"], runs["watch"]):
        _replays_exactly(bed, db, run_id)
    assert read_db(db, "SELECT count(*) FROM writers") == [(0,)]
    assert oct(db.stat().st_mode & 0o777) == oct(0o600)


def _main_pid(name: str) -> int:
    text = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", name], capture_output=True,
                          text=True, timeout=60).stdout.strip()
    return int(text or 0)


def test_a_death_both_runs_saw_replays_in_both(bed, sshd, agents, tmp_path):
    """A UI killed while a watch and a soak record into one file: both follow podman's events, so
    one stores the death and the other links the stored row to its run; both replay exactly."""
    db = tmp_path / "death.db"
    ui = bed.prefix + "node-ui"
    started = time.monotonic()
    watch, watch_run = _start_watch(bed, sshd, agents, db)
    with open(tmp_path / "soak.out", "wb") as out, open(tmp_path / "soak.err", "wb") as err:
        soak = subprocess.Popen(bed.run_argv("soak", "--for", "12s", "--json", "--db", str(db)),
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: read_db(db, "SELECT count(*) FROM observations o JOIN runs r ON r.id = o.run_id "
                                     "WHERE r.command = 'soak' AND o.kind = 'agent'")[0][0] > 0, 30,
                 "the soak to connect")
        pid = _main_pid(ui)
        assert pid > 0
        os.kill(pid, 9)
        code = soak.wait(60)
    finally:
        if soak.poll() is None:
            soak.kill()
            soak.wait(10)
    assert code in (0, 1), (tmp_path / "soak.err").read_text()[-3000:]  # the death is drift: its verdict
    assert watch.alive(), watch.stderr()
    ((soak_run,),) = read_db(db, "SELECT id FROM runs WHERE command = 'soak'")
    died = read_db(db, "SELECT id, run_id FROM observations WHERE kind = 'event' AND status = 'died' "
                       "AND container = ?", (ui,))
    assert len(died) == 1, died  # stored once
    ((died_id, first_run),) = died
    second_run = soak_run if first_run == watch_run else watch_run
    assert read_db(db, "SELECT count(*) FROM run_observations WHERE run_id = ? AND observation_id = ?",
                   (second_run, died_id)) == [(1,)]
    assert watch.terminate() == 0, watch.stderr()
    for run_id in (soak_run, watch_run):
        _replays_exactly(bed, db, run_id)
    wait_for(lambda: _main_pid(ui) not in (0, pid), 30, f"{ui} running again")
    assert time.monotonic() - started < 60

"""Several verbs, one store, end to end: `check` while `watch` writes the same --db.

On the real testbed (prefix `tmw-`, port_base 36330) over the real sshd: a `watch` records,
a `check` started meanwhile on the same file succeeds with its normal verdict (the clean
testbed passes), `query` during both returns rows consistent with what is stored at that
moment, and afterwards both runs replay to exactly their stored changes (`replay --verify`).
"""

from __future__ import annotations

import json
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


def test_check_while_watch_writes_the_same_store(bed, sshd, agents, tmp_path):
    db = tmp_path / "shared.db"
    watch = Agent(sshd, bed.config, db, "watch")
    agents.append(watch.start())
    watch.wait_connected(60)
    wait_for(lambda: db.exists() and read_db(db, "SELECT count(*) FROM observations")[0][0] > 0, 30,
             "the watch's first rows")
    ((watch_run,),) = read_db(db, "SELECT id FROM runs WHERE command = 'watch'")

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
        replayed = podwarden(["replay", "--run", str(run_id), "--verify", "--json",
                              "--config", str(bed.config), "--db", str(db)], timeout=60)
        assert replayed.returncode == 0, (run_id, replayed.stdout[-2000:], replayed.stderr[-2000:])
    assert read_db(db, "SELECT count(*) FROM writers") == [(0,)]
    assert oct(db.stat().st_mode & 0o777) == oct(0o600)

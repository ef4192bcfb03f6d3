"""The morning verbs on a store written the way a run writes it (recording + sink), no node needed.

Hostile text in what the node said must stay inert in the Markdown and HTML reports; the
timeline's axis is the node's clock even when this machine's is hours off; an unfinished
soak and a rehearsal (--dry-run) are reported as what they are; `query --json` stays one
valid document when a row fails half-way; `report -o` into a folder that is a file is a
clear error; and `replay --verify` fails when the stored changes are not what the
observations make.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import report as morning
from agent.config import config_from_dict
from agent.recording import recording
from machines.observations import ActionObs, AgentObs, EventObs, LogObs, ProbeObs, SnapshotObs
from store import StoreReader
from tests.agent_process import podwarden

S = 1_000_000_000
NODE_T0 = 1_900_000_000 * S  # the node's clock: far from this machine's, as on a skewed node
HOSTILE = '<script>alert("x")</script> | cell\nnext line `code` &amp;'


def record_night(db: Path, *, command: str = "run", skew_ns: int = NODE_T0, soak_ended: bool = True,
                 dry_run: bool = False) -> int:
    """One recorded run: a container that crashes once and comes back, a hostile log line and
    probe output, a finding, an action and a soak row. Returns the run id."""
    config = config_from_dict({"containers": {"web": {"expected_state": "running"}}})

    async def go() -> int:
        async with recording(config, command, ["n1"], str(db)) as rec:
            t = skew_ns
            put = rec.sink.put
            put(SnapshotObs("n1", "web", t, True, "c1", "running", pid=10, started_at_ns=t - S,
                            restart_policy="always", image="img:1"))
            put(AgentObs("n1", "", t + S // 2, "window-start", ""))
            put(LogObs("n1", "web", t + 1 * S, HOSTILE, is_error=True, seq=1))
            put(ActionObs("n1", "web", t + 2 * S, "crash", "kill -9 10", dry_run))
            put(EventObs("n1", "web", t + 2 * S + 10_000_000, "c1", "died", exit_code=137))
            put(EventObs("n1", "web", t + 2 * S + 20_000_000, "c1", "restart"))
            put(EventObs("n1", "web", t + 2 * S + 90_000_000, "c1", "start"))
            put(ProbeObs("n1", "web", t + 3 * S, "http", "http", True, 3.0, excerpt=HOSTILE))
            put(AgentObs("n1", "", t + 5 * S, "window-end", ""))
            rec.add_finding(SimpleNamespace(target="n1", container="web", rule="error-lines", severity="warning",
                                            message=HOSTILE, cause=HOSTILE, fix="read <b>this</b>",
                                            evidence={"log_lines": [HOSTILE]}), t + 4 * S)
            rec.store.add_experiment(rec.run_id, kind="soak", subject="n1", started_ns=t + 3 * S,
                                     ended_ns=t + 5 * S if soak_ended else None,
                                     steps=[{"container": "web", "target": "n1", "kind": "error", "at_ns": t + 4 * S,
                                             "reason": HOSTILE}], verdict="fail")
            rec.verdict = "dry-run" if dry_run else "fail"
            return rec.run_id

    return asyncio.run(go())


def test_a_quiet_run_with_no_change_and_no_finding_is_reported(tmp_path):
    """A night where nothing happened: log lines only (found by bench_morning: the axis's end
    was computed from an empty list of changes and findings)."""
    db = tmp_path / "quiet.db"
    config = config_from_dict({"containers": {"web": {"expected_state": "running"}}})

    async def go() -> int:
        async with recording(config, "watch", ["n1"], str(db)) as rec:
            for n in range(3):
                rec.sink.put(LogObs("n1", "web", NODE_T0 + n * S, f"all quiet {n}", seq=n))
            rec.verdict = "pass"
            return rec.run_id

    run_id = asyncio.run(go())
    with StoreReader(db) as reader:
        report = morning.build(reader, run_id)
    assert report.end_ns >= NODE_T0 + 2 * S and report.start_ns <= NODE_T0  # the lines' own times
    assert "<svg" in morning.render(report, "html")
    assert f"run {run_id}" in morning.render(report, "md").lower()


def test_hostile_text_stays_inert_and_the_axis_is_the_nodes_clock(tmp_path):
    db = tmp_path / "pw.db"
    run_id = record_night(db)
    built = morning.load(db, run_id)
    assert built.start_ns == NODE_T0 and built.end_ns >= NODE_T0 + 4 * S  # not this machine's run times
    md = morning.markdown(built)
    assert "<script>" not in md and "&lt;script&gt;" in md and "<b>" not in md
    issue = next(line for line in md.splitlines() if "error-lines" in line)
    assert "next line" in issue  # the newline did not break the list item
    html = morning.html_report(built)
    assert "<script" not in html and "&lt;script&gt;" in html and "<b>this" not in html
    [lane] = built.lanes
    assert [state for _, state, _ in lane.spans] == ["running", "exited", "restarting", "running"]
    assert {mark["kind"] for mark in lane.marks} == {"death", "action", "finding", "drift"}
    assert [row["state"] for row in built.final] == ["running"]


def test_an_unfinished_soak_and_a_rehearsal_are_reported_as_such(tmp_path):
    db = tmp_path / "pw.db"
    real = record_night(db)
    unfinished = morning.markdown(morning.load(db, real))
    assert "## Soak" in unfinished and "over -" not in unfinished
    record_night(db, soak_ended=False)
    assert "unfinished" in morning.markdown(morning.load(db))  # the newest run by default
    rehearsal = record_night(db, dry_run=True)
    with StoreReader(db) as reader:
        assert morning.default_run(reader) != rehearsal  # a --dry-run run is not the night


def test_report_exit_codes_and_an_unwritable_output(tmp_path):
    db = tmp_path / "pw.db"
    run_id = record_night(db)
    shown = podwarden(["report", "--run", str(run_id), "--db", str(db)])
    assert shown.returncode == 1 and "**Verdict: FAIL**" in shown.stdout  # the run failed: so does its report
    (tmp_path / "afile").write_text("")
    refused = podwarden(["report", "--run", str(run_id), "--db", str(db), "-o", str(tmp_path / "afile" / "x.html")])
    assert refused.returncode == 2 and "cannot write it" in refused.stderr and "Traceback" not in refused.stderr
    html = podwarden(["report", "--run", str(run_id), "--db", str(db), "-o", str(tmp_path / "night.html")])
    assert html.returncode == 1 and (tmp_path / "night.html").read_text().startswith("<!doctype html>")
    missing = podwarden(["report", "--run", "99", "--db", str(db)])
    assert missing.returncode == 1 and "no run 99" in missing.stderr
    empty = tmp_path / "empty.db"
    record_night(empty)
    with sqlite3.connect(empty) as conn:
        conn.execute("DELETE FROM experiments")
        conn.execute("DELETE FROM findings")
        conn.execute("DELETE FROM changes")
        conn.execute("DELETE FROM observations")
        conn.execute("DELETE FROM runs")
    none = podwarden(["report", "--db", str(empty)])
    assert none.returncode == 2 and "no run recorded yet" in none.stderr


def test_query_json_stays_one_document_when_a_row_fails(tmp_path):
    db = tmp_path / "pw.db"
    record_night(db)
    result = podwarden(["query", "sql", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
                                        "SELECT i, CASE WHEN i > 2500 THEN json('bad') ELSE 1 END AS x FROM n",
                        "--json", "--db", str(db)])
    assert result.returncode == 1 and "malformed JSON" in result.stderr
    rows = json.loads(result.stdout)  # closed, valid: the rows read before the failure
    assert 0 < len(rows) <= 2500 and [row["i"] for row in rows] == list(range(1, len(rows) + 1))
    # a log line that looks like JSON stays a string
    lines = json.loads(podwarden(["query", "logs", "--json", "--db", str(db)]).stdout)
    assert lines[0]["line"] == HOSTILE
    runs = json.loads(podwarden(["query", "runs", "--json", "--db", str(db)]).stdout)
    assert isinstance(runs[0]["config"], dict) and runs[0]["targets"] == ["n1"]  # the store's JSON columns


def test_replay_verify_fails_when_the_stored_changes_differ(tmp_path):
    db = tmp_path / "pw.db"
    run_id = record_night(db)
    same = podwarden(["replay", "--run", str(run_id), "--verify", "--db", str(db)])
    assert same.returncode == 0 and "verified: identical" in same.stdout, same.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE changes SET to_state = 'crashlooping' WHERE to_state = 'exited'")
    differs = podwarden(["replay", "--run", str(run_id), "--verify", "--json", "--db", str(db)])
    assert differs.returncode == 1
    document = json.loads(differs.stdout)
    assert document["verified"] is False and "crashlooping" in document["difference"]


@pytest.mark.parametrize("since", ["2026-11-30T02:00:00+01:00", "2026-11-30 01:00", "2026-11-30T01:00:00Z"])
def test_times_in_any_form_mean_the_same_instant(since):
    from agent.query import parse_when

    assert parse_when("--since", since) == parse_when("--since", "2026-11-30T01:00:00.000000000Z")
    assert parse_when("--since", "2h", now_ns=10_000 * S) == (10_000 - 7200) * S


def test_replay_finds_the_drift_again_with_the_config_of_now(tmp_path):
    db = tmp_path / "pw.db"
    run_id = record_night(db)
    config = tmp_path / "now.toml"
    config.write_text('[containers.web]\nexpected_state = "running"\n')
    document = json.loads(podwarden(["replay", "--run", str(run_id), "--json", "--db", str(db),
                                     "--config", str(config)]).stdout)
    kinds = {(d["container"], d["kind"]) for d in document["drifts"]}
    assert ("web", "error") in kinds and ("web", "restart") in kinds, document["drifts"]
    assert [a["action"] for a in document["actions"]] == ["crash"]
    assert [f["rule"] for f in document["findings"]] == ["error-lines"]
    # a config that expects it stopped: the same night drifts differently (new rules, old night)
    config.write_text('[containers.web]\nexpected_state = "stopped"\n')
    stopped = json.loads(podwarden(["replay", "--run", str(run_id), "--json", "--db", str(db),
                                    "--config", str(config)]).stdout)
    assert {d["kind"] for d in stopped["drifts"]} != {d["kind"] for d in document["drifts"]} or \
        len(stopped["drifts"]) != len(document["drifts"])
    text = podwarden(["replay", "--run", str(run_id), "--db", str(db), "--config", str(config)]).stdout
    assert "ACTION crash" in text and "FINDING warning error-lines" in text and "DRIFT" in text

"""`podwarden run` and `podwarden report` end to end over the real sshd, on the real testbed.

The whole plan on a clean testbed passes every stage, stores one `run` whose replay gives
exactly its stored changes, and writes its Markdown and HTML report. A crash by hand
during the soak of a second run fails it, and its report says what broke, when, why and
that it recovered: in the Markdown, in the JSON, and on the HTML timeline as chromium (a
real browser, headless) draws it: the lanes in their state colours, the drift mark there.
Short holds and windows keep it quick (the defaults are the seed's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.replay import first_difference, replay_run
from agent.report import STATE_COLOURS
from store import StoreReader
from tests.agent_process import Node, podwarden
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

DRIFT_COLOUR = (0x7B, 0x2C, 0xBF)


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@pytest.fixture(scope="module")
def bed(sshd, tmp_path_factory):
    node = Node(sshd, "root", "tbn-", 32330, tmp_path_factory.mktemp("run-root"))
    node.ok("testbed", "up", timeout=300)
    yield node
    node.run("testbed", "down")


def main_pid(name: str) -> int:
    text = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", name], capture_output=True, text=True,
                          timeout=60).stdout.strip()
    return int(text or 0)


def screenshot(html: Path, png: Path) -> None:
    """Chromium draws the report headless: no sandbox (root in CI), no network of its own."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: run scripts/setup.sh as root"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
         f"--user-data-dir={png.parent / 'chromium-profile'}", "--window-size=1200,700", f"--screenshot={png}",
         html.as_uri()], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]


def colours_in(png: Path) -> dict[tuple[int, int, int], int]:
    from PIL import Image

    with Image.open(png) as image:
        pixels = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return {colour: count for count, colour in pixels}


@pytest.fixture(scope="module")
def night(bed, tmp_path_factory):
    """The whole plan, once, on the clean testbed: (the CLI's result, the store, the reports folder)."""
    tmp = tmp_path_factory.mktemp("night")
    db, reports = tmp / "pw.db", tmp / "reports"
    result = bed.run("run", "--soak-for", "10s", "--hold", "3s", "--recovery", "60s", "--db", str(db),
                     "--report-dir", str(reports), "--json", timeout=600)
    return result, db, reports


def test_the_whole_plan_passes_on_the_clean_testbed_and_replays(bed, night):
    result, db, reports = night
    assert result.stdout.strip(), result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert result.returncode == 0, [(s["stage"], s["verdict"], s["summary"]) for s in outcome["stages"]]
    assert [(s["stage"], s["verdict"]) for s in outcome["stages"]] == [
        ("baseline", "pass"), ("experiments", "pass"), ("check", "pass"), ("soak", "pass"), ("status", "pass")]
    kinds = [(e["kind"], e["subject"]) for e in outcome["experiments"]["experiments"]]
    up = [bed.prefix + s for s in ("node", "lightning", "indexer", "node-ui", "lightning-ui", "indexer-ui")]
    assert kinds == ([("restart", name) for name in up] + [("cascade", bed.prefix + s) for s in
                                                           ("node", "lightning", "indexer")]
                     + [("service", bed.prefix + "backend")])
    # the check after the experiments counts none of their deaths against the node
    assert not [f for f in outcome["check"]["findings"] if f["rule"] in ("crash-loop", "recovered-incident")]
    assert "[2/5 experiments" in result.stderr and "[4/5 soak" in result.stderr  # one progress display, on stderr

    with StoreReader(db) as reader:
        [run] = reader.runs()
        assert run.command == "run" and run.verdict == "pass"
        stored = [(e.kind, e.verdict) for e in reader.experiments(run_id=run.id)]
        assert stored.count(("check", "pass")) == 2 and ("soak", "pass") in stored
        assert len([k for k, _ in stored if k in ("restart", "cascade", "service")]) == 10
        replayed, changes = replay_run(reader, run.id)
        assert changes and first_difference(replayed, changes) is None  # the invariant, for a `run`

    md, html = reports / f"run-{run.id}.md", reports / f"run-{run.id}.html"
    assert [Path(p) for p in outcome["reports"]] == [md, html]
    text = md.read_text()
    for heading in ("## Issue Log", "## Health checks", "## Checks", "## Experiments", "## Soak",
                    "## Remediation and actions", "## Final state", "## Timeline"):
        assert heading in text
    assert "- **Verdict: PASS**" in text and f"| cascade {bed.prefix}node | PASS |" in text
    page = html.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def query(bed: Node, db: Path, *args: str) -> subprocess.CompletedProcess:
    """`podwarden query` reads the store alone: no target, no config."""
    return podwarden(["query", *args, "--db", str(db)])


def test_query_answers_from_the_store_and_never_writes(bed, night):
    _, db, _ = night
    before = db.read_bytes()
    prefix = bed.prefix
    # every crash the experiments made, as podman timed it, with its reason
    result = query(bed, db, "changes", "--container", prefix + "node", "--status", "exited", "--json")
    assert result.returncode == 0, result.stderr
    deaths = json.loads(result.stdout)
    assert deaths and all("crash experiment" in d["cause"] for d in deaths)
    # the lightning daemon's reconnect lines, found by a regular expression, newest first
    result = query(bed, db, "logs", "--container", prefix + "lightning", "--grep", "connected to node backend",
                   "--newest-first", "--limit", "2", "--csv")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.startswith("id,run_id,target,container,at_ns") and 1 <= len(rows) <= 2
    assert all("connected to node backend" in row for row in rows)
    stamps = [int(row.split(",")[4]) for row in rows]
    assert stamps == sorted(stamps, reverse=True)
    # a time window: nothing before the run started
    result = query(bed, db, "runs", "--until", "2000-01-01", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    # SQL reads; it cannot write, attach or hold several statements
    result = query(bed, db, "sql", "SELECT kind, count(*) AS n FROM experiments GROUP BY kind ORDER BY kind", "--json")
    assert {row["kind"]: row["n"] for row in json.loads(result.stdout)} == {
        "cascade": 3, "check": 2, "restart": 6, "service": 1, "soak": 1}
    for sql in ("DELETE FROM runs", "UPDATE runs SET verdict = 'pass'", "DROP TABLE changes",
                "SELECT 1; DELETE FROM runs", f"ATTACH DATABASE '{db}' AS other", "PRAGMA journal_mode = DELETE"):
        refused = query(bed, db, "sql", sql)
        assert refused.returncode == 1, (sql, refused.stdout)
        assert refused.stderr.startswith("podwarden: error: store "), refused.stderr
    # a table by default; unknown subjects and bad times are usage errors
    table = query(bed, db, "findings")
    assert table.returncode == 0 and "findings:" in table.stdout
    assert query(bed, db, "nosuch").returncode == 2
    assert query(bed, db, "logs", "--since", "yesterday").returncode == 2
    assert db.read_bytes() == before  # nothing above wrote to the store


def test_replay_verifies_the_run_and_replays_its_soak_window(bed, night):
    result, db, _ = night
    run_id = json.loads(result.stdout)["run_id"]
    verified = podwarden(["replay", "--run", str(run_id), "--verify", "--db", str(db)])
    assert verified.returncode == 0, verified.stderr
    assert "verified: identical to the" in verified.stdout and "-> exited" in verified.stdout
    document = json.loads(podwarden(["replay", "--run", str(run_id), "--verify", "--json", "--db", str(db)]).stdout)
    assert document["verified"] is True and document["stored_changes"] == len(document["changes"]) > 0
    soak = json.loads(podwarden(["replay", "--soak", str(run_id), "--json", "--db", str(db)]).stdout)
    assert soak["warm_up_snapshots"] >= 6 and soak["observations"] > 0
    assert soak["since"] and soak["until"] and soak["until"] - soak["since"] >= 10 * 1_000_000_000
    # a window cannot be verified: its replay does not start where the live machines did
    refused = podwarden(["replay", "--soak", str(run_id), "--verify", "--db", str(db)])
    assert refused.returncode == 2 and "--verify needs a whole run" in refused.stderr


def test_a_crash_during_the_soak_fails_the_run_and_the_report_says_what_when_why(bed, night, tmp_path):
    db, reports = tmp_path / "pw.db", tmp_path / "reports"
    ui = bed.prefix + "node-ui"
    process = subprocess.Popen(
        [*bed.run_argv("run", "--skip", "experiments", "--soak-for", "20s", "--db", str(db),
                       "--report-dir", str(reports), "--json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("soak 0s" in line or "drift so far" in line or "drifts so far" in line
                             for line in stderr), 120, "the soak's window to open")
        crashed_at = time.time_ns()
        killed: set[int] = set()
        for _ in range(3):  # three crashes by hand, from outside: the restart policy brings it back each time
            wait_for(lambda: main_pid(ui) not in killed | {0}, 30, f"{ui} running again")
            pid = main_pid(ui)
            os.kill(pid, 9)
            killed.add(pid)
        stdout, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    assert process.returncode == 1, "".join(stderr)[-3000:]
    outcome = json.loads(stdout)
    assert [(s["stage"], s["verdict"]) for s in outcome["stages"]] == [
        ("baseline", "pass"), ("experiments", "skipped"), ("check", "pass"), ("soak", "fail"), ("status", "pass")]
    drifts = [d for d in outcome["soak"]["drifts"] if d["container"] == ui]
    assert drifts and drifts[0]["at_ns"] >= crashed_at - 1_000_000_000
    assert "SIGKILL" in drifts[0]["reason"], drifts[0]

    run_id = outcome["run_id"]
    md = (reports / f"run-{run_id}.md").read_text()
    assert "- **Verdict: FAIL**" in md and "## Soak" in md and ui in md and "SIGKILL" in md
    shown = bed.run("report", "--run", str(run_id), "--format", "json", "--db", str(db))
    assert shown.returncode == 1, shown.stderr  # the run failed: so does its report, for scripts
    report = json.loads(shown.stdout)
    lane = next(lane for lane in report["timeline"]["lanes"] if lane["container"] == ui)
    states = [span["state"] for span in lane["spans"]]
    assert "exited" in states and "crashlooping" in states, states  # it broke, again and again
    assert subprocess.run(["podman", "inspect", "--format", "{{.State.Status}}", ui], capture_output=True,
                          text=True).stdout.strip() == "running"  # and podman brought it back
    assert any(mark["kind"] == "drift" for mark in lane["marks"])
    assert sum(1 for mark in lane["marks"] if mark["kind"] == "death") >= 3

    png = tmp_path / "report.png"
    screenshot(reports / f"run-{run_id}.html", png)
    seen = colours_in(png)
    for state in ("healthy", "running", "crashlooping"):
        assert seen.get(rgb(STATE_COLOURS[state]), 0) > 50, f"no {state} span drawn"
    assert seen.get(DRIFT_COLOUR, 0) > 10, "no drift mark drawn"
    assert len(seen) > 50, "a blank page"

    # the soak window again, with the config of now: the same drift, at the same times
    replayed = json.loads(podwarden(["replay", "--soak", str(run_id), "--json", "--db", str(db),
                                     "--config", str(bed.config)]).stdout)
    again = [(d["container"], d["kind"], d["at_ns"]) for d in replayed["drifts"]]
    assert again == [(d["container"], d["kind"], d["at_ns"]) for d in outcome["soak"]["drifts"]]

    missing = bed.run("report", "--run", "999", "--db", str(db))
    assert missing.returncode == 1 and "no run 999" in missing.stderr

"""The evidence `check` reads: recent log lines with their times, the kernel's OOM kills,
and podman's own judgement of a health check run. Real captures from this machine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent import podman
from agent.check import judge_health_probe
from agent.kernel import OomScan, parse_oom_kills
from agent.probes import ProbeResult
from agent.recent_logs import error_lines, output_lines, parse_logs_output
from agent.config import DEFAULT_ERROR_PATTERNS
from machines.observations import ProbeObs

LOGS = Path(__file__).parent / "data" / "logs"
OOM_ID = json.loads((LOGS / "inspect-chk-oom-killed.json").read_text())[0]["Id"]


# ---------------------------------------------------------------- log lines


@pytest.mark.parametrize("separator", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_line_is_split_on_newline_only(separator):
    # a progress line that redraws itself, then an error in the same record: str.splitlines lost the error
    stdout = (f"2026-11-30T13:58:42.934130576Z downloading 10%{separator}downloading 100%{separator}"
              f"ERROR: checksum mismatch\n2026-11-30T13:58:43.000000001Z done\n")
    records = parse_logs_output(stdout, "", "c")
    assert [r.at_ns for r in records] == [1796047122934130576, 1796047123000000001]
    assert records[0].text.endswith("ERROR: checksum mismatch")
    assert error_lines([r.text for r in records], DEFAULT_ERROR_PATTERNS) == [records[0].text]


def test_stdout_and_stderr_merge_by_time_and_podman_noise_is_dropped():
    stdout = "2026-11-30T13:58:42.000000002Z out-2\r\n2026-11-30T13:58:42.000000004Z out-4\n"
    stderr = ('time="2026-11-30T13:58:42Z" level=warning msg="something"\n'
              "2026-11-30T13:58:42.000000001Z err-1\n2026-11-30T13:58:42.000000003Z err-3\n")
    assert [r.text for r in parse_logs_output(stdout, stderr, "c")] == ["err-1", "out-2", "err-3", "out-4"]


def test_output_lines():
    assert output_lines("a\r\nb\rc\n\nd") == ["a", "b\rc", "", "d"]
    assert output_lines("") == [] and output_lines("\n") == [""]


def test_captured_logs_keep_their_times():
    text = (LOGS / "tbc-indexer-lock-permission.log").read_text()
    records = parse_logs_output(text, "", "tbc-indexer")
    assert len(records) == 40 and records == sorted(records, key=lambda r: r.at_ns)
    assert records[0] == podman.LogLine("tbc-indexer", 1795775259190032127, "touch: /data/utxo/LOCK: Permission denied")


# ---------------------------------------------------------------- the kernel's OOM killer


def test_oom_kill_from_the_captured_kernel_log():
    text = (LOGS / "dmesg-chk-oom-killed.txt").read_text()
    kills = parse_oom_kills(text, [OOM_ID, "0" * 64])
    assert list(kills) == [OOM_ID]
    (kill,) = kills[OOM_ID]
    assert (kill.pid, kill.task, kill.constraint, kill.by_own_limit) == (4787, "sh", "CONSTRAINT_MEMCG", True)
    assert kill.at_ns == 1796047361384698000  # 2026-11-30T14:02:41,384698+00:00, the node's clock
    assert f"oom_memcg=/libpod_parent/libpod-{OOM_ID}" in kill.line
    assert kill.killed_line.startswith("Memory cgroup out of memory: Killed process 4787 (sh)")
    assert kill.evidence == f"{kill.line} | {kill.killed_line}"
    assert parse_oom_kills(text, [OOM_ID], since_ns=kill.at_ns + 1) == {}


def test_oom_kill_in_journal_format():
    dmesg = (LOGS / "dmesg-chk-oom-killed.txt").read_text().split("\n")
    journal = "\n".join(line[:26].replace(",", ".") + "+0000 node1 kernel: " + line[33:]
                        for line in dmesg if line)
    (kill,) = parse_oom_kills(journal, [OOM_ID], style="journal-iso")[OOM_ID]
    assert kill.at_ns == 1796047361384698000 and kill.killed_line


def test_oom_scan_matches_a_kill_to_a_death_by_time():
    kills = parse_oom_kills((LOGS / "dmesg-chk-oom-killed.txt").read_text(), [OOM_ID])
    scan = OomScan(True, "dmesg --time-format iso", "", kills)
    died_ns = 1796047361911011014  # podman's `died` event: 0.5 s after the kernel's stamp
    assert scan.near(OOM_ID, died_ns, 5 * 10**9) is kills[OOM_ID][0]
    assert scan.near(OOM_ID, died_ns + 60 * 10**9, 5 * 10**9) is None
    assert OomScan(False, reason="no").for_container(OOM_ID) == ()


# ---------------------------------------------------------------- health as podman judges it


def _facts(capture: str, **changes) -> podman.InspectFacts:
    parsed = podman.parse_inspect((LOGS / f"{capture}.json").read_text(), "node1", 1)
    return dataclasses.replace(parsed[0], **changes)


def _failed_run(container: str) -> ProbeResult:
    obs = ProbeObs("node1", container, 1, "healthcheck", "podman-healthcheck", False, 12.0, "",
                   "unhealthy: the check printed nothing")
    return ProbeResult(obs, 1, "")


def test_a_failed_run_inside_the_start_period_passes_as_podman_says_starting():
    obs = judge_health_probe(_failed_run("chk-benign"), _facts("inspect-chk-benign-start-period"))
    assert obs.ok
    assert obs.detail.startswith("podman still says starting (a failure inside the start period does not count)")


def test_a_failed_run_below_retries_passes_as_podman_says_healthy():
    obs = judge_health_probe(_failed_run("chk-retry"), _facts("inspect-chk-health-retrying"))
    assert obs.ok and "1 failure in a row of the 3 it allows" in obs.detail


def test_a_run_podman_counts_unhealthy_stays_failed():
    unhealthy = _facts("inspect-chk-health-retrying", health="unhealthy", health_failing_streak=3)
    assert not judge_health_probe(_failed_run("chk-retry"), unhealthy).ok
    timed_out = dataclasses.replace(_failed_run("chk-retry"), exit_status=None)
    assert not judge_health_probe(timed_out, _facts("inspect-chk-health-retrying")).ok

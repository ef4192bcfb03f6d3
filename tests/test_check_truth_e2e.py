"""`run_check` tells the present truth, end to end on real podman through the real sshd.

Containers are named `tct-*` and run from `localhost/tct-busybox:1` (the testbed's image,
imported under our own name). As root: a crash loop on a real EACCES that then recovers
(an error while it loops, an info incident once it has stayed up for the stable
period), a container killed by the kernel's OOM killer past `--memory 16m`, a real
segfault (busybox `wget -T`, exit 139), a healthy container whose log holds benign
lines and whose health check fails inside its start period, and one whose check failed
once of the three times podman allows (info, not an error). Rootless: the kernel log
cannot be read (kernel.dmesg_restrict = 1), which the check says, and a user's
`podman kill` is named from podman's events. (Rootless podman on cgroup v1 ignores
--memory, so the OOM kill is a root test.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from typing import Any

import pytest

from agent import testbed
from agent.check import CheckReport, run_check
from agent.config import TargetConfig, config_from_dict
from agent.kernel import oom_kills
from agent.transport import make_transport
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

IMAGE = "localhost/tct-busybox:1"
STABLE_S = 10  # [machine] stable_period for these tests: a crash loop is over after 10 s up
ROOT_NAMES = ("tct-rec", "tct-oom", "tct-segv", "tct-benign", "tct-retry", "tct-old")
ROOTLESS_NAMES = ("tct-killed",)


def podman(*argv: str, input: bytes | None = None, check: bool = True, timeout: float = 120) -> str:
    # cwd: conmon writes an empty `oom` file into podman's working directory on an OOM kill
    result = subprocess.run(["podman", *argv], input=input, capture_output=True, timeout=timeout,
                            cwd=tempfile.gettempdir())
    if check:
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def inspect(name: str, template: str) -> str:
    return podman("inspect", name, "--format", template).strip()


def import_argv() -> list[str]:
    return ["podman", "import", "--change", 'CMD ["/bin/sh"]', "-", IMAGE]


@pytest.fixture(scope="module")
def root_image():
    """The testbed's busybox image as IMAGE for root; our containers removed at the end."""
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        subprocess.run(import_argv(), input=testbed.image_tar()[0], capture_output=True, timeout=300, check=True)
    podman("rm", "--force", "--ignore", "--time", "0", *ROOT_NAMES)
    yield IMAGE
    podman("rm", "--force", "--ignore", "--time", "0", *ROOT_NAMES, check=False)


def run_container(name: str, *args: str) -> None:
    podman("run", "-d", "--name", name, "--network", "host", "--stop-signal", "KILL", *args)


def check(target: TargetConfig, containers: dict[str, Any], crashloop_window: str = "1m") -> CheckReport:
    config = config_from_dict({"containers": containers,
                               "machine": {"stable_period": f"{STABLE_S}s", "crashloop_window": crashloop_window}})

    async def go() -> CheckReport:
        async with make_transport(target) as transport:
            return await run_check(transport, config, target)

    return asyncio.run(go())


def by_container(report: CheckReport, name: str) -> dict[str, Any]:
    return {f.rule: f for f in report.findings if f.container == name}


# ---------------------------------------------------------------- past and present


def test_a_crash_loop_that_recovered_passes_with_an_incident(root_target, root_image, tmp_path):
    volume = tmp_path / "data"
    volume.mkdir()
    os.chown(volume, 1000, 1000)
    volume.chmod(0o700)  # root in the container, without DAC_OVERRIDE, gets a real EACCES
    run_container("tct-rec", "--restart", "unless-stopped", "--memory", "32m", "--cap-drop", "ALL",
                  "-v", f"{volume}:/data", "--health-cmd", "test -f /data/LOCK", "--health-retries", "1",
                  IMAGE, "sh", "-c", "echo starting; sleep 0.3; touch /data/LOCK || exit 1; echo 'LOCK held'; "
                                     "exec sleep 600")
    wait_for(lambda: int(inspect("tct-rec", "{{.RestartCount}}")) >= 3, 30, "tct-rec to crash-loop")
    volume.chmod(0o777)  # the operator's fix; the next restart holds its LOCK
    wait_for(lambda: "LOCK held" in podman("logs", "tct-rec"), 30, "tct-rec to recover")
    containers = {"tct-rec": {"expected_state": "healthy"}}

    # inside the stable period the loop is the present: one error, the permission cause, the loop its evidence
    started = time.monotonic()
    looping = check(root_target, containers)
    took = time.monotonic() - started
    up_s = time.time() - float(inspect("tct-rec", "{{.State.StartedAt.Unix}}"))
    assert up_s < STABLE_S, f"the first check ended {up_s:.1f}s after the recovery: too slow for this test"
    errors = [f for f in looping.findings if f.container == "tct-rec" and f.fails]
    assert [f.rule for f in errors] == ["caps"], [(f.rule, f.message) for f in looping.findings]
    assert "Permission denied" in errors[0].message and "crash-loop" in errors[0].evidence
    assert looping.verdict == "fail"

    wait_for(lambda: time.time() - float(inspect("tct-rec", "{{.State.StartedAt.Unix}}")) > STABLE_S + 0.5,
             STABLE_S + 5, "tct-rec to stay up for the stable period")
    report = check(root_target, containers)
    assert [(f.rule, f.severity) for f in report.findings] == [("recovered-incident", "info")], \
        [(f.rule, f.message) for f in report.findings]
    incident = report.findings[0]
    assert "tct-rec recovered: it died" in incident.message and "UTC" in incident.message
    assert "Permission denied" in incident.message and "has been up since" in incident.message
    assert "DAC_OVERRIDE" in incident.cause and incident.cause.startswith("before its current start")
    assert incident.evidence["incident"]["deaths"] >= 3
    assert report.verdict == "pass" and not report.failed_probes
    assert took < 30


def test_old_deaths_and_one_crash_now_are_no_crash_loop(root_target, root_image, tmp_path):
    """podman's RestartCount counts every restart since the container was created: three
    deaths outside the crash-loop window and one now read 4, which is no crash loop."""
    run_container("tct-old", "--restart", "unless-stopped", "--memory", "32m", "-v", f"{tmp_path}:/data", IMAGE, "sh", "-c",
                  "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n; "
                  "[ $n -le 3 ] && exit 1; exec sleep 600")
    wait_for(lambda: "run 4" in podman("logs", "tct-old"), 30, "tct-old to stay up after three deaths")
    window_s = 6
    last_death = time.time()
    wait_for(lambda: time.time() - last_death > window_s + 1, window_s + 5, "the crash-loop window to pass")
    pid = inspect("tct-old", "{{.State.Pid}}")
    os.kill(int(pid), 9)  # one crash now, from outside: the restart policy brings it back
    wait_for(lambda: "run 5" in podman("logs", "tct-old") and inspect("tct-old", "{{.State.Status}}") == "running",
             30, "tct-old to come back")
    assert int(inspect("tct-old", "{{.RestartCount}}")) >= 4
    report = check(root_target, {"tct-old": {}}, crashloop_window=f"{window_s}s")
    found = by_container(report, "tct-old")
    assert "crash-loop" not in found, found["crash-loop"].message
    assert report.verdict == "pass", [(f.rule, f.severity, f.message) for f in report.findings]
    assert set(found) == {"recovered-incident"} and "SIGKILL" in found["recovered-incident"].message


# ---------------------------------------------------------------- a reason for every death


def test_an_oom_kill_and_a_segfault_are_named(root_target, root_image):
    run_container("tct-oom", "--restart", "no", "--memory", "16m", IMAGE, "sh", "-c",
                  'echo filling a shell variable; x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done')
    run_container("tct-segv", "--restart", "no", "--memory", "16m", IMAGE, "sh", "-c",
                  "echo fetching the index; exec wget -T 1 -q -O /dev/null http://127.0.0.1:1/")
    for name in ("tct-oom", "tct-segv"):
        wait_for(lambda: inspect(name, "{{.State.Status}}") == "exited", 30, f"{name} to die")
    assert inspect("tct-oom", "{{.State.ExitCode}} {{.State.OOMKilled}}") == "137 false"  # podman 4.3 does not say
    container_id = inspect("tct-oom", "{{.Id}}")
    policies = {"restart-policy": False}
    report = check(root_target, {"tct-oom": {"policies": policies}, "tct-segv": {"policies": policies}})

    oom = by_container(report, "tct-oom")
    assert set(oom) == {"oom-killed"}, {r: f.message for r, f in oom.items()}
    finding = oom["oom-killed"]
    assert finding.message == "tct-oom died: killed by the kernel's OOM killer (memory limit 16 MiB), exit 137"
    kernel = finding.evidence["death"]["evidence"][0]
    assert f"libpod-{container_id}" in kernel and "oom-kill:constraint=CONSTRAINT_MEMCG" in kernel
    assert "Memory cgroup out of memory: Killed process" in kernel

    segv = by_container(report, "tct-segv")
    assert set(segv) == {"not-running"}
    assert "killed by SIGSEGV (exit 139): a segmentation fault" in segv["not-running"].message
    assert "its last line: fetching the index" in segv["not-running"].message
    assert not [note for note in report.notes if "kernel" in note]


def test_the_kernel_log_is_unavailable_rootless_and_a_user_kill_is_named(rootless_target):
    async def go() -> tuple[Any, CheckReport]:
        async with make_transport(rootless_target) as transport:
            scan = await oom_kills(transport, ["0" * 64])
            exists = await transport.run(["podman", "image", "exists", IMAGE])
            if not exists.ok:
                await transport.run(import_argv(), input=testbed.image_tar()[0], timeout=300, check=True)
            await transport.run(["podman", "rm", "--force", "--ignore", "--time", "0", *ROOTLESS_NAMES])
            await transport.run(["podman", "run", "-d", "--name", "tct-killed", "--network", "host",
                                 "--restart", "no", IMAGE, "sleep", "600"], check=True)
            await transport.run(["podman", "kill", "tct-killed"], check=True)
            config = config_from_dict({"containers": {"tct-killed": {"policies": {"restart-policy": False,
                                                                                  "memory-limit": False}}}})
            try:
                return scan, await run_check(transport, config, rootless_target)
            finally:
                await transport.run(["podman", "rm", "--force", "--ignore", "--time", "0", *ROOTLESS_NAMES])

    scan, report = asyncio.run(go())
    assert not scan.available and "Operation not permitted" in scan.reason  # kernel.dmesg_restrict = 1
    finding = by_container(report, "tct-killed")["not-running"]
    assert "killed by a user (podman kill), exit 137" in finding.message
    assert any(note.startswith("kernel log unavailable") for note in report.notes)


# ---------------------------------------------------------------- no false alarms


def test_benign_lines_and_a_start_period_check_give_no_finding(root_target, root_image, tmp_path):
    volume = tmp_path / "data"
    volume.mkdir()
    run_container("tct-benign", "--restart", "unless-stopped", "--memory", "16m", "--cap-drop", "ALL",
                  "-v", f"{volume}:/data", "--health-cmd", "false", "--health-start-period", "60s",
                  "--health-retries", "1", IMAGE, "sh", "-c",
                  "echo 'permission denied for anonymous, retrying as user: ok'; echo 'stats: error=0 warnings=0'; "
                  "echo 'config: timeout=30s retries=3'; exec sleep 600")
    # and a check that fails once where podman allows three failures in a row
    run_container("tct-retry", "--restart", "unless-stopped", "--memory", "16m", "--health-retries", "3",
                  "--health-cmd", "echo connection refused; exit 1", IMAGE, "sleep", "600")
    wait_for(lambda: "timeout=30s" in podman("logs", "tct-benign"), 10, "tct-benign to log")
    report = check(root_target, {"tct-benign": {"expected_state": "healthy"},
                                 "tct-retry": {"expected_state": "healthy"}})
    retry = [f for f in report.findings if f.container == "tct-retry"]
    assert [(f.rule, f.severity) for f in retry] == [("healthcheck-retrying", "info")]
    assert retry[0].message == ("tct-retry's health check failed once, and podman still says starting (it says "
                                "unhealthy after 3 failures in a row): connection refused")
    report.findings = [f for f in report.findings if f.container != "tct-retry"]
    assert report.findings == [], [(f.rule, f.message) for f in report.findings]
    assert all(p.ok for p in report.probes), [(p.container, p.detail) for p in report.probes if not p.ok]
    (probe,) = [p for p in report.probes if p.container == "tct-benign"]
    assert probe.probe_type == "podman-healthcheck" and probe.ok
    assert probe.detail.startswith("podman still says starting (a failure inside the start period does not count)")
    (entry,) = [c for c in report.containers if c.name == "tct-benign"]
    assert (entry.state, entry.health) == ("running", "starting")
    assert report.verdict == "pass"

"""Probes against real things on this machine: busybox httpd, TCP ports, podman containers.

Containers are named `pwc-*` and run from `localhost/pwc-busybox:1`, an image imported
from a tar of this machine's static busybox (no registry), with `--network host
--stop-signal KILL`; they are removed at the end.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from rich.console import Console

from agent.check import MAX_CONCURRENT, run_check
from agent.render import check_report as render_table
from agent.config import (
    ExecProbe,
    HealthcheckProbe,
    HttpProbe,
    LogsProbe,
    ServiceProbe,
    TargetConfig,
    TcpProbe,
    config_from_dict,
)
from agent.probes import (
    ContainerProcess,
    exec_session_pids,
    execute_probe,
    json_mismatches,
    parse_top,
    run_probe,
    top_cmd,
)
from agent.transport import LocalTransport, make_transport
from tests.conftest import ssh_target
from tests.sshd import ROOTLESS_USER, free_port

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if Path(p).exists()), None)
IMAGE = "localhost/pwc-busybox:1"
APPLETS = ("sh", "sleep", "cat", "echo", "printf", "true", "false", "touch", "rm", "date")
TARGET = TargetConfig(name="local", transport="local")


def run(coro):
    return asyncio.run(coro)


async def probe(name: str, config, **kwargs):
    async with LocalTransport(TARGET) as transport:
        return await execute_probe(transport, ["podman"], name, config, now_ns=time.time_ns(), **kwargs)


def sh(*argv: str, timeout: float = 120, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=timeout, input=input)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def httpd(tmp_path_factory):
    """busybox httpd on a free 127.0.0.1 port serving /health (JSON) and /index.html."""
    if BUSYBOX is None:
        pytest.skip("needs busybox (apt-get install busybox-static)")
    root = tmp_path_factory.mktemp("www")
    (root / "health").write_text(json.dumps({"status": "ok", "crash_recovery_complete": True,
                                             "version": "1.2.0", "nested": {"uptime": 1063, "ids": [7, 8]}}))
    (root / "index.html").write_text("<html><title>archy-lnd-ui</title></html>\n")
    (root / "plain").write_text("not json at all\n")
    port = free_port()
    server = subprocess.Popen([BUSYBOX, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(root)])
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("busybox httpd did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.kill()
    server.wait()


@pytest.fixture(scope="module")
def silent_port():
    """A port whose listen backlog completes connections that nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel accepts the handshake; we never accept() or reply
        yield listener.getsockname()[1]


def _image_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                           ("dev", 0o755), ("run", 0o755), ("var", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return buffer.getvalue()


CONTAINERS = {
    # health check passes once /tmp/healthy exists; prints to stdout and stderr
    "pwc-probe": ["--health-cmd", "cat /tmp/healthy", "--health-retries", "1",
                  IMAGE, "sh", "-c",
                  "echo 'server started'; echo 'ERROR [/v1/getinfo]: disk full' >&2; "
                  "echo 'warning: Tor SOCKS connection refused'; echo 'all good'; exec sleep 600"],
    # a health check that hangs (podman 4.3 does not enforce --health-timeout)
    "pwc-hang": ["--health-cmd", "sleep 30", "--health-timeout", "2s", IMAGE, "sleep", "600"],
    # a CMD-form health check calling a binary the image lacks
    "pwc-nobin": ["--health-cmd", '["curl", "-sf", "http://127.0.0.1:1/"]', IMAGE, "sleep", "600"],
}


@pytest.fixture(scope="module")
def containers():
    """Real pwc-* containers from a busybox image imported here."""
    if shutil.which("podman") is None or BUSYBOX is None:
        pytest.skip("needs podman and busybox")
    if sh("podman", "image", "exists", IMAGE).returncode != 0:
        result = sh("podman", "import", "--change", 'CMD ["/bin/sh"]', "-", IMAGE, input=_image_tar(), timeout=300)
        assert result.returncode == 0, result.stderr.decode()
    sh("podman", "rm", "--force", "--ignore", "--time", "0", *CONTAINERS)
    for name, args in CONTAINERS.items():
        result = sh("podman", "run", "-d", "--name", name, "--network", "host", "--stop-signal", "KILL", *args)
        assert result.returncode == 0, result.stderr.decode()
    deadline = time.monotonic() + 10
    while b"all good" not in sh("podman", "logs", "pwc-probe").stdout:
        assert time.monotonic() < deadline, "pwc-probe did not start"
        time.sleep(0.1)
    yield list(CONTAINERS)
    sh("podman", "rm", "--force", "--ignore", "--time", "0", *CONTAINERS)


# ---------------------------------------------------------------- http

def test_http_ok_with_status_and_json(httpd):
    result = run(probe("backend", HttpProbe(type="http", name="health", url=f"{httpd}/health",
                                            expect_json={"status": "ok", "crash_recovery_complete": True,
                                                         "nested": {"uptime": 1063}, "nested.ids.1": 8})))
    obs = result.obs
    assert obs.ok, obs.detail
    assert (obs.probe, obs.probe_type, obs.container, obs.target) == ("health", "http", "backend", "local")
    assert '"status": "ok"' in obs.excerpt and obs.latency_ms > 0 and obs.detail == ""


@pytest.mark.parametrize("expect, detail", [
    ({"status": "degraded"}, 'JSON status is "ok", expected "degraded"'),
    ({"crash_recovery_complete": 1}, "JSON crash_recovery_complete is true, expected 1"),
    ({"nested": {"missing": 1}}, "JSON has no nested.missing"),
])
def test_http_json_expectation_fails(httpd, expect, detail):
    obs = run(probe("backend", HttpProbe(type="http", url=f"{httpd}/health", expect_json=expect))).obs
    assert not obs.ok and obs.detail == detail


def test_http_status_regex_and_non_json(httpd):
    ok = run(probe("ui", HttpProbe(type="http", url=f"{httpd}/", expect_regex=r"archy-lnd-ui"))).obs
    assert ok.ok, ok.detail
    missing = run(probe("ui", HttpProbe(type="http", url=f"{httpd}/nosuch"))).obs
    assert not missing.ok and missing.detail.startswith("HTTP 404") and "(expected 200)" in missing.detail
    wanted_404 = run(probe("ui", HttpProbe(type="http", url=f"{httpd}/nosuch", expect_status=404))).obs
    assert wanted_404.ok
    plain = run(probe("ui", HttpProbe(type="http", url=f"{httpd}/plain", expect_json={"status": "ok"}))).obs
    assert not plain.ok and plain.detail == "output is not JSON: not json at all"
    nomatch = run(probe("ui", HttpProbe(type="http", url=f"{httpd}/", expect_regex=r"bitcoin-ui"))).obs
    assert not nomatch.ok and nomatch.detail == "output does not match /bitcoin-ui/"


def test_http_refused_is_a_failed_probe():
    obs = run(probe("ui", HttpProbe(type="http", url=f"http://127.0.0.1:{free_port()}/"))).obs
    assert not obs.ok and obs.detail.startswith("connection refused")


def test_http_that_never_answers_times_out(silent_port):
    started = time.monotonic()
    obs = run(probe("ui", HttpProbe(type="http", url=f"http://127.0.0.1:{silent_port}/", timeout=1))).obs
    assert not obs.ok and obs.detail == "timed out after 1s"
    assert time.monotonic() - started < 3


# ---------------------------------------------------------------- tcp

def test_tcp_open_and_closed(httpd):
    port = int(httpd.rsplit(":", 1)[1])
    assert run(probe("x", TcpProbe(type="tcp", port=port))).obs.ok
    closed = run(probe("x", TcpProbe(type="tcp", name="port", port=free_port()))).obs
    assert not closed.ok and "refused" in closed.detail and closed.probe == "port"


# ---------------------------------------------------------------- service

def test_service_probe():
    assert run(probe("backend", ServiceProbe(type="service", command=["sh", "-c", "echo active"]))).obs.ok
    down = run(probe("backend", ServiceProbe(type="service", command=["sh", "-c", "echo inactive; exit 3"]))).obs
    assert not down.ok and down.detail == "exit 3: inactive"
    hung = run(probe("backend", ServiceProbe(type="service", command=["sleep", "30"], timeout=1))).obs
    assert not hung.ok and hung.detail == "timed out after 1s"


def test_service_probe_default_command_that_cannot_run():
    # no systemctl in this container world: the probe fails, the check goes on
    result = run(probe("backend", ServiceProbe(type="service")))
    if shutil.which("systemctl") is None:
        assert not result.obs.ok and "could not run" in result.obs.detail
    else:
        assert result.obs.detail == "" or result.obs.detail.startswith("exit ")


# ---------------------------------------------------------------- exec (podman)

def test_exec_json_keys_values_and_regex(containers):
    command = ["printf", '{"blocks": 942975, "chain": {"name": "main"}, "pruned": false}']
    ok = run(probe("pwc-probe", ExecProbe(type="exec", name="rpc", command=command,
                                          expect_json_keys=["blocks", "chain.name"],
                                          expect_json={"pruned": False}, expect_regex=r'"blocks": \d+'))).obs
    assert ok.ok, ok.detail
    assert ok.excerpt.startswith('{"blocks": 942975')
    wrong = run(probe("pwc-probe", ExecProbe(type="exec", command=command, expect_json={"chain.name": "regtest"}))).obs
    assert not wrong.ok and wrong.detail == 'JSON chain.name is "main", expected "regtest"'
    missing = run(probe("pwc-probe", ExecProbe(type="exec", command=command, expect_json_keys=["headers"]))).obs
    assert not missing.ok and missing.detail == "JSON has no headers"


def test_exec_exit_status(containers):
    failing = run(probe("pwc-probe", ExecProbe(type="exec", command=["sh", "-c", "echo 'error: couldn''t connect "
                                                                                  "to server' >&2; exit 1"])))
    assert not failing.obs.ok and failing.exit_status == 1
    assert failing.obs.detail == "exit 1 (expected 0): error: couldnt connect to server"
    expected_one = run(probe("pwc-probe", ExecProbe(type="exec", command=["false"], expect_exit=1))).obs
    assert expected_one.ok


def test_exec_on_a_missing_container_is_a_failed_probe(containers):
    obs = run(probe("pwc-nosuch", ExecProbe(type="exec", command=["true"]))).obs
    assert not obs.ok and obs.detail.startswith("exit 125 (expected 0): Error: ")
    assert "pwc-nosuch" in obs.detail or "no such" in obs.detail.lower()


def _live(name: str) -> list[str]:
    """The command lines of the container's live processes (zombies left out)."""
    return [p.args for p in parse_top(sh(*top_cmd(["podman"], name)).stdout.decode()) if p.alive]


def test_hung_exec_is_cut_off_and_ended_in_the_container(containers):
    started = time.monotonic()
    obs = run(probe("pwc-probe", ExecProbe(type="exec", command=["sleep", "3131"], timeout=1))).obs
    assert not obs.ok and obs.detail == "timed out after 1s; ended 1 process it left in the container: sleep 3131"
    assert time.monotonic() - started < 4
    assert obs.latency_ms < 1500  # the probe's own time: the cleanup is not counted
    assert not [args for args in _live("pwc-probe") if "3131" in args]


# ---------------------------------------------------------------- podman healthcheck

def test_healthcheck_unhealthy_then_healthy(containers):
    sh("podman", "exec", "pwc-probe", "rm", "-f", "/tmp/healthy")
    sick = run(probe("pwc-probe", HealthcheckProbe(type="podman-healthcheck")))
    assert not sick.obs.ok and sick.obs.detail == "unhealthy: cat: can't open '/tmp/healthy': No such file or directory"
    assert sick.obs.probe == "podman-healthcheck"
    sh("podman", "exec", "pwc-probe", "sh", "-c", "echo fine > /tmp/healthy")
    well = run(probe("pwc-probe", HealthcheckProbe(type="podman-healthcheck", name="hc"))).obs
    assert well.ok and well.excerpt == "fine"


def test_hanging_healthcheck_is_cut_by_our_timeout_and_ended(containers):
    started = time.monotonic()
    obs = run(probe("pwc-hang", HealthcheckProbe(type="podman-healthcheck", timeout=1))).obs
    assert not obs.ok and obs.detail == "timed out after 1s; ended 1 process it left in the container: sleep 30"
    assert time.monotonic() - started < 4
    assert _live("pwc-hang") == ["sleep 600"]


def test_healthcheck_missing_binary_is_explained_by_a_rerun(containers):
    result = run(probe("pwc-nobin", HealthcheckProbe(type="podman-healthcheck")))
    assert not result.obs.ok
    assert "executable file not found" in result.obs.detail and result.exit_status == 127


def test_healthcheck_of_a_missing_container_is_an_error(containers):
    obs = run(probe("pwc-nosuch", HealthcheckProbe(type="podman-healthcheck"))).obs
    assert not obs.ok and obs.detail.startswith("health check could not run (exit 125)")


# ---------------------------------------------------------------- a timed-out probe leaves nothing behind

def test_exec_sessions_are_told_from_the_main_process_tree():
    # what `podman top C pid ppid hpid state args` printed for a container run with --init
    text = """PID         PPID        HPID        STATE       COMMAND
1           0           9001        S           /run/podman-init -- sh -c main
2           1           9002        S           sh -c main
3           2           9003        S           sleep 600
6           0           9006        S           sh -c sleep 1 & sleep 2
7           6           9007        S           sleep 1
8           1           ?           Z           [sleep]
9           77          9009        S           orphan of an unlisted parent
"""
    processes = parse_top(text)
    assert [p.pid for p in processes] == [1, 2, 3, 6, 7, 8, 9]
    assert processes[4] == ContainerProcess(7, 6, 9007, "S", "sleep 1")
    assert not processes[5].alive and processes[5].hpid is None
    assert exec_session_pids(processes) == {6, 7}


_rows = st.lists(st.builds(
    ContainerProcess,
    pid=st.integers(1, 10**6), ppid=st.integers(0, 10**6), hpid=st.none() | st.integers(1, 10**7),
    state=st.sampled_from(["R", "S", "D", "Z", "T"]),
    args=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(str.strip),
), max_size=8)


@given(_rows)
def test_parse_top_reads_back_what_podman_prints(rows):
    header = "PID         PPID        HPID        STATE       COMMAND\n"
    text = header + "".join(f"{p.pid:<12}{p.ppid:<12}{p.hpid if p.hpid else '?':<12}{p.state:<12}{p.args} \n"
                            for p in rows)
    assert parse_top(text) == rows


SHARED_IMAGE_CHANGES = ["--change", 'CMD ["/bin/sh"]']


async def _fresh_container(transport, name: str, args: list[str]) -> None:
    if not (await transport.run(["podman", "image", "exists", IMAGE])).ok:
        await transport.run(["podman", "import", *SHARED_IMAGE_CHANGES, "-", IMAGE], input=_image_tar(),
                            timeout=300, check=True)
    await transport.run(["podman", "rm", "--force", "--ignore", "--time", "0", name], timeout=60)
    await transport.run(["podman", "run", "-d", "--name", name, "--network", "host", "--stop-signal", "KILL",
                         *args], timeout=120, check=True)


@pytest.mark.e2e
@pytest.mark.parametrize("user", ["root", ROOTLESS_USER])
def test_timed_out_probes_leave_nothing_in_the_container(sshd, user):
    """Through the real sshd, root and rootless; the container runs as uid 1234 (a subuid rootless)."""
    if BUSYBOX is None:
        pytest.skip("needs busybox")
    name = "prb-leftovers"
    probes = [
        ExecProbe(type="exec", name="pipe", command=["sh", "-c", "sleep 4701 & sleep 4702 | cat"], timeout=1),
        ExecProbe(type="exec", name="loop", command=["sh", "-c", "while :; do sleep 4703; done"], timeout=1),
        HealthcheckProbe(type="podman-healthcheck", timeout=1),
        # runs alongside, past the others' cleanup: theirs must not end it
        ExecProbe(type="exec", name="slow", command=["sh", "-c", "sleep 2; echo done"], expect_regex="done"),
    ]

    async def go():
        async with make_transport(ssh_target(sshd, user)) as transport:
            await _fresh_container(transport, name, ["--user", "1234", "--health-cmd", "sleep 4711",
                                                     IMAGE, "sleep", "600"])
            try:
                # an exec session that was there before the probes: it stays
                await transport.run(["podman", "exec", "-d", name, "sleep", "4700"], check=True)
                results = await asyncio.gather(*(execute_probe(transport, ["podman"], name, p) for p in probes))
                top = await transport.run(top_cmd(["podman"], name), check=True)
                return [r.obs for r in results], parse_top(top.stdout)
            finally:
                await transport.run(["podman", "rm", "--force", "--ignore", "--time", "0", name], timeout=60)

    started = time.monotonic()
    (pipe, loop, check, slow), left = run(go())
    assert pipe.detail.startswith("timed out after 1s; ended "), pipe.detail
    assert loop.detail.startswith("timed out after 1s; ended "), loop.detail
    assert check.detail == "timed out after 1s; ended 1 process it left in the container: sleep 4711", check.detail
    assert slow.ok, slow.detail
    assert sorted(p.args for p in left if p.alive) == ["sleep 4700", "sleep 600"]
    assert time.monotonic() - started < 20


# ---------------------------------------------------------------- logs

ERRORS = [r"(?i)\b(error|fail(ed|ure)?|refused)\b"]


def test_logs_probe_reads_stdout_and_stderr(containers):
    result = run(probe("pwc-probe", LogsProbe(type="logs", lines=50), error_patterns=ERRORS))
    assert not result.obs.ok
    assert result.obs.detail.startswith("2 error lines in the last 4 lines: ")
    # conmon stamps each stream as it reads it: the order across stdout and stderr may vary
    assert sorted(result.obs.excerpt.splitlines()) == ["ERROR [/v1/getinfo]: disk full", "warning: Tor SOCKS connection refused"]


def test_logs_probe_ignore_patterns_and_since(containers):
    ignored = run(probe("pwc-probe", LogsProbe(type="logs"), error_patterns=ERRORS,
                        ignore_patterns=[r"Tor SOCKS", r"disk full"])).obs
    assert ignored.ok and ignored.excerpt == "no error lines in the last 4 lines"
    recent = run(probe("pwc-probe", LogsProbe(type="logs", since=0.001), error_patterns=ERRORS)).obs
    assert recent.ok and recent.excerpt == "no error lines in the last 1ms"


def test_logs_of_a_missing_container(containers):
    obs = run(probe("pwc-nosuch", LogsProbe(type="logs"), error_patterns=ERRORS)).obs
    assert not obs.ok and obs.detail.startswith("podman logs failed: ")


# ---------------------------------------------------------------- the check finishes, bounded

def test_check_with_hung_probes_finishes_and_reports_them(containers, httpd):
    config = config_from_dict({
        "containers": {
            "pwc-probe": {"log_errors": [r"(?i)\berror\b"], "policies": {"memory-limit": False},
                          "probes": [
                              {"type": "exec", "name": "hang", "command": ["sleep", "30"], "timeout": 1},
                              {"type": "exec", "name": "echo", "command": ["echo", "hi"], "expect_regex": "hi"},
                          ]},
            "pwc-hang": {"probes": [{"type": "podman-healthcheck", "timeout": 1}]},
            "pwc-gone": {},
        },
        "services": {"backend": {"probes": [
            {"type": "http", "url": f"{httpd}/health", "expect_json": {"status": "ok"}},
            {"type": "service", "name": "stuck", "command": ["sleep", "30"], "timeout": 1},
        ]}},
    })

    async def go():
        async with LocalTransport(TARGET) as transport:
            return await run_check(transport, config, TARGET)

    started = time.monotonic()
    report = run(go())
    assert time.monotonic() - started < 15
    probes = {(p.container, p.probe): p for p in report.probes}
    assert probes["pwc-probe", "hang"].detail.startswith("timed out after 1s; ended 1 process")
    assert probes["pwc-hang", "podman-healthcheck"].detail.startswith("timed out after 1s; ended 1 process")
    assert probes["backend", "stuck"].detail == "timed out after 1s"
    assert probes["pwc-probe", "echo"].ok and probes["backend", "http"].ok
    assert probes["pwc-probe", "healthcheck"].probe_type == "podman-healthcheck"  # implicit: it has a check
    rules = {(f.container, f.rule) for f in report.findings}
    assert ("pwc-gone", "missing") in rules
    assert ("pwc-probe", "restart-policy") in rules and ("pwc-probe", "memory-limit") not in rules
    assert ("pwc-probe", "log-errors") in rules
    assert report.verdict == "fail"
    document = json.loads(json.dumps(report.to_json()))
    assert document["verdict"] == "fail" and document["target"] == "local"
    assert {"container", "rule", "severity", "message", "cause", "fix", "evidence"} == set(document["findings"][0])
    assert {"container", "probe", "type", "ok", "latency_ms", "detail", "excerpt"} == set(document["probes"][0])
    assert {c["name"] for c in document["containers"]} >= {"pwc-probe", "pwc-hang", "pwc-gone"}
    # log lines such as `[/v1/getinfo]` reach the table as text, not as rich markup
    console = Console(record=True, width=160)
    console.print(render_table(report))
    screen = console.export_text()
    assert "ERROR [/v1/getinfo]: disk full" in screen and "verdict: FAIL" in screen


def test_check_runs_at_most_four_probes_at_once(tmp_path):
    journal = tmp_path / "journal"
    command = ["sh", "-c", f'echo start >> {journal}; sleep 0.3; echo end >> {journal}']
    config = config_from_dict({"services": {"svc": {"probes": [
        {"type": "service", "name": f"p{i}", "command": command} for i in range(10)]}}})

    async def go():
        async with LocalTransport(TARGET) as transport:
            return await run_check(transport, config, TARGET)

    report = run(go())
    assert len(report.probes) == 10 and all(p.ok for p in report.probes)
    running = peak = 0
    for line in journal.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == MAX_CONCURRENT


def test_json_mismatches_is_strict_about_booleans():
    assert json_mismatches({"a": True, "b": 1, "c": 1.0}, {"a": True, "b": 1.0, "c": 1}) == []
    assert json_mismatches({"a": 1}, {"a": True}) == ["JSON a is 1, expected true"]
    assert json_mismatches({"chains": [{"network": "regtest"}]}, {"chains.0.network": "regtest"}) == []


def test_run_probe_returns_the_observation(httpd):
    async def go():
        async with LocalTransport(TARGET) as transport:
            return await run_probe(transport, ["podman"], "ui", HttpProbe(type="http", url=f"{httpd}/"), now_ns=42)
    obs = run(go())
    assert obs.ok and obs.at_ns == 42

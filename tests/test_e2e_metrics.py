"""Prometheus metrics end to end: a real Prometheus server scrapes `podwarden watch --metrics`.

The agent watches a real container (`met-crash`, from the testbed's busybox image, restart
always) over the real sshd as root and serves its metrics on loopback; Debian's `prometheus`
(its own config and data directory here, scraping every second, with the shipped alert
rules loaded) scrapes it. The container's main process is killed (kill -9 of State.Pid),
and Prometheus's HTTP API must come to show that death (kind `signal`) and the restart for
that container. The scrape itself is judged by Prometheus (the target is up, no scrape
error) and every metric the shipped dashboard and alerts read is in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.agent_process import Agent
from tests.conftest import IN_CI
from tests.sshd import SshServer, free_port
from tests.own_containers import OwnContainers, podman
from tests.test_metrics import ALERTS, dashboard_exprs, metric_names
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

IMAGE = "localhost/met-busybox:1"
NAMES = ("met-crash",)
OWN = OwnContainers(IMAGE, NAMES)
inspect, running = OWN.inspect, OWN.running


def require_prometheus() -> str:
    """The prometheus binary (Debian's `prometheus` package, which brings promtool too)."""
    path = shutil.which("prometheus")
    if path is None:
        message = "end-to-end metrics test needs prometheus (apt-get install --no-install-recommends prometheus)"
        if IN_CI:
            pytest.fail(message + " (CI=true never skips)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    yield from OWN.session()


class PrometheusServer:
    """A Prometheus of the test's own: config, rules and data under `tmp`, on loopback."""

    def __init__(self, binary: str, tmp: Path, scrape_port: int) -> None:
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        shutil.copy(ALERTS, self.dir / "alerts.yml")
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - alerts.yml\n"
            "scrape_configs:\n  - job_name: podwarden\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{scrape_port}']\n")
        self.log = self.dir / "prometheus.log"
        self.argv = [binary, f"--config.file={self.dir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        wait_for(self.ready, 60, "prometheus to be ready")
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"prometheus exited: {self.tail()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.loads(response.read())
        assert document["status"] == "success", document
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [time, "value"]}]."""
        return self.api("query", query=expr)["result"]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_prometheus_sees_a_crash_counted_for_its_container(image: str, sshd: SshServer, tmp_path: Path,
                                                           agents: list[Agent]) -> None:
    binary = require_prometheus()
    podman("run", "-d", "--name", "met-crash", "--network", "host", "--stop-signal", "KILL", "--restart", "always",
           "--health-cmd", "true", "--health-interval", "5s", image, "sh", "-c", "echo up; while :; do sleep 1; done")
    wait_for(lambda: running("met-crash"), 20, "met-crash running")
    config = tmp_path / "config.toml"
    config.write_text('[watch]\nreconcile_interval = "5s"\nhealthcheck_interval = "5s"\n\n'
                      '[containers.met-crash]\nrestart_policies = ["always"]\n'
                      "policies = { memory-limit = false, image-pinned = false }\n")
    port = free_port()
    agent = Agent(sshd, config, tmp_path / "pw.db", "met", extra=("--metrics", f"127.0.0.1:{port}")).start()
    agents.append(agent)
    agent.wait_connected()
    node = sshd.url("root")  # the target's name, as given
    wait_for(lambda: f'podwarden_container_state{{container="met-crash",state="healthy",target="{node}"}} 1.0'
             in scrape(port), 30, "the agent's own scrape to show met-crash healthy")

    server = PrometheusServer(binary, tmp_path, port).start()
    try:
        wait_for(lambda: server.query('up{job="podwarden"} == 1'), 60, "prometheus to scrape the agent")
        [target] = server.api("targets")["activeTargets"]
        assert target["health"] == "up" and not target["lastError"], target
        groups = server.api("rules")["groups"]
        assert {rule["name"] for group in groups for rule in group["rules"]} >= {
            "PodwardenContainerNotAsExpected", "PodwardenCrashLoop", "PodwardenLinkDown"}
        assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
        assert server.query(f'podwarden_target_link_up{{target="{node}"}} == 1')
        assert server.query('podwarden_container_in_expected_state{container="met-crash"} == 1')

        pid = inspect("met-crash")["State"]["Pid"]
        assert pid > 1
        os.kill(pid, signal.SIGKILL)  # a crash: the restart policy brings it back

        def counted() -> list[dict[str, Any]]:
            return server.query('podwarden_container_deaths_total{container="met-crash"} >= 1')

        [death] = wait_for(counted, 60, "prometheus to see met-crash's death counted")
        assert death["metric"]["kind"] == "signal" and death["metric"]["target"] == node, death
        wait_for(lambda: server.query('podwarden_container_restarts_total{container="met-crash"} >= 1'), 60,
                 "prometheus to see met-crash's restart counted")
        wait_for(lambda: server.query('podwarden_drifts_total{container="met-crash",kind="state"} >= 1'), 60,
                 "prometheus to see the crash as drift of the watch")
        wait_for(lambda: server.query('podwarden_container_in_expected_state{container="met-crash"} == 1'), 60,
                 "met-crash back in its expected state, as prometheus sees it")
        assert server.query('podwarden_probe_runs_total{container="met-crash",type="podman-healthcheck"} >= 1')
        assert server.query("podwarden_target_events_total >= 3")

        # everything the shipped dashboard and alerts read is in the agent's real scrape
        scraped = {line.split("{")[0].split(" ")[0] for line in scrape(port).splitlines()
                   if line and not line.startswith("#")}
        read = set().union(*map(metric_names, dashboard_exprs())) | metric_names(ALERTS.read_text())
        assert read <= scraped, sorted(read - scraped)
    finally:
        server.stop()
    assert agent.terminate() == 0
    with pytest.raises(ConnectionRefusedError):  # the watch ended: the port is released
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

"""Prometheus metrics (agent/metrics.py): the address rules, what a scrape holds after real
observations went through the sink, the endpoint's life, the shipped alert rules and dashboard.

The scrapes here are real HTTP requests to the endpoint a recording serves; `promtool` (Debian's
`prometheus` package) lints a scrape and checks and unit-tests the alert rules.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import metrics as pm
from agent.cli import main
from agent.config import TargetConfig, config_from_dict
from agent.errors import ConfigError, UsageError
from agent.recording import recording
from agent.watch import Window, watchers_for
from machines.observations import AgentObs, EventObs, LogObs, ProbeObs, SnapshotObs
from machines.states import State
from tests.conftest import IN_CI
from tests.sshd import free_port

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "podwarden-dashboard.json"
T0 = 1_764_000_000_000_000_000
S = 1_000_000_000


def at(dt: float) -> int:
    return T0 + round(dt * S)


def ev(status: str, dt: float, name: str = "lnd", **kw: Any) -> EventObs:
    return EventObs("node", name, at(dt), f"id-{name}", status, **kw)


def inspect(dt: float, status: str = "running", name: str = "lnd", **fields: Any) -> SnapshotObs:
    fields.setdefault("restart_policy", "always")
    return SnapshotObs("node", name, at(dt), True, f"id-{name}", status, **fields)


def require_tool(tool: str, package: str) -> str:
    """The tool's path; a skip naming the package without it (a failure under CI=true)."""
    path = shutil.which(tool)
    if path is None:
        message = f"needs {tool} (apt-get install --no-install-recommends {package})"
        if IN_CI:
            pytest.fail(message + " (CI=true never skips)")
        pytest.skip(message)
    return path


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of a text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


CONFIG = {
    "containers": {"lnd": {"expected_state": "running"}, "web": {"expected_state": "healthy"}},
    "soak": {"link_lost_max": "1s"},
}

# lnd: created, up, crashed by a SIGKILL and restarted by its policy (restart always);
# web: up, then a user's `podman stop` (stop event, died 143, no restart)
NIGHT = [
    ev("create", 0), ev("init", 0.1), ev("start", 0.2),
    inspect(1, started_at_ns=at(0.2)),
    ev("create", 0, name="web"), ev("start", 0.3, name="web"), inspect(1, name="web", started_at_ns=at(0.3)),
    LogObs("node", "lnd", at(2), "chain synced"),
    ProbeObs("node", "lnd", at(3), "getinfo", "exec", True, 120.0),
    ProbeObs("node", "lnd", at(4), "getinfo", "exec", False, 2500.0, "", "exit status 1"),
    ProbeObs("node", "lnd", at(4.5), "oom-kill", "kernel-log", True, 0.0),
    ev("died", 5, exit_code=137), ev("restart", 5.001), ev("init", 5.06), ev("start", 5.07),
    ev("stop", 6, name="web"), ev("died", 6.04, name="web", exit_code=143),
    AgentObs("node", "", at(7), "lost-window", "podman's event log begins later"),
]


async def _scrape_after(config: dict, observations: list, db: Path, *, accept: str | None = None,
                        with_watchers: bool = False) -> tuple[str, str, int]:
    """Serve a recording's metrics, put `observations` through its sink, and scrape it once."""
    cfg = config_from_dict(config)
    async with recording(cfg, "watch", ["node"], str(db)) as rec:
        endpoint = pm.Endpoint.open(cfg, "127.0.0.1:0")
        assert endpoint is not None
        async with pm.serving(rec, endpoint) as exporter:
            assert exporter is pm.exporter_of(rec)
            if with_watchers:
                [watcher] = await watchers_for(rec, [TargetConfig(name="node", transport="local")])
                window = Window(rec, [watcher], hooks=False)
                watcher.view.link, watcher.view.events, watcher.view.logs = "up", 7, 11
                watcher.view.errors, watcher.view.reconnects, watcher.view.parse_errors = 2, 1, 3
                watcher.facts = {"lnd": SimpleNamespace(restart_count=1)}  # the newest inspect's RestartCount
                assert exporter.watchers == [watcher] and exporter.windows == [window]
            for obs in observations[:7]:
                rec.sink.put(obs)
            if with_watchers:
                watcher.ready.set()
                await window.open_when_ready(asyncio.Event())
            for obs in observations[7:]:
                rec.sink.put(obs)
            _, content_type, text = await asyncio.to_thread(get, endpoint.url, accept)
            port = endpoint.port
        rec.verdict = "recorded"
    return text, content_type, port


@pytest.fixture(scope="module")
def scrape_text(tmp_path_factory) -> str:
    return asyncio.run(_scrape_after(CONFIG, NIGHT, tmp_path_factory.mktemp("m") / "pw.db", with_watchers=True))[0]


# ---------------------------------------------------------------- the address


@pytest.mark.parametrize("text, address", [
    ("9464", ("127.0.0.1", 9464)), (":9000", ("127.0.0.1", 9000)), ("localhost:9000", ("127.0.0.1", 9000)),
    ("127.0.0.2:1", ("127.0.0.2", 1)), ("[::1]:9000", ("::1", 9000)), ("[::1]", ("::1", 9464)),
    ("127.0.0.1", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("off", None), ("", None),
])
def test_addresses(text: str, address: tuple | None) -> None:
    assert pm.parse_address(text) == address


@pytest.mark.parametrize("text, says", [
    ("::1:9000", "brackets"), ("[::1", "brackets"), ("[::1]9000", "brackets"), ("metrics.example:9000", "IP address"),
    ("127.0.0.1:99999", "0 to 65535"), ("127.0.0.1:x", "0 to 65535"), ("127.0.0.1:", "0 to 65535"),
])
def test_bad_addresses_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        pm.parse_address(text)


def test_loopback_unless_any_address_is_given() -> None:
    config = config_from_dict({})
    with pytest.raises(UsageError, match="--metrics-any-address") as refused:
        pm.Endpoint.open(config, "0.0.0.0:0")
    assert refused.value.exit_code == 2 and "--metrics 0.0.0.0:0" in refused.value.message
    endpoint = pm.Endpoint.open(config, "0.0.0.0:0", any_address=True)
    assert endpoint is not None and endpoint.port > 0
    endpoint.close()
    assert pm.Endpoint.open(config, None) is None and pm.Endpoint.open(config, "off") is None


def test_the_config_key_serves_and_is_judged_as_the_config() -> None:
    port = free_port()
    config = config_from_dict({"watch": {"metrics": f"127.0.0.1:{port}"}}, "night.toml")
    endpoint = pm.Endpoint.open(config, None)
    assert endpoint is not None and (endpoint.host, endpoint.port) == ("127.0.0.1", port)
    endpoint.close()
    assert pm.Endpoint.open(config, "off") is None  # --metrics off overrides the config
    with pytest.raises(ConfigError, match="watch.metrics") as bad:
        pm.Endpoint.open(config_from_dict({"watch": {"metrics": "10.1.2.3:9464"}}, "night.toml"), None)
    assert bad.value.path == "night.toml" and bad.value.exit_code == 2


def test_a_port_in_use_is_a_clear_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} is in use"):
            pm.Endpoint.open(config_from_dict({}), f"127.0.0.1:{port}")


def test_the_verbs_refuse_a_bad_address_with_exit_2_before_recording(tmp_path, capsys) -> None:
    db = tmp_path / "pw.db"
    common = ["--config", "/dev/null", "--db", str(db), "--target", "local"]
    assert main(["soak", "--for", "1s", "--metrics", "0.0.0.0:9464", *common]) == 2
    assert "--metrics-any-address" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["run", "--metrics", f"127.0.0.1:{port}", *common]) == 2
        assert "is in use" in capsys.readouterr().err
        assert main(["watch", "--json", "--metrics", f"127.0.0.1:{port}", *common]) == 2
        document = json.loads(capsys.readouterr().out)
        assert document["error"]["kind"] == "usage" and "is in use" in document["error"]["message"]
    assert main(["soak", "--metrics", "somewhere:1", *common]) == 2
    assert "not an IP address" in capsys.readouterr().err
    # soak and run bind before the run starts: they stored nothing
    from tests.agent_process import read_db
    assert [row[0] for row in read_db(db, "SELECT command FROM runs")] == ["watch"]


# ---------------------------------------------------------------- a scrape


def test_a_scrape_holds_what_the_observations_said(scrape_text: str) -> None:
    scrape = samples(scrape_text)
    lnd, web = {"target": "node", "container": "lnd"}, {"target": "node", "container": "web"}
    # the state as a 1/0 enum over every state
    assert value(scrape, "podwarden_container_state", **lnd, state="running") == 1
    assert sum(value(scrape, "podwarden_container_state", **lnd, state=str(s)) for s in State) == 1
    assert value(scrape, "podwarden_container_state", **web, state="stopped") == 1
    assert value(scrape, "podwarden_container_in_expected_state", **lnd) == 1
    assert value(scrape, "podwarden_container_in_expected_state", **web) == 0
    assert value(scrape, "podwarden_container_expected_state", **web, expected="healthy") == 1
    assert value(scrape, "podwarden_container_health", **lnd, health="none") == 1
    # restarts, deaths by kind (a user's stop is counted as one, not as a crash)
    assert value(scrape, "podwarden_container_restarts_total", **lnd) == 1
    assert value(scrape, "podwarden_container_podman_restarts", **lnd) == 1
    assert value(scrape, "podwarden_container_deaths_total", **lnd, kind="signal") == 1
    assert value(scrape, "podwarden_container_deaths_total", **web, kind="user-stop") == 1
    assert value(scrape, "podwarden_container_restarts_total", **web) == 0
    assert value(scrape, "podwarden_container_last_change_timestamp_seconds", **lnd) == pytest.approx(at(5.07) / S)
    assert value(scrape, "podwarden_container_last_death_timestamp_seconds", **lnd) == pytest.approx(at(5) / S)
    assert value(scrape, "podwarden_container_state_changes_total", **lnd, to_state="exited") == 1
    # probes: the newest result, the counts; the kernel log's OOM verdict is no probe
    probe = {**lnd, "probe": "getinfo", "type": "exec"}
    assert value(scrape, "podwarden_probe_success", **probe) == 0
    assert value(scrape, "podwarden_probe_duration_seconds", **probe) == 2.5
    assert value(scrape, "podwarden_probe_runs_total", **probe) == 2
    assert value(scrape, "podwarden_probe_failures_total", **probe) == 1
    assert not [key for key in scrape if ("type", "kernel-log") in key[1]]
    # drift in the watch's window: lnd's crash (a state drift and a restart), web's stop
    assert value(scrape, "podwarden_drifts_total", **lnd, kind="state") == 1
    assert value(scrape, "podwarden_drifts_total", **lnd, kind="restart") == 1
    assert value(scrape, "podwarden_drifts_total", **web, kind="state") == 1
    assert value(scrape, "podwarden_drift_window_open") == 1
    # the target, from its watcher and the sink
    assert value(scrape, "podwarden_target_link_up", target="node") == 1
    assert value(scrape, "podwarden_target_events_total", target="node") == 7
    assert value(scrape, "podwarden_target_log_lines_total", target="node") == 11
    assert value(scrape, "podwarden_target_error_log_lines_total", target="node") == 2
    assert value(scrape, "podwarden_target_reconnects_total", target="node") == 1
    assert value(scrape, "podwarden_target_parse_errors_total", target="node") == 3
    assert value(scrape, "podwarden_target_lost_windows_total", target="node") == 1
    # the store, and the agent
    assert value(scrape, "podwarden_store_pending_rows") is not None
    assert value(scrape, "podwarden_store_commit_lag_seconds") >= 0
    assert value(scrape, "podwarden_info", command="watch", version=pm_version()) == 1
    assert value(scrape, "podwarden_run_id") == 1
    assert value(scrape, "process_resident_memory_bytes") > 0


def pm_version() -> str:
    from agent.recording import podwarden_version

    return podwarden_version()


def test_no_label_takes_unbounded_values(scrape_text: str) -> None:
    allowed = {"target", "container", "state", "health", "expected", "kind", "to_state", "probe", "type",
               "command", "version"}
    for family in text_string_to_metric_families(scrape_text):
        if not family.name.startswith("podwarden_"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample
            if "kind" in sample.labels and family.name == "podwarden_container_deaths":
                assert sample.labels["kind"] in pm.DEATH_KINDS


def test_the_death_kinds_are_every_kind_a_reason_can_have() -> None:
    source = (ROOT / "machines" / "deaths.py").read_text()
    kinds = set(re.findall(r'DeathReason\(\s*"([a-z-]+)"', source))
    kinds |= set(re.findall(r'"(user-[a-z]+)"', source))
    assert kinds and kinds <= set(pm.DEATH_KINDS), kinds - set(pm.DEATH_KINDS)


def test_first_sight_of_a_dead_container_is_no_death_and_missed_deaths_count(tmp_path) -> None:
    night = [
        inspect(1, status="exited", exit_code=1, finished_at_ns=at(0.5), restart_policy="no"),  # down before we looked
        ev("create", 0, name="web"), ev("start", 0.3, name="web"), inspect(1, name="web", started_at_ns=at(0.3)),
        # web died twice between two snapshots: podman's RestartCount says so
        inspect(40, name="web", started_at_ns=at(39), finished_at_ns=at(38.9), restart_count=2),
    ]
    scrape = samples(asyncio.run(_scrape_after(CONFIG, night, tmp_path / "pw.db"))[0])
    assert not [key for key in scrape if key[0] == "podwarden_container_deaths_total" and ("container", "lnd") in key[1]]
    web = {"target": "node", "container": "web"}
    assert value(scrape, "podwarden_container_deaths_total", **web, kind="unknown") == 2  # podman said no exit code
    assert value(scrape, "podwarden_container_state", **web, state="running") == 1


def test_the_endpoint_serves_openmetrics_when_asked_and_frees_its_port(tmp_path) -> None:
    text, content_type, port = asyncio.run(_scrape_after(
        CONFIG, NIGHT, tmp_path / "pw.db", accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5"))
    assert content_type.startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")
    with pytest.raises(ConnectionRefusedError):  # the verb ended: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    again = pm.Endpoint.open(config_from_dict({}), f"127.0.0.1:{port}")  # and the next run may listen there
    assert again is not None
    again.close()


def test_the_endpoint_answers_only_get_metrics(tmp_path) -> None:
    async def go() -> list[tuple[int, str]]:
        cfg = config_from_dict({})
        async with recording(cfg, "watch", ["node"], None) as rec:
            endpoint = pm.Endpoint.open(cfg, "127.0.0.1:0")
            async with pm.serving(rec, endpoint):
                base = endpoint.url.removesuffix("/metrics")
                answers = [(await asyncio.to_thread(get, base + path))[:2] for path in ("/metrics", "/", "/nope")]
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                status = (await reader.readline()).decode()
                writer.close()
                answers.append((int(status.split()[1]), ""))
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                writer.write(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n\r\n")
                answers.append((len(await reader.read()), ""))  # too long a head: dropped, nothing answered
                writer.close()
            rec.verdict = "recorded"
        return [(code, kind.split(";")[0] if kind else "") for code, kind in answers]

    assert asyncio.run(go()) == [(200, "text/plain"), (200, "text/html"), (404, "text/plain"), (405, ""), (0, "")]


def test_nested_verbs_share_the_endpoint_serving_the_run(tmp_path) -> None:
    """`run` serves once; the stages' watchers and windows (soak_in, experiments_in) register with it."""
    async def go() -> tuple[int, int, bool]:
        cfg = config_from_dict(CONFIG)
        async with recording(cfg, "run", ["node"], None) as rec:
            endpoint = pm.Endpoint.open(cfg, "127.0.0.1:0")
            async with pm.serving(rec, endpoint) as exporter:
                async with pm.serving(rec, None) as nested:
                    assert nested is exporter
                first = await watchers_for(rec, [TargetConfig(name="node", transport="local")])
                second = await watchers_for(rec, [TargetConfig(name="node", transport="local")])
                Window(rec, second, hooks=False)
                counts = (len(exporter.watchers), len(exporter.windows))
                first[0].view.events, second[0].view.events = 3, 4
                scrape = samples((await asyncio.to_thread(get, endpoint.url))[2])
                assert value(scrape, "podwarden_target_events_total", target="node") == 7
            detached = pm.exporter_of(rec) is None and exporter._observed not in rec.sink.on_observation
            rec.verdict = "recorded"
        return (*counts, detached)

    assert asyncio.run(go()) == (2, 1, True)


# ---------------------------------------------------------------- promtool, rules, dashboard


def test_promtool_lints_a_scrape_clean(scrape_text: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape_text, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_the_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=ALERTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (podwarden's and the process collector's)."""
    return set(re.findall(r"\b((?:podwarden|process)_[a-z0-9_]+)\b", expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [var["definition"] for var in dashboard["templating"]["list"] if var.get("type") == "query"]
    return exprs


def test_the_dashboard_is_a_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    variables = {var["name"] for var in dashboard["templating"]["list"]}
    assert {"datasource", "target", "container"} <= variables
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert panel["type"] and panel["title"] and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_metric_the_dashboard_and_alerts_read_is_in_a_real_scrape(scrape_text: str) -> None:
    scraped = {s.name for family in text_string_to_metric_families(scrape_text) for s in family.samples}
    alerts = ALERTS.read_text()
    read = set().union(*map(metric_names, dashboard_exprs())) | metric_names(alerts)
    assert read and read <= scraped, sorted(read - scraped)


def test_the_dashboards_promql_parses(tmp_path) -> None:
    """Each panel's query, with Grafana's variables filled in, as a recording rule promtool checks."""
    promtool = require_tool("promtool", "prometheus")
    exprs = [expr.replace("$__rate_interval", "5m").replace("$target", ".*").replace("$container", ".*")
             for expr in dashboard_exprs() if not expr.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

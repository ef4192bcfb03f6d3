"""The testbed: its config and image builder, and the real stack on podman as root.

End-to-end tests use prefix `tbh-` and port_base 19330, bring the stack up once
per case (`up` is idempotent: it replaces what was there) and take it down at the
end. Every wait is a deadline loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.waiting import wait_for

from agent import testbed
from agent.config import TargetConfig, TestbedConfig, config_from_dict
from agent.errors import TestbedError
from agent.transport import LocalTransport, http_get

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "tbh-"
PORT_BASE = 19330
PORTS = testbed.Ports.from_base(PORT_BASE)
LATE_AFTER = 8.0
NAMES = testbed.container_names(PREFIX)


# ---------------------------------------------------------------- helpers

def sh(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def inspect(suffix: str) -> dict[str, Any]:
    result = sh("podman", "container", "inspect", NAMES[suffix])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def logs(suffix: str) -> str:
    result = sh("podman", "logs", NAMES[suffix])
    return result.stdout + result.stderr



def holds_for(predicate: Callable[[], Any], duration: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(interval)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_transport(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    async with LocalTransport(TargetConfig(name="local", transport="local")) as transport:
        return await func(transport, *args, **kwargs)


def get(url: str) -> tuple[int, str]:
    async def fetch(transport: LocalTransport) -> tuple[int, str]:
        response = await http_get(transport, url, timeout=5)
        return response.status, response.text()

    return run(_with_transport(fetch))


def port_answers(port: int) -> bool:
    try:
        get(f"http://127.0.0.1:{port}/")
    except OSError:
        return False
    return True


def config() -> Any:
    return config_from_dict(tomllib.loads(testbed.example_config(prefix=PREFIX, port_base=PORT_BASE)))


def service_command(kind: str) -> subprocess.CompletedProcess[str]:
    service = config().services[f"{PREFIX}backend"]
    return sh(*getattr(service, f"{kind}_command"))


# ---------------------------------------------------------------- config, faults, image (no podman)

def test_example_config_loads_and_describes_the_stack() -> None:
    text = testbed.example_config(prefix=PREFIX, port_base=PORT_BASE)
    cfg = config_from_dict(tomllib.loads(text))
    assert list(cfg.containers) == list(NAMES.values())
    assert cfg.containers[NAMES["lightning"]].depends_on == [NAMES["node"]]
    assert cfg.containers[NAMES["indexer"]].depends_on == [NAMES["node"]]
    node_probes = {p.type: p for p in cfg.containers[NAMES["node"]].probes}
    assert node_probes["exec"].command == ["tb-cli", "getblockchaininfo"]
    assert "blocks" in node_probes["exec"].expect_json_keys
    service = cfg.services[f"{PREFIX}backend"]
    assert service.health_url == f"http://127.0.0.1:{PORTS.backend}/health"
    assert service.status_command and service.kill_command and service.start_command
    assert cfg.testbed.prefix == PREFIX and cfg.testbed.port_base == PORT_BASE


def test_example_config_with_an_extra_target() -> None:
    extra = '[targets.node1]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = 2222\nuser = "pwtest"\n'
    cfg = config_from_dict(tomllib.loads(testbed.example_config(target_name="node1", extra_targets=extra)))
    assert cfg.podwarden.default_target == "node1"
    assert cfg.targets["node1"].user == "pwtest"
    assert cfg.targets["local"].transport == "local"


def test_project_config_toml_is_the_example_config() -> None:
    assert (ROOT / "config.toml").read_text() == testbed.example_config(), (
        "config.toml drifted from agent.testbed.example_config(): regenerate it with "
        "python -c 'from agent.testbed import example_config; print(example_config(), end=\"\")' > config.toml"
    )


def test_fault_list_is_complete() -> None:
    assert set(testbed.FAULTS) == {
        "indexer-lock-permission", "health-needs-credentials", "health-missing-binary", "dependent-dies",
        "no-memory-limit", "latest-tag", "restart-no", "backend-unsupervised", "late-unhealthy",
    }
    assert all(description.strip() for description in testbed.FAULTS.values())
    assert testbed.check_faults(["late-unhealthy", "latest-tag"]) == ("latest-tag", "late-unhealthy")


def test_unknown_fault_names_the_known_ones() -> None:
    with pytest.raises(TestbedError) as caught:
        testbed.check_faults(["no-such-fault"])
    assert "no-such-fault" in str(caught.value)
    for name in testbed.FAULTS:
        assert name in str(caught.value)


def test_every_fault_changes_the_container_specs() -> None:
    layout = testbed.Layout("/home/x/.podwarden-testbed/tbh-")
    cfg = TestbedConfig(prefix=PREFIX, port_base=PORT_BASE)
    normal = testbed.container_specs(cfg, layout, "img:1")
    for fault in testbed.FAULTS:
        if fault == "backend-unsupervised":
            continue  # a host-service fault: no container changes
        assert testbed.container_specs(cfg, layout, "img:1", [fault]) != normal, fault


@pytest.mark.skipif(not any(os.path.exists(p) for p in testbed.BUSYBOX_CANDIDATES), reason="no busybox")
def test_image_tar_is_deterministic_and_pinned() -> None:
    data, name = testbed.image_tar()
    testbed.image_tar.cache_clear()
    again, name_again = testbed.image_tar()
    assert data == again and name == name_again
    repo, tag = name.rsplit(":", 1)
    assert repo == testbed.IMAGE_REPO and tag != "latest" and len(tag) == 12
    assert testbed.is_static_elf(testbed.find_busybox().read_bytes()[:65536])


def test_dynamic_elf_is_not_static() -> None:
    assert not testbed.is_static_elf(Path(shutil.which("sh") or "/bin/sh").resolve().read_bytes()[:65536])
    assert not testbed.is_static_elf(b"#!/bin/sh\n" + b"\0" * 64)


def test_backend_commands_quote_an_absolute_home() -> None:
    argv = testbed.backend_command("status", "tb-", "/srv/my testbed")
    assert argv == ["sh", "-c", "'/srv/my testbed/tb-/bin/tb-backend' status"]


# ---------------------------------------------------------------- the real stack (podman as root)

def _podman_root_available() -> str | None:
    if shutil.which("podman") is None:
        return "podman not installed"
    if os.geteuid() != 0:
        return "these tests run podman as root"
    if not any(os.path.exists(p) for p in testbed.BUSYBOX_CANDIDATES):
        return "busybox-static not installed"
    return None


needs_podman = pytest.mark.skipif(_podman_root_available() is not None,
                                  reason=_podman_root_available() or "")


@pytest.fixture(scope="module")
def bed() -> Any:
    """A function that (re)builds the tbh- testbed with faults; the stack is removed at the end."""
    cfg = TestbedConfig(prefix=PREFIX, port_base=PORT_BASE, late_unhealthy_after=LATE_AFTER)

    def build(*faults: str) -> testbed.TestbedStatus:
        return run(_with_transport(testbed.up, cfg, faults))

    yield build
    run(_with_transport(testbed.down, cfg))


@needs_podman
@pytest.mark.e2e
def test_up_without_faults_runs_the_whole_stack(bed: Any) -> None:
    status = bed()
    assert [c.state for c in status.containers] == ["running"] * 6
    assert {c.name: c.health for c in status.containers} == {
        NAMES["node"]: "healthy", NAMES["lightning"]: "healthy", NAMES["indexer"]: "healthy",
        NAMES["node-ui"]: "", NAMES["lightning-ui"]: "", NAMES["indexer-ui"]: "",
    }
    assert status.faults == () and status.backend.up and status.backend.supervised
    assert all(c.image == status.image and not c.image.endswith(":latest") for c in status.containers)

    # the node: RPC through the bitcoin-cli-like command, and its height ticks
    cli = sh("podman", "exec", NAMES["node"], "tb-cli", "getblockchaininfo")
    assert cli.returncode == 0, cli.stderr
    info = json.loads(cli.stdout)
    assert info["chain"] == "regtest" and isinstance(info["blocks"], int)
    wait_for(lambda: "UpdateTip: new best=" in logs("node"), 10, "an UpdateTip line")
    assert "connected to node backend at 127.0.0.1:%d" % PORTS.node_rpc in logs("lightning")
    assert "unable to reach" not in logs("lightning")

    # the UIs and the backend
    for port in (PORTS.node_ui, PORTS.lightning_ui, PORTS.indexer_ui):
        code, body = get(f"http://127.0.0.1:{port}/")
        assert code == 200 and "<title>" in body
    code, body = get(f"http://127.0.0.1:{PORTS.backend}/health")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok" and health["crash_recovery_complete"] is True

    # the lightning API: a real 401 without the macaroon, logged; 200 with it
    code, body = get(f"http://127.0.0.1:{PORTS.lightning_api}/cgi-bin/getinfo")
    assert code == 401 and json.loads(body) == {"code": 2, "message": "expected 1 macaroon, got 0"}
    wait_for(lambda: "expected 1 macaroon, got 0" in logs("lightning"), 5, "the refusal in the log")
    macaroon = Path(status.root, "lightning", "admin.macaroon").read_text().strip()
    code, body = get(f"http://127.0.0.1:{PORTS.lightning_api}/cgi-bin/getinfo?macaroon={macaroon}")
    assert code == 200 and json.loads(body)["synced_to_chain"] is True

    # the specs the seed ended with
    # podman 4.3 shows caps relative to its defaults: --cap-drop=ALL --cap-add=DAC_OVERRIDE
    # reads CapAdd [] and CapDrop = every default cap but DAC_OVERRIDE
    indexer = inspect("indexer")
    assert "CAP_CHOWN" in indexer["HostConfig"]["CapDrop"]
    assert "CAP_DAC_OVERRIDE" not in indexer["HostConfig"]["CapDrop"]
    assert indexer["EffectiveCaps"] == ["CAP_DAC_OVERRIDE"]
    for suffix in NAMES:
        item = inspect(suffix)
        assert item["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert item["HostConfig"]["Memory"] == 32 * 1024 * 1024
        assert item["Config"]["Labels"][testbed.TESTBED_LABEL] == PREFIX

    # a crash (main process killed from the host, not podman stop) is restarted by the policy
    pid = inspect("node-ui")["State"]["Pid"]
    os.kill(pid, 9)
    wait_for(lambda: inspect("node-ui")["RestartCount"] >= 1 and inspect("node-ui")["State"]["Status"] == "running",
             15, "node-ui restarted after a crash")

    # the backend: SIGKILL through the configured command, the supervisor restarts it
    before = status.backend.pid
    killed = service_command("kill")
    assert killed.returncode == 0, killed.stderr
    wait_for(lambda: service_command("status").returncode == 0
             and f"pid={before} " not in service_command("status").stdout, 10, "the backend restarted")
    code, body = get(f"http://127.0.0.1:{PORTS.backend}/health")
    assert code == 200 and json.loads(body)["restarts"] == 1
    journal = Path(status.root, "backend", "backend.log").read_text()
    assert f"backend crashed (pid {before}), restarting" in journal
    assert service_command("start").returncode == 0  # idempotent, like systemctl start


@needs_podman
@pytest.mark.e2e
def test_indexer_lock_permission_is_a_real_crash_loop(bed: Any) -> None:
    status = bed("indexer-lock-permission")
    assert status.faults == ("indexer-lock-permission",)
    volume = os.stat(Path(status.root, "indexer"))
    assert volume.st_uid == 1000 and stat.S_IMODE(volume.st_mode) == 0o700
    wait_for(lambda: inspect("indexer")["RestartCount"] >= 2, 20, "the indexer to restart twice")
    text = logs("indexer")
    assert "touch: /data/utxo/LOCK: Permission denied" in text
    assert "IOError: b'IO error: utxo/LOCK: Permission denied'" in text
    assert "CAP_DAC_OVERRIDE" in inspect("indexer")["HostConfig"]["CapDrop"]
    assert inspect("node")["RestartCount"] == 0


@needs_podman
@pytest.mark.e2e
def test_health_needs_credentials_gets_a_real_401(bed: Any) -> None:
    bed("health-needs-credentials")
    check = sh("podman", "healthcheck", "run", NAMES["lightning"])
    assert check.returncode == 1 and "unhealthy" in check.stdout
    last = inspect("lightning")["State"]["Health"]["Log"][-1]
    assert last["ExitCode"] != 0 and "expected 1 macaroon, got 0" in last["Output"]
    assert "[ERR] RPCS: [/v1/getinfo]: expected 1 macaroon, got 0" in logs("lightning")
    # the daemon itself is fine: with its macaroon the same API answers
    assert sh("podman", "exec", NAMES["lightning"], "tb-lncli", "getinfo").returncode == 0


@needs_podman
@pytest.mark.e2e
def test_health_missing_binary_execs_a_missing_curl(bed: Any) -> None:
    bed("health-missing-binary")
    item = inspect("indexer")
    assert item["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "curl"]
    check = sh("podman", "healthcheck", "run", NAMES["indexer"])
    # podman 4.3 prints only "unhealthy" (exit 1) and logs an empty output with exit 1
    assert check.returncode == 1 and "unhealthy" in check.stdout
    assert inspect("indexer")["State"]["Health"]["Status"] == "unhealthy"
    same = sh("podman", "exec", NAMES["indexer"], *item["Config"]["Healthcheck"]["Test"][1:])
    assert same.returncode == 127 and "executable file not found in $PATH" in same.stderr
    assert get(f"http://127.0.0.1:{PORTS.indexer}/")[0] == 200  # the indexer itself serves


@needs_podman
@pytest.mark.e2e
def test_dependent_dies_for_good_when_the_node_goes(bed: Any) -> None:
    bed("dependent-dies")
    assert inspect("lightning")["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
    assert sh("podman", "stop", NAMES["node"]).returncode == 0

    def exited() -> bool:
        state = inspect("lightning")["State"]
        return state["Status"] == "exited" and state["ExitCode"] == 0

    wait_for(exited, 15, "lightning to exit 0")
    holds_for(exited, 5.0, "lightning staying exited")
    assert inspect("lightning")["RestartCount"] == 0
    text = logs("lightning")
    assert "unable to reach node backend: connection refused" in text
    assert "lost connection to node backend, shutting down" in text
    # the indexer (unless-stopped, no exit on loss) keeps running and logs the loss
    assert inspect("indexer")["State"]["Status"] == "running"
    wait_for(lambda: "unable to reach node backend: connection refused, retrying" in logs("indexer"), 10,
             "the indexer to log the loss")


@needs_podman
@pytest.mark.e2e
def test_policy_faults(bed: Any) -> None:
    status = bed("no-memory-limit", "latest-tag", "restart-no")
    assert inspect("node-ui")["HostConfig"]["Memory"] == 0
    assert inspect("node")["HostConfig"]["Memory"] == 32 * 1024 * 1024
    assert inspect("lightning-ui")["ImageName"] == f"{testbed.IMAGE_REPO}:latest"
    assert status.container("lightning-ui").image.endswith(":latest")
    assert sh("podman", "image", "exists", f"{testbed.IMAGE_REPO}:latest").returncode == 0
    assert inspect("indexer-ui")["HostConfig"]["RestartPolicy"]["Name"] == "no"
    os.kill(inspect("indexer-ui")["State"]["Pid"], 9)
    wait_for(lambda: inspect("indexer-ui")["State"]["Status"] == "exited", 10, "indexer-ui to die")
    holds_for(lambda: inspect("indexer-ui")["State"]["Status"] == "exited", 3.0, "indexer-ui staying down")
    # the next up drops the :latest tag again (unless another testbed runs from it), and only that name
    bed()
    if f"{testbed.IMAGE_REPO}:latest" not in sh("podman", "ps", "-a", "--format", "{{.Image}}").stdout.split():
        assert sh("podman", "image", "exists", f"{testbed.IMAGE_REPO}:latest").returncode != 0
    assert sh("podman", "image", "exists", status.image).returncode == 0


@needs_podman
@pytest.mark.e2e
def test_backend_unsupervised_stays_down_after_a_kill(bed: Any) -> None:
    status = bed("backend-unsupervised")
    assert status.backend.up and not status.backend.supervised and status.backend.supervisor_pid is None
    assert json.loads(get(f"http://127.0.0.1:{PORTS.backend}/health")[1])["supervised"] is False
    assert service_command("kill").returncode == 0
    wait_for(lambda: service_command("status").returncode == 3, 5, "the backend to be down")
    holds_for(lambda: not port_answers(PORTS.backend), 3.0, "the backend staying down")
    assert all(c.state == "running" for c in run(_with_transport(testbed.status, TestbedConfig(
        prefix=PREFIX, port_base=PORT_BASE))).containers)
    assert service_command("start").returncode == 0
    assert get(f"http://127.0.0.1:{PORTS.backend}/health")[0] == 200


@needs_podman
@pytest.mark.e2e
def test_late_unhealthy_turns_unhealthy_after_its_delay(bed: Any) -> None:
    status = bed("late-unhealthy")
    assert status.container("node-ui").health == "healthy"
    started = time.monotonic()

    def unhealthy() -> bool:
        return sh("podman", "healthcheck", "run", NAMES["node-ui"]).returncode == 1

    wait_for(unhealthy, LATE_AFTER + 15, "node-ui to turn unhealthy", interval=1.0)
    assert time.monotonic() - started >= LATE_AFTER - 5  # not at once: it passed at up
    last = inspect("node-ui")["State"]["Health"]["Log"][-1]
    assert "404 Not Found" in last["Output"]
    assert get(f"http://127.0.0.1:{PORTS.node_ui}/")[0] == 200  # the page still serves


@needs_podman
@pytest.mark.e2e
def test_down_removes_everything(bed: Any) -> None:
    status = bed("indexer-lock-permission", "latest-tag")
    cfg = TestbedConfig(prefix=PREFIX, port_base=PORT_BASE)
    run(_with_transport(testbed.down, cfg))
    listed = sh("podman", "ps", "-a", "--filter", f"label={testbed.TESTBED_LABEL}={PREFIX}", "--format", "{{.Names}}")
    assert listed.stdout.strip() == ""
    assert not Path(status.root).exists()
    assert not port_answers(PORTS.backend)
    if f"{testbed.IMAGE_REPO}:latest" not in sh("podman", "ps", "-a", "--format", "{{.Image}}").stdout.split():
        assert sh("podman", "image", "exists", f"{testbed.IMAGE_REPO}:latest").returncode != 0
    after = run(_with_transport(testbed.status, cfg))
    assert not after.exists and all(c.state == "missing" for c in after.containers)
    assert sh("podman", "image", "exists", status.image).returncode == 0  # kept for the next up

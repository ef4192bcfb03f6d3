"""Soak and remediation hooks end to end over the real sshd, on the real testbed (cycle C5).

A soak with no faults passes; a crash, a late-unhealthy UI and an OOM kill during one are
drift that names the container, its kind, podman's time (within a second of podman's own
record) and the reason. The built-in hook starts again a container `podman stop` left
down on rootless podman, and with --dry-run only records that it would; a hook on a
container that dies on every start backs off and gives up with a finding; webhook and
local hooks deliver the event as JSON. Windows and deadlines are short options here.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import podman as pm
from agent.replay import first_difference, replay_run
from agent.testbed import example_config
from store import StoreReader
from tests.agent_process import Agent, Node, read_db
from tests.sshd import ROOTLESS_USER, free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

S = 1_000_000_000
EXTRA = ("tbk-oom", "tbk-flaky")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    if user != "root":
        argv = ("su", "-", user, "-c", " ".join(argv))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def state(user: str, name: str) -> str:
    return as_user(user, "podman", "inspect", "--format", "{{.State.Status}}", name).stdout.strip()


def config_text(prefix: str, port_base: int, extra: str = "", soak: str = "") -> str:
    text = example_config(prefix=prefix, port_base=port_base)
    block = '[soak]\nduration = "5m"\n'
    assert block in text
    text = text.replace(block, '[soak]\nduration = "5m"\nprobe_interval = "5s"\n' + soak)
    text = text.replace('reconcile_interval = "30s"', 'reconcile_interval = "5s"')
    return text + "\n" + extra


def podman_died(user: str, name: str, since_ns: int) -> list[int]:
    argv = pm.events_cmd(["podman"], since_ns=since_ns, follow=False, containers=[name])
    out = as_user(user, *argv).stdout
    return [e.at_ns for e in pm.parse_events(out, "t") if isinstance(e, pm.EventObs) and e.status == "died"]


@pytest.fixture(scope="module")
def bed(sshd, tmp_path_factory):
    node = Node(sshd, "root", "tbk-", 30330, tmp_path_factory.mktemp("soak-root"))
    node.config.write_text(config_text("tbk-", 30330))
    node.ok("testbed", "up", timeout=300)
    yield node
    subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "0", *EXTRA], capture_output=True)
    node.run("testbed", "down")


@pytest.fixture(scope="module")
def rootless_bed(sshd, tmp_path_factory):
    node = Node(sshd, ROOTLESS_USER, "tbh-", 31330, tmp_path_factory.mktemp("soak-rootless"))
    node.config.write_text(config_text("tbh-", 31330, soak=""))
    node.ok("testbed", "up", timeout=300)
    yield node
    node.run("testbed", "down")


def image_of(name: str) -> str:
    return subprocess.run(["podman", "inspect", "--format", "{{.Config.Image}}", name], capture_output=True,
                          text=True).stdout.strip()


def soak_json(node: Node, db: Path, seconds: int, config: Path | None = None) -> tuple[int, dict]:
    result = node.run("soak", "--for", f"{seconds}s", "--json", "--db", str(db), timeout=seconds + 120, config=config)
    assert result.stdout.strip(), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def start_soak(node: Node, db: Path, seconds: int, config: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "agent.cli", "soak", "--for", f"{seconds}s", "--json", "--db", str(db),
            *node.target]
    argv[argv.index("--config") + 1] = str(config)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def window_open(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        rows = read_db(db, "SELECT at_ns FROM observations WHERE kind = 'agent' "
                           "AND json_extract(data, '$.what') = 'window-start'")
    except Exception:
        return None
    return rows[0][0] if rows else None


# ---------------------------------------------------------------- soak


def test_a_minute_of_soak_without_faults_passes(bed, tmp_path):
    code, result = soak_json(bed, tmp_path / "pw.db", 60)
    assert code == 0, result["drifts"]
    assert result["verdict"] == "pass" and result["probes_run"] >= 20
    window = result["window"]
    assert window["end"] - window["start"] >= 59 * S
    with StoreReader(tmp_path / "pw.db") as reader:
        [run] = reader.runs()
        assert run.command == "soak" and run.verdict == "pass"
        [row] = reader.experiments(kind="soak")
        assert row.verdict == "pass" and row.steps == []
        replayed, stored = replay_run(reader, run.id)  # the invariant, for a soak run
        assert stored and first_difference(replayed, stored) is None


def test_a_crash_during_a_soak_is_drift_at_podmans_time(bed, tmp_path):
    db = tmp_path / "pw.db"
    victim = bed.prefix + "lightning"
    proc = start_soak(bed, db, 20, bed.config)
    try:
        wait_for(lambda: window_open(db), 60, "the soak window to open")
        pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", victim], capture_output=True,
                                 text=True).stdout)
        since = time.time_ns() - S
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    result = json.loads(out)
    [died] = podman_died("root", victim, since)
    drifts = [d for d in result["drifts"] if d["container"] == victim and d["kind"] == "state"]
    assert drifts, result["drifts"]
    assert abs(drifts[0]["at_ns"] - died) < S  # podman's own time (here: exactly its died)
    assert "SIGKILL" in drifts[0]["reason"]
    wait_for(lambda: state("root", victim) == "running", 30, f"{victim} back")


def test_an_oom_kill_during_a_soak_names_the_oom_killer(bed, tmp_path):
    image = image_of(bed.prefix + "node")
    subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "0", "tbk-oom"], capture_output=True)
    subprocess.run(["podman", "run", "-d", "--name", "tbk-oom", "--network", "host", "--stop-signal", "KILL",
                    "--restart", "no", "--memory", "16m", image, "sh", "-c",
                    'echo waiting; sleep 12; echo filling; x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done'],
                   check=True, capture_output=True, cwd=tmp_path)  # conmon writes `oom` into its cwd
    config = tmp_path / "oom.toml"
    config.write_text(config_text(bed.prefix, 30330, extra='[containers.tbk-oom]\nrestart_policies = ["no"]\n'))
    code, result = soak_json(bed, tmp_path / "pw.db", 25, config)
    assert code == 1, result
    drifts = [d for d in result["drifts"] if d["container"] == "tbk-oom" and d["kind"] == "state"]
    assert drifts, result["drifts"]
    assert "OOM killer" in drifts[0]["reason"] and "likely" not in drifts[0]["reason"]  # the kernel log said so
    death = drifts[0]["death"]
    assert death["kind"] == "oom-kill" and any("oom-kill" in line for line in death["evidence"]), drifts[0]


def test_a_late_unhealthy_ui_is_drift(bed, tmp_path):
    config = tmp_path / "late.toml"
    config.write_text(config_text(bed.prefix, 30330).replace('late_unhealthy_after = "90s"', 'late_unhealthy_after = "12s"'))
    assert bed.run("testbed", "up", "--fault", "late-unhealthy", timeout=300, config=config).returncode == 0
    try:
        code, result = soak_json(bed, tmp_path / "pw.db", 35, config)
        assert code == 1, result
        ui = bed.prefix + "node-ui"
        assert [d for d in result["drifts"] if d["container"] == ui and d["to_state"] == "unhealthy"], result["drifts"]
    finally:
        bed.ok("testbed", "up", timeout=300)


# ---------------------------------------------------------------- hooks


def test_the_builtin_hook_starts_a_container_podman_stop_left_down_rootless(rootless_bed, sshd, tmp_path, agents):
    victim = rootless_bed.prefix + "lightning"
    db = tmp_path / "pw.db"
    # first with --dry-run: nothing is started, the would-be action is stored
    dry = Agent(sshd, rootless_bed.config, db, "dry", user=ROOTLESS_USER, extra=("--dry-run",)).start()
    agents.append(dry)
    dry.wait_connected()
    assert as_user(ROOTLESS_USER, "podman", "stop", victim).returncode == 0
    wait_for(lambda: read_db(db, "SELECT count(*) FROM observations WHERE kind = 'action' AND container = ? "
                                 "AND json_extract(data, '$.dry_run')", (victim,))[0][0] >= 1, 60,
             "the dry-run hook's would-be action")
    assert state(ROOTLESS_USER, victim) == "exited"  # podman says exited for a stopped container
    assert dry.terminate() == 0
    # then for real: podwarden starts it again after the hook's delay
    real = Agent(sshd, rootless_bed.config, db, "real", user=ROOTLESS_USER).start()
    agents.append(real)
    real.wait_connected()
    wait_for(lambda: state(ROOTLESS_USER, victim) == "running", 60, f"{victim} started again by the hook")

    def actions() -> list[tuple]:
        return read_db(db, "SELECT json_extract(data, '$.action'), json_extract(data, '$.ok'), "
                           "json_extract(data, '$.dry_run') FROM observations WHERE kind = 'action' AND container = ?",
                       (victim,))

    # the action is stored once the start has returned (the writer commits every 100 ms)
    wait_for(lambda: ("hook start-stopped: start", 1, 0) in actions(), 30, "the hook's action in the store")
    assert ("hook start-stopped: start", 1, 1) in actions(), actions()
    assert real.terminate() == 0


def test_a_hook_backs_off_and_gives_up_on_a_container_that_dies_on_every_start(bed, sshd, tmp_path, agents):
    image = image_of(bed.prefix + "node")
    subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "0", "tbk-flaky"], capture_output=True)
    subprocess.run(["podman", "run", "-d", "--name", "tbk-flaky", "--network", "host", "--restart", "no", image,
                    "sh", "-c", "echo starting; sleep 0.5; echo 'fatal: cannot open database'; exit 1"],
                   check=True, capture_output=True)
    config = tmp_path / "flaky.toml"
    config.write_text(config_text(bed.prefix, 30330, extra=(
        '[containers.tbk-flaky]\nrestart_policies = ["no"]\n\n'
        '[[hooks]]\nname = "restart-flaky"\ncontainers = ["tbk-flaky"]\nwhen = { state = ["exited"], held = "0s" }\n'
        'do = "start"\nbackoff_initial = "3s"\nbackoff_max = "12s"\ngive_up_after = 3\n')))
    db = tmp_path / "pw.db"
    agent = Agent(sshd, config, db, "flaky").start()
    agents.append(agent)
    agent.wait_connected()

    def gave_up() -> bool:
        return bool(read_db(db, "SELECT 1 FROM findings WHERE rule = 'hook-gave-up' AND container = 'tbk-flaky'"))

    wait_for(gave_up, 90, "the hook to give up")
    starts = read_db(db, "SELECT at_ns FROM observations WHERE kind = 'action' AND container = 'tbk-flaky' "
                         "AND json_extract(data, '$.action') = 'hook restart-flaky: start' ORDER BY at_ns")
    assert len(starts) == 3, starts
    gaps = [(b - a) / S for (a,), (b,) in zip(starts, starts[1:])]
    assert gaps[1] > gaps[0] * 1.3, gaps  # backed off
    time.sleep(5)  # a loop would fire again within the back-off: none may come (the test wants their absence)
    assert len(read_db(db, "SELECT 1 FROM observations WHERE kind = 'action' AND container = 'tbk-flaky' "
                           "AND json_extract(data, '$.action') = 'hook restart-flaky: start'")) == 3
    assert agent.terminate() == 0


class _Catcher(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_and_local_hooks_deliver_the_event_json(bed, sshd, tmp_path, agents):
    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _Catcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ui = bed.prefix + "node-ui"
    got = tmp_path / "local-event.json"
    config = tmp_path / "hooks.toml"
    config.write_text(config_text(bed.prefix, 30330, extra=(
        "[remediation]\nstart_stopped = false\n\n"
        f'[[hooks]]\nname = "tell"\ncontainers = ["{ui}"]\nwhen = {{ state = ["stopped"], held = "1s" }}\n'
        f'do = "webhook"\nurl = "http://127.0.0.1:{port}/podwarden"\n\n'
        f'[[hooks]]\nname = "note"\ncontainers = ["{ui}"]\nwhen = {{ state = ["stopped"], held = "1s" }}\n'
        f'do = "local"\ncommand = ["sh", "-c", "cat > {got}"]\n')))
    db = tmp_path / "pw.db"
    agent = Agent(sshd, config, db, "hooks").start()
    agents.append(agent)
    try:
        agent.wait_connected()
        subprocess.run(["podman", "stop", ui], check=True, capture_output=True)
        wait_for(lambda: _Catcher.received and got.exists() and got.read_text(), 60, "both hooks to fire")
        for event in (_Catcher.received[0], json.loads(got.read_text())):
            assert event["container"] == ui and event["trigger"]["what"] == "stopped"
            assert event["target"] and event["at"] > 0 and event["dry_run"] is False
        assert agent.terminate() == 0
    finally:
        server.shutdown()
        subprocess.run(["podman", "start", ui], capture_output=True)

"""A fleet from one agent: `podwarden watch --all-targets` over 1, 10 and 50 SSH targets on loopback.

Not a test. Needs root, local podman, OpenSSH's sshd and perl. Fifty real podman nodes do not
fit on this 2-core machine, so all but one target are FAKE nodes: their `podman` (the config
key, an argv list) is `bench/podman_player.pl`, a player that answers `podman version`, `info`,
`ps`, `container inspect`, `events`, `logs` and `healthcheck run` from podman 4.3 output recorded
on this machine (bench/data/podman43/), with this node's own container ids, at a realistic rate:
a log line per container every few seconds (k8s-file records that podwarden's real perl
follower reads), a health check of 3 containers every 30 s, and a crash every so often (died
137 or 1, restart, init, start; the kernel-log read that a died 137 asks for is the real one).
One target stays on real podman: the testbed (`podwarden testbed up`, prefix `tbb-`, port_base
34330), where the bench kills the main process of a UI (kill -9) and times the `exited` change
reaching the store (as bench_latency.py does). Two more targets are bad on purpose: `closed`
(an SSH port nothing listens on) and `slow` (a player that sleeps 20 s before every answer);
neither may delay the others.

Every target is its own name and its own SSH connection to one sshd of the bench's own on
127.0.0.1 (own host key, `MaxStartups 256`, `MaxSessions 64`). For N = 1 (the real target
alone: the baseline in the same run), 10 (+ 7 players, closed, slow) and 50 (+ 47 players,
closed, slow), the real command runs as a user would:

    podwarden watch --all-targets --no-dashboard --json --config CONFIG --db DB

and the bench reports, per N: the agent's CPU (user+sys seconds per minute, /proc/PID/stat,
over the whole measured window, after the targets are connected), its RSS (median and max of
1 s samples, and VmHWM), detection latency (podman's died -> the change committed and seen
by a separate read-only reader, p50/p99) against N = 1, and how long each target took to its
first snapshot (the slow and closed ones must not hold the others back).

    .venv/bin/python bench/bench_fleet.py            # 30 crashes per N
    .venv/bin/python bench/bench_fleet.py --quick    # 6 crashes per N (~55 s)
    .venv/bin/python bench/bench_fleet.py --sizes 1,50 --crashes 50 --verbose

Ends with `fleet: p99_ms_50=... p50_ms_50=... rss_mb_50=... cpu_s_per_min_50=... p99_ratio_50=... ...`
(every N's figures, ratios against N = 1). The testbed is torn down, the sshd stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import ROOT, machine_line, median, percentile, summary

from agent import testbed  # noqa: E402

PREFIX = "tbb-"
PORT_BASE = 34330
PODWARDEN = str(ROOT / ".venv" / "bin" / "podwarden")
PLAYER = Path(__file__).resolve().parent / "podman_player.pl"
RECORDED = Path(__file__).resolve().parent / "data" / "podman43"
SSHD = "/usr/sbin/sshd"
VICTIMS = tuple(PREFIX + s for s in (testbed.NODE_UI, testbed.LIGHTNING_UI, testbed.INDEXER_UI))
CHECKED = {PREFIX + s for s in (testbed.NODE, testbed.LIGHTNING, testbed.INDEXER)}
DEAD_STATES = ("exited", "restarting", "crashlooping")
TICK = os.sysconf("SC_CLK_TCK")
SLOW_S = 20
MS = 1e6
GOAL_P99_MS = 1000
GOAL_RSS_MB = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the bench's own sshd (a copy of tests/sshd.py's)


@dataclass
class Sshd:
    dir: Path
    port: int
    identity: Path
    known_hosts: Path
    process: subprocess.Popen | None = None

    @classmethod
    def make(cls, base: Path) -> "Sshd":
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        host_key, identity = base / "host_ed25519", base / "client_ed25519"
        for path, comment in ((host_key, "bench-fleet-host"), (identity, "bench-fleet-client")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
        authorized = base / "authorized_keys"
        authorized.write_text(identity.with_suffix(".pub").read_text())
        port = free_port()
        (base / "sshd_config").write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {base / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
            "AllowUsers root",
            "MaxStartups 256",  # 50 targets connect at once (the default 10:30:100 drops them)
            "MaxSessions 64",  # per connection; podwarden keeps below its max_channels (8)
            "ClientAliveInterval 0", "LogLevel ERROR", ""]))
        pub = host_key.with_suffix(".pub").read_text().split()
        known = base / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        return cls(base, port, identity, known)

    def start(self, quiet_rc: bool = True) -> None:
        """Start sshd. `quiet_rc`: in a mount namespace of its own where root's ~/.bashrc is empty.

        sshd runs every command through the user's shell, and bash reads ~/.bashrc when sshd
        starts it; root's here runs `pyenv init` (~95 ms of CPU a command, measured), which
        would be counted as the node's cost of every command podwarden sends (50 targets:
        ~60% of a core) instead of podwarden's own. A node's login user rarely does that.
        """
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        config = self.dir / "sshd_config"
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"sshd config invalid: {check.stderr}")
        log = open(self.dir / "sshd.log", "ab")
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        rc = Path("/root/.bashrc")
        if quiet_rc and rc.is_file() and shutil.which("unshare"):
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"mount --bind /dev/null {rc} && exec \"$@\"", "sh", *argv]
        self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start on port {self.port}: see {self.dir / 'sshd.log'}")

    def stop(self) -> None:
        if self.process is None:
            return
        subprocess.run(["pkill", "-KILL", "-P", str(self.process.pid)], capture_output=True)  # its sessions
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


# ---------------------------------------------------------------- the players' nodes


def make_player(dir: Path, name: str, rng: random.Random, *, crash_every: float, log_every: float) -> list[str]:
    """A fake node's files from the recorded podman 4.3 output; its `podman` argv."""
    (dir / "inspect").mkdir(parents=True, exist_ok=True)
    (dir / "logs").mkdir(exist_ok=True)
    inspect = json.loads((RECORDED / "inspect.json").read_text())
    ids = {item["Name"]: f"{rng.getrandbits(256):064x}" for item in inspect}
    old_ids = {item["Name"]: item["Id"] for item in inspect}

    def own(text: str) -> str:
        for cname, old in old_ids.items():
            text = text.replace(old, ids[cname])
        return text

    lines = []
    for item in inspect:
        cname = item["Name"]
        item["State"].update(Status="@@STATUS@@", Running="@@RUNNING@@", Pid="@@PID@@", StartedAt="@@STARTED_AT@@",
                             FinishedAt="@@FINISHED_AT@@")
        item["RestartCount"] = "@@RESTARTS@@"
        item["HostConfig"]["LogConfig"]["Path"] = str(dir / "logs" / f"{cname}.log")
        (dir / "inspect" / f"{cname}.json").write_text(own(json.dumps(item, indent=4)))
        (dir / "logs" / f"{cname}.log").touch()
        role = item["Config"]["Labels"].get("podwarden.role", "app")
        lines.append(f"{cname} {ids[cname]} {role} {int(cname in CHECKED)}")
    (dir / "containers.txt").write_text("\n".join(lines) + "\n")
    for file in ("version.json", "info.json", "ps.json"):
        (dir / file).write_text(own((RECORDED / file).read_text()))
    templates = {}
    for raw in (RECORDED / "events.jsonl").read_text().splitlines():
        event = json.loads(raw)
        if event["Status"] in templates or not event.get("Name", "").startswith(PREFIX):
            continue
        line = raw.replace(event["ID"], "@@ID@@").replace(f'"Name":"{event["Name"]}"', '"Name":"@@NAME@@"')
        line = line.replace(f'"Time":"{event["Time"]}"', '"Time":"@@TIME@@"')
        line = re.sub(r'"podwarden\.role":"[^"]*"', '"podwarden.role":"@@ROLE@@"', line)
        templates[event["Status"]] = line
    (dir / "templates.txt").write_text("".join(f"{status}\t{line}\n" for status, line in templates.items()))
    texts = []
    for raw in (RECORDED / "logs.txt").read_text().splitlines():
        cname, record = raw.split(" ", 1)
        texts.append(f"{cname}\t{record.split(' ', 3)[3]}")
    (dir / "logs.txt").write_text("\n".join(texts) + "\n")
    return ["perl", str(PLAYER), "--dir", str(dir), "--crash-every", str(crash_every), "--log-every",
            str(log_every), "--seed", str(rng.getrandbits(31))]


def fleet_config(path: Path, sshd: Sshd, players: dict[str, list[str]], closed_port: int) -> None:
    """The testbed's example config (its containers, crash loops out of reach) with these targets."""
    text = testbed.example_config(prefix=PREFIX, port_base=PORT_BASE)
    head, _, rest = text.partition("[targets.local]\n")
    rest = rest.split("\n\n", 1)[1]  # the local target's keys

    def ssh_target(name: str, port: int, podman: list[str] | None) -> str:
        keys = [f"[targets.{name}]", 'transport = "ssh"', 'host = "127.0.0.1"', f"port = {port}", 'user = "root"',
                f'identity = "{sshd.identity}"', f'known_hosts = "{sshd.known_hosts}"', 'connect_timeout = "5s"']
        if podman:
            keys.append(f"podman = {json.dumps(podman)}")
        return "\n".join(keys) + "\n"

    targets = [ssh_target("real", sshd.port, None)]
    targets += [ssh_target(name, closed_port if name == "closed" else sshd.port, argv) for name, argv in players.items()]
    head = head.replace('default_target = "local"', 'default_target = "real"')
    text = head + "\n".join(targets) + "\n" + rest
    # every death its own `exited` change (inside a crash loop a death changes no state)
    text, replaced = re.subn(r"(?m)^crashloop_deaths = \d+$", "crashloop_deaths = 1024", text)
    assert replaced == 1, "the example config's [machine] changed: update bench_fleet.fleet_config"
    path.write_text(text)


# ---------------------------------------------------------------- watching the store and the agent


@dataclass
class Seen:
    container: str
    at_ns: int
    to_state: str
    seen_ns: int


class StorePoller(threading.Thread):
    """A separate read-only reader: when each change of the real target becomes visible."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="store-poller", daemon=True)
        self.path = path
        self.rows: list[Seen] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        last, conn = 0, None
        while not self.done.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                rows = conn.execute("SELECT id, container, at_ns, to_state FROM changes WHERE id > ? AND "
                                    "target = 'real' ORDER BY id", (last,)).fetchall()
            except sqlite3.Error:
                rows = []
                if conn is not None:
                    conn.close()
                    conn = None
            now = time.time_ns()
            if rows:
                last = rows[-1][0]
                with self.lock:
                    self.rows.extend(Seen(r[1], r[2], r[3], now) for r in rows)
            self.done.wait(0.005)
        if conn is not None:
            conn.close()

    def find(self, container: str, after_ns: int) -> Seen | None:
        with self.lock:
            for row in self.rows:
                if row.container == container and row.to_state in DEAD_STATES and row.at_ns >= after_ns:
                    return row
        return None

    def states(self) -> dict[str, str]:
        with self.lock:
            return {row.container: row.to_state for row in self.rows}


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


class AgentSampler(threading.Thread):
    """Every second: the agent's CPU (utime + stime) and RSS."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="agent-sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, cpu s, rss MB)
        self.hwm_mb = 0.0
        self.done = threading.Event()

    def sample(self) -> None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        self.hwm_mb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        self.samples.append((time.monotonic(), cpu, rss))

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.sample()


# ---------------------------------------------------------------- one fleet size


def podman_state(name: str) -> tuple[str, int]:
    if not name.startswith(PREFIX):
        raise RuntimeError(f"refusing to touch {name!r}")
    out = subprocess.run(["podman", "container", "inspect", "--format", "{{.State.Status}} {{.State.Pid}}", name],
                         capture_output=True, text=True).stdout.split()
    return (out[0], int(out[1])) if len(out) == 2 and out[1].isdigit() else ("missing", 0)


def wait_running(name: str, not_pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, pid = podman_state(name)
        if state == "running" and pid > 1 and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not run again within {timeout:.0f} s")


@dataclass
class Outcome:
    n: int
    latencies_ms: list[float] = field(default_factory=list)
    missed: int = 0
    cpu_s_per_min: float = 0.0
    rss_median_mb: float = 0.0
    rss_max_mb: float = 0.0
    hwm_mb: float = 0.0
    window_s: float = 0.0
    first_snapshot_s: dict[str, float] = field(default_factory=dict)
    obs_by_target: dict[str, int] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
    exit: int | None = None
    log_tail: str = ""


def run_size(n: int, work: Path, sshd: Sshd, args, progress) -> Outcome:
    rng = random.Random(n)
    players: dict[str, list[str]] = {}
    fakes = max(0, n - 1 - 2) if n > 1 else 0
    for i in range(fakes):
        players[f"p{i + 1:02d}"] = make_player(work / f"n{n}" / f"p{i + 1:02d}", f"p{i + 1:02d}", rng,
                                               crash_every=args.crash_every, log_every=args.log_every)
    if n > 1:
        argv = make_player(work / f"n{n}" / "slow", "slow", rng, crash_every=args.crash_every, log_every=args.log_every)
        players["slow"] = [*argv[:2], "--sleep", str(SLOW_S), *argv[2:]]
        players["closed"] = []
    config, db = work / f"fleet-{n}.toml", work / f"fleet-{n}.db"
    fleet_config(config, sshd, players, free_port())
    out = Outcome(n)
    log = open(work / f"watch-{n}.log", "w")
    started_wall = time.time_ns()
    started = time.monotonic()
    proc = subprocess.Popen([PODWARDEN, "watch", "--all-targets", "--no-dashboard", "--json", "--config", str(config),
                             "--db", str(db)], stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            start_new_session=True)
    sampler, poller = AgentSampler(proc.pid), StorePoller(db)
    sampler.start()
    poller.start()
    try:
        # ready: the real target's victims seen running (its first snapshot is in)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = poller.states()
            if all(states.get(v) in ("running", "healthy") for v in VICTIMS):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the watch ended ({proc.returncode}): {(work / f'watch-{n}.log').read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"N={n}: the real target's UIs not seen running within 60 s")
        progress(f"  N={n}: real target ready after {time.monotonic() - started:.1f} s")
        # and every player has its first snapshot in (the slow and closed ones are not waited for)
        want = {t for t in players if t.startswith("p")}
        while time.monotonic() < deadline and want - {t for (t,) in query(
                db, "SELECT DISTINCT target FROM observations WHERE kind = 'snapshot'")}:
            time.sleep(0.2)
        progress(f"  N={n}: every player ready after {time.monotonic() - started:.1f} s")
        time.sleep(args.warmup)  # their follows and event streams get going
        sampler.sample()
        w0 = sampler.samples[-1]
        for i in range(args.crashes):
            victim = VICTIMS[i % len(VICTIMS)]
            time.sleep(random.uniform(0, 0.5))  # off podman's 250 ms events poll
            state, pid = podman_state(victim)
            if state != "running" or pid <= 1:
                pid = wait_running(victim, 0)
            kill_ns = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            found = None
            deadline = time.monotonic() + 15
            while found is None and time.monotonic() < deadline:
                time.sleep(0.005)
                found = poller.find(victim, kill_ns)
            if found is None:
                out.missed += 1
                progress(f"  N={n}: MISSED the crash of {victim}")
            else:
                died = query(db, "SELECT min(at_ns) FROM observations WHERE kind = 'event' AND target = 'real' "
                                 "AND container = ? AND status = 'died' AND at_ns >= ?", (victim, kill_ns))
                died_ns = died[0][0] if died and died[0][0] else None
                if died_ns is None:  # a snapshot saw it first: time from podman's FinishedAt-based change
                    died_ns = found.at_ns
                out.latencies_ms.append((found.seen_ns - died_ns) / MS)
                progress(f"  N={n} crash {i + 1}/{args.crashes} {victim}: {out.latencies_ms[-1]:.0f} ms")
            wait_running(victim, pid)
            time.sleep(args.settle)
        remaining = args.window - (time.monotonic() - w0[0])
        if remaining > 0:
            time.sleep(remaining)
        sampler.sample()
        w1 = sampler.samples[-1]
        out.window_s = w1[0] - w0[0]
        out.cpu_s_per_min = (w1[1] - w0[1]) / out.window_s * 60
        rss = [s[2] for s in sampler.samples if s[0] >= w0[0]]
        out.rss_median_mb, out.rss_max_mb, out.hwm_mb = median(rss), max(rss), sampler.hwm_mb
    finally:
        sampler.done.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        poller.done.set()
        poller.join(5)
        log.close()
        out.exit = proc.returncode
    out.log_tail = (work / f"watch-{n}.log").read_text()[-1500:]
    for target, first in query(db, "SELECT target, min(id) FROM observations WHERE kind = 'snapshot' GROUP BY target"):
        row = query(db, "SELECT at_ns FROM observations WHERE id = ?", (first,))
        out.first_snapshot_s[target] = (row[0][0] - started_wall) / 1e9 if row else float("nan")
    out.obs_by_target = dict(query(db, "SELECT target, count(*) FROM observations GROUP BY target"))
    out.reconnects = dict(query(db, "SELECT target, count(*) FROM observations WHERE kind = 'agent' AND "
                                    "json_extract(data, '$.what') IN ('lost', 'unreachable') GROUP BY target"))
    return out


def _seconds(value: float | None) -> str:
    return "none in the run" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 crashes per N")
    parser.add_argument("--sizes", default="1,10,50", help="fleet sizes (the first is the baseline)")
    parser.add_argument("--crashes", type=int, default=None, help="crashes of the real target per N (default 30)")
    parser.add_argument("--window", type=float, default=None, help="at least this many seconds measured per N")
    parser.add_argument("--crash-every", type=float, default=60.0, help="seconds between a player's crashes")
    parser.add_argument("--log-every", type=float, default=3.0, help="seconds between a player container's lines")
    parser.add_argument("--keep", action="store_true", help="leave the testbed up")
    parser.add_argument("--keep-bashrc", action="store_true",
                        help="let the bench's sshd sessions read root's ~/.bashrc (see Sshd.start)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--dir", default=None, help="keep the stores, configs and logs here")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    args.crashes = args.crashes or (6 if args.quick else 30)
    args.window = args.window if args.window is not None else (8.0 if args.quick else 60.0)
    args.warmup = 3.0 if args.quick else 10.0
    args.settle = 0.3 if args.quick else 1.0
    if os.geteuid() != 0:
        sys.exit("bench_fleet needs root (its sshd, the real target's podman)")
    for tool in ("podman", "perl", "ssh-keygen"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_fleet needs {tool}")

    def progress(text: str) -> None:
        if args.verbose:
            print(text, flush=True)

    outcomes: list[Outcome] = []
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(args.dir) if args.dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)
        sshd = Sshd.make(work / "sshd")
        sshd.start(quiet_rc=not args.keep_bashrc)
        config_path = work / "testbed.toml"
        config_path.write_text(testbed.example_config(prefix=PREFIX, port_base=PORT_BASE))
        try:
            up = subprocess.run([PODWARDEN, "testbed", "up", "--config", str(config_path), "--target", "local"],
                                capture_output=True, text=True)
            if up.returncode:
                raise RuntimeError(f"testbed up failed: {up.stderr[-2000:]}")
            for n in sizes:
                outcomes.append(run_size(n, work, sshd, args, progress))
                o = outcomes[-1]
                progress(f"  N={n}: p50 {median(o.latencies_ms):.0f} ms, cpu {o.cpu_s_per_min:.2f} s/min, "
                         f"rss {o.rss_max_mb:.0f} MB, exit {o.exit}")
        finally:
            sshd.stop()
            if not args.keep:
                down = subprocess.run([PODWARDEN, "testbed", "down", "--config", str(config_path), "--target", "local"],
                                      capture_output=True, text=True)
                if down.returncode:
                    print(f"  testbed down failed: {down.stderr[-500:]}", flush=True)
    elapsed = time.monotonic() - begun

    base = outcomes[0]
    print(f"  fleet sizes {sizes}: the real testbed target + FAKE player targets (bench/podman_player.pl, recorded "
          f"podman 4.3) + `closed` + `slow` ({SLOW_S} s a command); {args.crashes} kill -9 of a {PREFIX} UI per N; "
          f"{elapsed:.0f} s in all; {machine_line()}")
    fields: dict[str, float | int] = {}
    for o in outcomes:
        p50, p99 = median(o.latencies_ms), percentile(o.latencies_ms, 99)
        others = {t: s for t, s in o.first_snapshot_s.items() if t not in ("slow", "closed", "real")}
        print(f"  N={o.n:3d}: detection p50 {p50:4.0f} ms p99 {p99:4.0f} ms max "
              f"{max(o.latencies_ms) if o.latencies_ms else float('nan'):4.0f} (n={len(o.latencies_ms)}, missed "
              f"{o.missed}); agent CPU {o.cpu_s_per_min:.2f} s/min ({o.cpu_s_per_min / 60 * 100:.1f}% of a core) over "
              f"{o.window_s:.0f} s; RSS median {o.rss_median_mb:.0f} MB max {o.rss_max_mb:.0f} (VmHWM {o.hwm_mb:.0f})")
        if o.n > 1:
            print(f"         vs N=1: p50 x{p50 / median(base.latencies_ms):.2f}, p99 "
                  f"x{p99 / percentile(base.latencies_ms, 99):.2f}, CPU x{o.cpu_s_per_min / base.cpu_s_per_min:.1f}, "
                  f"RSS x{o.rss_max_mb / base.rss_max_mb:.2f}; first snapshot after start: real "
                  f"{o.first_snapshot_s.get('real', float('nan')):.1f} s, players median "
                  f"{median(list(others.values())):.1f} s max {max(others.values(), default=float('nan')):.1f} s, "
                  f"slow {_seconds(o.first_snapshot_s.get('slow'))}, closed "
                  f"{_seconds(o.first_snapshot_s.get('closed'))}; "
                  f"observations: players median {median([v for t, v in o.obs_by_target.items() if t.startswith('p')]):.0f}"
                  f", slow {o.obs_by_target.get('slow', 0)}, closed {o.obs_by_target.get('closed', 0)} (agent "
                  f"records); link lost/unreachable records: closed {o.reconnects.get('closed', 0)}, slow "
                  f"{o.reconnects.get('slow', 0)}, players {sum(v for t, v in o.reconnects.items() if t.startswith('p'))}")
        if o.exit not in (0, None):
            print(f"  the watch exited {o.exit}:\n{o.log_tail}")
        fields[f"p50_ms_{o.n}"] = p50
        fields[f"p99_ms_{o.n}"] = p99
        fields[f"cpu_s_per_min_{o.n}"] = o.cpu_s_per_min
        fields[f"rss_mb_{o.n}"] = o.rss_max_mb
        if o.n > 1:
            fields[f"p99_ratio_{o.n}"] = p99 / percentile(base.latencies_ms, 99)
            fields[f"cpu_ratio_{o.n}"] = o.cpu_s_per_min / base.cpu_s_per_min
        fields[f"missed_{o.n}"] = o.missed
    last = outcomes[-1]
    print(f"  goals at N={last.n}: p99 < {GOAL_P99_MS} ms: "
          f"{'met' if percentile(last.latencies_ms, 99) < GOAL_P99_MS else 'MISSED'}; RSS < {GOAL_RSS_MB} MB: "
          f"{'met' if last.rss_max_mb < GOAL_RSS_MB else 'MISSED'}")
    print(summary("fleet", **fields))


if __name__ == "__main__":
    main()

"""The node's share: CPU of what `podwarden watch` starts on an idle 6-container testbed, per minute.

Not a test. Needs local podman as root and a writable cpuacct cgroup (v1) or cgroup2.
Brings up the testbed (`podwarden testbed up`, prefix `tbb-`, port_base 34330, the config
from `agent.testbed.example_config`), measures the testbed's own CPU without any agent for
a while (the baseline), then runs the real command as a user would, in a subprocess:

    podwarden watch --for N --no-dashboard --json --config CONFIG --db DB --target local

and accounts for every CPU second it causes on the node, over a steady window (after its
start-up, before its shutdown):

  agent        the watch process itself (its /proc/PID/stat utime + stime);
  node share   everything it starts on the node: the podman processes (ps, inspect,
               healthcheck run, info, events), the perl log follower, sh/date/test, and
               the conmon + runc (+ the check command) of each `podman healthcheck run`:
               - the watch process runs in a cgroup of its own (cpuacct): the cgroup's usage
                 less the agent's own is its children (podman, perl, sh, ...);
               - conmon of an exec session double-forks out of that tree and podman moves it
                 to libpod_parent/conmon: this bench is a child subreaper, so those orphans
                 come to it, and `wait4` gives their rusage (conmon, with runc and the check
                 command it waited for);
  testbed      the 6 containers' own cgroups, in the baseline window without an agent (the
               ratio's baseline: what the node spends on the stack itself).

Where the node's time goes: every podman command runs through `/usr/bin/time -a -o LOG`
(the `podman` config key), so each short one leaves its user+sys; the long-running ones
(`podman events`, the perl follower) are sampled from /proc every second.

    .venv/bin/python bench/bench_node.py            # 30 s baseline, 3 min watch
    .venv/bin/python bench/bench_node.py --quick    # 8 s baseline, 40 s watch (~55 s)
    .venv/bin/python bench/bench_node.py --keep     # leave the testbed up afterwards

Ends with `node: node_pct=... node_cpu_s_per_min=... agent_cpu_s_per_min=... testbed_cpu_s_per_min=...
ratio_vs_testbed=... podman_per_min=...`. The testbed is always torn down (unless --keep).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import ROOT, machine_line, summary

from agent import testbed  # noqa: E402

PREFIX = "tbb-"
PORT_BASE = 34330
PODWARDEN = str(ROOT / ".venv" / "bin" / "podwarden")
TIME = "/usr/bin/time"
TICK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
GOAL_PCT = 1.0  # of one core, for a 6-container node


# ---------------------------------------------------------------- cgroups


class CpuGroup:
    """A cgroup of our own whose CPU usage counts the watch process and every descendant that stays in it."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.usage_file: Path | None = None
        self.kind = "none"
        mounts = Path("/proc/mounts").read_text().splitlines()
        name = f"bench-node-{os.getpid()}"
        for line in mounts:  # cgroup v1 cpuacct
            parts = line.split()
            if parts[2] == "cgroup" and "cpuacct" in parts[3].split(","):
                try:
                    path = Path(parts[1]) / name
                    path.mkdir()
                except OSError:
                    continue
                self.path, self.usage_file, self.kind = path, path / "cpuacct.usage", "cpuacct"
                return
        for line in mounts:  # cgroup2: cpu.stat's usage_usec is always there
            parts = line.split()
            if parts[2] == "cgroup2":
                try:
                    path = Path(parts[1]) / name
                    path.mkdir()
                except OSError:
                    continue
                self.path, self.usage_file, self.kind = path, path / "cpu.stat", "cgroup2"
                return

    def usage_s(self) -> float:
        if self.usage_file is None:
            return float("nan")
        text = self.usage_file.read_text()
        if self.kind == "cpuacct":
            return int(text) / 1e9
        return int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6

    def procs(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def enter(self) -> None:
        """Move the calling process in (a preexec_fn: the child joins before it execs)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def container_usage(ids: dict[str, str]) -> float:
    """CPU seconds the testbed's containers used so far (their cgroups, cgroupfs manager, v1 or v2)."""
    total = 0.0
    for cid in ids.values():
        for candidate in (f"/sys/fs/cgroup/cpuacct/libpod_parent/libpod-{cid}/cpuacct.usage",
                          f"/sys/fs/cgroup/libpod_parent/libpod-{cid}/cpu.stat"):
            try:
                text = Path(candidate).read_text()
            except OSError:
                continue
            total += int(text) / 1e9 if candidate.endswith("usage") else \
                int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6
            break
    return total


def proc_cpu(pid: int) -> tuple[float, float] | None:
    """(own user+sys, waited-for children user+sys) seconds of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------- what the watch starts


@dataclass
class Orphan:
    at: float  # monotonic time it was reaped
    comm: str
    cpu_s: float  # its rusage: own + waited-for descendants


@dataclass
class Accounting:
    """What the samplers and the reaper saw."""

    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, cgroup s, agent own s)
    long_running: dict[int, tuple[str, float, float]] = field(default_factory=dict)  # pid -> (class, first, last)
    orphans: list[Orphan] = field(default_factory=list)
    agent_exit: tuple[float, float] | None = None  # (own, children) at exit, from the zombie
    agent_status: int | None = None


def classify(line: str) -> str:
    """What a command line (podman's argv after the time wrapper, or a /proc cmdline) is."""
    if "perl" in line.split(" ", 1)[0] or line.startswith("perl"):
        return "log follower (perl)"
    words = line.split()
    try:
        i = next(i for i, w in enumerate(words) if w.endswith("podman"))
    except StopIteration:
        return words[0].rsplit("/", 1)[-1] if words else "?"
    rest = words[i + 1:]
    if rest[:2] == ["container", "inspect"]:
        return "podman container inspect"
    if rest[:2] == ["healthcheck", "run"]:
        return "podman healthcheck run"
    if rest[:1] == ["events"]:
        return "podman events" + (" --stream=false" if "--stream=false" in rest else " (follow)")
    return "podman " + (rest[0] if rest else "?")


class Reaper(threading.Thread):
    """Reaps every child and orphan of this process (a child subreaper), noting each one's rusage."""

    def __init__(self, acct: Accounting, agent_pid: int) -> None:
        super().__init__(name="reaper", daemon=True)
        self.acct, self.agent_pid = acct, agent_pid
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                info = None
            if info is None:
                time.sleep(0.01)
                continue
            pid = info.si_pid
            name = comm(pid)
            zombie = proc_cpu(pid)
            _, status, usage = os.wait4(pid, 0)
            if pid == self.agent_pid:
                self.acct.agent_exit = zombie
                self.acct.agent_status = os.waitstatus_to_exitcode(status)
                continue
            self.acct.orphans.append(Orphan(time.monotonic(), name, usage.ru_utime + usage.ru_stime))


class Sampler(threading.Thread):
    """Every second: the cgroup's usage, the agent's own CPU, the long-running processes in the cgroup."""

    def __init__(self, acct: Accounting, group: CpuGroup, agent_pid: int, every_s: float = 1.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.acct, self.group, self.agent_pid, self.every_s = acct, group, agent_pid, every_s
        self.done = threading.Event()

    def sample(self) -> None:
        now = time.monotonic()
        own = proc_cpu(self.agent_pid)
        if own is None:
            return
        self.acct.samples.append((now, self.group.usage_s(), own[0]))
        for pid in self.group.procs():
            if pid == self.agent_pid:
                continue
            cpu = proc_cpu(pid)
            if cpu is None:
                continue
            line = cmdline(pid)
            if pid not in self.acct.long_running:
                self.acct.long_running[pid] = (classify(_unwrap(line)), cpu[0] + cpu[1], cpu[0] + cpu[1])
            else:
                cls, first, _ = self.acct.long_running[pid]
                self.acct.long_running[pid] = (cls, first, cpu[0] + cpu[1])

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.sample()


def _unwrap(line: str) -> str:
    """A command line without the /usr/bin/time wrapper in front."""
    if line.startswith(TIME):
        words = line.split()
        i = next((i for i, w in enumerate(words) if w.endswith("podman")), 0)
        return " ".join(words[i:])
    return line


# ---------------------------------------------------------------- the run


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PODWARDEN, *args], capture_output=True, text=True, **kwargs)


def testbed_ids(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["podman", "container", "inspect", "--format", "{{.Name}} {{.Id}}", *names],
                         capture_output=True, text=True)
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def write_config(path: Path, timelog: Path | None) -> list[str]:
    """The testbed's example config; podman through /usr/bin/time when there is one. The containers' names."""
    text = testbed.example_config(prefix=PREFIX, port_base=PORT_BASE)
    if timelog is not None:
        wrapper = json.dumps([TIME, "-a", "-o", str(timelog), "-f", "%U %S %C", "podman"])
        text = text.replace('[targets.local]\ntransport = "local"\n',
                            f'[targets.local]\ntransport = "local"\npodman = {wrapper}\n', 1)
        assert wrapper in text, "the example config's [targets.local] changed: update bench_node.write_config"
    path.write_text(text)
    return re.findall(r"^\[containers\.([^\]]+)\]$", text, re.M)


def read_timelog(path: Path, skip: int, upto: int) -> dict[str, list[float]]:
    """CPU seconds of each podman command that ended in the window (lines skip..upto of the log)."""
    out: dict[str, list[float]] = defaultdict(list)
    try:
        lines = path.read_text().splitlines()[skip:upto]
    except OSError:
        return out
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) < 3 or line.startswith("Command"):
            continue  # "Command terminated by signal 9": the killed events stream
        try:
            cpu = float(parts[0]) + float(parts[1])
        except ValueError:
            continue
        out[classify(parts[2])].append(cpu)
    return out


def count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def watch_argv(tree: Path | None) -> tuple[list[str], Path | None]:
    """How to start podwarden: this checkout's, or another source tree's (run from it, with this venv)."""
    if tree is None:
        return [PODWARDEN], None
    return [sys.executable, "-m", "agent.cli"], tree


def measure_watch(args, work: Path, label: str, tree: Path | None, ids: dict[str, str], progress) -> dict:
    """One `podwarden watch` of the testbed, accounted for over its steady window."""
    config_path = work / f"config-{label}.toml"
    timelog = work / f"podman-times-{label}.log" if Path(TIME).exists() and not args.no_breakdown else None
    write_config(config_path, timelog)
    db = work / f"node-{label}.db"
    info: dict = {"label": label, "tree": str(tree) if tree else "this checkout"}
    group = CpuGroup()
    info["cgroup"] = f"{group.kind} {group.path}"
    libc = ctypes.CDLL(None, use_errno=True)
    info["subreaper"] = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    acct = Accounting()
    log = open(work / f"watch-{label}.log", "w")
    duration = args.warmup + args.window + args.tail
    argv, cwd = watch_argv(tree)
    proc = subprocess.Popen(
        [*argv, "watch", "--for", f"{duration}s", "--no-dashboard", "--json", "--config", str(config_path),
         "--db", str(db), "--target", "local"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=group.enter, cwd=cwd or work)
    launched = time.monotonic()
    reaper = Reaper(acct, proc.pid)
    sampler = Sampler(acct, group, proc.pid)
    reaper.start()
    sampler.start()
    try:
        progress(f"  {label}: watch pid {proc.pid} in cgroup {group.path} for {duration} s")
        time.sleep(args.warmup)
        sampler.sample()
        w0, lines0 = time.monotonic(), count_lines(timelog) if timelog else 0
        c_w0 = container_usage(ids)
        time.sleep(args.window)
        sampler.sample()
        w1, lines1 = time.monotonic(), count_lines(timelog) if timelog else 0
        c_w1 = container_usage(ids)
        deadline = launched + duration + 60
        while acct.agent_status is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # orphans of the last moments
    finally:
        sampler.done.set()
        reaper.done.set()
        sampler.join(5)
        reaper.join(5)
        if acct.agent_status is None:
            proc.kill()
        log.close()
        group.remove()
    info["agent_status"] = acct.agent_status
    window = w1 - w0
    in_window = [sample for sample in acct.samples if w0 - 0.01 <= sample[0] <= w1 + 0.01]
    first, last = in_window[0], in_window[-1]
    span = last[0] - first[0]
    cgroup_s, agent_s = last[1] - first[1], last[2] - first[2]
    orphans = [o for o in acct.orphans if w0 <= o.at <= w1]
    orphan_s = sum(o.cpu_s for o in orphans)
    per_min = 60 / span
    info.update(window_s=window, span_s=span, per_min=per_min, agent_per_min=agent_s * per_min,
                children_per_min=(cgroup_s - agent_s) * per_min, orphans_per_min=orphan_s * per_min,
                node_per_min=(cgroup_s - agent_s + orphan_s) * per_min,
                testbed_watched_per_min=(c_w1 - c_w0) / window * 60)
    orphan_kinds: dict[str, list[float]] = defaultdict(list)
    for o in orphans:
        orphan_kinds[o.comm].append(o.cpu_s)
    info["orphan_kinds"] = dict(orphan_kinds)
    info["timelog"] = read_timelog(timelog, lines0, lines1) if timelog else {}
    long_running: dict[str, float] = defaultdict(float)
    for cls, first_cpu, last_cpu in acct.long_running.values():
        long_running[cls] += last_cpu - first_cpu
    info["long_running"] = dict(long_running)
    info["watch_log"] = (work / f"watch-{label}.log").read_text()[-3000:]
    return info


def measure(args, work: Path, progress) -> tuple[dict, list[dict]]:
    """The testbed up, its own CPU alone, then each watch (the baseline tree's first, if any)."""
    config_path = work / "config.toml"
    names = write_config(config_path, None)
    info: dict = {"names": names}
    started = time.monotonic()
    up = run_cli(["testbed", "up", "--config", str(config_path), "--target", "local"])
    if up.returncode != 0:
        raise RuntimeError(f"testbed up failed ({up.returncode}): {up.stderr[-2000:]}")
    info["up_s"] = time.monotonic() - started
    ids = testbed_ids(names)
    watches = []
    try:
        time.sleep(args.settle)  # the testbed's start-up is not idle
        t0, c0 = time.monotonic(), container_usage(ids)
        time.sleep(args.baseline)  # the baseline: the testbed's own CPU with no agent watching
        t1, c1 = time.monotonic(), container_usage(ids)
        info["testbed_per_min"] = (c1 - c0) / (t1 - t0) * 60
        if args.baseline_tree:
            watches.append(measure_watch(args, work, "baseline-tree", Path(args.baseline_tree), ids, progress))
        watches.append(measure_watch(args, work, "this-checkout", None, ids, progress))
        return info, watches
    finally:
        if not args.keep:
            down = run_cli(["testbed", "down", "--config", str(config_path), "--target", "local"])
            if down.returncode != 0:
                print(f"  testbed down failed ({down.returncode}): {down.stderr[-500:]}", flush=True)


def report(info: dict, testbed_own: float) -> float:
    """Print one watch's figures and where the node's time goes; its node share per minute."""
    per_min, node, agent = info["per_min"], info["node_per_min"], info["agent_per_min"]
    print(f"  [{info['label']}: {info['tree']}] measured {info['span_s']:.1f} s of steady watch; cgroup "
          f"{info['cgroup']}; subreaper {info['subreaper']}")
    print(f"    node share (what the watch starts): {node:.3f} CPU s/min = {node / 60 * 100:.2f}% of one core "
          f"(goal < {GOAL_PCT:g}%): children in the cgroup (podman, perl, sh, time) {info['children_per_min']:.3f}, "
          f"exec sessions' conmon/runc/check (orphans) {info['orphans_per_min']:.3f}")
    print(f"    agent (the watch process itself):   {agent:.3f} CPU s/min = {agent / 60 * 100:.2f}% of one core")
    print(f"    the testbed's containers while watched: {info['testbed_watched_per_min']:.3f} s/min (alone: "
          f"{testbed_own:.3f}; the checks' commands run inside)")
    rows: list[tuple[str, int, float]] = []
    for cls, cpus in sorted(info["timelog"].items()):
        rows.append((cls, len(cpus), sum(cpus)))
    for cls, cpu in sorted(info["long_running"].items()):
        if cpu > 0:
            rows.append((cls + " [sampled]", 0, cpu))
    for name, cpus in sorted(info["orphan_kinds"].items()):
        rows.append((f"{name} (exec session, orphan)", len(cpus), sum(cpus)))
    accounted = sum(cpu for _, _, cpu in rows)
    print("    where the node's time goes, per minute (runs, CPU s, share):")
    for cls, runs, cpu in sorted(rows, key=lambda r: -r[2]):
        share = cpu * per_min / node * 100 if node else 0
        print(f"      {cls:44s} {runs * per_min:6.1f} runs  {cpu * per_min:7.3f} s  {share:5.1f}%")
    print(f"      {'rest (sh, date, the time wrappers, edges)':44s} {'':6s}       "
          f"{node - accounted * per_min:7.3f} s")
    if info.get("agent_status") not in (0, None):
        print(f"    the watch exited {info['agent_status']}:\n{info['watch_log']}")
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s baseline, 40 s watch")
    parser.add_argument("--window", type=float, default=None, help="seconds of steady watch measured")
    parser.add_argument("--baseline", type=float, default=None, help="seconds of the testbed alone")
    parser.add_argument("--no-breakdown", action="store_true", help="podman without the /usr/bin/time wrapper")
    parser.add_argument("--keep", action="store_true", help="leave the testbed up")
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="also measure the watch of another source tree (e.g. `git archive HEAD` unpacked), first")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    args.window = args.window or (31.0 if args.quick else 180.0)
    args.baseline = args.baseline or (6.0 if args.quick else 30.0)
    args.warmup = 5.0 if args.quick else 10.0  # the agent's start-up: imports, first reconcile
    args.tail = 1.0
    args.settle = 2.0 if args.quick else 10.0
    if os.geteuid() != 0:
        sys.exit("bench_node needs root (cgroups, the subreaper's view of podman's conmon)")
    if shutil.which("podman") is None:
        sys.exit("bench_node needs podman")

    def progress(text: str) -> None:
        if args.verbose:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        info, watches = measure(args, Path(tmp), progress)
    testbed_own = info["testbed_per_min"]
    print(f"  testbed {PREFIX} (6 containers, 3 health-checked every 30 s) up in {info['up_s']:.1f} s; baseline: its "
          f"containers alone, no agent, {testbed_own:.3f} CPU s/min; {machine_line()}")
    nodes = [report(w, testbed_own) for w in watches]
    current = watches[-1]
    node, agent = current["node_per_min"], current["agent_per_min"]
    fields: dict = {}
    if len(watches) > 1:
        print(f"  this checkout against the baseline tree: node share x{nodes[-1] / nodes[0]:.2f} "
              f"({nodes[0]:.3f} -> {nodes[-1]:.3f} s/min), agent x{agent / watches[0]['agent_per_min']:.2f}")
        fields.update(baseline_node_pct=nodes[0] / 60 * 100, ratio_vs_baseline_tree=nodes[-1] / nodes[0])
    podman_runs = sum(len(c) for k, c in current["timelog"].items() if k.startswith("podman")) * current["per_min"]
    print(summary("node", node_pct=node / 60 * 100, node_cpu_s_per_min=node, agent_cpu_s_per_min=agent,
                  agent_pct=agent / 60 * 100, testbed_cpu_s_per_min=testbed_own,
                  ratio_vs_testbed=node / testbed_own if testbed_own else float("nan"),
                  podman_per_min=podman_runs, window_s=current["span_s"], **fields))


if __name__ == "__main__":
    main()

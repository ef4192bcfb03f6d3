"""The node's kernel log, read for the OOM killer's verdicts on containers.

podman 4.3 reports `State.OOMKilled=false` even for a real OOM kill (measured here),
so the kernel log is the evidence. Measured on this machine (kernel 6.18, cgroup v1,
cgroupfs manager, podman 4.3 as root), one kill of a container run with
`--memory 16m` leaves, at the death's moment:

    2026-11-30T13:59:03,353497+00:00 oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),
        cpuset=libpod-<id>,mems_allowed=0,oom_memcg=/libpod_parent/libpod-<id>,
        task_memcg=/libpod_parent/libpod-<id>,task=sh,pid=25149,uid=0
    2026-11-30T13:59:03,353521+00:00 Memory cgroup out of memory: Killed process 25149 (sh)
        total-vm:26852kB, anon-rss:15876kB, file-rss:1520kB, shmem-rss:0kB, UID:0 ...

(`dmesg --time-format iso`; the stamp was 0.5 s before podman's `died` event). Only the
`oom-kill:` line names the container (its cgroup, `libpod-<full id>`, `.scope` under
the systemd cgroup manager); the `Killed process` line is paired with it by pid.

Who can read it: root can run `dmesg`; an unprivileged user cannot when
`kernel.dmesg_restrict = 1` (the Debian default: "dmesg: read kernel buffer failed:
Operation not permitted"), and `journalctl -k` needs a journal the user may read (none
here: "No journal files were found"). Then the scan says the evidence is unavailable,
and why, and callers fall back to a *likely* OOM kill.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from agent.errors import TransportError
from agent.transport import Transport

KERNEL_LOG_TIMEOUT_S = 15.0
# (argv, how its lines are stamped), tried in order until one answers
KERNEL_LOG_COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("dmesg", "--time-format", "iso"), "dmesg-iso"),
    (("journalctl", "-k", "-o", "short-iso-precise", "--no-pager"), "journal-iso"),
)

_ID_RE = re.compile(r"libpod-(?:conmon-)?([0-9a-f]{64})")
# dmesg --time-format iso: 2026-11-30T13:59:03,353497+00:00 TEXT
_DMESG_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[,.](\d+))?([+-]\d\d:?\d\d|Z) (.*)")
# journalctl -o short-iso-precise: 2026-11-30T13:59:03.353497+0000 HOST kernel: TEXT
_JOURNAL_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[,.](\d+))?([+-]\d\d:?\d\d|Z) \S+ kernel: (.*)")
_OOM_KILL_RE = re.compile(r"\boom-kill:(\S+)")
_KILLED_RE = re.compile(r"\b(?:Memory cgroup out of memory|Out of memory): Killed process (\d+) \(([^)]*)\)")


@dataclass(frozen=True, slots=True)
class OomKill:
    """One kill by the kernel's OOM killer of a process in a container's cgroup."""

    container_id: str
    at_ns: int  # wall-clock time of the kernel's `oom-kill:` line (the node's clock)
    pid: int
    task: str  # the killed process's name
    constraint: str  # CONSTRAINT_MEMCG: the container's own limit; CONSTRAINT_NONE: the whole node ran out
    line: str  # the `oom-kill:` line, as the kernel wrote it
    killed_line: str = ""  # the `Killed process PID (name) ...` line, when found

    @property
    def evidence(self) -> str:
        """The kernel's own words for this kill, one line."""
        return f"{self.line} | {self.killed_line}" if self.killed_line else self.line

    @property
    def by_own_limit(self) -> bool:
        """The container hit its own memory limit (not a node-wide shortage)."""
        return self.constraint == "CONSTRAINT_MEMCG"


@dataclass(frozen=True)
class OomScan:
    """What the kernel log says about OOM kills of some containers, or why it could not be read."""

    available: bool
    source: str = ""  # the command that answered, e.g. "dmesg --time-format iso"
    reason: str = ""  # why the log could not be read (available is False)
    kills: Mapping[str, tuple[OomKill, ...]] = field(default_factory=dict)  # by full container id

    def for_container(self, container_id: str) -> tuple[OomKill, ...]:
        """The kills of one container, oldest first (none when unavailable)."""
        return self.kills.get(container_id, ())

    def near(self, container_id: str, at_ns: int, slack_ns: int) -> OomKill | None:
        """The kill of a container closest to `at_ns` within `slack_ns`, if any."""
        close = [kill for kill in self.for_container(container_id) if abs(kill.at_ns - at_ns) <= slack_ns]
        return min(close, key=lambda kill: abs(kill.at_ns - at_ns)) if close else None


def _stamp_ns(date: str, fraction: str | None, zone: str) -> int:
    if zone == "Z":
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    moment = _dt.datetime.fromisoformat(f"{date}{zone}")
    digits = (fraction or "")[:9].ljust(9, "0")
    return int(moment.timestamp()) * 1_000_000_000 + int(digits)


def parse_oom_kills(text: str, container_ids: Iterable[str], since_ns: int = 0,
                    style: str = "dmesg-iso") -> dict[str, tuple[OomKill, ...]]:
    """The OOM kills of `container_ids` (full ids) at or after `since_ns` in a kernel log.

    `style` is how lines are stamped: `dmesg-iso` (`dmesg --time-format iso`) or
    `journal-iso` (`journalctl -k -o short-iso-precise`). Lines that do not parse are
    skipped: the kernel log holds everything the kernel says.
    """
    wanted = set(container_ids)
    stamp_re = _JOURNAL_RE if style == "journal-iso" else _DMESG_RE
    found: dict[str, list[OomKill]] = {}
    waiting: dict[int, tuple[str, int]] = {}  # pid -> (container id, index) awaiting its Killed line
    for raw in text.split("\n"):
        match = stamp_re.match(raw.rstrip("\r"))
        if match is None:
            continue
        message = match.group(4)
        oom = _OOM_KILL_RE.search(message)
        if oom is not None:
            fields = dict(part.split("=", 1) for part in oom.group(1).split(",") if "=" in part)
            cgroup = fields.get("task_memcg") or fields.get("oom_memcg") or fields.get("cpuset") or ""
            named = _ID_RE.search(cgroup)
            if named is None or named.group(1) not in wanted:
                continue
            try:
                at_ns = _stamp_ns(match.group(1), match.group(2), match.group(3))
                pid = int(fields.get("pid", "0"))
            except ValueError:
                continue
            if at_ns < since_ns:
                continue
            kill = OomKill(named.group(1), at_ns, pid, fields.get("task", ""), fields.get("constraint", ""),
                           message.strip())
            kills = found.setdefault(kill.container_id, [])
            kills.append(kill)
            waiting[pid] = (kill.container_id, len(kills) - 1)
            continue
        killed = _KILLED_RE.search(message)
        if killed is not None and int(killed.group(1)) in waiting:
            container_id, index = waiting.pop(int(killed.group(1)))
            kill = found[container_id][index]
            found[container_id][index] = OomKill(kill.container_id, kill.at_ns, kill.pid,
                                                 kill.task or killed.group(2), kill.constraint, kill.line,
                                                 message.strip())
    return {container_id: tuple(kills) for container_id, kills in found.items()}


def _why_not(result_stderr: str, result_stdout: str, exit_status: int) -> str:
    for text in (result_stderr, result_stdout):
        for line in text.splitlines():
            if line.strip():
                return line.strip()[:200]
    return f"exit {exit_status}"


async def oom_kills(transport: Transport, container_ids: Iterable[str], since_ns: int = 0) -> OomScan:
    """Read the node's kernel log and find OOM kills of `container_ids` since `since_ns`.

    Tries `dmesg --time-format iso`, then `journalctl -k`. Never raises for an
    operational failure: an unreadable log (no permission, no such command, a timeout)
    is an OomScan with `available=False` and the reason. Raises TransportError only
    when the link to the node is lost.
    """
    ids = sorted(set(container_ids))
    reasons: list[str] = []
    for argv, style in KERNEL_LOG_COMMANDS:
        try:
            result = await transport.run(list(argv), timeout=KERNEL_LOG_TIMEOUT_S)
        except TransportError as exc:
            if not transport.connected:
                raise
            reasons.append(f"{argv[0]}: {exc.reason}")
            continue
        if not result.ok:
            reasons.append(f"{argv[0]}: {_why_not(result.stderr, result.stdout, result.exit_status)}")
            continue
        if style == "journal-iso" and not _JOURNAL_RE.search(result.stdout):
            # journalctl exits 0 when there is no journal it may read ("No journal files were found")
            reasons.append(f"{argv[0]}: {_why_not(result.stderr, 'no kernel messages', 0)}")
            continue
        return OomScan(True, " ".join(argv), "", parse_oom_kills(result.stdout, ids, since_ns, style))
    return OomScan(False, "", "; ".join(reasons) or "no kernel log command answered")

"""Deep health probes of containers and host services, each ending in one ProbeObs.

A probe never raises for an operational failure: a refused port, a dead link, a podman
error or a hung command all become a failed probe whose `detail` says why. Every probe
is bounded by its `timeout` (podman 4.3 does not enforce `--health-timeout`, so a hung
health check is cut here). Only bugs raise.

Cutting off `podman exec` / `podman healthcheck run` on the host does not end what it
started in the container (measured, podman 4.3, root and rootless: after
`timeout 1 podman exec C sleep 1000` or `timeout -s KILL 1 podman healthcheck run C`,
`podman top C` still lists the sleep, whose host parent is the session's conmon). So a
timed-out exec or health probe ends its processes in the container too: see
`end_leftovers`.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


from agent import podman
from agent.config import (
    ExecProbe,
    HealthcheckProbe,
    HttpProbe,
    LogsProbe,
    Probe,
    ServiceProbe,
    TcpProbe,
    format_duration,
)
from agent.errors import CommandTimeout, InvalidContainerName, TransportError
from agent.http import BadHttpReply, HttpResponse, TlsFailed, TlsVerify, http_get
from agent.recent_logs import error_lines, read_logs, without_podman_noise
from agent.transport import Transport
from machines.observations import ProbeObs

EXCERPT_CHARS = 500
OUTPUT_CHARS = 8000  # what diagnosis gets to read of a probe's output
ERROR_LINES_SHOWN = 5
PROBE_MARK = "PODWARDEN_PROBE"  # env var naming the probe run on each process it execs
CLEANUP_TIMEOUT = 15.0  # finding and ending what a timed-out probe left in the container
SNAPSHOT_TIMEOUT = 10.0  # `podman top` before a health check
CLEANUP_ROUNDS = 8  # each ends one generation of leftovers, leaves first


@dataclass(frozen=True)
class ProbeResult:
    """A probe's observation plus what diagnosis needs beyond the excerpt."""

    obs: ProbeObs
    exit_status: int | None = None  # of the command run (a health check: of its re-run, if any)
    output: str = ""  # up to OUTPUT_CHARS of what the command printed
    lines: tuple[str, ...] = ()  # a logs probe: the log lines it read, oldest first


@dataclass
class ProbeRun:
    """One run of a probe: the token its execs carry and, for a health check, what ran before it."""

    token: str  # PROBE_MARK's value on every process this run execs
    before: list[ContainerProcess] | None = None  # None: not taken, no unmarked process is ended


class _Failed(Exception):
    """Internal: the probe ran and its expectation failed; carries the why and what it saw."""

    def __init__(self, detail: str, output: str = "", exit_status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.output = output
        self.exit_status = exit_status


def probe_name(probe: Probe) -> str:
    """The name a probe is reported under: its own, else its type."""
    return probe.name or probe.type


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


async def run_probe(transport: Transport, podman_cmd: Sequence[str], name: str, probe: Probe, *,
                    error_patterns: Iterable[str] = (), ignore_patterns: Iterable[str] = (),
                    now_ns: int | None = None) -> ProbeObs:
    """Run one probe of container (or host service) `name`; never raises for operational failures."""
    result = await execute_probe(transport, podman_cmd, name, probe, error_patterns=error_patterns,
                                 ignore_patterns=ignore_patterns, now_ns=now_ns)
    return result.obs


async def execute_probe(transport: Transport, podman_cmd: Sequence[str], name: str, probe: Probe, *,
                        error_patterns: Iterable[str] = (), ignore_patterns: Iterable[str] = (),
                        now_ns: int | None = None) -> ProbeResult:
    """Like `run_probe`, also returning the exit status, longer output and log lines it saw."""
    at_ns = time.time_ns() if now_ns is None else now_ns
    run = ProbeRun(secrets.token_hex(8))
    if isinstance(probe, HealthcheckProbe):
        # podman runs the check in an exec session we cannot mark: note what runs before it
        run.before = await _snapshot(transport, podman_cmd, name)
    started = time.monotonic()
    output, exit_status, lines, detail, ok, note = "", None, (), "", False, ""
    finished: float | None = None
    try:
        async with asyncio.timeout(probe.timeout):
            if isinstance(probe, ExecProbe):
                output, exit_status = await _exec(transport, podman_cmd, name, probe, run)
            elif isinstance(probe, HttpProbe):
                output, note = await _http(transport, probe)
            elif isinstance(probe, TcpProbe):
                output = await _tcp(transport, probe)
            elif isinstance(probe, HealthcheckProbe):
                output, exit_status = await _healthcheck(transport, podman_cmd, name, probe, run)
            elif isinstance(probe, ServiceProbe):
                output, exit_status = await _service(transport, name, probe)
            elif isinstance(probe, LogsProbe):
                output, lines = await _logs(transport, podman_cmd, name, probe, error_patterns,
                                            ignore_patterns, at_ns)
            else:  # pragma: no cover - the config's discriminated union has no other members
                raise TypeError(f"unknown probe type {type(probe).__name__}")
        ok, detail = True, note
    except _Failed as failed:
        detail, output, exit_status = failed.detail, failed.output, failed.exit_status
    except (TimeoutError, CommandTimeout):
        detail = f"timed out after {format_duration(probe.timeout)}"
        finished = time.monotonic()  # the probe's time, not the cleanup's
        if isinstance(probe, (ExecProbe, HealthcheckProbe)):
            detail += (await end_leftovers(transport, podman_cmd, name, run)).describe()
    except InvalidContainerName as exc:
        detail = str(exc)
    except TlsFailed as exc:
        detail = exc.reason
    except BadHttpReply as exc:
        detail = f"bad HTTP reply: {exc.reason}"
    except TransportError as exc:
        detail = f"could not run: {exc.reason}"
    except ConnectionRefusedError as exc:
        detail = f"connection refused ({exc})" if str(exc) else "connection refused"
    except OSError as exc:
        detail = f"connection failed: {exc.strerror or exc or type(exc).__name__}"
    latency_ms = ((finished or time.monotonic()) - started) * 1000
    obs = ProbeObs(
        target=transport.name, container=name, at_ns=at_ns, probe=probe_name(probe), probe_type=probe.type,
        ok=ok, latency_ms=round(latency_ms, 1), excerpt=_excerpt(output), detail=detail,
    )
    return ProbeResult(obs, exit_status, output[:OUTPUT_CHARS], tuple(lines))


# ---------------------------------------------------------------- exec


def marked_exec_cmd(podman_cmd: Sequence[str], name: str, argv: Sequence[str], token: str) -> list[str]:
    """`podman exec --env PODWARDEN_PROBE=TOKEN NAME ARGV...`: every process it starts carries the token.

    Raises InvalidContainerName, ValueError for an empty argv.
    """
    _, checked_name, *checked_argv = podman.exec_cmd((), name, argv)
    return [*podman_cmd, "exec", "--env", f"{PROBE_MARK}={token}", checked_name, *checked_argv]


async def _exec(transport: Transport, podman_cmd: Sequence[str], name: str, probe: ExecProbe,
                run: ProbeRun) -> tuple[str, int]:
    result = await transport.run(marked_exec_cmd(podman_cmd, name, probe.command, run.token), timeout=probe.timeout)
    output = result.stdout if result.stdout.strip() else result.stderr
    if result.exit_status != probe.expect_exit:
        reason = _first_line(result.stderr) or _first_line(result.stdout) or "no output"
        raise _Failed(f"exit {result.exit_status} (expected {probe.expect_exit}): {reason}",
                      (result.stdout + result.stderr), result.exit_status)
    check_output(result.stdout, json_keys=probe.expect_json_keys, json_values=probe.expect_json,
                 regex=probe.expect_regex, also=result.stderr, exit_status=result.exit_status)
    return output, result.exit_status


# ---------------------------------------------------------------- http and tcp


def cut_at(response: HttpResponse) -> str:
    """`cut at N bytes (M announced)` when the reply was longer than we read, else ""."""
    if not response.truncated:
        return ""
    announced = response.announced_length
    return f"cut at {len(response.body)} bytes" + (f" ({announced} announced)" if announced else "")


async def _http(transport: Transport, probe: HttpProbe) -> tuple[str, str]:
    """The body and a note for the detail (a cut body is said, even when the probe passes)."""
    verify = TlsVerify(probe.ca_file, probe.cert_sha256, probe.insecure_skip_verify)
    response = await http_get(transport, probe.url, timeout=probe.timeout, tls=verify)
    body = response.text()
    cut = cut_at(response)
    try:
        if response.status != probe.expect_status:
            raise _Failed(f"HTTP {response.status} {response.reason}".rstrip() + f" (expected {probe.expect_status})",
                          body)
        check_output(body, json_values=probe.expect_json, regex=probe.expect_regex)
    except _Failed as failed:
        if cut:  # a miss on a cut body may be the cut's doing: say so
            failed.detail = f"{failed.detail}; the body was {cut}"
        raise
    return body, f"body {cut}" if cut else ""


async def _tcp(transport: Transport, probe: TcpProbe) -> str:
    _, writer = await transport.open_tcp(probe.host, probe.port)
    writer.close()  # type: ignore[attr-defined]
    return f"{probe.host}:{probe.port} accepts connections"


# ---------------------------------------------------------------- podman healthcheck


def healthcheck_argv(test: Sequence[str]) -> list[str] | None:
    """The argv podman runs for a `Config.Healthcheck.Test` (CMD or CMD-SHELL), or None."""
    if not test:
        return None
    kind, rest = test[0], list(test[1:])
    if kind == "CMD" and rest:
        return rest
    if kind == "CMD-SHELL" and rest:
        return ["/bin/sh", "-c", " ".join(rest)]
    if kind not in ("CMD", "CMD-SHELL", "NONE"):
        return list(test)
    return None


async def _healthcheck(transport: Transport, podman_cmd: Sequence[str], name: str,
                       probe: HealthcheckProbe, run: ProbeRun) -> tuple[str, int]:
    result = await transport.run(podman.healthcheck_cmd(podman_cmd, name), timeout=probe.timeout)
    outcome = podman.healthcheck_outcome(result.exit_status)
    if outcome == "healthy":
        return await _last_health_output(transport, podman_cmd, name) or "healthy", 0
    if outcome == "error":
        reason = _first_line(without_podman_noise(result.stderr)) or _first_line(result.stdout) or "no output"
        raise _Failed(f"health check could not run (exit {result.exit_status}): {reason}",
                      result.stdout + result.stderr, result.exit_status)
    # unhealthy: podman prints only "unhealthy"; the check's own output is in inspect's log
    output = await _last_health_output(transport, podman_cmd, name)
    exit_status = result.exit_status
    if not output.strip():
        # 4.3 records nothing when the runtime cannot exec a CMD-form check (missing binary):
        # run the same command with `podman exec` to see why.
        output, exit_status = await _rerun_check(transport, podman_cmd, name, probe.timeout, run.token)
    raise _Failed(f"unhealthy: {_first_line(output) or 'the check printed nothing'}", output, exit_status)


async def _last_health_output(transport: Transport, podman_cmd: Sequence[str], name: str) -> str:
    facts = await _inspect_one(transport, podman_cmd, name)
    if facts is None or not facts.health_log:
        return ""
    return facts.health_log[-1].output


async def _inspect_one(transport: Transport, podman_cmd: Sequence[str], name: str) -> podman.InspectFacts | None:
    result = await transport.run(podman.inspect_cmd(podman_cmd, [name]), timeout=30)
    facts = podman.parse_inspect(result.stdout, transport.name, time.time_ns())
    if isinstance(facts, podman.ParseError) or not facts:
        return None
    return facts[0]


async def _rerun_check(transport: Transport, podman_cmd: Sequence[str], name: str,
                       timeout: float, token: str) -> tuple[str, int | None]:
    facts = await _inspect_one(transport, podman_cmd, name)
    argv = healthcheck_argv(facts.healthcheck_test) if facts is not None else None
    if argv is None:
        return "", None
    result = await transport.run(marked_exec_cmd(podman_cmd, name, argv, token), timeout=timeout)
    return (result.stdout + result.stderr).strip(), result.exit_status


# ---------------------------------------------------------------- what a timed-out probe leaves behind
#
# Measured on podman 4.3 (root, and rootless as a user with subuids):
# - `podman top C pid ppid hpid state args` answers in ~20 ms and lists exec sessions
#   too: their first process has in-container PPID 0 (its parent, conmon, is outside the
#   namespace), like PID 1; a zombie's HPID is `?`. ELAPSED is whole seconds: too coarse
#   to tell a process started during a probe, hence the snapshot taken before it.
# - `podman exec --env PODWARDEN_PROBE=T C CMD`: CMD and its children carry T in
#   /proc/HPID/environ on the host. Root reads it; rootless reads it for container root
#   (the user's own uid) but not for a process running as a subuid (`--user 1234`):
#   `podman unshare grep ...` reads both. `podman healthcheck run` takes no --env.
# - `kill -9 HPID` from the host ends the process; `podman exec` then returns 137, a
#   health check run records exit 1. Rootless, `podman unshare kill -9 HPID` works for
#   any container uid (plain `kill` did too here; unshare is the documented way). As
#   root `podman unshare` refuses ("please use unshare with rootless", exit 125).
# - A killed process whose parent died with it is reparented to the container's PID 1
#   and stays a zombie (`[sleep]`, state Z, no memory) until PID 1 reaps it; a PID 1
#   that never reaps (busybox `sleep`) keeps it until the container stops.


@dataclass(frozen=True)
class ContainerProcess:
    """One row of `podman top NAME pid ppid hpid state args`."""

    pid: int  # in the container's PID namespace
    ppid: int  # in the container; 0: started from outside it (PID 1, or an exec session's first process)
    hpid: int | None  # on the host; None when podman cannot tell (a zombie)
    state: str
    args: str

    @property
    def alive(self) -> bool:
        return self.hpid is not None and not self.state.startswith("Z")


def top_cmd(podman_cmd: Sequence[str], name: str) -> list[str]:
    """`podman top NAME pid ppid hpid state args`; raises InvalidContainerName."""
    _, checked_name, *_ = podman.exec_cmd((), name, ["true"])
    return [*podman_cmd, "top", checked_name, "pid", "ppid", "hpid", "state", "args"]


def parse_top(text: str) -> list[ContainerProcess]:
    """The rows of `top_cmd`'s output (header skipped, unreadable rows dropped)."""
    processes = []
    for line in text.splitlines()[1:]:
        fields = line.split(None, 4)
        if len(fields) < 4 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        hpid = int(fields[2]) if fields[2].isdigit() else None
        processes.append(ContainerProcess(int(fields[0]), int(fields[1]), hpid, fields[3],
                                          fields[4].strip() if len(fields) > 4 else ""))
    return processes


def exec_session_pids(processes: Sequence[ContainerProcess]) -> set[int]:
    """Pids (in the container) of processes descending from an exec session, not from PID 1.

    An exec session's first process has PPID 0 like PID 1; a chain that breaks (parent
    not listed) counts as not a session: unknown is left alone.
    """
    by_pid = {p.pid: p for p in processes}
    members = set()
    for process in processes:
        current, seen = process, {process.pid}
        while current.pid != 1 and current.ppid in by_pid and current.ppid not in seen:
            current = by_pid[current.ppid]
            seen.add(current.pid)
        if current.ppid == 0 and current.pid != 1:
            members.add(process.pid)
    return members


async def _snapshot(transport: Transport, podman_cmd: Sequence[str], name: str) -> list[ContainerProcess] | None:
    """The container's processes before a health check, or None when they cannot be listed."""
    # None: no unmarked process will be ended; the check itself will say what is wrong
    try:
        return await container_processes(transport, podman_cmd, name, timeout=SNAPSHOT_TIMEOUT)
    except (TransportError, InvalidContainerName, OSError):
        return None


async def container_processes(transport: Transport, podman_cmd: Sequence[str], name: str, *,
                              timeout: float = 30.0) -> list[ContainerProcess] | None:
    """The container's processes now, or None when podman cannot list them (not running, gone).

    Raises TransportError (CommandTimeout) when the command cannot run or hangs.
    """
    result = await transport.run(top_cmd(podman_cmd, name), timeout=timeout)
    return parse_top(result.stdout) if result.ok else None


@dataclass(frozen=True)
class Leftovers:
    """What `end_leftovers` ended of a timed-out probe's processes, or why it could not."""

    ended: tuple[str, ...] = ()  # the command line of each process it killed
    problem: str = ""

    def describe(self) -> str:
        """A suffix for the probe's detail; empty when the probe left nothing running."""
        if self.problem:
            return f"; could not end what it left in the container: {self.problem}"
        if not self.ended:
            return ""
        count = len(self.ended)
        shown = ", ".join(args[:60] for args in self.ended[:3]) + (", ..." if count > 3 else "")
        return f"; ended {count} process{'es' if count != 1 else ''} it left in the container: {shown}"


def _host_argv(podman_cmd: Sequence[str], rootless: bool, argv: Sequence[str]) -> list[str]:
    """`argv` on the node with the rights over the container's processes that podman has."""
    if rootless:  # processes running as subuids are reachable from inside the user namespace
        return [*podman_cmd, "unshare", *argv]
    # keep a wrapper such as `sudo -n` that podman_cmd puts in front of podman
    first = next((i for i, part in enumerate(podman_cmd) if part.rsplit("/", 1)[-1].startswith("podman")), 0)
    return [*podman_cmd[:first], *argv]


async def _is_rootless(transport: Transport, podman_cmd: Sequence[str]) -> bool:
    result = await transport.run([*podman_cmd, "info", "--format", "{{.Host.Security.Rootless}}"], timeout=30)
    answer = result.stdout.strip().lower()
    if not result.ok or answer not in ("true", "false"):
        raise _CleanupFailed(f"podman info did not say whether it is rootless: "
                             f"{_first_line(result.stderr) or answer or 'no output'}")
    return answer == "true"


class _CleanupFailed(Exception):
    """Internal: the leftovers could not be looked for or ended; carries why."""


_ENVIRON_RE = re.compile(rf"^/proc/(\d+)/environ:(?:{PROBE_MARK}=([0-9a-f]+))?", re.MULTILINE)


async def _marks(transport: Transport, podman_cmd: Sequence[str], rootless: bool,
                 hpids: Sequence[int]) -> dict[int, str | None]:
    """Each host process's PODWARDEN_PROBE token (None: it has none), for those whose environment was read.

    A process that ended meanwhile (or a zombie) has an empty environment: it is left
    out, so "no mark" is only said of a process seen to have an environment.
    """
    paths = [f"/proc/{hpid}/environ" for hpid in hpids]
    # -o prints the mark, or else every `=`: one line at least for any non-empty environment
    result = await transport.run(_host_argv(podman_cmd, rootless, [
        "grep", "-a", "-o", "-H", "-s", "-E", f"{PROBE_MARK}=[0-9a-f]+|=", "--", *paths]), timeout=30)
    # 1: nothing read; 2: a process ended meanwhile (-s keeps that quiet); else it did not run
    if result.exit_status not in (0, 1, 2):
        raise _CleanupFailed(f"cannot read the processes' environment (exit {result.exit_status}): "
                             f"{_first_line(result.stderr) or 'no output'}")
    marks: dict[int, str | None] = {}
    for match in _ENVIRON_RE.finditer(result.stdout):
        hpid = int(match[1])
        marks[hpid] = marks.get(hpid) or match[2]
    return marks


async def _find_leftovers(transport: Transport, podman_cmd: Sequence[str], name: str, run: ProbeRun,
                          rootless: bool, done: set[int]) -> list[ContainerProcess]:
    now = await container_processes(transport, podman_cmd, name)
    if now is None:  # the container is gone or stopped: so is everything it ran
        return []
    before = {(p.pid, p.hpid) for p in run.before or ()}
    candidates = [p for p in now if p.alive and p.pid != 1 and (p.pid, p.hpid) not in before
                  and p.hpid not in done]
    if not candidates:
        return []
    marks = await _marks(transport, podman_cmd, rootless, [p.hpid for p in candidates if p.hpid is not None])
    ours = [p for p in candidates if marks.get(p.hpid) == run.token]  # type: ignore[arg-type]
    if run.before is not None:
        # a health check's session carries no mark: new, unmarked, descending from an exec session
        sessions = exec_session_pids(now)
        ours += [p for p in candidates if p.hpid in marks and marks[p.hpid] is None and p.pid in sessions]
    return ours


async def end_leftovers(transport: Transport, podman_cmd: Sequence[str], name: str, run: ProbeRun) -> Leftovers:
    """SIGKILL, by host pid, the processes a timed-out probe left running in container `name`.

    Ours are those carrying the run's token (`marked_exec_cmd`; children inherit it) and,
    after a health check, the exec-session processes that appeared since `run.before` and
    carry no probe's token. PID 1 and what ran before are never touched. An exec session
    someone else opened in the same container while the health check ran would be ended
    too. Never raises for operational failures: they come back in `problem`.
    """
    ended: list[str] = []
    done: set[int] = set()  # host pids killed
    seen: set[int] = set()  # host pids found in an earlier look
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            rootless = await _is_rootless(transport, podman_cmd)
            for attempt in range(CLEANUP_ROUNDS):
                found = await _find_leftovers(transport, podman_cmd, name, run, rootless, done)
                if found:
                    # leaves first: a living parent reaps them (orphaned, they would stay
                    # zombies under a PID 1 that does not reap); a parent still there on
                    # the next look goes then, children or not (a shell loop keeps forking)
                    parents = {p.ppid for p in found}
                    kill_now = [p for p in found if p.pid not in parents or p.hpid in seen]
                    seen.update(p.hpid for p in found if p.hpid is not None)
                    found = kill_now
                    hpids = [p.hpid for p in found if p.hpid is not None]
                    result = await transport.run(_host_argv(podman_cmd, rootless,
                                                            ["kill", "-9", *map(str, hpids)]), timeout=30)
                    if not result.ok and "no such process" not in result.stderr.lower():
                        raise _CleanupFailed(f"kill -9 {' '.join(map(str, hpids))} failed: "
                                             f"{_first_line(result.stderr) or f'exit {result.exit_status}'}")
                    done.update(hpids)
                    ended.extend(p.args for p in found)
                    await asyncio.sleep(0.1)  # time for a parent to reap them, or to end by itself
                    continue  # look again: their parents, or a child forked meanwhile
                if ended or attempt:
                    break
                await asyncio.sleep(0.5)  # cut while podman was still starting it: it may appear yet
    except _CleanupFailed as exc:
        return Leftovers(tuple(ended), str(exc))
    except TimeoutError:
        return Leftovers(tuple(ended), f"gave up after {format_duration(CLEANUP_TIMEOUT)}")
    except (TransportError, OSError) as exc:
        return Leftovers(tuple(ended), getattr(exc, "reason", None) or str(exc) or type(exc).__name__)
    return Leftovers(tuple(ended))


# ---------------------------------------------------------------- host service


async def _service(transport: Transport, name: str, probe: ServiceProbe) -> tuple[str, int]:
    argv = probe.command or ["systemctl", "is-active", name]
    result = await transport.run(argv, timeout=probe.timeout)
    output = (result.stdout + result.stderr).strip()
    if not result.ok:
        raise _Failed(f"exit {result.exit_status}: {_first_line(output) or 'no output'}", output, result.exit_status)
    return output, result.exit_status


# ---------------------------------------------------------------- logs


async def _logs(transport: Transport, podman_cmd: Sequence[str], name: str, probe: LogsProbe,
                error_patterns: Iterable[str], ignore_patterns: Iterable[str], now_ns: int) -> tuple[str, tuple[str, ...]]:
    since_ns = now_ns - int(probe.since * 1e9) if probe.since is not None else None
    read = await read_logs(transport, podman_cmd, name, tail=None if since_ns else probe.lines,
                           since_ns=since_ns, timeout=probe.timeout)
    if not read.ok:
        raise _Failed(read.detail)
    window = f"the last {format_duration(probe.since)}" if since_ns else f"the last {len(read.lines)} lines"
    lines = read.lines
    # past is not present: a running container is judged by its current run's lines only
    # (conmon may stamp a run's first line ~1 ms before StartedAt, measured)
    facts = await _inspect_one(transport, podman_cmd, name)
    if facts is not None and facts.running and facts.started_at_ns:
        current = tuple(r.text for r in read.records if r.at_ns >= facts.started_at_ns - 10_000_000)
        if len(current) < len(lines):
            lines = current
            window += f" (of them {len(current)} since it started at {podman.format_time_ns(facts.started_at_ns)[11:19]})"
    found = error_lines(lines, error_patterns, ignore_patterns)
    if found:
        shown = "\n".join(found[:ERROR_LINES_SHOWN])
        raise _Failed(f"{len(found)} error line{'s' if len(found) != 1 else ''} in {window}: {found[0][:200]}",
                      shown)
    return f"no error lines in {window}", tuple(lines)


# ---------------------------------------------------------------- expectations


_NOTHING = object()


def json_path(document: Any, path: str) -> Any:
    """The value at a dotted path (`chains.0.network`), or a sentinel when absent."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _NOTHING
    return value


def _same(actual: Any, expected: Any) -> bool:
    # JSON true is not 1: compare booleans by identity, numbers by value
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    return actual == expected


def json_mismatches(document: Any, expected: dict[str, Any], prefix: str = "") -> list[str]:
    """Why `document` does not hold `expected` (nested dicts are subsets; keys may be dotted)."""
    problems = []
    for key, want in expected.items():
        path = f"{prefix}{key}"
        got = json_path(document, key)
        if got is _NOTHING:
            problems.append(f"JSON has no {path}")
        elif isinstance(want, dict) and isinstance(got, dict):
            problems.extend(json_mismatches(got, want, f"{path}."))
        elif not _same(got, want):
            problems.append(f"JSON {path} is {json.dumps(got)[:80]}, expected {json.dumps(want)[:80]}")
    return problems


def check_output(text: str, *, json_keys: Sequence[str] = (), json_values: dict[str, Any] | None = None,
                 regex: str | None = None, also: str = "", exit_status: int | None = None) -> None:
    """Raise _Failed when `text` misses an expected JSON key or value, or the regex."""
    if json_keys or json_values:
        try:
            document = json.loads(text)
        except ValueError:
            raise _Failed(f"output is not JSON: {_first_line(text) or 'empty'}", text, exit_status) from None
        missing = [key for key in json_keys if json_path(document, key) is _NOTHING]
        if missing:
            raise _Failed(f"JSON has no {', '.join(missing)}", text, exit_status)
        problems = json_mismatches(document, json_values or {})
        if problems:
            raise _Failed("; ".join(problems), text, exit_status)
    if regex is not None and re.search(regex, text) is None and re.search(regex, also) is None:
        raise _Failed(f"output does not match /{regex}/", text + also, exit_status)

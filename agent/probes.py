"""Deep health probes of containers and host services, each ending in one ProbeObs.

A probe never raises for an operational failure: a refused port, a dead link, a podman
error or a hung command all become a failed probe whose `detail` says why. Every probe
is bounded by its `timeout` (podman 4.3 does not enforce `--health-timeout`, so a hung
health check is cut here). Only bugs raise.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import asyncssh

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
from agent.recent_logs import error_lines, read_logs, without_podman_noise
from agent.transport import Transport, http_get
from machines.observations import ProbeObs

EXCERPT_CHARS = 500
OUTPUT_CHARS = 8000  # what diagnosis gets to read of a probe's output
ERROR_LINES_SHOWN = 5


@dataclass(frozen=True)
class ProbeResult:
    """A probe's observation plus what diagnosis needs beyond the excerpt."""

    obs: ProbeObs
    exit_status: int | None = None  # of the command run (a health check: of its re-run, if any)
    output: str = ""  # up to OUTPUT_CHARS of what the command printed
    lines: tuple[str, ...] = ()  # a logs probe: the log lines it read, oldest first


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
    started = time.monotonic()
    output, exit_status, lines, detail, ok = "", None, (), "", False
    try:
        async with asyncio.timeout(probe.timeout):
            if isinstance(probe, ExecProbe):
                output, exit_status = await _exec(transport, podman_cmd, name, probe)
            elif isinstance(probe, HttpProbe):
                output, exit_status = await _http(transport, probe), None
            elif isinstance(probe, TcpProbe):
                output = await _tcp(transport, probe)
            elif isinstance(probe, HealthcheckProbe):
                output, exit_status = await _healthcheck(transport, podman_cmd, name, probe)
            elif isinstance(probe, ServiceProbe):
                output, exit_status = await _service(transport, name, probe)
            elif isinstance(probe, LogsProbe):
                output, lines = await _logs(transport, podman_cmd, name, probe, error_patterns,
                                            ignore_patterns, at_ns)
            else:  # pragma: no cover - the config's discriminated union has no other members
                raise TypeError(f"unknown probe type {type(probe).__name__}")
        ok = True
    except _Failed as failed:
        detail, output, exit_status = failed.detail, failed.output, failed.exit_status
    except (TimeoutError, CommandTimeout):
        detail = f"timed out after {format_duration(probe.timeout)}"
    except InvalidContainerName as exc:
        detail = str(exc)
    except TransportError as exc:
        detail = f"could not run: {exc.reason}"
    except asyncssh.Error as exc:  # a forwarded connection broken with the SSH link
        detail = f"link failed: {exc.reason or exc}"
    except ConnectionRefusedError as exc:
        detail = f"connection refused ({exc})" if str(exc) else "connection refused"
    except OSError as exc:
        detail = f"connection failed: {exc.strerror or exc or type(exc).__name__}"
    latency_ms = (time.monotonic() - started) * 1000
    obs = ProbeObs(
        target=transport.name, container=name, at_ns=at_ns, probe=probe_name(probe), probe_type=probe.type,
        ok=ok, latency_ms=round(latency_ms, 1), excerpt=_excerpt(output), detail=detail,
    )
    return ProbeResult(obs, exit_status, output[:OUTPUT_CHARS], tuple(lines))


# ---------------------------------------------------------------- exec


async def _exec(transport: Transport, podman_cmd: Sequence[str], name: str, probe: ExecProbe) -> tuple[str, int]:
    result = await transport.run(podman.exec_cmd(podman_cmd, name, probe.command), timeout=probe.timeout)
    output = result.stdout if result.stdout.strip() else result.stderr
    if result.exit_status != probe.expect_exit:
        reason = _first_line(result.stderr) or _first_line(result.stdout) or "no output"
        raise _Failed(f"exit {result.exit_status} (expected {probe.expect_exit}): {reason}",
                      (result.stdout + result.stderr), result.exit_status)
    check_output(result.stdout, json_keys=probe.expect_json_keys, json_values=probe.expect_json,
                 regex=probe.expect_regex, also=result.stderr, exit_status=result.exit_status)
    return output, result.exit_status


# ---------------------------------------------------------------- http and tcp


async def _http(transport: Transport, probe: HttpProbe) -> str:
    try:
        response = await http_get(transport, probe.url, timeout=probe.timeout)
    except ValueError as exc:
        raise _Failed(f"bad HTTP reply: {exc}") from None
    body = response.text()
    if response.status != probe.expect_status:
        raise _Failed(f"HTTP {response.status} {response.reason}".rstrip() + f" (expected {probe.expect_status})",
                      body)
    check_output(body, json_values=probe.expect_json, regex=probe.expect_regex)
    return body


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
                       probe: HealthcheckProbe) -> tuple[str, int]:
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
        output, exit_status = await _rerun_check(transport, podman_cmd, name, probe.timeout)
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
                       timeout: float) -> tuple[str, int | None]:
    facts = await _inspect_one(transport, podman_cmd, name)
    argv = healthcheck_argv(facts.healthcheck_test) if facts is not None else None
    if argv is None:
        return "", None
    result = await transport.run(podman.exec_cmd(podman_cmd, name, argv), timeout=timeout)
    return (result.stdout + result.stderr).strip(), result.exit_status


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
    found = error_lines(read.lines, error_patterns, ignore_patterns)
    if found:
        shown = "\n".join(found[:ERROR_LINES_SHOWN])
        raise _Failed(f"{len(found)} error line{'s' if len(found) != 1 else ''} in {window}: {found[0][:200]}",
                      shown)
    return f"no error lines in {window}", read.lines


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

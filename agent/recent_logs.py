"""Recent log lines of a container, read once (`podman logs --tail/--since`), for check and probes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from agent import podman
from agent.transport import Transport


@dataclass(frozen=True)
class LogRead:
    """Recent log lines of one container (stdout and stderr merged in time order)."""

    lines: tuple[str, ...]
    ok: bool
    detail: str = ""


def without_podman_noise(stderr: str) -> str:
    """podman's stderr without its `level=warning`/systemd timer chatter."""
    return "\n".join(line for line in stderr.splitlines()
                     if "level=warn" not in line and "systemd connection" not in line)


async def read_logs(transport: Transport, podman_cmd: Sequence[str], name: str, *, tail: int | None = None,
                    since_ns: int | None = None, timeout: float = 30.0) -> LogRead:
    """A container's recent log lines, stdout and stderr merged by podman's timestamps.

    Container stderr arrives on podman's stderr; podman's own messages there (no
    timestamp) are left out. Raises TransportError (CommandTimeout past `timeout`).
    """
    result = await transport.run(podman.logs_cmd(podman_cmd, [name], since_ns=since_ns, tail=tail),
                                 timeout=timeout)
    stamped: list[tuple[int, int, str]] = []
    for order, line in enumerate([*result.stdout.splitlines(), *result.stderr.splitlines()]):
        parsed = podman.parse_log_line(line, name)
        if not isinstance(parsed, podman.ParseError):
            stamped.append((parsed.at_ns, order, parsed.text))
    stamped.sort()
    lines = tuple(text for _, _, text in stamped)
    if tail is not None:
        lines = lines[-tail:] if tail else ()
    if not result.ok:
        reason = _first_line(without_podman_noise(result.stderr)) or f"exit {result.exit_status}"
        return LogRead(lines, False, f"podman logs failed: {reason}")
    return LogRead(lines, True)


def error_lines(lines: Iterable[str], error_patterns: Iterable[str], ignore_patterns: Iterable[str] = ()) -> list[str]:
    """The lines an error pattern matches and no ignore pattern does."""
    errors = [re.compile(p) for p in error_patterns]
    ignores = [re.compile(p) for p in ignore_patterns]
    return [line for line in lines
            if any(p.search(line) for p in errors) and not any(p.search(line) for p in ignores)]


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""

"""Recent log lines of a container, read once (`podman logs --tail/--since`), for check and probes.

Every line keeps podman's timestamp: `check` tells the present (lines since the
container's current start) from history (earlier runs in the same tail) by it.
Output is split on `\\n` only: a progress line that redraws itself with `\\r`, or holds
`\\x0b`, `\\x85` or U+2028, is one line of the log, not several (str.splitlines would cut
it, and the pieces after the first have no timestamp, so an error after them was lost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from agent import podman
from agent.transport import Transport


@dataclass(frozen=True)
class LogRead:
    """Recent log lines of one container (stdout and stderr merged in time order), with their times."""

    records: tuple[podman.LogLine, ...]
    ok: bool
    detail: str = ""

    @property
    def lines(self) -> tuple[str, ...]:
        """The lines' text, oldest first."""
        return tuple(record.text for record in self.records)


def output_lines(text: str) -> list[str]:
    """A command's output split on newlines only, without a trailing `\\r` per line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def without_podman_noise(stderr: str) -> str:
    """podman's stderr without its `level=warning`/systemd timer chatter."""
    return "\n".join(line for line in output_lines(stderr)
                     if "level=warn" not in line and "systemd connection" not in line)


def parse_logs_output(stdout: str, stderr: str, name: str) -> list[podman.LogLine]:
    """The records of one container's `podman logs --timestamps` output, oldest first.

    Container stdout arrives on podman's stdout and container stderr on its stderr;
    both are merged by timestamp (stdout first within one stamp). podman's own messages
    (no timestamp) are left out. A partial record that podman glued to the next one stays
    one record here: its text still holds every word, which is all diagnosis searches.
    """
    stamped: list[tuple[int, int, podman.LogLine]] = []
    for order, line in enumerate([*output_lines(stdout), *output_lines(stderr)]):
        record = podman.parse_log_line(line, name)
        if not isinstance(record, podman.ParseError):
            stamped.append((record.at_ns, order, record))
    stamped.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in stamped]


async def read_logs(transport: Transport, podman_cmd: Sequence[str], name: str, *, tail: int | None = None,
                    since_ns: int | None = None, timeout: float = 30.0) -> LogRead:
    """A container's recent log lines with podman's timestamps, stdout and stderr merged.

    Raises TransportError (CommandTimeout past `timeout`).
    """
    result = await transport.run(podman.logs_cmd(podman_cmd, [name], since_ns=since_ns, tail=tail),
                                 timeout=timeout)
    records = parse_logs_output(result.stdout, result.stderr, name)
    if tail is not None:
        records = records[-tail:] if tail else []
    if not result.ok:
        reason = _first_line(without_podman_noise(result.stderr)) or f"exit {result.exit_status}"
        return LogRead(tuple(records), False, f"podman logs failed: {reason}")
    return LogRead(tuple(records), True)


def error_lines(lines: Iterable[str], error_patterns: Iterable[str], ignore_patterns: Iterable[str] = ()) -> list[str]:
    """The lines an error pattern matches and no ignore pattern does."""
    errors = [re.compile(p) for p in error_patterns]
    ignores = [re.compile(p) for p in ignore_patterns]
    return [line for line in lines
            if any(p.search(line) for p in errors) and not any(p.search(line) for p in ignores)]


def _first_line(text: str) -> str:
    for line in output_lines(text.strip()):
        if line.strip():
            return line.strip()[:200]
    return ""

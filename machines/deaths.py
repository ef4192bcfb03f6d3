"""Why a container died: one pure function, used alike by `watch` (the change cause),
`check` (findings), drift and the morning report. Imports nothing from the project.

The reasons, most specific first:
- our own stop/kill (an `action` observation), or a user's `podman stop`/`kill`/`restart`
  (a stop/kill/restart event, or no restart coming where the restart policy would have
  restarted a crash: podman 4.3 writes no stop event for many stops, measured);
- the kernel's OOM killer: podman 4.3 reports `OOMKilled=false` even for a real OOM kill
  (measured here), so the kernel log is the evidence (`oom-kill:... oom_memcg=
  .../libpod-<container id>`); without it, exit 137 with no stop or kill and a memory
  limit is a *likely* OOM kill, and says so;
- a signal: exit 128+N names signal N (139 is SIGSEGV, 137 SIGKILL);
- exit code N, with the first error line the container printed before dying.
"""

from __future__ import annotations

from dataclasses import dataclass

# Linux signal numbers (x86 and arm share these), for exit codes 128+N.
SIGNALS: dict[int, str] = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP",
    20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ",
    26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}
_SIGNAL_MEANING = {
    "SIGSEGV": "a segmentation fault: the program touched memory it does not own (a crash)",
    "SIGABRT": "the program aborted itself (a failed assertion or a fatal error)",
    "SIGBUS": "a bus error (bad memory access, often a truncated memory-mapped file)",
    "SIGILL": "an illegal instruction (a binary built for another CPU, or memory corruption)",
    "SIGFPE": "an arithmetic fault (division by zero)",
    "SIGKILL": "SIGKILL from outside the container",
    "SIGTERM": "SIGTERM: asked to stop",
    "SIGINT": "SIGINT: interrupted",
    "SIGHUP": "SIGHUP, which the program does not handle",
    "SIGPIPE": "a write to a closed pipe or socket",
}

# How a death came about, as `DeathReason.kind`.
USER_KINDS = frozenset({"podwarden", "user-stop", "user-kill", "user-restart"})


@dataclass(frozen=True, slots=True)
class DeathReason:
    """Why one container died: a kind, one sentence, and the evidence behind it."""

    kind: str  # podwarden | user-stop | user-kill | user-restart | oom-kill | oom-likely | signal | exit | unknown
    text: str
    evidence: tuple[str, ...] = ()

    @property
    def by_user(self) -> bool:
        """A stop someone asked for (podwarden or a person), not a failure."""
        return self.kind in USER_KINDS


def signal_name(exit_code: int | None) -> str | None:
    """The signal an exit code 128+N reports (`SIGSEGV` for 139), None for other codes."""
    if exit_code is None or not 129 <= exit_code <= 128 + 64:
        return None
    number = exit_code - 128
    return SIGNALS.get(number, f"signal {number}")


def _mib(memory: int) -> str:
    if memory >= 1 << 30 and memory % (1 << 30) == 0:
        return f"{memory >> 30} GiB"
    if memory >= 1 << 20:
        return f"{memory / (1 << 20):g} MiB"
    return f"{memory} bytes"


def death_reason(exit_code: int | None, *, user_action: str | None = None, oom_evidence: str | None = None,
                 oom_killed: bool = False, memory: int = 0, first_error: str | None = None,
                 user_evidence: str | None = None, crashed_by: str | None = None,
                 kernel_clear: bool = False) -> DeathReason:
    """Why a container died, from what is known about the death.

    `user_action`: what stopped it on purpose, if anything ("podman stop" / "podman kill"
    by podwarden, or a user's "stop", "kill", "restart" event). `user_evidence`: how that
    is known when no event says so (e.g. "not restarted under restart policy always").
    `oom_evidence`: the kernel log line naming this container's cgroup, if one was found.
    `oom_killed`: podman's own flag (5.x sets it; 4.3 does not). `memory`: the container's
    limit in bytes (0: none). `first_error`: the first error line the container printed
    in the run that died. A None `exit_code` means podman did not say (a death seen only
    through a snapshot's RestartCount). `crashed_by`: podwarden's own crash experiment
    (a SIGKILL of the main process from the host: a crash for the restart policy, but
    no failure of the container). `kernel_clear`: the kernel log was read and names no
    OOM kill of this container, so a SIGKILL came from outside, not from the OOM killer.
    """
    code = "?" if exit_code is None else str(exit_code)
    if crashed_by and not user_action:
        return DeathReason("experiment", f"SIGKILL of the main process by podwarden's crash experiment, exit {code}",
                           (crashed_by,))
    if user_action:
        action = user_action.strip()
        if action.startswith("podman ") or action.startswith("podwarden"):
            return DeathReason("podwarden", f"stopped by podwarden ({action}), exit {code}",
                               (user_evidence or f"{action} by podwarden",))
        kind = {"stop": "user-stop", "kill": "user-kill", "restart": "user-restart"}.get(action, "user-stop")
        verb = {"user-stop": "stopped", "user-kill": "killed", "user-restart": "restarted"}[kind]
        return DeathReason(kind, f"{verb} by a user (podman {action}), exit {code}",
                           (user_evidence or f"{action} event",))
    if oom_evidence:
        limit = f" (memory limit {_mib(memory)})" if memory else ""
        return DeathReason("oom-kill", f"killed by the kernel's OOM killer{limit}, exit {code}",
                           (oom_evidence,))
    if oom_killed:
        limit = f" (memory limit {_mib(memory)})" if memory else ""
        return DeathReason("oom-kill", f"killed by the kernel's OOM killer{limit}, exit {code}",
                           ("podman inspect: State.OOMKilled=true",))
    if exit_code == 137 and kernel_clear:
        return DeathReason("signal", "killed by SIGKILL (exit 137) from outside the container; the kernel log "
                           "shows no OOM kill of it",
                           ("exit 137 = 128 + SIGKILL", "no oom-kill of this container in the kernel log"))
    if exit_code == 137 and memory:
        return DeathReason(
            "oom-likely",
            f"likely killed by the kernel's OOM killer: SIGKILL (exit 137) with no stop or kill, "
            f"memory limit {_mib(memory)}",
            ("exit 137 = 128 + SIGKILL", "no podman stop/kill event or podwarden action",
             f"HostConfig.Memory = {memory}"))
    name = signal_name(exit_code)
    if name is not None:
        meaning = _SIGNAL_MEANING.get(name, name)
        evidence = (f"exit {code} = 128 + {name}",) + ((f"first error: {first_error}",) if first_error else ())
        return DeathReason("signal", f"killed by {name} (exit {code}): {meaning}", evidence)
    if exit_code is None:
        return DeathReason("unknown", "died; podman did not say with which exit code"
                           + (f"; first error: {first_error}" if first_error else ""),
                           (f"first error: {first_error}",) if first_error else ())
    if first_error:
        return DeathReason("exit", f"exited with code {code}; first error: {first_error}",
                           (f"first error: {first_error}",))
    if exit_code == 0:
        return DeathReason("exit", "exited with code 0 (the main process ended by itself)")
    return DeathReason("exit", f"exited with code {code}; it printed no error line before dying")

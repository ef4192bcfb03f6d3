"""death_reason: one reason for every death, the same in watch, check and the report."""

from __future__ import annotations

import pytest

from machines.deaths import USER_KINDS, death_reason, signal_name

MIB16 = 16 * 1024 * 1024
# what dmesg showed here for a shell filling a 16 MiB container (podman 4.3 said OOMKilled=false)
KERNEL = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=libpod-5a9f1250,mems_allowed=0,"
          "oom_memcg=/libpod_parent/libpod-5a9f1250,task_memcg=/libpod_parent/libpod-5a9f1250,task=sh,pid=2003,uid=0")


def test_137_with_a_memory_limit_and_no_stop_is_a_likely_oom_kill() -> None:
    reason = death_reason(137, memory=MIB16)
    assert reason.kind == "oom-likely" and not reason.by_user
    assert reason.text.startswith("likely killed by the kernel's OOM killer")
    assert "memory limit 16 MiB" in reason.text
    assert "HostConfig.Memory = 16777216" in reason.evidence


def test_137_without_a_memory_limit_is_sigkill() -> None:
    reason = death_reason(137)
    assert reason.kind == "signal"
    assert reason.text == "killed by SIGKILL (exit 137): SIGKILL from outside the container"
    assert reason.evidence == ("exit 137 = 128 + SIGKILL",)


def test_137_with_the_kernels_line_is_an_oom_kill() -> None:
    reason = death_reason(137, oom_evidence=KERNEL, memory=MIB16)
    assert reason.kind == "oom-kill"
    assert reason.text == "killed by the kernel's OOM killer (memory limit 16 MiB), exit 137"
    assert reason.evidence == (KERNEL,)


def test_podmans_own_oomkilled_flag_counts() -> None:
    reason = death_reason(137, oom_killed=True)
    assert reason.kind == "oom-kill"
    assert reason.evidence == ("podman inspect: State.OOMKilled=true",)


def test_139_is_a_segfault() -> None:
    reason = death_reason(139, first_error="panic: runtime error")
    assert reason.kind == "signal"
    assert reason.text.startswith("killed by SIGSEGV (exit 139): a segmentation fault")
    assert reason.evidence == ("exit 139 = 128 + SIGSEGV", "first error: panic: runtime error")


def test_143_is_sigterm() -> None:
    reason = death_reason(143)
    assert reason.kind == "signal"
    assert reason.text == "killed by SIGTERM (exit 143): SIGTERM: asked to stop"


def test_exit_1_carries_its_first_error_line() -> None:
    reason = death_reason(1, first_error="LOCK: Permission denied")
    assert reason.kind == "exit"
    assert reason.text == "exited with code 1; first error: LOCK: Permission denied"
    assert reason.evidence == ("first error: LOCK: Permission denied",)


def test_exit_without_an_error_line_says_so() -> None:
    assert death_reason(2).text == "exited with code 2; it printed no error line before dying"
    assert death_reason(0).text == "exited with code 0 (the main process ended by itself)"


def test_unknown_exit_code() -> None:
    reason = death_reason(None)
    assert reason.kind == "unknown" and reason.text == "died; podman did not say with which exit code"


@pytest.mark.parametrize(("action", "kind", "text"), [
    ("stop", "user-stop", "stopped by a user (podman stop), exit 137"),
    ("kill", "user-kill", "killed by a user (podman kill), exit 137"),
    ("restart", "user-restart", "restarted by a user (podman restart), exit 137"),
])
def test_a_users_stop_kill_restart(action: str, kind: str, text: str) -> None:
    # a user's stop wins over every other explanation, OOM evidence and a memory limit included
    reason = death_reason(137, user_action=action, memory=MIB16, oom_evidence=KERNEL)
    assert (reason.kind, reason.text, reason.evidence) == (kind, text, (f"{action} event",))
    assert reason.by_user and kind in USER_KINDS


def test_a_user_stop_known_from_the_restart_policy_says_how() -> None:
    reason = death_reason(143, user_action="stop", user_evidence="not restarted under restart policy always")
    assert reason.kind == "user-stop"
    assert reason.evidence == ("not restarted under restart policy always",)


@pytest.mark.parametrize("action", ["podman stop", "podman kill"])
def test_podwardens_own_action(action: str) -> None:
    reason = death_reason(137, user_action=action)
    assert reason.kind == "podwarden" and reason.by_user
    assert reason.text == f"stopped by podwarden ({action}), exit 137"
    assert reason.evidence == (f"{action} by podwarden",)


@pytest.mark.parametrize(("code", "name"), [(137, "SIGKILL"), (139, "SIGSEGV"), (143, "SIGTERM"), (134, "SIGABRT"),
                                            (128 + 40, "signal 40"), (128, None), (1, None), (None, None), (255, None)])
def test_signal_names(code: int | None, name: str | None) -> None:
    assert signal_name(code) == name

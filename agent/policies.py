"""Spec policies: what every expected container's inspect facts must say (the seed's C4 checks).

Each policy is a named rule (POLICY_RULES in agent/config.py) that a container can
switch off with `policies = { image-pinned = false }`. A violation is a Finding.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from agent.config import POLICY_RULES, Config, ContainerConfig
from agent.diagnosis import (
    PERMISSION_DENIED,
    Evidence,
    Finding,
    image_tag,
    keeps_dac_override,
    restart_policy_spelled,
    writable_mounts,
)
from agent.podman import InspectFacts

DEFAULT_RESTART_POLICIES = ("always", "unless-stopped")
_PERMISSION_RE = re.compile(PERMISSION_DENIED)
EVIDENCE_LINES = 5


def policy_enabled(container: ContainerConfig | None, policy: str) -> bool:
    """Whether `policy` applies to a container (all do unless switched off)."""
    if policy not in POLICY_RULES:
        raise ValueError(f"unknown policy {policy!r}: known policies are {', '.join(POLICY_RULES)}")
    return container is None or container.policies.get(policy, True)


def _finding(facts: InspectFacts, rule: str, severity: str, message: str, cause: str, fix: str,
             evidence: dict, explains: Iterable[str] = (), explained_lines: Iterable[str] = ()) -> Finding:
    return Finding(facts.target, facts.name, rule, severity, message, cause, fix, evidence,
                   frozenset(explains), frozenset(explained_lines))


def restart_policy_allowed(facts: InspectFacts, allowed: Sequence[str]) -> bool:
    """Whether the container's restart policy is in `allowed`, spelled as podman's --restart takes it.

    `on-failure` allows any retry limit; `on-failure:5` allows exactly that one.
    """
    policy = facts.restart_policy or "no"
    return policy in allowed or restart_policy_spelled(facts) in allowed


def _restart_policy_does(facts: InspectFacts) -> str:
    policy = facts.restart_policy or "no"
    if policy == "no":
        return "podman never restarts this container: a crash, a clean exit and a reboot all leave it down"
    if policy == "on-failure":
        limit = (f", and gives up after {facts.restart_max_retries} restarts" if facts.restart_max_retries else "")
        return ("podman restarts this container only after a non-zero exit" + limit
                + ": a clean exit (status 0) stays down")
    if policy == "always":
        return "podman restarts this container after every exit, and after a reboot"
    if policy == "unless-stopped":
        return "podman restarts this container after every exit except a user's stop"
    return f"podman applies its restart policy {policy}"


def check_restart_policy(facts: InspectFacts, allowed: Sequence[str] = DEFAULT_RESTART_POLICIES) -> Finding | None:
    """The restart policy is one of `allowed` (default always / unless-stopped)."""
    if restart_policy_allowed(facts, allowed):
        return None
    policy = facts.restart_policy or "no"
    retries = f" (max {facts.restart_max_retries} retries)" if policy == "on-failure" and facts.restart_max_retries else ""
    wanted = next((p for p in allowed if p in ("unless-stopped", "always")), allowed[0] if allowed else "unless-stopped")
    return _finding(
        facts, "restart-policy", "error",
        f"{facts.name} has restart policy {policy}{retries}; allowed: {', '.join(allowed) or 'none'}",
        _restart_policy_does(facts),
        f"recreate the container with --restart={wanted} (the restart policy is fixed at creation on podman 4)",
        {"restart_policy": restart_policy_spelled(facts), "allowed": list(allowed),
         "max_retries": facts.restart_max_retries},
    )


def check_memory_limit(facts: InspectFacts) -> Finding | None:
    """A memory limit is set (HostConfig.Memory non-zero)."""
    if facts.memory > 0:
        return None
    return _finding(
        facts, "memory-limit", "error",
        f"{facts.name} has no memory limit (HostConfig.Memory is 0)",
        "without --memory one leaking container can take the whole node's memory and the kernel's OOM "
        "killer picks a victim, perhaps another container or the backend",
        "recreate with --memory (e.g. --memory 512m); rootless podman needs cgroup v2 with the memory "
        "controller delegated for the limit to apply",
        {"memory": facts.memory},
    )


def check_image_pinned(facts: InspectFacts) -> Finding | None:
    """The image is pinned by a tag other than `latest`, or by digest (no tag means latest)."""
    tag = image_tag(facts.image)
    if tag != "latest":
        return None
    implicit = ":" not in facts.image.rsplit("/", 1)[-1]
    return _finding(
        facts, "image-pinned", "warning",
        f"{facts.name} runs {facts.image}" + (" (no tag: latest)" if implicit else "") + ", not a pinned version",
        ":latest moves: a re-pull or recreate can silently change the version under existing data "
        "(and downgrade it, as the seed's nextcloud shows)",
        "pin the image by version tag or digest (image@sha256:...) in the container spec",
        {"image": facts.image, "tag": tag},
    )


def check_caps(facts: InspectFacts, lines: Iterable[str] = (), *, failing: bool | None = None) -> Finding | None:
    """cap-drop ALL without DAC_OVERRIDE, a writable volume, Permission denied in its log, and a fault now.

    `lines` are the present's log lines; `failing` whether the present state shows a
    fault (Evidence.failing; None: judged from `facts` alone). A permission line on a
    healthy container is no cause of anything.
    """
    if failing is None:
        failing = Evidence.build(facts.target, facts.name, facts, expected_state="running").failing
    if not failing or keeps_dac_override(facts):
        return None
    mounts = writable_mounts(facts)
    if not mounts:
        return None
    denied = [line for line in lines if _PERMISSION_RE.search(line)]
    if not denied:
        return None
    return _finding(
        facts, "caps", "error",
        f"{facts.name} needs DAC_OVERRIDE: capabilities are dropped and it is refused its volume "
        f"({', '.join(mounts)}): {denied[-1][:300]}",
        "--cap-drop=ALL removed CAP_DAC_OVERRIDE, so root in the container cannot write a volume owned by "
        "another uid (rootless: the volume's subuid owner is not the container's root)",
        "add --cap-add=DAC_OVERRIDE to the spec (the seed's fix); alternative without the capability: "
        "rootless uid mapping, i.e. chown the volume to the container's root as mapped "
        "(`podman unshare chown -R 0:0 SOURCE`) or run with --userns=keep-id",
        {"cap_drop": list(facts.cap_drop), "cap_add": list(facts.cap_add),
         "effective_caps": None if facts.effective_caps is None else list(facts.effective_caps),
         "mounts": mounts, "log_lines": [line[:500] for line in denied[:EVIDENCE_LINES]],
         "log_lines_total": len(denied)},
        explains=("state",), explained_lines=denied,
    )


def check_read_only_rootfs(facts: InspectFacts) -> Finding | None:
    """A read-only root filesystem has a writable /tmp (tmpfs or volume)."""
    if not facts.read_only:
        return None
    writable = {dest.rstrip("/") or "/" for dest, _ in facts.tmpfs}
    writable |= {m.destination.rstrip("/") for m in facts.mounts if m.rw}
    if "/tmp" in writable:
        return None
    return _finding(
        facts, "read-only-rootfs", "warning",
        f"{facts.name} has a read-only root filesystem and no writable /tmp",
        "apps write temporary files, sockets and logs; on a read-only rootfs without a tmpfs they fail "
        "with 'Read-only file system' (the seed's grafana)",
        "add --tmpfs /tmp (and a tmpfs or volume for every other path the app writes, e.g. /var/log/APP), "
        "or keep podman's default --read-only-tmpfs=true",
        {"read_only": True, "tmpfs": [dest for dest, _ in facts.tmpfs],
         "mounts": [f"{m.destination} ({'rw' if m.rw else 'ro'})" for m in facts.mounts]},
    )


def missing_finding(target: str, name: str, container: ContainerConfig | None) -> Finding:
    """The finding for an expected container that does not exist on the target."""
    role = f" ({container.role})" if container is not None and container.role else ""
    return Finding(
        target, name, "missing", "error",
        f"{name}{role} is expected but does not exist on {target}",
        "the container was never created, or was removed (podman rm, a failed deploy or recreate)",
        f"create it from its spec (`podman run --name {name} ...`) and check the deploy that should have created it",
        {"expected_state": container.expected_state if container is not None else "running"},
        frozenset({"state", "health"}),
    )


def check_policies(facts: InspectFacts, config: Config, lines: Iterable[str] = (), *,
                   failing: bool | None = None) -> list[Finding]:
    """Every enabled policy of one present container; `lines` and `failing` are for caps (see check_caps)."""
    own = config.containers.get(facts.name)
    findings: list[Finding | None] = []
    if policy_enabled(own, "restart-policy"):
        findings.append(check_restart_policy(facts, config.restart_policies(facts.name)))
    if policy_enabled(own, "memory-limit"):
        findings.append(check_memory_limit(facts))
    if policy_enabled(own, "image-pinned"):
        findings.append(check_image_pinned(facts))
    if policy_enabled(own, "caps"):
        findings.append(check_caps(facts, lines, failing=failing))
    if policy_enabled(own, "read-only-rootfs"):
        findings.append(check_read_only_rootfs(facts))
    return [f for f in findings if f is not None]


def check_missing(target: str, config: Config, present: Iterable[str]) -> list[Finding]:
    """A finding for every container config expects (not `absent`) that is not present."""
    names = set(present)
    return [missing_finding(target, name, own) for name, own in config.containers.items()
            if own.expected_state != "absent" and name not in names and policy_enabled(own, "missing")]

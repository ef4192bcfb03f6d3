"""Shared fixtures: a real sshd on loopback, targets that reach it, tool checks."""

from __future__ import annotations

import os
import shutil

import pytest

from agent.config import TargetConfig
from tests.agent_process import agents  # noqa: F401 (a fixture: every agent process a test starts is killed)
from tests.sshd import ROOTLESS_USER, SshServer, make_sshd, missing_tools, namespace_tools_missing

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_e2e() -> None:
    """Skip (or, under CI=true, fail) when the end-to-end tools are missing, naming them."""
    missing = missing_tools()
    if missing:
        message = "end-to-end test needs: " + "; ".join(missing)
        if IN_CI:
            pytest.fail(message + " (CI=true never skips)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def sshd() -> SshServer:
    """A running sshd on 127.0.0.1 that lets root and the rootless user in with a test key."""
    require_e2e()
    server = make_sshd(["root", ROOTLESS_USER])
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def jump_pair() -> tuple[SshServer, SshServer]:
    """(outer, inner): a jump host on 127.0.0.1 and a node on 127.0.0.2 that only the jump host
    reaches. inner's sshd runs in a network namespace of its own, so no process here can connect
    to it; outer answers here and runs each session in inner's namespace (tests/sshd.py)."""
    require_e2e()
    missing = namespace_tools_missing()
    if missing:
        message = "jump host test needs: " + "; ".join(missing)
        pytest.fail(message + " (CI=true never skips)") if IN_CI else pytest.skip(message)
    inner = make_sshd(["root", ROOTLESS_USER], listen="127.0.0.2", isolated=True)
    outer = make_sshd(["root", ROOTLESS_USER], front_of=inner)
    inner.start()
    try:
        outer.start()
    except BaseException:
        inner.stop()
        raise
    yield outer, inner
    outer.stop()
    inner.stop()
    shutil.rmtree(outer.dir, ignore_errors=True)
    shutil.rmtree(inner.dir, ignore_errors=True)


def ssh_target(server: SshServer, user: str, **extra: object) -> TargetConfig:
    """A TargetConfig reaching `server` as `user`, host key checked against its known_hosts."""
    return TargetConfig(
        name=f"{user}@sshd", transport="ssh", host="127.0.0.1", port=server.port, user=user,
        identity=str(server.identity), known_hosts=str(server.known_hosts), **extra,
    )


@pytest.fixture
def root_target(sshd: SshServer) -> TargetConfig:
    return ssh_target(sshd, "root")


@pytest.fixture
def rootless_target(sshd: SshServer) -> TargetConfig:
    return ssh_target(sshd, ROOTLESS_USER)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true nothing skips: a skip (for a missing tool, say) fails, naming why."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which never skips: {reason}"

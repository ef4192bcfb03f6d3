"""The CLI for end-to-end tests: `podwarden` runs, a CLI pointed at one user of the test sshd
(`Node`), a `podwarden watch --json` process (`Agent`), and plain reads of its store."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent.testbed import example_config
from tests.sshd import SshServer
from tests.waiting import wait_for


def read_db(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Plain read-only SQL, as an outside check would read the store (safe while the agent writes)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class Agent:
    """One `podwarden watch --json` process against the test sshd, stdout and stderr to files."""

    def __init__(self, sshd: SshServer, config: Path, db: Path, tag: str, user: str = "root",
                 extra: tuple[str, ...] = ()) -> None:
        self.out = db.parent / f"{tag}.out.jsonl"
        self.err = db.parent / f"{tag}.err.txt"
        script = Path(sys.executable).with_name("podwarden")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
        self.argv = [*command, "watch", "--json", *extra, "--target", sshd.url(user),
                     "--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts),
                     "--db", str(db), "--config", str(config)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Agent":
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=self.out.parent)
        return self

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines printed so far (a half-written last line is left for later)."""
        text = self.out.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]

    def agent_records(self, what: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("type") == "agent" and line.get("what") == what]

    def changes(self, container: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("type") == "change" and line["container"] == container]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_connected(self, timeout: float = 30) -> None:
        def connected() -> bool:
            assert self.alive(), f"agent exited {self.proc.returncode if self.proc else '?'}: {self.stderr()}"
            return bool(self.agent_records("connected"))

        wait_for(connected, timeout, "the agent to connect")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-3000:] if self.err.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no flush, no clean end of the run."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM: the agent stops watching, flushes the store and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"agent did not stop within {timeout:g}s of SIGTERM: {self.stderr()}")

    def cleanup(self) -> None:
        if self.alive():
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(10)  # type: ignore[union-attr]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Every agent a test starts is killed at its end, whatever happened."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.cleanup()




def podwarden(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """One `podwarden ARGS` run, no stdin, output captured as text."""
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class Node:
    """The CLI pointed at one user on the test sshd, with its own testbed prefix and ports."""

    def __init__(self, sshd: SshServer, user: str, prefix: str, port_base: int, tmp: Path) -> None:
        self.prefix = prefix
        self.config = tmp / f"{prefix}config.toml"
        self.config.write_text(example_config(prefix=prefix, port_base=port_base))
        self.target = ["--config", str(self.config), "--target", sshd.url(user),
                       "--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts)]

    def run_argv(self, *args: str) -> list[str]:
        """The argv of `podwarden ARGS` against this node (for a process a test drives itself)."""
        return [sys.executable, "-m", "agent.cli", *args, *self.target]

    def run(self, *args: str, timeout: float = 180, config: Path | None = None) -> subprocess.CompletedProcess:
        """`podwarden ARGS` against this node (with another config file if given)."""
        target = list(self.target)
        if config is not None:
            target[target.index("--config") + 1] = str(config)
        return podwarden([*args, *target], timeout)

    def ok(self, *args: str, timeout: float = 180) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"podwarden {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result.stdout

    def status(self) -> dict:
        return json.loads(self.ok("status", "--json"))

    def containers(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.status()["containers"]}



"""A real OpenSSH sshd on 127.0.0.1 for end-to-end tests: own host key, own config, free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
ROOTLESS_USER = "pwtest"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def missing_tools() -> list[str]:
    """What the end-to-end tests need and this machine lacks, each with how to get it."""
    missing = []
    for tool, package in (("podman", "podman"), ("runc", "runc"), ("ssh-keygen", "openssh-client"),
                          ("newuidmap", "uidmap")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if not Path(SSHD).exists():
        missing.append(f"{SSHD} (apt-get install openssh-server)")
    if not (Path("/bin/busybox").exists() or Path("/usr/bin/busybox").exists()):
        missing.append("busybox (apt-get install busybox-static)")
    try:
        import pwd

        pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        missing.append(f"user {ROOTLESS_USER} with /etc/subuid and /etc/subgid entries (run scripts/setup.sh)")
    if os.geteuid() != 0:
        missing.append("root (the tests start sshd and switch users)")
    return missing


@dataclass
class SshServer:
    """One running sshd and the files a client needs to reach it."""

    dir: Path
    port: int
    identity: Path
    known_hosts: Path
    host_key: Path
    config: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start sshd and wait until it accepts connections."""
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd config invalid: {check.stderr}")
        log = open(self.dir / "sshd.log", "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start on port {self.port}: see {self.dir / 'sshd.log'}")

    def stop(self) -> None:
        """Stop sshd and every session it forked."""
        if self.process is not None:
            # per-connection sshd processes outlive the listener: end them so links really drop
            subprocess.run(["pkill", "-KILL", "-P", str(self.process.pid)], capture_output=True)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same host key."""
        self.stop()
        self.start()

    def url(self, user: str) -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}"


def make_sshd(users: list[str]) -> SshServer:
    """Write keys and config for a fresh sshd on a free port (not started)."""
    base = Path(tempfile.mkdtemp(prefix="podwarden-sshd-"))
    base.chmod(0o755)
    host_key = base / "host_ed25519"
    identity = base / "client_ed25519"
    _keygen(host_key, "podwarden-test-host")
    _keygen(identity, "podwarden-test-client")
    authorized = base / "authorized_keys"
    authorized.write_text(identity.with_suffix(".pub").read_text())
    authorized.chmod(0o644)
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                f"AllowUsers {' '.join(users)}",
                "MaxSessions 10",
                "ClientAliveInterval 0",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return SshServer(base, port, identity, known_hosts, host_key, config)

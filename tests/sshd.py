"""A real OpenSSH sshd on loopback for end-to-end tests: own host key, own config, free port.

Two of them make a jump host and a node behind it (make_sshd(isolated=True) for the node,
make_sshd(front_of=node) for the jump host): the node's sshd runs in a network namespace of its
own, so nothing in ours can reach it at all; the jump host answers in ours, and each of its
sessions runs in the node's namespace, where the node listens. Only loopback is used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


# Brings up `lo` in a fresh network namespace (ioctl, so no `ip` is needed), then execs argv[1:].
_LO_UP_THEN_EXEC = r"""
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket() as sock:
    flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
os.execv(sys.argv[1], sys.argv[1:])
"""

# A jump host's listener: accepts in our namespace, and runs `sshd -i` for each connection inside
# the namespace of the node behind it (its pid is read from a file, so the node may restart).
_ACCEPT_INTO_NAMESPACE = r"""
import signal, socket, subprocess, sys
listen, port, pid_file, sshd, config, log = sys.argv[1:7]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen, int(port)))
server.listen(32)
errors = open(log, "ab")
while True:
    conn, _ = server.accept()
    with open(pid_file) as f:
        pid = f.read().strip()
    subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sshd, "-i", "-e", "-f", config],
                     stdin=conn, stdout=conn, stderr=errors)
    conn.close()
"""

_ANSWERS = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5) as sock:
    sys.exit(0 if sock.recv(4).startswith(b"SSH") else 1)
"""


def namespace_tools_missing() -> list[str]:
    """What a jump-host pair needs beyond missing_tools()."""
    return [f"{tool} (apt-get install util-linux)" for tool in ("unshare", "nsenter") if shutil.which(tool) is None]


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
    listen: str = "127.0.0.1"
    # in a network namespace of its own: no process outside it (the tests, podwarden) can connect
    isolated: bool = False
    # a jump host: answers here, but its sessions run in that (isolated) server's namespace
    front_of: "SshServer | None" = None

    @property
    def netns_pid_file(self) -> Path:
        return self.dir / "netns.pid"

    def start(self) -> None:
        """Start sshd and wait until it accepts connections."""
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd config invalid: {check.stderr}")
        log = open(self.dir / "sshd.log", "ab")
        if self.isolated:
            argv = ["unshare", "--net", sys.executable, "-c", _LO_UP_THEN_EXEC, SSHD, "-D", "-e", "-f", str(self.config)]
        elif self.front_of is not None:
            argv = [sys.executable, "-c", _ACCEPT_INTO_NAMESPACE, self.listen, str(self.port),
                    str(self.front_of.netns_pid_file), SSHD, str(self.config), str(self.dir / "sshd.log")]
        else:
            argv = [SSHD, "-D", "-e", "-f", str(self.config)]
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if self.isolated:
            self.netns_pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start on {self.listen}:{self.port}: see {self.dir / 'sshd.log'}")

    def answers(self) -> bool:
        """Whether an SSH banner comes from listen:port, seen from the server's own namespace."""
        if not self.isolated:
            try:
                with socket.create_connection((self.listen, self.port), timeout=0.5) as sock:
                    return sock.recv(4).startswith(b"SSH")
            except OSError:
                return False
        assert self.process is not None
        probe = subprocess.run(["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--", sys.executable, "-c",
                                _ANSWERS, self.listen, str(self.port)], capture_output=True)
        return probe.returncode == 0

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
        return f"ssh://{user}@{self.listen}:{self.port}"

    def authorize(self, public_key: Path) -> None:
        """Let a client key in too (sshd reads authorized_keys at each login)."""
        with open(self.dir / "authorized_keys", "a") as keys:
            keys.write(public_key.read_text())

    def known_hosts_line(self) -> str:
        """This server's host key as a known_hosts line, under listen:port."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.listen}]:{self.port} {kind} {key}\n"


def make_sshd(users: list[str], *, listen: str = "127.0.0.1", isolated: bool = False,
              front_of: SshServer | None = None) -> SshServer:
    """Write keys and config for a fresh sshd on a free port (not started).

    `isolated`: it will run in a network namespace of its own (a node behind a jump host).
    `front_of`: a jump host for that isolated server (TCP forwarding allowed; its sessions, and so
    the connections it forwards, start in that server's namespace).
    """
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
                f"ListenAddress {listen}",
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
                *(["AllowTcpForwarding yes"] if front_of is not None else []),
                "",
            ]
        )
    )
    server = SshServer(base, port, identity, base / "known_hosts", host_key, config, listen=listen,
                       isolated=isolated, front_of=front_of)
    server.known_hosts.write_text(server.known_hosts_line())
    return server

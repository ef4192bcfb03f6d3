"""Run commands on a target and stream long-running commands' lines.

One interface, two implementations: LocalTransport (asyncio subprocess) and
SshTransport (asyncssh, one connection reused for every channel). Lines are decoded
by us with errors='replace' (docs/library-facts.md: asyncssh's own decoding kills the whole
connection on one bad byte) and over-long lines are cut, never fatal.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shlex
import signal
import time
from abc import ABC, abstractmethod
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import asyncssh

from agent.config import TargetConfig, ssh_alias_missing, ssh_config_path
from agent.errors import CommandFailed, CommandTimeout, TargetUnreachable, TransportError

READ_CHUNK = 65536
MAX_LINE = 1 << 20  # a longer line is cut here and marked; the rest of it is dropped
STDERR_TAIL_LINES = 50

# Kills the remote command when our channel's stdin closes: without a PTY, closing a
# channel does not kill the remote process (docs/library-facts.md, asyncssh).
_GUARD = (
    "exec 3<&0; {cmd} </dev/null & c=$!; "
    "{{ cat <&3 >/dev/null; kill $c; }} >/dev/null 2>&1 & w=$!; "
    "wait $c; s=$?; kill $w 2>/dev/null; exit $s"
)


def quote_argv(argv: Sequence[str]) -> str:
    """One shell command line with every argument quoted."""
    return shlex.join(str(arg) for arg in argv)


def guarded(argv: Sequence[str]) -> str:
    """A remote command line that dies when the channel's stdin is closed."""
    return "sh -c " + shlex.quote(_GUARD.format(cmd=quote_argv(argv)))


class LineSplitter:
    """Splits a byte stream into decoded lines; bounded memory for endless lines.

    Splits on `\n` only and keeps every other byte (a `\r` is the container's own).
    A line longer than `max_line` bytes is cut at exactly `max_line` bytes, whatever
    the chunks it arrived in, so a live read and a re-read give the same text.
    """

    def __init__(self, max_line: int = MAX_LINE, errors: str = "replace") -> None:
        """`errors`: how undecodable bytes are decoded ("surrogateescape" keeps them
        recoverable, for a reader that joins pieces before decoding for good)."""
        self._buf = bytearray()
        self._max = max_line
        self._errors = errors
        self._dropping = False  # inside the tail of an over-long line

    def feed(self, chunk: bytes) -> list[str]:
        """Lines completed by `chunk` (without their newline)."""
        lines: list[str] = []
        self._buf += chunk
        start = 0
        buf = self._buf
        while True:
            index = buf.find(b"\n", start)
            if index < 0:
                break
            if self._dropping:
                self._dropping = False
            elif index - start > self._max:
                lines.append(self._cut(bytes(buf[start:start + self._max])))
            else:
                lines.append(self._decode(bytes(buf[start:index])))
            start = index + 1
        del buf[:start]
        if not self._dropping and len(buf) > self._max:
            lines.append(self._cut(bytes(buf[: self._max])))
            self._dropping = True
        if self._dropping:
            buf.clear()
        return lines

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        line = [] if self._dropping or not self._buf else [self._decode(bytes(self._buf))]
        self._buf.clear()
        self._dropping = False
        return line

    def _cut(self, raw: bytes) -> str:
        return self._decode(raw) + " [line cut at 1 MiB]"

    def _decode(self, raw: bytes) -> str:
        return raw.decode("utf-8", errors=self._errors)


@dataclass(frozen=True)
class RunResult:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass
class LineStream:
    """The lines of a running command; `exit_status` is set once it has ended."""

    argv: tuple[str, ...]
    _lines: AsyncIterator[str]
    exit_status: int | None = None
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_tail)


async def _drain_stderr(reader: object, tail: deque[str]) -> None:
    splitter = LineSplitter()
    while True:
        chunk = await reader.read(READ_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        tail.extend(line for line in splitter.feed(chunk) if line)
    tail.extend(line for line in splitter.flush() if line)


class Transport(ABC):
    """Runs commands on one target. Use as `async with make_transport(t) as tr:`."""

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self.name = target.name or target.describe()

    @property
    @abstractmethod
    def is_local(self) -> bool: ...

    @abstractmethod
    async def connect(self) -> None:
        """Open the link; raises TargetUnreachable."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link and everything on it."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    async def wait_closed(self) -> None:
        """Return when the link has dropped (never, for a local target)."""

    @abstractmethod
    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None,
                  check: bool = False) -> RunResult:
        """Run a command to completion.

        Raises CommandTimeout past `timeout`, TransportError if it cannot run, and
        CommandFailed on a non-zero exit when `check` is true.
        """

    @abstractmethod
    def stream(self, argv: Sequence[str], *, errors: str = "replace"
               ) -> "asyncio.AbstractAsyncContextManager[LineStream]":
        """Start a long-running command and iterate its stdout lines (split on `\n` only,
        decoded as UTF-8 with `errors`).

        Leaving the context kills the command. Raises TransportError if it cannot start.
        """

    @abstractmethod
    async def open_tcp(self, host: str, port: int) -> tuple[object, object]:
        """A (reader, writer) byte stream to host:port as seen from the node (asyncio's
        StreamReader/StreamWriter interface: read, write, drain, close); raises OSError,
        also when the link breaks while it is in use."""

    async def __aenter__(self) -> "Transport":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check(self, result: RunResult, check: bool) -> RunResult:
        if check and not result.ok:
            raise CommandFailed(self.name, result.argv, result.exit_status, result.stderr)
        return result


class LocalTransport(Transport):
    """Runs commands on this machine with asyncio subprocesses (no shell)."""

    def __init__(self, target: TargetConfig) -> None:
        super().__init__(target)
        self._closed = asyncio.Event()

    @property
    def is_local(self) -> bool:
        return True

    @property
    def connected(self) -> bool:
        return not self._closed.is_set()

    async def connect(self) -> None:
        self._closed.clear()

    async def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None,
                  check: bool = False) -> RunResult:
        argv = tuple(str(a) for a in argv)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(self.name, argv, f"cannot start: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            _kill_group(proc)
            await proc.wait()
            _close_pipes(proc)
            raise CommandTimeout(self.name, argv, timeout) from None
        except asyncio.CancelledError:
            _kill_group(proc)
            _close_pipes(proc)
            raise
        result = RunResult(argv, proc.returncode if proc.returncode is not None else -1,
                           out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"),
                           time.monotonic() - started)
        return self._check(result, check)

    @asynccontextmanager
    async def stream(self, argv: Sequence[str], *, errors: str = "replace") -> AsyncIterator[LineStream]:
        argv = tuple(str(a) for a in argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(self.name, argv, f"cannot start: {exc.strerror or exc}") from None
        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        stderr_task = asyncio.create_task(_drain_stderr(proc.stderr, tail))

        async def lines() -> AsyncIterator[str]:
            splitter = LineSplitter(errors=errors)
            assert proc.stdout is not None
            while True:
                chunk = await proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    yield line
            for line in splitter.flush():
                yield line
            stream.exit_status = await proc.wait()
            await stderr_task

        stream = LineStream(argv, lines(), stderr_tail=tail)
        try:
            yield stream
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                try:
                    await asyncio.shield(proc.wait())
                except ProcessLookupError:
                    pass
            stream.exit_status = proc.returncode
            stderr_task.cancel()
            await asyncio.gather(stderr_task, return_exceptions=True)
            await stream._lines.aclose()  # type: ignore[attr-defined]

    async def open_tcp(self, host: str, port: int) -> tuple[object, object]:
        return await asyncio.open_connection(host, port)


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close our ends of a killed command's pipes.

    `podman exec` leaves its command running in the container past our kill, holding
    the pipes open; without this the event loop later warns about unclosed transports.
    """
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- reaching a node over SSH

_JUMP = re.compile(r"(?:(?P<user>[^@]+)@)?(?:\[(?P<bracketed>[^\]]+)\]|(?P<host>[^:@\[\]/]+))(?::(?P<port>\d+))?")
_MAX_JUMPS = 8
_SSH_TOKEN = re.compile(r"%(.)")


@dataclass(frozen=True)
class SshHop:
    """One SSH connection on the way to a node: the jump hosts first, the node last.

    Every hop's host key is checked against `known_hosts` (None only when the target opts out
    with insecure_skip_host_key_check): podwarden opens each hop itself, through the one before,
    rather than leaving ProxyJump to asyncssh, so that no hop is trusted by default.
    """

    label: str                       # how it is named: an ssh config alias, a ProxyJump entry, or host:port
    host: str                        # where it is (the ssh config's HostName)
    port: int
    user: str | None
    connect_host: str                # the name asyncssh.connect gets (an alias: asyncssh reads its config)
    options: dict[str, Any]          # asyncssh.connect keyword arguments, all but tunnel and known_hosts
    known_hosts: tuple[str, ...] | None  # files its host key is checked against (present or not)
    key_name: str                    # the name its key is looked up under (HostKeyAlias, else host)
    identity: str | None = None      # an identity file given to podwarden (--identity, identity)
    keys: str = "ssh-agent / default keys"  # what authentication offers, for messages
    connect_timeout: float = 10.0
    jump: bool = False               # a jump host, not the node
    reached_through: tuple[str, ...] = ()  # the ProxyJump entries before it, as ssh's -J would take them

    @property
    def where(self) -> str:
        if self.label == f"{self.host}:{self.port}":
            return self.label
        return f"{'jump host ' if self.jump else ''}{self.label} ({self.host}:{self.port})"


def ssh_hops(target: TargetConfig) -> list[SshHop]:
    """The SSH connections that reach `target`, outermost first.

    A target with `host` is one hop, as given. A target with `ssh_alias` is read from the OpenSSH
    client config as ssh reads it (asyncssh parses it: HostName, User, Port, IdentityFile,
    ProxyJump, UserKnownHostsFile, ServerAliveInterval/CountMax, ConnectTimeout, Match, Include).
    Its ProxyJump hosts come first, each resolved by the same config; the first one's own
    ProxyJump is followed too (as ssh does), the later ones' are not (ssh's -J overrides them).
    The target's own user, port, identity, known_hosts, keepalive and timeout settings override
    the config for the node; known_hosts and insecure_skip_host_key_check apply to every hop.

    Raises TargetUnreachable for an ssh config that does not name the alias or cannot be used.
    """
    if target.host or not target.ssh_alias:
        return [_direct_hop(target)]
    path = ssh_config_path(target.ssh_config)
    name = target.name or target.ssh_alias
    missing = ssh_alias_missing(path, target.ssh_alias)
    if missing is not None:
        raise TargetUnreachable(name, f"ssh config alias {target.ssh_alias!r}: {missing}")
    port = target.port if "port" in target.model_fields_set else None
    return _alias_chain(target, path, target.ssh_alias, target.user, port, node=True, trail=())


def _direct_hop(target: TargetConfig) -> SshHop:
    host = target.host or ""
    options: dict[str, Any] = {
        "port": target.port,
        "keepalive_interval": target.keepalive_interval,
        "keepalive_count_max": target.keepalive_count_max,
        "config": None,
    }
    if target.user:
        options["username"] = target.user
    known = None if target.insecure_skip_host_key_check else (
        os.path.expanduser(target.known_hosts or "~/.ssh/known_hosts"),)
    return SshHop(label=f"{host}:{target.port}", host=host, port=target.port, user=target.user,
                  connect_host=host, options=options, known_hosts=known, key_name=host,
                  identity=target.identity, keys=f"key {target.identity}" if target.identity else
                  "ssh-agent / default keys", connect_timeout=target.connect_timeout)


def _alias_chain(target: TargetConfig, path: Path, name: str, user: str | None, port: int | None, *,
                 node: bool, trail: tuple[tuple[str, str | None, int | None], ...]) -> list[SshHop]:
    me = (name, user, port)
    if me in trail or len(trail) >= _MAX_JUMPS:
        loop = " -> ".join(entry[0] for entry in (*trail, me))
        raise TargetUnreachable(target.name or name, f"ProxyJump in {path} loops or goes over {_MAX_JUMPS} "
                                                     f"hops: {loop}")
    hop, proxy_jump = _alias_hop(target, path, name, user, port, node=node)
    hops: list[SshHop] = []
    if proxy_jump:
        entries = tuple(entry.strip() for entry in proxy_jump.split(",") if entry.strip())
        first, rest = entries[0], entries[1:]
        hops += _alias_chain(target, path, *_parse_jump(target, path, name, first), node=False, trail=(*trail, me))
        for index, entry in enumerate(rest, 1):
            later = _alias_hop(target, path, *_parse_jump(target, path, name, entry), node=False)[0]
            hops.append(replace(later, reached_through=entries[:index]))
        hop = replace(hop, reached_through=entries)
    hops.append(hop)
    return hops


def _parse_jump(target: TargetConfig, path: Path, name: str, entry: str) -> tuple[str, str | None, int | None]:
    text = entry.removeprefix("ssh://").rstrip("/")
    match = _JUMP.fullmatch(text)
    if match is None:
        raise TargetUnreachable(target.name or name, f"ProxyJump {entry!r} of {name} in {path}: "
                                                     "not [user@]host[:port]")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise TargetUnreachable(target.name or name, f"ProxyJump {entry!r} of {name} in {path}: port out of range")
    return match["bracketed"] or match["host"], match["user"], port


def _alias_hop(target: TargetConfig, path: Path, name: str, user: str | None, port: int | None, *,
               node: bool) -> tuple[SshHop, str | None]:
    """One hop as the ssh config describes it, and its ProxyJump (None: direct)."""
    try:
        resolved = asyncssh.SSHClientConnectionOptions(
            config=[str(path)], host=name, username=user or (), port=port or (), client_keys=None,
            known_hosts=None)
    except (ValueError, OSError, asyncssh.Error) as exc:
        raise TargetUnreachable(target.name or name, f"ssh config {path} for {name}: {exc}") from None
    config = resolved.config
    given = target.model_fields_set if node else set()
    options: dict[str, Any] = {"config": [str(path)]}
    if user:
        options["username"] = user
    if port:
        options["port"] = port
    # keepalives stay on (DESIGN): ServerAliveInterval 0 in the ssh config does not turn them off
    interval = config.get("ServerAliveInterval")
    options["keepalive_interval"] = (target.keepalive_interval if "keepalive_interval" in given or not interval
                                     else float(interval))  # type: ignore[arg-type]
    count = config.get("ServerAliveCountMax")
    options["keepalive_count_max"] = (target.keepalive_count_max if "keepalive_count_max" in given or not count
                                      else int(count))  # type: ignore[call-overload]
    timeout = config.get("ConnectTimeout")
    connect_timeout = target.connect_timeout if "connect_timeout" in given or not timeout else float(timeout)  # type: ignore[arg-type]
    keys = "ssh-agent / default keys"
    identity = target.identity if node else None
    if identity is None:
        files = [os.path.expanduser(str(f)) for f in (config.get("IdentityFile") or [])]  # type: ignore[union-attr]
        if files:
            # as ssh does: a listed file that is not there is skipped, an encrypted one left to the agent
            options["client_keys"] = [f for f in files if Path(f).is_file()]
            options["ignore_encrypted"] = True
            keys = f"IdentityFile {', '.join(files)} / ssh-agent"
    else:
        keys = f"key {identity}"
    hop = SshHop(
        label=name if user is None and port is None else f"{user + '@' if user else ''}{name}{f':{port}' if port else ''}",
        host=resolved.host, port=resolved.port, user=resolved.username, connect_host=name, options=options,
        known_hosts=_known_hosts_files(target, config, resolved), key_name=str(config.get("HostKeyAlias") or resolved.host),
        identity=identity, keys=keys, connect_timeout=connect_timeout, jump=not node)
    proxy_jump = config.get("ProxyJump")
    return hop, proxy_jump if isinstance(proxy_jump, str) and proxy_jump.lower() != "none" else None


def _known_hosts_files(target: TargetConfig, config: Any, resolved: Any) -> tuple[str, ...] | None:
    """The known_hosts files a hop's key is checked against: the target's own file if it names one,
    else the ssh config's UserKnownHostsFile and GlobalKnownHostsFile (ssh's defaults when unset).
    `UserKnownHostsFile none` (or /dev/null) leaves no key trusted: StrictHostKeyChecking is not
    read, podwarden is always strict (insecure_skip_host_key_check is the one way out)."""
    if target.insecure_skip_host_key_check:
        return None
    if target.known_hosts:
        return (os.path.expanduser(target.known_hosts),)
    user_files = config.get("UserKnownHostsFile")
    global_files = config.get("GlobalKnownHostsFile")
    if user_files is None:
        user_files = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    if global_files is None:
        global_files = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
    tokens = {"%": "%", "d": os.path.expanduser("~"), "h": resolved.host, "p": str(resolved.port),
              "r": resolved.username, "u": getpass.getuser(), "n": str(getattr(resolved, "orig_host", resolved.host))}
    return tuple(os.path.expanduser(_SSH_TOKEN.sub(lambda m: tokens.get(m[1], m[0]), str(f)))
                 for f in [*user_files, *global_files])


def _keyscan(hop: SshHop, file: str) -> str:
    """The command that fetches a hop's host key into `file`, run where the hop is reachable."""
    scan = f"ssh-keyscan -p {hop.port} {hop.host} >> {file}"
    if hop.reached_through:  # only the hop before can reach it: scan from there
        *jumps, last = hop.reached_through
        last = last.removeprefix("ssh://")
        there = f"ssh://{last}" if ":" in last else last
        scan = f"ssh {'-J ' + ','.join(jumps) + ' ' if jumps else ''}{there} {scan}"
    if hop.key_name != hop.host:
        scan += f" (then name the line {hop.key_name}, its HostKeyAlias)"
    return scan


def _trust_no_host_key(host: str, addr: str, port: int | None) -> tuple[list, list, list]:
    return [], [], []  # asyncssh: (trusted host keys, CA keys, revoked keys)


class SshTransport(Transport):
    """Runs commands on a node over one asyncssh connection (through its jump hosts, if any).

    Host keys are checked against known_hosts at every hop unless the target opts out by name
    (`insecure_skip_host_key_check = true`). Keepalives turn a frozen peer into a
    lost connection within interval x count seconds. Concurrent channels are capped
    below OpenSSH's MaxSessions 10, so callers queue instead of failing.
    """

    def __init__(self, target: TargetConfig) -> None:
        super().__init__(target)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jumps: list[asyncssh.SSHClientConnection] = []
        self._channels = asyncio.Semaphore(target.max_channels)
        self._lost = asyncio.Event()

    @property
    def is_local(self) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._lost.is_set() and not self._conn.is_closed()

    async def connect(self) -> None:
        hops = ssh_hops(self.target)
        self._lost.clear()
        opened: list[asyncssh.SSHClientConnection] = []
        try:
            for index, hop in enumerate(hops):
                opened.append(await self._open(hop, opened[-1] if opened else None,
                                               hops[index - 1] if index else None))
        except BaseException:
            for conn in reversed(opened):
                conn.close()
            raise
        self._conn, self._jumps = opened[-1], opened[:-1]

    async def _open(self, hop: SshHop, tunnel: asyncssh.SSHClientConnection | None,
                    via: SshHop | None) -> asyncssh.SSHClientConnection:
        """One hop, through `tunnel` (the hop before) if any; raises TargetUnreachable naming it."""
        where = hop.where if via is None else f"{hop.where} through {via.label}"
        # tunnel=None also keeps asyncssh from following a ProxyJump itself: we open every hop
        options: dict[str, Any] = {**hop.options, "tunnel": tunnel}
        known = hop.known_hosts
        present = [f for f in known if Path(f).is_file()] if known is not None else []
        # A missing file is reported only once the port has answered: an unreachable
        # port must read as unreachable, whatever else is wrong. Until then we connect
        # trusting no host key and offering no client key, so nothing is sent or accepted.
        missing_known_hosts = known is not None and not present
        options["known_hosts"] = None if known is None else (present or _trust_no_host_key)
        identity = os.path.expanduser(hop.identity) if hop.identity else None
        missing_identity = identity is not None and not Path(identity).is_file()
        if identity is not None:
            options["client_keys"] = None if missing_identity else [identity]
            options["agent_path"] = None
        try:
            return await asyncio.wait_for(asyncssh.connect(hop.connect_host, **options), timeout=hop.connect_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise self._unreachable(f"no answer from {where} within {hop.connect_timeout:g}s") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            if known is None:  # not checked: asyncssh refused the key for another reason
                raise self._unreachable(f"host key of {where} refused: {exc}") from None
            if missing_known_hosts and len(known) == 1:
                raise self._unreachable(
                    f"known_hosts file {known[0]} not found ({where} answers): create it with "
                    f"`{_keyscan(hop, known[0])}` after checking the key, or pass --known-hosts PATH") from None
            if missing_known_hosts:
                raise self._unreachable(
                    f"no known_hosts file for {where} (it answers; looked at {', '.join(known)}): create one "
                    f"with `{_keyscan(hop, known[0])}` after checking the key, or pass --known-hosts PATH") from None
            raise self._unreachable(
                f"host key of {where} not verified against {', '.join(present)} (unknown or changed): "
                f"check it, then `{_keyscan(hop, present[0])}`; "
                "or set insecure_skip_host_key_check = true for this target") from None
        except asyncssh.PermissionDenied:
            if missing_identity:
                raise self._unreachable(f"identity file {identity} not found ({where} answers): "
                                        "pass --identity PATH") from None
            if hop.where == hop.label:  # host:port, as given
                raise self._unreachable(f"authentication failed for {hop.user or 'user'}@{where} with {hop.keys}") from None
            raise self._unreachable(f"authentication failed as {hop.user} on {where} with {hop.keys}") from None
        except asyncssh.KeyImportError as exc:
            raise self._unreachable(f"cannot load identity {hop.identity or hop.keys} for {where}: {exc}") from None
        except asyncssh.DisconnectError as exc:
            raise self._unreachable(f"{where} disconnected: {exc.reason or exc}") from None
        except asyncssh.ChannelOpenError as exc:
            # the hop before answered, but could not reach this one
            raise self._unreachable(f"{via.label if via else 'the jump host'} could not connect to "
                                    f"{hop.host}:{hop.port} for {hop.label}: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise self._unreachable(f"connection refused on {where}: is sshd listening there?") from None
        except OSError as exc:
            raise self._unreachable(f"cannot connect to {where}: {exc.strerror or exc}") from None
        except asyncssh.ConfigParseError as exc:
            raise self._unreachable(f"ssh config: {exc}") from None
        except ValueError as exc:
            # asyncssh's word for a known_hosts file it cannot read
            raise self._unreachable(f"cannot read known_hosts {', '.join(present)}: {exc}") from None
        except asyncssh.Error as exc:
            raise self._unreachable(f"{where}: {exc}") from None

    def _unreachable(self, reason: str) -> TargetUnreachable:
        return TargetUnreachable(self.name, reason)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        jumps, self._jumps = self._jumps, []
        self._lost.set()
        for each in [conn, *reversed(jumps)]:
            if each is None:
                continue
            each.close()
            try:
                await asyncio.shield(asyncio.wait_for(each.wait_closed(), 5))
            except (asyncio.TimeoutError, TimeoutError, OSError):
                pass

    async def wait_closed(self) -> None:
        if self._conn is None:
            return
        conn = self._conn
        done = asyncio.ensure_future(conn.wait_closed())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (done, lost):
                task.cancel()
            await asyncio.gather(done, lost, return_exceptions=True)
        self._lost.set()

    def _require(self, argv: Sequence[str]) -> asyncssh.SSHClientConnection:
        if self._conn is None or self._lost.is_set() or self._conn.is_closed():
            raise TransportError(self.name, tuple(argv), "not connected")
        return self._conn

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None,
                  check: bool = False) -> RunResult:
        argv = tuple(str(a) for a in argv)
        conn = self._require(argv)
        command = quote_argv(argv) if input is not None else guarded(argv)
        started = time.monotonic()
        async with self._channels:
            try:
                proc = await conn.create_process(command, encoding=None)
            except (asyncssh.Error, OSError) as exc:
                raise TransportError(self.name, argv, f"cannot open channel: {exc}") from None
            try:
                async with asyncio.timeout(timeout):
                    if input is not None:
                        proc.stdin.write(input)
                    proc.stdin.write_eof() if input is not None else None
                    out_task = asyncio.ensure_future(proc.stdout.read())
                    err_task = asyncio.ensure_future(proc.stderr.read())
                    try:
                        out, err = await asyncio.gather(out_task, err_task)
                        await proc.wait_closed()
                    finally:
                        out_task.cancel()
                        err_task.cancel()
            except TimeoutError:
                _close_guarded(proc)
                raise CommandTimeout(self.name, argv, timeout) from None
            except (asyncssh.Error, OSError, BrokenPipeError) as exc:
                _close_guarded(proc)
                raise TransportError(self.name, argv, f"link failed: {exc}") from None
            except asyncio.CancelledError:
                _close_guarded(proc)
                raise
            status = proc.exit_status
            if status is None:
                status = 128 + 9 if proc.exit_signal else -1
            _close_guarded(proc)
        result = RunResult(argv, status, out.decode("utf-8", errors="replace"),
                           err.decode("utf-8", errors="replace"), time.monotonic() - started)
        return self._check(result, check)

    @asynccontextmanager
    async def stream(self, argv: Sequence[str], *, errors: str = "replace") -> AsyncIterator[LineStream]:
        argv = tuple(str(a) for a in argv)
        conn = self._require(argv)
        async with self._channels:
            try:
                proc = await conn.create_process(guarded(argv), encoding=None)
            except (asyncssh.Error, OSError) as exc:
                raise TransportError(self.name, argv, f"cannot open channel: {exc}") from None
            tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
            stderr_task = asyncio.create_task(_drain_stderr(proc.stderr, tail))

            async def lines() -> AsyncIterator[str]:
                splitter = LineSplitter(errors=errors)
                while True:
                    try:
                        chunk = await proc.stdout.read(READ_CHUNK)
                    except (asyncssh.Error, OSError) as exc:
                        raise TransportError(self.name, argv, f"link failed: {exc}") from None
                    if not chunk:
                        break
                    for line in splitter.feed(chunk):
                        yield line
                for line in splitter.flush():
                    yield line
                await proc.wait_closed()
                stream.exit_status = proc.exit_status

            stream = LineStream(argv, lines(), stderr_tail=tail)
            try:
                yield stream
            finally:
                _close_guarded(proc)
                stderr_task.cancel()
                await asyncio.gather(stderr_task, return_exceptions=True)
                await stream._lines.aclose()  # type: ignore[attr-defined]

    async def open_tcp(self, host: str, port: int) -> tuple[object, object]:
        conn = self._require(("open_tcp", host, str(port)))
        try:
            reader, writer = await conn.open_connection(host, port, encoding=None)
        except asyncssh.ChannelOpenError as exc:
            raise ConnectionRefusedError(f"{host}:{port} via {self.name}: {exc.reason}") from None
        except asyncssh.Error as exc:
            raise ConnectionResetError(f"{host}:{port} via {self.name}: {exc.reason or exc}") from None
        where = f"{host}:{port} via {self.name}"
        return _ForwardedReader(reader, where), _ForwardedWriter(writer, where)


class _ForwardedReader:
    """A forwarded stream's reader whose asyncssh errors (the link broke) are OSErrors,
    so nothing above the transport needs to know asyncssh."""

    def __init__(self, reader: asyncssh.SSHReader, where: str) -> None:
        self._reader = reader
        self._where = where

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._reader.read(n)
        except asyncssh.Error as exc:
            raise ConnectionResetError(f"{self._where}: link failed: {exc.reason or exc}") from None


class _ForwardedWriter:
    """A forwarded stream's writer, asyncssh errors turned into OSErrors."""

    def __init__(self, writer: asyncssh.SSHWriter, where: str) -> None:
        self._writer = writer
        self._where = where

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except asyncssh.Error as exc:
            raise ConnectionResetError(f"{self._where}: link failed: {exc.reason or exc}") from None

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except asyncssh.Error as exc:
            raise ConnectionResetError(f"{self._where}: link failed: {exc.reason or exc}") from None

    def write_eof(self) -> None:
        try:
            self._writer.write_eof()
        except (asyncssh.Error, OSError):
            pass

    def close(self) -> None:
        try:
            self._writer.close()
        except (asyncssh.Error, OSError):
            pass

    async def wait_closed(self) -> None:
        try:
            await self._writer.channel.wait_closed()
        except (asyncssh.Error, OSError):
            pass


def _close_guarded(proc: asyncssh.SSHClientProcess) -> None:
    """Close stdin (the guard then kills the remote command) and the channel."""
    try:
        proc.stdin.write_eof()
    except (asyncssh.Error, OSError, BrokenPipeError):
        pass
    proc.close()


def make_transport(target: TargetConfig) -> Transport:
    """The transport a target asks for (not yet connected)."""
    if target.transport == "local":
        return LocalTransport(target)
    return SshTransport(target)


# HTTP through the link lives in agent/http.py (h11, TLS); re-exported here for older callers.
from agent import http as _http  # noqa: E402  (agent.http imports nothing from this module)

HttpResponse = _http.HttpResponse
http_get = _http.http_get

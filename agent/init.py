"""`podwarden init`: discover a node's containers and write a commented starting config.

The config is the node as init found it, so that `podwarden check --config OUT` passes
against it and every later change shows up:
- one `[containers.NAME]` per container: `expected_state` from its state now (healthy
  when podman says so, or when its own health check passes as init runs it where podman
  has not judged it yet or judges it failing; running; else stopped); its podman
  health check as a `podman-healthcheck` probe; an `http` probe for each TCP port it
  serves that answers HTTP (https: pinned to the certificate seen, by `cert_sha256`),
  else a `tcp` probe. The ports are its published ones, or, on the host network, the
  ones its processes listen on (`podman top` + /proc, inside `podman unshare` rootless);
- the role and `depends_on` are guesses, so they are written commented out; the restart
  policy, image, health check command and memory limit are noted in comments;
- a policy the container fails now (restart policy, memory limit, image tag, read-only
  rootfs) is accepted as found, loudly: `restart_policies = [its own]` or
  `policies = { NAME = false }` with a comment, and listed in the outcome. Faults of
  the present (a failing health check, a container down) are not hidden: check will
  report them.

Nothing on the node is changed: init runs ps, inspect, top, the health check of a container
podman does not call healthy (as check does) and GETs `/` of its ports through the link. The file is written
atomically (a temp file, validated with `load_config`, then linked or renamed into
place), mode 0644, and an existing file is kept unless `force`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import fnmatch
import hashlib
import ipaddress
import math
import os
import re
import secrets
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from agent import podman
from agent.config import (
    RESTART_POLICY_RE,
    Config,
    ConfigError,
    HealthcheckProbe,
    TargetConfig,
    format_duration,
    load_config,
)
from agent.diagnosis import restart_policy_means, restart_policy_spelled
from agent.errors import PodwardenError, TargetUnreachable, TransportError, UsageError
from agent.http import BadHttpReply, TlsFailed, TlsVerify, http_get
from agent.names import CONTAINER_NAME_RE
from agent.node import inspect_all, node_info
from agent.policies import (
    DEFAULT_RESTART_POLICIES,
    check_image_pinned,
    check_memory_limit,
    check_read_only_rootfs,
    check_restart_policy,
)
from agent.probes import execute_probe
from agent.transport import Transport, make_transport
from store.redact import Redactor

PORT_TIMEOUT_S = 5.0  # one port's connect, GET and (https) handshake
TOP_TIMEOUT_S = 20.0
MAX_CONCURRENT = 4  # below the SSH transport's channel cap, like check
DEFAULT_PROBE_TIMEOUT_S = 10.0
SECTION_RULE = "-" * 64  # as config.toml marks its parts


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------- the TOML emitter

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string holding exactly `text`.

    Quotes, backslashes and every control character (U+0000-U+001F, U+007F) are
    escaped; a lone surrogate, which no UTF-8 file can hold, becomes U+FFFD.
    """
    out = ['"']
    for char in str(text):
        escaped = _SHORT_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        elif "\ud800" <= char <= "\udfff":
            out.append("\\uFFFD")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A key as TOML reads it back: bare when it is only letters, digits, `-` and `_`, else quoted."""
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_path(*keys: str) -> str:
    """A dotted key path (`containers."my.app".probes`): each part quoted as it needs."""
    return ".".join(toml_key(key) for key in keys)


def toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, int, float, list/tuple or dict (an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML literal for {type(value).__name__}: {value!r:.80}")


def comment_text(text: str) -> str:
    """Text that is safe inside a `#` comment: one line, no control character, no surrogate.

    Control characters are shown as escapes (`\\n`, `\\x07`), so a hostile label or
    command can neither end the comment nor hide in it.
    """
    out = []
    for char in str(text):
        if char == "\t":
            out.append(" ")
        elif char < " " or char == "\x7f" or "\x80" <= char <= "\x9f":
            out.append({"\n": "\\n", "\r": "\\r"}.get(char, f"\\x{ord(char):02x}"))
        elif "\ud800" <= char <= "\udfff":
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


class TomlDocument:
    """A small, careful TOML writer: tables, arrays of tables, keys, comments and hints.

    Every key and value goes through `toml_key`/`toml_value`, every comment through
    `comment_text`; a value's own comment follows it on its line.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def comment(self, text: str = "") -> None:
        for line in str(text).split("\n"):
            self.lines.append(("# " + comment_text(line)).rstrip())

    def table(self, *path: str, note: str = "") -> None:
        self.lines.append(f"[{toml_path(*path)}]" + self._note(note))

    def array_table(self, *path: str, note: str = "") -> None:
        self.lines.append(f"[[{toml_path(*path)}]]" + self._note(note))

    def kv(self, key: str, value: Any, note: str = "") -> None:
        self.lines.append(f"{toml_key(key)} = {toml_value(value)}" + self._note(note))

    def hint(self, key: str, value: Any, note: str = "") -> None:
        """A key written commented out: uncomment it to use it."""
        self.lines.append(f"# {toml_key(key)} = {toml_value(value)}" + self._note(note))

    def text(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"

    @staticmethod
    def _note(note: str) -> str:
        return f"  # {comment_text(note)}" if note else ""


# ---------------------------------------------------------------- what init found

@dataclass(frozen=True)
class InitProbe:
    """A probe init wrote (or only suggested, `written` False) and why."""

    container: str
    name: str
    type: str
    target: str  # url, host:port, or the health check command
    detail: str
    written: bool = True


@dataclass
class InitContainer:
    """One container as init found it and what it expects of it."""

    name: str
    state: str  # podman's State.Status
    health: str | None
    expected_state: str
    image: str
    restart_policy: str
    role_guess: str = ""
    role_why: str = ""
    depends_on_guess: list[str] = field(default_factory=list)
    depends_why: str = ""
    accepted: list[str] = field(default_factory=list)  # policies it fails now, accepted as found
    notes: list[str] = field(default_factory=list)
    probes: list[InitProbe] = field(default_factory=list)


@dataclass
class InitOutcome:
    """What `podwarden init` wrote, where, for which target."""

    path: str
    target: str  # the [targets] name the config's default_target names
    target_spec: str  # how the target was given
    podman_version: str
    rootless: bool | None
    containers: list[InitContainer]
    replaced: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def probes(self) -> list[InitProbe]:
        return [p for c in self.containers for p in c.probes if p.written]

    @property
    def accepted(self) -> list[tuple[str, str]]:
        return [(c.name, what) for c in self.containers for what in c.accepted]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "target_spec": self.target_spec,
            "podman_version": self.podman_version,
            "rootless": self.rootless,
            "replaced": self.replaced,
            "containers": [{k: v for k, v in asdict(c).items()} for c in self.containers],
            "probes": len(self.probes),
            "accepted": [{"container": name, "policy": what} for name, what in self.accepted],
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------- ports

@dataclass(frozen=True)
class Port:
    """A TCP port a container serves, as reached from the node."""

    host: str  # where to connect on the node
    port: int
    source: str  # "published 127.0.0.1:8081->80/tcp" or "listening on 0.0.0.0 (host network)"


def _probe_host(address: str) -> str:
    """Where on the node to reach a socket bound to `address`."""
    if address in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # podman binds IPs; anything else is not a place to connect to
        return "127.0.0.1"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


_PUBLISHED = re.compile(r"(?P<ip>.*):(?P<host_port>\d+)->(?P<port>\d+)/(?P<proto>\w+)")


def published_ports(facts: podman.InspectFacts) -> list[Port]:
    """The TCP ports a container publishes on the node (`127.0.0.1:8081->80/tcp`), once each."""
    seen: dict[int, Port] = {}
    for text in facts.ports:
        match = _PUBLISHED.fullmatch(text)
        if match is None or match["proto"] != "tcp":
            continue
        number = int(match["host_port"])
        if 1 <= number <= 65535 and number not in seen:
            seen[number] = Port(_probe_host(match["ip"].strip("[]")), number, f"published {text}")
    return sorted(seen.values(), key=lambda p: p.port)


# Lists the socket inodes of the pids given, then the TCP tables of the first one's network namespace.
_LISTENERS_SCRIPT = (
    'for p in "$@"; do ls -l "/proc/$p/fd" 2>/dev/null'
    " | sed -n 's/.*socket:\\[\\([0-9][0-9]*\\)\\].*/inode \\1/p'; done; "
    'echo tables; cat "/proc/$1/net/tcp" "/proc/$1/net/tcp6" 2>/dev/null; true'
)


def _hex_address(text: str) -> str:
    """An address of /proc/net/tcp (host-order 32-bit words in hex) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def parse_listeners(text: str) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket in `_LISTENERS_SCRIPT`'s output that one of the
    listed processes holds. Lines it cannot read are skipped."""
    inodes: set[str] = set()
    found: list[tuple[str, int]] = []
    in_tables = False
    for line in text.splitlines():
        parts = line.split()
        if not in_tables:
            if line.strip() == "tables":
                in_tables = True
            elif len(parts) == 2 and parts[0] == "inode" and parts[1].isdigit():
                inodes.add(parts[1])
            continue
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(parts) < 10 or parts[3] != "0A" or parts[9] not in inodes:
            continue
        address, _, port_hex = parts[1].partition(":")
        try:
            entry = (_hex_address(address), int(port_hex, 16))
        except ValueError:
            continue
        if entry not in found:
            found.append(entry)
    return found


def listening_ports(listeners: Iterable[tuple[str, int]]) -> list[Port]:
    """One Port per port number (an IPv4 socket preferred over an IPv6 one on the same port)."""
    by_port: dict[int, Port] = {}
    for address, number in listeners:
        if not 1 <= number <= 65535:
            continue
        port = Port(_probe_host(address), number, f"listening on {address} (host network)")
        known = by_port.get(number)
        if known is None or (":" in known.host and ":" not in port.host):
            by_port[number] = port
    return sorted(by_port.values(), key=lambda p: p.port)


async def host_network_ports(transport: Transport, podman_cmd: list[str], name: str,
                             rootless: bool | None) -> tuple[list[Port], str]:
    """The TCP ports a running host-network container's processes listen on, and a note if unread.

    Rootless, the processes of other container uids belong to sub-uids: their fds are read
    inside `podman unshare` (the rootless user namespace).
    """
    try:
        if CONTAINER_NAME_RE.fullmatch(name) is None:
            return [], "not a container name podman takes"
        top = await transport.run([*podman_cmd, "top", name, "hpid"], timeout=TOP_TIMEOUT_S)
        if not top.ok:
            return [], f"podman top failed: {top.stderr.strip()[-200:] or top.exit_status}"
        pids = [line.strip() for line in top.stdout.splitlines()[1:] if line.strip().isdigit()]
        if not pids:
            return [], "podman top listed no process"
        script = ["sh", "-c", _LISTENERS_SCRIPT, "sh", *pids]
        argv = [*podman_cmd, "unshare", *script] if rootless else script
        result = await transport.run(argv, timeout=TOP_TIMEOUT_S)
    except TransportError as exc:
        if not transport.connected:
            raise
        return [], f"listening ports unread: {exc.reason}"
    return listening_ports(parse_listeners(result.stdout)), ""


# ---------------------------------------------------------------- what a port speaks

@dataclass(frozen=True)
class PortAnswer:
    """What a port said to `GET /`: http or https with a status, tcp (no HTTP), or closed."""

    kind: str  # http | https | tcp | closed
    status: int | None = None
    reason: str = ""
    cert_sha256: str | None = None
    detail: str = ""


def _url(scheme: str, host: str, port: int, path: str = "/") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


def _asks_for_tls(status: int, body: str) -> bool:
    """A 400 that says the port wants TLS (Go: `Client sent an HTTP request to an HTTPS server`;
    nginx: `The plain HTTP request was sent to HTTPS port`)."""
    return status == 400 and "https" in body.lower()


async def _peer_certificate(transport: Transport, host: str, port: int) -> bytes:
    """The DER certificate a TLS port presents (read, not trusted: it is pinned, then used)."""
    from agent.http import _TlsStream  # the handshake of agent.http, which returns the certificate

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await transport.open_tcp(host, port)
    try:
        return await _TlsStream(reader, writer, context, host).handshake()
    finally:
        writer.close()  # type: ignore[attr-defined]


async def classify_port(transport: Transport, host: str, port: int, timeout: float = PORT_TIMEOUT_S) -> PortAnswer:
    """Connect, then `GET /`: the port speaks http, https (certificate pinned), only tcp, or is closed.

    Never raises for what the port does; raises TransportError only when the link is lost.
    """
    try:
        async with asyncio.timeout(timeout):
            _, writer = await transport.open_tcp(host, port)
            writer.close()  # type: ignore[attr-defined]
    except (OSError, TimeoutError) as exc:
        _link_alive(transport, exc)
        return PortAnswer("closed", detail=f"no connection: {exc or type(exc).__name__}")
    said_tls = False  # the plain reply itself says the port wants TLS
    try:
        response = await http_get(transport, _url("http", host, port), timeout=timeout, max_body=4096)
        if not _asks_for_tls(response.status, response.text()):
            return PortAnswer("http", response.status, response.reason)
        plain, said_tls = f"answered {response.status} to plain HTTP: it wants TLS", True
    except BadHttpReply as exc:
        plain, said_tls = exc.reason, "in TLS" in exc.reason
        if not said_tls and "closed the connection without a reply" not in exc.reason:
            return PortAnswer("tcp", detail=f"accepts connections, no HTTP: {plain}")
    except (OSError, TimeoutError, ValueError) as exc:
        _link_alive(transport, exc)
        return PortAnswer("tcp", detail=f"accepts connections, no HTTP answer: {exc or type(exc).__name__}")
    # it speaks TLS, or hung up on plain HTTP as a TLS server does: pin the certificate it shows,
    # then ask again over https
    try:
        async with asyncio.timeout(timeout):
            der = await _peer_certificate(transport, host, port)
        pin = hashlib.sha256(der).hexdigest()
        response = await http_get(transport, _url("https", host, port), timeout=timeout, max_body=4096,
                                  tls=TlsVerify(cert_sha256=pin))
    except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
        _link_alive(transport, exc)
        if not said_tls:
            return PortAnswer("tcp", detail=f"accepts connections, no HTTP: {plain}")
        reason = exc.reason if isinstance(exc, (TlsFailed, BadHttpReply)) else (str(exc) or type(exc).__name__)
        return PortAnswer("tcp", detail=f"wants TLS, but https failed: {reason}")
    return PortAnswer("https", response.status, response.reason, cert_sha256=pin)


def _link_alive(transport: Transport, exc: BaseException) -> None:
    if not transport.connected:
        raise TransportError(transport.name, ["init"], f"the link was lost: {exc}") from None


# ---------------------------------------------------------------- guesses

_ROLE_LABELS = ("podwarden.role", "role", "io.podwarden.role", "app.kubernetes.io/component",
                "com.docker.compose.service", "app")
_ROLE_WORDS = (
    ("ui", ("ui", "web", "webui", "frontend", "dashboard", "nginx", "caddy", "httpd", "rtl", "thunderhub")),
    ("node", ("bitcoin", "bitcoind", "knots", "btcd", "node", "core")),
    ("lightning", ("lnd", "lightning", "cln", "clightning", "eclair", "ln")),
    ("indexer", ("electrs", "electrumx", "fulcrum", "electrum", "indexer")),
    ("database", ("postgres", "postgresql", "mariadb", "mysql", "redis", "mongo", "mongodb", "db")),
    ("proxy", ("tor", "proxy", "traefik", "haproxy")),
)


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[^a-z0-9]+", text.lower()) if word]


def _role_of_words(words: Sequence[str]) -> str:
    for role, keys in _ROLE_WORDS:
        if any(word in keys for word in words):
            return role
    return ""


def guess_role(facts: podman.InspectFacts) -> tuple[str, str]:
    """A role for a container and why: its role label, else words of its name, else of its image."""
    labels = dict(facts.labels)
    for key in _ROLE_LABELS:
        value = labels.get(key, "").strip()
        if value and len(value) <= 40:
            return value, f"its label {key}"
    name_words = _words(facts.name)
    if name_words:
        last = _role_of_words(name_words[-1:])  # `-ui` at the end outweighs `node` before it
        if last:
            return last, "its name"
    repo = facts.image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    role = _role_of_words(_words(repo))
    if role:
        return role, f"its image {repo}"
    role = _role_of_words(name_words)
    return (role, "its name") if role else ("", "")


def guess_depends_on(name: str, role: str, others: dict[str, str]) -> tuple[list[str], str]:
    """Containers `name` likely needs, and why: the one its name extends (`X-ui` needs `X`),
    or, for lightning and indexer roles, the only container guessed to be the node."""
    extended = [other for other in others
                if other != name and len(other) < len(name) and name.startswith(other)
                and name[len(other)] in "-_."]
    if extended:
        best = max(extended, key=len)
        return [best], f"its name extends {best}"
    if role in ("lightning", "indexer"):
        nodes = [other for other, other_role in others.items() if other_role == "node" and other != name]
        if len(nodes) == 1:
            return nodes, f"{'an' if role[0] in 'aeiou' else 'a'} {role} needs the node"
    return [], ""


# ---------------------------------------------------------------- the target's section

def target_section_name(target: TargetConfig) -> str:
    """The [targets] name the written config uses: the configured name (`local` for this
    machine), or, for an ssh:// URL, one made from the host (`10.0.0.5` -> `10-0-0-5`)."""
    if target.name and not target.name.startswith("ssh://"):
        return target.name
    if target.transport == "local":
        return "local"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", target.host or "").strip("-") or "node"


def needs_target_section(target: TargetConfig) -> bool:
    """Whether the target must be spelled out: all but the built-in `local` (this machine's podman)."""
    return not (target.transport == "local" and target_section_name(target) == "local"
                and list(_target_fields(target)) == ["transport"])


def _path_for_config(path: str) -> str:
    """A key or known_hosts path that still works from another directory (`~` kept)."""
    return path if path.startswith("~") else os.path.abspath(path)


def _target_fields(target: TargetConfig) -> dict[str, Any]:
    """The target's keys that differ from the defaults, as the config writes them."""
    data = target.model_dump(exclude_defaults=True, exclude={"name"})
    data["transport"] = target.transport
    if target.transport == "ssh":
        data["host"] = target.host
        data["port"] = target.port
    for key in ("identity", "known_hosts"):
        if data.get(key):
            data[key] = _path_for_config(data[key])
    for key in ("connect_timeout", "keepalive_interval"):
        if key in data:
            data[key] = format_duration(data[key])
    order = ("transport", "host", "port", "user", "identity", "known_hosts", "insecure_skip_host_key_check",
             "podman", "connect_timeout", "keepalive_interval", "keepalive_count_max", "max_channels")
    return {key: data[key] for key in order if key in data}


# ---------------------------------------------------------------- the verb

def _check_output(output: str, force: bool) -> Path:
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output}: is a directory; give a file name, e.g. -o {path / 'config.toml'}")
    if path.exists() and not force:
        raise UsageError(f"-o {output}: the file exists and init never overwrites one: pass --force to "
                         "replace it, or write elsewhere with -o OTHER.toml")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the directory {parent} does not exist")
    return path


async def init(config: Config, target: TargetConfig, target_spec: str | None, output: str, *,
               force: bool = False, progress: Callable[[str], None] = _quiet,
               only: Sequence[str] = ()) -> InitOutcome:
    """Discover the target's containers and write a commented starting config to `output`.

    `only`: glob patterns of container names to describe (default all). Raises UsageError
    (exit 2) when `output` exists and not `force`, TargetUnreachable (exit 3) when the
    target or podman on it does not answer.
    """
    path = _check_output(output, force)
    section = target_section_name(target)
    podman_cmd = list(target.podman) or ["podman"]
    redactor = Redactor(config.redaction.patterns)
    where = target.describe()
    progress(f"{where}: connecting")
    try:
        async with make_transport(target) as transport:
            info = await node_info(transport, podman_cmd)
            progress(f"{where}: inventory (podman ps, inspect)")
            facts_list, problems = await inspect_all(transport, podman_cmd)
            if problems:
                raise TargetUnreachable(target.name or where, f"podman did not answer: {'; '.join(problems)}")
            if only:
                facts_list = [f for f in facts_list if any(fnmatch.fnmatchcase(f.name, p) for p in only)]
            facts_list.sort(key=lambda f: f.name)
            progress(f"{where}: {len(facts_list)} containers; health checks and ports")
            found = await _discover(transport, podman_cmd, facts_list, info.rootless if info else None, progress)
    except TransportError as exc:
        raise TargetUnreachable(target.name or where, f"link lost during init: {exc.reason}") from None
    outcome = InitOutcome(str(path), section, target_spec or target.name or section,
                          info.version if info else "", info.rootless if info else None, [c for c, _ in found])
    if info is None:
        outcome.notes.append("podman info did not answer: version and rootlessness unknown")
    text = render_config(outcome, target, found, redactor)
    outcome.replaced = _write_atomically(path, text, force)
    progress(f"wrote {path}")
    return outcome


@dataclass
class _Found:
    """What init learned of one container beyond its inspect facts."""

    facts: podman.InspectFacts
    health_ok: bool | None = None  # None: no check run
    health_detail: str = ""
    ports: list[tuple[Port, PortAnswer | None]] = field(default_factory=list)
    ports_note: str = ""


async def _discover(transport: Transport, podman_cmd: list[str], facts_list: list[podman.InspectFacts],
                    rootless: bool | None, progress: Callable[[str], None]
                    ) -> list[tuple[InitContainer, _Found]]:
    limit = asyncio.Semaphore(MAX_CONCURRENT)

    async def one(facts: podman.InspectFacts) -> _Found:
        found = _Found(facts)
        if facts.running and facts.healthcheck_test and facts.health == "healthy":
            found.health_ok, found.health_detail = True, "podman says healthy"
        elif facts.running and facts.healthcheck_test:
            # `starting` (never judged: no timers on the node) or unhealthy: what is it now?
            async with limit:
                result = await execute_probe(transport, podman_cmd, facts.name, _health_probe(facts))
            found.health_ok = result.obs.ok
            found.health_detail = "passed when init ran it" if result.obs.ok else result.obs.detail
        ports = published_ports(facts)
        if not ports and facts.running and facts.network_mode == "host":
            async with limit:
                ports, found.ports_note = await host_network_ports(transport, podman_cmd, facts.name, rootless)
        for port in ports:
            answer = None
            if facts.running:
                async with limit:
                    answer = await classify_port(transport, port.host, port.port)
            found.ports.append((port, answer))
        state = f"health check {'passed' if found.health_ok else 'failed'}" if found.health_ok is not None else ""
        progress(f"{facts.name}: {facts.status}" + (f", {state}" if state else "")
                 + (f", ports {', '.join(str(p.port) for p, _ in found.ports)}" if found.ports else ""))
        return found

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(facts)) for facts in facts_list]
    except ExceptionGroup as failed:  # the link was lost: say so once, as the caller expects
        lost = failed.subgroup(TransportError)
        if lost is None:
            raise
        while isinstance(lost, BaseExceptionGroup):
            lost = lost.exceptions[0]
        raise lost from None
    founds = [task.result() for task in tasks]
    roles = {f.facts.name: guess_role(f.facts) for f in founds}
    role_names = {name: role for name, (role, _) in roles.items()}
    result = []
    for found in founds:
        facts = found.facts
        role, role_why = roles[facts.name]
        depends, depends_why = guess_depends_on(facts.name, role, role_names)
        container = InitContainer(
            name=facts.name, state=facts.status, health=facts.health, expected_state=_expected_state(found),
            image=facts.image, restart_policy=restart_policy_spelled(facts), role_guess=role, role_why=role_why,
            depends_on_guess=depends, depends_why=depends_why,
        )
        result.append((container, found))
    return result


def _health_probe(facts: podman.InspectFacts) -> HealthcheckProbe:
    """The container's own health check as a probe, timed by its --health-timeout (5 s to 60 s)."""
    seconds = facts.healthcheck_timeout_ns / 1e9 if facts.healthcheck_timeout_ns else DEFAULT_PROBE_TIMEOUT_S
    return HealthcheckProbe(type="podman-healthcheck", name="healthcheck", timeout=min(max(seconds, 5.0), 60.0))


def _expected_state(found: _Found) -> str:
    facts = found.facts
    if facts.running or facts.status in ("running", "paused", "restarting"):
        return "healthy" if found.health_ok else "running"
    return "stopped"


def _accepted_policies(facts: podman.InspectFacts) -> tuple[list[str] | None, dict[str, bool], list[str]]:
    """What the default policies flag on this container now: an allowed restart policy list,
    the policies to switch off, and a line for each."""
    restart: list[str] | None = None
    off: dict[str, bool] = {}
    lines: list[str] = []
    if check_restart_policy(facts, DEFAULT_RESTART_POLICIES) is not None:
        spelled = restart_policy_spelled(facts)
        if RESTART_POLICY_RE.fullmatch(spelled):
            restart = [spelled]
        else:  # not a policy podman's --restart takes: the policy cannot name it, only be switched off
            off["restart-policy"] = False
        lines.append(f"restart-policy: {spelled} (the default allows {', '.join(DEFAULT_RESTART_POLICIES)})")
    for rule, finding in (("memory-limit", check_memory_limit(facts)), ("image-pinned", check_image_pinned(facts)),
                          ("read-only-rootfs", check_read_only_rootfs(facts))):
        if finding is not None:
            off[rule] = False
            lines.append(f"{rule}: {finding.message}")
    return restart, off, lines


def _healthcheck_text(facts: podman.InspectFacts, redactor: Redactor) -> str:
    """The health check's command for a comment: redacted (it may carry a password), at most 200 characters."""
    test = list(facts.healthcheck_test)
    text = " ".join(test[1:] if test and test[0] in ("CMD", "CMD-SHELL") else test)
    text = redactor.text(text) if redactor else text
    return text if len(text) <= 200 else text[:197] + "..."


def render_config(outcome: InitOutcome, target: TargetConfig, found: list[tuple[InitContainer, _Found]],
                  redactor: Redactor) -> str:
    """The commented TOML text of the starting config (also fills each container's probes and notes)."""
    doc = TomlDocument()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = {True: "rootless", False: "root", None: "root or rootless: unknown"}[outcome.rootless]
    doc.comment(f"podwarden config for target {outcome.target} ({target.describe()}), written by `podwarden init` "
                f"on {stamp}")
    doc.comment(f"from podman {outcome.podman_version or '?'} ({mode}): {len(found)} container(s).")
    doc.comment("It describes the node as init found it: each container's expected_state is its state then,")
    doc.comment("its probes are its own health check and the ports that answered. Roles and depends_on are")
    doc.comment("guesses, left commented out. A policy a container failed then is accepted as found and says so")
    doc.comment("(`accepted as found`): delete that line to be told again. Then: podwarden check --config THIS")
    doc.comment("Every key: README.md, \"Configuration reference\".")
    doc.blank()
    doc.table("podwarden")
    doc.kv("default_target", outcome.target)
    doc.blank()
    if not needs_target_section(target):
        doc.comment("`local` is this machine's podman: it needs no [targets] entry.")
    else:
        doc.table("targets", outcome.target)
        for key, value in _target_fields(target).items():
            doc.kv(key, value)
    doc.blank()
    doc.comment(SECTION_RULE + " containers")
    if not found:
        doc.blank()
        doc.comment("podman listed no container on the target.")
    for container, what in found:
        _render_container(doc, container, what, redactor)
    doc.blank()
    doc.comment(SECTION_RULE + " host services")
    doc.blank()
    doc.comment("Host services (a systemd unit beside the containers) are not discovered; describe one so:")
    doc.comment("[services.backend]")
    doc.comment('health_url = "http://127.0.0.1:8080/health"')
    doc.comment('status_command = ["systemctl", "--user", "is-active", "backend"]')
    doc.comment('kill_command = ["systemctl", "--user", "kill", "--signal", "KILL", "backend"]')
    doc.comment('start_command = ["systemctl", "--user", "start", "backend"]')
    return doc.text()


def _render_container(doc: TomlDocument, container: InitContainer, found: _Found, redactor: Redactor) -> None:
    facts = found.facts
    name = facts.name
    owner = ("containers", name)
    doc.blank()
    health = f", health {facts.health}" if facts.health else ""
    state = facts.status + (f" (exit {facts.exit_code})" if not facts.running and facts.status != "created" else "")
    doc.comment(f"{name}: {state}{health}; image {facts.image or '?'}")
    doc.comment(f"restart policy {container.restart_policy}: podman {restart_policy_means(facts)}; "
                f"memory limit {_memory(facts.memory)}")
    if not facts.running and facts.exit_code not in (0, 137, 143) and (facts.restart_policy or "no") != "no":
        note = (f"down now (exit {facts.exit_code}) although its restart policy would restart it: if it should "
                "run, set expected_state = \"running\"")
        doc.comment(note)
        container.notes.append(note)
    doc.table(*owner)
    if container.role_guess:
        doc.hint("role", container.role_guess, f"a guess from {container.role_why}")
    else:
        doc.hint("role", "", "what it is (hooks can name roles)")
    why = {"healthy": f"health check: {found.health_detail or 'passed'}", "running": "it was running",
           "stopped": "it was not running"}[container.expected_state]
    if container.expected_state == "running" and found.health_ok is False:
        why += f"; its health check FAILED: {found.health_detail[:160]}"
        container.notes.append(f"health check failed: {found.health_detail[:200]}")
    doc.kv("expected_state", container.expected_state, why)
    if container.depends_on_guess:
        doc.hint("depends_on", container.depends_on_guess, f"a guess: {container.depends_why}")
    else:
        doc.hint("depends_on", [], "containers this one needs (experiment cascade uses it)")
    restart, off, lines = _accepted_policies(facts)
    if restart is not None:
        doc.kv("restart_policies", restart, "accepted as found: delete to be told")
    if off:
        doc.kv("policies", off, "accepted as found: delete to be told")
    container.accepted.extend(lines)

    if facts.healthcheck_test:
        probe = _health_probe(facts)
        command = _healthcheck_text(facts, redactor)
        doc.blank()
        doc.array_table(*owner, "probes", note=f"its own health check: {command}")
        doc.kv("name", "healthcheck")
        doc.kv("type", "podman-healthcheck")
        if probe.timeout != DEFAULT_PROBE_TIMEOUT_S:
            doc.kv("timeout", format_duration(probe.timeout))
        detail = ("not running" if found.health_ok is None
                  else found.health_detail if found.health_ok else f"failed: {found.health_detail[:200]}")
        container.probes.append(InitProbe(name, "healthcheck", "podman-healthcheck", command, detail))
    if found.ports_note:
        doc.blank()
        doc.comment(f"its ports could not be read: {found.ports_note}")
        container.notes.append(f"ports unread: {found.ports_note}")
    for port, answer in found.ports:
        _render_port(doc, container, owner, port, answer)


def _render_port(doc: TomlDocument, container: InitContainer, owner: tuple[str, ...], port: Port,
                 answer: PortAnswer | None) -> None:
    doc.blank()
    name = container.name
    if answer is None:
        doc.comment(f"port {port.port} ({port.source}): not probed, the container was not running; "
                    "it may speak HTTP")
        doc.array_table(*owner, "probes")
        doc.kv("name", f"tcp-{port.port}")
        doc.kv("type", "tcp")
        doc.kv("host", port.host)
        doc.kv("port", port.port)
        container.probes.append(InitProbe(name, f"tcp-{port.port}", "tcp", f"{port.host}:{port.port}",
                                          "not probed: not running"))
        return
    if answer.kind == "closed":
        doc.comment(f"port {port.port} ({port.source}) accepted no connection when init tried: "
                    f"{answer.detail}; not probed until it does:")
        doc.comment(f"[[{toml_path(*owner, 'probes')}]]")
        doc.comment(f'name = "tcp-{port.port}"')
        doc.comment('type = "tcp"')
        doc.comment(f"host = {toml_value(port.host)}")
        doc.comment(f"port = {port.port}")
        container.probes.append(InitProbe(name, f"tcp-{port.port}", "tcp", f"{port.host}:{port.port}",
                                          answer.detail, written=False))
        container.notes.append(f"port {port.port} closed")
        return
    if answer.kind in ("http", "https") and answer.status is not None and answer.status < 500:
        url = _url(answer.kind, port.host, port.port)
        heard = f"answered {answer.status} {answer.reason}".rstrip() + " at /"
        if answer.status != 200:
            heard += ": any answer shows it is up; a real path makes a better probe"
        doc.array_table(*owner, "probes", note=f"port {port.port}, {port.source}")
        doc.kv("name", f"{answer.kind}-{port.port}")
        doc.kv("type", "http")
        doc.kv("url", url)
        doc.kv("expect_status", answer.status, heard)
        if answer.kind == "https":
            doc.kv("cert_sha256", answer.cert_sha256 or "",
                   "the certificate init saw, pinned: compare it with `openssl x509 -in CERT -noout "
                   "-fingerprint -sha256`; a renewed cert fails the pin (or use ca_file)")
        container.probes.append(InitProbe(name, f"{answer.kind}-{port.port}", "http", url, heard))
        return
    why = answer.detail or f"answered HTTP {answer.status} at /, a server error"
    doc.array_table(*owner, "probes", note=f"port {port.port}, {port.source}: {why[:160]}")
    doc.kv("name", f"tcp-{port.port}")
    doc.kv("type", "tcp")
    doc.kv("host", port.host)
    doc.kv("port", port.port)
    container.probes.append(InitProbe(name, f"tcp-{port.port}", "tcp", f"{port.host}:{port.port}", why[:200]))


def _memory(value: int) -> str:
    if value <= 0:
        return "none"
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


# ---------------------------------------------------------------- writing

def _write_atomically(path: Path, text: str, force: bool) -> bool:
    """Write `text` to a temp file beside `path` (0644), prove it loads, then put it in place:
    linked (never over an existing file) or, with `force`, renamed over it. Returns whether a
    file was replaced."""
    directory = path.parent if str(path.parent) else Path(".")
    temp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            load_config(temp)
        except ConfigError as exc:
            raise PodwardenError(f"podwarden init wrote a config that does not load (a bug: please report it "
                                 f"with the container names): {exc.problem} at {exc.key or 'the top'}") from None
        replaced = path.exists()
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # fails if the file appeared meanwhile: never overwritten
            except FileExistsError:
                raise UsageError(f"-o {path}: the file appeared while init ran; nothing was overwritten "
                                 "(pass --force to replace it)") from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise UsageError(f"-o {path}: the file exists; pass --force to replace it") from None
                os.replace(temp, path)
            replaced = False
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return replaced

"""The testbed: a miniature of the seed's Bitcoin stack, built on any podman target.

A busybox image is built here from this machine's static busybox (an in-memory,
deterministic tar imported with `podman import`: no registry needed) and six
containers are started from it under a name prefix, all on the host network:
a node daemon with an RPC port and a bitcoin-cli-like `tb-cli`, a lightning
daemon and an indexer that depend on it, and three web UIs. A host "backend"
service (busybox httpd under a shell supervisor, the seed's systemd unit) serves
a JSON /health. Named faults reproduce the seed's failures by their real
mechanism: a kernel EACCES, a real 401, a missing binary, a restart policy.

Everything goes through a Transport, so the same code builds the testbed on this
machine or on a node reached by SSH, as root or rootless.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import secrets
import shlex
import struct
import tarfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from agent.config import DEFAULT_ERROR_PATTERNS, TargetConfig, TestbedConfig
from agent.names import CONTAINER_NAME_RE
from agent.errors import TestbedError, TransportError
from agent.transport import RunResult, Transport, http_get, make_transport

IMAGE_REPO = "localhost/podwarden-testbed"
TESTBED_LABEL = "podwarden.testbed"
ROLE_LABEL = "podwarden.role"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
MEMORY_LIMIT = "32m"
HEALTH_INTERVAL = "30s"
# The indexer's volume belongs to this uid (mode 700): only DAC_OVERRIDE lets the
# container's root in, as in the seed (volume owned by another uid, caps dropped).
VOLUME_OWNER = "1000:1000"
READY_TIMEOUT_S = 45.0
POLL_S = 0.2

# Port offsets from port_base (+0 and +1 are left free, like bitcoind's 8332/8333 pair).
PORT_OFFSETS = {
    "node_rpc": 2,
    "lightning_api": 3,
    "indexer": 4,
    "node_ui": 5,
    "lightning_ui": 6,
    "indexer_ui": 7,
    "backend": 8,
}

# Container name suffixes, in start order; the name is prefix + suffix.
NODE, LIGHTNING, INDEXER = "node", "lightning", "indexer"
NODE_UI, LIGHTNING_UI, INDEXER_UI = "node-ui", "lightning-ui", "indexer-ui"
CONTAINERS = (NODE, LIGHTNING, INDEXER, NODE_UI, LIGHTNING_UI, INDEXER_UI)
BACKEND = "backend"

FAULTS: dict[str, str] = {
    "indexer-lock-permission":
        "indexer volume owned by uid 1000 (mode 700) and DAC_OVERRIDE dropped: "
        "EACCES on utxo/LOCK, exit 1, crash loop",
    "health-needs-credentials":
        "lightning healthcheck calls the API without its macaroon: a real 401, unhealthy",
    "health-missing-binary":
        "indexer healthcheck execs curl, which the image lacks: executable not found, unhealthy",
    "dependent-dies":
        "lightning (restart on-failure) shuts down with exit 0 when the node goes: dead for good",
    "no-memory-limit": "node UI runs without --memory",
    "latest-tag": "lightning UI runs from the :latest tag of the testbed image",
    "restart-no": "indexer UI runs with --restart no",
    "backend-unsupervised": "the host backend runs without its supervisor: after a kill it stays down",
    "late-unhealthy":
        "node UI gets a healthcheck on /healthz, which its worker stops serving "
        "late_unhealthy_after seconds after start",
}

# busybox applets linked in the image's /bin.
APPLETS = (
    "awk", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "dirname", "echo",
    "env", "expr", "false", "grep", "head", "hostname", "httpd", "id", "kill", "ln", "ls",
    "mkdir", "mktemp", "mv", "nc", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed",
    "seq", "sh", "sha256sum", "sleep", "sort", "stat", "tail", "tee", "test", "timeout",
    "touch", "tr", "true", "uname", "usleep", "wc", "wget", "which", "xargs", "[",
)

# Image path -> file in agent/testbed_files.
IMAGE_FILES = {
    "usr/local/lib/tb-lib.sh": ("tb-lib.sh", 0o644),
    "usr/local/bin/tb-node": ("tb-node", 0o755),
    "usr/local/bin/tb-cli": ("tb-cli", 0o755),
    "usr/local/bin/tb-lightning": ("tb-lightning", 0o755),
    "usr/local/bin/tb-lncli": ("tb-lncli", 0o755),
    "usr/local/bin/tb-http-get": ("tb-http-get", 0o755),
    "usr/local/bin/tb-indexer": ("tb-indexer", 0o755),
    "usr/local/bin/tb-indexer-health": ("tb-indexer-health", 0o755),
    "usr/local/bin/tb-ui": ("tb-ui", 0o755),
    "srv/lightning/cgi-bin/getinfo": ("tb-lightning-getinfo", 0o755),
}
IMAGE_DIRS = {
    "bin": 0o755, "etc": 0o755, "usr": 0o755, "usr/local": 0o755, "usr/local/bin": 0o755,
    "usr/local/lib": 0o755, "srv": 0o755, "srv/lightning": 0o755, "srv/lightning/cgi-bin": 0o755,
    "srv/indexer": 0o755, "var": 0o755, "var/lib": 0o755, "var/www": 0o755, "data": 0o755,
    "root": 0o700, "run": 0o755, "tmp": 0o1777, "proc": 0o555, "sys": 0o555, "dev": 0o755,
}
IMAGE_TEXT = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}
IMAGE_CHANGES = (
    'CMD ["/bin/sh"]',
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LABEL org.opencontainers.image.title=podwarden-testbed",
)
_TAR_MTIME = 1704067200  # 2024-01-01: fixed, so the tar (and its tag) depends only on content


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------- names, ports, faults

@dataclass(frozen=True)
class Ports:
    """The testbed's ports on the target, all on 127.0.0.1."""

    node_rpc: int
    lightning_api: int
    indexer: int
    node_ui: int
    lightning_ui: int
    indexer_ui: int
    backend: int

    @classmethod
    def from_base(cls, port_base: int) -> "Ports":
        return cls(**{name: port_base + offset for name, offset in PORT_OFFSETS.items()})

    def all(self) -> dict[str, int]:
        return asdict(self)


def container_names(prefix: str) -> dict[str, str]:
    """Suffix -> container name, in start order."""
    return {suffix: prefix + suffix for suffix in CONTAINERS}


def check_faults(faults: Collection[str]) -> tuple[str, ...]:
    """The faults in FAULTS order; raises TestbedError naming the known ones for an unknown one."""
    if isinstance(faults, str):
        faults = [faults]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise TestbedError(
            f"unknown testbed fault{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"known faults are {', '.join(FAULTS)} (see `podwarden testbed faults`)"
        )
    return tuple(name for name in FAULTS if name in set(faults))


def _check_cfg(cfg: TestbedConfig) -> None:
    if not CONTAINER_NAME_RE.fullmatch(cfg.prefix + NODE):
        raise TestbedError(f"invalid testbed prefix {cfg.prefix!r}: use letters, digits, '_', '.' and '-', like tb-")
    if cfg.port_base + max(PORT_OFFSETS.values()) > 65535:
        raise TestbedError(f"testbed port_base {cfg.port_base} too high: ports up to port_base+8 must exist")


# ---------------------------------------------------------------- the image

def find_busybox() -> Path:
    """This machine's static busybox; raises TestbedError when absent or dynamic."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
        if not is_static_elf(head):
            raise TestbedError(
                f"{path} is not a statically linked busybox (the image has no libc): "
                "install the static build with `apt-get install busybox-static`"
            )
        return path
    raise TestbedError(
        f"no busybox found at {' or '.join(BUSYBOX_CANDIDATES)}: the testbed image is built from "
        "a static busybox; install it with `apt-get install busybox-static`"
    )


def is_static_elf(head: bytes) -> bool:
    """True if the ELF file starting with `head` has no program interpreter (PT_INTERP)."""
    if len(head) < 64 or head[:4] != b"\x7fELF":
        return False
    wide = head[4] == 2  # ELFCLASS64
    order = "<" if head[5] == 1 else ">"
    if wide:
        phoff, = struct.unpack_from(order + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x36)
    else:
        phoff, = struct.unpack_from(order + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x2A)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(head):
            return False
        p_type, = struct.unpack_from(order + "I", head, offset)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader
            return False
    return True


def _testbed_file(name: str) -> bytes:
    return resources.files("agent").joinpath("testbed_files", name).read_bytes()


@functools.lru_cache(maxsize=2)
def busybox_bytes(path: str | None = None) -> bytes:
    """The static busybox binary; raises TestbedError."""
    return Path(path).read_bytes() if path else find_busybox().read_bytes()


@functools.lru_cache(maxsize=2)
def image_tar(busybox: str | None = None) -> tuple[bytes, str]:
    """The image as a deterministic tar and its pinned name (`repo:<content hash>`).

    Raises TestbedError when no static busybox is found.
    """
    binary = busybox_bytes(busybox)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = _TAR_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.linkname = link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for name, mode in sorted(IMAGE_DIRS.items()):
            add(name, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, binary)
        for applet in sorted(APPLETS):
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        for name, text in sorted(IMAGE_TEXT.items()):
            add(name, tarfile.REGTYPE, 0o644, text.encode())
        for name, (source, mode) in sorted(IMAGE_FILES.items()):
            add(name, tarfile.REGTYPE, mode, _testbed_file(source))
    data = buffer.getvalue()
    digest = hashlib.sha256(data)
    for change in IMAGE_CHANGES:  # the image config is part of what the tag pins
        digest.update(change.encode())
    return data, f"{IMAGE_REPO}:{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------- containers

@dataclass(frozen=True)
class Ready:
    """How `up` knows a container serves: a port answers (HTTP status, or any with None)."""

    port: int
    path: str | None = "/"  # None: a plain TCP connect
    status: int | None = 200


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `podman run` needs for one testbed container."""

    name: str
    role: str
    suffix: str
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    restart: str = "unless-stopped"
    memory: str | None = MEMORY_LIMIT
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    healthcheck: str | None = None
    ready: Ready | None = None
    expect_running: bool = True  # False when a fault makes it crash

    def run_argv(self, podman: Sequence[str], prefix: str) -> list[str]:
        """`podman run -d ...` for this container."""
        argv = [*podman, "run", "-d", "--name", self.name, "--network", "host",
                "--stop-signal", "KILL", "--restart", self.restart,
                "--label", f"{TESTBED_LABEL}={prefix}", "--label", f"{ROLE_LABEL}={self.role}"]
        if self.memory:
            argv += ["--memory", self.memory]
        argv += [f"--cap-drop={cap}" for cap in self.cap_drop]
        argv += [f"--cap-add={cap}" for cap in self.cap_add]
        for volume in self.volumes:
            argv += ["--volume", volume]
        for key, value in self.env:
            argv += ["--env", f"{key}={value}"]
        if self.healthcheck:
            argv += ["--health-cmd", self.healthcheck, "--health-interval", HEALTH_INTERVAL,
                     "--health-retries", "1", "--health-timeout", "10s"]
        return [*argv, self.image, *self.command]


@dataclass(frozen=True)
class Layout:
    """Where the testbed keeps its files on the target: `<home>/<prefix>`."""

    root: str

    @property
    def bin(self) -> str:
        return f"{self.root}/bin"

    @property
    def busybox(self) -> str:
        return f"{self.root}/bin/busybox"

    @property
    def backend_script(self) -> str:
        return f"{self.root}/bin/tb-backend"

    @property
    def backend_dir(self) -> str:
        return f"{self.root}/backend"

    @property
    def backend_log(self) -> str:
        return f"{self.root}/backend/backend.log"

    @property
    def lightning_dir(self) -> str:
        return f"{self.root}/lightning"

    @property
    def macaroon(self) -> str:
        return f"{self.root}/lightning/admin.macaroon"

    @property
    def indexer_dir(self) -> str:
        return f"{self.root}/indexer"

    @property
    def state_file(self) -> str:
        return f"{self.root}/state.json"


def container_specs(cfg: TestbedConfig, layout: Layout, image: str,
                    faults: Collection[str] = ()) -> list[ContainerSpec]:
    """The six containers of the stack with `faults` applied, in start order."""
    faults = set(check_faults(faults))
    names = container_names(cfg.prefix)
    ports = Ports.from_base(cfg.port_base)
    node_env = (("TB_NODE_RPC_PORT", str(ports.node_rpc)),)
    lightning_env = node_env + (("TB_LIGHTNING_API_PORT", str(ports.lightning_api)),
                                ("TB_MACAROON_FILE", "/data/lnd/admin.macaroon"))
    lock_fault = "indexer-lock-permission" in faults

    def ui(suffix: str, port: int, title: str, **overrides: Any) -> ContainerSpec:
        fields: dict[str, Any] = dict(
            name=names[suffix], role="ui", suffix=suffix, image=image, command=("tb-ui",),
            env=(("TB_UI_PORT", str(port)), ("TB_UI_TITLE", title)), ready=Ready(port),
        )
        fields.update(overrides)
        return ContainerSpec(**fields)

    node_ui_overrides: dict[str, Any] = {}
    if "no-memory-limit" in faults:
        node_ui_overrides["memory"] = None
    if "late-unhealthy" in faults:
        node_ui_overrides["env"] = (("TB_UI_PORT", str(ports.node_ui)), ("TB_UI_TITLE", "tb node UI"),
                                    ("TB_UI_HEALTHZ_LIFETIME", f"{cfg.late_unhealthy_after:g}"))
        node_ui_overrides["healthcheck"] = f"timeout 3 wget -q -O - http://127.0.0.1:{ports.node_ui}/healthz"

    return [
        ContainerSpec(
            name=names[NODE], role="node", suffix=NODE, image=image, command=("tb-node",),
            env=node_env, healthcheck="tb-cli getblockchaininfo",
            ready=Ready(ports.node_rpc, "/getblockchaininfo"),
        ),
        ContainerSpec(
            name=names[LIGHTNING], role="lightning", suffix=LIGHTNING, image=image, command=("tb-lightning",),
            env=lightning_env + ((("TB_EXIT_ON_NODE_LOSS", "1"),) if "dependent-dies" in faults else ()),
            restart="on-failure" if "dependent-dies" in faults else "unless-stopped",
            volumes=(f"{layout.lightning_dir}:/data/lnd",),
            healthcheck=(f"tb-http-get http://127.0.0.1:{ports.lightning_api}/cgi-bin/getinfo"
                         if "health-needs-credentials" in faults else "tb-lncli getinfo"),
            ready=Ready(ports.lightning_api, "/", None),
        ),
        ContainerSpec(
            name=names[INDEXER], role="indexer", suffix=INDEXER, image=image, command=("tb-indexer",),
            env=node_env + (("TB_INDEXER_PORT", str(ports.indexer)), ("TB_INDEXER_DATA", "/data")),
            cap_drop=("ALL",), cap_add=() if lock_fault else ("DAC_OVERRIDE",),
            volumes=(f"{layout.indexer_dir}:/data",),
            healthcheck=(json.dumps(["curl", "-sf", f"http://127.0.0.1:{ports.indexer}/"])
                         if "health-missing-binary" in faults else "tb-indexer-health"),
            ready=None if lock_fault else Ready(ports.indexer, None),
            expect_running=not lock_fault,
        ),
        ui(NODE_UI, ports.node_ui, "tb node UI", **node_ui_overrides),
        ui(LIGHTNING_UI, ports.lightning_ui, "tb lightning UI",
           **({"image": f"{IMAGE_REPO}:latest"} if "latest-tag" in faults else {})),
        ui(INDEXER_UI, ports.indexer_ui, "tb indexer UI",
           **({"restart": "no"} if "restart-no" in faults else {})),
    ]


# ---------------------------------------------------------------- status

@dataclass(frozen=True)
class ContainerStatus:
    """One testbed container as podman sees it."""

    name: str
    role: str
    state: str  # podman's State.Status, or "missing"
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    image: str
    restart_count: int = 0
    exit_code: int | None = None


@dataclass(frozen=True)
class BackendStatus:
    """The host backend service."""

    up: bool
    pid: int | None
    supervisor_pid: int | None
    supervised: bool
    url: str


@dataclass(frozen=True)
class TestbedStatus:
    """What `testbed status` shows: containers, backend and the faults it was built with."""

    __test__ = False  # not a pytest test class

    target: str
    prefix: str
    root: str
    rootless: bool
    image: str | None
    faults: tuple[str, ...]
    ports: dict[str, int]
    containers: tuple[ContainerStatus, ...]
    backend: BackendStatus
    created_at: float | None = None

    @property
    def exists(self) -> bool:
        return any(c.state != "missing" for c in self.containers) or self.backend.up

    def container(self, suffix_or_name: str) -> ContainerStatus:
        """A container by suffix (`node`) or full name; raises KeyError."""
        for item in self.containers:
            if item.name in (suffix_or_name, self.prefix + suffix_or_name):
                return item
        raise KeyError(suffix_or_name)

    @property
    def backend_up(self) -> bool:
        return self.backend.up

    @property
    def backend_pid(self) -> int | None:
        return self.backend.pid

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys (containers and backend as nested objects)."""
        data = asdict(self)
        data["faults"] = list(self.faults)
        data["containers"] = [asdict(c) for c in self.containers]
        return data

    to_json = to_dict


# ---------------------------------------------------------------- the target

@dataclass
class _Session:
    """One testbed's view of one target: the transport, podman argv, rootless, layout."""

    transport: Transport
    cfg: TestbedConfig
    rootless: bool
    layout: Layout
    podman: tuple[str, ...] = field(default_factory=lambda: ("podman",))

    @classmethod
    async def open(cls, transport: Transport, cfg: TestbedConfig) -> "_Session":
        _check_cfg(cfg)
        podman = tuple(transport.target.podman) or ("podman",)
        missing = TestbedError(f"podman not found on {transport.name}: install podman 4.x or 5.x there "
                               "(or set the target's `podman` command)")
        try:
            info = await transport.run([*podman, "info", "--format", "{{.Host.Security.Rootless}}"], timeout=60)
        except TransportError as exc:
            if "cannot start" in exc.reason:
                raise missing from None
            raise TestbedError(f"testbed: {exc}") from None
        if info.exit_status == 127:
            raise missing
        if not info.ok:
            detail = info.stderr.strip().splitlines()[-1] if info.stderr.strip() else f"exit {info.exit_status}"
            raise TestbedError(f"podman does not work on {transport.name}: {detail}")
        rootless = info.stdout.strip().lower() == "true"
        home = cfg.home
        if not home.startswith("/"):
            result = await _run(transport, ["sh", "-c", 'printf %s "$HOME"'])
            base = result.stdout.strip()
            if not result.ok or not base.startswith("/"):
                raise TestbedError(f"cannot find $HOME on {transport.name}: set testbed.home to an absolute path")
            home = f"{base.rstrip('/')}/{home}"
        return cls(transport, cfg, rootless, Layout(f"{home.rstrip('/')}/{cfg.prefix}"), podman)

    @property
    def home(self) -> str:
        return self.layout.root.rsplit("/", 1)[0]

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None,
                  check: bool = False, what: str = "") -> RunResult:
        result = await _run(self.transport, argv, timeout=timeout, input=input)
        if check and not result.ok:
            detail = result.stderr.strip() or result.stdout.strip() or f"exit {result.exit_status}"
            raise TestbedError(f"{what or shlex.join(argv)} failed on {self.transport.name}: {detail}")
        return result

    async def podman_run(self, *args: str, timeout: float = 60.0, input: bytes | None = None,
                         check: bool = False, what: str = "") -> RunResult:
        return await self.run([*self.podman, *args], timeout=timeout, input=input, check=check, what=what)

    async def as_owner(self, argv: Sequence[str], *, check: bool = True, what: str = "") -> RunResult:
        """Run a file command where subuid-owned files live: in `podman unshare` when rootless."""
        if self.rootless:
            argv = [*self.podman, "unshare", *argv]
        return await self.run(argv, check=check, what=what)

    async def write_file(self, path: str, data: bytes, mode: str = "644") -> None:
        await self.run(["sh", "-c", 'cat >"$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"', "sh", path, mode],
                       input=data, check=True, what=f"writing {path}")

    async def read_file(self, path: str) -> str | None:
        result = await self.run(["cat", path])
        return result.stdout if result.ok else None


async def _run(transport: Transport, argv: Sequence[str], *, timeout: float = 60.0,
               input: bytes | None = None) -> RunResult:
    try:
        return await transport.run(argv, timeout=timeout, input=input)
    except TransportError as exc:
        raise TestbedError(f"testbed: {exc}") from None


# ---------------------------------------------------------------- up / down / status

async def up(transport: Transport, cfg: TestbedConfig, faults: Collection[str] = (),
             progress: Callable[[str], None] = _quiet) -> TestbedStatus:
    """(Re)build the testbed on the target with `faults` applied and return its status.

    Idempotent: the prefix's containers are removed and recreated, the backend
    restarted, its files rewritten. Raises TestbedError (unknown fault, no static
    busybox, podman failure, a port in use, a container that does not come up).
    """
    active = check_faults(faults)
    started = time.monotonic()
    tar, image = image_tar()
    session = await _Session.open(transport, cfg)
    mode = "rootless" if session.rootless else "as root"
    progress(f"target {transport.name}: podman {mode}, testbed files in {session.layout.root}")
    await _teardown(session, progress)
    await _check_ports_free(session)
    await _prepare_files(session, active, progress)
    await _ensure_image(session, tar, image, latest="latest-tag" in active, progress=progress)
    await _write_state(session, image, active)
    await _start_backend(session, progress)
    specs = container_specs(cfg, session.layout, image, active)
    first, rest = specs[0], specs[1:]
    # the node first: its dependents then connect at once instead of logging failures
    await _start_container(session, first, progress)
    await _wait_ready(session, [first])
    await asyncio.gather(*(_start_container(session, spec, progress) for spec in rest))
    await _wait_ready(session, rest)
    await _warn_unenforced_limits(session, specs, progress)
    await _run_healthchecks(session, specs, progress)
    progress(f"testbed {cfg.prefix} up in {time.monotonic() - started:.1f}s"
             + (f" with faults {', '.join(active)}" if active else ""))
    return await _status(session)


async def down(transport: Transport, cfg: TestbedConfig, progress: Callable[[str], None] = _quiet,
               *, remove_image: bool = False) -> None:
    """Remove the testbed: its containers, the backend, its files (and the image if asked).

    Raises TestbedError when podman fails.
    """
    session = await _Session.open(transport, cfg)
    state = await _read_state(session)
    await _teardown(session, progress, state)
    await session.as_owner(["rm", "-rf", session.layout.root], what=f"removing {session.layout.root}")
    await session.run(["rmdir", session.home])  # only when no other prefix lives there
    progress(f"removed {session.layout.root}")
    if remove_image and state.get("image"):
        # never --force: that would remove other testbeds' containers using the image
        removed = await session.podman_run("rmi", str(state["image"]))
        progress(f"removed image {state['image']}" if removed.ok
                 else f"kept image {state['image']}: {removed.stderr.strip() or 'in use'}")


async def plan_up(transport: Transport, cfg: TestbedConfig, faults: Collection[str] = ()) -> list[str]:
    """What `up` would do, step by step, changing nothing (--dry-run).

    Only reads the node (podman info, $HOME, the prefix's containers, the image).
    Raises TestbedError like `up` for an unknown fault or a podman that does not work.
    """
    active = check_faults(faults)
    _, image = image_tar()
    session = await _Session.open(transport, cfg)
    steps = [f"target {transport.name}: podman {'rootless' if session.rootless else 'as root'}, "
             f"testbed files in {session.layout.root}"]
    steps.extend(await _plan_teardown(session))
    mode = "unsupervised" if "backend-unsupervised" in active else "supervised"
    steps.append(f"rewrite {session.layout.root}: busybox, the backend script and config (MODE={mode}), "
                 f"a macaroon, the indexer volume (owner {VOLUME_OWNER}, mode 700)")
    if (await session.podman_run("image", "exists", image)).ok:
        steps.append(f"keep the image {image} (already present)")
    else:
        steps.append(f"{shlex.join([*session.podman, 'import', '-', image])}  (the busybox image, from this machine)")
    if "latest-tag" in active:
        steps.append(shlex.join([*session.podman, "tag", image, f"{IMAGE_REPO}:latest"]))
    steps.append(f"start the backend: {shlex.join([session.layout.backend_script, 'start'])}")
    steps.extend(shlex.join(spec.run_argv(session.podman, cfg.prefix)) for spec in
                 container_specs(cfg, session.layout, image, active))
    steps.append("wait until every container serves, then run each health check once")
    return steps


async def plan_down(transport: Transport, cfg: TestbedConfig) -> list[str]:
    """What `down` would do, changing nothing (--dry-run)."""
    session = await _Session.open(transport, cfg)
    steps = await _plan_teardown(session)
    steps.append(f"remove {session.layout.root} (and {session.home} if nothing else lives there)")
    return steps


async def _plan_teardown(session: _Session) -> list[str]:
    listed = await session.podman_run("ps", "-a", "--filter", f"label={TESTBED_LABEL}={session.cfg.prefix}",
                                      "--format", "{{.Names}}")
    names = sorted(set(container_names(session.cfg.prefix).values()) | set(listed.stdout.split()))
    present = sorted(set(listed.stdout.split()))
    return [f"{shlex.join([*session.podman, 'rm', '--force', '--ignore', '--time', '0', *names])}"
            f"  ({len(present)} present: {', '.join(present) or 'none'})",
            f"stop the backend: {shlex.join([session.layout.backend_script, 'stop'])}"]


async def status(transport: Transport, cfg: TestbedConfig) -> TestbedStatus:
    """The testbed's containers, backend and active faults; raises TestbedError if podman fails."""
    return await _status(await _Session.open(transport, cfg))


async def _status(session: _Session) -> TestbedStatus:
    cfg = session.cfg
    state = await _read_state(session)
    names = list(container_names(cfg.prefix).values())
    listed = await session.podman_run("ps", "-a", "--filter", f"label={TESTBED_LABEL}={cfg.prefix}",
                                      "--format", "{{.Names}}")
    extra = [n for n in listed.stdout.split() if n not in names]
    inspected: dict[str, dict[str, Any]] = {}
    result = await session.podman_run("container", "inspect", *names, *extra)
    try:
        for item in json.loads(result.stdout or "[]"):
            inspected[str(item.get("Name", "")).lstrip("/")] = item
    except json.JSONDecodeError:
        pass
    containers = []
    for name in names + extra:
        item = inspected.get(name)
        if item is None:
            containers.append(ContainerStatus(name, _role_of(cfg.prefix, name), "missing", "", ""))
            continue
        state_info = item.get("State") or {}
        health = (state_info.get("Health") or state_info.get("Healthcheck") or {}).get("Status", "")
        has_check = bool(((item.get("Config") or {}).get("Healthcheck") or {}).get("Test"))
        containers.append(ContainerStatus(
            name=name,
            role=((item.get("Config") or {}).get("Labels") or {}).get(ROLE_LABEL, _role_of(cfg.prefix, name)),
            state=str(state_info.get("Status", "unknown")),
            health=str(health) if has_check else "",
            image=str(item.get("ImageName", "")),
            restart_count=int(item.get("RestartCount", 0) or 0),
            exit_code=state_info.get("ExitCode"),
        ))
    return TestbedStatus(
        target=session.transport.name,
        prefix=cfg.prefix,
        root=session.layout.root,
        rootless=session.rootless,
        image=state.get("image"),
        faults=tuple(state.get("faults", ())),
        ports=Ports.from_base(cfg.port_base).all(),
        containers=tuple(containers),
        backend=await _backend_status(session),
        created_at=state.get("created_at"),
    )


def _role_of(prefix: str, name: str) -> str:
    suffix = name[len(prefix):] if name.startswith(prefix) else name
    return "ui" if suffix.endswith("-ui") else suffix


async def _backend(session: _Session, action: str, timeout: float = 60.0) -> RunResult:
    """`tb-backend ACTION` on the target; exit 127 when the testbed has no backend script."""
    return await session.run(["sh", "-c", '[ -x "$1" ] || exit 127; exec "$1" "$2"', "sh",
                              session.layout.backend_script, action], timeout=timeout)


async def _backend_status(session: _Session) -> BackendStatus:
    url = f"http://127.0.0.1:{Ports.from_base(session.cfg.port_base).backend}/health"
    result = await _backend(session, "status")
    fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)

    def pid(key: str) -> int | None:
        value = fields.get(key, "-")
        return int(value) if value.isdigit() else None

    return BackendStatus(up=result.ok and pid("pid") is not None, pid=pid("pid"),
                         supervisor_pid=pid("supervisor"), supervised=fields.get("mode", "supervised") == "supervised",
                         url=url)


# ---------------------------------------------------------------- steps of up and down

async def _teardown(session: _Session, progress: Callable[[str], None],
                    state: dict[str, Any] | None = None) -> None:
    """Remove the prefix's containers, stop its backend, drop a `:latest` tag it made."""
    cfg = session.cfg
    if state is None:
        state = await _read_state(session)
    listed = await session.podman_run("ps", "-a", "--filter", f"label={TESTBED_LABEL}={cfg.prefix}",
                                      "--format", "{{.Names}}")
    names = sorted(set(container_names(cfg.prefix).values()) | set(listed.stdout.split()))
    for attempt in range(3):
        result = await session.podman_run("rm", "--force", "--ignore", "--time", "0", *names, timeout=120)
        if result.ok:
            break
        # a crash-looping container being restarted by podman can refuse removal for a moment
        await asyncio.sleep(0.5 * (attempt + 1))
    if not result.ok:
        raise TestbedError(f"cannot remove testbed containers on {session.transport.name}: {result.stderr.strip()}")
    removed = [line for line in result.stdout.split() if line]
    if removed:
        progress(f"removed {len(removed)} container(s)")
    stopped = await _backend(session, "stop")
    if stopped.ok:
        progress("stopped the backend")
    if "latest-tag" in state.get("faults", ()):
        await _drop_latest_tag(session, progress)


async def _drop_latest_tag(session: _Session, progress: Callable[[str], None]) -> None:
    """Untag `:latest` unless a container (another prefix's testbed) still runs from it."""
    latest = f"{IMAGE_REPO}:latest"
    users = await session.podman_run("ps", "-a", "--format", "{{.Names}} {{.Image}}")
    if any(line.split(" ", 1)[-1] == latest for line in users.stdout.splitlines()):
        progress(f"kept the tag {latest}: another testbed's container runs from it")
        return
    # `untag IMAGE` alone would strip every name, the pinned tag too
    await session.podman_run("untag", latest, latest)


async def _check_ports_free(session: _Session) -> None:
    """Raise TestbedError if another program listens on one of the testbed's ports."""
    deadline = time.monotonic() + 3.0
    for name, port in Ports.from_base(session.cfg.port_base).all().items():
        while True:
            try:
                _, writer = await asyncio.wait_for(session.transport.open_tcp("127.0.0.1", port), 2.0)
            except (OSError, asyncio.TimeoutError, TimeoutError):
                break
            writer.close()  # type: ignore[attr-defined]
            if time.monotonic() > deadline:  # a process we just killed may take a moment to go
                raise TestbedError(
                    f"port {port} ({name}) on {session.transport.name} is in use by another program: "
                    f"choose another testbed.port_base (now {session.cfg.port_base}; ports +2..+8 are used)"
                )
            await asyncio.sleep(POLL_S)


async def _prepare_files(session: _Session, faults: Collection[str], progress: Callable[[str], None]) -> None:
    """Fresh testbed files: busybox and backend script, backend config, macaroon, indexer volume."""
    layout = session.layout
    await session.as_owner(["rm", "-rf", layout.root], what=f"removing {layout.root}")
    await session.run(["mkdir", "-p", layout.bin, f"{layout.backend_dir}/www", layout.lightning_dir,
                       f"{layout.indexer_dir}/utxo"], check=True, what="creating the testbed directories")
    await session.write_file(layout.busybox, busybox_bytes(), "755")
    await session.write_file(layout.backend_script, _testbed_file("tb-backend"), "755")
    mode = "unsupervised" if "backend-unsupervised" in faults else "supervised"
    port = Ports.from_base(session.cfg.port_base).backend
    await session.write_file(f"{layout.backend_dir}/backend.conf", f"PORT={port}\nMODE={mode}\n".encode())
    await session.write_file(layout.macaroon, (secrets.token_hex(32) + "\n").encode(), "600")
    # The indexer's volume belongs to another uid, mode 700: only DAC_OVERRIDE lets
    # the container's root write its LOCK (the seed's fix); rootless, the uid is a subuid.
    volume = layout.indexer_dir
    await session.run(["chmod", "700", volume, f"{volume}/utxo"], check=True, what=f"chmod {volume}")
    await session.as_owner(["chown", "-R", VOLUME_OWNER, volume], what=f"chown {VOLUME_OWNER} {volume}")
    progress(f"wrote testbed files (backend {mode}, indexer volume owned by {VOLUME_OWNER}, mode 700)")


async def _ensure_image(session: _Session, tar: bytes, image: str, *, latest: bool,
                        progress: Callable[[str], None]) -> None:
    exists = await session.podman_run("image", "exists", image)
    if exists.ok:
        progress(f"image {image} already present")
    else:
        changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
        await session.podman_run("import", *changes, "-", image, input=tar, timeout=300, check=True,
                                 what=f"podman import {image}")
        progress(f"imported image {image} ({len(tar) // 1024} KiB)")
    if latest:
        await session.podman_run("tag", image, f"{IMAGE_REPO}:latest", check=True, what="tagging :latest")
        progress(f"tagged {image} as {IMAGE_REPO}:latest")


async def _write_state(session: _Session, image: str, faults: Sequence[str]) -> None:
    state = {"prefix": session.cfg.prefix, "port_base": session.cfg.port_base, "image": image,
             "faults": list(faults), "rootless": session.rootless, "created_at": time.time()}
    await session.write_file(session.layout.state_file, (json.dumps(state, indent=2) + "\n").encode())


async def _read_state(session: _Session) -> dict[str, Any]:
    text = await session.read_file(session.layout.state_file)
    try:
        state = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return state if isinstance(state, dict) else {}


async def _start_backend(session: _Session, progress: Callable[[str], None]) -> None:
    result = await _backend(session, "start", timeout=30)
    if not result.ok:
        raise TestbedError(f"cannot start the testbed backend on {session.transport.name}: "
                           f"{(result.stderr or result.stdout).strip()} (log: {session.layout.backend_log})")
    backend = await _backend_status(session)
    how = "under its supervisor" if backend.supervised else "without a supervisor"
    progress(f"backend up on {backend.url} (pid {backend.pid}, {how})")


async def _start_container(session: _Session, spec: ContainerSpec, progress: Callable[[str], None]) -> None:
    result = await session.run(spec.run_argv(session.podman, session.cfg.prefix), timeout=120)
    if not result.ok:
        detail = [line for line in result.stderr.strip().splitlines() if "level=warn" not in line.lower()]
        raise TestbedError(f"cannot start {spec.name} on {session.transport.name}: "
                           f"{detail[-1] if detail else result.stderr.strip()}")
    progress(f"started {spec.name}")


async def _is_ready(session: _Session, ready: Ready) -> bool:
    try:
        if ready.path is None:
            _, writer = await asyncio.wait_for(session.transport.open_tcp("127.0.0.1", ready.port), 3.0)
            writer.close()  # type: ignore[attr-defined]
            return True
        response = await http_get(session.transport, f"http://127.0.0.1:{ready.port}{ready.path}", timeout=3.0)
    except (OSError, ValueError, asyncio.TimeoutError, TimeoutError):
        return False
    return ready.status is None or response.status == ready.status


async def _wait_ready(session: _Session, specs: Sequence[ContainerSpec]) -> None:
    """Wait until each container expected to run is running and its port answers."""
    waiting = {spec.name: spec for spec in specs if spec.expect_running}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        result = await session.podman_run("container", "inspect", "--format", "{{.Name}} {{.State.Status}}",
                                          *waiting)
        states = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
        for name, spec in list(waiting.items()):
            if states.get(name) == "running" and (spec.ready is None or await _is_ready(session, spec.ready)):
                del waiting[name]
        if not waiting:
            return
        if time.monotonic() > deadline:
            name = sorted(waiting)[0]
            logs = await session.podman_run("logs", "--tail", "15", name)
            tail = (logs.stdout + logs.stderr).strip() or "(no log lines)"
            raise TestbedError(
                f"{name} on {session.transport.name} did not come up within {READY_TIMEOUT_S:g}s "
                f"(state {states.get(name, 'missing')}); its last log lines:\n{tail}"
            )
        await asyncio.sleep(POLL_S)


async def _warn_unenforced_limits(session: _Session, specs: Sequence[ContainerSpec],
                                  progress: Callable[[str], None]) -> None:
    """Say so when podman dropped --memory (rootless on cgroup v1 ignores resource limits)."""
    limited = [spec.name for spec in specs if spec.memory]
    result = await session.podman_run("container", "inspect", "--format", "{{.Name}} {{.HostConfig.Memory}}",
                                      *limited)
    ignored = [line.split()[0] for line in result.stdout.splitlines() if line.endswith(" 0")]
    if ignored:
        progress(f"warning: podman ignored --memory {MEMORY_LIMIT} for {', '.join(ignored)} "
                 "(rootless podman on cgroup v1 applies no resource limits): "
                 "every container shows HostConfig.Memory 0 here, so no-memory-limit is not observable")


async def _run_healthchecks(session: _Session, specs: Sequence[ContainerSpec],
                            progress: Callable[[str], None]) -> None:
    """Run each healthcheck once: without systemd podman runs none, and health would stay `starting`."""
    checked = [spec for spec in specs if spec.healthcheck and spec.expect_running]
    results = await asyncio.gather(*(session.podman_run("healthcheck", "run", spec.name, timeout=60)
                                     for spec in checked))
    for spec, result in zip(checked, results):
        verdict = {0: "healthy", 1: "unhealthy"}.get(result.exit_status, f"error (exit {result.exit_status})")
        progress(f"{spec.name}: healthcheck {verdict}")


# ---------------------------------------------------------------- example config

def _toml(value: Any) -> str:
    """A TOML literal for a str, bool, number, list or (inline) dict."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML literal for {value!r}")


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def backend_command(action: str, prefix: str = "tb-", home: str = ".podwarden-testbed") -> list[str]:
    """An argv that runs `tb-backend ACTION` on the target (locally or over SSH)."""
    script = f"{home.rstrip('/')}/{prefix}/bin/tb-backend"
    path = shlex.quote(script) if script.startswith("/") else '"$HOME"/' + shlex.quote(script)
    return ["sh", "-c", f"{path} {shlex.quote(action)}"]


LOG_ERRORS = DEFAULT_ERROR_PATTERNS[0]


def example_config(prefix: str = "tb-", port_base: int = 18330, target_name: str = "local",
                   extra_targets: str = "", home: str = ".podwarden-testbed") -> str:
    """The TOML text of a podwarden config describing the testbed stack.

    `target_name` becomes the default target; `extra_targets` is TOML appended
    after `[targets.local]` (define `[targets.<target_name>]` there if it is not
    `local`). Raises TestbedError for an invalid prefix or port_base.
    """
    cfg = TestbedConfig(prefix=prefix, port_base=port_base, home=home)
    _check_cfg(cfg)
    names = container_names(prefix)
    ports = Ports.from_base(port_base)
    out: list[str] = []

    def line(text: str = "") -> None:
        out.append(text)

    def kv(key: str, value: Any) -> None:
        out.append(f"{key} = {_toml(value)}")

    def probe(owner: str, **fields: Any) -> None:
        line()
        line(f"[[{owner}.probes]]")
        for key, value in fields.items():
            kv(key, value)

    line("# podwarden example config: the testbed stack that `podwarden testbed up` builds.")
    line("# Generated by agent.testbed.example_config(); tests keep this file equal to it.")
    line("# Regenerate: python -c 'from agent.testbed import example_config; print(example_config(), end=\"\")' > config.toml")
    line("# Ports (all on 127.0.0.1): " + ", ".join(f"{k} {v}" for k, v in ports.all().items()))
    line()
    line("[podwarden]")
    kv("default_target", target_name)
    kv("db", "podwarden.db")
    kv("reports", "reports")
    line()
    line("[targets.local]")
    kv("transport", "local")
    if extra_targets.strip():
        line()
        line(extra_targets.strip())
    line()
    line("[defaults]")
    line("# policies every container must have unless it sets its own")
    kv("restart_policies", ["always", "unless-stopped"])
    line()
    line("# ---------------------------------------------------------------- containers")
    line()
    node = f"containers.{names[NODE]}"
    line(f"[{node}]")
    kv("role", "node")
    kv("expected_state", "healthy")
    probe(node, name="rpc", type="exec", command=["tb-cli", "getblockchaininfo"], expect_json_keys=["blocks"])
    probe(node, name="rpc-port", type="http", url=f"http://127.0.0.1:{ports.node_rpc}/getblockchaininfo",
          expect_json={"chain": "regtest"})
    probe(node, name="healthcheck", type="podman-healthcheck")
    probe(node, name="logs", type="logs", lines=30)
    for suffix in (LIGHTNING, INDEXER):
        owner = f"containers.{names[suffix]}"
        line()
        line(f"[{owner}]")
        kv("role", suffix)
        kv("depends_on", [names[NODE]])
        kv("expected_state", "healthy")
        if suffix == LIGHTNING:
            line("# the LND-like daemon logs refusals as [ERR] lines")
            kv("log_errors", [LOG_ERRORS, r"\[ERR\]"])
        line("# what its log says once it has its node back (experiment cascade)")
        kv("reconnect", "connected to node backend")
        probe(owner, name="healthcheck", type="podman-healthcheck")
        if suffix == INDEXER:
            probe(owner, name="port", type="tcp", port=ports.indexer)
        probe(owner, name="logs", type="logs", lines=30)
    for suffix, upstream, port in ((NODE_UI, NODE, ports.node_ui), (LIGHTNING_UI, LIGHTNING, ports.lightning_ui),
                                   (INDEXER_UI, INDEXER, ports.indexer_ui)):
        owner = f"containers.{names[suffix]}"
        line()
        line(f"[{owner}]")
        kv("role", "ui")
        kv("depends_on", [names[upstream]])
        kv("expected_state", "running")
        probe(owner, name="http", type="http", url=f"http://127.0.0.1:{port}/", expect_status=200)
    line()
    line("# ---------------------------------------------------------------- host services")
    line()
    service = f"services.{prefix}{BACKEND}"
    line("# the seed's systemd-supervised backend; commands run on the target")
    line(f"[{service}]")
    kv("health_url", f"http://127.0.0.1:{ports.backend}/health")
    kv("status_command", backend_command("status", prefix, home))
    kv("kill_command", backend_command("kill", prefix, home))
    kv("start_command", backend_command("start", prefix, home))
    kv("restart_deadline", "30s")
    probe(service, name="health", type="http", url=f"http://127.0.0.1:{ports.backend}/health",
          expect_json={"status": "ok", "crash_recovery_complete": True})
    probe(service, name="active", type="service", command=backend_command("status", prefix, home))
    line()
    line("# ---------------------------------------------------------------- behaviour")
    line()
    line("[machine]")
    kv("crashloop_deaths", 3)
    kv("crashloop_window", "5m")
    kv("stable_period", "10m")
    line()
    line("[watch]")
    line("# without systemd podman runs no healthcheck timers: podwarden runs them (auto)")
    kv("run_healthchecks", "auto")
    kv("healthcheck_interval", "30s")
    kv("reconcile_interval", "30s")
    line()
    line("[soak]")
    kv("duration", "5m")
    line()
    line("[experiments]")
    line("# the seed's C3 deadlines: back within 30 s; the node down 60 s, then all back within 120 s")
    kv("restart_deadline", "30s")
    kv("cascade_hold", "60s")
    kv("cascade_recovery", "120s")
    line()
    line("# A remediation hook, off in this example so experiments see the restart policies alone:")
    line("# [[hooks]]")
    line('# name = "restart-core"')
    line('# when = ["exited", "stopped"]')
    line(f"# containers = {_toml([names[NODE], names[LIGHTNING], names[INDEXER]])}")
    line('# action = "start"')
    line()
    line("# ---------------------------------------------------------------- diagnosis rules")
    line()
    line("# A rule of this config's own (built-in rules cover the seed's root causes): what no")
    line("# generic check can see, a host service whose status says it runs without a supervisor.")
    line("[[rules]]")
    kv("name", "backend-unsupervised")
    kv("severity", "warning")
    kv("containers", [f"{prefix}{BACKEND}"])
    line('match = { probe = "active", probe_output = "supervisor=-", probe_failed = false }')
    kv("message", "{container} runs without a supervisor: {probe_detail}")
    kv("cause", "nothing restarts the backend when it dies (the seed's backend is a systemd unit)")
    kv("fix", "run it under systemd (Restart=always) or another supervisor")
    line()
    line("[testbed]")
    kv("prefix", prefix)
    kv("port_base", port_base)
    kv("home", home)
    kv("late_unhealthy_after", "90s")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the verb


async def verb_up(target: TargetConfig, cfg: TestbedConfig, faults: Collection[str] = (), *, dry_run: bool = False,
                  progress: Callable[[str], None] = _quiet) -> TestbedStatus | list[str]:
    """`podwarden testbed up`: the status it ends in, or with `dry_run` the steps it would take.

    Raises TargetUnreachable, TestbedError.
    """
    async with make_transport(target) as transport:
        if dry_run:
            return await plan_up(transport, cfg, faults)
        return await up(transport, cfg, faults, progress=progress)


async def verb_down(target: TargetConfig, cfg: TestbedConfig, *, dry_run: bool = False,
                    progress: Callable[[str], None] = _quiet) -> list[str]:
    """`podwarden testbed down`: the steps it would take with `dry_run`, else [] once done."""
    async with make_transport(target) as transport:
        if dry_run:
            return await plan_down(transport, cfg)
        await down(transport, cfg, progress=progress)
        return []


async def verb_status(target: TargetConfig, cfg: TestbedConfig) -> TestbedStatus:
    """`podwarden testbed status`."""
    async with make_transport(target) as transport:
        return await status(transport, cfg)

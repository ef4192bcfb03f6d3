"""`podwarden init`: the TOML emitter (hostile names, labels, commands; round trips through
load_config), port and role discovery, the atomic no-clobber write, the verb against a fake
podman with real ports (http, https, raw tcp, closed, a host-network listener found in
/proc), and end to end: init over the real sshd, then `check` of what it wrote passes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import tomllib
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import init as init_mod
from agent import podman
from agent.config import TargetConfig, config_from_dict, load_config
from agent.errors import PodwardenError, UsageError
from agent.init import (
    InitContainer,
    InitOutcome,
    PortAnswer,
    TomlDocument,
    _Found,
    comment_text,
    guess_depends_on,
    guess_role,
    listening_ports,
    parse_listeners,
    published_ports,
    render_config,
    toml_key,
    toml_path,
    toml_string,
    toml_value,
)
from store.redact import Redactor

NAMES = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,24}", fullmatch=True)
# every code point, lone surrogates included (podman's JSON can carry them as \udXXX escapes)
HOSTILE = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40)
NASTY = ["", "a\nb", '"]\n[podwarden]\ndefault_target = "x', "\\u0041", "\x00\x07\x1b[31m\x7f", "#", "'''", '"""',
         "\ud800", "tab\there", "\r\n", "a = 1", "[containers.x]", "\u2028\u0085\ufeff"]


def _expected(text: str) -> str:
    """What a TOML string written by toml_string reads back as (a lone surrogate becomes U+FFFD)."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


# ---------------------------------------------------------------- the emitter

@given(HOSTILE)
@settings(max_examples=400)
def test_a_string_reads_back_exactly(text):
    assert tomllib.loads(f"k = {toml_string(text)}\n")["k"] == _expected(text)


@pytest.mark.parametrize("text", NASTY)
def test_nasty_strings_read_back(text):
    assert tomllib.loads(f"k = {toml_string(text)}\n")["k"] == _expected(text)


@given(HOSTILE)
def test_a_key_reads_back_exactly(key):
    assert list(tomllib.loads(f"{toml_key(key)} = 1\n")) == [_expected(key)]


@given(st.lists(NAMES, min_size=1, max_size=4))
def test_a_table_path_of_container_names_reads_back(parts):
    data = tomllib.loads(f"[{toml_path(*parts)}]\nx = 1\n")
    for part in parts:
        data = data[part]
    assert data == {"x": 1}


def test_dotted_names_are_quoted_not_nested():
    assert toml_path("containers", "my.app") == 'containers."my.app"'
    assert toml_key("tb-node_1") == "tb-node_1"
    assert toml_key("") == '""'


VALUES = st.recursive(
    st.none().map(lambda _: True) | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | HOSTILE,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE, children, max_size=4),
    max_leaves=12,
)


def _expected_value(value):
    if isinstance(value, str):
        return _expected(value)
    if isinstance(value, list):
        return [_expected_value(v) for v in value]
    if isinstance(value, dict):
        return {_expected(k): _expected_value(v) for k, v in value.items()}
    return value


@given(VALUES)
@settings(max_examples=300)
def test_any_value_reads_back(value):
    parsed = tomllib.loads(f"k = {toml_value(value)}\n")["k"]
    expected = _expected_value(value)
    if isinstance(value, dict) and len({_expected(k) for k in value}) < len(value):
        return  # two keys that differ only in a surrogate read back as one: TOML refuses a repeat
    assert parsed == expected


@given(HOSTILE, HOSTILE)
@settings(max_examples=300)
def test_comments_never_break_out(comment, note):
    doc = TomlDocument()
    doc.comment(comment)
    doc.table("t", note=note)
    doc.kv("k", "v", note=note)
    doc.hint("h", comment, note=note)
    doc.comment(note)
    assert tomllib.loads(doc.text()) == {"t": {"k": "v"}}
    assert "\n" not in comment_text(comment)


def test_non_finite_floats_and_bad_types():
    assert tomllib.loads(f"a = {toml_value(float('inf'))}\nb = {toml_value(float('-inf'))}")["b"] == float("-inf")
    with pytest.raises(TypeError):
        toml_value(object())


# ---------------------------------------------------------------- a rendered config round trips

def raw_inspect(name: str, *, status: str = "running", pid: int = 0, exit_code: int = 0,
                image: str = "localhost/app:1.0", health: str = "", test: list[str] | None = None,
                restart: str = "unless-stopped", retries: int = 0, memory: int = 32 << 20,
                network: str = "bridge", ports: dict | None = None, labels: dict | None = None,
                health_output: str = "", read_only: bool = False) -> dict:
    """A `podman container inspect` entry with what init reads (podman 4.3's shape)."""
    running = status == "running"
    return {
        "Id": (name.encode().hex() + "0" * 64)[:64], "Name": name, "Image": "f" * 64, "ImageName": image,
        "Created": "2026-11-30T10:00:00.000000000Z", "RestartCount": 0,
        "State": {"Status": status, "Running": running, "Pid": pid if running else 0, "ExitCode": exit_code,
                  "OOMKilled": False, "StartedAt": "2026-11-30T10:00:01.000000000Z",
                  "FinishedAt": "0001-01-01T00:00:00Z" if running else "2026-11-30T10:05:00.000000000Z",
                  "Health": {"Status": health, "FailingStreak": 0 if health != "unhealthy" else 1,
                             "Log": [{"Start": "2026-11-30T10:00:02Z", "End": "2026-11-30T10:00:03Z",
                                      "ExitCode": 0 if health != "unhealthy" else 1,
                                      "Output": health_output}] if test else None}},
        "Config": {"Image": image, "Labels": labels or {}, "User": "",
                   "Healthcheck": {"Test": test, "Interval": 30_000_000_000, "Timeout": 10_000_000_000,
                                   "Retries": 1} if test else None},
        "HostConfig": {"RestartPolicy": {"Name": restart, "MaximumRetryCount": retries}, "Memory": memory,
                       "NetworkMode": network, "PortBindings": ports or {}, "ReadonlyRootfs": read_only,
                       "CapAdd": [], "CapDrop": [], "LogConfig": {"Type": "k8s-file", "Path": "/x"}},
        "NetworkSettings": {"Ports": (ports or {}) if running else {}},
        "Mounts": [],
    }


def facts_of(raw: dict) -> podman.InspectFacts:
    parsed = podman.parse_inspect(json.dumps([raw]), "node", 1)
    assert not isinstance(parsed, podman.ParseError), parsed
    return parsed[0]


def render(found: list[_Found], target: TargetConfig | None = None) -> tuple[InitOutcome, str]:
    target = target or TargetConfig(name="local", transport="local")
    containers = [InitContainer(name=f.facts.name, state=f.facts.status, health=f.facts.health,
                                expected_state=init_mod._expected_state(f), image=f.facts.image,
                                restart_policy=f.facts.restart_policy) for f in found]
    outcome = InitOutcome("out.toml", init_mod.target_section_name(target), "spec", "4.3.1", False, containers)
    text = render_config(outcome, target, list(zip(containers, found)), Redactor(config_from_dict({}).redaction.patterns))
    return outcome, text


CONTAINER = st.fixed_dictionaries({
    "name": NAMES,
    "status": st.sampled_from(["running", "exited", "created", "paused"]),
    "image": HOSTILE,
    "test": st.none() | st.lists(HOSTILE, min_size=1, max_size=3).map(lambda t: ["CMD-SHELL", *t]),
    "restart": st.sampled_from(["", "no", "always", "unless-stopped", "on-failure"]) | HOSTILE,
    "retries": st.integers(0, 9),
    "memory": st.sampled_from([0, 16 << 20]),
    "labels": st.dictionaries(HOSTILE, HOSTILE, max_size=3),
    "read_only": st.booleans(),
    "health_ok": st.none() | st.booleans(),
    "health_detail": HOSTILE,
    "ports": st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "", "x y"]),
                                st.sampled_from(["http", "https", "tcp", "closed", None]),
                                st.integers(100, 599), HOSTILE), max_size=3),
})


@given(st.lists(CONTAINER, max_size=5, unique_by=lambda c: c["name"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_rendered_config_of_hostile_containers_loads(tmp_path_factory, containers):
    found = []
    for spec in containers:
        ports = {f"{p}/tcp": [{"HostIp": ip, "HostPort": str(p)}] for p, ip, *_ in spec["ports"]}
        raw = raw_inspect(spec["name"], status=spec["status"], image=spec["image"], test=spec["test"],
                          restart=spec["restart"], retries=spec["retries"], memory=spec["memory"],
                          labels=spec["labels"], ports=ports, read_only=spec["read_only"],
                          health="healthy" if spec["test"] else "")
        facts = facts_of(raw)
        item = _Found(facts, spec["health_ok"] if spec["test"] else None, spec["health_detail"])
        answers = {p: (kind, code, detail) for p, _, kind, code, detail in spec["ports"]}
        for port in published_ports(facts):
            kind, code, detail = answers[port.port]
            answer = None if kind is None else PortAnswer(kind, code if kind in ("http", "https") else None,
                                                          detail, "ab" * 32 if kind == "https" else None, detail)
            item.ports.append((port, answer))
        found.append(item)
    outcome, text = render(found)
    path = tmp_path_factory.mktemp("render") / "out.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)  # raises ConfigError if the emitter got anything wrong
    assert list(config.containers) == [f.facts.name for f in found]
    for item in found:
        own = config.containers[item.facts.name]
        assert own.expected_state == init_mod._expected_state(item)
        assert own.role == "" and own.depends_on == []  # guesses stay comments
        written = [p for c in outcome.containers if c.name == item.facts.name for p in c.probes if p.written]
        assert [p.name for p in own.probes] == [p.name for p in written]
    assert config.podwarden.default_target == "local" and not config.targets


def test_an_ssh_target_is_written_as_a_named_section(tmp_path):
    target = TargetConfig(name="ssh://bitcoin@10.0.0.5:2222", transport="ssh", host="10.0.0.5", port=2222,
                          user="bitcoin", identity="~/.ssh/id_ed25519", known_hosts="hosts")
    _, text = render([], target)
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    assert config.podwarden.default_target == "10-0-0-5"
    written = config.targets["10-0-0-5"]
    assert (written.host, written.port, written.user) == ("10.0.0.5", 2222, "bitcoin")
    assert written.identity == "~/.ssh/id_ed25519"  # ~ kept
    assert written.known_hosts == os.path.abspath("hosts")  # relative made absolute: works from anywhere
    assert "podman listed no container" in text


def test_a_configured_target_keeps_its_name_and_podman(tmp_path):
    target = TargetConfig(name="my node", transport="local", podman=["sudo", "-u", "bitcoin", "podman"])
    _, text = render([], target)
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    assert config.podwarden.default_target == "my node"
    assert config.targets["my node"].podman == ["sudo", "-u", "bitcoin", "podman"]


def test_policies_failing_now_are_accepted_loudly_and_secrets_are_redacted(tmp_path):
    raw = raw_inspect("old", status="exited", restart="no", memory=0, image="docker.io/app",
                      test=["CMD-SHELL", "bitcoin-cli -rpcpassword=hunter2 getblockchaininfo"],
                      ports={"80/tcp": [{"HostIp": "", "HostPort": "8081"}]}, read_only=True)
    found = _Found(facts_of(raw))
    found.ports = [(port, None) for port in published_ports(found.facts)]
    outcome, text = render([found])
    (tmp_path / "c.toml").write_text(text)
    own = load_config(tmp_path / "c.toml").containers["old"]
    assert own.expected_state == "stopped"
    assert own.restart_policies == ["no"]
    assert own.policies == {"memory-limit": False, "image-pinned": False, "read-only-rootfs": False}
    assert [(p.type, p.name) for p in own.probes] == [("podman-healthcheck", "healthcheck"), ("tcp", "tcp-8081")]
    assert "hunter2" not in text and "accepted as found" in text
    assert [rule.split(":")[0] for _, rule in outcome.accepted] == [
        "restart-policy", "memory-limit", "image-pinned", "read-only-rootfs"]


def test_an_unknown_restart_policy_switches_the_policy_off(tmp_path):
    found = _Found(facts_of(raw_inspect("odd", restart="sometimes")))
    _, text = render([found])
    (tmp_path / "c.toml").write_text(text)
    own = load_config(tmp_path / "c.toml").containers["odd"]
    assert own.restart_policies is None and own.policies == {"restart-policy": False}


def test_a_down_container_under_a_restart_policy_is_flagged():
    found = _Found(facts_of(raw_inspect("crashed", status="exited", exit_code=1, restart="always")))
    outcome, text = render([found])
    assert outcome.containers[0].expected_state == "stopped"
    assert any("although its restart policy" in note for note in outcome.containers[0].notes)


# ---------------------------------------------------------------- ports, roles, dependencies

def test_published_ports_once_each_tcp_only():
    facts = facts_of(raw_inspect("web", ports={
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}, {"HostIp": "::", "HostPort": "8081"}],
        "53/udp": [{"HostIp": "", "HostPort": "5353"}],
        "443/tcp": [{"HostIp": "", "HostPort": "8443"}],
        "9/tcp": [{"HostIp": "::1", "HostPort": "9009"}]}))
    assert [(p.host, p.port) for p in published_ports(facts)] == [
        ("127.0.0.1", 8081), ("127.0.0.1", 8443), ("::1", 9009)]


PROC_NET_TCP = """\
inode 111
inode 222
inode 333
tables
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4745 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 0100007F:4745 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
   3: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0 100 0 0 10 0
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0
garbage line
"""


def test_listening_sockets_of_the_container_processes_only():
    listeners = parse_listeners(PROC_NET_TCP)
    # 22 (inode 999) belongs to another process; the established socket is no listener
    assert listeners == [("127.0.0.1", 18245), ("0.0.0.0", 8080), ("::", 8080), ("::1", 9090)]
    assert [(p.host, p.port) for p in listening_ports(listeners)] == [
        ("127.0.0.1", 8080), ("::1", 9090), ("127.0.0.1", 18245)]


@pytest.mark.parametrize("name, labels, image, role", [
    ("tb-node-ui", {}, "localhost/nginx:1.25", "ui"),
    ("tb-node", {}, "localhost/podwarden-testbed:abc", "node"),
    ("lnd", {}, "docker.io/lightninglabs/lnd:v0.17.0-beta", "lightning"),
    ("x1", {}, "docker.io/lncm/bitcoind:v26", "node"),
    ("idx", {}, "ghcr.io/romanz/electrs:v0.10", "indexer"),
    ("whatever", {"podwarden.role": "cache"}, "x:1", "cache"),
    ("blob", {}, "scratch:1", ""),
])
def test_role_guesses(name, labels, image, role):
    assert guess_role(facts_of(raw_inspect(name, labels=labels, image=image)))[0] == role


def test_dependency_guesses():
    roles = {"tb-node": "node", "tb-node-ui": "ui", "tb-lightning": "lightning", "tb-lightning-ui": "ui"}
    assert guess_depends_on("tb-node-ui", "ui", roles)[0] == ["tb-node"]
    assert guess_depends_on("tb-lightning-ui", "ui", roles)[0] == ["tb-lightning"]
    assert guess_depends_on("tb-lightning", "lightning", roles)[0] == ["tb-node"]
    assert guess_depends_on("tb-node", "node", roles)[0] == []
    assert guess_depends_on("lnd", "lightning", {"lnd": "lightning", "a": "node", "b": "node"})[0] == []


# ---------------------------------------------------------------- writing

def test_the_file_is_0644_whatever_the_umask_and_never_clobbered(tmp_path):
    path = tmp_path / "c.toml"
    old = os.umask(0o077)
    try:
        assert init_mod._write_atomically(path, '[podwarden]\ndefault_target = "local"\n', force=False) is False
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    before = path.read_bytes()
    with pytest.raises(UsageError, match="appeared while init ran"):
        init_mod._write_atomically(path, "[podwarden]\n", force=False)
    assert path.read_bytes() == before
    assert init_mod._write_atomically(path, "[podwarden]\n", force=True) is True
    assert path.read_text() == "[podwarden]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # no temp file left


def test_a_config_that_does_not_load_is_never_put_in_place(tmp_path):
    path = tmp_path / "c.toml"
    with pytest.raises(PodwardenError, match="does not load"):
        init_mod._write_atomically(path, "[podwarden]\nno_such_key = 1\n", force=True)
    assert list(tmp_path.iterdir()) == []


def test_output_checks_come_before_the_node_is_asked(tmp_path):
    (tmp_path / "c.toml").write_text("mine")
    never = TargetConfig(name="x", transport="ssh", host="192.0.2.1", connect_timeout=0.1)
    config = config_from_dict({})
    with pytest.raises(UsageError, match="exists.*--force"):
        asyncio.run(init_mod.init(config, never, "x", str(tmp_path / "c.toml")))
    with pytest.raises(UsageError, match="is a directory"):
        asyncio.run(init_mod.init(config, never, "x", str(tmp_path)))
    with pytest.raises(UsageError, match="does not exist"):
        asyncio.run(init_mod.init(config, never, "x", str(tmp_path / "no" / "c.toml")))
    assert (tmp_path / "c.toml").read_text() == "mine"


# ---------------------------------------------------------------- the verb against a fake podman

FAKE_PODMAN = r'''
import json, os, sys
state = json.load(open(sys.argv[1]))
args = sys.argv[2:]
def out(value):
    sys.stdout.write(value if isinstance(value, str) else json.dumps(value))
if args[:1] == ["info"]:
    out({"host": {"security": {"rootless": state["rootless"]}}, "version": {"Version": "4.3.1"}})
elif args[:2] == ["ps", "-a"]:
    out([{"Names": [n], "Id": i["Id"], "Image": i["ImageName"], "State": i["State"]["Status"]}
         for n, i in state["inspect"].items()])
elif args[:2] == ["container", "inspect"]:
    found = [state["inspect"][n] for n in args[2:] if n in state["inspect"]]
    out(found)
    sys.exit(0 if len(found) == len(args) - 2 else 125)
elif args[:1] == ["top"] and args[2:] == ["hpid"] and args[1] in state["top"]:
    out("HPID\n" + "".join(f"{pid}\n" for pid in state["top"][args[1]]))
elif args[:2] == ["healthcheck", "run"]:
    code = state["health"].get(args[2], 0)
    out("" if code == 0 else "unhealthy\n")
    sys.exit(code)
elif args[:1] == ["unshare"]:
    os.execvp(args[1], args[1:])
else:
    sys.stderr.write("fake podman: no " + " ".join(args) + "\n")
    sys.exit(125)
'''

BANNER_SERVER = ("import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
                 "print(s.getsockname()[1], flush=True)\nwhile True:\n    c, _ = s.accept()\n"
                 "    c.sendall(b'SSH-2.0-fake\\r\\n')\n    c.close()\n")


@asynccontextmanager
async def http_server(status: str, tls: ssl.SSLContext | None = None):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        yield server.sockets[0].getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tls_context(tmp_path):
    cert, key = tmp_path / "tls.cert", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=lnd", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    fingerprint = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                                 check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, fingerprint.replace(":", "").lower()


@pytest.mark.parametrize("rootless", [False, True])
def test_init_against_a_fake_podman_with_real_ports(tmp_path, tls_context, rootless):
    context, fingerprint = tls_context
    banner = subprocess.Popen([sys.executable, "-c", BANNER_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        banner_port = int(banner.stdout.readline())
        closed_port = _free_port()

        async def go():
            async with http_server("200 OK") as web_port, http_server("404 Not Found", context) as tls_port:
                state = {"rootless": rootless, "health": {"sick": 1}, "top": {"raw": [banner.pid]}, "inspect": {
                    "web.app": raw_inspect("web.app", ports={"80/tcp": [{"HostIp": "127.0.0.1",
                                                                         "HostPort": str(web_port)}]},
                                           labels={"role": 'x"\n[podwarden]'}),
                    "api": raw_inspect("api", ports={"8080/tcp": [{"HostIp": "", "HostPort": str(tls_port)}]},
                                       test=["CMD", "lncli", "getinfo"], health="healthy"),
                    "raw": raw_inspect("raw", network="host", pid=banner.pid),
                    "gone": raw_inspect("gone", ports={"1/tcp": [{"HostIp": "", "HostPort": str(closed_port)}]}),
                    "sick": raw_inspect("sick", test=["CMD-SHELL", "false"], health="unhealthy",
                                        health_output="boom: not ready"),
                    "old": raw_inspect("old", status="exited", restart="no", memory=0),
                    "other": raw_inspect("other"),
                }}
                (tmp_path / "state.json").write_text(json.dumps(state))
                (tmp_path / "podman.py").write_text(FAKE_PODMAN)
                target = TargetConfig(name="fake", transport="local",
                                      podman=[sys.executable, str(tmp_path / "podman.py"), str(tmp_path / "state.json")])
                outcome = await init_mod.init(config_from_dict({}), target, "fake", str(tmp_path / "out.toml"),
                                              only=["[ag]*", "old", "r?w", "s*", "web.*"])
                return outcome, web_port, tls_port
        outcome, web_port, tls_port = asyncio.run(go())
    finally:
        banner.kill()
        banner.wait()
    text = (tmp_path / "out.toml").read_text()
    config = load_config(tmp_path / "out.toml")
    assert sorted(config.containers) == ["api", "gone", "old", "raw", "sick", "web.app"]  # not `other`
    assert config.podwarden.default_target == "fake"
    assert config.targets["fake"].podman[-1] == str(tmp_path / "state.json")
    by_name = {name: own for name, own in config.containers.items()}
    probes = {name: [(p.type, p.name) for p in own.probes] for name, own in by_name.items()}

    web = by_name["web.app"]
    assert web.expected_state == "running"
    assert probes["web.app"] == [("http", f"http-{web_port}")]
    assert web.probes[0].url == f"http://127.0.0.1:{web_port}/" and web.probes[0].expect_status == 200

    api = by_name["api"]
    assert api.expected_state == "healthy"
    assert probes["api"] == [("podman-healthcheck", "healthcheck"), ("http", f"https-{tls_port}")]
    assert api.probes[1].url == f"https://127.0.0.1:{tls_port}/"
    assert api.probes[1].expect_status == 404 and api.probes[1].cert_sha256 == fingerprint

    # found in /proc: the banner server's socket, on the host network; it speaks no HTTP
    assert by_name["raw"].probes[0].port == banner_port and probes["raw"] == [("tcp", f"tcp-{banner_port}")]
    assert "no HTTP" in text

    assert probes["gone"] == []  # accepted no connection: suggested, commented out
    assert f'# name = "tcp-{closed_port}"' in text
    assert by_name["sick"].expected_state == "running"
    assert "FAILED: unhealthy: boom: not ready" in text
    assert by_name["old"].expected_state == "stopped" and by_name["old"].restart_policies == ["no"]
    assert '# role = "x\\"\\n[podwarden]"' in text  # a hostile label stays a comment, escaped
    assert stat.S_IMODE((tmp_path / "out.toml").stat().st_mode) == 0o644
    assert {c.name for c in outcome.containers} == set(config.containers)
    assert len(outcome.probes) == sum(len(own.probes) for own in config.containers.values())
    document = outcome.to_json()
    assert document["path"] == str(tmp_path / "out.toml") and document["probes"] == len(outcome.probes)
    json.dumps(document)

    from rich.console import Console

    from agent import render
    console = Console(width=200, record=True)
    console.print(render.init_outcome(outcome))
    shown = console.export_text()
    assert "accepted as found: old: restart-policy" in shown and f"wrote {tmp_path / 'out.toml'}" in shown


# ---------------------------------------------------------------- end to end

# A podman that lists only this test's containers. Other tests' containers come and go on
# the same podman meanwhile (and init would run their health checks): the target init
# describes, and check then checks, is this view of the node.
SCOPED_PODMAN = ["sh", "-c", 'if [ "$1" = ps ]; then shift; exec podman ps --filter name=^tbi- "$@"; fi; '
                 'exec podman "$@"', "podman"]


@pytest.mark.e2e
@pytest.mark.parametrize("who, port_base", [("root", 33330), ("rootless", 33430)])
def test_init_over_ssh_then_check_of_what_it_wrote_passes(sshd, tmp_path, who, port_base):
    from tests.agent_process import Node, podwarden
    from tests.sshd import ROOTLESS_USER

    user = ROOTLESS_USER if who == "rootless" else "root"
    node = Node(sshd, user, "tbi-", port_base, tmp_path)
    access = ["--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts)]
    ssh = ["ssh", "-i", str(sshd.identity), "-o", f"UserKnownHostsFile={sshd.known_hosts}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(sshd.port), f"{user}@127.0.0.1"]
    try:
        node.ok("testbed", "up", timeout=300)
        image = node.containers()["tbi-node"]["image"]
        # one more, stopped, restart policy no and no memory limit: accepted as found
        subprocess.run([*ssh, "podman", "rm", "-f", "tbi-old"], capture_output=True, timeout=60)
        made = subprocess.run([*ssh, "podman", "run", "--name", "tbi-old", "--restart", "no", "--network", "none", image, "true"],
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr

        given = tmp_path / "given.toml"
        given.write_text(f"[targets.tbi]\ntransport = \"ssh\"\nhost = \"127.0.0.1\"\nport = {sshd.port}\n"
                         f"user = {toml_value(user)}\npodman = {toml_value(SCOPED_PODMAN)}\n")
        out = tmp_path / "tbi.toml"
        result = podwarden(["init", "--config", str(given), "--target", "tbi", *access, "-o", str(out)], timeout=300)
        assert result.returncode == 0, result.stderr
        assert "next: podwarden check --config" in result.stdout
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        config = load_config(out)
        assert config.podwarden.default_target == "tbi"
        written = config.targets["tbi"]
        assert (written.port, written.podman) == (sshd.port, SCOPED_PODMAN)
        assert written.identity == str(sshd.identity) and written.known_hosts == str(sshd.known_hosts)
        stack = {f"tbi-{s}" for s in ("node", "lightning", "indexer", "node-ui", "lightning-ui", "indexer-ui")}
        assert set(config.containers) == stack | {"tbi-old"}
        for role in ("node", "lightning", "indexer"):
            own = config.containers[f"tbi-{role}"]
            assert own.expected_state == "healthy" and own.probes[0].type == "podman-healthcheck"
        for ui, offset in (("node-ui", 5), ("lightning-ui", 6), ("indexer-ui", 7)):
            own = config.containers[f"tbi-{ui}"]
            assert own.expected_state == "running"  # host network: found listening through /proc
            assert [(p.type, p.url, p.expect_status) for p in own.probes] == [
                ("http", f"http://127.0.0.1:{port_base + offset}/", 200)]
        old = config.containers["tbi-old"]
        assert old.expected_state == "stopped" and old.restart_policies == ["no"]
        assert old.policies.get("memory-limit") is False
        text = out.read_text()
        assert '# depends_on = ["tbi-node"]' in text and '# role = "ui"' in text

        # a second init without --force: exit 2, and the file is as it was
        before = out.read_bytes()
        again = podwarden(["init", "--config", str(given), "--target", "tbi", *access, "-o", str(out)])
        assert again.returncode == 2 and "--force" in again.stderr
        assert out.read_bytes() == before

        # check of what init wrote passes: by its default target, and with --target as given
        checked = podwarden(["check", "--config", str(out), "--no-store", "--json"], timeout=300)
        report = json.loads(checked.stdout)
        assert checked.returncode == 0, (report.get("findings"), [p for p in report.get("probes", []) if not p["ok"]],
                                         checked.stderr[-2000:])
        assert report["verdict"] == "pass"
        assert {p["container"] for p in report["probes"]} == stack
        checked = podwarden(["check", "--config", str(out), "--target", "tbi", *access, "--no-store"], timeout=300)
        assert checked.returncode == 0, checked.stdout[-3000:]

        # --force replaces it
        forced = podwarden(["init", "--config", str(given), "--target", "tbi", *access, "-o", str(out), "--force",
                            "--json"], timeout=300)
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["replaced"] is True
    finally:
        subprocess.run([*ssh, "podman", "rm", "-f", "tbi-old"], capture_output=True, timeout=60)
        node.run("testbed", "down")


def test_an_unreachable_ssh_url_is_exit_3_and_writes_nothing(tmp_path):
    from tests.agent_process import podwarden

    port = _free_port()
    out = tmp_path / "x.toml"
    result = podwarden(["init", "--target", f"ssh://root@127.0.0.1:{port}", "-o", str(out)])
    assert result.returncode == 3, result.stderr
    assert "unreachable" in result.stderr and not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the seed's stack, as an example

def test_the_seed_stack_example_loads():
    config = load_config(Path(__file__).parent.parent / "examples" / "seed-stack.toml")
    assert list(config.containers) == ["bitcoin-knots", "lnd", "electrumx", "archy-bitcoin-ui", "archy-lnd-ui",
                                       "archy-electrs-ui"]
    node, lnd = config.containers["bitcoin-knots"], config.containers["lnd"]
    assert node.probes[0].type == "exec" and node.probes[0].command == ["bitcoin-cli", "getblockchaininfo"]
    getinfo = lnd.probes[0]
    assert getinfo.type == "exec" and getinfo.command[0] == "lncli" and "--macaroonpath" in getinfo.command
    [rest] = [p for p in lnd.probes if p.type == "http"]
    assert rest.url.startswith("https://") and (rest.ca_file or rest.cert_sha256) and not rest.insecure_skip_verify
    assert {config.containers[n].depends_on[0] for n in ("lnd", "electrumx")} == {"bitcoin-knots"}
    uis = [name for name, own in config.containers.items() if own.role == "ui"]
    assert len(uis) == 3 and all(config.containers[ui].probes[0].type == "http" for ui in uis)
    backend = config.services["archipelago"]
    assert backend.status_command and backend.kill_command and backend.start_command
    assert "systemctl" in backend.kill_command and backend.health_url.endswith("/health")
    assert config.remediation.start_stopped and {h.name for h in config.hooks} >= {"notify-gave-up"}
    assert config.targets["seed"].podman == ["podman"] and config.podwarden.default_target == "seed"

"""Targets named the way OpenSSH names them: `Host` aliases of the ssh client config, their
ProxyJump chains, ssh-agent keys and hashed known_hosts; host keys checked at every hop.

The end-to-end tests reach a node through a real jump host (the `jump_pair` fixture): the node's
sshd runs in a network namespace of its own, so the only way to it is through the jump host.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import (
    SSH_CONFIG_ENV,
    TargetConfig,
    config_from_dict,
    resolve_target,
    ssh_config_names,
)
from agent.errors import ConfigError, TargetUnreachable, UsageError
from agent.transport import _keyscan, make_transport, ssh_hops
from tests.agent_process import podwarden
from tests.sshd import SshServer


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- which names are ssh aliases

def test_host_lines_name_an_alias_with_ssh_patterns(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / ".ssh" / "conf.d" / "lan.conf", "Host *.lan\n  User pi\n")
    config = _write(tmp_path / "ssh_config", "\n".join([
        "# comment",
        "Host node? !node9",
        "  HostName 10.0.0.5",
        "Host=bastion,edge",
        "Include conf.d/*.conf",
        "Host *",
        "  ServerAliveInterval 5",
        "",
    ]))
    named = {name: ssh_config_names(config, name)
             for name in ("node1", "node9", "node10", "bastion", "edge", "pi.lan", "anything")}
    assert named == {"node1": True, "node9": False, "node10": False, "bastion": True, "edge": True,
                     "pi.lan": True, "anything": False}  # `Host *` names nothing


def test_a_bare_name_resolves_to_an_ssh_alias(tmp_path, monkeypatch):
    ssh_config = _write(tmp_path / "ssh_config", "Host mynode\n  HostName 10.0.0.5\n  User bitcoin\n")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(ssh_config))
    target = resolve_target(config_from_dict({}), "mynode", known_hosts="/kh")
    assert (target.name, target.transport, target.ssh_alias, target.ssh_config, target.host, target.known_hosts) == (
        "mynode", "ssh", "mynode", str(ssh_config), None, "/kh")
    assert target.describe() == "mynode"


def test_an_unknown_name_is_exit_2_naming_both_places_looked_at(tmp_path, monkeypatch):
    ssh_config = _write(tmp_path / "ssh_config", "Host other\n  HostName 10.0.0.6\nHost *\n  User x\n")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(ssh_config))
    config = config_from_dict({"targets": {"node1": {"host": "10.0.0.1"}}}, "/etc/podwarden/config.toml")
    with pytest.raises(UsageError) as info:
        resolve_target(config, "nosuch")
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "unknown target 'nosuch'" in message
    assert "/etc/podwarden/config.toml (node1)" in message and f"no `Host` line of {ssh_config} names it" in message
    monkeypatch.setenv(SSH_CONFIG_ENV, str(tmp_path / "absent"))
    with pytest.raises(UsageError, match=f"unknown target 'nosuch'.*{tmp_path / 'absent'} not found"):
        resolve_target(config, "nosuch")


def test_the_default_ssh_config_is_home_ssh_config(tmp_path, monkeypatch):
    monkeypatch.delenv(SSH_CONFIG_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / ".ssh" / "config", "Host mynode\n  HostName 10.0.0.5\n")
    assert resolve_target(config_from_dict({}), "mynode").ssh_config == str(tmp_path / ".ssh" / "config")


def test_a_bad_ssh_config_line_is_exit_2_naming_file_and_line(tmp_path, monkeypatch):
    ssh_config = _write(tmp_path / "ssh_config", "Host mynode\n  Port twenty-two\n")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(ssh_config))
    with pytest.raises(UsageError, match=f"{ssh_config} line 2: Invalid Port integer value"):
        resolve_target(config_from_dict({}), "mynode")


def test_config_targets_may_name_an_ssh_alias(tmp_path):
    ssh_config = _write(tmp_path / "ssh_config", "Host mynode\n  HostName 10.0.0.5\n")
    config = config_from_dict({"targets": {
        "night": {"ssh_alias": "mynode", "ssh_config": str(ssh_config), "user": "bitcoin"},
        "typo": {"ssh_alias": "mynod", "ssh_config": str(ssh_config)},
    }}, "c.toml")
    night = resolve_target(config, "night", identity="/k")
    assert (night.name, night.ssh_alias, night.user, night.identity) == ("night", "mynode", "bitcoin", "/k")
    with pytest.raises(ConfigError) as info:
        resolve_target(config, "typo")
    assert info.value.key == "targets.typo.ssh_alias" and "no `Host` line" in info.value.problem
    for wrong, words in (({"ssh_alias": "a", "host": "h"}, "not both"),
                         ({"transport": "local", "ssh_alias": "a"}, "need transport"),
                         ({"transport": "ssh"}, "an ssh target needs `host`")):
        with pytest.raises(ConfigError, match=words):
            config_from_dict({"targets": {"n": wrong}})


# ---------------------------------------------------------------- hops, as ssh would make them

def _chain_config(tmp_path: Path) -> Path:
    key = _write(tmp_path / "id_node", "not read here\n")
    return _write(tmp_path / "ssh_config", f"""
Host node
    HostName 10.0.0.5
    Port 2222
    User bitcoin
    IdentityFile {key}
    IdentityFile {tmp_path / 'id_gone'}
    ProxyJump admin@outer:2200,mid
    ServerAliveInterval 7
    ServerAliveCountMax 2
Host outer
    HostName 192.0.2.1
    ProxyJump bastion
Host mid
    HostName 192.0.2.2
    ProxyJump nowhere
Host bastion
    HostName 192.0.2.9
    User jump
Host *
    UserKnownHostsFile %d/known_hosts_%h
    GlobalKnownHostsFile /etc/nothing
""")


def test_ssh_config_gives_every_hop_of_a_proxyjump_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ssh_config = _chain_config(tmp_path)
    hops = ssh_hops(TargetConfig(name="night", ssh_alias="node", ssh_config=str(ssh_config)))
    # outer's own ProxyJump is followed (it is the first jump); mid's is not (ssh's -J wins)
    assert [(h.label, h.host, h.port, h.user, h.jump) for h in hops] == [
        ("bastion", "192.0.2.9", 22, "jump", True),
        ("admin@outer:2200", "192.0.2.1", 2200, "admin", True),
        ("mid", "192.0.2.2", 22, getpass.getuser(), True),
        ("node", "10.0.0.5", 2222, "bitcoin", False),
    ]
    node = hops[-1]
    assert node.where == "node (10.0.0.5:2222)" and hops[0].where == "jump host bastion (192.0.2.9:22)"
    assert node.options["client_keys"] == [str(tmp_path / "id_node")]  # a listed file that is gone is skipped
    assert (node.options["keepalive_interval"], node.options["keepalive_count_max"]) == (7.0, 2)
    assert (hops[0].options["keepalive_interval"], hops[0].options["keepalive_count_max"]) == (10.0, 3)
    assert node.known_hosts == (str(tmp_path / "known_hosts_10.0.0.5"), "/etc/nothing")
    # a key is fetched from where the hop is reachable, as ssh -J would go there
    assert [h.reached_through for h in hops] == [(), ("bastion",), ("admin@outer:2200",), ("admin@outer:2200", "mid")]
    assert _keyscan(node, "/kh") == "ssh -J admin@outer:2200 mid ssh-keyscan -p 2222 10.0.0.5 >> /kh"
    assert _keyscan(hops[2], "/kh") == "ssh ssh://admin@outer:2200 ssh-keyscan -p 22 192.0.2.2 >> /kh"
    assert _keyscan(hops[0], "/kh") == "ssh-keyscan -p 22 192.0.2.9 >> /kh"
    assert hops[0].known_hosts == (str(tmp_path / "known_hosts_192.0.2.9"), "/etc/nothing")


def test_podwarden_settings_override_the_ssh_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ssh_config = _chain_config(tmp_path)
    target = TargetConfig(name="night", ssh_alias="node", ssh_config=str(ssh_config), user="root", port=22,
                          identity="~/id_mine", known_hosts="~/kh", keepalive_interval=3)
    hops = ssh_hops(target)
    node = hops[-1]
    assert (node.user, node.port, node.identity, node.options["keepalive_interval"]) == ("root", 22, "~/id_mine", 3)
    assert "client_keys" not in node.options  # the given identity is the one key offered (agent off, as before)
    # the identity is the node's; the given known_hosts file is every hop's
    assert [h.identity for h in hops[:-1]] == [None, None, None]
    assert {h.known_hosts for h in hops} == {(str(tmp_path / "kh"),)}
    insecure = ssh_hops(target.model_copy(update={"insecure_skip_host_key_check": True}))
    assert {h.known_hosts for h in insecure} == {None}


def test_without_an_identity_nothing_turns_the_agent_off(tmp_path):
    ssh_config = _write(tmp_path / "ssh_config", "Host plain\n  HostName 10.0.0.7\n")
    (hop,) = ssh_hops(TargetConfig(name="plain", ssh_alias="plain", ssh_config=str(ssh_config)))
    assert "agent_path" not in hop.options and "client_keys" not in hop.options
    (url,) = ssh_hops(TargetConfig(name="u", host="10.0.0.7"))
    assert "agent_path" not in url.options and url.options["config"] is None


def test_known_hosts_none_in_ssh_config_trusts_nothing_more(tmp_path):
    ssh_config = _write(tmp_path / "ssh_config", "Host n\n  HostName 10.0.0.7\n  UserKnownHostsFile none\n"
                                                  "  StrictHostKeyChecking no\n")
    (hop,) = ssh_hops(TargetConfig(name="n", ssh_alias="n", ssh_config=str(ssh_config)))
    assert hop.known_hosts == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


@pytest.mark.parametrize("jump, words", [("a", "loops"), ("root@[::1", r"not \[user@\]host\[:port\]")])
def test_bad_proxyjumps_are_unreachable_with_a_reason(tmp_path, jump, words):
    ssh_config = _write(tmp_path / "ssh_config", f"Host n\n  ProxyJump {jump}\nHost a\n  ProxyJump n\n")
    with pytest.raises(TargetUnreachable, match=words):
        ssh_hops(TargetConfig(name="n", ssh_alias="n", ssh_config=str(ssh_config)))


# ---------------------------------------------------------------- through a real jump host

def _ssh_config(tmp_path: Path, outer: SshServer, inner: SshServer, known_hosts: Path, *,
                identities: bool = True, name: str = "ssh_config") -> Path:
    def identity(server: SshServer) -> str:
        return f"    IdentityFile {server.identity}\n" if identities else ""

    return _write(tmp_path / name, (
        "Host outer\n    HostName 127.0.0.1\n"
        f"    Port {outer.port}\n    User root\n{identity(outer)}"
        "Host inner\n    HostName 127.0.0.2\n"
        f"    Port {inner.port}\n    User root\n{identity(inner)}"
        "    ProxyJump outer\n    ServerAliveInterval 5\n    ServerAliveCountMax 2\n"
        # first value wins in ssh config: defaults for every host go last
        f"Host *\n    UserKnownHostsFile {known_hosts}\n    StrictHostKeyChecking no\n"))


def _known_hosts(tmp_path: Path, *servers: SshServer, name: str = "known_hosts") -> Path:
    return _write(tmp_path / name, "".join(server.known_hosts_line() for server in servers))


def _wrong_key_line(server: SshServer, tmp_path: Path) -> str:
    other = tmp_path / f"other_{server.port}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    return f"[{server.listen}]:{server.port} {kind} {key}\n"


def _empty_config(tmp_path: Path, text: str = "") -> Path:
    return _write(tmp_path / "config.toml", text)


def _status(config: Path, target: str, *extra: str) -> subprocess.CompletedProcess:
    return podwarden(["status", "--config", str(config), "--target", target, *extra], timeout=120)


# The remote shell's own pid and its ancestors' (the same pid namespace as ours: only the network differs).
_ANCESTORS = "p=$$; while [ \"$p\" -gt 1 ]; do echo \"$p\"; p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status); done"


@pytest.mark.e2e
def test_inner_is_reachable_only_through_outer(jump_pair, tmp_path):
    outer, inner = jump_pair
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", inner.port), timeout=2).close()
    direct = _status(_empty_config(tmp_path), inner.url("root"), "--identity", str(inner.identity),
                     "--known-hosts", str(_known_hosts(tmp_path, inner)))
    assert direct.returncode == 3 and "connection refused" in direct.stderr, direct.stderr


@pytest.mark.e2e
def test_status_reaches_an_ssh_alias_through_its_jump_host(jump_pair, tmp_path, monkeypatch):
    outer, inner = jump_pair
    ssh_config = _ssh_config(tmp_path, outer, inner, _known_hosts(tmp_path, outer, inner))
    monkeypatch.setenv(SSH_CONFIG_ENV, str(ssh_config))
    result = _status(_empty_config(tmp_path), "inner", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["target"] == "inner" and document["podman_version"], document
    # the same alias named by a config target, its file given there
    monkeypatch.delenv(SSH_CONFIG_ENV)
    config = _empty_config(tmp_path, f'[targets.night]\nssh_alias = "inner"\nssh_config = "{ssh_config}"\n')
    result = _status(config, "night", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["target"] == "night", result.stderr


@pytest.mark.e2e
def test_a_wrong_host_key_at_either_hop_is_exit_3_naming_that_host(jump_pair, tmp_path, monkeypatch):
    outer, inner = jump_pair
    config = _empty_config(tmp_path)
    wrong_inner = _write(tmp_path / "kh_inner", outer.known_hosts_line() + _wrong_key_line(inner, tmp_path))
    monkeypatch.setenv(SSH_CONFIG_ENV, str(_ssh_config(tmp_path, outer, inner, wrong_inner)))
    result = _status(config, "inner")
    assert result.returncode == 3, result.stderr
    assert f"host key of inner (127.0.0.2:{inner.port}) through outer not verified against {wrong_inner}" \
        in result.stderr
    assert f"ssh outer ssh-keyscan -p {inner.port} 127.0.0.2 >> {wrong_inner}" in result.stderr
    wrong_outer = _write(tmp_path / "kh_outer", _wrong_key_line(outer, tmp_path) + inner.known_hosts_line())
    monkeypatch.setenv(SSH_CONFIG_ENV, str(_ssh_config(tmp_path, outer, inner, wrong_outer)))
    result = _status(config, "inner")
    assert result.returncode == 3, result.stderr
    assert f"host key of jump host outer (127.0.0.1:{outer.port}) not verified" in result.stderr
    # no entry at all for inner is no more trusted than a wrong one (StrictHostKeyChecking no is not read)
    only_outer = _known_hosts(tmp_path, outer, name="kh_only_outer")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(_ssh_config(tmp_path, outer, inner, only_outer)))
    result = _status(config, "inner")
    assert result.returncode == 3 and "host key of inner" in result.stderr, result.stderr


@pytest.mark.e2e
def test_hashed_known_hosts_work(jump_pair, tmp_path, monkeypatch):
    outer, inner = jump_pair
    hashed = _known_hosts(tmp_path, outer, inner, name="kh_hashed")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    text = hashed.read_text()
    assert "127.0.0" not in text and text.count("|1|") == 2
    monkeypatch.setenv(SSH_CONFIG_ENV, str(_ssh_config(tmp_path, outer, inner, hashed)))
    result = _status(_empty_config(tmp_path), "inner", "--json")
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_keys_come_from_the_ssh_agent_when_no_identity_is_given(jump_pair, tmp_path, monkeypatch):
    outer, inner = jump_pair
    home = tmp_path / "home"
    # ~/.ssh/config, the default, with no IdentityFile; HOME has no default keys either
    _ssh_config(home / ".ssh", outer, inner, _known_hosts(tmp_path, outer, inner), identities=False, name="config")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(SSH_CONFIG_ENV, raising=False)
    key = tmp_path / "agent_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "podwarden-agent", "-f", str(key)],
                   check=True)
    for server in (outer, inner):
        server.authorize(key.with_suffix(".pub"))
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None, "ssh-agent did not start"
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
        key.unlink()  # from here on only the agent holds it
        config = _empty_config(tmp_path)
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        without = _status(config, "inner")
        assert without.returncode == 3 and "authentication failed as root on jump host outer" in without.stderr, \
            without.stderr
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        result = _status(config, "inner", "--json")
        assert result.returncode == 0, result.stderr
    finally:
        agent.terminate()
        agent.wait(10)


@pytest.mark.e2e
def test_the_link_is_to_the_inner_sshd_and_its_loss_is_noticed(jump_pair, tmp_path):
    outer, inner = jump_pair
    ssh_config = _ssh_config(tmp_path, outer, inner, _known_hosts(tmp_path, outer, inner))
    target = TargetConfig(name="inner", ssh_alias="inner", ssh_config=str(ssh_config))

    jump_listener = outer.process.pid if outer.process else None

    async def go():
        transport = make_transport(target)
        await transport.connect()
        try:
            shell = await transport.run(["sh", "-c", _ANCESTORS])
            ancestors = [int(pid) for pid in shell.stdout.split()]
            outer.restart()  # the jump host's sessions end: the link through it drops
            await asyncio.wait_for(transport.wait_closed(), 15)
            return ancestors, transport.connected
        finally:
            await transport.close()

    ancestors, connected = asyncio.run(go())
    # the remote shell is a session of the inner sshd, not of the jump host
    assert inner.process is not None and inner.process.pid in ancestors and jump_listener not in ancestors
    assert connected is False

"""SSH transport against a real sshd on 127.0.0.1 (no podman needed)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from agent.errors import CommandTimeout, TargetUnreachable
from agent.transport import http_get, make_transport
from agent.config import TargetConfig
from tests.conftest import ssh_target
from tests.sshd import free_port, make_sshd

pytestmark = pytest.mark.e2e


def run(coro):
    return asyncio.run(coro)


def test_run_returns_status_stdout_stderr(root_target):
    async def go():
        async with make_transport(root_target) as tr:
            return await tr.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    result = run(go())
    assert (result.exit_status, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_arguments_are_quoted_not_interpreted(root_target, tmp_path):
    marker = tmp_path / "pwned"
    async def go():
        async with make_transport(root_target) as tr:
            return await tr.run(["echo", f"$(touch {marker})", "a b", "'q'", ";ls"])
    result = run(go())
    assert result.stdout == f"$(touch {marker}) a b 'q' ;ls\n"
    assert not marker.exists()


def test_stream_survives_invalid_utf8_and_long_lines(root_target):
    script = "printf 'ok\\n\\377\\376bad\\n'; head -c 3000000 /dev/zero | tr '\\0' x; printf '\\nafter\\n'"
    async def go():
        async with make_transport(root_target) as tr:
            async with tr.stream(["sh", "-c", script]) as lines:
                got = [line async for line in lines]
            # the connection is still usable afterwards
            again = await tr.run(["echo", "still"])
            return got, lines.exit_status, again.stdout
    got, status, again = run(go())
    assert got[0] == "ok"
    assert got[1] == "\ufffd\ufffdbad"
    assert got[2].endswith("[line cut at 1 MiB]") and len(got[2]) < 1_100_000
    assert got[-1] == "after"
    assert status == 0 and again == "still\n"


def _remote_sleepers(tag: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True, text=True)
    return len(out.stdout.split())


async def _sleepers_after_ending(tag: str) -> int:
    """How many remote `sleep TAG` are left once they had 10 s to die."""
    deadline = time.monotonic() + 10
    while _remote_sleepers(tag) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return _remote_sleepers(tag)


def test_leaving_a_stream_kills_the_remote_command(root_target):
    async def go():
        async with make_transport(root_target) as tr:
            async with tr.stream(["sh", "-c", "echo up; exec sleep 4242"]) as lines:
                async for line in lines:
                    assert line == "up"
                    break
            return await _sleepers_after_ending("4242")
    assert run(go()) == 0


def test_timeout_cuts_off_and_kills_remote_command(root_target):
    async def go():
        async with make_transport(root_target) as tr:
            with pytest.raises(CommandTimeout):
                await tr.run(["sleep", "4343"], timeout=0.5)
            return await _sleepers_after_ending("4343")
    assert run(go()) == 0


def test_more_concurrent_commands_than_maxsessions(root_target):
    async def go():
        async with make_transport(root_target) as tr:
            results = await asyncio.gather(*(tr.run(["sh", "-c", f"sleep 0.3; echo {i}"]) for i in range(25)))
            return [r.stdout.strip() for r in results]
    assert run(go()) == [str(i) for i in range(25)]


def test_input_is_streamed_to_the_command(root_target):
    payload = bytes(range(256)) * 8192  # 2 MiB, every byte value
    async def go():
        async with make_transport(root_target) as tr:
            return await tr.run(["sh", "-c", "wc -c"], input=payload)
    assert run(go()).stdout.strip() == str(len(payload))


def test_http_get_goes_through_the_link(root_target, tmp_path):
    (tmp_path / "health").write_text('{"status":"ok"}')
    port = free_port()
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(tmp_path)])
    try:
        async def go():
            async with make_transport(root_target) as tr:
                deadline = time.monotonic() + 5
                while True:
                    try:
                        return await http_get(tr, f"http://127.0.0.1:{port}/health", timeout=5)
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)
        response = run(go())
        assert response.status == 200 and response.text() == '{"status":"ok"}'
    finally:
        server.kill()
        server.wait()


def test_rootless_user_runs_commands(rootless_target):
    async def go():
        async with make_transport(rootless_target) as tr:
            return await tr.run(["id", "-un"])
    assert run(go()).stdout.strip() == "pwtest"


def _unreachable(target: TargetConfig) -> str:
    async def go():
        async with make_transport(target):
            pass
    with pytest.raises(TargetUnreachable) as info:
        run(go())
    return str(info.value)


def test_nothing_listening_is_unreachable(sshd):
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"port": free_port()}))
    assert "connection refused" in message


def test_unreachable_port_is_said_even_without_known_hosts_or_identity(sshd, tmp_path):
    closed = ssh_target(sshd, "root").model_copy(update={
        "port": free_port(), "known_hosts": str(tmp_path / "known_hosts"), "identity": str(tmp_path / "id")})
    message = _unreachable(closed)
    assert "connection refused" in message and "known_hosts" not in message and "identity" not in message


def test_missing_files_are_said_once_the_port_answers(sshd, tmp_path):
    missing = tmp_path / "known_hosts"
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"known_hosts": str(missing)}))
    assert f"known_hosts file {missing} not found (127.0.0.1:{sshd.port} answers)" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {missing}" in message
    no_key = tmp_path / "id_ed25519"
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"identity": str(no_key)}))
    assert f"identity file {no_key} not found (127.0.0.1:{sshd.port} answers)" in message


def test_wrong_key_is_unreachable(sshd, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"identity": str(other)}))
    assert "authentication failed" in message


def test_changed_host_key_is_unreachable_and_says_how_to_trust(sshd, tmp_path):
    other = make_sshd(["root"])  # a different host key, written for another port
    known = tmp_path / "known_hosts"
    key = other.known_hosts.read_text().split(" ", 1)[1]
    known.write_text(f"[127.0.0.1]:{sshd.port} {key}")
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"known_hosts": str(known)}))
    assert "host key" in message and "ssh-keyscan" in message


def test_unknown_host_key_unless_opted_out_by_name(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    message = _unreachable(ssh_target(sshd, "root").model_copy(update={"known_hosts": str(empty)}))
    assert "not verified" in message
    insecure = ssh_target(sshd, "root").model_copy(update={"known_hosts": str(empty), "insecure_skip_host_key_check": True})
    async def go():
        async with make_transport(insecure) as tr:
            return await tr.run(["true"])
    assert run(go()).ok


def test_dropped_link_is_noticed(sshd):
    async def go():
        tr = make_transport(ssh_target(sshd, "root"))
        await tr.connect()
        try:
            assert tr.connected
            sshd.restart()
            await asyncio.wait_for(tr.wait_closed(), 15)
            return tr.connected
        finally:
            await tr.close()
    assert run(go()) is False


def test_hashed_known_hosts_entries_verify(sshd, tmp_path):
    hashed = tmp_path / "known_hosts"
    hashed.write_text(sshd.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "127.0.0.1" not in hashed.read_text() and hashed.read_text().startswith("|1|")
    async def go():
        async with make_transport(ssh_target(sshd, "root").model_copy(update={"known_hosts": str(hashed)})) as tr:
            return await tr.run(["true"])
    assert run(go()).ok

"""HTTP and HTTPS probes through the real sshd: HTTP/1.1 framing (h11), the body cap, TLS verification.

The servers are asyncio servers on 127.0.0.1 in the test's own event loop, reached
through the SSH link (direct-tcpip). TLS uses self-signed certificates made here with
`openssl req -x509`, the way lnd's tls.cert is its own CA.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.config import HttpProbe, config_from_dict
from agent.errors import ConfigError
from agent.http import BadHttpReply, format_fingerprint, http_get, normalize_fingerprint
from agent.probes import execute_probe
from agent.transport import make_transport

pytestmark = pytest.mark.e2e

HEALTH = json.dumps({"status": "ok", "synced_to_chain": True}).encode()
BIG = 3 * (1 << 20)  # over the 1 MiB cap
CAP = 1 << 20


async def _reply(writer: asyncio.StreamWriter, head: str, *parts: bytes) -> None:
    writer.write(head.encode())
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate reads on the far side


ROUTES = {
    "/kept-open": lambda w: _reply(w, f"HTTP/1.1 200 OK\r\nContent-Length: {len(HEALTH)}\r\n"
                                      "Content-Type: application/json\r\n\r\n", HEALTH),
    "/chunked": lambda w: _reply(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                 *(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (HEALTH[:7], HEALTH[7:])),
                                 b"0\r\n\r\n"),
    "/big": lambda w: _reply(w, f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n",
                             b"head " + b"x" * (BIG - 11) + b"needle"),
    "/big-json": lambda w: _reply(w, f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n",
                                  b'{"status": "ok", "pad": "' + b"x" * (BIG - 27) + b'"}'),
    "/short": lambda w: _reply(w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n", b"only ten b"),
}


@asynccontextmanager
async def serving(tls: ssl.SSLContext | None = None):
    """An HTTP/1.1 server on 127.0.0.1 that answers and then keeps the connection open."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readexactly(1) == b"\x16":  # a TLS ClientHello: answer as plain servers do
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            await ROUTES[path](writer)
            if path != "/short":
                await reader.read()  # kept open until the client hangs up
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        yield server.sockets[0].getsockname()[1]


def _probe(target, url: str, timeout: float = 10, tls: ssl.SSLContext | None = None, **expect):
    async def go():
        async with serving(tls) as port, make_transport(target) as transport:
            return await execute_probe(transport, ["podman"], "lnd",
                                       HttpProbe(type="http", url=url.format(port=port), timeout=timeout, **expect))
    return asyncio.run(go()).obs


# ---------------------------------------------------------------- HTTP/1.1 framing

def test_kept_open_reply_with_content_length_completes_at_once(root_target):
    started = time.monotonic()
    obs = _probe(root_target, "http://127.0.0.1:{port}/kept-open", expect_json={"status": "ok"})
    assert obs.ok and obs.detail == "", obs.detail
    assert time.monotonic() - started < 3 and obs.latency_ms < 2000  # not the 10 s timeout


def test_chunked_reply_is_read(root_target):
    obs = _probe(root_target, "http://127.0.0.1:{port}/chunked", expect_json={"synced_to_chain": True})
    assert obs.ok, obs.detail
    assert json.loads(obs.excerpt) == json.loads(HEALTH)


def test_body_cut_at_the_cap_is_said(root_target):
    passed = _probe(root_target, "http://127.0.0.1:{port}/big", expect_regex="^head")
    assert passed.ok and passed.detail == f"body cut at {CAP} bytes ({BIG} announced)"
    missed = _probe(root_target, "http://127.0.0.1:{port}/big", expect_regex="needle")
    assert not missed.ok
    assert missed.detail == f"output does not match /needle/; the body was cut at {CAP} bytes ({BIG} announced)"
    not_json = _probe(root_target, "http://127.0.0.1:{port}/big-json", expect_json={"status": "ok"})
    assert not not_json.ok and not_json.detail.startswith("output is not JSON: ")
    assert not_json.detail.endswith(f"; the body was cut at {CAP} bytes ({BIG} announced)")


def test_http_get_marks_a_cut_body_and_rejects_a_short_one(root_target):
    async def go():
        async with serving() as port, make_transport(root_target) as transport:
            big = await http_get(transport, f"http://127.0.0.1:{port}/big", timeout=10)
            whole = await http_get(transport, f"http://127.0.0.1:{port}/big", timeout=10, max_body=BIG)
            with pytest.raises(BadHttpReply) as short:
                await http_get(transport, f"http://127.0.0.1:{port}/short", timeout=10)
            return big, whole, short.value
    big, whole, short = asyncio.run(go())
    assert big.truncated and len(big.body) == CAP and big.announced_length == BIG
    assert not whole.truncated and whole.body.endswith(b"needle") and len(whole.body) == BIG
    assert "127.0.0.1" in str(short) and short.reason


# ---------------------------------------------------------------- HTTPS

def _self_signed(directory: Path, name: str, names: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path, str]:
    cert, key = directory / f"{name}.cert", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
                    "-addext", f"subjectAltName={names}"], check=True, capture_output=True)
    fingerprint = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                                 check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    return cert, key, fingerprint


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """lnd's-style self-signed tls.cert for the server, another that signs nothing here, one for another name."""
    directory = tmp_path_factory.mktemp("tls")
    return {"lnd": _self_signed(directory, "lnd"), "other": _self_signed(directory, "other"),
            "elsewhere": _self_signed(directory, "elsewhere", "DNS:lnd.example")}


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("case", ["ca_file", "pinned", "pinned_bare_hex", "insecure", "wrong_pin", "unknown_ca",
                                  "system_store"])
def test_https_verification(root_target, certs, case):
    cert, key, fingerprint = certs["lnd"]
    other_cert, _, other_fingerprint = certs["other"]
    settings = {
        "ca_file": {"ca_file": str(cert)},
        "pinned": {"cert_sha256": fingerprint},
        "pinned_bare_hex": {"cert_sha256": fingerprint.replace(":", "").lower()},
        "insecure": {"insecure_skip_verify": True},
        "wrong_pin": {"cert_sha256": other_fingerprint},
        "unknown_ca": {"ca_file": str(other_cert)},
        "system_store": {},
    }[case]
    obs = _probe(root_target, "https://127.0.0.1:{port}/chunked", tls=_server_context(cert, key),
                 expect_json={"status": "ok"}, **settings)
    if case in ("ca_file", "pinned", "pinned_bare_hex", "insecure"):
        assert obs.ok and obs.detail == "", obs.detail
        return
    assert not obs.ok
    if case == "wrong_pin":
        assert obs.detail == (f"certificate sha256 {fingerprint} is not the pinned {other_fingerprint}: the "
                              "server's certificate changed, or this is not the server you pinned")
    elif case == "unknown_ca":
        assert obs.detail.startswith(f"certificate not verified against ca_file {other_cert}: "), obs.detail
    else:
        assert obs.detail.startswith("certificate not verified against the system CA store: self-signed"), obs.detail
        assert "set ca_file" in obs.detail


def test_tls_and_plain_mixed_up_are_explained(root_target, certs):
    cert, key, _ = certs["lnd"]
    tls_to_plain = _probe(root_target, "https://127.0.0.1:{port}/kept-open", timeout=5, insecure_skip_verify=True)
    assert not tls_to_plain.ok and "is it speaking TLS?" in tls_to_plain.detail, tls_to_plain.detail
    plain_to_tls = _probe(root_target, "http://127.0.0.1:{port}/kept-open", timeout=5, tls=_server_context(cert, key))
    assert not plain_to_tls.ok and plain_to_tls.detail.startswith("bad HTTP reply: "), plain_to_tls.detail


def test_certificate_for_another_name_is_refused_even_from_the_trusted_ca(root_target, certs):
    cert, key, _ = certs["elsewhere"]
    obs = _probe(root_target, "https://127.0.0.1:{port}/kept-open", tls=_server_context(cert, key), ca_file=str(cert))
    assert not obs.ok and "IP address mismatch" in obs.detail and "use a host the certificate names" in obs.detail


def test_missing_ca_file_is_a_failed_probe_that_says_so(root_target, tmp_path):
    obs = _probe(root_target, "https://127.0.0.1:{port}/kept-open", ca_file=str(tmp_path / "tls.cert"))
    assert not obs.ok and obs.detail.startswith(f"ca_file {tmp_path / 'tls.cert'} not found: "), obs.detail


# ---------------------------------------------------------------- the config keys

def _http_probe(**keys) -> HttpProbe:
    config = config_from_dict({"services": {"lnd": {"probes": [{"type": "http", **keys}]}}})
    return config.services["lnd"].probes[0]


def test_https_config_keys(certs):
    _, _, fingerprint = certs["lnd"]
    probe = _http_probe(url="https://127.0.0.1:8080/v1/state", cert_sha256=f"sha256 Fingerprint={fingerprint}")
    assert probe.cert_sha256 == fingerprint.replace(":", "").lower()
    assert format_fingerprint(normalize_fingerprint(fingerprint)) == fingerprint
    assert _http_probe(url="https://127.0.0.1:8080/", ca_file="~/lnd/tls.cert").ca_file == "~/lnd/tls.cert"
    assert not _http_probe(url="https://127.0.0.1:8080/").insecure_skip_verify


@pytest.mark.parametrize("keys, words", [
    ({"url": "https://127.0.0.1:8080/", "cert_sha256": "abcd"}, "64 hex digits"),
    ({"url": "http://127.0.0.1:8080/", "ca_file": "tls.cert"}, "only apply to https://"),
    ({"url": "https://127.0.0.1:8080/", "ca_file": "tls.cert", "insecure_skip_verify": True}, "turns verification off"),
    ({"url": "ftp://127.0.0.1/"}, "https://HOST:PORT/PATH"),
])
def test_bad_https_config_is_explained(keys, words):
    with pytest.raises(ConfigError) as info:
        _http_probe(**keys)
    assert words in str(info.value) and "services.lnd.probes" in str(info.value), str(info.value)

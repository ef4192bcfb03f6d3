"""HTTP/1.1 GET through a transport's link, spoken with h11, with TLS done here, client-side.

The node needs no curl: the request goes over `Transport.open_tcp` (for SSH a direct-tcpip
forward). h11 frames the reply, so a kept-open connection ends at `Content-Length`, a
chunked body is decoded, and a body cut short by the server is an error rather than a
silent half. A body longer than `max_body` is cut there and marked `truncated`.

TLS runs on our side of the forwarded stream through `ssl.MemoryBIO` (asyncssh's streams
are not asyncio transports, so `start_tls` cannot wrap them). Verification is against
the system CA store by default, against `ca_file` only when one is given (lnd's
`tls.cert` is its own CA) - either way the URL's host must be a name or IP in the
certificate - or by a pinned SHA-256 fingerprint of the certificate (chain and name
are then not checked: the pin is the identity). Skipping verification takes the
explicit `insecure_skip_verify`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11

if TYPE_CHECKING:  # agent.transport re-exports this module: no import of it at run time
    from agent.transport import Transport

MAX_BODY = 1 << 20
READ_CHUNK = 65536
USER_AGENT = "podwarden"


@dataclass(frozen=True)
class TlsVerify:
    """How an https:// server's certificate is checked (the default: the system CA store)."""

    ca_file: str | None = None  # a PEM file on this machine (lnd: a copy of tls.cert)
    cert_sha256: str | None = None  # pinned fingerprint: 64 hex digits, colons allowed
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        if self.cert_sha256 is not None:
            object.__setattr__(self, "cert_sha256", normalize_fingerprint(self.cert_sha256))

    def describe(self) -> str:
        """How the certificate was checked, for messages."""
        if self.insecure_skip_verify:
            return "not verified (insecure_skip_verify)"
        ways = []
        if self.ca_file:
            ways.append(f"ca_file {self.ca_file}")
        if self.cert_sha256:
            ways.append(f"pinned cert_sha256 {format_fingerprint(self.cert_sha256)}")
        return " and ".join(ways) or "the system CA store"


@dataclass(frozen=True)
class HttpResponse:
    """An HTTP response read through a transport; `truncated` when the body was cut at the cap."""

    status: int
    reason: str
    headers: dict[str, str]  # names lowercased; repeated headers joined with ", "
    body: bytes
    truncated: bool = False

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def announced_length(self) -> int | None:
        """The body length the server announced (Content-Length), if it did."""
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None


class BadHttpReply(ValueError):
    """The server's bytes are not a well-framed HTTP reply (or it closed mid-reply)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"bad HTTP reply from {url}: {reason}")
        self.url = url
        self.reason = reason


class TlsFailed(OSError):
    """The TLS handshake failed or the server's certificate was not the one we trust."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"TLS with {url} failed: {reason}")
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


def normalize_fingerprint(value: str) -> str:
    """64 lowercase hex digits from `AB:CD:...`, `abcd...` or `SHA256 Fingerprint=AB:...`; raises ValueError."""
    text = value.strip()
    if "=" in text:  # pasted whole from `openssl x509 -noout -fingerprint -sha256`
        text = text.rsplit("=", 1)[1]
    text = text.replace(":", "").replace(" ", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(
            f"invalid SHA-256 fingerprint {value!r}: give 64 hex digits (colons allowed), e.g. from "
            "`openssl x509 -in tls.cert -noout -fingerprint -sha256`"
        )
    return text


def format_fingerprint(hex_digits: str) -> str:
    """`AB:CD:...` as openssl prints it."""
    digits = hex_digits.upper()
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def tls_context(verify: TlsVerify, url: str) -> ssl.SSLContext:
    """The client context `verify` asks for; raises TlsFailed when the CA file cannot be loaded."""
    if verify.insecure_skip_verify or (verify.cert_sha256 and not verify.ca_file):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not verify.ca_file:
        return ssl.create_default_context()
    ca_file = os.path.expanduser(verify.ca_file)
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise TlsFailed(url, f"ca_file {ca_file} not found: copy the server's CA (lnd: tls.cert) "
                             "to this machine and point ca_file at it") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsFailed(url, f"cannot load ca_file {ca_file} (expected PEM certificates): "
                             f"{getattr(exc, 'reason', None) or exc}") from None


class _PlainStream:
    """Bytes straight over the forwarded connection."""

    def __init__(self, reader: object, writer: object) -> None:
        self._reader, self._writer = reader, writer

    async def send(self, data: bytes) -> None:
        self._writer.write(data)  # type: ignore[attr-defined]
        await self._writer.drain()  # type: ignore[attr-defined]

    async def receive(self) -> bytes:
        return await self._reader.read(READ_CHUNK)  # type: ignore[attr-defined]


class _TlsStream(_PlainStream):
    """TLS over the forwarded connection with ssl.MemoryBIO: ciphertext in and out by hand."""

    def __init__(self, reader: object, writer: object, context: ssl.SSLContext, server_hostname: str) -> None:
        super().__init__(reader, writer)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)

    async def handshake(self) -> bytes:
        """Complete the handshake; returns the server's certificate (DER)."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()
        return self._tls.getpeercert(binary_form=True) or b""

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def receive(self) -> bytes:
        while True:
            try:
                return self._tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # closed, with or without close_notify: h11 decides if the body was complete
                return b""

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await super().send(data)

    async def _fill(self) -> None:
        data = await super().receive()
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()


_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


async def _start_tls(reader: object, writer: object, url: str, host: str, verify: TlsVerify) -> _TlsStream:
    stream = _TlsStream(reader, writer, tls_context(verify, url), host)
    try:
        der = await stream.handshake()
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _NAME_MISMATCH:
            fix = "use a host the certificate names (lnd: tlsextraip/tlsextradomain), or pin cert_sha256"
        elif verify.ca_file:
            fix = "check that ca_file is the CA that signed this server's certificate"
        else:
            fix = "set ca_file to the server's CA (lnd: its tls.cert) or pin cert_sha256"
        raise TlsFailed(url, f"certificate not verified against {verify.describe()}: "
                             f"{(exc.verify_message or exc.reason or '').rstrip('.')}; {fix}") from None
    except ssl.SSLEOFError:
        raise TlsFailed(url, "the server closed the connection during the TLS handshake "
                             "(is it speaking TLS?)") from None
    except ssl.SSLError as exc:
        raise TlsFailed(url, f"TLS handshake failed: {exc.reason or exc} (is it speaking TLS?)") from None
    if verify.cert_sha256 and not verify.insecure_skip_verify:
        actual = hashlib.sha256(der).hexdigest()
        if actual != verify.cert_sha256:
            raise TlsFailed(url, f"certificate sha256 {format_fingerprint(actual)} is not the pinned "
                                 f"{format_fingerprint(verify.cert_sha256)}: the server's certificate changed, "
                                 "or this is not the server you pinned")
    return stream


def _request_head(host_header: str, target: str) -> h11.Request:
    return h11.Request(method="GET", target=target, headers=[
        ("Host", host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close"),
    ])


def _why_not_http(url: str, first: bytes) -> str:
    """A plain-words reason when the reply's first bytes say it is no HTTP at all."""
    plain = url.startswith("http:")
    if not first:
        return "the server closed the connection without a reply" + (" (a TLS port? use https://)" if plain else "")
    if plain and first[:1] in (b"\x15", b"\x16") and first[1:2] == b"\x03":  # a TLS record
        return "the server answered in TLS: use https://"
    if not first.startswith(b"HTTP/"):
        return f"not an HTTP reply: {first!r}..."
    return ""


async def _exchange(stream: _PlainStream, url: str, host_header: str, target: str, max_body: int) -> HttpResponse:
    conn = h11.Connection(our_role=h11.CLIENT)
    await stream.send(conn.send(_request_head(host_header, target)) + conn.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = bytearray()
    truncated = False
    first = b""  # the reply's first bytes, to explain a reply that is not HTTP
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadHttpReply(url, _why_not_http(url, first) or str(exc) or type(exc).__name__) from None
        if event is h11.NEED_DATA:
            data = await stream.receive()
            first = first or data[:8]
            conn.receive_data(data)  # b"" tells h11 the server closed
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            room = max_body - len(body)
            body += event.data[:room]
            if len(event.data) > room:
                truncated = True  # stop reading: we will not hold more than max_body
                break
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            break
        # InformationalResponse (1xx): the real reply follows
    if response is None:
        raise BadHttpReply(url, _why_not_http(url, first) or "the server closed the connection without a reply")
    headers: dict[str, str] = {}
    for name, value in response.headers:
        key = name.decode("ascii", errors="replace").lower()
        text = value.decode("iso-8859-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return HttpResponse(response.status_code, response.reason.decode("iso-8859-1"), headers, bytes(body),
                        truncated)


async def http_get(transport: "Transport", url: str, *, timeout: float = 10.0, max_body: int = MAX_BODY,
                   tls: TlsVerify | None = None) -> HttpResponse:
    """GET an http:// or https:// URL as seen from the node, through the transport's link.

    Raises OSError (refused, reset; TlsFailed for TLS), TimeoutError, or ValueError
    (BadHttpReply for a malformed or cut-short reply, or a URL that is not http(s)).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host_header = parts.netloc.rpartition("@")[2] or f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        reader, writer = await transport.open_tcp(host, port)
        try:
            stream: _PlainStream = _PlainStream(reader, writer)
            if parts.scheme == "https":
                stream = await _start_tls(reader, writer, url, host, tls or TlsVerify())
            return await _exchange(stream, url, host_header, target, max_body)
        finally:
            writer.close()  # type: ignore[attr-defined]

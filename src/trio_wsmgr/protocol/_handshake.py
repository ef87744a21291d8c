"""The server side of the opening handshake (RFC 6455 section 4.2), sans-IO and strict.

A WebSocket upgrade is one small HTTP/1.1 request with no body; parsing it
with a general HTTP library costs more than the rest of a connection's setup.
This parser reads exactly what RFC 6455 and RFC 9112 allow for it and refuses
the rest: 400 for anything malformed, 426 (with ``Sec-WebSocket-Version: 13``)
for another protocol version. :func:`accept_response` and
:func:`reject_response` build the answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = [
    "HEAD_END",
    "HandshakeError",
    "UpgradeRequest",
    "accept_response",
    "parse_request",
    "plausible_start",
    "reject_response",
]

#: the end of an HTTP request head
HEAD_END = b"\r\n\r\n"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: RFC 9110 token characters (header names, methods)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: a field value: visible characters, spaces and tabs (obs-text allowed)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: an origin-form request target: visible ASCII only (RFC 9112 3.2.1)
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} [^ \r\n]+ HTTP/\d\.\d\r\n")
_METHOD_START = re.compile(rb"[A-Z]{1,16}\Z")
_TARGET_START = re.compile(rb"[A-Z]{1,16} [^ \r\n]*\Z")


def plausible_start(data: bytes) -> bool:
    """Whether ``data``, the start of a request head, can still become a request.

    Garbage (a TLS hello, binary) is refused at once instead of waiting for a
    blank line that will never come.
    """
    if _REQUEST_LINE.match(data):
        return True
    line = data[:4096]
    if b"\n" in line:
        return False
    if _METHOD_START.match(line) or _TARGET_START.match(line):
        return True
    method, _, rest = line.partition(b" ")
    target, space, version = rest.partition(b" ")
    return (
        bool(_METHOD_START.match(method))
        and bool(target)
        and bool(space)
        and b"HTTP/1.1\r".startswith(version)
    )


class HandshakeError(Exception):
    """The request cannot be upgraded; answer with ``status`` (and ``headers``)."""

    def __init__(
        self, status: int, reason: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


class UpgradeRequest:
    """A valid upgrade request: its target, headers and WebSocket offers."""

    __slots__ = ("extensions", "head", "headers", "key", "subprotocols", "target")

    def __init__(
        self,
        head: bytes,
        target: str,
        headers: tuple[tuple[str, str], ...],
        key: bytes,
        subprotocols: tuple[str, ...],
        extensions: tuple[str, ...],
    ) -> None:
        #: the raw request head (``headers`` can be parsed again from it)
        self.head = head
        #: the request target, path and query
        self.target = target
        #: every header as sent, names in lower case, values decoded as latin-1
        self.headers = headers
        self.key = key
        #: the offered subprotocols, in the client's order
        self.subprotocols = subprotocols
        #: the extension offers, one string each (``"permessage-deflate; ..."``)
        self.extensions = extensions


def _bad(reason: str) -> HandshakeError:
    return HandshakeError(400, reason)


def _split_list(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def parse_request(head: bytes) -> UpgradeRequest:
    """Parse a request head (up to and excluding the blank line); raise HandshakeError."""
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3:
        raise _bad("malformed request line")
    method, raw_target, version = request_line
    if version != b"HTTP/1.1":
        raise _bad("HTTP/1.1 required")
    if method != b"GET":
        raise _bad("the method must be GET")
    if not _TARGET.match(raw_target):
        raise _bad("malformed request target")
    headers: list[tuple[str, str]] = []
    host = upgrade = key = version_value = None
    connection_upgrade = False
    subprotocols: list[str] = []
    extensions: list[str] = []
    for line in lines[1:]:
        name, colon, raw_value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise _bad("malformed header")
        raw_value = raw_value.strip(b" \t")
        if _BAD_VALUE.search(raw_value):
            raise _bad("malformed header value")
        lower = name.decode("ascii").lower()
        value = raw_value.decode("latin-1")
        headers.append((lower, value))
        if lower == "host":
            if host is not None:
                raise _bad("duplicate host header")
            host = value
        elif lower == "upgrade":
            upgrade = value
        elif lower == "connection":
            connection_upgrade = connection_upgrade or any(
                token.lower() == "upgrade" for token in _split_list(value)
            )
        elif lower == "sec-websocket-key":
            if key is not None:
                raise _bad("duplicate sec-websocket-key header")
            key = raw_value
        elif lower == "sec-websocket-version":
            if version_value is not None:
                raise _bad("duplicate sec-websocket-version header")
            version_value = value
        elif lower == "sec-websocket-protocol":
            subprotocols.extend(_split_list(value))
        elif lower == "sec-websocket-extensions":
            extensions.extend(_split_list(value))
        elif lower in ("content-length", "transfer-encoding"):
            raise _bad("an upgrade request has no body")
    if host is None:
        raise _bad("missing host header")
    if not connection_upgrade:
        raise _bad("missing 'Connection: Upgrade'")
    if upgrade is None or upgrade.lower() != "websocket":
        raise _bad("missing 'Upgrade: websocket'")
    if version_value != "13":
        if version_value is None:
            raise _bad("missing sec-websocket-version header")
        raise HandshakeError(
            426, "unsupported WebSocket version", ((b"Sec-WebSocket-Version", b"13"),)
        )
    if key is None or not _valid_key(key):
        raise _bad("missing or invalid sec-websocket-key header")
    return UpgradeRequest(
        head,
        raw_target.decode("ascii"),
        tuple(headers),
        key,
        tuple(subprotocols),
        tuple(extensions),
    )


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for ``key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_response(
    key: bytes,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """The ``101 Switching Protocols`` answer."""
    parts = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: ",
        accept_token(key),
        b"\r\n",
    ]
    if subprotocol is not None:
        parts.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii") + b"\r\n")
    if extensions:
        parts.append(b"Sec-WebSocket-Extensions: " + extensions.encode("ascii") + b"\r\n")
    for name, value in extra_headers:
        _check_header(name, value)
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def reject_response(
    status: int,
    *,
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> bytes:
    """A refusal: ``status``, ``headers``, ``body``; the connection closes after it."""
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Refused")),
        b"Connection: close\r\nContent-Length: %d\r\n" % len(body),
    ]
    for name, value in headers:
        _check_header(name, value)
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def _check_header(name: bytes, value: bytes) -> None:
    if not _TOKEN.match(name) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid response header {name!r}: {value!r}")

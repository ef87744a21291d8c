"""A small RESP3 connection over a trio stream, for the Redis Cluster backend.

Sans-IO at the bottom (:func:`encode` and :class:`Parser`: bytes in, values out),
a thin async shell on top (:class:`Connection`). It speaks just what sharded
pub/sub needs: HELLO 3 (with AUTH), commands whose replies come back in order,
and RESP3 *push* messages (``smessage``, ``ssubscribe``, ``sunsubscribe``) that
arrive between them.

Values: simple and bulk strings are ``bytes``, integers ``int``, null ``None``,
arrays and sets ``list``, maps ``dict``, doubles ``float``, booleans ``bool``; an
error reply is a :class:`ServerError` *value* (the caller decides whether to
raise it); a push is a :class:`Push`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import attrs
import trio

#: the longest line (type byte + header) we accept: a length or a short error text
_MAX_LINE = 64 * 1024
#: the largest bulk string we accept (Redis' own proto-max-bulk-len default)
_MAX_BULK = 512 * 1024 * 1024


class ServerError(Exception):
    """An error reply from Redis (``-MOVED 3999 127.0.0.1:6381``, ``-CLUSTERDOWN ...``)."""

    @property
    def code(self) -> str:
        """The first word: ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``ERR``..."""
        return str(self.args[0]).split(" ", 1)[0]

    def redirect(self) -> tuple[str, int, int] | None:
        """``(host, port, slot)`` of a ``MOVED``/``ASK`` error, else ``None``."""
        parts = str(self.args[0]).split(" ")
        if parts[0] not in ("MOVED", "ASK") or len(parts) != 3:
            return None
        host, _, port = parts[2].rpartition(":")
        try:
            return host, int(port), int(parts[1])
        except ValueError:
            return None


class ProtocolError(ConnectionError):
    """Redis sent something that is not RESP3 (the connection is unusable)."""


@attrs.frozen
class Push:
    """A RESP3 push message: ``[kind, *fields]``."""

    kind: bytes
    fields: tuple[object, ...]


def encode(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


class Parser:
    """RESP3 bytes in (:meth:`feed`), whole values out (:meth:`next`)."""

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next(self) -> tuple[bool, object]:
        """``(True, value)`` for the next complete value, ``(False, None)`` if more is needed."""
        try:
            value, end = self._value(self._pos)
        except _Incomplete:
            return False, None
        self._pos = end
        return True, value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            if len(self._buffer) - pos > _MAX_LINE:
                raise ProtocolError("a RESP line longer than 64 KiB")
            raise _INCOMPLETE
        return bytes(self._buffer[pos:end]), end + 2

    def _value(self, pos: int) -> tuple[object, int]:
        line, pos = self._line(pos)
        if not line:
            raise ProtocolError("an empty RESP line")
        kind, rest = line[:1], line[1:]
        if kind in (b"+",):
            return rest, pos
        if kind == b"-":
            return ServerError(rest.decode("utf-8", "replace")), pos
        if kind in (b":", b"("):
            return int(rest), pos
        if kind == b"_":
            return None, pos
        if kind == b"#":
            return rest == b"t", pos
        if kind == b",":
            return float(rest), pos
        if kind in (b"$", b"=", b"!"):
            size = int(rest)
            if size < 0:
                return None, pos
            if size > _MAX_BULK:
                raise ProtocolError(f"a bulk string of {size} bytes")
            if len(self._buffer) < pos + size + 2:
                raise _INCOMPLETE
            data = bytes(self._buffer[pos : pos + size])
            if kind == b"!":
                return ServerError(data.decode("utf-8", "replace")), pos + size + 2
            return (data[4:] if kind == b"=" else data), pos + size + 2
        if kind in (b"*", b"~", b">", b"%", b"|"):
            count = int(rest)
            if count < 0:
                return None, pos
            items: list[object] = []
            for _ in range(count * 2 if kind in (b"%", b"|") else count):
                item, pos = self._value(pos)
                items.append(item)
            if kind == b"%":
                return dict(zip(items[::2], items[1::2], strict=True)), pos
            if kind == b"|":  # attributes annotate the value that follows: skip them
                return self._value(pos)
            if kind == b">":
                head = items[0] if items else b""
                return Push(head if isinstance(head, bytes) else b"", tuple(items[1:])), pos
            return items, pos
        raise ProtocolError(f"unknown RESP type {kind!r}")


@attrs.frozen
class Credentials:
    """How to reach and log in to a node: shared by every node of a cluster."""

    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)  # never in a log line
    tls: bool = False


class Connection:
    """One TCP (or TLS) connection speaking RESP3.

    :meth:`send` queues a command synchronously (so commands leave in call order);
    :meth:`flush` writes what is queued; :meth:`receive` returns the next value.
    One task writes, one task reads.
    """

    __slots__ = ("_outgoing", "_parser", "_stream", "_write_lock")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._parser = Parser()
        self._outgoing = bytearray()
        self._write_lock = trio.Lock()

    @classmethod
    async def open(cls, host: str, port: int, credentials: Credentials) -> Connection:
        """Connect and say HELLO 3 (with AUTH when there is a password)."""
        stream: trio.abc.Stream
        if credentials.tls:
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl.create_default_context()
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
        connection = cls(stream)
        try:
            hello: list[bytes | str | int] = [b"HELLO", 3]
            if credentials.password is not None:
                hello += [b"AUTH", credentials.username or "default", credentials.password]
            connection.send(*hello)
            await connection.flush()
            reply = await connection.receive()
            if isinstance(reply, ServerError):
                raise reply
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return connection

    def send(self, *args: bytes | str | int) -> None:
        self._outgoing += encode(*args)

    async def flush(self) -> None:
        async with self._write_lock:
            while self._outgoing:
                data = bytes(self._outgoing)
                self._outgoing.clear()
                await self._stream.send_all(data)

    async def receive(self) -> object:
        while True:
            complete, value = self._parser.next()
            if complete:
                return value
            data = await self._stream.receive_some(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            self._parser.feed(data)

    async def request(self, *args: bytes | str | int) -> object:
        """Send one command and return its reply (only while nobody else reads)."""
        self.send(*args)
        await self.flush()
        return await self.receive()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


def as_str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def slot_ranges(reply: object) -> list[tuple[int, int, tuple[str, int], list[tuple[str, int]]]]:
    """``CLUSTER SLOTS`` as ``(first, last, master, [every node])`` (master first)."""
    if not isinstance(reply, list):
        raise ProtocolError(f"CLUSTER SLOTS replied {reply!r}")
    ranges = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3:
            continue
        first, last = entry[0], entry[1]
        nodes: list[tuple[str, int]] = []
        for node in entry[2:]:
            host = as_str(node[0]) if isinstance(node, Sequence) and len(node) >= 2 else ""
            if not host or host == "?" or not isinstance(node[1], int):
                if not nodes:  # the master's endpoint is unknown: skip the range,
                    break  # never take a replica for its master
                continue
            nodes.append((host, node[1]))
        if isinstance(first, int) and isinstance(last, int) and nodes:
            ranges.append((first, last, nodes[0], nodes))
    return ranges


# CRC16/XMODEM, as Redis Cluster hashes keys (and shard channels) to slots.
def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: bytes) -> int:
    """The hash slot of ``key`` (a hash tag ``{...}`` is honoured, as Redis does)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % 16384

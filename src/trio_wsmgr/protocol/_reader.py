"""The server's frame reader (RFC 6455 section 5), sans-IO and strict.

:meth:`FrameReader.feed` takes bytes as they arrive and returns what they
complete: whole messages (``str`` for text, ``bytes`` for binary) and control
events (:class:`Ping`, :class:`Pong`, :class:`Close`). A protocol violation
sets :attr:`FrameReader.failure` to the close code and reason the connection
must end with (1002 framing, 1007 bad UTF-8 or bad compressed data, 1009 too
big) and everything after it is ignored. Size limits are checked from the
frame header, before its payload is buffered.

Permessage-deflate goes through :class:`~._compression.PerMessageDeflate`'s
inbound hooks (the same object that negotiated it), which bound inflation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

if TYPE_CHECKING:
    from ._compression import PerMessageDeflate

__all__ = ["Close", "FrameReader", "Ping", "Pong"]

_CONTROL_MAX = 125
#: close codes a peer may send (RFC 6455 7.4.1 and the IANA registry; 1004-1006, 1015 reserved)
_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The peer's close frame: 1005 when it carried no code."""

    code: int
    reason: str


def unmask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask``."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


class FrameReader:
    """Parse client frames for one connection (see module docs)."""

    __slots__ = (
        "_buffer",
        "_compressed",
        "_extension",
        "_opcode",
        "_parts",
        "_size",
        "failure",
        "max_message_size",
    )

    def __init__(
        self, *, max_message_size: int, extension: PerMessageDeflate | None = None
    ) -> None:
        self.max_message_size = max_message_size
        #: negotiated compression, or None
        self._extension = extension
        self._buffer = bytearray()
        self._opcode = 0  # the data message being received (0: none)
        self._parts: list[bytes] | None = None  # its earlier fragments
        self._size = 0
        self._compressed = False
        #: (close code, reason) after a protocol violation; the connection must end
        self.failure: tuple[int, str] | None = None

    def _fail(self, code: int, reason: str) -> None:
        self.failure = (code, reason)
        self._buffer.clear()
        self._parts = None

    def feed(self, data: bytes | bytearray) -> list[str | bytes | Ping | Pong | Close]:
        """Take ``data``; return the messages and control events it completes, in order."""
        events: list[str | bytes | Ping | Pong | Close] = []
        if self.failure is not None:
            return events
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        pos = 0
        end = len(view)
        while end - pos >= 2:
            first = view[pos]
            second = view[pos + 1]
            if not second & 0x80:
                self._fail(1002, "client frames must be masked")
                return events
            length = second & 0x7F
            header = 6
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 4], "big")
                header = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                header = 14
                if length >> 63:
                    self._fail(1002, "frame length out of range")
                    return events
            opcode = first & 0x0F
            if opcode >= 8:
                if length > _CONTROL_MAX or not first & 0x80:
                    self._fail(1002, "control frames are short and unfragmented")
                    return events
            elif self._too_big(length, first & 0x40):
                self._fail(1009, "message too big")
                return events
            if end - pos < header + length:
                break
            start = pos + header
            payload = unmask(view[start : start + length], bytes(view[start - 4 : start]))
            pos = start + length
            event = self._frame(first, opcode, payload)
            if self.failure is not None:
                return events
            if event is not None:
                events.append(event)
        if pos < end:
            rest = view[pos:]
            if view is buffer:
                del buffer[:pos]
            else:
                buffer += rest
        elif view is buffer:
            buffer.clear()
        return events

    def _too_big(self, length: int, rsv1: int) -> bool:
        budget = self.max_message_size - (self._size if self._opcode else 0)
        if rsv1 or self._compressed:  # inflation is bounded by the extension; allow overhead
            budget += budget // 64 + 1024
        return length > budget

    def _frame(
        self, first: int, opcode: int, payload: bytes
    ) -> str | bytes | Ping | Pong | Close | None:
        rsv = first & 0x70
        extension = self._extension
        if extension is not None and (rsv or self._compressed) and opcode in (0, 1, 2, 8, 9, 10):
            checked = extension.frame_inbound_header(
                None,  # type: ignore[arg-type]  # our extension never uses the protocol object
                Opcode(opcode),
                RsvBits(bool(rsv & 0x40), bool(rsv & 0x20), bool(rsv & 0x10)),
                len(payload),
            )
            if isinstance(checked, CloseReason):
                self._fail(int(checked), "bad compressed frame")
                return None
            if rsv & 0x30:
                self._fail(1002, "reserved bits set")
                return None
        elif rsv:
            self._fail(1002, "reserved bits set")
            return None
        if opcode >= 8:
            return self._control(opcode, payload)
        fin = first & 0x80
        if opcode == 0:
            if not self._opcode:
                self._fail(1002, "continuation frame without a message")
                return None
        elif opcode <= 2:
            if self._opcode:
                self._fail(1002, "new message inside a fragmented one")
                return None
            self._opcode = opcode
            self._compressed = bool(rsv & 0x40)
            self._size = 0
        else:
            self._fail(1002, f"reserved opcode {opcode}")
            return None
        if self._compressed:
            assert extension is not None
            inflated = extension.frame_inbound_payload_data(None, payload)  # type: ignore[arg-type]
            if isinstance(inflated, CloseReason):
                self._fail(int(inflated), "bad compressed data")
                return None
            tail = extension.frame_inbound_complete(None, bool(fin))  # type: ignore[arg-type]
            if isinstance(tail, CloseReason):
                self._fail(int(tail), "bad compressed data")
                return None
            if tail:
                inflated += tail
            payload = inflated
        self._size += len(payload)
        if self._size > self.max_message_size:
            self._fail(1009, "message too big")
            return None
        if not fin:
            if self._parts is None:
                self._parts = [payload]
            else:
                self._parts.append(payload)
            return None
        parts = self._parts
        if parts is not None:
            parts.append(payload)
            payload = b"".join(parts)
            self._parts = None
        text = self._opcode == 1
        self._opcode = 0
        self._compressed = False
        if not text:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a text message")
            return None

    def _control(self, opcode: int, payload: bytes) -> Ping | Pong | Close | None:
        if opcode == 9:
            return Ping(payload)
        if opcode == 10:
            return Pong(payload)
        if opcode != 8:
            self._fail(1002, f"reserved opcode {opcode}")
            return None
        if not payload:
            return Close(1005, "")
        code = int.from_bytes(payload[:2], "big")
        if len(payload) < 2 or not (code in _VALID_CLOSE or 3000 <= code <= 4999):
            self._fail(1002, "invalid close code")
            return None
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a close reason")
            return None
        return Close(code, reason)

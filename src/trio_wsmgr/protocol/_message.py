"""Outgoing messages: encoded once, framed once per distinct wire form.

A broadcast to N sockets builds one :class:`Outgoing`. Sockets without
compression (or whose compression is stateless and uses the same parameters)
share the same frame bytes; only sockets that keep a compression context get a
frame of their own.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits

from .._exceptions import MessageEncodingError
from ._compression import PerMessageDeflate, deflate_once
from ._frames import OPCODE_BINARY, OPCODE_TEXT, encode_frame


class FrameCompressor(Protocol):
    """What a socket's negotiated compression offers to :class:`Outgoing`."""

    def compress_message(self, opcode: int, payload: bytes) -> tuple[bool, bytes]:
        """Return ``(rsv1, payload)`` for one whole message, in send order."""
        ...

    def shared_key(self) -> object | None:
        """A key under which compressed payloads may be shared; None if stateful."""
        ...

    def compress_shared(self, payload: bytes) -> bytes:
        """Compress statelessly (valid for every socket with the same key)."""
        ...

    def wants(self, payload: bytes) -> bool:
        """Whether this payload is worth compressing (size threshold)."""
        ...


def encode_payload(message: Any) -> tuple[int, bytes]:
    """``(opcode, payload)``: str -> text, bytes-like -> binary, anything else -> JSON text."""
    try:
        if isinstance(message, str):
            return OPCODE_TEXT, message.encode("utf-8")
        if isinstance(message, bytes | bytearray | memoryview):
            return OPCODE_BINARY, bytes(message)
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        return OPCODE_TEXT, text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MessageEncodingError(
            f"cannot send a {type(message).__name__}: "
            "messages are str, bytes or JSON-serialisable values"
        ) from exc


class Outgoing:
    """One message, ready to be framed for any socket."""

    __slots__ = ("_plain", "_shared", "opcode", "payload")

    def __init__(self, message: Any) -> None:
        self.opcode, self.payload = encode_payload(message)
        self._plain: bytes | None = None
        self._shared: dict[object, bytes] | None = None

    @classmethod
    def from_encoded(cls, opcode: int, payload: bytes) -> Outgoing:
        """An already encoded message (e.g. one that arrived from another node)."""
        outgoing = cls.__new__(cls)
        outgoing.opcode, outgoing.payload = opcode, payload
        outgoing._plain = None
        outgoing._shared = None
        return outgoing

    def __len__(self) -> int:
        return len(self.payload)

    def plain_frame(self) -> bytes:
        frame = self._plain
        if frame is None:
            frame = self._plain = encode_frame(self.opcode, self.payload)
        return frame

    def frame_for(self, compressor: FrameCompressor | None) -> bytes:
        """The frame bytes to write to a socket with this (negotiated) compressor."""
        if compressor is None or not compressor.wants(self.payload):
            return self.plain_frame()
        key = compressor.shared_key()
        if key is None:
            rsv1, data = compressor.compress_message(self.opcode, self.payload)
            return encode_frame(self.opcode, data, rsv1=rsv1)
        if self._shared is None:
            self._shared = {}
        frame = self._shared.get(key)
        if frame is None:
            data = compressor.compress_shared(self.payload)
            frame = self._shared[key] = encode_frame(self.opcode, data, rsv1=True)
        return frame


class DeflateCompressor:
    """:class:`FrameCompressor` over a negotiated :class:`~._compression.PerMessageDeflate`."""

    __slots__ = ("_extension", "_key", "_threshold")

    def __init__(self, extension: PerMessageDeflate) -> None:
        self._extension = extension
        self._key = extension.shared_key()
        self._threshold = extension.config.threshold

    def wants(self, payload: bytes) -> bool:
        return len(payload) >= self._threshold

    def shared_key(self) -> object | None:
        return self._key

    def compress_shared(self, payload: bytes) -> bytes:
        key = self._key
        assert key is not None
        return deflate_once(
            payload, level=key.level, memory_level=key.memory_level, window_bits=key.window_bits
        )

    def compress_message(self, opcode: int, payload: bytes) -> tuple[bool, bytes]:
        # Our extension ignores its protocol argument; whole messages only.
        rsv, data = self._extension.frame_outbound(
            cast(FrameProtocol, None), Opcode(opcode), RsvBits(False, False, False), payload, True
        )
        return rsv.rsv1, data

"""Channel names and topics, and the wire format between nodes (sync, no I/O).

A channel's messages travel on the backend topic named as the channel. A user's
messages (``send_to_user``) travel on one of ``user_shards`` topics
``!user:<shard>`` (never a valid channel name), chosen by a hash of the user id:
every node must use the same number of shards.

Wire format between nodes (everything after the header is the encoded payload,
sent as is)::

    byte 0      format version (1)
    byte 1      flags: bit 0 binary opcode, bits 1-2 on_full (wait, drop, close),
                bit 3 user-targeted
    bytes 2-9   the publishing node's random id (a node skips its own messages)
    [user-targeted only: 2 bytes length + the user id in UTF-8]
    payload
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Final

import attrs

from .._exceptions import InvalidChannelName
from ..protocol._frames import OPCODE_BINARY, OPCODE_TEXT
from ..protocol._message import Outgoing
from ..server._fanout import ON_FULL_CHOICES, OnFull

#: the longest channel name accepted
MAX_CHANNEL_NAME_LENGTH: Final = 200
_NAME = re.compile(r"[A-Za-z0-9_.:/@-]+")

#: topics of user-targeted messages
_USER_TOPIC: Final = "!user:{}"

_WIRE_VERSION: Final = 1
_HEADER = struct.Struct("!BB8s")
_USER_LENGTH = struct.Struct("!H")
_FLAG_BINARY = 0x01
_FLAG_USER = 0x08
_ON_FULL_SHIFT = 1


def check_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`.

    Valid: 1 to :data:`MAX_CHANNEL_NAME_LENGTH` characters from ``A-Z a-z 0-9``
    and ``_ - . : / @``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a channel name must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_CHANNEL_NAME_LENGTH:
        raise InvalidChannelName(
            f"a channel name must be 1 to {MAX_CHANNEL_NAME_LENGTH} characters, "
            f"not {len(name)}: {name[:40]!r}"
        )
    if _NAME.fullmatch(name) is None:
        raise InvalidChannelName(
            f"invalid channel name {name[:40]!r}: use only A-Z a-z 0-9 _ - . : / @"
        )
    return name


def user_topics(shards: int) -> list[str]:
    """Every topic of user-targeted messages, one per shard."""
    return [_USER_TOPIC.format(shard) for shard in range(shards)]


def user_topic(user_id: str, shards: int) -> str:
    """The topic of ``user_id``'s messages."""
    return _USER_TOPIC.format(zlib.crc32(user_id.encode("utf-8")) % shards)


# -- the wire format (sync, no I/O) ------------------------------------------------------


@attrs.frozen
class Wire:
    """A message from another node, parsed."""

    node: bytes
    opcode: int
    on_full: OnFull
    user_id: str | None
    payload: bytes

    def outgoing(self) -> Outgoing:
        return Outgoing.from_encoded(self.opcode, self.payload)  # encoded by the publisher


def encode_wire(node: bytes, outgoing: Outgoing, on_full: OnFull, user_id: str | None) -> bytes:
    flags = ON_FULL_CHOICES.index(on_full) << _ON_FULL_SHIFT
    if outgoing.opcode == OPCODE_BINARY:
        flags |= _FLAG_BINARY
    header = _HEADER.pack(_WIRE_VERSION, flags, node)
    if user_id is None:
        return header + outgoing.payload
    user = user_id.encode("utf-8")
    flags |= _FLAG_USER
    header = _HEADER.pack(_WIRE_VERSION, flags, node)
    return b"".join((header, _USER_LENGTH.pack(len(user)), user, outgoing.payload))


def decode_wire(data: bytes) -> Wire | None:
    """Parse a message from another node; None if it is not ours or is malformed."""
    if len(data) < _HEADER.size:
        return None
    version, flags, node = _HEADER.unpack_from(data)
    on_full_index = (flags >> _ON_FULL_SHIFT) & 0x03
    if version != _WIRE_VERSION or on_full_index >= len(ON_FULL_CHOICES):
        return None
    offset = _HEADER.size
    user_id = None
    if flags & _FLAG_USER:
        if len(data) < offset + _USER_LENGTH.size:
            return None
        (length,) = _USER_LENGTH.unpack_from(data, offset)
        offset += _USER_LENGTH.size
        if len(data) < offset + length:
            return None
        try:
            user_id = data[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError:
            return None
        offset += length
    opcode = OPCODE_BINARY if flags & _FLAG_BINARY else OPCODE_TEXT
    on_full: OnFull = ON_FULL_CHOICES[on_full_index]  # type: ignore[assignment]
    return Wire(node, opcode, on_full, user_id, data[offset:])

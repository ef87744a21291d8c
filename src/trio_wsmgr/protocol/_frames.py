"""WebSocket data frames as the server writes them (RFC 6455 section 5.2), sans-IO.

One broadcast is framed once and its bytes shared by every socket that takes
the same wire form.
"""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def encode_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """One complete, unmasked (server to client) frame: header + ``payload``."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _pack_short(first, 126, size) + payload
    return _pack_long(first, 127, size) + payload
